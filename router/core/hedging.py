"""Hedged requests: when to send a second copy (from the target's recent TTFT) and a budget capping the extra load."""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass


class LatencyWindow:
    """The last `size` samples of one target's TTFT, with a quantile kept sorted incrementally (O(log n) insert)."""

    __slots__ = ("_order", "_sorted", "size")

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self._order: deque[float] = deque()
        self._sorted: list[float] = []

    def add(self, value: float) -> None:
        if len(self._order) >= self.size:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._order.append(value)
        bisect.insort(self._sorted, value)

    def __len__(self) -> int:
        return len(self._order)

    def quantile(self, q: float) -> float | None:
        if not self._sorted:
            return None
        idx = min(len(self._sorted) - 1, max(0, int(q * len(self._sorted))))
        return self._sorted[idx]


@dataclass(slots=True)
class HedgeParams:
    quantile: float = 0.9
    multiplier: float = 1.0
    min_delay_s: float = 0.005
    max_delay_s: float = 2.0
    default_delay_s: float = 0.2
    min_samples: int = 8


def hedge_delay(window: LatencyWindow | None, p: HedgeParams) -> float:
    """Seconds to wait for a first byte before hedging to the next-ranked target."""
    if window is None or len(window) < p.min_samples:
        base = p.default_delay_s
    else:
        q = window.quantile(p.quantile)
        base = p.default_delay_s if q is None else q * p.multiplier
    return min(p.max_delay_s, max(p.min_delay_s, base))


class HedgeBudget:
    """Every request earns `ratio` of a hedge; a hedge spends one. Caps hedges at ~ratio x requests, with a burst."""

    __slots__ = ("balance", "burst", "hedges", "ratio", "requests")

    def __init__(self, ratio: float, burst: float) -> None:
        self.ratio = ratio
        self.burst = burst
        self.balance = 0.0  # hedges are earned by requests first, so extra load never starts above the ratio
        self.requests = 0
        self.hedges = 0

    def on_request(self) -> None:
        self.requests += 1
        self.balance = min(self.burst, self.balance + self.ratio)

    def try_spend(self) -> bool:
        if self.balance >= 1.0:
            self.balance -= 1.0
            self.hedges += 1
            return True
        return False

    @property
    def extra_load(self) -> float:
        return self.hedges / self.requests if self.requests else 0.0


def predicted_delay(predicted_s: float, factor: float, p: HedgeParams) -> float:
    """Hedge once the first byte is `factor` x later than the strategy predicted: an overrun the prediction did not
    see coming (a throttled GPU, a preempted batch), not a target that was known to be busy."""
    return min(p.max_delay_s, max(p.min_delay_s, predicted_s * factor))


class HedgeWins:
    """Whether hedges from a target ever win. After `min_samples` judged hedges from one target, hedging from it stops
    while fewer than `min_win_rate` of the last ones won; every `probe_every`-th hedge still goes, so that a change
    is noticed. The win rate is an EWMA over hedges (weight `alpha`)."""

    __slots__ = ("alpha", "min_samples", "min_win_rate", "probe_every", "skipped", "stats")

    def __init__(self, min_win_rate: float = 0.1, min_samples: int = 20, probe_every: int = 10, alpha: float = 0.05):
        self.min_win_rate = min_win_rate
        self.min_samples = min_samples
        self.probe_every = probe_every
        self.alpha = alpha
        self.stats: dict[str, list[float]] = {}  # key -> [hedges judged, EWMA of won]
        self.skipped: dict[str, int] = {}

    def record(self, key: str, won: bool) -> None:
        s = self.stats.get(key)
        x = 1.0 if won else 0.0
        if s is None:
            self.stats[key] = [1.0, x]
            return
        s[0] += 1
        s[1] += self.alpha * (x - s[1]) if s[0] > 1 / self.alpha else (x - s[1]) / s[0]

    def win_rate(self, key: str) -> float | None:
        s = self.stats.get(key)
        return s[1] if s is not None else None

    def worth(self, key: str) -> bool:
        s = self.stats.get(key)
        if s is None or s[0] < self.min_samples or s[1] >= self.min_win_rate:
            return True
        n = self.skipped.get(key, 0) + 1
        if n >= self.probe_every:
            self.skipped[key] = 0
            return True
        self.skipped[key] = n
        return False
