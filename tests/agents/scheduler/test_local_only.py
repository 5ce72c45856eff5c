"""The scheduler consumes gossip's `degraded` flag: in local-only mode the nodes gossip sees down are planned as
offline, and entering and leaving the mode is said once (event, gauge)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Gauge

from agents.gossip.component import mesh_status
from agents.meshd.events import EventBus
from agents.meshd.nodes import NodeDirectory
from agents.proto.infermesh.v1 import control_pb2
from agents.scheduler.component import SchedulerComponent, SchedulerSection


async def test_degraded_gossip_switches_the_scheduler_to_local_only() -> None:
    nodes = NodeDirectory(control_pb2.NodeInfo(node_id="n1"))
    nodes.upsert(control_pb2.NodeInfo(node_id="n2", state=control_pb2.NODE_STATE_DOWN))
    nodes.upsert(control_pb2.NodeInfo(node_id="n3", state=control_pb2.NODE_STATE_ACTIVE))
    registry = CollectorRegistry()
    ctx = SimpleNamespace(nodes=nodes, events=EventBus("n1"), registry=registry, on_rtt_provider=lambda f: None)
    sched = SchedulerComponent(SchedulerSection())
    sched.ctx = ctx  # no store loop here: only the mode is under test
    sched._local_only_gauge = Gauge("infermesh_scheduler_local_only", "test", registry=registry)
    status = mesh_status()
    saved = (status.running, status.degraded, status.reachable, status.total)
    try:
        status.running, status.degraded, status.reachable, status.total = True, False, 3, 3
        assert sched.unreachable_nodes() == set() and not sched.local_only
        status.degraded, status.reachable = True, 1
        assert sched.unreachable_nodes() == {"n2"} and sched.local_only
        assert sched.unreachable_nodes() == {"n2"}  # said once, not on every pass
        assert registry.get_sample_value("infermesh_scheduler_local_only") == 1
        status.degraded, status.reachable = False, 3
        assert sched.unreachable_nodes() == set() and not sched.local_only
        assert registry.get_sample_value("infermesh_scheduler_local_only") == 0
    finally:
        status.running, status.degraded, status.reachable, status.total = saved
    kinds = [e.kind for e in ctx.events.history]
    assert kinds == ["scheduler.local_only", "scheduler.mesh_wide"], kinds
    first = ctx.events.history[0]
    assert "placing only on reachable nodes" in first.message and first.attrs["unreachable"] == "n2"
