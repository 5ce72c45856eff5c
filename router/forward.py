"""Forwarding to runtimes: pooled keep-alive attempts, retry before the first byte, hedging, loser cancellation.

`Forwarder.open` returns the winning upstream response with its first body chunk already read; the caller streams
the rest to the client. Everything that may still be retried happens before that first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from router.cells import for_target
from router.config import OutlierConfig, RoutingPolicy
from router.core.hedging import HedgeBudget, HedgeParams, HedgeWins, LatencyWindow, hedge_delay, predicted_delay
from router.core.outlier import OutlierDetector
from router.core.retry import Outcome, RetryRules
from router.metrics import EJECTIONS, HEDGE_SKIPPED, HEDGES, RETRIES, TTFT, child, observe
from router.upstream import BadResponse, ConnectFailed, Disconnected, Response, UpstreamPool
from router.view import Target

# Headers that describe one hop and must not be copied across the proxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "authorization",
    }
)


class AttemptFailed(Exception):
    def __init__(self, outcome: Outcome, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail
        self.status = status


class ForwardError(Exception):
    """No target produced a usable first byte."""

    def __init__(self, status: int, cause: str, message: str, attempts: int) -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause
        self.message = message
        self.attempts = attempts


@dataclass(slots=True)
class Winner:
    target: Target
    resp: Response
    first: bytes
    ttft: float
    outcome: Outcome
    attempts: int = 1
    hedged: bool = False
    hedge_won: bool = False
    tried: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Attempt:
    target: Target
    hedge: bool
    started: float


def _classify_exc(e: BaseException) -> AttemptFailed:
    if isinstance(e, AttemptFailed):
        return e
    if isinstance(e, ConnectFailed):  # refused, unreachable, or (https) a certificate refused by either side
        return AttemptFailed(Outcome.CONNECT_ERROR, str(e))
    if isinstance(e, TimeoutError):
        return AttemptFailed(Outcome.TIMEOUT, "timed out")
    if isinstance(e, Disconnected | ConnectionError | OSError):
        return AttemptFailed(Outcome.RESET, f"connection reset: {e}")
    if isinstance(e, BadResponse):
        return AttemptFailed(Outcome.BROKEN, str(e))
    return AttemptFailed(Outcome.BROKEN, f"{type(e).__name__}: {e}")


class Forwarder:
    def __init__(self, pool: UpstreamPool, outlier: OutlierConfig) -> None:
        self.pool = pool
        self.outlier = OutlierDetector(
            outlier.consecutive_failures, outlier.base_ejection_s, outlier.max_ejection_s, outlier.max_ejected_fraction
        )
        self._budgets: dict[str, HedgeBudget] = {}
        self.hedge_wins: dict[str, HedgeWins] = {}  # model -> whether hedges from each target ever win
        self._model_ttft: dict[str, LatencyWindow] = {}
        # TTFT per (model, hardware kind): a straggler is slow against its own kind, not against faster GPUs
        self._kind_ttft: dict[tuple[str, str], LatencyWindow] = {}
        self._kind_targets: dict[tuple[str, str], set[str]] = {}
        self.on_slot_free: Callable[[str], None] = lambda model: None
        self._params: dict[int, HedgeParams] = {}
        self._rules: dict[int, RetryRules] = {}

    def policies_changed(self) -> None:
        """Forget what was derived per policy object: policies replaced at runtime (the portal's) are new objects,
        and a freed one's id may be reused."""
        self._params.clear()
        self._rules.clear()

    def budget(self, model: str, policy: RoutingPolicy) -> HedgeBudget:
        b = self._budgets.get(model)
        if b is None:
            b = HedgeBudget(policy.hedging.budget_ratio, policy.hedging.budget_burst)
            self._budgets[model] = b
        return b

    def _hedge_params(self, policy: RoutingPolicy) -> HedgeParams:
        p = self._params.get(id(policy))
        if p is None:
            h = policy.hedging
            p = HedgeParams(
                quantile=h.quantile,
                multiplier=h.multiplier,
                min_delay_s=h.min_delay_ms / 1000,
                max_delay_s=h.max_delay_ms / 1000,
                default_delay_s=h.default_delay_ms / 1000,
            )
            self._params[id(policy)] = p
        return p

    def is_slow(self, target: Target, model: str, factor: float = 2.5, floor_s: float = 0.05) -> bool:
        """A target whose recent median TTFT is `factor` x its hardware kind's (and above `floor_s`): a straggler.

        In a mixed fleet an L40S or a MIG slice is slower than an H100 by design; judged against the model's median
        it would be idled while requests wait at the router. So a target of a known GPU family is compared with the
        other targets of its family and slice; the only one of its kind is never called a straggler here (its
        speed is the strategy's and the hedges' business). Targets of unknown kind are compared with the model."""
        if len(target.ttft) < 8:
            return False
        kind = _kind(target)
        if kind:
            if len(self._kind_targets.get((model, kind), ())) < 2:
                return False
            mw = self._kind_ttft.get((model, kind))
        else:
            mw = self._model_ttft.get(model)
        if mw is None or len(mw) < 32:
            return False
        mine, overall = target.ttft.quantile(0.5), mw.quantile(0.5)
        return mine is not None and overall is not None and mine > floor_s and mine > factor * overall

    def rules(self, policy: RoutingPolicy) -> RetryRules:
        r = self._rules.get(id(policy))
        if r is None:
            r = RetryRules(policy.retry.max_attempts, frozenset(policy.retry.on_status))
            self._rules[id(policy)] = r
        return r

    def healthy_order(self, ranked: list[Target]) -> list[Target]:
        now = time.monotonic()
        ids = self.outlier.filter([t.id for t in ranked], now)
        keep = set(ids)
        return [t for t in ranked if t.id in keep]

    async def _attempt(
        self,
        target: Target,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        first_byte_timeout: float,
        rules: RetryRules,
    ) -> tuple[Response, bytes, Outcome]:
        resp: Response | None = None
        try:
            deadline = asyncio.get_running_loop().time() + first_byte_timeout
            resp = await self.pool.post(target.url, path, body, for_target(target, headers), deadline)
            outcome = rules.classify_status(resp.status)
            if outcome is Outcome.BAD_STATUS:
                raise AttemptFailed(outcome, f"runtime answered {resp.status}", resp.status)
            first = await resp.readany()
            resp.disarm()
            return resp, first, outcome
        except BaseException as e:
            if resp is not None:
                # close(), not release(): the runtime must see the connection drop to abort the request.
                resp.close()
            if isinstance(e, asyncio.CancelledError):
                raise
            raise _classify_exc(e) from None

    async def open(
        self,
        ranked: list[Target],
        path: str,
        body_for: Callable[[Target], bytes],
        headers: Mapping[str, str],
        policy: RoutingPolicy,
        model: str,
        hedge_ok: bool,
        first_byte_timeout: float | None = None,
        on_attempt: Callable[[Target, bool], None] | None = None,
    ) -> Winner:
        """Try targets in rank order; hedge to the next one after a delay; return the first with a first byte.
        `on_attempt(target, True)` as an attempt is sent, `(target, False)` when it fails before its first byte."""
        rules = self.rules(policy)
        order = self.healthy_order(ranked)
        if not order:
            raise ForwardError(503, "no_healthy_target", f"no healthy target for model {model!r}", 0)
        budget = self.budget(model, policy)
        budget.on_request()
        hedging = hedge_ok and policy.hedging.enabled and len(order) > 1
        start = time.monotonic()
        fbt = policy.first_byte_timeout_s if first_byte_timeout is None else first_byte_timeout
        deadline = start + fbt
        if not hedging:
            return await self._sequential(order, path, body_for, headers, fbt, model, rules, deadline, on_attempt)
        tasks: dict[asyncio.Task[tuple[Response, bytes, Outcome]], _Attempt] = {}
        next_idx = 0
        attempts = 0
        failures: list[AttemptFailed] = []
        tried: list[str] = []
        hedged = False

        def launch(hedge: bool) -> None:
            nonlocal next_idx, attempts
            t = order[next_idx]
            next_idx += 1
            attempts += 1
            tried.append(t.id)
            t.inflight += 1
            if on_attempt is not None:
                on_attempt(t, True)
            remaining = max(0.001, deadline - time.monotonic())
            task = asyncio.ensure_future(self._attempt(t, path, body_for(t), headers, remaining, rules))
            tasks[task] = _Attempt(t, hedge, time.monotonic())

        launch(False)
        # The earlier of the primary's own TTFT quantile and the model's: a target that has become slow (a throttled
        # GPU) must not get a patience stretched by its own slowness.
        params = self._hedge_params(policy)
        delay = hedge_delay(order[0].ttft, params)
        model_window = self._model_ttft.get(model)
        if model_window is not None and len(model_window) >= params.min_samples:
            delay = min(delay, hedge_delay(model_window, params))
        if order[0].pred_ttft_s > 0:  # the strategy predicted this target's TTFT: hedge when it is overrun
            delay = min(delay, predicted_delay(order[0].pred_ttft_s, policy.hedging.predicted_factor, params))
        wins = self.hedge_wins.get(model)
        if wins is None:
            wins = self.hedge_wins[model] = HedgeWins(policy.hedging.min_win_rate)
        primary = order[0]
        hedge_at: float | None = start + delay
        try:
            while True:
                now = time.monotonic()
                wake = deadline
                if hedge_at is not None:
                    wake = min(wake, hedge_at)
                done: set[asyncio.Task[tuple[Response, bytes, Outcome]]] = set()
                if tasks:
                    done, _ = await asyncio.wait(
                        tasks.keys(), timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED
                    )
                now = time.monotonic()
                if not done:
                    if hedge_at is not None and now >= hedge_at:
                        hedge_at = None
                        if next_idx < len(order) and not hedged:
                            # A copy only helps on a target that would start it sooner than the primary: one
                            # queued as deep or deeper would add load and win nothing.
                            pick = _hedge_pick(order, next_idx)
                            if pick is not None and not wins.worth(primary.id):
                                pick = None  # hedges from this target never win: they would only add load
                            if pick is not None and budget.try_spend():
                                order[next_idx], order[pick] = order[pick], order[next_idx]
                                hedged = True
                                HEDGES.labels(model, "fired").inc()
                                launch(True)
                            else:
                                HEDGE_SKIPPED.labels(model).inc()
                        continue
                    if now >= deadline:
                        raise ForwardError(
                            504,
                            "first_byte_timeout",
                            f"no first byte within {fbt:g}s",
                            attempts,
                        )
                    if not tasks:
                        break
                    continue
                winner: Winner | None = None
                for task in done:
                    att = tasks.pop(task)
                    att.target.inflight -= 1
                    exc = task.exception()
                    if exc is None:
                        resp, first, outcome = task.result()
                        if winner is None:
                            ttft = now - att.started
                            winner = Winner(att.target, resp, first, ttft, outcome, hedged=hedged, hedge_won=att.hedge)
                            att.target.inflight += 1  # the caller holds it until the stream ends
                        else:
                            resp.close()
                            self.on_slot_free(model)
                        continue
                    self.on_slot_free(model)
                    fail = _classify_exc(exc)
                    failures.append(fail)
                    if on_attempt is not None:
                        on_attempt(att.target, False)
                    self._failure(att.target, model, now)
                    if rules.retryable(fail.outcome, attempts, False) and next_idx < len(order):
                        RETRIES.labels(model, fail.outcome.value).inc()
                        launch(False)
                if winner is not None:
                    winner.attempts = attempts
                    winner.tried = tried
                    self._won(winner, model)
                    if hedged:
                        HEDGES.labels(model, "won" if winner.hedge_won else "wasted").inc()
                        wins.record(primary.id, winner.hedge_won)
                    return winner
                if not tasks:
                    if next_idx < len(order) and attempts < rules.max_attempts:
                        launch(False)
                        continue
                    break
        finally:
            # Losers and leftovers: cancel at once so the runtime sees the abort and frees its slot.
            for task, att in tasks.items():
                task.cancel()
                att.target.inflight -= 1
                self.on_slot_free(model)
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
        raise self._exhausted(failures[-1] if failures else None, attempts)

    async def _sequential(
        self,
        order: list[Target],
        path: str,
        body_for: Callable[[Target], bytes],
        headers: Mapping[str, str],
        fbt: float,
        model: str,
        rules: RetryRules,
        deadline: float,
        on_attempt: Callable[[Target, bool], None] | None = None,
    ) -> Winner:
        """No hedging: one attempt at a time, awaited directly (no task per attempt on the common path)."""
        tried: list[str] = []
        last: AttemptFailed | None = None
        for idx, t in enumerate(order):
            if idx >= rules.max_attempts:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ForwardError(504, "first_byte_timeout", f"no first byte within {fbt:g}s", len(tried))
            tried.append(t.id)
            t.inflight += 1
            if on_attempt is not None:
                on_attempt(t, True)
            started = time.monotonic()
            try:
                resp, first, outcome = await self._attempt(t, path, body_for(t), headers, remaining, rules)
            except AttemptFailed as fail:
                t.inflight -= 1
                self.on_slot_free(model)
                if on_attempt is not None:
                    on_attempt(t, False)
                last = fail
                now = time.monotonic()
                self._failure(t, model, now)
                if fail.outcome is Outcome.TIMEOUT and now >= deadline - 0.005:
                    raise ForwardError(
                        504, "first_byte_timeout", f"no first byte within {fbt:g}s", len(tried)
                    ) from None
                if rules.retryable(fail.outcome, len(tried), False) and idx + 1 < len(order):
                    RETRIES.labels(model, fail.outcome.value).inc()
                    continue
                break
            except BaseException:
                t.inflight -= 1
                self.on_slot_free(model)
                raise
            w = Winner(t, resp, first, time.monotonic() - started, outcome, attempts=len(tried), tried=tried)
            self._won(w, model)
            return w
        raise self._exhausted(last, len(tried))

    def _won(self, w: Winner, model: str) -> None:
        if w.outcome is not Outcome.SERVER_ERROR:
            self.outlier.on_success(w.target.id)
            w.target.ttft.add(w.ttft)
            mw = self._model_ttft.get(model)
            if mw is None:
                mw = self._model_ttft[model] = LatencyWindow(512)
            mw.add(w.ttft)
            kind = _kind(w.target)
            if kind:
                kw = self._kind_ttft.get((model, kind))
                if kw is None:
                    kw = self._kind_ttft[(model, kind)] = LatencyWindow(512)
                kw.add(w.ttft)
                self._kind_targets.setdefault((model, kind), set()).add(w.target.id)
            observe(child(TTFT, *w.target.labels), w.ttft)
        else:
            self._failure(w.target, model, time.monotonic())

    @staticmethod
    def _exhausted(last: AttemptFailed | None, attempts: int) -> ForwardError:
        last = last or AttemptFailed(Outcome.CONNECT_ERROR, "no attempt made")
        status = 502
        if last.outcome is Outcome.TIMEOUT:
            status = 504
        elif last.outcome is Outcome.BAD_STATUS and last.status == 503:
            status = 503
        return ForwardError(
            status, last.outcome.value, f"all {attempts} attempt(s) failed; last: {last.detail}", attempts
        )

    def _failure(self, target: Target, model: str, now: float) -> None:
        if self.outlier.on_failure(target.id, now):
            EJECTIONS.labels(model, target.runtime, target.node).inc()


def _hedge_pick(order: list[Target], start: int) -> int | None:
    """Where a hedge goes: among the later-ranked targets that would start it sooner than the primary (one queued
    as deep or deeper adds load and wins nothing), the first on another node, else on another GPU (a throttled
    device slows everything on it), else the first at all."""
    primary = order[0]
    limit = max(1.0, primary.est_waiting())
    usable = [j for j in range(start, len(order)) if order[j].est_waiting() < limit]
    for other in (
        lambda t: bool(t.node) and t.node != primary.node,
        lambda t: (t.gpu_uuid, t.mig_profile) != (primary.gpu_uuid, primary.mig_profile),
    ):
        j = next((j for j in usable if other(order[j])), None)
        if j is not None:
            return j
    return usable[0] if usable else None


def _kind(target: Target) -> str:
    """The target's hardware kind: GPU family and MIG slice ("" when the family is unknown, as for static targets)."""
    return f"{target.gpu_type}/{target.mig_profile}" if target.gpu_type else ""
