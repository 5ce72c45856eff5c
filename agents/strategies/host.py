"""The strategy host: owns the target index, runs strategies under a decision-time budget and falls back to
`baseline_rr` when one overruns or raises.

Python cannot pre-empt a running function, so the budget is enforced after the fact: an overrun's answer is
discarded in favour of round-robin (kept, for a strategy that says `late_answer_kept`: the built-ins, whose overruns
are the machine's contention), and a strategy that overruns or fails repeatedly is bypassed for a cool-down.
Time (`clock`) and randomness (`rng`) are injected.

Deciding and booking are two steps. `decide` only asks (a strategy's `rank` books nothing); the caller then says
where the request went with `routed` (or `commit` and `note_assigned` apart), and the strategy that was asked books
that target: its own pick, the fallback's when its answer was discarded, or whatever the caller chose among the
ranked. So a discarded answer (overrun, shadow decision) leaves no queued work, prefix or adapter slot booked on a
target that never got the request.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agents.strategies.base import Decision, RouteRequest, Scored, Strategy, TargetIndex, TargetView
from agents.strategies.builtins import BaselineRR
from agents.strategies.plugins import Isolated

if TYPE_CHECKING:
    from agents.collective.costmodel import Fabric
    from agents.strategies.placement import PlacementCandidate, PlacementDecision, PlacementStrategy

log = logging.getLogger(__name__)

FALLBACK = BaselineRR.name


@dataclass(slots=True)
class StrategyStats:
    """Counters the agent and router export as metrics."""

    decisions: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)  # reason -> count
    overruns: int = 0  # answers over the budget that were kept (`Strategy.late_answer_kept`)
    consecutive_failures: int = 0
    tripped_until: float = 0.0


class UnknownStrategyError(ValueError):
    """A request or config named a strategy the host does not have."""


class StrategyHost:
    """Index + strategies + budget. One per router, agent or simulator; not thread-safe (one event loop)."""

    def __init__(
        self,
        strategies: Mapping[str, Strategy] | None = None,
        *,
        default: str = "hybrid_mesh",
        budget_us: float = 500.0,
        trip_after: int = 5,
        trip_cooldown_s: float = 10.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.perf_counter,
        on_decision: Callable[[Decision], None] | None = None,
        placement: Mapping[str, PlacementStrategy] | None = None,
        placement_budget_ms: float = 200.0,
    ) -> None:
        from agents.strategies import make_builtin_strategies
        from agents.strategies.placement import PLACEMENT_FALLBACK, Ring, make_placement_strategies

        self.index = TargetIndex()
        self.strategies: dict[str, Strategy] = dict(strategies) if strategies is not None else {}
        if not self.strategies:
            self.strategies = make_builtin_strategies()
        if FALLBACK not in self.strategies:
            self.strategies[FALLBACK] = BaselineRR()
        if default not in self.strategies:
            raise UnknownStrategyError(f"default strategy {default!r} is not one of {sorted(self.strategies)}")
        self.default = default
        self.budget_us = budget_us
        self.trip_after = trip_after
        self.trip_cooldown_s = trip_cooldown_s
        self.rng = rng or random.Random()
        self.clock = clock
        self.on_decision = on_decision
        self.stats: dict[str, StrategyStats] = {name: StrategyStats() for name in self.strategies}
        # Training strategies (ring / tree / hierarchical) score placements; same budget-and-fallback rules, in ms.
        self.placement: dict[str, PlacementStrategy] = dict(placement) if placement else make_placement_strategies()
        if PLACEMENT_FALLBACK not in self.placement:
            self.placement[PLACEMENT_FALLBACK] = Ring()
        self.placement_budget_ms = placement_budget_ms
        for name in self.placement:
            self.stats.setdefault(f"placement:{name}", StrategyStats())

    # -- index maintenance ---------------------------------------------------------------------------------------
    def upsert(self, view: TargetView) -> None:
        previous = self.index.get(view.target_id)
        if previous is not None and previous.version == view.version and view.inflight == 0:
            # A fresh copy of the same fused state keeps what this host assigned meanwhile.
            view.inflight = previous.inflight
        self.index.upsert(view)
        for strategy in self.strategies.values():
            strategy.on_upsert(view, previous)

    def remove(self, target_id: str) -> None:
        view = self.index.remove(target_id)
        if view is not None:
            for strategy in self.strategies.values():
                strategy.on_remove(view)

    def refresh(self) -> None:
        for strategy in self.strategies.values():
            strategy.refresh(self.index)

    def note_assigned(self, target_id: str) -> None:
        """A request was sent to the target: count it until fresh state arrives, so bursts do not herd."""
        self._adjust_inflight(target_id, +1)

    def commit(self, decision: Decision, request: RouteRequest, target_id: str) -> None:
        """`request` (answered by `decision`) goes to `target_id`: the strategy that was asked books it there.
        Call it before `note_assigned` for the same request: a strategy's booking may say what that assignment
        carries (hybrid_mesh's uncached prompt tokens)."""
        strategy = self.strategies.get(decision.asked or decision.strategy)
        view = self.index.get(target_id)
        if strategy is None or view is None:
            return
        try:
            strategy.on_routed(view, request)
        except Exception as exc:  # a plugin's bug must never fail the request
            log.warning("strategy %s raised %r booking a routed request", strategy.name, exc)

    def routed(self, decision: Decision, request: RouteRequest, target_id: str) -> None:
        """The request was sent to `target_id`: booked by the strategy asked, and counted in flight."""
        self.commit(decision, request, target_id)
        self.note_assigned(target_id)

    def withdraw(self, decision: Decision, request: RouteRequest, target_id: str) -> None:
        """`request`, booked on `target_id` by `commit` (or `routed`), was not prefilled there after all (its
        attempt there failed before a first byte, or it was served elsewhere): the strategy that was asked takes
        its booking back, and it no longer counts in flight there."""
        strategy = self.strategies.get(decision.asked or decision.strategy)
        view = self.index.get(target_id)
        if strategy is not None and view is not None:
            try:
                strategy.on_withdrawn(view, request)
            except Exception as exc:  # a plugin's bug must never fail the request
                log.warning("strategy %s raised %r withdrawing a booking", strategy.name, exc)
        self.note_finished(target_id)

    def note_finished(self, target_id: str) -> None:
        self._adjust_inflight(target_id, -1)

    def _adjust_inflight(self, target_id: str, delta: int) -> None:
        view = self.index.get(target_id)
        if view is None:
            return
        view.inflight = max(0, view.inflight + delta)
        for strategy in self.strategies.values():
            strategy.on_upsert(view, view)

    # -- decisions -----------------------------------------------------------------------------------------------
    def decide(self, request: RouteRequest, *, strategy: str = "", k: int = 3, explain: bool = False) -> Decision:
        name = strategy or self.default
        chosen = self.strategies.get(name)
        if chosen is None:
            raise UnknownStrategyError(f"strategy {name!r} is not one of {sorted(self.strategies)}")
        stats = self.stats[name]
        start = self.clock()
        if name != FALLBACK and stats.tripped_until > start:
            decision = self._fallback(request, k, name, "tripped", start)
        else:
            if isinstance(chosen, Isolated):  # a packaged Python strategy: abandoned at the budget, not after it
                chosen.deadline_s = self.budget_us / 1e6
            try:
                ranked = chosen.rank(self.index, request, k, self.rng)
            except Exception as exc:  # a plugin's bug must never fail the request
                log.warning("strategy %s raised %r; falling back to %s", name, exc, FALLBACK)
                self._failure(stats, start)
                # sandboxed strategies say why (fuel, memory, trap, malformed, deadline); anything else is "error"
                reason = str(getattr(exc, "fallback_reason", "error"))
                decision = self._fallback(request, k, name, reason, start)
            else:
                elapsed_us = (self.clock() - start) * 1e6
                if elapsed_us > self.budget_us and name != FALLBACK:
                    self._failure(stats, start)
                    if chosen.late_answer_kept and ranked:
                        stats.overruns += 1
                        decision = Decision(ranked, name, decision_us=elapsed_us, overrun=True)
                    else:
                        decision = self._fallback(request, k, name, "budget", start)
                else:
                    stats.consecutive_failures = 0
                    decision = Decision(ranked, name, decision_us=elapsed_us)
        stats.decisions += 1
        decision.asked = name
        if explain:
            used = self.strategies[decision.strategy]
            for scored in decision.ranked:
                scored.terms = used.explain(scored.target, request)
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision

    def _failure(self, stats: StrategyStats, now: float) -> None:
        stats.consecutive_failures += 1
        if stats.consecutive_failures >= self.trip_after:
            stats.tripped_until = now + self.trip_cooldown_s
            stats.consecutive_failures = 0

    def _fallback(self, request: RouteRequest, k: int, name: str, reason: str, start: float) -> Decision:
        stats = self.stats[name]
        stats.fallbacks[reason] = stats.fallbacks.get(reason, 0) + 1
        ranked: list[Scored] = self.strategies[FALLBACK].rank(self.index, request, k, self.rng)
        elapsed_us = (self.clock() - start) * 1e6
        return Decision(ranked, FALLBACK, fallback=True, fallback_reason=f"{name}: {reason}", decision_us=elapsed_us)

    # -- training placement ----------------------------------------------------------------------------------------
    def score_placements(
        self, candidates: Sequence[PlacementCandidate], fabric: Fabric, *, strategies: Sequence[str] = ()
    ) -> PlacementDecision:
        """Score every candidate with each named training strategy (default: ring, tree, hierarchical) and rank the
        (candidate, strategy) pairs by predicted step time. A strategy that raises or overruns the budget is
        replaced by `ring` for this decision."""
        from agents.strategies.placement import PLACEMENT_FALLBACK, PlacementDecision, PlacementScore

        names = list(strategies) or [n for n in ("ring", "tree", "hierarchical") if n in self.placement]
        for name in names:
            if name not in self.placement:  # an installed package's placement strategy, loaded on first use
                from agents.strategies.plugins import load_placement_plugin

                plugin = load_placement_plugin(name)
                if plugin is not None:
                    self.placement[name] = plugin
                    self.stats.setdefault(f"placement:{name}", StrategyStats())
        unknown = [n for n in names if n not in self.placement]
        if unknown:
            raise UnknownStrategyError(f"placement strategy {unknown[0]!r} is not one of {sorted(self.placement)}")
        start = self.clock()
        scored: list[PlacementScore] = []
        reasons: list[str] = []
        for name in names:
            stats = self.stats[f"placement:{name}"]
            t0 = self.clock()
            use = name
            if name != PLACEMENT_FALLBACK and stats.tripped_until > t0:
                use, reason = PLACEMENT_FALLBACK, "tripped"
                reasons.append(f"{name}: {reason}")
                stats.fallbacks[reason] = stats.fallbacks.get(reason, 0) + 1
            try:
                part = [self.placement[use].score(c, fabric) for c in candidates]
            except Exception as exc:  # a plugin's bug must never stop scheduling
                log.warning("placement strategy %s raised %r; falling back to %s", use, exc, PLACEMENT_FALLBACK)
                self._failure(stats, t0)
                stats.fallbacks["error"] = stats.fallbacks.get("error", 0) + 1
                reasons.append(f"{use}: error")
                part = [self.placement[PLACEMENT_FALLBACK].score(c, fabric) for c in candidates]
            else:
                elapsed_ms = (self.clock() - t0) * 1e3
                if elapsed_ms > self.placement_budget_ms and use != PLACEMENT_FALLBACK:
                    self._failure(stats, t0)
                    stats.fallbacks["budget"] = stats.fallbacks.get("budget", 0) + 1
                    reasons.append(f"{use}: budget")
                    part = [self.placement[PLACEMENT_FALLBACK].score(c, fabric) for c in candidates]
                else:
                    stats.consecutive_failures = 0
            stats.decisions += 1
            scored.extend(part)
        scored.sort(key=lambda s: s.score)
        return PlacementDecision(
            scored, names, fallback=bool(reasons), fallback_reason="; ".join(reasons),
            decision_ms=(self.clock() - start) * 1e3,
        )  # fmt: skip
