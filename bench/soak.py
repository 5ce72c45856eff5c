"""Soak: the zoned mesh of the fault scenarios (seven agents in three zones, each in its own network namespace, with
routers and emulated runtimes in two zones) under a steady mixed load, with a fault injected every few seconds:
a zone cut off (both ways or one way), 10% loss on every link, an agent killed with -9 and restarted (any but a1,
which lives the whole run). Memory (RSS), open file descriptors and threads of every agent and router are sampled; a
process that lived through the whole run must not grow without bound. Needs root and iproute2 (tests/faults/netbed.py).

    .venv/bin/python bench/soak.py --minutes 30 [--fault-every 5] [--seed 1] [--warmup-minutes 2]

Load: chat completions through both routers (half streamed), and Raft writes with client sessions (retried with
the same sequence number, so a retry applies at most once) over 256 keys per writer, overwritten; each key's last
acknowledged value (or a later write whose outcome is unknown) is read back at the end.
Ends with `summary: requests=… failed_after_first_byte=… lost_writes=… rss_growth_mb_per_h=… fd_growth=…`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc  # noqa: E402
from tests.faults.zoned import ZonedMesh  # noqa: E402

WITNESS = 1  # agent a1 is never killed: one agent lives the whole run, so its growth is measured
KEYS_PER_WRITER = 256  # each writer's last acknowledged value per key is read back at the end


def proc_sample(pid: int) -> tuple[float, int, int] | None:
    """RSS in MB, open file descriptors, threads of a live process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, fds, int(fields["Threads"])


