"""Win rates of strategies against the live one, from real outcomes (TTFT, latency, errors).

Sans-IO: the router feeds every finished request to `OutcomeBook.record` with the `Trial` its ranker made when it
decided (the model, the live strategy, the arm that decided, and the shadow strategy's pick if the policy names one).

* An **A/B arm** serves real requests. Its win rate is the probability that one of its outcomes beats one of the
  live strategy's recent outcomes for the same model (a Mann-Whitney estimate: each outcome of the arm is compared
  with the live strategy's last `window` outcomes, ties count half, and the arm's rate is the mean over its own
  last `window` outcomes). The live strategy is the policy's `strategy` when it is an arm, else the biggest arm.
* A **shadow** strategy serves nothing: its pick is compared with the live pick of the same request. Where they
  agree the outcome is shared (counted as agreement, not as a comparison). Where they differ the shadow's
  counterfactual outcome is what its pick really did for recent requests (the target's last `target_window`
  outcomes, whichever strategy sent them), compared with what the live pick did for this request. A pick with no
  recent outcome cannot be judged and is counted as `unscored`.

Per metric: `errors` (an answer beats an error), `ttft` and `latency` (lower wins; only between answers), and
`overall` (an answer beats an error, then the lower TTFT). 0.5 means "no better, no worse than live".
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

METRICS = ("overall", "ttft", "latency", "errors")
AB = "ab"
SHADOW = "shadow"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request got: an answer (`ok`) or not, time to first byte (None: none came) and total latency."""

    ok: bool
    ttft_s: float | None
    latency_s: float


@dataclass(slots=True)
class Trial:
    """What a decision committed to, kept until the request's outcome is known."""

    model: str
    live: str  # the strategy the arms are judged against
    arm: str  # the strategy that decided this request (the live one, or an A/B arm)
    served: str = ""  # the target the decision put first
    shadow: str = ""  # the shadow strategy, if the policy names one
    shadow_pick: str | None = None  # its first choice for the same request (None: it had none)


class Window:
    """The last `size` outcomes of one strategy or target: answered TTFTs and latencies kept sorted, errors counted,
    so that "how often does outcome o beat one of these" costs O(log n)."""

    __slots__ = ("errors", "fifo", "latency", "size", "ttft")

    def __init__(self, size: int) -> None:
        self.size = size
        self.fifo: deque[Outcome] = deque()
        self.ttft: list[float] = []
        self.latency: list[float] = []
        self.errors = 0

    def __len__(self) -> int:
        return len(self.fifo)

    def add(self, o: Outcome) -> None:
        self.fifo.append(o)
        self._put(o, +1)
        if len(self.fifo) > self.size:
            self._put(self.fifo.popleft(), -1)

    def _put(self, o: Outcome, sign: int) -> None:
        if not o.ok or o.ttft_s is None:
            self.errors += sign
            return
        for values, x in ((self.ttft, o.ttft_s), (self.latency, o.latency_s)):
            if sign > 0:
                bisect.insort(values, x)
            else:
                del values[bisect.bisect_left(values, x)]

    def beaten_by(self, o: Outcome) -> dict[str, float]:
        """Per metric, the probability that `o` beats an outcome drawn from this window (ties half); a metric that
        cannot be compared (no answers on one side) is left out."""
        n = len(self.fifo)
        if not n:
            return {}
        errors = self.errors
        answered = n - errors
        out: dict[str, float] = {}
        if o.ok and o.ttft_s is not None:
            out["errors"] = (errors + 0.5 * answered) / n
            if answered:
                p_ttft = _below(self.ttft, o.ttft_s)
                out["ttft"] = p_ttft
                out["latency"] = _below(self.latency, o.latency_s)
                out["overall"] = (errors + p_ttft * answered) / n
            else:
                out["overall"] = 1.0
        else:
            out["errors"] = out["overall"] = 0.5 * errors / n
        return out


def _below(values: list[float], x: float) -> float:
    """Share of `values` that x beats (is lower than), ties counted half."""
    lo = bisect.bisect_left(values, x)
    hi = bisect.bisect_right(values, x)
    return (len(values) - hi + 0.5 * (hi - lo)) / len(values)


@dataclass(slots=True)
class Rate:
    """A running mean over the last `size` comparisons."""

    size: int
    values: deque[float] = field(default_factory=deque)
    total: float = 0.0

    def add(self, p: float) -> None:
        self.values.append(p)
        self.total += p
        if len(self.values) > self.size:
            self.total -= self.values.popleft()

    def value(self) -> float | None:
        return self.total / len(self.values) if self.values else None


