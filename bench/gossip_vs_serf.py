"""InferMesh gossip (SWIM + Lifeguard) vs HashiCorp Serf (memberlist, LAN profile) on loopback, side by side.

Both clusters run behind the same fault-injecting proxy (every node has its own 127.0.0.x and advertises a proxy
port), so loss and the byte count apply identically. Measured per system: failure-detection time after kill -9
(until every survivor marks the node failed/dead), dissemination time of a join (first to last existing member
that sees the newcomer), false positives during a run at 10% UDP loss, bytes sent per node per second.
Then, in simulation: detection and dissemination time vs N, and Vivaldi's median relative error.

    .venv/bin/python bench/gossip_vs_serf.py [--nodes 5] [--trials 3] [--loss-seconds 60] [--max-n 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import yaml

from agents.binding import free_port
from agents.gossip.testing.faultproxy import FaultProxy
from agents.gossip.testing.sim import NetConfig, Simulation
from agents.proto.infermesh.v1 import membership_pb2, membership_pb2_grpc
from agents.topology.vivaldi import median_relative_error, simulate, synthetic_matrix

INFERMESH = str(Path(sys.executable).with_name("infermesh"))
ALIVE, DEAD = membership_pb2.MEMBER_STATUS_ALIVE, membership_pb2.MEMBER_STATUS_DEAD


def ensure_serf() -> str:
    path = shutil.which("serf")
    if path:
        return path
    print("installing serf (Debian package) ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "serf"], check=True, stdout=subprocess.DEVNULL)
    path = shutil.which("serf")
    if not path:
        raise SystemExit("serf is not installed and apt-get could not install it")
    return path


@dataclass
class Node:
    name: str
    ip: str
    port: int  # real gossip port
    proxy_port: int
    proc: subprocess.Popen[bytes] | None = None
    grpc: str = ""
    http: str = ""


@dataclass
class Result:
    detect_s: list[float] = field(default_factory=list)
    dissem_s: list[float] = field(default_factory=list)
    false_positives: int = 0
    suspicions: int = 0
    bytes_per_node_s: float = 0.0


class Cluster(ABC):
    """Common driving logic; subclasses start nodes and read their views."""

    kind = ""

    def __init__(self, workdir: Path, proxy: FaultProxy, ip_base: int) -> None:
        self.workdir = workdir
        self.proxy = proxy
        self.nodes: list[Node] = []
        self._next_ip = ip_base
        self.seq = 0

    async def new_node(self) -> Node:
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        port = free_port(ip, udp_too=True)  # serf and our gossip: UDP and TCP on one port
        listen = await self.proxy.add_route(("127.0.0.1", 0), (ip, port))
        node = Node(f"{self.kind}-{self.seq}", ip, port, listen[1])
        self.seq += 1
        return node

    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{n.proxy_port}" for n in self.nodes[:3] if n.proc and n.proc.poll() is None]

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    @abstractmethod
    async def start_node(self, node: Node, seeds: list[str]) -> None:
        """Start one member of this kind of cluster."""

    @abstractmethod
    async def view(self, observer: Node) -> dict[str, str]:
        """member -> alive | suspect | failed (as `observer` sees it)."""

    async def start(self, n: int) -> None:
        for _ in range(n):
            node = await self.new_node()
            await self.start_node(node, self.seeds())
            self.nodes.append(node)
        await self.wait_converged(n, 60)

    async def wait_converged(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                views = [await self.view(x) for x in self.live()]
                if all(sum(1 for s in v.values() if s == "alive") == n for v in views):
                    return
            except Exception:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.kind}: cluster of {n} did not converge in {timeout}s")

    @abstractmethod
    async def seen_at(self, observer: Node, member: str, event: str) -> float | None:
        """Wall-clock time at which `observer` recorded `member` as "failed" or "joined"; None while it has not."""

    async def _seen_everywhere(self, observers: list[Node], member: str, event: str) -> list[float]:
        t0 = time.time()
        while time.time() - t0 < 60:
            times = await asyncio.gather(*(self.seen_at(o, member, event) for o in observers))
            if all(t is not None for t in times):
                return [t for t in times if t is not None]
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.kind}: {member} not {event} at every observer after 60s")

    async def measure_detection(self) -> float:
        """From kill -9 until the last survivor records the node failed, by the survivors' own timestamps."""
        victim = self.live()[-1]
        survivors = [x for x in self.live() if x is not victim]
        assert victim.proc is not None
        t0 = time.time()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        return max(await self._seen_everywhere(survivors, victim.name, "failed")) - t0

    async def measure_join(self) -> float:
        """Dissemination of a join: from the first existing member that records the newcomer to the last."""
        existing = self.live()
        node = await self.new_node()
        await self.start_node(node, self.seeds())
        self.nodes.append(node)
        seen = await self._seen_everywhere(existing, node.name, "joined")
        return max(seen) - min(seen)

    async def count_false_positives(self, seconds: float) -> tuple[int, int]:
        """Transitions of a live member into failed, and into suspect, summed over observers, while loss runs."""
        prev: dict[tuple[str, str], str] = {}
        failed = suspect = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            for x in self.live():
                try:
                    v = await self.view(x)
                except Exception:
                    continue
                for member, st in v.items():
                    key = (x.name, member)
                    if st != prev.get(key, "alive"):
                        failed += st == "failed"
                        suspect += st == "suspect"
                    prev[key] = st
            await asyncio.sleep(0.1)
        return failed, suspect

    async def stop(self) -> None:
        for x in self.nodes:
            if x.proc is not None and x.proc.poll() is None:
                x.proc.terminate()
        for x in self.nodes:
            if x.proc is not None:
                try:
                    x.proc.wait(10)
                except subprocess.TimeoutExpired:
                    x.proc.kill()
                    x.proc.wait()


