"""Typed configuration of the router: one pydantic model from YAML plus `INFERMESH_ROUTER__*` environment overrides.

A wrong or unknown field stops the router at start with a message naming the field (see `load_config`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agents import configload
from agents.security.tls import ClientTls
from agents.wan.cells import SPEED_MARGIN, SPEED_MAX_SHARE, Speed
from router.core.spill_proof import MIN_SECRET_BYTES

ENV_PREFIX = "INFERMESH_ROUTER__"

Priority = Literal["critical", "standard", "batch"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int | None = Field(default=8081, ge=0, le=65535, description="KServe v2 gRPC port; null disables gRPC")
    workers: int = Field(default=1, ge=1, le=64, description="worker processes sharing the port through SO_REUSEPORT")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    body_read_timeout_s: float = Field(
        default=10.0, gt=0, description="a client slower than this sending its body gets 408"
    )
    keepalive_timeout_s: float = Field(default=75.0, gt=0)
    cancel_on_disconnect: bool = Field(
        default=True,
        description="cancel a request (and its upstream attempt) the moment its client disconnects, even before the "
        "first byte; costs a task per request. Off: a disconnect is noticed at the next write to the client",
    )
    max_inflight: int = Field(default=2048, ge=1, description="requests held at once per worker; beyond it 429 at once")
    metrics_token_file: str | None = Field(
        default=None,
        description="a file holding the bearer token /metrics requires (Prometheus' bearer_token_file); the metrics "
        "name tenants and models, so set it wherever tenants reach this port. Unset: /metrics is open",
    )

    @field_validator("metrics_token_file")
    @classmethod
    def _token_file(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                token = Path(v).read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read {v!r}: {exc.strerror}") from None
            if len(token) < 16:
                raise ValueError(f"{v!r} must hold a token of at least 16 characters")
        return v

    def metrics_token(self) -> str | None:
        return Path(self.metrics_token_file).read_text().strip() if self.metrics_token_file else None


class AgentConfig(_Strict):
    address: str | None = Field(default="127.0.0.1:7070", description="local agent gRPC HOST:PORT; null = static only")
    reconnect_min_s: float = Field(default=0.2, gt=0)
    reconnect_max_s: float = Field(default=5.0, gt=0)
    report_outcomes: bool = True
    node: str = Field(
        default="",
        description="the node this router runs on: the source of the network cost in every ranking (Vivaldi RTT "
        "from this node, link class) and what local-only mode keeps; empty = the agent's node",
    )
    zone: str = Field(default="", description="this router's zone; empty = the zone gossip knows for its node")
    mesh_refresh_s: float = Field(
        default=2.0, gt=0, le=300, description="how often the RTT table and gossip's degraded flag are read"
    )
    tls: ClientTls | None = Field(
        default=None,
        description="the router's SVID (role router) and the mesh CA, for an agent with a `tls:` section; "
        "re-read on reconnect after rotation",
    )


class StaticTarget(_Strict):
    model: str
    url: str = Field(description="base URL of the runtime, e.g. http://127.0.0.1:9001")
    runtime: str = "vllm"
    api: Literal["openai", "kserve"] = "openai"
    node: str = ""
    gpu_uuid: str = ""
    mig_profile: str = ""
    zone: str = ""
    revision: str = ""
    quant: str = ""
    max_concurrency: int | None = None
    upstream_model: str | None = Field(default=None, description="model name the runtime expects, when it differs")
    role: Literal["both", "prefill", "decode"] = Field(
        default="both",
        description="disaggregated serving: a model with prefill and decode targets has each request prefilled on "
        "one and decoded on another (see `disaggregation`); both: an ordinary target",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class QuotaConfig(_Strict):
    requests_per_s: float | None = Field(default=None, gt=0)
    burst_requests: float | None = Field(
        default=None, gt=0, description="bucket size; defaults to max(1, requests_per_s)"
    )
    tokens_per_min: float | None = Field(default=None, gt=0)
    concurrent: int | None = Field(default=None, ge=1)


class TenantConfig(_Strict):
    name: str
    api_keys: list[str] = Field(default_factory=list)
    api_key_sha256: list[str] = Field(default_factory=list, description="hex SHA-256 of keys, instead of plain keys")
    priority: Priority = "standard"
    quotas: QuotaConfig = Field(default_factory=QuotaConfig)
    models: list[str] = Field(
        default_factory=list, description="models this tenant may use (others answer 404); empty = every model"
    )

    def key_hashes(self) -> set[str]:
        return {hashlib.sha256(k.encode()).hexdigest() for k in self.api_keys} | {
            h.lower() for h in self.api_key_sha256
        }


class HedgingConfig(_Strict):
    enabled: bool = False
    quantile: float = Field(
        default=0.9, gt=0, lt=1, description="hedge after this quantile of the target's recent TTFT"
    )
    multiplier: float = Field(default=1.0, gt=0)
    min_delay_ms: float = Field(default=5.0, ge=0)
    max_delay_ms: float = Field(default=2000.0, gt=0)
    default_delay_ms: float = Field(default=200.0, ge=0, description="delay while a target has too few TTFT samples")
    budget_ratio: float = Field(
        default=0.05, ge=0, le=1, description="hedges per request at most (0.05 = 5% extra load)"
    )
    budget_burst: float = Field(default=5.0, ge=0)
    predicted_factor: float = Field(
        default=1.5,
        gt=0,
        description="hedge once the first byte is this many times later than the strategy predicted (where it "
        "predicts TTFT), when that comes before the quantile rule's delay",
    )
    min_win_rate: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="once 20 hedges from one target were judged, stop hedging from it while fewer than this share "
        "won (every 10th still goes, so that a change is noticed)",
    )


class RetryConfig(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=10, description="targets tried before the first byte")
    on_status: list[int] = Field(default_factory=lambda: [502, 503, 504])


class OutlierConfig(_Strict):
    consecutive_failures: int = Field(default=3, ge=1)
    base_ejection_s: float = Field(default=2.0, gt=0)
    max_ejection_s: float = Field(default=60.0, gt=0)
    max_ejected_fraction: float = Field(default=0.5, ge=0, le=1)


class AdmissionConfig(_Strict):
    max_queue_per_target: float = Field(
        default=64.0, gt=0, description="waiting requests beyond which a target counts full"
    )
    priority_factor: dict[str, float] = Field(
        default_factory=lambda: {"critical": 1.5, "standard": 1.0, "batch": 0.5},
        description="threshold multiplier per SLO class: batch is refused first, critical last",
    )
    max_retry_after_s: int = Field(default=30, ge=1)
    queue_ttl_s: float | None = Field(
        default=None,
        gt=0,
        description="a request held this long at the router for a batch slot is refused with 429 (null: it waits "
        "until first_byte_timeout_s, then 504)",
    )


def _check_strategy(name: str) -> None:
    from agents.strategies import load_strategy  # raises ValueError naming the strategy

    load_strategy(name)


class RoutingPolicy(_Strict):
    strategy: str = "hybrid_mesh"
    ab_split: dict[str, float] = Field(default_factory=dict, description="strategy -> weight; empty = no A/B")
    shadow_strategy: str | None = None
    deadline_s: float = Field(default=300.0, gt=0)
    hold_when_full: bool = Field(
        default=True,
        description="when every target's batch slots are taken, hold requests at the router (FIFO by SLO class) "
        "and dispatch each to the first target that frees a slot, instead of queueing blind at one runtime",
    )
    first_byte_timeout_s: float = Field(default=60.0, gt=0)
    slo_ttft_ms: float | None = Field(
        default=None,
        gt=0,
        description="TTFT objective: a request that no target is predicted to start within it is refused with 429 "
        "(slo_unmeetable), where the strategy predicts TTFT (hybrid_mesh, once it has learned); null admits all",
    )
    lora_load_s: float | None = Field(
        default=None,
        ge=0,
        le=600,
        description="seconds a runtime takes to load one of the model's LoRA adapters into a slot: what cache- and "
        "LoRA-aware strategies charge a target without it resident (null: 0.025 s, a rank-16 adapter from host "
        "memory; adapters read from disk or the network take seconds)",
    )
    hedging: HedgingConfig = Field(default_factory=HedgingConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)

    @field_validator("ab_split")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in v.values()) or (v and sum(v.values()) <= 0):
            raise ValueError("weights must be >= 0 with a positive sum")
        for name in v:
            _check_strategy(name)
        return v

    @field_validator("strategy", "shadow_strategy")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None:
            _check_strategy(v)
        return v


class RedisConfig(_Strict):
    url: str | None = Field(
        default=None, description="redis://HOST:PORT/DB to share quotas across replicas; null = local"
    )
    key_prefix: str = "infermesh:quota:"
    timeout_s: float = Field(
        default=0.05, gt=0, description="a slower Redis falls back to local buckets for the request"
    )


class TracingConfig(_Strict):
    enabled: bool = True
    exporter: Literal["none", "console", "otlp"] = Field(
        default="none", description="none: traceparent propagated, nothing recorded; otlp: spans to a collector"
    )
    service_name: str = "infermesh-router"
    endpoint: str = Field(
        default="", description="OTLP collector: host:port for grpc, a URL (…/v1/traces) for http/protobuf"
    )
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    sample_ratio: float = Field(
        default=1.0, ge=0, le=1, description="share of new traces recorded; a caller's sampled flag is followed"
    )

    @model_validator(mode="after")
    def _endpoint(self) -> TracingConfig:
        if self.exporter == "otlp" and not self.endpoint:
            raise ValueError("tracing.endpoint is required with exporter: otlp")
        return self


class LoggingConfig(_Strict):
    """`logging:`, the same section name and levels as the agent's."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="debug, info, warning or error (any case)"
    )
    access_log: bool = Field(default=True, description="one JSON line per request, refusals included (at info)")

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class KVEventSource(_Strict):
    url: str = Field(description="base URL of the runtime, as the router knows the target")
    endpoint: str = Field(description="its KV-event PUB socket, e.g. tcp://127.0.0.1:5557")
    replay: str = Field(default="", description="its replay ROUTER socket (empty: gaps are not filled)")
    topic: str = ""

    @field_validator("endpoint", "replay")
    @classmethod
    def _zmq(cls, v: str) -> str:
        if v and not v.startswith(("tcp://", "ipc://")):
            raise ValueError(f"{v!r} is not a ZeroMQ endpoint (tcp://HOST:PORT)")
        return v


