"""A zoned mesh on the network test bed: agents in three zones, each agent in its own namespace with gossip and a
seat in one Raft group, an emulated runtime and a router next to the first agent of chosen zones. Built from the
shared helpers (agents/raft/testing/cluster.py's LocalCluster, tests/router/procs.py's start_router); used by the fault
scenarios and by bench/soak.py."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from agents.proto.infermesh.v1 import membership_pb2, membership_pb2_grpc, store_pb2, store_pb2_grpc
from agents.raft.testing.cluster import LocalCluster, Member, free_port
from tests.faults.netbed import NetBed
from tests.router.procs import RouterProc, router_config, start_router

ZONES = {"za": 3, "zb": 2, "zc": 2}  # seven agents: a majority survives losing any one zone
PROBE_INTERVAL_S = 0.5


def gossip_port() -> int:
    """A port free for both TCP and UDP (gossip uses both)."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no port free for both TCP and UDP")


@dataclass
class ZonedMesh:
    workdir: Path
    zones: dict[str, int] = field(default_factory=lambda: dict(ZONES))
    router_zones: tuple[str, ...] = ("za", "zc")
    seed: int = 1
    # argv put before every process of a host, inside its namespace (e.g. a clock shifted for one host)
    wrap: Callable[[str], list[str]] = field(default=lambda host: [])
    election_ticks: int = 20  # of 50 ms
    bed: NetBed = field(init=False)
    cluster: LocalCluster = field(init=False)
    names: dict[int, str] = field(init=False)  # raft node id -> host
    routers: dict[str, RouterProc] = field(init=False, default_factory=dict)  # zone -> its router
    emulators: dict[str, str] = field(init=False, default_factory=dict)  # zone -> runtime url

    def __post_init__(self) -> None:
        hosts = {f"{z[1]}{i}": z for z, n in self.zones.items() for i in range(1, n + 1)}
        self.bed = NetBed(hosts, self.workdir / "bed", seed=self.seed)
        try:
            self.names = dict(enumerate(hosts, start=1))
            gports = {i: gossip_port() for i in self.names}
            first = {z: f"{z[1]}1" for z in self.zones}
            seeds = [f"{self.bed.ip(h)}:{gports[i]}" for i, h in self.names.items() if h in first.values()]
            for z in self.router_zones:
                port = free_port()
                host = first[z]
                self.emulators[z] = f"http://{self.bed.ip(host)}:{port}"
                self.bed.popen(
                    host,
                    [*self.wrap(host), sys.executable, "-m", "agents.emulator", "--host", self.bed.ip(host),
                     "--port", str(port), "--flavor", "vllm", "--model", "demo-llm", "--instant",
                     "--seed", str(self.seed)],
                    log=self.workdir / f"emulator-{z}.log",
                )  # fmt: skip

            def sections(m: Member) -> dict[str, Any]:
                host = self.names[m.node_id]
                zone = self.bed.zone_of(host)
                out: dict[str, Any] = {
                    "node": {"id": host, "roles": ["coordinator", "gpu", "router"], "zone": zone},
                    "gossip": {
                        "bind": f"{self.bed.ip(host)}:{gports[m.node_id]}",
                        "seeds": [s for s in seeds if not s.startswith(self.bed.ip(host) + ":")],
                        "probe_interval_s": PROBE_INTERVAL_S,
                        "probe_timeout_s": 0.25,
                        "reconnect_interval_s": 1.0,
                        "push_pull_interval_s": 5.0,
                        "region": "bed",
                        "host": host,
                    },
                    "log": {"level": "info", "json": True},
                }
                if host in first.values() and zone in self.emulators:
                    out["runtimes"] = [{"url": self.emulators[zone], "flavor": "vllm"}]
                return out

            self.cluster = LocalCluster(
                len(self.names), self.workdir / "agents", cluster_id="bed", tick_ms=50,
                election_ticks=self.election_ticks,
                hosts={i: self.bed.ip(h) for i, h in self.names.items()},
                prefix=lambda i: self.bed.prefix(self.names[i]) + self.wrap(self.names[i]), sections=sections,
            )  # fmt: skip
        except BaseException:
            self.bed.close()
            raise

    def start(self) -> None:
        try:
            self.cluster.start()
            for m in self.cluster.members.values():
                assert m.proc is not None
                self.bed.track(m.proc)
            for z in self.router_zones:
                host = f"{z[1]}1"
                node = next(i for i, h in self.names.items() if h == host)
                # the router's own zone's runtime first; the za router also reaches zc's across the wire
                urls = [self.emulators[z]] + [u for zz, u in self.emulators.items() if zz != z and z == "za"]
                cfg = router_config(
                    urls,
                    listen={"host": self.bed.ip(host), "port": 0, "grpc_port": None},
                    agent={"address": self.cluster.members[node].address},
                )
                for t, url in zip(cfg["targets"], urls, strict=True):
                    t["node"] = next(f"{zz[1]}1" for zz, u in self.emulators.items() if u == url)
                self.routers[z] = start_router(
                    cfg, self.workdir, name=f"router-{z}", prefix=self.bed.prefix(host) + self.wrap(host), timeout=90
                )
                self.bed.track(self.routers[z].proc)
            self.wait_converged(90)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.cluster.stop()
        self.bed.close()

    # -- what the system says ------------------------------------------------------------------------------------
    def host_of(self, node: int) -> str:
        return self.names[node]

    def node_of(self, host: str) -> int:
        return next(i for i, h in self.names.items() if h == host)

    def members(self, node: int) -> membership_pb2.ListMembersResponse:
        with grpc.insecure_channel(self.cluster.members[node].address) as ch:
            resp: membership_pb2.ListMembersResponse = membership_pb2_grpc.MembershipStub(ch).ListMembers(
                membership_pb2.ListMembersRequest(), timeout=3
            )
        return resp

    def converged(self) -> bool:
        """Every agent sees every member alive and the mesh not degraded."""
        for i in self.cluster.members:
            resp = self.members(i)
            alive = sum(m.status == membership_pb2.MEMBER_STATUS_ALIVE for m in resp.members)
            if resp.degraded or alive != len(self.names):
                return False
        return True

    def wait_converged(self, timeout: float) -> float:
        return wait_for("every agent sees every member alive", self.converged, timeout)

    def put(self, node: int, key: str, value: str, timeout: float = 2.0) -> grpc.StatusCode:
        with grpc.insecure_channel(self.cluster.members[node].address) as ch:
            try:
                store_pb2_grpc.StoreStub(ch).Put(store_pb2.StorePutRequest(key=key, value=value), timeout=timeout)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    def get(self, node: int, key: str, *, serializable: bool) -> store_pb2.StoreGetResponse:
        with grpc.insecure_channel(self.cluster.members[node].address) as ch:
            resp: store_pb2.StoreGetResponse = store_pb2_grpc.StoreStub(ch).Get(
                store_pb2.StoreGetRequest(key=key, serializable=serializable), timeout=3
            )
        return resp

    def infer(self, zone: str, timeout: float = 10.0) -> httpx.Response:
        return httpx.post(
            self.routers[zone].url + "/v1/chat/completions",
            json={"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            headers={"Authorization": "Bearer demo-key"},
            timeout=timeout,
        )

    def router_health(self, zone: str) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.routers[zone].url + "/healthz", timeout=3).json()
        return body


class LeaderLog:
    """Who each agent says leads in which term, sampled over a scenario: at most one leader per term."""

    def __init__(self) -> None:
        self.by_term: dict[int, set[int]] = {}

    def sample(self, cluster: LocalCluster) -> None:
        for i in cluster.members:
            try:
                st = cluster.status(i, timeout=0.5)
            except grpc.RpcError:
                continue
            if st.role == "leader":
                self.by_term.setdefault(st.term, set()).add(i)

    def violations(self) -> dict[int, set[int]]:
        return {t: ls for t, ls in self.by_term.items() if len(ls) > 1}


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 0.2) -> float:
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except Exception as exc:  # not there yet
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
