"""Audit entries for refused bearer credentials (API tokens and OIDC JWTs on the API, node credentials on the agent
socket), throttled so that a flood of bad tokens cannot flood the audit log: per (peer, scheme, reason) at most one
entry a minute, carrying the count of the refusals it stands for, and at most a fixed number of entries a minute per
process whatever the reasons."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from django.db import transaction
from django.db.models import Model

from meshweb.audit.services import audit_record

ACTION = "identity.bearer_refused"


class RefusalThrottle:
    """Sans-IO: which refusals to record. `decide` answers None (counted, not recorded) or the number of earlier
    refusals of the same key that the entry recorded now also stands for."""

    def __init__(
        self, *, per_key_s: float = 60.0, window_s: float = 60.0, per_window: int = 300, max_keys: int = 10_000
    ) -> None:
        self.per_key_s = per_key_s
        self.window_s = window_s
        self.per_window = per_window
        self.max_keys = max_keys
        self._last: OrderedDict[Hashable, float] = OrderedDict()
        self._suppressed: dict[Hashable, int] = {}
        self._window_start = float("-inf")
        self._window_count = 0

    def decide(self, key: Hashable, now: float) -> int | None:
        last = self._last.get(key)
        if now - self._window_start >= self.window_s:
            self._window_start, self._window_count = now, 0
        if (last is not None and now - last < self.per_key_s) or self._window_count >= self.per_window:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            self._remember(key, last if last is not None else float("-inf"))
            return None
        self._window_count += 1
        self._remember(key, now)
        return self._suppressed.pop(key, 0)

    def _remember(self, key: Hashable, at: float) -> None:
        self._last[key] = at
        self._last.move_to_end(key)
        # Bounded memory under many distinct peers: the oldest keys are forgotten (their counts with them).
        while len(self._last) > self.max_keys:
            old, _ = self._last.popitem(last=False)
            self._suppressed.pop(old, None)

    def clear(self) -> None:
        self._last.clear()
        self._suppressed.clear()
        self._window_start, self._window_count = float("-inf"), 0


# The kind of credential each scheme presents, named as the audit entry's object type; registered at app ready by
# the app that owns the credential (tenancy: api_token, identity: oidc_bearer and node_credential).
_SCHEME_OBJECTS: dict[str, type[Model]] = {}


def register_scheme(scheme: str, credential: type[Model]) -> None:
    _SCHEME_OBJECTS[scheme] = credential


THROTTLE = RefusalThrottle()
_lock = threading.Lock()


def bearer_refused(
    *,
    scheme: str,
    reason: str,
    peer: str,
    token_prefix: str = "",
    tenant_id: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Record a refused bearer credential (never the credential itself); False when the throttle held it back."""
    if scheme not in _SCHEME_OBJECTS:
        raise ValueError(f"unknown credential scheme {scheme!r} (registered: {', '.join(sorted(_SCHEME_OBJECTS))})")
    with _lock:
        suppressed = THROTTLE.decide((peer, scheme, reason), clock())
    if suppressed is None:
        return False
    after: dict[str, object] = {"scheme": scheme, "reason": reason, "peer": peer, "suppressed": suppressed}
    if token_prefix:
        after["token_prefix"] = token_prefix
    with transaction.atomic():
        audit_record(
            actor=f"peer:{peer}"[:200],
            action=ACTION,
            obj=_SCHEME_OBJECTS[scheme](),
            tenant_id=tenant_id,
            after=after,
        )
    return True