class CacheConfig(_Strict):
    """What the router needs for cache-aware routing (strategies cache_aware, session_affinity, hybrid_mesh)."""

    block_size: int = Field(default=16, ge=1, le=1024, description="KV block size of the runtimes, in tokens")
    max_prompt_tokens: int = Field(
        default=16384, ge=16, description="tokens of a prompt hashed per request (its prefix beyond is not matched)"
    )
    session_header: str = Field(default="x-session-id", description="header naming a session; else body session_id")
    max_session_key_len: int = Field(default=256, ge=1, description="longer keys are ignored (counted, logged once)")
    max_blocks_per_target: int = Field(default=200_000, ge=1, description="bound of each target's block index")
    kv_events: list[KVEventSource] = Field(default_factory=list, description="runtimes publishing vLLM KV events")


class LinkBandwidth(_Strict):
    a: str = Field(description="a node name")
    b: str = Field(description="the other node")
    gbps: float = Field(gt=0, description="measured bandwidth between them, Gbit/s")


class DisaggregationConfig(_Strict):
    """How a model with prefill and decode targets picks the pair for each request (router/core/pd.py)."""

    kv_bytes_per_token: int = Field(
        default=131_072, ge=1, description="KV cache bytes per prompt token of the models (Llama-3-8B BF16: 131072)"
    )
    prefill_tok_s: float = Field(
        default=20_000, gt=0, description="prefill rate assumed where the KV-event index has not timed one"
    )
    decode_s_per_request: float = Field(
        default=0.004, ge=0, description="cost of each request in flight on a decode target, seconds"
    )
    same_node_gbps: float = Field(default=400.0, gt=0, description="KV link within one node, Gbit/s")
    same_zone_gbps: float = Field(default=100.0, gt=0, description="KV link between nodes of one zone, Gbit/s")
    cross_zone_gbps: float = Field(default=25.0, gt=0, description="KV link between zones, Gbit/s")
    links: list[LinkBandwidth] = Field(
        default_factory=list, description="measured bandwidth of node pairs, overriding the defaults above"
    )


