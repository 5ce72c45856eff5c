"""What the agent's own servicers (`services.py`) and signal adapters (`adapters.py`) see of the agent: a Protocol
that `agent.Agent` satisfies. They depend on this, not on `agent.py`, so the agent imports them and nothing imports
the agent back (components see the narrower `component.AgentContext`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agents.meshd.config import AgentConfig
    from agents.meshd.events import EventBus
    from agents.meshd.metrics import AgentMetrics
    from agents.meshd.nodes import NodeDirectory
    from agents.meshd.policies import PolicyStore
    from agents.proto.infermesh.v1 import control_pb2
    from agents.signals.fusion import Fusion, IngestResult
    from agents.signals.scoring import ScoringService


class GpuPollerView(Protocol):
    """The agent's GPU poller as a runtime adapter uses it (`adapters.GpuPoller`)."""

    source: Any
    index_to_uuid: dict[int, str]


class AgentHost(Protocol):
    node_id: str
    config: AgentConfig
    fusion: Fusion
    metrics: AgentMetrics
    events: EventBus
    nodes: NodeDirectory
    policies: PolicyStore
    scoring: ScoringService
    draining: bool

    @property
    def gpu_poller(self) -> GpuPollerView | None: ...

    def record_ingest(self, kind: str, result: IngestResult) -> None: ...

    def set_node_state(self, state: int, reason: str) -> None: ...

    def refresh_local_node(self) -> control_pb2.NodeInfo: ...
