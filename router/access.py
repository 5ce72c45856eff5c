"""Inference access from the portal: tenants, their quotas and priority class, and API keys, mirrored from the local
agent's policy store (`tenants/`, `apikeys/`, records of `agents/proto/access.py`) and watched, so a key created,
revoked or re-limited in the portal takes effect here without a restart or a YAML edit.

Per prefix: a serializable `Store.Get` (the whole prefix, with the store's revision), then `Store.Watch` from the
next revision. A broken stream, a compacted history or an agent restart start over with a fresh `Get`, so a router
that was stopped or cut off during a change rebuilds the current state from its agent. While the agent cannot be
reached the last mirrored state keeps being enforced.

Which wins when both exist: the portal. A tenant the store knows (by slug = the YAML tenant's `name`) is taken
from the store entirely (keys, quotas, priority); YAML tenants of other names keep working, so a standalone router
(no agent, or an agent without a Raft store) runs on its YAML alone.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from pydantic import ValidationError

from agents.proto.access import KEYS_PREFIX, TENANTS_PREFIX, ApiKeyRecord, TenantAccess
from router.metrics import ACCESS_RECORDS, ACCESS_UPDATES
from router.obs import log_event
from router.storewatch import StoreMirror


@dataclass(slots=True)
class AccessState:
    """What the portal said, by store key suffix: tenants by id, keys by the SHA-256 of the key."""

    tenants: dict[int, TenantAccess] = field(default_factory=dict)
    keys: dict[str, ApiKeyRecord] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)  # prefixes mirrored at least once

    def tenant_by_slug(self) -> dict[str, TenantAccess]:
        return {t.slug: t for t in self.tenants.values()}

    def apply(self, prefix: str, key: str, value: str | None) -> bool:
        """Apply one put (value) or delete (None); returns False for a value this router cannot read (logged)."""
        name = key[len(prefix) :]
        try:
            if prefix == TENANTS_PREFIX:
                tid = int(name.removeprefix("tenant-"))
                if value is None:
                    self.tenants.pop(tid, None)
                else:
                    self.tenants[tid] = TenantAccess.model_validate(json.loads(value))
            else:
                if value is None:
                    self.keys.pop(name, None)
                else:
                    self.keys[name] = ApiKeyRecord.model_validate(json.loads(value))
        except (ValueError, ValidationError) as exc:
            log_event("access record refused", logging.WARNING, key=key, error=str(exc)[:300])
            return False
        return True

    def replace(self, prefix: str, kvs: list[tuple[str, str]]) -> None:
        if prefix == TENANTS_PREFIX:
            self.tenants.clear()
        else:
            self.keys.clear()
        for key, value in kvs:
            self.apply(prefix, key, value)
        self.loaded.add(prefix)


class AccessWatcher:
    """Mirrors both prefixes from the agent; `on_change` runs after every applied batch (the service re-indexes)."""

    def __init__(
        self,
        channel: Callable[[], grpc.aio.Channel],
        state: AccessState,
        on_change: Callable[[], None],
        *,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 2.0,
    ) -> None:
        self.state = state
        self._on_change = on_change
        self._failing: dict[str, str] = {}
        # a revocation must arrive within seconds of the agent's return: the backoff stays under 2 s
        self._mirrors = [
            StoreMirror(
                channel,
                [prefix],
                on_snapshot=functools.partial(self._snapshot, prefix),
                on_event=functools.partial(self._event, prefix),
                on_break=functools.partial(self._broken, prefix),
                min_s=reconnect_min_s,
                max_s=min(reconnect_max_s, 2.0),
                get_timeout_s=5.0,
            )
            for prefix in (TENANTS_PREFIX, KEYS_PREFIX)
        ]

    def start(self) -> None:
        for m in self._mirrors:
            m.start()

    async def close(self) -> None:
        for m in self._mirrors:
            await m.close()

    def _counts(self) -> None:
        ACCESS_RECORDS.labels("tenants").set(len(self.state.tenants))
        ACCESS_RECORDS.labels("keys").set(len(self.state.keys))

    def _snapshot(self, prefix: str, items: list[tuple[str, str]], revision: int) -> None:
        self.state.replace(prefix, items)
        ACCESS_UPDATES.labels("snapshot").inc()
        self._counts()
        self._on_change()
        if prefix in self._failing:
            log_event("portal access records mirrored again", prefix=prefix, records=len(items))
            del self._failing[prefix]

    def _event(self, prefix: str, ev: Any) -> None:
        self.state.apply(prefix, ev.key, ev.value if ev.type == "put" else None)
        ACCESS_UPDATES.labels(ev.type).inc()
        self._counts()
        self._on_change()

    def _broken(self, prefix: str, reason: str) -> None:
        if prefix not in self._failing:
            # Said once per outage: the last mirrored records stay in force meanwhile.
            self._failing[prefix] = reason
            log_event(
                "portal access records unavailable from the agent, keeping the last ones",
                logging.WARNING,
                prefix=prefix,
                reason=reason,
            )
