"""Real `infermesh agent` processes on loopback with gossip: ctl members, SIGSTOP/SIGCONT (suspect, refute, return),
a partition through the fault-injecting proxy (both sides local-only, converge on heal), and kill -9 (dead within
the configured bound)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from agents.binding import free_port
from agents.gossip.testing.faultproxy import FaultProxy
from agents.proto.infermesh.v1 import membership_pb2, membership_pb2_grpc, state_pb2, state_pb2_grpc

pytestmark = pytest.mark.e2e

N = 6
PROBE_INTERVAL = 0.5
# Configured detection bound: maximum suspicion timeout for this size (6 x 4 x log10(6)->1 x 0.5 s) + a probe round
# + dissemination, with margin for a loaded two-core machine.
DEAD_BOUND_S = 6 * 4 * 1 * PROBE_INTERVAL + 3 * PROBE_INTERVAL + 3.0
INFERMESH = str(Path(sys.executable).with_name("infermesh"))


@dataclass
class Agent:
    name: str
    ip: str  # the node's own loopback address (the proxy tells nodes apart by it)
    grpc_port: int
    proxy_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


async def members(agent: Agent) -> membership_pb2.ListMembersResponse:
    async with grpc.aio.insecure_channel(agent.grpc) as ch:
        resp: membership_pb2.ListMembersResponse = await membership_pb2_grpc.MembershipStub(ch).ListMembers(
            membership_pb2.ListMembersRequest(), timeout=3
        )
        return resp


async def status_of(agent: Agent, name: str) -> tuple[int, int] | None:
    for m in (await members(agent)).members:
        if m.name == name:
            return m.status, m.incarnation
    return None


async def wait_until(cond: Callable[[], object], timeout: float, what: str) -> float:
    start = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - start < timeout:
        try:
            if await cond():  # type: ignore[misc]
                return time.monotonic() - start
        except grpc.RpcError as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not reached within {timeout:.0f}s (last error: {last})")


@pytest.fixture(scope="module")
def tmp_mesh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mesh")


@pytest.fixture
async def mesh(tmp_mesh: Path) -> AsyncIterator[tuple[list[Agent], FaultProxy]]:
    ips = [f"127.0.0.{20 + i}" for i in range(N)]
    real = [(ip, free_port(ip, udp_too=True)) for ip in ips]  # gossip: UDP and TCP
    proxy = FaultProxy({})
    await proxy.start()
    proxied = [await proxy.add_route(("127.0.0.1", 0), target) for target in real]
    agents: list[Agent] = []
    # One emulated runtime on node-0: its target must reach every other agent through gossip summaries.
    emu_port = free_port()
    emulator = subprocess.Popen(
        [INFERMESH, "emulate-runtime", "--port", str(emu_port), "--flavor", "vllm", "--model", "mesh-llm", "--instant"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for i in range(N):
            name = f"node-{i}"
            cfg = {
                "node": {"id": name, "roles": ["gpu", "router"], "zone": f"zone-{i % 2}"},
                "listen": {"grpc": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}"},
                "gossip": {
                    "bind": f"{real[i][0]}:{real[i][1]}",
                    "advertise": f"127.0.0.1:{proxied[i][1]}",
                    "seeds": [f"127.0.0.1:{proxied[j][1]}" for j in range(min(3, N)) if j != i],
                    "probe_interval_s": PROBE_INTERVAL,
                    "probe_timeout_s": 0.25,
                    "reconnect_interval_s": 2.0,
                    "region": "loopback",
                    "host": name,
                },
                "shutdown": {"drain_s": 0.0, "grace_s": 1.0},
                "runtimes": [{"url": f"http://127.0.0.1:{emu_port}", "flavor": "vllm"}] if i == 0 else [],
                "log": {"level": "info", "json": True},
            }
            path = tmp_mesh / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            log = tmp_mesh / f"{name}.log"
            with log.open("wb") as fh:
                proc = subprocess.Popen(
                    [INFERMESH, "agent", "--config", str(path)], stdout=fh, stderr=subprocess.STDOUT
                )
            agents.append(Agent(name, ips[i], int(cfg["listen"]["grpc"].split(":")[1]), proxied[i][1], proc, log))  # type: ignore[index]

        async def all_alive() -> bool:
            for a in agents:
                resp = await members(a)
                if sum(m.status == membership_pb2.MEMBER_STATUS_ALIVE for m in resp.members) != N:
                    return False
            return True

        await wait_until(all_alive, 60, "all agents see all members alive")
        yield agents, proxy
    finally:
        for a in agents:
            if a.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    a.proc.send_signal(signal.SIGCONT)
                a.proc.terminate()
        for a in agents:
            try:
                a.proc.wait(10)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait(5)
        await proxy.stop()
        emulator.terminate()
        emulator.wait(10)


async def test_members_pause_partition_and_kill(mesh: tuple[list[Agent], FaultProxy]) -> None:
    agents, proxy = mesh

    # --- ctl members --json lists every member with state, incarnation and coordinate (a peer's coordinate is
    # known once this agent has probed it: within one probe round).
    async def ctl_members_complete() -> bool:
        out = subprocess.run(
            [INFERMESH, "ctl", "--agent", agents[1].grpc, "members", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert {m["name"] for m in doc["members"]} == {a.name for a in agents}
        assert doc["degraded"] is False
        assert all(isinstance(m["incarnation"], int) and m["state"] in ("alive", "suspect") for m in doc["members"])
        # A loaded machine may delay an ack into a brief suspicion; wait for a view where all are alive.
        alive = all(m["state"] == "alive" for m in doc["members"])
        # loss and RTT to each peer, measured by this agent's direct probes (the network quarantine rule's data)
        peers = [m for m in doc["members"] if not m["local"]]
        measured = all("loss" in m and 0 <= m["loss"] <= 1 and 0 < m.get("measured_rtt_s", 0) < 1 for m in peers)
        coordinates = all(m["coordinate"] is not None and len(m["coordinate"]["vec"]) == 8 for m in doc["members"])
        return alive and measured and coordinates

    await wait_until(ctl_members_complete, 30, "ctl members shows a coordinate for every member")

    # --- node-0's fused targets ride on gossip: every other agent lists them (remote, with their node).
    async def remote_target_everywhere() -> bool:
        for a in agents[1:]:
            async with grpc.aio.insecure_channel(a.grpc) as ch:
                resp = await state_pb2_grpc.StatePlaneStub(ch).ListTargets(state_pb2.ListTargetsRequest(), timeout=3)
            if not any(t.node == "node-0" and t.model == "mesh-llm" for t in resp.targets):
                return False
        return True

    await wait_until(remote_target_everywhere, 30, "node-0's target visible on every agent")

    # --- SIGSTOP one: it is suspected; after SIGCONT it refutes (newer incarnation) and is alive everywhere.
    paused = agents[4]
    others = [a for a in agents if a is not paused]
    before = await status_of(others[0], paused.name)
    assert before is not None
    paused.proc.send_signal(signal.SIGSTOP)
    seen: set[int] = set()

    async def suspected() -> bool:
        for a in others:
            st = await status_of(a, paused.name)
            if st is not None:
                seen.add(st[0])
        return membership_pb2.MEMBER_STATUS_SUSPECT in seen

    await wait_until(suspected, 20, f"{paused.name} suspected while stopped")
    paused.proc.send_signal(signal.SIGCONT)

    async def refuted() -> bool:
        for a in others:
            st = await status_of(a, paused.name)
            if st is None or st[0] != membership_pb2.MEMBER_STATUS_ALIVE or st[1] <= before[1]:
                return False
        return True

    await wait_until(refuted, 30, f"{paused.name} refutes and is alive again with a newer incarnation")

    # --- Partition 3 | 3 through the proxy: both sides go local-only and keep serving; heal converges.
    left, right = agents[:3], agents[3:]
    proxy.partition([[a.ip for a in left], [a.ip for a in right]])

    async def both_sides_degraded() -> bool:
        for a in agents:
            resp = await members(a)
            if not resp.degraded:
                return False
            mine = left if a in left else right
            for m in resp.members:
                want_alive = any(x.name == m.name for x in mine)
                if want_alive != (m.status == membership_pb2.MEMBER_STATUS_ALIVE):
                    return False
        return True

    await wait_until(both_sides_degraded, DEAD_BOUND_S + 15, "both sides of the partition in local-only mode")
    assert proxy.stats.partitioned > 0
    cut = {m.name: m for m in (await members(left[0])).members}
    assert all(cut[a.name].loss == 1.0 for a in right), cut  # the other side is lost entirely
    proxy.heal()

    async def converged() -> bool:
        for a in agents:
            resp = await members(a)
            if resp.degraded or any(m.status != membership_pb2.MEMBER_STATUS_ALIVE for m in resp.members):
                return False
        return True

    healed_in = await wait_until(converged, 45, "all members alive everywhere after heal")
    assert healed_in < 45

    # --- kill -9 one: every other agent marks it dead within the configured bound.
    victim = agents[2]
    victim.proc.kill()
    victim.proc.wait(5)
    rest = [a for a in agents if a is not victim]

    async def all_dead() -> bool:
        for a in rest:
            st = await status_of(a, victim.name)
            if st is None or st[0] != membership_pb2.MEMBER_STATUS_DEAD:
                return False
        return True

    took = await wait_until(all_dead, DEAD_BOUND_S, f"{victim.name} dead at all {len(rest)} survivors")
    print(f"kill -9 -> dead at all survivors in {took:.2f}s (bound {DEAD_BOUND_S:.1f}s); heal took {healed_in:.1f}s")
    for a in rest:
        assert a.proc.poll() is None, f"{a.name} exited: {a.log.read_text()[-2000:]}"
