"""Ranking with the model's routing policy through the agents.strategies host: strategy or A/B arm, shadow strategy.

The router keeps a `StrategyHost` whose index mirrors its view and decides in-process (no RPC per request). The host
enforces the decision budget and falls back to `baseline_rr` when a strategy overruns or raises.

Each decision leaves a `Trial` (the live strategy, the deciding arm, the shadow's pick); the request's outcome goes
to the `OutcomeBook`, which keeps every challenger's win rate against the live strategy (agents/strategies/outcomes).
A policy may name a strategy that is not loaded (yet, or ever: a new module version refused at load); the model
keeps the strategy that last decided for it until then, so that no request fails for it.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agents.strategies import load_strategy
from agents.strategies.base import HEALTHY, UNKNOWN, Decision, RouteRequest, Strategy, TargetView
from agents.strategies.builtins import ZoneRtt
from agents.strategies.host import StrategyHost, StrategyStats
from agents.strategies.outcomes import Outcome, OutcomeBook, Trial
from agents.strategies.plugins import isolate
from router.config import RoutingPolicy
from router.meshview import MeshView
from router.metrics import (
    ARM_TTFT,
    DECISION,
    SHADOW,
    STRATEGY_FALLBACKS,
    STRATEGY_NOT_LOADED,
    STRATEGY_OVERRUNS,
    WIN_RATE,
    child,
    observe,
)
from router.prefix import RequestPrefix
from router.view import Target
from router.view import TargetView as RouterView

log = logging.getLogger("router.ranking")

BASELINE = "baseline_rr"


@dataclass(slots=True)
class Booking:
    """Where a decision's request is booked: the strategy that was asked holds its prefix (and queued prefill) on
    each target in `booked`, and the host counts it in flight there. The first-ranked target is booked at the
    decision (so a burst sharing a prefix follows it at once); from then on the booking follows the attempts
    (`Ranker.attempt`): a retry's or hedge's target is booked as the attempt is sent, a target whose attempt failed
    before a first byte, or that was never sent the request, is released."""

    decision: Decision
    request: RouteRequest
    booked: list[str] = field(default_factory=list)
    sent: set[str] = field(default_factory=set)  # the booked targets an attempt was sent to


def to_strategy_view(t: Target) -> TargetView:
    if t.state is not None:
        v = TargetView.from_proto(t.state)
        v.target_id = t.id
    else:
        # A static target: nothing fused is known, so it counts healthy until the router's own outcomes say otherwise.
        v = TargetView(
            target_id=t.id,
            model=t.model,
            node=t.node,
            endpoint=t.url,
            revision=t.revision,
            runtime=t.runtime,
            zone=t.zone,
            quant=t.quant,
            mig_profile=t.mig_profile,
            gpu_uuids=(t.gpu_uuid,) if t.gpu_uuid else (),
            health=HEALTHY,
            max_concurrency=t.max_concurrency,
        )
    v.routable = t.healthy
    if v.health == UNKNOWN and t.healthy and t.source == "static":
        v.health = HEALTHY
    return v


def strategy_names(policies: Iterable[RoutingPolicy]) -> set[str]:
    names: set[str] = set()
    for p in policies:
        names.add(p.strategy)
        names.update(p.ab_split)
        if p.shadow_strategy:
            names.add(p.shadow_strategy)
    return names


class Ranker:
    def __init__(
        self, view: RouterView, policies: Iterable[RoutingPolicy] = (), decision_budget_us: float = 1000.0
    ) -> None:
        self.view = view
        strategies: dict[str, Strategy] = {}
        # Only the strategies a policy names (plus the fallback): every strategy held is updated on every request.
        for spec in sorted(strategy_names(policies) | {BASELINE}):
            s = isolate(load_strategy(spec))  # raises ValueError naming the strategy; checked at start
            strategies[spec] = s
        self.host = StrategyHost(strategies, default=BASELINE, budget_us=decision_budget_us, on_decision=self._observe)
        self._targets: dict[str, Target] = {}
        self._synced = -1
        # this router's place in the mesh (router/meshview.py): network cost from its node, local-only mode
        self.mesh = MeshView()
        self._mesh_applied = (-1, -1)
        self.book = OutcomeBook()
        self.trial: Trial | None = None  # the last decision's, for its request's ticket
        self.booking: Booking | None = None  # the last decision's, for its request's ticket
        self._config_names = set(strategies)
        self._last_good: dict[str, str] = {}  # model -> the strategy that last decided for it
        self._decision_us: dict[str, deque[float]] = {}
        self.loaded_at: dict[str, float] = {}
        self.load_errors: dict[str, str] = {}

    def ensure(self, names: Iterable[str]) -> list[str]:
        """Load strategies a policy newly names (the portal's, at runtime); returns the names that cannot be loaded."""
        wanted = set(names)
        bad: list[str] = []
        for spec in sorted(wanted - set(self.host.strategies)):
            try:
                s = isolate(load_strategy(spec))
            except ValueError as exc:
                bad.append(spec)
                if self.load_errors.get(spec) != str(exc):
                    log.warning("strategy %s refused at load, the previous one is kept: %s", spec, exc)
                self.load_errors[spec] = str(exc)
                continue
            # primed with every target before it is swapped in: its first decision sees the whole index
            for view in self.host.index:
                s.on_upsert(view, None)
            s.refresh(self.host.index)
            self.host.strategies[spec] = s
            self.host.stats.setdefault(spec, StrategyStats())
            self.loaded_at[spec] = time.time()
            self.load_errors.pop(spec, None)
        # Strategies no policy names any more are let go (each one held is updated on every target change), except
        # those some model still decides with while its new strategy cannot be loaded.
        keep = wanted | self._config_names | {BASELINE} | set(self._last_good.values())
        for spec in [n for n in self.host.strategies if n not in keep]:
            del self.host.strategies[spec]
            self.loaded_at.pop(spec, None)
        return bad

    def _observe(self, d: Decision) -> None:
        observe(child(DECISION, d.strategy), d.decision_us / 1e6)
        times = self._decision_us.get(d.strategy)
        if times is None:
            times = self._decision_us[d.strategy] = deque(maxlen=512)
        times.append(d.decision_us)
        if d.fallback:
            STRATEGY_FALLBACKS.labels(d.fallback_reason.rsplit(": ", 1)[0]).inc()
        elif d.overrun:
            STRATEGY_OVERRUNS.labels(d.strategy).inc()

    def _sync(self) -> None:
        view = self.view
        if view.version != self._synced:
            live: dict[str, Target] = {}
            for m in view.models():
                for t in view.all(m):
                    live[t.id] = t
            for tid in list(self._targets):
                if tid not in live:
                    self.host.remove(tid)
                    del self._targets[tid]
            for t in live.values():
                self.host.upsert(to_strategy_view(t))
                self._targets[t.id] = t
            self._synced = view.version
            view.dirty.clear()
            self.host.refresh()
        elif view.dirty:
            for tid in list(view.dirty):
                known = self._targets.get(tid)
                if known is not None:
                    self.host.upsert(to_strategy_view(known))
            view.dirty.clear()
            self.host.refresh()

    def _apply_mesh(self) -> None:
        """Give every strategy with a network term the RTT from this router's node: gossip's table where it has
        one, else the link-class default from the zones of the targets, the members and the router."""
        key = (self.mesh.version, self._synced)
        if key == self._mesh_applied:
            return
        self._mesh_applied = key
        zones = ZoneRtt(zones={t.node: t.zone for t in self._targets.values() if t.node and t.zone})
        rtt = self.mesh.rtt_fn(zones)
        for s in self.host.strategies.values():
            set_rtt = getattr(s, "set_rtt", None)
            if set_rtt is not None:
                set_rtt(rtt)

    def local_only(self, candidates: list[Target]) -> list[Target]:
        """While gossip reports the mesh degraded: the candidates on this router's node, else in its zone, else all
        (nothing local to fall back on)."""
        mesh = self.mesh
        if not mesh.degraded or not mesh.node:
            return candidates
        local = [t for t in candidates if t.node == mesh.node]
        if not local and mesh.zone:
            local = [t for t in candidates if t.zone == mesh.zone]
        return local or candidates

    def reads_prompt(self, policy: RoutingPolicy) -> bool:
        """Whether a strategy that may rank, shadow or learn from this policy's requests reads their prompt (block
        hashes, token count): else the router neither tokenizes nor hashes it. A strategy named but not loaded
        counts as reading it (whatever ranks in its place may)."""
        strategies = self.host.strategies
        for name in (policy.strategy, *policy.ab_split, policy.shadow_strategy):
            if name:
                s = strategies.get(name)
                if s is None or s.reads_prompt:
                    return True
        return False

    def pick_arm(self, policy: RoutingPolicy, key: str) -> str:
        if not policy.ab_split:
            return policy.strategy
        # Hash of the correlation id: a request retried with the same id lands in the same arm.
        total = sum(policy.ab_split.values())
        x = (zlib.crc32(key.encode()) & 0xFFFFFFFF) / 2**32 * total
        acc = 0.0
        for name, w in policy.ab_split.items():
            acc += w
            if x < acc:
                return name
        return next(iter(policy.ab_split))

    def rank(
        self,
        model: str,
        candidates: list[Target],
        policy: RoutingPolicy,
        corr_id: str,
        prompt_chars: int = 0,
        max_tokens: int | None = None,
        prefix: RequestPrefix | None = None,
        usable: Callable[[Target], int] | None = None,
    ) -> tuple[list[Target], str]:
        """Targets best first (all candidates, so retries and hedges have somewhere to go) and the deciding arm;
        `usable`: the targets that can start the request now go first, the higher its value the earlier (a free
        slot before a probe of a learned slot count), each group in the strategy's order (the router holding
        requests at full batches), so the first target, which the strategy books, is the one the request goes to."""
        self._sync()
        self._apply_mesh()
        candidates = self.local_only(candidates)
        name = self.pick_arm(policy, corr_id)
        live = live_strategy(policy)
        if name not in self.host.strategies:
            # named but not loaded (refused at load): the model keeps what decided for it last
            STRATEGY_NOT_LOADED.labels(name).inc()
            name = self._last_good.get(model, BASELINE)
            if name not in self.host.strategies:
                name = BASELINE
        else:
            self._last_good[model] = name
        req = RouteRequest(model=model, prompt_tokens=prompt_chars // 4, max_tokens=max_tokens or 0, request_id=corr_id)
        req.client_node = self.mesh.node  # where the request enters the mesh: the network term's source
        req.lora_load_s = policy.lora_load_s  # what loading the model's adapter costs where it is not resident
        if prefix is not None:
            req.block_hashes, req.session_key = prefix.hashes, prefix.session_key
            req.prompt_tokens = prefix.tokens or req.prompt_tokens
        k = min(len(candidates), policy.retry.max_attempts + 1)
        # Candidates narrowed by the policy (pins, deployed revisions): ask for every target, keep the allowed.
        allowed = {t.id for t in candidates}
        narrowed = len(allowed) < len(self.view.all(model))
        decision = self.host.decide(req, strategy=name, k=len(self.view.all(model)) if narrowed else k)
        ranked: list[Target] = []
        seen: set[str] = set()
        for s in decision.ranked:
            t = self._targets.get(s.target.target_id)
            if t is not None and t.id not in seen and t.id in allowed:
                ranked.append(t)
                seen.add(t.id)
        for t in candidates:
            if t.id not in seen:
                ranked.append(t)
                seen.add(t.id)
        if usable is not None and len(ranked) > 1:
            flags = [(t, int(usable(t))) for t in ranked]
            ranked = [t for t, _ in sorted(flags, key=lambda f: -f[1])]  # stable: the strategy's order in a tier
        if policy.slo_ttft_ms or (policy.hedging.enabled and len(candidates) > 1):  # else nothing reads it
            self._predict(decision, req, policy, model)
        self.booking = Booking(decision, req) if ranked else None
        if ranked:
            # Booked by the strategy asked (its pick or the fallback's, whichever the request goes to), and counted
            # until fresh state arrives, so a burst between two agent updates does not herd onto one target. The
            # booking then follows the request's attempts (`attempt`).
            self._book(self.booking, ranked[0].id)  # type: ignore[arg-type]
        trial = Trial(model, live, name, ranked[0].id if ranked else "")
        if policy.shadow_strategy and policy.shadow_strategy in self.host.strategies:
            shadow = self.host.decide(
                req, strategy=policy.shadow_strategy, k=len(self.view.all(model)) if narrowed else 1
            )
            pick = next((s.target.target_id for s in shadow.ranked if s.target.target_id in allowed), None)
            agree = pick is not None and bool(ranked) and pick == ranked[0].id
            SHADOW.labels(model, decision.strategy, policy.shadow_strategy, "yes" if agree else "no").inc()
            trial.shadow, trial.shadow_pick = policy.shadow_strategy, pick
        self.trial = trial
        return ranked, decision.strategy

    def _predict(self, decision: Decision, req: RouteRequest, policy: RoutingPolicy, model: str) -> None:
        """Predicted TTFT of the ranked targets (the hedge's patience), and SLO admission: a request whose TTFT
        objective no target is predicted to meet is refused with 429 instead of being queued to fail."""
        strategy = self.host.strategies.get(decision.strategy)
        predict = getattr(strategy, "predicted_ttft", None)
        trusted = getattr(strategy, "prediction_trusted", None)
        # a predictor still on its priors decides nothing: no hedge timing, no refusal
        if predict is None or trusted is None or not trusted() or not decision.ranked:
            return
        best: tuple[float, str] | None = None
        for sc in decision.ranked:
            t = self._targets.get(sc.target.target_id)
            if t is None:
                continue
            p = float(predict(sc.target, req))
            t.pred_ttft_s = p
            if best is None or p < best[0]:
                best = (p, t.id)
        slo_ms = policy.slo_ttft_ms
        if slo_ms and best is not None and best[0] * 1000.0 > slo_ms:
            from router.metrics import ADMISSION_REFUSED
            from router.service import Refusal  # the service imports this module

            ADMISSION_REFUSED.labels(model, "", "slo").inc()
            wait = max(1, int(best[0] - slo_ms / 1000.0) + 1)
            raise Refusal(
                429,
                "slo_unmeetable",
                f"model {model!r}: no target is predicted to meet the TTFT objective of {slo_ms:g} ms (best "
                f"{best[0] * 1000:.0f} ms, at {best[1]}); retry after {wait}s",
                retry_after=str(wait),
            )

    def learn(self, corr_id: str, target_id: str, ttft_s: float, e2e_s: float = 0.0, tokens: int = 0) -> None:
        """Teach every strategy that learns from outcomes (hybrid_mesh's latency predictor) what the request it
        ranked took at the target that answered."""
        for s in self.host.strategies.values():
            observe = getattr(s, "observe_outcome", None)
            if observe is not None:
                observe(corr_id, target_id, ttft_s, e2e_s, tokens)

    def explain(
        self, model: str, strategy: str, candidates: list[Target]
    ) -> list[tuple[Target, float, dict[str, float]]]:
        """The strategy's current order of `candidates` with each score's terms, for operators (no side effects on
        metrics or assignment counts)."""
        self._sync()
        s = self.host.strategies.get(strategy) or self.host.strategies[BASELINE]
        req = RouteRequest(model=model, request_id="explain")
        allowed = {t.id for t in candidates}
        try:
            scored = s.rank(self.host.index, req, len(self.view.all(model)) or 1, self.host.rng)
        except Exception:  # a strategy's fault must not break the operators' report; it is logged, not hidden
            log.warning("strategy %s failed to rank %s for the routing report", strategy, model, exc_info=True)
            return []
        out: list[tuple[Target, float, dict[str, float]]] = []
        for sc in scored:
            t = self._targets.get(sc.target.target_id)
            if t is not None and t.id in allowed:
                out.append((t, sc.score, s.explain(sc.target, req)))
        return out

    def _book(self, b: Booking, target_id: str) -> None:
        if self.host.index.get(target_id) is None:
            return  # another cell's ingress, or a target gone meanwhile: nothing of ours to book
        self.host.routed(b.decision, b.request, target_id)
        b.booked.append(target_id)

    def _release(self, b: Booking, target_id: str) -> None:
        b.booked.remove(target_id)
        b.sent.discard(target_id)
        self.host.withdraw(b.decision, b.request, target_id)

    def attempt(self, b: Booking | None, target: Target, sent: bool) -> None:
        """An attempt of `b`'s request was sent to `target` (`sent`), or failed there before its first byte: the
        booking follows where the prompt is prefilled. The first attempt sent releases a decision-time booking it
        did not go to (the target was skipped as an outlier, or another cell serves the request); a retry's or
        hedge's target is booked as it is sent; a failed attempt's target is released. A hedge that loses keeps its
        booking: it was sent and prefilled as far as it got before it was cancelled, and the runtime keeps those
        blocks cached (vLLM and the emulator both cache an aborted request's computed blocks)."""
        if b is None:
            return
        tid = target.id
        if sent:
            if tid not in b.booked:
                self._book(b, tid)
            if not b.sent:
                for other in [x for x in b.booked if x != tid]:
                    self._release(b, other)
            if tid in b.booked:
                b.sent.add(tid)
        elif tid in b.booked:
            self._release(b, tid)

    def settle(self, b: Booking) -> None:
        """`b`'s request finished: it counts in flight nowhere any more; a target booked but never sent the
        request (it never got as far as an attempt) has its booking taken back."""
        for tid in list(b.booked):
            if tid in b.sent:
                self.host.note_finished(tid)
            else:
                self.host.withdraw(b.decision, b.request, tid)
        b.booked.clear()
        b.sent.clear()

    def assigned(self, target_id: str) -> None:
        self.host.note_assigned(target_id)

    def finished(self, target_id: str) -> None:
        self.host.note_finished(target_id)

    def observe(self, model: str, strategy: str, ttft: float) -> None:
        """Per-arm TTFT (the win rates come with the whole outcome: `outcome`)."""
        observe(child(ARM_TTFT, model, strategy), ttft)

    def outcome(self, trial: Trial | None, ok: bool, ttft_s: float | None, latency_s: float, target: str = "") -> None:
        """A finished request of a decision: into the win rates of the model's challengers (and their gauges)."""
        if trial is None:
            return
        for ch in self.book.record(trial, Outcome(ok, ttft_s, latency_s), target):
            for metric, rate in ch.rates.items():
                value = rate.value()
                if value is not None:
                    WIN_RATE.labels(ch.model, ch.strategy, ch.mode, metric).set(value)

    def report(self, models: Iterable[tuple[str, RoutingPolicy]] = ()) -> dict[str, Any]:
        """The strategies held (kind, decisions, fallbacks by reason, decision times) and, per model, the live
        strategy, its arms and shadow, and each challenger's win rates (`infermesh ctl strategies`)."""
        strategies = []
        for name in sorted(set(self.host.strategies) | set(self.load_errors)):
            s = self.host.strategies.get(name)
            st = self.host.stats.get(name)
            times = sorted(self._decision_us.get(name, ()))
            strategies.append(
                {
                    "name": name,
                    "kind": _kind(name, s),
                    "loaded": s is not None,
                    "loaded_at": self.loaded_at.get(name),
                    "error": self.load_errors.get(name, ""),
                    "decisions": st.decisions if st else 0,
                    "fallbacks": dict(st.fallbacks) if st else {},
                    "decision_us_p50": round(times[len(times) // 2], 1) if times else None,
                    "decision_us_p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1) if times else None,
                }
            )
        out_models = []
        for model, policy in models:
            out_models.append(
                {
                    "model": model,
                    "live": live_strategy(policy),
                    "deciding": self._last_good.get(model),
                    "ab_split": dict(policy.ab_split),
                    "shadow_strategy": policy.shadow_strategy or "",
                    "challengers": self.book.describe(model),
                }
            )
        return {"strategies": strategies, "models": out_models}


def live_strategy(policy: RoutingPolicy) -> str:
    """The strategy a policy's challengers are judged against: its `strategy` when it is an A/B arm (or there is no
    split), else its biggest arm."""
    split = policy.ab_split
    if not split or policy.strategy in split:
        return policy.strategy
    return max(split, key=lambda n: split[n])


def _kind(name: str, s: Strategy | None) -> str:
    if name.startswith("wasm:"):
        return "wasm"
    if s is None:
        return "unknown"
    inner = getattr(s, "inner", s)
    return "builtin" if type(inner).__module__.startswith("agents.strategies") else "python"