class UsageConfig(_Strict):
    """Where the router reports usage (the portal), authenticated with a node credential (`infermesh node enroll`)."""

    portal_url: str | None = Field(default=None, description="http(s)://portal; null = usage is not reported")
    credential: str | None = Field(default=None, description="node credential imn_...; prefer credential_file")
    credential_file: str | None = None
    flush_s: float = Field(default=2.0, gt=0, le=300, description="a batch is sent this often")
    max_pending: int = Field(default=1000, ge=1, description="batches kept while the portal is unreachable")
    spool_dir: str | None = Field(
        default=None,
        description="directory where usage is kept on disk until the portal has it (every spool_s, and each batch "
        "before it is sent): a router killed and restarted sends it then, each batch once; null = memory only",
    )
    spool_s: float = Field(default=0.25, gt=0, le=60, description="how often the counts since the last batch are "
                           "written to spool_dir: a kill -9 loses at most this much")  # fmt: skip

    @model_validator(mode="after")
    def _credential(self) -> UsageConfig:
        if self.portal_url and not (self.credential or self.credential_file):
            raise ValueError("usage.portal_url needs usage.credential or usage.credential_file")
        if self.portal_url and not self.portal_url.startswith(("http://", "https://")):
            raise ValueError("usage.portal_url must start with http:// or https://")
        if self.spool_dir and Path(self.spool_dir).exists() and not Path(self.spool_dir).is_dir():
            raise ValueError(f"usage.spool_dir {self.spool_dir} exists and is not a directory")
        return self

    def token(self) -> str:
        if self.credential_file:
            return Path(self.credential_file).read_text().strip()
        return self.credential or ""


