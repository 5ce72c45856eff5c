"""The portal <-> agent WebSocket protocol (one JSON object per text frame), defined once for both sides.

Agents send hello / ack / heartbeat / telemetry / job_status / job_event / job_telemetry / call_refusals; the portal
answers welcome, then changes or a snapshot, and error frames. Every agent frame carries a per-connection `seq` that
must increase (replays are refused).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agents.proto.vocab import JobStatusName

PROTOCOL = 1
WS_PATH = "/ws/agent/"
MAX_FRAME_BYTES = 1 << 20  # agent -> portal frames
MAX_PORTAL_FRAME_BYTES = 64 << 20  # portal -> agent frames (a snapshot of a large portal)
# Store keys the portal owns: a snapshot replaces everything under them (keys missing from it are deleted).
MANAGED_PREFIXES: tuple[str, ...] = (
    "kv/portal/",
    "routing/",
    "nodes/",
    "tenants/",
    "apikeys/",
    "pinning/",
    "placements/",
    "slos/",
)
# The applied outbox version is kept in the store itself, beside the data it describes.
VERSION_KEY = "kv/portal-version/applied"
# Raft client session of portal changes: every agent proposes a version under the same (client, seq) numbering so
# that the store applies each change once however many agents propose it.
RAFT_CLIENT_ID = 0x706F7274616C  # "portal"
SEQ_SPAN = 1 << 20  # store writes per version (a snapshot may need many); the version marker takes the last
CREDENTIAL_PREFIX = "imn_"
# Portal node statuses -> policy-store node statuses.
STORE_NODE_STATUS = {
    "active": "active",
    "cordoned": "cordon",
    "draining": "drain",
    "quarantined": "quarantine",
    "offline": "offline",
}
# Calls an agent refused, aggregated: at most this many distinct kinds per frame (the rest are only counted).
MAX_REFUSAL_KINDS = 64
JOB_STATUSES = ("pending", "queued", "placing", "running", "succeeded", "failed", "cancelled", "preempted")

_KEY = r"^[A-Za-z0-9_.:@=+-]+(/[A-Za-z0-9_.:@=+-]+)+$"
_NAME = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"


class ProtocolError(ValueError):
    """A frame that is not valid protocol; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------- portal -> agent
class Change(_Strict):
    version: int = Field(gt=0)
    key: str = Field(pattern=_KEY, max_length=512)
    op: Literal["put", "delete"]
    value: dict[str, Any] | None = None
    kind: str = Field(default="", max_length=64)
    # W3C trace context of the portal write that made the change: the agent's apply and Raft's commit join its trace.
    traceparent: str = Field(default="", pattern=r"^([0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})?$")


class Entry(_Strict):
    key: str = Field(pattern=_KEY, max_length=512)
    value: dict[str, Any]


class Welcome(_Strict):
    type: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL
    node: str
    head: int = Field(ge=0)
    mode: Literal["replay", "snapshot", "current"]
    heartbeat_s: float = Field(gt=0)
    telemetry_s: float = Field(gt=0)


class Changes(_Strict):
    type: Literal["changes"] = "changes"
    changes: list[Change] = Field(min_length=1, max_length=10_000)


class Snapshot(_Strict):
    type: Literal["snapshot"] = "snapshot"
    version: int = Field(ge=0)
    prefixes: list[str] = Field(default_factory=lambda: list(MANAGED_PREFIXES))
    entries: list[Entry] = Field(default_factory=list, max_length=SEQ_SPAN - 2)


class Error(_Strict):
    type: Literal["error"] = "error"
    code: str
    message: str
    fatal: bool = False


PortalMessage = Annotated[Welcome | Changes | Snapshot | Error, Field(discriminator="type")]


# ---------------------------------------------------------------------------------------------- agent -> portal
class _AgentFrame(_Strict):
    seq: int = Field(gt=0, description="per-connection sequence number; must increase")


class Hello(_AgentFrame):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL
    node: str = Field(pattern=_NAME)
    applied_version: int = Field(ge=0)
    store: Literal["raft", "file"]
    agent_version: str = Field(default="", max_length=64)


class Ack(_AgentFrame):
    type: Literal["ack"] = "ack"
    version: int = Field(ge=0)


class Heartbeat(_AgentFrame):
    type: Literal["heartbeat"] = "heartbeat"
    state: Literal["active", "cordoned", "draining", "quarantined", "down", "unspecified"] = "active"
    sent_unix_ms: int = Field(ge=0)


class GpuRollup(_Strict):
    uuid: str = Field(min_length=1, max_length=96)
    index: int = Field(ge=0, le=1024)
    name: str = Field(default="", max_length=128)
    mig_profile: str = Field(default="", max_length=32)
    utilization: float | None = Field(default=None, ge=0, le=100)
    memory_used_frac: float | None = Field(default=None, ge=0, le=1)
    temperature_c: float | None = Field(default=None, ge=-50, le=200)
    slowdown_temp_c: float | None = Field(default=None, ge=0, le=200)
    power_w: float | None = Field(default=None, ge=0)
    ecc_uncorrectable: int | None = Field(default=None, ge=0)
    remap_pending: bool = False
    xids: list[int] = Field(default_factory=list, max_length=64, description="Xid codes seen since the last report")
    throttle_reasons: list[str] = Field(default_factory=list, max_length=32)
    healthy: bool = True
    reason: str = Field(default="", max_length=256)