class InferMeshCluster(Cluster):
    kind = "im"

    async def start_node(self, node: Node, seeds: list[str]) -> None:
        node.grpc = f"127.0.0.1:{free_port('127.0.0.1')}"
        node.http = f"127.0.0.1:{free_port('127.0.0.1')}"
        cfg = {
            "node": {"id": node.name, "roles": ["gpu"], "zone": "bench"},
            "listen": {"grpc": node.grpc, "http": node.http},
            "gossip": {
                "bind": f"{node.ip}:{node.port}",
                "advertise": f"127.0.0.1:{node.proxy_port}",
                "seeds": seeds,
                "host": node.name,
                "reconnect_interval_s": 5.0,
            },
            "shutdown": {"drain_s": 0.0, "grace_s": 1.0},
            "log": {"level": "warning", "json": True},
        }
        path = self.workdir / f"{node.name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = (self.workdir / f"{node.name}.log").open("wb")
        node.proc = subprocess.Popen([INFERMESH, "agent", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                await self.view(node)
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"agent {node.name} did not start: see {self.workdir}/{node.name}.log")

    async def view(self, observer: Node) -> dict[str, str]:
        async with grpc.aio.insecure_channel(observer.grpc) as ch:
            resp = await membership_pb2_grpc.MembershipStub(ch).ListMembers(
                membership_pb2.ListMembersRequest(), timeout=2
            )
        names = {ALIVE: "alive", membership_pb2.MEMBER_STATUS_SUSPECT: "suspect", DEAD: "failed"}
        return {m.name: names.get(m.status, "left") for m in resp.members}

    async def since(self, observer: Node, member: str, status: int) -> float | None:
        """Wall time at which `observer` moved `member` into `status` (from its state age): ms-exact, no polling."""
        async with grpc.aio.insecure_channel(observer.grpc) as ch:
            resp = await membership_pb2_grpc.MembershipStub(ch).ListMembers(
                membership_pb2.ListMembersRequest(), timeout=2
            )
        now = time.time()
        for m in resp.members:
            if m.name == member and m.status == status:
                return now - m.state_age_s
        return None

    async def seen_at(self, observer: Node, member: str, event: str) -> float | None:
        return await self.since(observer, member, DEAD if event == "failed" else ALIVE)

    def metric_sum(self, name: str) -> float:
        total = 0.0
        for x in self.live():
            with contextlib.suppress(OSError):
                text = urllib.request.urlopen(f"http://{x.http}/metrics", timeout=3).read().decode()
                total += sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))
        return total


