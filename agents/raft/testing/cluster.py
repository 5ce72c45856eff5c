"""Run a Raft policy-store cluster of real `infermesh agent` processes on loopback, and drive it with concurrent
clients whose histories feed the linearizability checker (used by the process tests and the etcd benchmark)."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from agents.binding import free_port
from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc
from agents.security.tls import ClientIdentity, dial, dial_sync

from .lincheck import INF, UNKNOWN, Op

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Member:
    node_id: int
    grpc_port: int
    http_port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.grpc_port}"


class LocalCluster:
    def __init__(
        self,
        n: int,
        workdir: Path,
        *,
        cluster_id: str = "test-cluster",
        tick_ms: int = 50,
        election_ticks: int = 10,
        fsync: bool = True,
        extra: dict[str, Any] | None = None,
        tls: dict[int, dict[str, Any]] | None = None,
        client: ClientIdentity | None = None,
        hosts: dict[int, str] | None = None,
        prefix: Callable[[int], list[str]] | None = None,
        sections: Callable[[Member], dict[str, Any]] | None = None,
    ) -> None:
        """`tls`: node id -> that member's top-level `tls:` section (mTLS between members and with clients);
        `client`: the identity this harness dials the members with; `hosts`: node id -> the address it serves on
        (default loopback); `prefix`: node id -> argv prefix that starts it (e.g. in a network namespace);
        `sections`: more top-level config sections per member (e.g. gossip)."""
        self.workdir = workdir
        self.client = client
        self.prefix = prefix
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "data"
        self.members: dict[int, Member] = {}
        for i in range(1, n + 1):
            self.members[i] = Member(i, free_port(), free_port(), workdir / f"node{i}.yaml", workdir / f"node{i}.log")
            self.members[i].host = (hosts or {}).get(i, "127.0.0.1")
        peers = {i: m.address for i, m in self.members.items()}
        for i, m in self.members.items():
            cfg = {
                "node": {"id": f"raft-{i}", "roles": ["coordinator"]},
                "listen": {"grpc": m.address, "http": f"127.0.0.1:{m.http_port}"},
                "shutdown": {"drain_s": 0, "grace_s": 0.5},
                "log": {"level": "warning"},
                "raft": {
                    "node_id": i,
                    "cluster_id": cluster_id,
                    "peers": peers,
                    "tick_ms": tick_ms,
                    "election_ticks": election_ticks,
                    "fsync": fsync,
                    "data_dir": f"raft/node-{i}",
                    **(extra or {}),
                },
            }
            if tls is not None:
                cfg["tls"] = tls[i]
            if sections is not None:
                cfg.update(sections(m))
            m.config.write_text(yaml.safe_dump(cfg))

    def start(self, node: int | None = None, wait: bool = True) -> None:
        for m in [self.members[node]] if node else list(self.members.values()):
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "INFERMESH_DATA_DIR": str(self.data_dir)}
            with open(m.log, "ab") as log:
                m.proc = subprocess.Popen(
                    [
                        *(self.prefix(m.node_id) if self.prefix else []),
                        sys.executable,
                        "-c",
                        "import sys; from meshweb.cli import main; sys.exit(main())",
                        "agent",
                        "--config",
                        str(m.config),
                    ],
                    stdout=log,
                    stderr=log,
                    cwd=ROOT,
                    env=env,
                    start_new_session=True,
                )
        if wait:
            for m in [self.members[node]] if node else list(self.members.values()):
                self.wait_serving(m)

    def wait_serving(self, m: Member, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m.proc is not None and m.proc.poll() is not None:
                raise RuntimeError(f"node {m.node_id} exited: {m.log.read_text()[-3000:]}")
            try:
                self.status(m.node_id, timeout=0.5)
                return
            except grpc.RpcError:
                time.sleep(0.1)
        raise TimeoutError(f"node {m.node_id} did not serve within {timeout}s")

    def status(self, node: int, timeout: float = 1.0) -> store_pb2.RaftStatusResponse:
        with dial_sync(self.members[node].address, self.client) as ch:
            return store_pb2_grpc.RaftAdminStub(ch).Status(store_pb2.RaftStatusRequest(), timeout=timeout)

    def leader(self, timeout: float = 30.0, exclude: set[int] | None = None) -> int:
        """A node that reports itself leader and that a majority of live members agree on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen: dict[int, int] = {}
            for i, m in self.members.items():
                if m.proc is None or m.proc.poll() is not None or i in (exclude or set()):
                    continue
                try:
                    st = self.status(i, timeout=0.3)
                except grpc.RpcError:
                    continue
                if st.leader:
                    seen[st.leader] = seen.get(st.leader, 0) + 1
            for lead, votes in seen.items():
                if votes > len(self.members) // 2 and lead not in (exclude or set()):
                    return lead
            time.sleep(0.05)
        raise TimeoutError(f"no agreed leader within {timeout}s")

    def kill(self, node: int) -> None:
        m = self.members[node]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait()

    def pause(self, node: int) -> None:
        assert self.members[node].proc is not None
        self.members[node].proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self, node: int) -> None:
        assert self.members[node].proc is not None
        self.members[node].proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    def stop(self) -> None:
        for m in self.members.values():
            if m.proc is not None and m.proc.poll() is None:
                m.proc.send_signal(signal.SIGCONT)
                m.proc.terminate()
        for m in self.members.values():
            if m.proc is not None:
                try:
                    m.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Workload:
    """Concurrent clients doing put/get/cas on a few keys through random members, with retries that reuse their
    session sequence number, so a retried write applies at most once."""

    addresses: list[str]
    identity: ClientIdentity | None = None
    keys: int = 4
    clients: int = 6
    op_timeout_s: float = 2.0
    give_up_s: float = 10.0
    prefix: str = "kv/k"  # keys are prefix + index; a fresh prefix per run starts from empty registers
    history: list[Op] = field(default_factory=list)
    acked_writes: int = 0
    stale_reads: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    _values: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def run(self, duration_s: float, seed: int = 1) -> None:
        chans = [dial(a, self.identity) for a in self.addresses]
        stubs = [store_pb2_grpc.StoreStub(c) for c in chans]
        stop_at = time.monotonic() + duration_s
        try:
            await asyncio.gather(
                *(self._client(c, stubs, stop_at, random.Random(seed * 1000 + c)) for c in range(1, self.clients + 1))
            )
        finally:
            for c in chans:
                await c.close()

    async def _client(self, c: int, stubs: list[store_pb2_grpc.StoreStub], stop_at: float, rng: random.Random) -> None:
        client_id = (os.getpid() << 20) + c * 7919 + rng.randrange(1 << 16)
        seq = 0
        while time.monotonic() < stop_at:
            key = f"{self.prefix}{rng.randrange(self.keys)}"
            r = rng.random()
            if r < 0.4:
                await self._get(c, key, stubs, rng)
                continue
            seq += 1
            value = f"v{next(self._values)}"
            if r < 0.8:
                op = Op(c, key, "put", time.monotonic(), INF, value, None)
                req: Any = store_pb2.StorePutRequest(key=key, value=value, client_id=client_id, seq=seq)
                method = "Put"
            else:
                expected = f"v{rng.randrange(1, max(2, next(self._values)))}"
                op = Op(c, key, "cas", time.monotonic(), INF, (expected, value), UNKNOWN)
                req = store_pb2.StoreCasRequest(key=key, expected=expected, value=value, client_id=client_id, seq=seq)
                method = "Cas"
            self.history.append(op)
            give_up = time.monotonic() + self.give_up_s
            while time.monotonic() < give_up:
                stub = rng.choice(stubs)
                try:
                    resp = await getattr(stub, method)(req, timeout=self.op_timeout_s)
                except grpc.aio.AioRpcError as exc:
                    self.errors[exc.code().name] = self.errors.get(exc.code().name, 0) + 1
                    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        self.errors["last_invalid"] = exc.details()  # type: ignore[assignment]
                    await asyncio.sleep(0.05)
                    continue
                op.ret = time.monotonic()
                op.out = resp.succeeded if method == "Cas" else None
                self.acked_writes += 1
                break

    async def _get(self, c: int, key: str, stubs: list[store_pb2_grpc.StoreStub], rng: random.Random) -> None:
        call = time.monotonic()
        try:
            resp = await rng.choice(stubs).Get(store_pb2.StoreGetRequest(key=key), timeout=self.op_timeout_s)
        except grpc.aio.AioRpcError as exc:
            self.errors[exc.code().name] = self.errors.get(exc.code().name, 0) + 1
            await asyncio.sleep(0.05)
            return
        if resp.stale:
            self.stale_reads += 1  # possibly stale by its own admission: not a linearizable claim
            return
        self.history.append(Op(c, key, "get", call, time.monotonic(), None, resp.kvs[0].value if resp.kvs else None))

    async def final_reads(self) -> None:
        """Linearizable reads of every key through every live member, after the faults."""
        for addr in self.addresses:
            async with dial(addr, self.identity) as ch:
                stub = store_pb2_grpc.StoreStub(ch)
                for k in range(self.keys):
                    key = f"{self.prefix}{k}"
                    call = time.monotonic()
                    try:
                        resp = await stub.Get(store_pb2.StoreGetRequest(key=key), timeout=5)
                    except grpc.aio.AioRpcError:
                        continue
                    if not resp.stale:
                        value = resp.kvs[0].value if resp.kvs else None
                        self.history.append(Op(0, key, "get", call, time.monotonic(), None, value))