class PeerLink(_Strict):
    node: str = Field(min_length=1, max_length=128)
    rtt_ms: float | None = Field(default=None, ge=0)
    loss: float | None = Field(default=None, ge=0, le=1)


class NodeRollup(_Strict):
    state: str = Field(default="active", max_length=32)
    targets: int = Field(default=0, ge=0)
    routable_targets: int = Field(default=0, ge=0)
    requests_running: float = Field(default=0.0, ge=0)
    requests_waiting: float = Field(default=0.0, ge=0)
    tokens_per_s: float = Field(default=0.0, ge=0)


class Telemetry(_AgentFrame):
    type: Literal["telemetry"] = "telemetry"
    at_unix_ms: int = Field(ge=0)
    node: NodeRollup = Field(default_factory=NodeRollup)
    gpus: list[GpuRollup] = Field(default_factory=list, max_length=64)
    peers: list[PeerLink] = Field(default_factory=list, max_length=256)


class JobStatus(_AgentFrame):
    type: Literal["job_status"] = "job_status"
    job_id: int = Field(gt=0)
    status: JobStatusName
    reason: str = Field(default="", max_length=500)


class JobEvent(_AgentFrame):
    type: Literal["job_event"] = "job_event"
    job_id: int = Field(gt=0)
    kind: str = Field(min_length=1, max_length=50, pattern=r"^[a-z0-9_.-]+$")
    message: str = Field(default="", max_length=1000)
    data: dict[str, Any] = Field(default_factory=dict)


class JobTelemetry(_AgentFrame):
    """The latest telemetry roll-up of a job (steps, step time, all-reduce bytes / time / busbw per node)."""

    type: Literal["job_telemetry"] = "job_telemetry"
    job_id: int = Field(gt=0)
    generation: int = Field(default=0, ge=0)
    data: dict[str, Any] = Field(default_factory=dict)


class RefusedCall(_Strict):
    """Calls of one kind (same caller, method, code and reason) the agent's gRPC server refused in a window."""

    caller: str = Field(max_length=255, description="the caller's SPIFFE ID, or its address when it has none")
    peer: str = Field(default="", max_length=128, description="the transport address of the latest one")
    method: str = Field(min_length=1, max_length=255)
    code: str = Field(pattern=r"^[A-Z_]{1,32}$", description="gRPC status code name")
    reason: str = Field(default="", max_length=500)
    count: int = Field(ge=1)
    first_unix_ms: int = Field(ge=0)
    last_unix_ms: int = Field(ge=0)


class CallRefusals(_AgentFrame):
    """Security refusals of the agent's gRPC server since the last report; a flood collapses into counts."""

    type: Literal["call_refusals"] = "call_refusals"
    refusals: list[RefusedCall] = Field(default_factory=list, max_length=MAX_REFUSAL_KINDS)
    dropped: int = Field(default=0, ge=0, description="refusals of further kinds, counted but not itemised")


AgentFrame = Hello | Ack | Heartbeat | Telemetry | JobStatus | JobEvent | JobTelemetry | CallRefusals
AgentMessage = Annotated[AgentFrame, Field(discriminator="type")]

_AGENT = TypeAdapter(AgentMessage)
_PORTAL = TypeAdapter(PortalMessage)


def _load(raw: str | bytes, max_bytes: int = MAX_FRAME_BYTES) -> Any:
    if len(raw) > max_bytes:
        raise ProtocolError(f"frame of {len(raw)} bytes is larger than {max_bytes}")

    def _no_constants(name: str) -> Any:
        raise ProtocolError(f"{name} is not JSON")

    try:
        obj = json.loads(raw, parse_constant=_no_constants)
    except ProtocolError:
        raise
    except ValueError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame must be a JSON object, got {type(obj).__name__}")
    if "type" not in obj:
        raise ProtocolError("type: required")
    return obj


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'frame'}: {e['msg']}" for e in exc.errors()[:5])


def parse_agent_message(raw: str | bytes) -> AgentFrame:
    """Validate one frame sent by an agent; ProtocolError names what is wrong."""
    obj = _load(raw)
    try:
        return _AGENT.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError(_problems(exc)) from exc


def parse_portal_message(raw: str | bytes) -> Welcome | Changes | Snapshot | Error:
    """Validate one frame sent by the portal."""
    obj = _load(raw, MAX_PORTAL_FRAME_BYTES)
    try:
        return _PORTAL.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError(_problems(exc)) from exc


def dump(message: BaseModel) -> str:
    return message.model_dump_json()


def encode_value(value: dict[str, Any]) -> str:
    """The text stored for a change's value: canonical JSON (typed store namespaces normalise it the same way)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