class SerfCluster(Cluster):
    kind = "serf"

    def __init__(self, workdir: Path, proxy: FaultProxy, ip_base: int, serf: str) -> None:
        super().__init__(workdir, proxy, ip_base)
        self.serf = serf
        self.rpc: dict[str, str] = {}
        # Serf runs this on every membership event with the members on stdin: exact times, no polling error.
        self.handler = workdir / "serf-handler.sh"
        self.handler.write_text(
            "#!/bin/sh\n"
            f'out="{workdir}/$SERF_SELF_NAME.events"\n'
            'while read name rest; do echo "$(date +%s.%N) $SERF_EVENT $name" >> "$out"; done\n'
        )
        self.handler.chmod(0o755)

    def events(self, observer: str, event: str, member: str) -> list[float]:
        path = self.workdir / f"{observer}.events"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == event and parts[2] == member:
                out.append(float(parts[0]))
        return out

    async def seen_at(self, observer: Node, member: str, event: str) -> float | None:
        # The last failure (a member may flap before it is declared failed for good), the first join.
        if event == "failed":
            failed = self.events(observer.name, "member-failed", member)
            return failed[-1] if failed else None
        joined = self.events(observer.name, "member-join", member)
        return joined[0] if joined else None

    async def start_node(self, node: Node, seeds: list[str]) -> None:
        rpc = f"127.0.0.1:{free_port('127.0.0.1')}"
        self.rpc[node.name] = rpc
        cmd = [
            self.serf,
            "agent",
            f"-node={node.name}",
            f"-bind={node.ip}:{node.port}",
            f"-advertise=127.0.0.1:{node.proxy_port}",
            f"-rpc-addr={rpc}",
            "-profile=lan",
            "-log-level=warn",
        ]
        cmd += [f"-join={s}" for s in seeds]  # fmt: skip
        cmd += [f"-event-handler={self.handler}"]
        log = (self.workdir / f"{node.name}.log").open("wb")
        node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                await self.view(node)
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"serf {node.name} did not start: see {self.workdir}/{node.name}.log")

    async def view(self, observer: Node) -> dict[str, str]:
        proc = await asyncio.create_subprocess_exec(
            self.serf, "members", f"-rpc-addr={self.rpc[observer.name]}", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError("serf members failed")
        view = {}
        for line in out.decode().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                view[parts[0]] = parts[2]  # alive | failed | left | leaving
        return view


async def run_system(cluster: Cluster, n: int, trials: int, loss_s: float, bytes_s: float) -> Result:
    res = Result()
    proxy = cluster.proxy
    try:
        await cluster.start(n)
        await asyncio.sleep(2.0)
        b0, t0 = proxy.stats.udp_bytes + proxy.stats.tcp_bytes, time.monotonic()
        await asyncio.sleep(bytes_s)
        res.bytes_per_node_s = (proxy.stats.udp_bytes + proxy.stats.tcp_bytes - b0) / n / (time.monotonic() - t0)
        proxy.loss = 0.10
        fp_before = cluster.metric_sum("infermesh_gossip_false_positives_total") if isinstance(
            cluster, InferMeshCluster) else 0.0  # fmt: skip
        failed, suspect = await cluster.count_false_positives(loss_s)
        if isinstance(cluster, InferMeshCluster):
            # A dead verdict that is refuted within one poll would escape polling; the victims count it themselves.
            failed = max(failed, int(cluster.metric_sum("infermesh_gossip_false_positives_total") - fp_before))
        res.false_positives, res.suspicions = failed, suspect
        proxy.loss = 0.0
        await cluster.wait_converged(n, 60)
        for _ in range(trials):
            res.detect_s.append(await cluster.measure_detection())
            res.dissem_s.append(await cluster.measure_join())
            await cluster.wait_converged(n, 60)
    finally:
        await cluster.stop()
    return res


def sim_figures(ns: list[int], seed: int) -> list[tuple[int, float, float, float, float]]:
    out = []
    for n in ns:
        t_wall = time.monotonic()
        sim = Simulation(n, seed, net=NetConfig(loss=0.01, delay_max=0.01))
        sim.run_until(1.0)
        victim = n // 3
        sim.crash(victim)
        start = sim.now
        origin = (victim + 1) % n
        sim.inject(origin, lambda s, now=start: s.set_summary(now, b"v1"))
        t_min = sim.config.suspicion_mult * max(1.0, math.log10(n)) * sim.config.probe_interval
        end = start + t_min * 2.5 + 5
        while sim.now < end:
            sim.run_until(sim.now + 0.5)
            seen = sim.observed.dead_at.get(sim.names[victim], {})
            if len(seen) == n - 1:
                break
        seen = sim.observed.dead_at.get(sim.names[victim], {})
        detect = max(seen.values()) - start if len(seen) == n - 1 else float("nan")
        got = sim.observed.summary_at.get((sim.names[origin], 1), {})
        dissem = max(got.values()) - start if len(got) == n - 2 else float("nan")
        out.append((n, detect, dissem, dissem / sim.config.gossip_interval, time.monotonic() - t_wall))
        print(f"  sim n={n}: detect {detect:.2f}s dissemination {dissem:.2f}s ({time.monotonic() - t_wall:.0f}s wall)",
              flush=True)  # fmt: skip
        del sim
    return out


async def main_async(args: argparse.Namespace) -> int:
    serf = ensure_serf()
    workdir = Path(tempfile.mkdtemp(prefix="gossip-bench-"))
    results: dict[str, Result] = {}
    for name in ("infermesh", "serf"):
        print(f"running {name}: {args.nodes} nodes, {args.trials} trials, {args.loss_seconds:.0f}s at 10% loss ...",
              flush=True)  # fmt: skip
        proxy = FaultProxy({}, seed=args.seed)
        await proxy.start()
        cluster: Cluster = (
            InferMeshCluster(workdir, proxy, 20) if name == "infermesh" else SerfCluster(workdir, proxy, 120, serf)
        )
        try:
            results[name] = await run_system(cluster, args.nodes, args.trials, args.loss_seconds, args.bytes_seconds)
        finally:
            await proxy.stop()
    ours, theirs = results["infermesh"], results["serf"]

    def med(xs: list[float]) -> float:
        return statistics.median(xs) if xs else float("nan")

    print()
    print(f"loopback, this machine ({os.cpu_count()} cores), {args.nodes} nodes, both behind the same proxy")
    print(f"{'metric':44} {'infermesh':>12} {'serf (lan)':>12}")
    rows = [
        ("failure detection after kill -9, median s", med(ours.detect_s), med(theirs.detect_s)),
        ("failure detection, max s", max(ours.detect_s), max(theirs.detect_s)),
        ("join dissemination (first->all), median s", med(ours.dissem_s), med(theirs.dissem_s)),
        ("false positives at 10% loss (failed marks)", ours.false_positives, theirs.false_positives),
        ("suspect observations at 10% loss", ours.suspicions, float("nan")),
        ("bytes sent per node per second", ours.bytes_per_node_s, theirs.bytes_per_node_s),
    ]
    for label, a, b in rows:
        print(f"{label:44} {a:>12.3f} {b:>12.3f}")
    print(f"  detection samples: infermesh {[round(x, 2) for x in ours.detect_s]}, serf "
          f"{[round(x, 2) for x in theirs.detect_s]}")  # fmt: skip
    print(f"  dissemination samples: infermesh {[round(x, 3) for x in ours.dissem_s]}, serf "
          f"{[round(x, 3) for x in theirs.dissem_s]}")  # fmt: skip

    print("\nsimulation (same SWIM core, 1% loss): crash detection and dissemination vs N")
    ns = [n for n in (16, 64, 256, 1024, 4096) if n <= args.max_n]
    figs = sim_figures(ns, args.seed)
    print(f"{'N':>6} {'detect s':>10} {'dissem s':>10} {'dissem rounds':>14} {'log2 N':>7} {'wall s':>8}")
    for n, d, s, r, w in figs:
        print(f"{n:>6} {d:>10.2f} {s:>10.2f} {r:>14.1f} {math.log2(n):>7.1f} {w:>8.1f}")

    rng = random.Random(args.seed)
    matrix = synthetic_matrix(64, rng)
    verr = median_relative_error(matrix, simulate(matrix, 200, rng))
    print(
        f"\nVivaldi median relative error, 64-node synthetic matrix (3 regions x 2 zones, 10% pair noise): {verr:.3f}"
    )

    detect_ratio = med(ours.detect_s) / med(theirs.detect_s)
    dissem_ratio = med(ours.dissem_s) / med(theirs.dissem_s) if med(theirs.dissem_s) > 0 else float("nan")
    print(
        f"summary: detect_ratio_vs_serf={detect_ratio:.2f} dissemination_ratio_vs_serf={dissem_ratio:.2f} "
        f"false_positives_10pct_loss={ours.false_positives} serf_false_positives_10pct_loss={theirs.false_positives} "
        f"bytes_per_node_s={ours.bytes_per_node_s:.0f} serf_bytes_per_node_s={theirs.bytes_per_node_s:.0f} "
        f"vivaldi_median_rel_error={verr:.3f}"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--trials", type=int, default=3, help="kill -9 + join measurements per system")
    p.add_argument("--loss-seconds", type=float, default=60.0, help="how long to run at 10%% UDP loss")
    p.add_argument("--bytes-seconds", type=float, default=15.0)
    p.add_argument("--max-n", type=int, default=1024, help="largest simulated cluster (up to 4096)")
    p.add_argument("--seed", type=int, default=1)
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