@dataclass(slots=True)
class Challenger:
    """One strategy judged against a model's live strategy, as an A/B arm or as a shadow."""

    model: str
    strategy: str
    mode: str
    live: str
    window: int
    rates: dict[str, Rate] = field(default_factory=dict)
    compared: int = 0  # outcomes compared with the live strategy's
    agreed: int = 0  # shadow only: requests where its pick was the live pick
    unscored: int = 0  # shadow only: its pick had no recent outcome to judge it by

    def add(self, probs: dict[str, float]) -> None:
        self.compared += 1
        for metric, p in probs.items():
            rate = self.rates.get(metric)
            if rate is None:
                rate = self.rates[metric] = Rate(self.window)
            rate.add(p)

    def win_rate(self, metric: str = "overall") -> float | None:
        rate = self.rates.get(metric)
        return None if rate is None else rate.value()

    def describe(self) -> dict[str, Any]:
        rates = {m: self.win_rate(m) for m in METRICS}
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "mode": self.mode,
            "live": self.live,
            "compared": self.compared,
            "win_rate": None if rates["overall"] is None else round(rates["overall"], 4),
            "win_rates": {m: None if v is None else round(v, 4) for m, v in rates.items()},
        }
        if self.mode == SHADOW:
            seen = self.compared + self.agreed + self.unscored
            agree = round(self.agreed / seen, 4) if seen else None
            out.update(agreed=self.agreed, unscored=self.unscored, agree_rate=agree)
        return out


class OutcomeBook:
    """Outcome windows per (model, strategy) and per target, and the challengers' win rates computed from them."""

    def __init__(self, window: int = 256, target_window: int = 64) -> None:
        self.window = window
        self.target_window = target_window
        self.arms: dict[tuple[str, str], Window] = {}
        self.targets: dict[str, Window] = {}
        self.challengers: dict[tuple[str, str, str], Challenger] = {}
        self.served: dict[tuple[str, str], int] = {}  # requests each (model, strategy) decided

    def _challenger(self, model: str, strategy: str, mode: str, live: str) -> Challenger:
        key = (model, strategy, mode)
        ch = self.challengers.get(key)
        if ch is None or ch.live != live:  # a new live strategy starts a new comparison
            ch = self.challengers[key] = Challenger(model, strategy, mode, live, self.window)
        return ch

    def record(self, trial: Trial, outcome: Outcome, target: str = "") -> list[Challenger]:
        """One finished request; `target` is where it was served (default: the decision's first choice). Returns
        the challengers whose rates moved (for metrics)."""
        target = target or trial.served
        moved: list[Challenger] = []
        key = (trial.model, trial.arm)
        self.served[key] = self.served.get(key, 0) + 1
        if trial.arm != trial.live:
            live = self.arms.get((trial.model, trial.live))
            if live is not None and len(live):
                ch = self._challenger(trial.model, trial.arm, AB, trial.live)
                ch.add(live.beaten_by(outcome))
                moved.append(ch)
        if trial.shadow and trial.shadow != trial.arm:
            ch = self._challenger(trial.model, trial.shadow, SHADOW, trial.live)
            pick = trial.shadow_pick
            if pick is not None and pick == target:
                ch.agreed += 1
            else:
                seen = self.targets.get(pick) if pick is not None else None
                if seen is None or not len(seen):
                    ch.unscored += 1
                else:
                    # P(shadow's counterfactual beats the live outcome) = 1 - P(live outcome beats it)
                    ch.add({m: 1.0 - p for m, p in seen.beaten_by(outcome).items()})
            moved.append(ch)
        arm = self.arms.get(key)
        if arm is None:
            arm = self.arms[key] = Window(self.window)
        arm.add(outcome)
        if target:
            tw = self.targets.get(target)
            if tw is None:
                tw = self.targets[target] = Window(self.target_window)
            tw.add(outcome)
        return moved

    def forget_target(self, target: str) -> None:
        self.targets.pop(target, None)

    def of_model(self, model: str) -> Iterator[Challenger]:
        for (m, _, _), ch in sorted(self.challengers.items()):
            if m == model:
                yield ch

    def describe(self, model: str) -> list[dict[str, Any]]:
        return [{**ch.describe(), "served": self.served.get((model, ch.strategy), 0)} for ch in self.of_model(model)]
