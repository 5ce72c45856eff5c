"""Namespaces of the policy store and the typed shape of their values (validated before proposing and on apply)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.proto.access import ApiKeyRecord, TenantAccess


class StoreInputError(ValueError):
    """A key or value that the policy store refuses, with a message naming the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Placement(_Strict):
    model: str = Field(min_length=1)
    nodes: list[str] = Field(default_factory=list)
    replicas: int = Field(default=1, ge=0)


class Slo(_Strict):
    ttft_ms_p99: float | None = Field(default=None, gt=0)
    tpot_ms_p99: float | None = Field(default=None, gt=0)
    availability: float | None = Field(default=None, gt=0, le=1)


class Pinning(_Strict):
    model: str = Field(min_length=1)
    revision: str | None = None
    nodes: list[str] = Field(min_length=1)


class NodeStatus(_Strict):
    status: Literal["active", "cordon", "drain", "quarantine", "offline"]
    reason: str = ""
    since: float | None = None


class RoutingPolicy(_Strict):
    strategy: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class ControlPolicy(_Strict):
    """A policy put through the Control API (`ctl policy put`), replicated under `policies/<name>`."""

    kind: str = Field(min_length=1, max_length=64)
    spec: dict[str, Any] = Field(default_factory=dict)
    updated_unix_ms: int = Field(default=0, ge=0)


# namespace -> value model; None means free-form text (operators' own keys, tests, benchmarks)
NAMESPACES: dict[str, type[BaseModel] | None] = {
    "placements": Placement,
    "slos": Slo,
    "pinning": Pinning,
    "nodes": NodeStatus,
    "routing": RoutingPolicy,
    "policies": ControlPolicy,
    "tenants": TenantAccess,  # inference access, written by the portal, read by routers (agents/proto/access.py)
    "apikeys": ApiKeyRecord,
    "kv": None,
}

_KEY_RE = re.compile(r"^[A-Za-z0-9_.:@=+-]+(/[A-Za-z0-9_.:@=+-]+)*$")
MAX_KEY = 512
MAX_VALUE = 1 << 20


def check_key(key: str) -> str:
    """Return the namespace of a valid key such as ``nodes/gpu-7``; raise StoreInputError otherwise."""
    if not key or len(key) > MAX_KEY:
        raise StoreInputError(f"key must be 1..{MAX_KEY} characters, got {len(key)}")
    ns, sep, rest = key.partition("/")
    if ns not in NAMESPACES:
        raise StoreInputError(f"unknown namespace {ns!r} in key {key!r}; known: {', '.join(sorted(NAMESPACES))}")
    if not sep or not rest or not _KEY_RE.match(rest):
        raise StoreInputError(f"key {key!r} must look like NAMESPACE/NAME with letters, digits and _.:@=+- parts")
    return ns


def check_prefix(prefix: str) -> None:
    if prefix == "":
        return
    ns = prefix.split("/", 1)[0]
    if ns not in NAMESPACES:
        raise StoreInputError(f"unknown namespace {ns!r} in prefix {prefix!r}; known: {', '.join(sorted(NAMESPACES))}")


def check_value(key: str, value: str) -> str:
    """Validate `value` for `key`'s namespace; typed namespaces take JSON and are stored normalised."""
    ns = check_key(key)
    if len(value.encode()) > MAX_VALUE:
        raise StoreInputError(f"value for {key!r} is larger than {MAX_VALUE} bytes")
    model = NAMESPACES[ns]
    if model is None:
        return value
    try:
        obj = json.loads(value)
    except ValueError as exc:
        raise StoreInputError(f"value for {key!r} must be JSON ({ns} is typed): {exc}") from exc
    try:
        parsed = model.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())
        raise StoreInputError(f"invalid {ns} value for {key!r}: {problems}") from exc
    return json.dumps(parsed.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"))
