"""How parts of the mesh plug into the agent: the `Component` protocol, the `AgentContext` they receive, and the
table mapping a config section (`gossip:`, `raft:`, ...) to the factory that builds its component.

A component module exposes `make_component(section: Mapping[str, Any]) -> Component`, which validates the raw
section with its own pydantic model (raising `pydantic.ValidationError` or `ValueError`; the agent reports the error
under the section's name and refuses to start). The agent then calls `add_to_server` before the gRPC server starts,
`start(ctx)` once it serves, and `stop()` in reverse order on shutdown.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import grpc
    from prometheus_client import CollectorRegistry

    from agents.meshd.events import EventBus
    from agents.meshd.nodes import NodeDirectory
    from agents.meshd.policies import PolicyStore
    from agents.security.tls import ServerSecurity, TlsSection
    from agents.signals.fusion import Fusion
    from agents.strategies.base import RttFn
    from agents.strategies.host import StrategyHost

# config section -> "module:factory". Add one line here for each component; its module is imported only when the
# agent's config has that section, so an agent without `raft:` never loads the Raft code.
COMPONENT_FACTORIES: dict[str, str] = {
    "gossip": "agents.gossip.component:make_component",
    "raft": "agents.raft.component:make_component",
    "scheduler": "agents.scheduler.component:make_component",
    "trainer": "agents.trainer.component:make_component",
    "portal": "agents.portal_link.component:make_component",
    "io": "agents.io.component:make_component",
    "wan": "agents.wan.component:make_component",
}


@runtime_checkable
class Component(Protocol):
    """A service hosted inside meshd (gossip membership, Raft, topology, ...)."""

    name: str

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        """Register gRPC servicers on the agent's server; return their full service names (for health and
        reflection), e.g. ["infermesh.v1.Membership"]. Called once, before the server starts."""
        ...

    async def start(self, ctx: AgentContext) -> None:
        """Begin work (background tasks, sockets). The agent's gRPC server is already serving."""
        ...

    async def stop(self) -> None:
        """Stop and release everything started; called once during graceful shutdown."""
        ...


@dataclass(slots=True)
class AgentContext:
    """What the agent shares with its components."""

    node_id: str
    roles: frozenset[str]
    zone: str
    grpc_address: str  # the address the agent actually listens on
    fusion: Fusion
    strategies: StrategyHost
    events: EventBus
    nodes: NodeDirectory
    policies: PolicyStore
    registry: CollectorRegistry
    config: Any  # the agent's validated AgentConfig (untyped here: config.py imports this module); read `tls`
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("meshd"))
    # Set the local node's state (control_pb2.NodeState, reason) as the portal or an operator decides it.
    set_node_state: Callable[[int, str], None] | None = None
    # Replace the Control API's policy store (the Raft component installs its replicated one).
    set_policy_store: Callable[[PolicyStore], None] | None = None
    # The gRPC server's mTLS and authorization (None without `tls:`): its refused calls, the agent's SVID.
    security: ServerSecurity | None = None
    _rtt_listeners: list[Callable[[RttFn | None], None]] = field(default_factory=list)

    def set_rtt_provider(self, rtt: RttFn | None) -> None:
        """Give network cost to scoring: `rtt(src_node, dst_node)` in seconds (a topology service calls this).
        None restores the zone-based default."""
        for listener in self._rtt_listeners:
            listener(rtt)

    def on_rtt_provider(self, listener: Callable[[RttFn | None], None]) -> None:
        self._rtt_listeners.append(listener)

    @property
    def tls(self) -> TlsSection | None:
        """The agent's top-level `tls:` section (None: plaintext): what components dial their peers and the
        agent with."""
        return getattr(self.config, "tls", None)

    @property
    def sections(self) -> frozenset[str]:
        """The component sections in the agent's config (e.g. {"raft", "scheduler"})."""
        return frozenset(getattr(self.config, "components", {}) or ())


class ComponentConfigError(ValueError):
    """A component's config section is wrong; the message names the section and field."""


def _under(section: str, line: str) -> str:
    """One error line of a section's model, named under the section (a model-wide error names the section), led by
    the environment variable that set the value when one did (`MESHD__RAFT__TICK_S: raft.tick_s: ...`)."""
    where, _, rest = line.partition(": ")
    lead = f"{where}: " if where else ""
    if rest.startswith("(top level): "):
        return f"{lead}{section}: {rest.removeprefix('(top level): ')}"
    return f"{lead}{section}.{rest}"


def build_component(section: str, raw: Mapping[str, Any] | None, origin: Mapping[str, str] | None = None) -> Component:
    """Import the section's factory and build the component, turning validation errors into one clear message.
    `origin` maps the agent config's dotted fields to the environment variables that set them."""
    from pydantic import ValidationError

    target = COMPONENT_FACTORIES.get(section)
    if target is None:
        raise ComponentConfigError(f"{section}: no component is registered for this config section")
    module_name, _, func_name = target.partition(":")
    try:
        factory: Callable[[Mapping[str, Any]], Component] = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise ComponentConfigError(f"{section}: component {target} is not available ({exc})") from exc
    try:
        component = factory(dict(raw or {}))
    except ValidationError as exc:
        from agents.configload import format_errors

        # The same lines as the rest of the agent's config ("unknown field; did you mean ..."), under the section.
        model = getattr(importlib.import_module(module_name), exc.title, None)
        inner = {k.removeprefix(f"{section}."): v for k, v in (origin or {}).items() if k.startswith(f"{section}.")}
        lines = format_errors(exc, model, "", inner) if isinstance(model, type) else str(exc)
        problems = "; ".join(_under(section, line) for line in lines.splitlines())
        raise ComponentConfigError(problems.replace("did you mean '", f"did you mean '{section}.")) from exc
    except ValueError as exc:
        raise ComponentConfigError(f"{section}: {exc}") from exc
    if not isinstance(component, Component):
        raise ComponentConfigError(f"{section}: {target} returned {type(component).__name__}, not a Component")
    return component
