"""Refused calls of the agent's gRPC server, folded into one bounded report for the portal: a flood of refusals
becomes a handful of counted kinds per report, never one frame per call. Sans-IO: time comes in as an argument."""

from __future__ import annotations

from dataclasses import dataclass

from agents.proto.portal_link import MAX_REFUSAL_KINDS, CallRefusals, RefusedCall
from agents.security.authz import Refusal

_Key = tuple[str, str, str, str]  # caller, method, code, reason


@dataclass
class _Kind:
    peer: str
    count: int
    first_ms: int
    last_ms: int


class RefusalDigest:
    """Counts refusals by (caller, method, code, reason) until `take` empties it. Kinds beyond `max_kinds` are
    counted in `dropped` only, so memory and the report stay bounded whatever a caller sends."""

    def __init__(self, max_kinds: int = MAX_REFUSAL_KINDS) -> None:
        self.max_kinds = max_kinds
        self._kinds: dict[_Key, _Kind] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._kinds)

    def add(self, refusal: Refusal, now_ms: int) -> None:
        caller = refusal.caller or refusal.peer
        key = (caller[:255], refusal.method[:255], refusal.code, refusal.reason[:500])
        kind = self._kinds.get(key)
        if kind is not None:
            kind.count += 1
            kind.last_ms = now_ms
            kind.peer = refusal.peer[:128]
        elif len(self._kinds) < self.max_kinds:
            self._kinds[key] = _Kind(refusal.peer[:128], 1, now_ms, now_ms)
        else:
            self.dropped += 1

    def take(self) -> CallRefusals | None:
        """The report of everything since the last one (None when there is nothing to report)."""
        if not self._kinds and not self.dropped:
            return None
        items = [
            RefusedCall(
                caller=caller,
                peer=k.peer,
                method=method,
                code=code,
                reason=reason,
                count=k.count,
                first_unix_ms=k.first_ms,
                last_unix_ms=k.last_ms,
            )
            for (caller, method, code, reason), k in self._kinds.items()
        ]
        frame = CallRefusals(seq=1, refusals=items, dropped=self.dropped)
        self._kinds.clear()
        self.dropped = 0
        return frame
