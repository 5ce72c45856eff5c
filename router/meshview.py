"""The router's view of the mesh from its agent: the network cost from its own node to every other, and gossip's
`degraded` flag.

Every `refresh_s` the watcher asks the agent for its gossip members (`Membership.ListMembers`): their zones give
the link-class default, and the Vivaldi RTT from the router's node (`agent.node`; the agent's own node when empty)
to each member gives `hybrid_mesh` its network term, so a target far from the router costs more than an otherwise
equal near one. While gossip reports the mesh degraded the router goes local-only: it ranks only the targets on
its own node (or, when there are none, in its own zone), says so in the log, the `infermesh_router_mesh_degraded`
gauge and `/healthz`, and leaves that mode when gossip recovers. An agent without gossip leaves the router with
the zone default (its `agent.zone` against the targets' zones).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from agents.proto.infermesh.v1 import membership_pb2, membership_pb2_grpc
from agents.strategies.builtins import ZoneRtt
from router.agentpoll import AgentPoller
from router.metrics import MESH_DEGRADED
from router.obs import log_event


@dataclass(slots=True)
class MeshView:
    """What the ranker reads: this router's node and zone, RTT to each node (seconds), and the degraded flag."""

    node: str = ""
    zone: str = ""
    rtt_s: dict[str, float] = field(default_factory=dict)
    zones: dict[str, str] = field(default_factory=dict)  # node -> zone, from gossip members
    degraded: bool = False
    reachable: int = 0
    total: int = 0
    version: int = 0  # bumped on every change the ranker must apply

    def rtt_fn(self, fallback: ZoneRtt | None = None) -> Callable[[str, str], float]:
        """RTT between the router's node and a target's node: measured coordinates where gossip has them, else the
        link-class default from zones."""
        default = fallback or ZoneRtt()
        for n, z in self.zones.items():
            default.zones.setdefault(n, z)
        if self.node and self.zone:
            default.zones[self.node] = self.zone
        table, home = dict(self.rtt_s), self.node

        def rtt(src: str, dst: str) -> float:
            if src == dst:
                return 0.0
            if src == home and dst in table:
                return table[dst]
            return default(src, dst)

        return rtt


class MeshWatcher(AgentPoller):
    """Polls the agent's gossip view; calls `on_change` when the RTT table or the degraded flag changed."""

    name, what = "mesh-watcher", "mesh view"

    def __init__(
        self,
        channel: Callable[[], grpc.aio.Channel],
        view: MeshView,
        on_change: Callable[[], None],
        *,
        refresh_s: float = 2.0,
    ) -> None:
        super().__init__(refresh_s)
        self.channel = channel
        self.view = view
        self.on_change = on_change
        self._gossip_missing_logged = False

    def rpc_failed(self, exc: grpc.aio.AioRpcError) -> None:
        no_gossip = exc.code() == grpc.StatusCode.UNAVAILABLE and "gossip" in (exc.details() or "")
        if no_gossip and not self._gossip_missing_logged:
            self._gossip_missing_logged = True
            log_event("agent runs no gossip: network cost from zones only", node=self.view.node)

    async def poll_once(self) -> None:
        stub = membership_pb2_grpc.MembershipStub(self.channel())
        resp = await stub.ListMembers(membership_pb2.ListMembersRequest(), timeout=5.0)
        v = self.view
        home = v.node or resp.node
        zones = {m.name: m.zone for m in resp.members if m.zone}
        if resp.node == home:
            rtt = {m.name: m.rtt_estimate_s for m in resp.members if m.name != home}
        else:  # the router runs on another node than its agent: ask for estimates from the router's node
            topo = membership_pb2_grpc.TopologyStub(self.channel())
            rtt = {}
            for m in resp.members:
                if m.name == home:
                    continue
                est = await topo.EstimateRtt(membership_pb2.EstimateRttRequest(src=home, dst=m.name), timeout=5.0)
                rtt[m.name] = est.rtt_s
        changed = rtt != v.rtt_s or zones != v.zones or home != v.node
        if not v.zone and home in zones:
            v.zone = zones[home]
            changed = True
        v.node, v.rtt_s, v.zones = home, rtt, zones
        v.reachable, v.total = resp.reachable, resp.total
        if resp.degraded != v.degraded:
            v.degraded = resp.degraded
            changed = True
            MESH_DEGRADED.set(1 if resp.degraded else 0)
            if resp.degraded:
                log_event(
                    "gossip degraded: local-only mode, ranking only targets on this node (or zone)",
                    logging.WARNING,
                    node=home,
                    zone=v.zone,
                    reachable=resp.reachable,
                    total=resp.total,
                )
            else:
                log_event("gossip recovered: leaving local-only mode", node=home, reachable=resp.reachable)
        if changed:
            v.version += 1
            self.on_change()