def slope_per_h(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of value over time, per hour."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mt) * (v - mv) for t, v in points) / den * 3600


class Load:
    def __init__(self, mesh: ZonedMesh, stop: threading.Event) -> None:
        self.mesh, self.stop = mesh, stop
        self.requests = 0
        self.ok = 0
        self.failed_before_first_byte = 0
        self.failed_after_first_byte = 0
        self.writes = 0
        self.acked: dict[str, str] = {}
        self.unknown: dict[str, str] = {}  # key -> value of a write whose outcome is unknown
        self.write_errors = 0
        self.lock = threading.Lock()

    def infer(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=20) as client:
            while not self.stop.is_set():
                zone = rng.choice(list(self.mesh.routers))
                stream = rng.random() < 0.5
                body = {"model": "demo-llm", "messages": [{"role": "user", "content": "soak"}], "max_tokens": 8,
                        "stream": stream}  # fmt: skip
                first = False
                try:
                    with client.stream("POST", self.mesh.routers[zone].url + "/v1/chat/completions", json=body,
                                       headers={"Authorization": "Bearer demo-key"}) as resp:  # fmt: skip
                        data = b""
                        for chunk in resp.iter_bytes():
                            first = True
                            data += chunk
                    good = resp.status_code == 200 and (b"[DONE]" in data if stream else b"choices" in data)
                    clear = resp.status_code != 200 and b"error" in data
                    with self.lock:
                        self.requests += 1
                        if good:
                            self.ok += 1
                        elif resp.status_code == 200:
                            self.failed_after_first_byte += 1
                        elif not clear:
                            self.failed_after_first_byte += 1  # an error without a body saying what
                        else:
                            self.failed_before_first_byte += 1
                except httpx.HTTPError:
                    with self.lock:
                        self.requests += 1
                        if first:
                            self.failed_after_first_byte += 1
                        else:
                            self.failed_before_first_byte += 1

    def write(self, seed: int) -> None:
        rng = random.Random(seed)
        client_id = (os.getpid() << 16) + seed
        seq = 0
        while not self.stop.is_set():
            seq += 1
            # a bounded set of keys, overwritten: the store's size stays flat, so an agent's growth is not its data
            key, value = f"kv/soak-{seed}-{seq % KEYS_PER_WRITER}", f"v{seq}"
            req = store_pb2.StorePutRequest(key=key, value=value, client_id=client_id, seq=seq)
            give_up = time.monotonic() + 20
            while time.monotonic() < give_up and not self.stop.is_set():
                member = rng.choice(list(self.mesh.cluster.members.values()))
                try:
                    with grpc.insecure_channel(member.address) as ch:
                        store_pb2_grpc.StoreStub(ch).Put(req, timeout=2)
                except grpc.RpcError:
                    with self.lock:
                        self.write_errors += 1
                    time.sleep(0.1)
                    continue
                with self.lock:
                    self.writes += 1
                    self.acked[key] = value
                    self.unknown.pop(key, None)
                break
            else:  # given up (or stopped) unacknowledged: it may still apply, until the key's next acknowledged write
                with self.lock:
                    self.unknown[key] = value
            time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="how long the load and the faults run")
    ap.add_argument("--fault-every", type=float, default=5.0, help="seconds between injected faults")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds between process samples")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--warmup-minutes", type=float, default=2.0,
        help="samples of the first minutes (imports, connections, caches filling) are left out of the growth figures",
    )  # fmt: skip
    args = ap.parse_args()
    if args.minutes <= 0 or args.fault_every <= 0 or args.sample_every <= 0:
        ap.error("--minutes, --fault-every and --sample-every must be positive")
    if not 0 <= args.warmup_minutes < args.minutes:
        ap.error("--warmup-minutes must be at least 0 and shorter than --minutes")
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    mesh = ZonedMesh(workdir, seed=args.seed)
    print(f"soak: starting the mesh in {workdir}", flush=True)
    mesh.start()
    stop = threading.Event()
    load = Load(mesh, stop)
    threads = [threading.Thread(target=load.infer, args=(i,), daemon=True) for i in range(2)]
    threads += [threading.Thread(target=load.write, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    samples: dict[str, list[tuple[float, float, int, int]]] = {}
    restarted: set[str] = set()
    faults: dict[str, int] = {}
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    next_fault, next_sample = t0 + args.fault_every, t0
    down: int | None = None
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                next_sample += args.sample_every
                procs = {f"agent {mesh.host_of(i)}": m.proc for i, m in mesh.cluster.members.items()}
                procs |= {f"router {z}": r.proc for z, r in mesh.routers.items()}
                for name, proc in procs.items():
                    s = proc_sample(proc.pid) if proc is not None and proc.poll() is None else None
                    if s is not None:
                        samples.setdefault(name, []).append((now - t0, *s))
            if now >= next_fault:
                next_fault += args.fault_every
                mesh.bed.heal()
                if down is not None:
                    mesh.cluster.start(down)
                    proc = mesh.cluster.members[down].proc
                    assert proc is not None
                    mesh.bed.track(proc)
                    down = None
                kind = rng.choice(["cut zone", "one-way cut", "loss 10%", "kill -9", "none"])
                faults[kind] = faults.get(kind, 0) + 1
                zone = rng.choice(list(mesh.zones))
                inside = mesh.bed.in_zone(zone)
                outside = [h for h in mesh.bed.hosts if h not in inside and h != "observer"]
                if kind == "cut zone":
                    mesh.bed.partition(inside, outside)
                elif kind == "one-way cut":
                    mesh.bed.partition(inside, outside, one_way=True)
                elif kind == "loss 10%":
                    mesh.bed.degrade(loss=0.1)
                elif kind == "kill -9":
                    down = rng.choice([i for i in mesh.cluster.members if i != WITNESS])
                    mesh.cluster.kill(down)
                    restarted.add(f"agent {mesh.host_of(down)}")
            time.sleep(0.2)
        mesh.bed.heal()
        if down is not None:
            mesh.cluster.start(down)
        stop.set()
        for t in threads:
            t.join(30)
        mesh.cluster.leader(60)
        mesh.wait_converged(120)
        # every acknowledged write, read back linearizably
        lost = 0
        with grpc.insecure_channel(mesh.cluster.members[1].address) as ch:
            stub = store_pb2_grpc.StoreStub(ch)
            for key, value in sorted(load.acked.items()):
                resp = stub.Get(store_pb2.StoreGetRequest(key=key), timeout=10)
                if resp.stale or not resp.kvs or resp.kvs[0].value not in {value, load.unknown.get(key)}:
                    lost += 1
    finally:
        stop.set()
        mesh.close()
    elapsed = time.monotonic() - t0
    load_avg = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nsoak: {elapsed / 60:.1f} min, faults {json.dumps(faults)}; {load_avg}")
    print(f"growth figures from the samples after the first {args.warmup_minutes:g} min (warm-up)")
    print(f"{'process':<14} {'rss_first_mb':>12} {'rss_last_mb':>11} {'rss_mb_per_h':>12} {'fds_first':>9} "
          f"{'fds_last':>8} {'threads':>7}  note")  # fmt: skip
    growth, fd_growth = [], []
    warm = args.warmup_minutes * 60
    for name, all_pts in sorted(samples.items()):
        whole = name not in restarted
        pts = [p for p in all_pts if p[0] >= warm] or all_pts[-1:]
        rss = slope_per_h([(t, r) for t, r, _, _ in pts])
        if whole:
            growth.append(rss)
            fd_growth.append(pts[-1][2] - pts[0][2])
        note = "" if whole else "restarted: left out of the growth figures"
        print(f"{name:<14} {pts[0][1]:>12.1f} {pts[-1][1]:>11.1f} {rss:>12.1f} {pts[0][2]:>9} {pts[-1][2]:>8} "
              f"{pts[-1][3]:>7}  {note}")  # fmt: skip
    print(f"\nrequests {load.requests} ok {load.ok} failed_before_first_byte {load.failed_before_first_byte} "
          f"failed_after_first_byte {load.failed_after_first_byte}; writes acked {load.writes} "
          f"(errors retried {load.write_errors}), lost {lost}")  # fmt: skip
    print(
        f"summary: requests={load.requests} failed_after_first_byte={load.failed_after_first_byte} "
        f"lost_writes={lost} rss_growth_mb_per_h={max(growth, default=0.0):.1f} "
        f"fd_growth={max(fd_growth, default=0)} minutes={elapsed / 60:.1f}"
    )
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
