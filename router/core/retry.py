"""Retry rules: which upstream outcomes may be retried on another target (only before the first byte reached us)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Outcome(Enum):
    OK = "ok"
    CONNECT_ERROR = "connect_error"
    RESET = "reset"
    TIMEOUT = "timeout"
    BAD_STATUS = "bad_status"  # a retryable status such as 502/503
    CLIENT_ERROR = "client_error"  # 4xx from the runtime: the request itself is wrong, pass it through
    SERVER_ERROR = "server_error"  # other 5xx: passed through, counts against the target
    BROKEN = "broken_response"  # the runtime answered something that is not HTTP or closed mid-body


@dataclass(frozen=True, slots=True)
class RetryRules:
    max_attempts: int = 3
    on_status: frozenset[int] = frozenset({502, 503, 504})

    def classify_status(self, status: int) -> Outcome:
        if status < 400:
            return Outcome.OK
        if status in self.on_status:
            return Outcome.BAD_STATUS
        if status < 500:
            return Outcome.CLIENT_ERROR
        return Outcome.SERVER_ERROR

    def retryable(self, outcome: Outcome, attempt: int, first_byte_sent: bool) -> bool:
        """Retry only if nothing reached the client yet: a retry after a byte would duplicate or splice output."""
        if first_byte_sent or attempt >= self.max_attempts:
            return False
        return outcome in (Outcome.CONNECT_ERROR, Outcome.RESET, Outcome.TIMEOUT, Outcome.BAD_STATUS, Outcome.BROKEN)

    @staticmethod
    def counts_as_failure(outcome: Outcome) -> bool:
        """Which outcomes count toward outlier ejection (client errors are the caller's fault, not the target's)."""
        return outcome not in (Outcome.OK, Outcome.CLIENT_ERROR)
