"""The agent component for `raft:` config sections: validates the section, hosts the node's Raft groups on the
agent's gRPC server and keeps their data under INFERMESH_DATA_DIR."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from agents.datadir import data_dir
from agents.security.tls import ClientIdentity

from .group import GroupOptions
from .host import DEFAULT_GROUP, RaftHost

if TYPE_CHECKING:
    from agents.meshd.component import AgentContext

_ADDR = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


class RaftSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: int = Field(gt=0)
    cluster_id: str = Field(default="infermesh", min_length=1, max_length=128)
    peers: dict[int, str] = Field(description="node id -> gRPC address of that member's agent (including this one)")
    groups: list[str] = Field(default_factory=lambda: [DEFAULT_GROUP], min_length=1)
    join: bool = False  # start empty and wait to be added (ChangeMembership) instead of founding the group
    learners: list[int] = Field(default_factory=list)
    data_dir: str = ""  # default: $INFERMESH_DATA_DIR/raft/node-<id>; relative paths are under INFERMESH_DATA_DIR
    tick_ms: int = Field(default=100, ge=5, le=10_000)
    election_ticks: int = Field(default=10, ge=2, le=1000)
    heartbeat_ticks: int = Field(default=1, ge=1, le=100)
    snapshot_entries: int = Field(default=10_000, ge=10)
    keep_entries: int = Field(default=1_000, ge=0)
    fsync: bool = True
    request_timeout_s: float = Field(default=5.0, gt=0, le=300)
    read_timeout_s: float = Field(default=1.0, gt=0, le=60)
    max_uncommitted_mb: int = Field(default=64, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _no_own_tls(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "tls" in data:
            raise PydanticCustomError(
                "raft_tls",
                "tls: Raft has no TLS settings of its own: peers dial each other with the agent's top-level `tls:` "
                "section (move ca, cert and key there)",
            )
        return data

    @field_validator("peers")
    @classmethod
    def _peers(cls, v: dict[int, str]) -> dict[int, str]:
        for nid, addr in v.items():
            if nid <= 0:
                raise ValueError(f"peer id {nid} must be positive")
            if not _ADDR.match(addr):
                raise ValueError(f"peer {nid} address {addr!r} must be HOST:PORT")
        return v

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for g in v:
            if not re.match(r"^[A-Za-z0-9_-]{1,64}$", g):
                raise ValueError(f"group id {g!r} must be 1-64 letters, digits, '_' or '-'")
        if len(set(v)) != len(v):
            raise ValueError("a group is listed twice")
        return v

    @model_validator(mode="after")
    def _membership(self) -> RaftSection:
        if self.node_id not in self.peers:
            raise ValueError(f"peers must include this node ({self.node_id}) with its own address")
        if self.heartbeat_ticks >= self.election_ticks:
            raise ValueError("heartbeat_ticks must be smaller than election_ticks")
        unknown = set(self.learners) - set(self.peers)
        if unknown:
            raise ValueError(f"learners {sorted(unknown)} are not in peers")
        return self

    def resolved_data_dir(self) -> Path:
        if not self.data_dir:
            return data_dir() / "raft" / f"node-{self.node_id}"
        p = Path(os.path.expandvars(self.data_dir)).expanduser()
        return p if p.is_absolute() else data_dir() / p


class RaftComponent:
    name = "raft"

    def __init__(self, cfg: RaftSection) -> None:
        self.cfg = cfg
        voters = tuple(sorted(n for n in cfg.peers if n not in cfg.learners))
        self.host = RaftHost(
            cluster_id=cfg.cluster_id,
            node_id=cfg.node_id,
            addresses=dict(cfg.peers),
            groups=list(cfg.groups),
            data_dir=cfg.resolved_data_dir(),
            voters=() if cfg.join else voters,
            learners=() if cfg.join else tuple(sorted(cfg.learners)),
            options=GroupOptions(
                tick_s=cfg.tick_ms / 1000,
                election_tick=cfg.election_ticks,
                heartbeat_tick=cfg.heartbeat_ticks,
                snapshot_entries=cfg.snapshot_entries,
                keep_entries=cfg.keep_entries,
                fsync=cfg.fsync,
                request_timeout_s=cfg.request_timeout_s,
                read_timeout_s=cfg.read_timeout_s,
                max_uncommitted_bytes=cfg.max_uncommitted_mb << 20,
            ),
        )

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        return self.host.add_to_server(server)

    async def start(self, ctx: AgentContext) -> None:
        # Peers are dialled lazily, once the groups start: give the transport the node's SVID first.
        self.host.transport.identity = ClientIdentity.of(ctx.tls)
        await self.host.start()
        if getattr(ctx, "registry", None) is not None:
            from .metrics import RaftCollector

            ctx.registry.register(RaftCollector(self.host))
        set_policy_store = getattr(ctx, "set_policy_store", None)
        if set_policy_store is not None:
            from .policies import ReplicatedPolicyStore

            set_policy_store(ReplicatedPolicyStore(self.host.groups[self.cfg.groups[0]]))

    async def stop(self) -> None:
        await self.host.stop()


def make_component(section: Mapping[str, Any]) -> RaftComponent:
    return RaftComponent(RaftSection.model_validate(dict(section)))