class CellsConfig(_Strict):
    """Cells and regions (router/cells.py): read from the agent's WAN tier; without it the router stays in its cell."""

    spill_at: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="a model's load in this cell (running + waiting requests per batch slot) from which its requests "
        "go to the cell with headroom of least RTT plus expected TTFT",
    )
    speed_margin: float = Field(
        default=SPEED_MARGIN,
        ge=0,
        le=10,
        description="the speed rule: with headroom here, a share of the requests still goes to another cell when "
        "this cell's expected TTFT exceeds that cell's RTT plus expected TTFT by more than this fraction of the "
        "latter (the margin keeps the rule from flapping around the break-even)",
    )
    speed_max_share: float = Field(
        default=SPEED_MAX_SHARE,
        ge=0,
        le=1,
        description="the most of this cell's requests for a model that the speed rule moves (the share grows with "
        "the excess beyond the margin; drawn per request); 0 turns the rule off",
    )
    refresh_s: float = Field(default=1.0, gt=0, le=300, description="how often the WAN tier's view is read")
    mesh_secret_file: str | None = Field(
        default=None,
        description="a file holding the secret every router of the mesh shares (at least 32 bytes, surrounding "
        "whitespace stripped): a router signs what it spills with it, and a spilled request carrying a valid "
        "signature is charged to its tenant's quotas only where it entered the mesh. One secret a line: the first "
        "signs, any verifies (to rotate one). Unset: spill-over still works, but a spilled request is charged at "
        "both routers",
    )
    spill_proof_max_age_s: float = Field(
        default=30.0,
        gt=0,
        le=300,
        description="how far a spill's signature time may be from this router's clock (either way) and still be "
        "honoured; older is charged as an ordinary request",
    )

    @field_validator("mesh_secret_file")
    @classmethod
    def _secret_file(cls, v: str | None) -> str | None:
        if v is not None:
            _read_secret(v)
        return v

    def speed(self) -> Speed:
        """The speed rule of agents/wan/cells.py with these settings."""
        return Speed(self.speed_margin, self.speed_max_share)

    def mesh_secrets(self) -> tuple[bytes, ...]:
        """The shared secrets, the one that signs first (read at start; none without a file)."""
        return _read_secret(self.mesh_secret_file) if self.mesh_secret_file else ()


