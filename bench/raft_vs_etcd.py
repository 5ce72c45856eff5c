"""Benchmark: InferMesh's Raft policy store vs etcd 3.4, both 3 nodes on loopback, same Python gRPC clients.

Measures write throughput, p50/p99 commit latency, linearizable reads/s and failover (kill -9 the leader -> next
acknowledged write). Installs etcd from Debian (`etcd-server`) when missing.

    .venv/bin/python bench/raft_vs_etcd.py [--clients 32] [--value-size 256] [--duration 5] [--failovers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc  # noqa: E402
from agents.raft.testing.cluster import LocalCluster, free_port  # noqa: E402

# The few etcd v3 API messages we use, with etcd's own field numbers (etcdserver/etcdserverpb/rpc.proto).
ETCD_PROTO = """
syntax = "proto3";
package etcdserverpb;
message ResponseHeader { uint64 cluster_id = 1; uint64 member_id = 2; int64 revision = 3; uint64 raft_term = 4; }
message KeyValue { bytes key = 1; int64 create_revision = 2; int64 mod_revision = 3; int64 version = 4;
                   bytes value = 5; int64 lease = 6; }
message PutRequest { bytes key = 1; bytes value = 2; int64 lease = 3; bool prev_kv = 4; }
message PutResponse { ResponseHeader header = 1; KeyValue prev_kv = 2; }
message RangeRequest { bytes key = 1; bytes range_end = 2; int64 limit = 3; int64 revision = 4;
                       bool serializable = 7; }
message RangeResponse { ResponseHeader header = 1; repeated KeyValue kvs = 2; bool more = 3; int64 count = 4; }
message StatusRequest {}
message StatusResponse { ResponseHeader header = 1; string version = 2; int64 dbSize = 3; uint64 leader = 4;
                         uint64 raftIndex = 5; uint64 raftTerm = 6; }
