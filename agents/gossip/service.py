"""gRPC servicers for membership (members, state summaries) and topology (RTT estimates) of one agent's view."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from agents.gossip.driver import GossipNode, NodeMeta
from agents.gossip.messages import MemberState
from agents.proto.infermesh.v1 import membership_pb2, membership_pb2_grpc
from agents.topology.service import Topology

_STATUS = {
    MemberState.ALIVE: membership_pb2.MEMBER_STATUS_ALIVE,
    MemberState.SUSPECT: membership_pb2.MEMBER_STATUS_SUSPECT,
    MemberState.DEAD: membership_pb2.MEMBER_STATUS_DEAD,
    MemberState.LEFT: membership_pb2.MEMBER_STATUS_LEFT,
}


class MembershipService(membership_pb2_grpc.MembershipServicer):
    def __init__(self, node: Callable[[], GossipNode | None], topology: Topology, clock: Callable[[], float]) -> None:
        self._node = node
        self._topology = topology
        self._clock = clock

    async def ListMembers(
        self, request: membership_pb2.ListMembersRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ListMembersResponse:
        node = self._node()
        if node is None or node.core is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gossip is not running on this agent")
            raise AssertionError("unreachable")
        core = node.core
        now = self._clock()
        reachable, total = core.reachable()
        resp = membership_pb2.ListMembersResponse(
            node=core.name, degraded=core.degraded, reachable=reachable, total=total, health_score=core.awareness
        )
        topo = self._topology
        links = core.peer_links()
        for m in sorted(core.member_list(), key=lambda m: m.name):
            meta = NodeMeta.decode(m.meta)
            pm = resp.members.add(
                name=m.name,
                gossip_address=f"{m.addr[0]}:{m.addr[1]}",
                status=_STATUS[m.state],  # type: ignore[arg-type]
                incarnation=m.incarnation,
                roles=meta.roles,
                zone=meta.zone,
                region=meta.region,
                grpc_address=meta.grpc,
                rtt_estimate_s=topo.rtt(core.name, m.name),
                link_class=topo.link(core.name, m.name).value,
                summary_version=core.summaries.get(m.name, (0, b""))[0],
                state_age_s=max(0.0, now - m.state_change),
                local=m.name == core.name,
            )
            pm.labels.update(meta.labels)
            measured_rtt, loss = links.get(m.name, (None, None))
            if measured_rtt is not None:
                pm.measured_rtt_s = measured_rtt
            if loss is not None:
                pm.loss = loss
            coord = topo.coordinate_of(m.name)
            if coord is not None:
                pm.coordinate.CopyFrom(
                    membership_pb2.Coordinate(
                        vec=coord.vec, error=coord.error, adjustment=coord.adjustment, height=coord.height
                    )
                )
        return resp

    async def ListSummaries(
        self, request: membership_pb2.ListSummariesRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ListSummariesResponse:
        node = self._node()
        if node is None or node.core is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gossip is not running on this agent")
            raise AssertionError("unreachable")
        resp = membership_pb2.ListSummariesResponse()
        for name, (version, payload) in sorted(node.core.summaries.items()):
            resp.summaries.add(node=name, version=version, payload=payload)
        return resp


class TopologyService(membership_pb2_grpc.TopologyServicer):
    def __init__(self, topology: Topology, known: Callable[[str], bool]) -> None:
        self._topology = topology
        self._known = known

    async def EstimateRtt(
        self, request: membership_pb2.EstimateRttRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.EstimateRttResponse:
        topo = self._topology
        src = request.src or topo.node
        for name in (src, request.dst):
            if not name:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "dst: a node name is required")
            if not self._known(name):
                await context.abort(grpc.StatusCode.NOT_FOUND, f"node {name!r} is not a known member")
        both = topo.coordinate_of(src) is not None and topo.coordinate_of(request.dst) is not None
        return membership_pb2.EstimateRttResponse(
            rtt_s=topo.rtt(src, request.dst), link_class=topo.link(src, request.dst).value, from_coordinates=both
        )
