"""Token-bucket quotas per tenant or key (requests/s, tokens/min, concurrent requests, tokens per UTC day), decided
without I/O.

The Redis-shared variant (router.quota_redis) runs the same arithmetic inside a Lua script.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    """Classic token bucket: `rate` tokens per second refill up to `capacity`."""

    rate: float
    capacity: float
    tokens: float = -1.0
    stamp: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def try_take(self, amount: float, now: float) -> float:
        """Take `amount` tokens; return 0.0 when granted, else the seconds until it could be."""
        self._refill(now)
        # A request larger than the bucket could never pass: let it through alone on a full bucket.
        need = min(amount, self.capacity)
        if self.tokens >= need:
            self.tokens -= amount
            return 0.0
        return (need - self.tokens) / self.rate

    def give_back(self, amount: float) -> None:
        self.tokens = min(self.capacity, self.tokens + amount)


@dataclass(slots=True)
class QuotaDecision:
    allowed: bool
    reason: str = ""  # requests_per_s | tokens_per_min | concurrent | tokens_per_day
    retry_after_s: float = 0.0

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass(slots=True)
class TenantLimits:
    requests_per_s: float | None = None
    burst_requests: float | None = None
    tokens_per_min: float | None = None
    concurrent: int | None = None
    tokens_per_day: float | None = None

    def unlimited(self) -> bool:
        return (
            self.requests_per_s is None
            and self.tokens_per_min is None
            and self.concurrent is None
            and self.tokens_per_day is None
        )


DAY_S = 86400.0


def day_of(wall: float) -> int:
    return int(wall // DAY_S)


@dataclass(slots=True)
class TenantQuota:
    """The limits of one tenant (or key) on one router (local mode)."""

    limits: TenantLimits
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    inflight: int = 0
    day: int = -1
    day_used: float = 0.0
    _init: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        lim = self.limits
        if lim.requests_per_s:
            cap = lim.burst_requests or max(1.0, lim.requests_per_s)
            self.requests = TokenBucket(rate=lim.requests_per_s, capacity=cap)
        if lim.tokens_per_min:
            self.tokens = TokenBucket(rate=lim.tokens_per_min / 60.0, capacity=lim.tokens_per_min)

    def acquire(self, est_tokens: float, now: float, wall: float = 0.0) -> QuotaDecision:
        """`now` is a monotonic clock for the buckets, `wall` Unix time for the daily budget (UTC days)."""
        lim = self.limits
        if lim.concurrent is not None and self.inflight >= lim.concurrent:
            # No clock tells when a slot frees; one second is the honest lower bound to suggest.
            return QuotaDecision(False, "concurrent", 1.0)
        if self.requests is not None:
            wait = self.requests.try_take(1.0, now)
            if wait > 0:
                return QuotaDecision(False, "requests_per_s", wait)
        if self.tokens is not None and est_tokens > 0:
            wait = self.tokens.try_take(est_tokens, now)
            if wait > 0:
                if self.requests is not None:
                    self.requests.give_back(1.0)
                return QuotaDecision(False, "tokens_per_min", wait)
        if lim.tokens_per_day and est_tokens > 0:
            day = day_of(wall)
            if day != self.day:
                self.day, self.day_used = day, 0.0
            if self.day_used + min(est_tokens, lim.tokens_per_day) > lim.tokens_per_day:
                if self.requests is not None:
                    self.requests.give_back(1.0)
                if self.tokens is not None:
                    self.tokens.give_back(est_tokens)
                return QuotaDecision(False, "tokens_per_day", DAY_S - wall % DAY_S)
            self.day_used += est_tokens
        self.inflight += 1
        return QuotaDecision(True)

    def release(self, est_tokens: float, used_tokens: float | None, day: int = -1) -> None:
        self.inflight = max(0, self.inflight - 1)
        if used_tokens is not None and used_tokens < est_tokens and day == self.day:
            self.day_used = max(0.0, self.day_used - (est_tokens - used_tokens))
        # Charge what was really used once known: refund an over-estimate (never charge more after the fact).
        if self.tokens is not None and used_tokens is not None and used_tokens < est_tokens:
            self.tokens.give_back(est_tokens - used_tokens)


def estimate_tokens(prompt_chars: int, max_tokens: int | None, default_max_tokens: int = 256) -> float:
    """Upfront charge: ~4 characters per prompt token plus the completion budget the request asks for."""
    return prompt_chars / 4.0 + (max_tokens if max_tokens is not None else default_max_tokens)