def _read_secret(path: str) -> tuple[bytes, ...]:
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    secrets = tuple(s for line in lines if (s := line.strip()))
    if not secrets:
        raise ValueError(f"{path!r} holds no secret (at least {MIN_SECRET_BYTES} bytes a line)")
    for i, s in enumerate(secrets, 1):
        if len(s) < MIN_SECRET_BYTES:
            raise ValueError(f"{path!r}: secret {i} must be at least {MIN_SECRET_BYTES} bytes, not {len(s)}")
    return secrets


class RouterConfig(_Strict):
    listen: ListenConfig = Field(default_factory=ListenConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    targets: list[StaticTarget] = Field(default_factory=list)
    tenants: list[TenantConfig] = Field(
        default_factory=list,
        description="standalone tenants; a tenant the portal also knows (same name as its slug) is taken from the "
        "portal, through the agent's store",
    )
    usage: UsageConfig = Field(default_factory=UsageConfig)
    auth_required: bool = True
    default_policy: RoutingPolicy = Field(default_factory=RoutingPolicy)
    policies: dict[str, RoutingPolicy] = Field(default_factory=dict, description="model name -> routing policy")
    outlier: OutlierConfig = Field(default_factory=OutlierConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    upstream_pool_size: int = Field(default=1024, ge=1)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    cells: CellsConfig = Field(default_factory=CellsConfig)
    disaggregation: DisaggregationConfig = Field(default_factory=DisaggregationConfig)
    upstream_connect_timeout_s: float = Field(default=2.0, gt=0)
    upstream_tls: ClientTls | None = Field(
        default=None,
        description="client certificate and CA for https:// runtimes (they may require the router's certificate); "
        "default: agent.tls. Neither: https runtimes are checked against the system CAs, no client certificate",
    )

    def runtime_tls(self) -> ClientTls | None:
        """The identity https:// runtimes see (agent.tls.server_name names the agent, not them: not used here)."""
        return self.upstream_tls or self.agent.tls

    @model_validator(mode="after")
    def _upstream_name(self) -> RouterConfig:
        if self.upstream_tls is not None and self.upstream_tls.server_name:
            raise ValueError("upstream_tls.server_name: runtimes are checked against the host of their URL")
        return self

    @model_validator(mode="after")
    def _unique_keys(self) -> RouterConfig:
        seen: dict[str, str] = {}
        for t in self.tenants:
            for h in t.key_hashes():
                if h in seen:
                    raise ValueError(f"tenants: tenant {t.name!r} reuses an API key of tenant {seen[h]!r}")
                seen[h] = t.name
        return self

    def policy_for(self, model: str) -> RoutingPolicy:
        return self.policies.get(model, self.default_policy)


# The agent's loader and error format: each error names the field and the variable or file its value came from.
ConfigError = configload.ConfigError


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay `INFERMESH_ROUTER__LISTEN__PORT=9000`-style variables (double underscore = nesting)."""
    return configload.merge(data, configload.env_overrides(env, ENV_PREFIX).data)


def parse_config(data: Any, *, source: str = "", env: Mapping[str, str] | None = None) -> RouterConfig:
    return parse_config_with_origin(data, source=source, env=env)[0]


def parse_config_with_origin(
    data: Any, *, source: str = "", env: Mapping[str, str] | None = None
) -> tuple[RouterConfig, dict[str, str]]:
    """The config and, per dotted field, the environment variable that set it."""
    source = source or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    over = configload.env_overrides(os.environ if env is None else env, ENV_PREFIX)
    data = configload.merge(data, over.data)
    try:
        return RouterConfig.model_validate(data), over.origin
    except ValidationError as err:
        raise ConfigError(configload.format_errors(err, RouterConfig, source, over.origin)) from None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> RouterConfig:
    return load_config_with_origin(path, env)[0]


def load_config_with_origin(
    path: str | Path | None, env: Mapping[str, str] | None = None
) -> tuple[RouterConfig, dict[str, str]]:
    if path is None:
        return parse_config_with_origin({}, source="defaults", env=env)
    return parse_config_with_origin(configload.read_yaml(path), source=str(path), env=env)
