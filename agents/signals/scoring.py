"""The agent's scoring service: keeps a strategy host in step with fusion and answers `ScoreTargets`, `Admit` and
`ReportOutcome`. Routers run their own host from `WatchTargets`; this one serves tools and thin clients."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

from agents.proto.infermesh.v1 import scoring_pb2
from agents.signals.fusion import Fusion, IngestResult
from agents.strategies import HybridMesh, RouteRequest, RttFn, Strategy, load_strategy, make_builtin_strategies
from agents.strategies.base import Decision
from agents.strategies.host import StrategyHost


class ScoringService:
    def __init__(
        self,
        fusion: Fusion,
        *,
        default_strategy: str = "hybrid_mesh",
        plugins: Mapping[str, str] | None = None,
        budget_us: float = 500.0,
        top_k: int = 3,
        max_queue_per_target: float = 32.0,
        retry_after_s: float = 1.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.perf_counter,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> None:
        strategies: dict[str, Strategy] = make_builtin_strategies()
        for name, spec in (plugins or {}).items():
            strategies[name] = load_strategy(spec)
        self.host = StrategyHost(
            strategies, default=default_strategy, budget_us=budget_us, rng=rng, clock=clock, on_decision=on_decision
        )
        self.fusion = fusion
        self.top_k = top_k
        self.max_queue_per_target = max_queue_per_target
        self.retry_after_s = retry_after_s
        for rec in fusion.targets.values():
            self.host.upsert(fusion.to_view(rec))
        self._unsubscribe = fusion.subscribe(self._on_change)

    def close(self) -> None:
        self._unsubscribe()

    def set_rtt(self, rtt: RttFn | None) -> None:
        for strategy in self.host.strategies.values():
            if isinstance(strategy, HybridMesh):
                strategy.set_rtt(rtt)

    def _on_change(self, changed: list[str], removed: list[str]) -> None:
        for tid in changed:
            rec = self.fusion.targets.get(tid)
            if rec is not None:
                self.host.upsert(self.fusion.to_view(rec))
        for tid in removed:
            self.host.remove(tid)

    def score(self, req: scoring_pb2.ScoreRequest) -> scoring_pb2.ScoreResponse:
        """Rank targets; raises `UnknownStrategyError` (a ValueError) for an unknown strategy name."""
        request = RouteRequest(
            model=req.model,
            revision=req.revision,
            tenant=req.tenant,
            prompt_tokens=req.prompt_tokens,
            max_tokens=req.max_tokens,
            client_node=req.client_node or self.fusion.node_id,
            mig_profile=req.mig_profile,
            exclude=frozenset(req.exclude),
            request_id=req.request_id,
        )
        decision = self.host.decide(request, strategy=req.strategy, k=req.top_k or self.top_k, explain=True)
        return scoring_pb2.ScoreResponse(
            ranked=[
                scoring_pb2.ScoredTarget(
                    target_id=s.target.target_id,
                    endpoint=s.target.endpoint,
                    node=s.target.node,
                    score=s.score,
                    terms=s.terms or {},
                )
                for s in decision.ranked
            ],
            strategy=decision.strategy,
            fallback=decision.fallback,
            fallback_reason=decision.fallback_reason,
            decision_us=decision.decision_us,
        )

    def admit(self, req: scoring_pb2.AdmitRequest) -> scoring_pb2.AdmitResponse:
        """Backpressure: refuse when the model has no routable target or its queues exceed the threshold."""
        waiting = 0.0
        routable = 0
        for view in self.host.index.candidates(req.model):
            if view.routable and (not req.revision or view.revision == req.revision):
                routable += 1
                waiting += (view.requests_waiting or 0.0) + view.inflight
        if routable == 0:
            return scoring_pb2.AdmitResponse(
                admitted=False,
                reason=f"no routable target for model {req.model!r}",
                retry_after_s=self.retry_after_s,
            )
        per_target = waiting / routable
        if per_target > self.max_queue_per_target:
            return scoring_pb2.AdmitResponse(
                admitted=False,
                reason=f"queues full: {per_target:.1f} waiting per target > {self.max_queue_per_target:g}",
                retry_after_s=self.retry_after_s,
                queue_per_target=per_target,
                routable_targets=routable,
            )
        return scoring_pb2.AdmitResponse(admitted=True, queue_per_target=per_target, routable_targets=routable)

    def report(self, report: scoring_pb2.OutcomeReport) -> IngestResult:
        return self.fusion.record_outcome(report)
