"""The `gossip:` component of meshd: SWIM membership, Vivaldi topology, state summaries and degraded mode.

It feeds the agent's node directory and event bus, gives scoring its RTT function, publishes a compact summary of
this node's fused targets on gossip, and raises the mesh-wide `degraded` flag (local-only mode) that routers and
the scheduler read through `mesh_status()`, the `ListMembers` RPC, the event bus and the metrics.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.binding import BindError, reason_of
from agents.gossip.driver import GossipNode, NodeMeta
from agents.gossip.keyring import Keyring, parse_key
from agents.gossip.messages import Addr
from agents.gossip.metrics import GossipMetrics
from agents.gossip.service import MembershipService, TopologyService
from agents.gossip.swim import DegradedChanged, Event, MemberEvent, SummaryEvent, SwimConfig
from agents.proto.infermesh.v1 import control_pb2, membership_pb2_grpc, state_pb2
from agents.topology.service import Topology

if TYPE_CHECKING:
    import grpc

    from agents.meshd.component import AgentContext

log = logging.getLogger("meshd.gossip")


def parse_addr(text: str) -> Addr:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return (host.strip("[]"), int(port))


class GossipSection(BaseModel):
    """The `gossip:` config section (times in seconds)."""

    model_config = ConfigDict(extra="forbid")

    bind: str = "127.0.0.1:7946"
    advertise: str = ""  # address peers use to reach us, when it differs from bind (NAT, 0.0.0.0)
    seeds: list[str] = Field(default_factory=list)
    keys: list[str] = Field(default_factory=list)  # base64 AES keys, primary first
    keyring_file: str = ""  # or one base64 key per line, primary first
    region: str = ""
    host: str = Field(default_factory=socket.gethostname)
    probe_interval_s: float = Field(0.5, gt=0)
    probe_timeout_s: float = Field(0.25, gt=0)
    indirect_checks: int = Field(3, ge=0, le=16)
    suspicion_mult: int = Field(4, ge=1, le=32)
    suspicion_max_timeout_mult: int = Field(6, ge=1, le=64)
    retransmit_mult: int = Field(5, ge=1, le=32)
    gossip_interval_s: float = Field(0.2, gt=0)
    gossip_nodes: int = Field(3, ge=1, le=32)
    push_pull_interval_s: float = Field(30.0, gt=0)
    reconnect_interval_s: float = Field(10.0, gt=0)
    dead_reap_after_s: float = Field(3600.0, gt=0)
    lifeguard: bool = True
    udp_budget: int = Field(1400, ge=256, le=65000)
    degraded_fraction: float = Field(0.5, gt=0, le=1)
    summary_interval_s: float = Field(1.0, gt=0)
    leave_on_stop: bool = True

    @field_validator("bind", "advertise")
    @classmethod
    def _addr(cls, v: str) -> str:
        if v:
            parse_addr(v)
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[str]) -> list[str]:
        for s in v:
            parse_addr(s)
        return v

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for k in v:
            parse_key(k)
        return v

    @model_validator(mode="after")
    def _timeouts(self) -> GossipSection:
        if self.probe_timeout_s >= self.probe_interval_s:
            raise ValueError("probe_timeout_s must be shorter than probe_interval_s")
        if self.keyring_file and not Path(self.keyring_file).is_file():
            raise ValueError(f"keyring_file {self.keyring_file!r} does not exist")
        return self

    def swim_config(self) -> SwimConfig:
        return SwimConfig(
            probe_interval=self.probe_interval_s,
            probe_timeout=self.probe_timeout_s,
            indirect_checks=self.indirect_checks,
            suspicion_mult=self.suspicion_mult,
            suspicion_max_timeout_mult=self.suspicion_max_timeout_mult,
            retransmit_mult=self.retransmit_mult,
            gossip_interval=self.gossip_interval_s,
            gossip_nodes=self.gossip_nodes,
            push_pull_interval=self.push_pull_interval_s,
            reconnect_interval=self.reconnect_interval_s,
            dead_reap_after=self.dead_reap_after_s,
            lifeguard=self.lifeguard,
            udp_budget=self.udp_budget,
            degraded_fraction=self.degraded_fraction,
        )

    def keyring(self) -> Keyring | None:
        texts = list(self.keys)
        if self.keyring_file:
            texts += [line.strip() for line in Path(self.keyring_file).read_text().splitlines() if line.strip()]
        return Keyring([parse_key(t) for t in texts]) if texts else None


@dataclass(slots=True)
class MeshStatus:
    """What other components of this process read to decide between mesh-wide and local-only work."""

    running: bool = False
    degraded: bool = False
    reachable: int = 1
    total: int = 1
    # measured by direct probes, per peer: (RTT in seconds, loss 0..1), None where not measured yet
    links: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


_STATUS = MeshStatus()


def mesh_status() -> MeshStatus:
    """The gossip view of this process's agent (not running: treated as a mesh of one, never degraded)."""
    return _STATUS