service KV { rpc Range(RangeRequest) returns (RangeResponse); rpc Put(PutRequest) returns (PutResponse); }
service Maintenance { rpc Status(StatusRequest) returns (StatusResponse); }
"""


def etcd_modules(tmp: Path) -> tuple[Any, Any]:
    from grpc_tools import protoc

    (tmp / "etcdbench.proto").write_text(ETCD_PROTO)
    rc = protoc.main(["protoc", f"-I{tmp}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", "etcdbench.proto"])
    if rc != 0:
        raise RuntimeError("could not compile the etcd API subset")
    sys.path.insert(0, str(tmp))
    return importlib.import_module("etcdbench_pb2"), importlib.import_module("etcdbench_pb2_grpc")


def ensure_etcd() -> str:
    exe = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if exe is None:
        print("installing etcd-server etcd-client from Debian ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server", "etcd-client"], check=True)
        exe = shutil.which("etcd") or "/usr/bin/etcd"
    return exe


class EtcdCluster:
    def __init__(self, exe: str, workdir: Path, heartbeat_ms: int, election_ms: int) -> None:
        self.exe = exe
        self.workdir = workdir
        self.client_ports = [free_port() for _ in range(3)]
        self.peer_ports = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms

    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def start(self) -> None:
        initial = ",".join(f"n{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        env = {**os.environ, "ETCD_UNSUPPORTED_ARCH": os.uname().machine.replace("x86_64", "amd64")}
        for i in range(3):
            cp, pp = self.client_ports[i], self.peer_ports[i]
            args = [
                self.exe,
                "--name",
                f"n{i}",
                "--data-dir",
                str(self.workdir / f"n{i}"),
                "--listen-client-urls",
                f"http://127.0.0.1:{cp}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{cp}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{pp}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{pp}",
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "bench",
                "--heartbeat-interval",
                str(self.heartbeat_ms),
                "--election-timeout",
                str(self.election_ms),
                "--logger",
                "zap",
                "--log-level",
                "error",
            ]
            log = open(self.workdir / f"n{i}.log", "ab")  # noqa: SIM115 - lives as long as the process
            self.procs[i] = subprocess.Popen(args, stdout=log, stderr=log, env=env, start_new_session=True)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def drive(clients: int, duration: float, op: Callable[[int, int], Awaitable[None]]) -> tuple[int, list[float]]:
    lat: list[float] = []
    count = 0
    stop_at = time.monotonic() + duration

    async def one(c: int) -> None:
        nonlocal count
        i = 0
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                await op(c, i)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.01)
                continue
            lat.append(time.perf_counter() - t0)
            count += 1
            i += 1

    await asyncio.gather(*(one(c) for c in range(clients)))
    return count, lat


async def failover_time(kill: Callable[[], None], put_any: Callable[[], Awaitable[bool]]) -> float:
    t0 = time.monotonic()
    kill()
    while time.monotonic() - t0 < 60:
        if await put_any():
            return time.monotonic() - t0
        await asyncio.sleep(0.005)
    return float("inf")


async def bench_ours(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    runs: list[float] = []
    value = "x" * args.value_size
    for run in range(args.failovers):
        cluster = LocalCluster(
            3,
            tmp / f"ours{run}",
            cluster_id="bench",
            tick_ms=args.heartbeat_ms,
            election_ticks=args.election_ms // args.heartbeat_ms,
        )
        try:
            await asyncio.to_thread(cluster.start)
            await asyncio.to_thread(cluster.leader)
            chans = [grpc.aio.insecure_channel(m.address) for m in cluster.members.values()]
            stubs = [store_pb2_grpc.StoreStub(c) for c in chans]
            if run == 0:

                async def put(c: int, i: int) -> None:
                    await stubs[c % 3].Put(store_pb2.StorePutRequest(key=f"kv/b{c}-{i % 100}", value=value), timeout=5)  # noqa: B023

                async def get(c: int, i: int) -> None:
                    await stubs[c % 3].Get(store_pb2.StoreGetRequest(key=f"kv/b{c}-{i % 100}"), timeout=5)  # noqa: B023

                await drive(args.clients, 1.0, put)  # warm up
                n, lat = await drive(args.clients, args.duration, put)
                out |= {"writes_s": n / args.duration, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}
                n, _ = await drive(args.clients, args.duration, get)
                out["reads_s"] = n / args.duration
            leader = await asyncio.to_thread(cluster.leader)
            live = [stubs[i - 1] for i in cluster.members if i != leader]

            async def put_any() -> bool:
                for s in live:  # noqa: B023
                    try:
                        await s.Put(store_pb2.StorePutRequest(key="kv/failover", value="1"), timeout=0.25)
                        return True
                    except grpc.aio.AioRpcError:
                        continue
                return False

            runs.append(await failover_time(lambda: cluster.kill(leader), put_any))  # noqa: B023
            for c in chans:
                await c.close()
        finally:
            cluster.stop()
    out["failover_s"] = statistics.median(runs)
    return out


async def bench_etcd(args: argparse.Namespace, tmp: Path, exe: str, pb: Any, pbg: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    runs: list[float] = []
    value = b"x" * args.value_size
    for run in range(args.failovers):
        etcd = EtcdCluster(exe, tmp / f"etcd{run}", args.heartbeat_ms, args.election_ms)
        (tmp / f"etcd{run}").mkdir(parents=True)
        try:
            etcd.start()
            chans = [grpc.aio.insecure_channel(a) for a in etcd.addresses()]
            kvs = [pbg.KVStub(c) for c in chans]
            maint = [pbg.MaintenanceStub(c) for c in chans]
            deadline = time.monotonic() + 30
            leader_idx = -1
            while leader_idx < 0:
                for i, m in enumerate(maint):
                    try:
                        st = await m.Status(pb.StatusRequest(), timeout=1)
                    except grpc.aio.AioRpcError:
                        continue
                    if st.leader and st.leader == st.header.member_id:
                        leader_idx = i
                if time.monotonic() > deadline:
                    raise TimeoutError("etcd elected no leader")
                await asyncio.sleep(0.1)
            if run == 0:

                async def put(c: int, i: int) -> None:
                    await kvs[c % 3].Put(pb.PutRequest(key=f"kv/b{c}-{i % 100}".encode(), value=value), timeout=5)  # noqa: B023

                async def get(c: int, i: int) -> None:
                    await kvs[c % 3].Range(pb.RangeRequest(key=f"kv/b{c}-{i % 100}".encode()), timeout=5)  # noqa: B023

                await drive(args.clients, 1.0, put)
                n, lat = await drive(args.clients, args.duration, put)
                out |= {"writes_s": n / args.duration, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}
                n, _ = await drive(args.clients, args.duration, get)
                out["reads_s"] = n / args.duration
            live = [kvs[i] for i in range(3) if i != leader_idx]

            async def put_any() -> bool:
                for s in live:  # noqa: B023
                    try:
                        await s.Put(pb.PutRequest(key=b"kv/failover", value=b"1"), timeout=0.25)
                        return True
                    except grpc.aio.AioRpcError:
                        continue
                return False

            def kill() -> None:
                etcd.procs[leader_idx].send_signal(signal.SIGKILL)  # noqa: B023

            runs.append(await failover_time(kill, put_any))
            for c in chans:
                await c.close()
        finally:
            etcd.stop()
    out["failover_s"] = statistics.median(runs)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--value-size", type=int, default=256)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured phase")
    ap.add_argument("--failovers", type=int, default=2, help="leader kills per system (median reported)")
    ap.add_argument("--heartbeat-ms", type=int, default=100, help="both systems (etcd default 100)")
    ap.add_argument("--election-ms", type=int, default=1000, help="both systems (etcd default 1000)")
    args = ap.parse_args()
    exe = ensure_etcd()
    with tempfile.TemporaryDirectory(prefix="raft-bench-") as d:
        tmp = Path(d)
        pb, pbg = etcd_modules(tmp)
        print(
            f"clients={args.clients} value={args.value_size}B duration={args.duration}s per phase, "
            f"heartbeat={args.heartbeat_ms}ms election={args.election_ms}ms, fsync on, {os.cpu_count()} CPUs",
            flush=True,
        )
        ours = asyncio.run(bench_ours(args, tmp))
        etcd = asyncio.run(bench_etcd(args, tmp, exe, pb, pbg))
    rows = [
        ("writes/s", "writes_s", "{:.0f}"),
        ("p50 commit ms", "p50_ms", "{:.2f}"),
        ("p99 commit ms", "p99_ms", "{:.2f}"),
        ("linearizable reads/s", "reads_s", "{:.0f}"),
        ("failover s (kill -9 leader -> next ack)", "failover_s", "{:.2f}"),
    ]
    print(f"{'metric':42} {'infermesh raft':>15} {'etcd 3.4':>12} {'ratio':>8}")
    for label, key, f in rows:
        ratio = ours[key] / etcd[key] if etcd[key] else float("nan")
        print(f"{label:42} {f.format(ours[key]):>15} {f.format(etcd[key]):>12} {ratio:>8.2f}")
    print(
        f"summary: write_ratio_vs_etcd={ours['writes_s'] / etcd['writes_s']:.2f} "
        f"p99_ratio_vs_etcd={ours['p99_ms'] / etcd['p99_ms']:.2f} "
        f"failover_ratio_vs_etcd={ours['failover_s'] / etcd['failover_s']:.2f} "
        f"read_ratio_vs_etcd={ours['reads_s'] / etcd['reads_s']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
