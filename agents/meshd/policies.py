"""Policy store of one agent. In-memory and local by default; the Raft component replaces it with a replicated one
through the same `PolicyStore` protocol."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Protocol

from agents.proto.infermesh.v1 import control_pb2


class PolicyError(ValueError):
    """A policy is malformed; the message names the field."""


class PolicyUnavailable(RuntimeError):
    """The replicated store cannot take the write now (no quorum, or not committed in time); retry later."""


class PolicyStore(Protocol):
    def list(self, kind: str = "") -> list[control_pb2.Policy]: ...

    async def put(self, policy: control_pb2.Policy) -> control_pb2.Policy: ...

    async def delete(self, name: str) -> bool: ...


def validate_policy(policy: control_pb2.Policy) -> None:
    if not policy.name or len(policy.name) > 128:
        raise PolicyError("policy.name: required, at most 128 characters")
    if not policy.kind:
        raise PolicyError("policy.kind: required (quota, slo, placement, routing, ...)")
    try:
        body = json.loads(policy.spec_json or "{}")
    except json.JSONDecodeError as exc:
        raise PolicyError(f"policy.spec_json: not JSON ({exc.msg} at position {exc.pos})") from exc
    if not isinstance(body, dict):
        raise PolicyError("policy.spec_json: must be a JSON object")


class LocalPolicyStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._policies: dict[str, control_pb2.Policy] = {}
        self._version = 0

    def list(self, kind: str = "") -> list[control_pb2.Policy]:
        return [p for _, p in sorted(self._policies.items()) if not kind or p.kind == kind]

    async def put(self, policy: control_pb2.Policy) -> control_pb2.Policy:
        validate_policy(policy)
        self._version += 1
        stored = control_pb2.Policy()
        stored.CopyFrom(policy)
        stored.version = self._version
        stored.updated_unix_ms = int(self.clock() * 1000)
        self._policies[policy.name] = stored
        return stored

    async def delete(self, name: str) -> bool:
        return self._policies.pop(name, None) is not None
