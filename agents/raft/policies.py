"""The Control API's policy store on a Raft group: `PutPolicy` on any agent of the group is replicated to all of
them under `policies/<name>`, and `ListPolicies` answers from the local replica (serializable)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from agents.meshd.policies import PolicyError, PolicyUnavailable, validate_policy
from agents.proto.infermesh.v1 import control_pb2
from agents.store.machine import KeyValue
from agents.store.schema import StoreInputError, check_key

from .group import NoQuorum, RaftGroup, RequestTimeout

PREFIX = "policies/"


def _policy(kv: KeyValue) -> control_pb2.Policy:
    body = json.loads(kv.value)
    return control_pb2.Policy(
        name=kv.key.removeprefix(PREFIX),
        kind=body["kind"],
        spec_json=json.dumps(body.get("spec", {}), sort_keys=True),
        version=kv.mod_rev,
        updated_unix_ms=int(body.get("updated_unix_ms", 0)),
    )


class ReplicatedPolicyStore:
    def __init__(self, group: RaftGroup, clock: Callable[[], float] = time.time) -> None:
        self.group = group
        self.clock = clock

    def list(self, kind: str = "") -> list[control_pb2.Policy]:
        out = [_policy(kv) for kv in self.group.sm.range(PREFIX)]
        return [p for p in sorted(out, key=lambda p: p.name) if not kind or p.kind == kind]

    def _key(self, name: str) -> str:
        key = PREFIX + name
        try:
            check_key(key)
        except StoreInputError as exc:
            raise PolicyError(f"policy.name: {exc}") from None
        return key

    async def _propose(self, op: str, key: str, value: str | None = None) -> dict[str, object]:
        try:
            res = await self.group.propose_command(op, key, value=value)
        except (NoQuorum, RequestTimeout) as exc:
            raise PolicyUnavailable(str(exc)) from exc
        if not res.get("ok", False):
            raise PolicyError(str(res.get("error", "the policy store refused the write")))
        return res

    async def put(self, policy: control_pb2.Policy) -> control_pb2.Policy:
        validate_policy(policy)
        key = self._key(policy.name)
        now_ms = int(self.clock() * 1000)
        value = json.dumps(
            {"kind": policy.kind, "spec": json.loads(policy.spec_json or "{}"), "updated_unix_ms": now_ms}
        )
        try:
            res = await self._propose("put", key, value)
        except PolicyError as exc:
            raise PolicyError(f"policy {policy.name!r}: {exc}") from None
        stored = control_pb2.Policy()
        stored.CopyFrom(policy)
        stored.version = int(res.get("rev") or 0)  # type: ignore[call-overload]
        stored.updated_unix_ms = now_ms
        return stored

    async def delete(self, name: str) -> bool:
        res = await self._propose("del", self._key(name))
        return bool(res.get("deleted"))