_DOWN = {"dead", "left"}
_MAX_SUMMARY_INFLATED = 8 * 1024 * 1024


class GossipComponent:
    name = "gossip"

    def __init__(self, section: GossipSection) -> None:
        self.section = section
        self.node: GossipNode | None = None
        self._cell = ""  # the node's cell (node.cell): members of another cell are reported, being a seed slip
        self.topology: Topology | None = None
        self.status = _STATUS
        self._ctx: AgentContext | None = None
        self._summary_task: asyncio.Task[None] | None = None
        self._links_task: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._keyring = section.keyring()
        # The servicers are registered before start; they resolve the node lazily.
        self._membership = MembershipService(lambda: self.node, self._topo, self._clock)
        self._topology_svc = TopologyService(self._topo, lambda n: bool(self.node and n in self.node.core.members))  # type: ignore[union-attr]

    def _clock(self) -> float:
        return asyncio.get_running_loop().time()

    @property
    def _topo(self) -> Topology:
        if self.topology is None:
            self.topology = Topology("", {})
        return self.topology

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        membership_pb2_grpc.add_MembershipServicer_to_server(self._membership, server)
        membership_pb2_grpc.add_TopologyServicer_to_server(self._topology_svc, server)
        return ["infermesh.v1.Membership", "infermesh.v1.Topology"]

    async def start(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        s = self.section
        node_cfg = getattr(ctx.config, "node", None)
        region = s.region or getattr(node_cfg, "region", "")  # the node's region unless gossip names its own
        self._cell = getattr(node_cfg, "cell", "")
        labels = {"zone": ctx.zone, "region": region, "host": s.host}
        topo = self._topo
        topo.node = ctx.node_id
        topo.labels = {**{k: v for k, v in labels.items() if v}, "node": ctx.node_id}
        meta = NodeMeta(
            roles=sorted(ctx.roles),
            zone=ctx.zone,
            region=region,
            host=s.host,
            grpc=ctx.grpc_address,
            labels={"cell": self._cell} if self._cell else {},
        )
        self.node = GossipNode(
            ctx.node_id,
            parse_addr(s.bind),
            advertise=parse_addr(s.advertise) if s.advertise else None,
            config=s.swim_config(),
            keyring=self._keyring,
            meta=meta,
            metrics=GossipMetrics(ctx.registry),
            topology=topo,
            on_event=self._on_event,
        )
        try:
            await self.node.start([parse_addr(x) for x in s.seeds])
        except OSError as exc:
            raise BindError(s.bind, reason_of(exc), "components.gossip.bind") from None
        self.status.running = True
        ctx.set_rtt_provider(topo.rtt)
        self._unsubscribe = ctx.fusion.subscribe(lambda changed, removed: self._dirty.set())
        self._dirty.set()
        self._summary_task = asyncio.create_task(self._publish_summaries())
        self._links_task = asyncio.create_task(self._report_links())
        log.info("gossip: %s on %s:%s, seeds %s", ctx.node_id, *self.node.addr, s.seeds or "none")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in (self._summary_task, self._links_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._ctx is not None:
            self._ctx.set_rtt_provider(None)
        if self.node is not None:
            await self.node.stop(leave=self.section.leave_on_stop)
        self.status.running = False
        self.status.degraded = False
        self.status.links = {}

    # ------------------------------------------------------------------ summaries

    def _summary(self) -> bytes:
        """This node's fused targets as a compressed ListTargetsResponse: what routers elsewhere need to rank them."""
        assert self._ctx is not None
        fusion = self._ctx.fusion
        local = self._ctx.node_id
        # Only our own targets: remote ones came from their owners' summaries and must not echo back.
        msg = state_pb2.ListTargetsResponse(
            targets=[fusion.to_proto(rec) for rec in fusion.targets.values() if rec.node == local]
        )
        return zlib.compress(msg.SerializeToString(), 6)

    def _ingest_summary(self, node: str, payload: bytes) -> None:
        """Another node's targets into our fusion (remote=True), so routers here can rank targets everywhere."""
        assert self._ctx is not None
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(payload, _MAX_SUMMARY_INFLATED)
            if inflater.unconsumed_tail:
                raise ValueError(f"inflates beyond {_MAX_SUMMARY_INFLATED} bytes")
            msg = state_pb2.ListTargetsResponse.FromString(raw)
        except (zlib.error, ValueError) as exc:
            log.warning("gossip: unreadable state summary from %s: %s", node, exc)
            return
        for t in msg.targets:
            if t.node != node:
                continue  # a node speaks only for its own targets
            result = self._ctx.fusion.ingest_remote(t)
            if not result.accepted:
                log.debug("gossip: remote target %s from %s refused: %s", t.target_id, node, result)

    def _member_down(self, node: str) -> None:
        assert self._ctx is not None
        fusion = self._ctx.fusion
        for endpoint in {rec.endpoint for rec in fusion.targets.values() if rec.node == node}:
            fusion.mark_endpoint_down(endpoint, f"node {node} unreachable (gossip)")

    async def _publish_summaries(self) -> None:
        last = b""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            payload = self._summary()
            if payload != last and self.node is not None:
                try:
                    self.node.set_summary(payload)
                    last = payload
                except ValueError as exc:
                    log.warning("gossip: state summary not published: %s", exc)
            await asyncio.sleep(self.section.summary_interval_s)

    async def _report_links(self) -> None:
        """Loss and RTT to each peer, as this node's direct probes measure them, for the portal link's telemetry
        (the network quarantine rule), `ListMembers` and the metrics."""
        reported: set[str] = set()
        while True:
            await asyncio.sleep(self.section.probe_interval_s)
            node = self.node
            if node is None or node.core is None:
                continue
            links = node.core.peer_links()
            self.status.links = links
            metrics = node.metrics
            if metrics is None:
                continue
            for peer in reported - set(links):
                with contextlib.suppress(KeyError):
                    metrics.peer_loss.remove(peer)
                    metrics.peer_rtt.remove(peer)
            for peer, (rtt, loss) in links.items():
                if loss is not None:
                    metrics.peer_loss.labels(peer).set(loss)
                if rtt is not None:
                    metrics.peer_rtt.labels(peer).set(rtt)
            reported = set(links)

    # ------------------------------------------------------------------ events

    def _on_event(self, ev: Event) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        if isinstance(ev, SummaryEvent):
            if ev.node != ctx.node_id:
                self._ingest_summary(ev.node, ev.payload)
            return
        if isinstance(ev, MemberEvent):
            m = ev.member
            if ev.kind in _DOWN:
                self._member_down(m.name)
            meta = NodeMeta.decode(m.meta)
            info = control_pb2.NodeInfo(
                node_id=m.name,
                roles=meta.roles,
                zone=meta.zone,
                grpc_address=meta.grpc,
                state=control_pb2.NODE_STATE_DOWN if ev.kind in _DOWN else control_pb2.NODE_STATE_ACTIVE,
            )
            info.labels.update({"gossip": ev.kind, **({"region": meta.region} if meta.region else {})})
            cell = meta.labels.get("cell", "")
            if cell:
                info.labels["cell"] = cell
            if ev.kind == "join" and cell != self._cell:
                from agents.meshd.events import WARNING as _WARNING

                # a cell is one gossip pool: a member of another cell means seeds that cross cells
                ctx.events.emit(
                    "gossip.member.other_cell",
                    f"member {m.name} of cell {cell or 'default'} joined the gossip pool of cell "
                    f"{self._cell or 'default'}: gossip.seeds should stay inside the cell",
                    severity=_WARNING,
                    attrs={"member": m.name, "cell": cell},
                )
            ctx.nodes.upsert(info)
            if ev.kind != "update":
                from agents.meshd.events import INFO, WARNING

                severity = WARNING if ev.kind in ("suspect", "dead") else INFO
                ctx.events.emit(
                    f"gossip.member.{ev.kind}",
                    f"member {m.name} is {ev.kind} (incarnation {m.incarnation})",
                    severity=severity,
                    attrs={"member": m.name, "incarnation": str(m.incarnation)},
                )
            self._refresh_status()
        elif isinstance(ev, DegradedChanged):
            from agents.meshd.events import INFO, WARNING

            self._refresh_status()
            ctx.events.emit(
                "gossip.degraded" if ev.degraded else "gossip.recovered",
                (f"lost contact with most of the mesh ({ev.reachable}/{ev.total} reachable): local-only mode"
                 if ev.degraded else f"mesh reachable again ({ev.reachable}/{ev.total}): leaving local-only mode"),
                severity=WARNING if ev.degraded else INFO,
                attrs={"reachable": str(ev.reachable), "total": str(ev.total)},
            )  # fmt: skip

    def _refresh_status(self) -> None:
        if self.node is not None and self.node.core is not None:
            reachable, total = self.node.core.reachable()
            self.status.degraded = self.node.core.degraded
            self.status.reachable, self.status.total = reachable, total


def make_component(section: Mapping[str, Any]) -> GossipComponent:
    return GossipComponent(GossipSection.model_validate(dict(section)))


def encode_key(key: bytes) -> str:
    """A key as the config expects it (for `keys:` or a keyring file)."""
    return base64.b64encode(key).decode()
