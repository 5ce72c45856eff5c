"""The agent's typed config: YAML file plus `MESHD__SECTION__FIELD=value` environment overrides.

Every model forbids unknown fields, so a misspelt key stops the agent at start with a message naming it. Sections
of pluggable components (`gossip:`, `raft:`, ...) are validated by the component's own model when it is built.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agents import configload
from agents.meshd.component import COMPONENT_FACTORIES
from agents.security.tls import TlsSection

ENV_PREFIX = "MESHD__"
Role = Literal["router", "trainer", "coordinator", "gpu", "edge"]
Flavor = Literal["vllm", "tgi", "triton", "sglang", "torchserve", "tfserving", "ovms"]


ConfigError = configload.ConfigError  # the message names each offending field and where its value came from


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not host.replace("-", "").replace(".", "").isalnum():
            raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
    return value


_NAME = r"^([a-z0-9][a-z0-9._-]*)?$"  # a cell's or region's name: lowercase, digits, '.', '_', '-'


def _default_roles() -> list[Role]:
    return ["gpu"]


class NodeConfig(_Model):
    id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    roles: list[Role] = Field(default_factory=_default_roles)
    zone: str = ""
    # A cell is one gossip pool and one Raft group (its members' `gossip.seeds` and `raft.peers` stay inside it);
    # cells exchange only compact summaries over the WAN tier (`wan:`). Empty: the single cell "default".
    cell: str = Field(
        default="", max_length=63, pattern=_NAME, description="this node's cell; empty: the single cell 'default'"
    )
    region: str = Field(
        default="", max_length=63, pattern=_NAME, description="the region holding the cell (tenants' data residency)"
    )
    labels: dict[str, str] = Field(default_factory=dict)


class ListenConfig(_Model):
    grpc: str = "127.0.0.1:7070"
    http: str = "127.0.0.1:9464"  # Prometheus /metrics and /healthz

    _check = field_validator("grpc", "http")(_check_address)


class ShutdownConfig(_Model):
    drain_s: float = Field(default=1.0, ge=0, le=600)  # keep serving while marked draining so routers move away
    grace_s: float = Field(default=5.0, ge=0, le=600)  # then let in-flight RPCs finish


class FusionSection(_Model):
    fresh_s: float = Field(default=3.0, gt=0)
    stale_s: float = Field(default=15.0, gt=0)
    expire_s: float = Field(default=300.0, gt=0)
    ewma_alpha: float = Field(default=0.2, gt=0, le=1)
    tick_s: float = Field(default=0.5, gt=0, le=60)

    @model_validator(mode="after")
    def _ordered(self) -> FusionSection:
        if not self.fresh_s < self.stale_s <= self.expire_s:
            raise ValueError("need fresh_s < stale_s <= expire_s")
        return self


class AdmissionConfig(_Model):
    max_queue_per_target: float = Field(default=32.0, gt=0)  # mean waiting requests per routable target before 429
    retry_after_s: float = Field(default=1.0, gt=0)


class ScoringConfig(_Model):
    strategy: str = "hybrid_mesh"
    plugins: dict[str, str] = Field(default_factory=dict)  # name -> "package.module:Class"
    budget_us: float = Field(default=500.0, gt=0)
    top_k: int = Field(default=3, ge=1, le=100)
    refresh_s: float = Field(default=0.2, gt=0)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)


class GpuSourceConfig(_Model):
    source: Literal["nvml", "dcgm", "emulated"] = "emulated"
    options: dict[str, Any] = Field(default_factory=dict)  # passed to make_gpu_source
    poll_interval_s: float = Field(default=2.0, gt=0)
    strict_inventory: bool = True  # refuse deltas for GPUs the source does not list


class RuntimeConfig(_Model):
    url: str
    flavor: Flavor = "vllm"
    gpus: list[int | str] = Field(default_factory=list)  # indexes or UUIDs of the GPUs it runs on
    mig_profile: str = ""
    cost_per_mtok: float | None = Field(default=None, ge=0)
    kv_events: str = ""  # ZeroMQ endpoint of its vLLM-format KV events (tcp://HOST:PORT), "" = none
    kv_events_replay: str = ""  # its replay socket, for gaps
    kv_events_topic: str = ""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("kv_events", "kv_events_replay")
    @classmethod
    def _zmq(cls, v: str) -> str:
        if v and not v.startswith(("tcp://", "ipc://")):
            raise ValueError(f"{v!r} is not a ZeroMQ endpoint (tcp://HOST:PORT)")
        return v


class ScrapeConfig(_Model):
    interval_s: float = Field(default=1.0, gt=0, le=300)
    timeout_s: float = Field(default=0.8, gt=0, le=60)


class LogConfig(_Model):
    """`logging:`, the same section name and levels as the router's."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="debug, info, warning or error (any case)"
    )
    json_format: bool = Field(default=True, alias="json", description="one JSON object per line (else plain text)")

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class AgentConfig(_Model):
    node: NodeConfig = Field(default_factory=NodeConfig)
    listen: ListenConfig = Field(default_factory=ListenConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    fusion: FusionSection = Field(default_factory=FusionSection)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    gpu: GpuSourceConfig | None = None
    runtimes: list[RuntimeConfig] = Field(default_factory=list)
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig)
    # `log:` is the former name, still read
    logging: LogConfig = Field(default_factory=LogConfig, validation_alias=AliasChoices("logging", "log"))
    tls: TlsSection | None = None  # mTLS with the mesh CA on every gRPC service (agents/security)
    components: dict[str, dict[str, Any]] = Field(default_factory=dict)  # filled from the component sections

    @model_validator(mode="after")
    def _roles(self) -> AgentConfig:
        roles = set(self.node.roles)
        if (self.runtimes or self.gpu) and not roles & {"gpu", "trainer"}:
            raise ValueError("node.roles: runtimes and gpu need the 'gpu' or 'trainer' role")
        urls = [r.url for r in self.runtimes]
        if len(set(urls)) != len(urls):
            raise ValueError("runtimes: the same url is listed twice")
        return self


def parse_config(
    raw: Mapping[str, Any] | None, env: Mapping[str, str] | None = None, *, source: str = "config"
) -> AgentConfig:
    return parse_config_with_origin(raw, env, source=source)[0]


def parse_config_with_origin(
    raw: Mapping[str, Any] | None, env: Mapping[str, str] | None = None, *, source: str = "config"
) -> tuple[AgentConfig, dict[str, str]]:
    """The config and, per dotted field, the environment variable that set it."""
    data: dict[str, Any] = dict(raw or {})
    over = configload.env_overrides(env, ENV_PREFIX) if env is not None else configload.Overrides()
    data = configload.merge(data, over.data)
    components = {name: data.pop(name) or {} for name in list(data) if name in COMPONENT_FACTORIES}
    for name, section in components.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{over.origin.get(name, source)}: {name}: must be a mapping")
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(configload.format_errors(exc, AgentConfig, source, over.origin)) from None
    config.components = components
    return config, over.origin


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read a YAML file (None = defaults only) and apply overrides from `env` (default: os.environ)."""
    return load_config_with_origin(path, env)[0]


def load_config_with_origin(
    path: str | Path | None, env: Mapping[str, str] | None = None
) -> tuple[AgentConfig, dict[str, str]]:
    raw = configload.read_yaml(path) if path is not None else {}
    return parse_config_with_origin(raw, os.environ if env is None else env, source=str(path or "defaults"))
