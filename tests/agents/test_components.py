"""Components plug into a real in-process agent: config validation, servicers, lifecycle order, RTT provider;
and the event bus's replay and live-only subscriptions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel, ConfigDict

from agents.meshd import component as component_mod
from agents.meshd.agent import Agent
from agents.meshd.component import AgentContext, ComponentConfigError
from agents.meshd.config import parse_config
from agents.meshd.events import EventBus
from agents.proto.infermesh.v1 import scoring_pb2, scoring_pb2_grpc, state_pb2

CALLS: list[str] = []


class EchoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rtt_s: float = 0.0


class EchoComponent:
    name = "echo"

    def __init__(self, cfg: EchoConfig) -> None:
        self.cfg = cfg

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        CALLS.append("add_to_server")
        return []

    async def start(self, ctx: AgentContext) -> None:
        CALLS.append(f"start:{ctx.node_id}:{sorted(ctx.roles)}")
        # a topology service makes one node far away
        ctx.set_rtt_provider(lambda src, dst: self.cfg.rtt_s if dst == "node-far" else 0.0)

    async def stop(self) -> None:
        CALLS.append("stop")


def make_component(raw: Mapping[str, Any]) -> EchoComponent:
    return EchoComponent(EchoConfig.model_validate(raw))


@pytest.fixture
def echo_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(component_mod.COMPONENT_FACTORIES, "echo", f"{__name__}:make_component")
    CALLS.clear()


def test_a_bad_component_section_names_the_field(echo_registered: None) -> None:
    config = parse_config({"echo": {"rtt": 1}, "node": {"id": "n"}}, {})
    with pytest.raises(ComponentConfigError, match=r"echo\.rtt: unknown field"):
        Agent(config)


def test_a_missing_component_module_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(component_mod.COMPONENT_FACTORIES, "ghost", "agents.no_such_module:make_component")
    with pytest.raises(ComponentConfigError, match=r"ghost: component agents\.no_such_module:make_component is not"):
        Agent(parse_config({"ghost": {}}, {}))


async def test_component_lifecycle_and_rtt_provider(echo_registered: None) -> None:
    config = parse_config(
        {
            "node": {"id": "node-near", "roles": ["router"]},
            "listen": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
            "shutdown": {"drain_s": 0, "grace_s": 0.5},
            "scoring": {"budget_us": 1_000_000},
            "echo": {"rtt_s": 0.5},
        },
        {},
    )
    agent = Agent(config)
    await agent.start()
    try:
        assert CALLS == ["add_to_server", "start:node-near:['router']"]
        # two equal targets: one local, one on a node the topology says is far
        f = agent.fusion
        f.ingest_model(state_pb2.ModelStateDelta(model="m", endpoint="http://127.0.0.1:1"))
        remote = state_pb2.ModelStateDelta(model="m", endpoint="http://10.0.0.9:1", node="node-far")
        assert f.ingest_model(remote).rejections[0].field == "node"  # pushes are local-only
        assert f.ingest_model(remote, remote=True).accepted  # what gossip feeds for a remote node
        async with grpc.aio.insecure_channel(agent.grpc_address) as ch:
            resp = await scoring_pb2_grpc.ScoringStub(ch).ScoreTargets(scoring_pb2.ScoreRequest(model="m", top_k=2))
            assert [s.node for s in resp.ranked] == ["node-near", "node-far"]
            assert resp.ranked[1].terms["network"] == pytest.approx(1.0)
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await agent.stop()
    assert CALLS[-1] == "stop"


async def test_event_bus_replay_and_live_only() -> None:
    bus = EventBus("n", clock=lambda: 1.0)
    bus.emit("target.healthy", "a")
    bus.emit("node.cordoned", "b")
    replay = bus.subscribe(["target."])
    live = bus.subscribe(replay=False)
    since = bus.subscribe(since_seq=1)
    bus.emit("target.unhealthy", "c")
    assert [e.message for e in _drain(replay)] == ["a", "c"]
    assert [e.message for e in _drain(live)] == ["c"]
    assert [e.message for e in _drain(since)] == ["b", "c"]
    bus.close()
    assert replay.queue.get_nowait() is None


def _drain(sub: Any) -> list[Any]:
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out
