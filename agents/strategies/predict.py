"""Predicted latency: an online model, per target, of time to first token (TTFT) and inter-token latency (ITL).

TTFT is modelled as linear in what stands between a new request and its first token on that target:

    ttft = t0 + t1 * prefill_k + t2 * decode_k + t3 * slot_wait_s

- `prefill_k`: prefill tokens ahead of the request's first token, its own prompt included, in thousands: the
  runtime's waiting requests x the mean prompt this router sees, plus the prompt tokens this router assigned there
  since the runtime's state was last published (signals lag; these are what herding is made of);
- `decode_k`: sequences decoding there (running + assigned since the last state), in sixteens: chunked prefill
  shares each step with them;
- `slot_wait_s`: when the batch is full, the time for enough slots to free, from the target's own (shrunk) service
  time per request and its batch size.

ITL is `i0 + i1 * decode_k`. Both are fitted by recursive least squares with exponential forgetting (a changed curve,
say a throttled GPU, is forgotten within a few dozen outcomes), from the outcomes the router reports (`observe`).
A target without outcomes borrows the fleet's fit, its prefill slope scaled by its MIG slice; a target's own fit
starts from the fleet's, so heterogeneous GPUs and slices get their own rates as soon as they answer.

Sans-IO: no clocks, no I/O; the router, the simulator and the tests feed it the same way.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from dataclasses import dataclass

from agents.strategies.base import RouteRequest, TargetView

# TTFT features: [1, prefill_k, decode_k, slot_wait_s]; ITL features: [1, decode_k]
TTFT_DIM = 4
ITL_DIM = 2


class Rls:
    """Recursive least squares with forgetting factor `lam` (1.0 = never forget) and a bounded covariance, so that a
    feature that stops varying cannot wind the gain up (the usual failure of forgetting RLS)."""

    __slots__ = ("cov", "lam", "max_trace", "n", "theta")

    def __init__(self, theta: list[float], p0: float, lam: float, max_trace: float = 1e4) -> None:
        d = len(theta)
        self.theta = list(theta)
        self.cov = [[p0 if i == j else 0.0 for j in range(d)] for i in range(d)]
        self.lam = lam
        self.max_trace = max_trace
        self.n = 0

    def copy(self, p0: float, lam: float) -> Rls:
        return Rls(self.theta, p0, lam, self.max_trace)

    def predict(self, x: tuple[float, ...]) -> float:
        return sum([t * v for t, v in zip(self.theta, x, strict=True)])

    def update(self, x: tuple[float, ...], y: float) -> None:
        d = len(x)
        if d == 4:
            self._update4(x, y)
            return
        if d == 2:
            self._update2(x, y)
            return
        # list comprehensions over zipped rows: the same products summed in the same order as the textbook loops
        p = self.cov
        px = [sum([a * b for a, b in zip(row, x, strict=True)]) for row in p]
        denom = self.lam + sum([a * b for a, b in zip(x, px, strict=True)])
        if denom <= 0.0:
            return
        err = y - self.predict(x)
        gain = [v / denom for v in px]
        theta = self.theta
        for i in range(d):
            theta[i] += gain[i] * err
        inv = 1.0 / self.lam
        for i in range(d):
            gi = gain[i]
            p[i] = [(r - gi * q) * inv for r, q in zip(p[i], px, strict=True)]
        self._bound(d)

    # The TTFT (4 features) and ITL (2) fits, unrolled: one per finished request, on the router's hot path. The
    # products are summed left to right as `sum` does, so the figures are the general update's to the last bit.
    def _update4(self, x: tuple[float, ...], y: float) -> None:
        x0, x1, x2, x3 = x
        p = self.cov
        r0, r1, r2, r3 = p
        q0 = r0[0] * x0 + r0[1] * x1 + r0[2] * x2 + r0[3] * x3
        q1 = r1[0] * x0 + r1[1] * x1 + r1[2] * x2 + r1[3] * x3
        q2 = r2[0] * x0 + r2[1] * x1 + r2[2] * x2 + r2[3] * x3
        q3 = r3[0] * x0 + r3[1] * x1 + r3[2] * x2 + r3[3] * x3
        denom = self.lam + (x0 * q0 + x1 * q1 + x2 * q2 + x3 * q3)
        if denom <= 0.0:
            return
        th = self.theta
        err = y - (th[0] * x0 + th[1] * x1 + th[2] * x2 + th[3] * x3)
        g0, g1, g2, g3 = q0 / denom, q1 / denom, q2 / denom, q3 / denom
        th[0] += g0 * err
        th[1] += g1 * err
        th[2] += g2 * err
        th[3] += g3 * err
        inv = 1.0 / self.lam
        p[0] = [(r0[0] - g0 * q0) * inv, (r0[1] - g0 * q1) * inv, (r0[2] - g0 * q2) * inv, (r0[3] - g0 * q3) * inv]
        p[1] = [(r1[0] - g1 * q0) * inv, (r1[1] - g1 * q1) * inv, (r1[2] - g1 * q2) * inv, (r1[3] - g1 * q3) * inv]
        p[2] = [(r2[0] - g2 * q0) * inv, (r2[1] - g2 * q1) * inv, (r2[2] - g2 * q2) * inv, (r2[3] - g2 * q3) * inv]
        p[3] = [(r3[0] - g3 * q0) * inv, (r3[1] - g3 * q1) * inv, (r3[2] - g3 * q2) * inv, (r3[3] - g3 * q3) * inv]
        if p[0][0] + p[1][1] + p[2][2] + p[3][3] > self.max_trace:
            self._bound(4)
        else:
            self.n += 1

    def _update2(self, x: tuple[float, ...], y: float) -> None:
        x0, x1 = x
        p = self.cov
        r0, r1 = p
        q0 = r0[0] * x0 + r0[1] * x1
        q1 = r1[0] * x0 + r1[1] * x1
        denom = self.lam + (x0 * q0 + x1 * q1)
        if denom <= 0.0:
            return
        th = self.theta
        err = y - (th[0] * x0 + th[1] * x1)
        g0, g1 = q0 / denom, q1 / denom
        th[0] += g0 * err
        th[1] += g1 * err
        inv = 1.0 / self.lam
        p[0] = [(r0[0] - g0 * q0) * inv, (r0[1] - g0 * q1) * inv]
        p[1] = [(r1[0] - g1 * q0) * inv, (r1[1] - g1 * q1) * inv]
        if p[0][0] + p[1][1] > self.max_trace:
            self._bound(2)
        else:
            self.n += 1

    def _bound(self, d: int) -> None:
        """Scale the covariance back to `max_trace` where it has grown past it; one more outcome learned."""
        p = self.cov
        trace = sum([p[i][i] for i in range(d)])
        if trace > self.max_trace:
            s = self.max_trace / trace
            for row in p:
                for j in range(d):
                    row[j] *= s
        self.n += 1


@dataclass(slots=True)
class PredictorParams:
    """Priors and learning rates. The priors are an H100-class runtime; outcomes replace them within a few dozen."""

    fixed_ttft_s: float = 0.03  # t0 prior
    prefill_tok_s: float = 12_000.0  # t1 prior = 1000 / this (whole GPU; a MIG slice divides it by its share)
    decode_interference_s: float = 0.01  # t2 prior: per 16 sequences decoding
    itl_s: float = 0.02  # i0 prior
    itl_per_16_s: float = 0.005  # i1 prior
    service_prior_s: float = 2.0  # time a request holds a batch slot before any outcome
    service_prior_n: float = 8.0  # outcomes the fleet's service time weighs against a target's own
    default_concurrency: int = 8
    default_completion_tokens: int = 256
    default_prompt_tokens: int = 512
    lam_target: float = 0.97  # forgetting per outcome at a target (memory ~ 1 / (1 - lam) outcomes)
    lam_fleet: float = 0.995
    p0_target: float = 1.0
    p0_fleet: float = 10.0
    ewma_alpha: float = 0.1
    min_ttft_s: float = 0.001
    pending_cap: int = 8192  # decisions remembered for learning (oldest dropped)


@dataclass(slots=True)
class _Target:
    ttft: Rls | None = None
    itl: Rls | None = None
    service_s: float = 0.0  # EWMA of the time a request held a slot (TTFT + decode)
    outcomes: int = 0
    pending_n: int = 0  # assigned by this router since the target's state last changed
    pending_tokens: float = 0.0
    seen_inflight: int = 0
    version: int = -1


_MIG_RE = re.compile(r"^(\d+)g\.(\d+)gb$")


@functools.lru_cache(maxsize=256)  # called per target state on the hot path; the profile names are few
def mig_fraction(profile: str) -> float:
    """Share of a full GPU a MIG profile gets (compute slices out of 7); 1.0 for a whole GPU or an unknown name."""
    m = _MIG_RE.match(profile.split("+")[0]) if profile else None
    return min(int(m.group(1)) / 7.0, 1.0) if m else 1.0


class LatencyPredictor:
    """Per-target TTFT/ITL models, this router's assignments since the last published state, and the decisions
    awaiting their outcome."""

    def __init__(self, params: PredictorParams | None = None) -> None:
        p = self.params = params or PredictorParams()
        self.fleet_ttft = Rls(
            [p.fixed_ttft_s, 1000.0 / p.prefill_tok_s, p.decode_interference_s, 1.0], p.p0_fleet, p.lam_fleet
        )
        self.fleet_itl = Rls([p.itl_s, p.itl_per_16_s], p.p0_fleet, p.lam_fleet)
        self.fleet_service_s = 0.0
        self.fleet_outcomes = 0
        self.mean_prompt = float(p.default_prompt_tokens)
        self.targets: dict[str, _Target] = {}
        self._decided: OrderedDict[tuple[str, str], tuple[tuple[float, ...], tuple[float, ...]]] = OrderedDict()
        self._last: tuple[str, float] = ("", 0.0)  # (target, prompt tokens) of the last decision's first choice

    # -- what this router sent -------------------------------------------------------------------------------------
    def _state(self, tid: str) -> _Target:
        st = self.targets.get(tid)
        if st is None:
            st = self.targets[tid] = _Target()
        return st

    def on_view(self, view: TargetView, same_object: bool) -> None:
        """Called on every index update. A changed version is fresh state that already counts what was sent before
        it; the host's in-flight count moving on the same state is one assignment (or completion) of this router."""
        st = self._state(view.target_id)
        if not same_object and view.version != st.version:
            st.version = view.version
            st.pending_n = view.inflight
            st.pending_tokens = view.inflight * self.mean_prompt
            st.seen_inflight = view.inflight
            return
        delta = view.inflight - st.seen_inflight
        st.seen_inflight = view.inflight
        if delta > 0:
            tid, tokens = self._last
            each = tokens if tid == view.target_id and tokens > 0 else self.mean_prompt
            self._last = ("", 0.0)
            st.pending_n += delta
            st.pending_tokens += each + (delta - 1) * self.mean_prompt
        elif delta < 0 and st.pending_n > 0:
            drop = min(-delta, st.pending_n)
            st.pending_tokens -= st.pending_tokens * drop / st.pending_n
            st.pending_n -= drop

    def forget(self, target_id: str) -> None:
        self.targets.pop(target_id, None)

    def note_choice(self, target_id: str, request: RouteRequest, prefill: float | None = None) -> None:
        """The first choice of a decision: its prompt (`prefill`: the part the target does not hold cached) is what
        the next in-flight increment there carries."""
        prompt = float(request.prompt_tokens or self.params.default_prompt_tokens) if prefill is None else prefill
        self._last = (target_id, prompt)
        self.mean_prompt += 0.02 * (prompt - self.mean_prompt)

    # -- prediction --------------------------------------------------------------------------------------------------
    def service_s(self, view: TargetView) -> float:
        """Time a request holds a slot at the target: its own EWMA shrunk towards the fleet's (a target with few
        outcomes is not trusted to be fast by luck)."""
        return self._service_s(view, self.targets.get(view.target_id))

    def _service_s(self, view: TargetView, st: _Target | None) -> float:
        p = self.params
        fleet = self.fleet_service_s or p.service_prior_s
        fleet /= mig_fraction(view.mig_profile) if not self.fleet_outcomes else 1.0
        if st is None or st.outcomes == 0:
            return fleet
        n = min(st.outcomes, 1000)
        return (n * st.service_s + p.service_prior_n * fleet) / (n + p.service_prior_n)

    def features(self, view: TargetView, prompt_tokens: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self._features(view, prompt_tokens, self.targets.get(view.target_id))

    def _features(
        self, view: TargetView, prompt_tokens: float, st: _Target | None
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # `st` is the target's state, looked up once by the caller (this runs on every published state)
        p = self.params
        pend_n = st.pending_n if st is not None else 0
        pend_tok = st.pending_tokens if st is not None else 0.0
        waiting = view.requests_waiting or 0.0
        running = view.requests_running or 0.0
        cap = float(view.max_concurrency or p.default_concurrency)
        occupied = waiting + running + pend_n
        free = max(0.0, cap - running)
        decode = running + min(float(pend_n), free)
        prefill = waiting * self.mean_prompt + pend_tok + prompt_tokens
        over = occupied + 1.0 - cap
        slot_wait = over / cap * self._service_s(view, st) if over > 0 else 0.0
        return (1.0, prefill / 1000.0, decode / 16.0, slot_wait), (1.0, decode / 16.0)

    def _models(self, view: TargetView, st: _Target | None = None) -> tuple[Rls, Rls, float]:
        if st is None:
            st = self.targets.get(view.target_id)
        if st is not None and st.ttft is not None and st.itl is not None:
            return st.ttft, st.itl, 1.0
        return self.fleet_ttft, self.fleet_itl, mig_fraction(view.mig_profile)

    def predict_ttft(self, view: TargetView, prompt_tokens: float) -> float:
        x, _ = self.features(view, prompt_tokens)
        return self._ttft_from(view, x)

    def _ttft_from(self, view: TargetView, x: tuple[float, ...]) -> float:
        model, _, share = self._models(view)
        th = model.theta
        # slopes below zero are noise of the fit, never a target that gets faster as it fills
        y = th[0] + max(th[1], 0.0) / share * x[1] + max(th[2], 0.0) * x[2] + max(th[3], 0.0) * x[3]
        return max(y, self.params.min_ttft_s)

    def predict_base(self, view: TargetView) -> tuple[float, float]:
        """(TTFT of an empty prompt, ITL) at the target now: the request-independent part of a score."""
        ttft, itl, _ = self.predict_base_prefill(view)
        return ttft, itl

    def predict_base_prefill(self, view: TargetView) -> tuple[float, float, float]:
        """`predict_base` and `prefill_s(view, 1000.0)` with one look-up of the target (every state update needs
        both)."""
        st = self.targets.get(view.target_id)
        x, xi = self._features(view, 0.0, st)
        ttft_model, itl_model, share = self._models(view, st)
        t0, t1, t2, t3 = ttft_model.theta
        i0, i1 = itl_model.theta
        # max(a, b) spelt `b if a < b else a` (the same value, NaN and -0.0 included): this runs on every state update
        ttft = t0 + (0.0 if t1 < 0.0 else t1) / share * x[1] + (0.0 if t2 < 0.0 else t2) * x[2]
        ttft += (0.0 if t3 < 0.0 else t3) * x[3]
        itl = (i0 + (0.0 if i1 < 0.0 else i1) * xi[1]) / share
        lo = self.params.min_ttft_s
        # prefill_s's expression for 1,000 tokens, operation for operation
        return (
            (lo if lo > ttft else ttft),
            (1e-4 if itl < 1e-4 else itl),
            (0.0 if t1 < 0.0 else t1) / share * 1000.0 / 1000.0,
        )

    def predict_itl(self, view: TargetView) -> float:
        _, xi = self.features(view, 0.0)
        _, model, share = self._models(view)
        th = model.theta
        return max((th[0] + max(th[1], 0.0) * xi[1]) / share, 1e-4)

    def prefill_s(self, view: TargetView, prompt_tokens: float) -> float:
        """The request's own prefill at the target (its part of the TTFT that depends on the prompt)."""
        model, _, share = self._models(view)
        return max(model.theta[1], 0.0) / share * prompt_tokens / 1000.0

    # -- learning ----------------------------------------------------------------------------------------------------
    def remember(self, request_id: str, view: TargetView, prompt_tokens: float) -> None:
        """Keep a candidate's features until its outcome arrives (bounded: the oldest are dropped)."""
        if not request_id:
            return
        key = (request_id, view.target_id)
        d = self._decided
        d[key] = self.features(view, prompt_tokens)
        if len(d) > self.params.pending_cap:
            d.popitem(last=False)

    def observe(
        self, request_id: str, target_id: str, ttft_s: float, e2e_s: float = 0.0, completion_tokens: int = 0
    ) -> bool:
        """An outcome: the TTFT (and, where known, end-to-end time and tokens) of a request sent to `target_id`.
        Returns whether it was learned from (its decision's features were still remembered)."""
        feats = self._decided.pop((request_id, target_id), None)
        if feats is None or ttft_s <= 0:
            return False
        p = self.params
        x, xi = feats
        st = self._state(target_id)
        if st.ttft is None or st.itl is None:
            st.ttft = self.fleet_ttft.copy(p.p0_target, p.lam_target)
            st.itl = self.fleet_itl.copy(p.p0_target, p.lam_target)
        st.ttft.update(x, ttft_s)
        self.fleet_ttft.update(x, ttft_s)
        if e2e_s > ttft_s and completion_tokens > 1:
            itl = (e2e_s - ttft_s) / (completion_tokens - 1)
            st.itl.update(xi, itl)
            self.fleet_itl.update(xi, itl)
        held = e2e_s if e2e_s > 0 else ttft_s
        a = p.ewma_alpha
        st.service_s = held if st.outcomes == 0 else st.service_s + a * (held - st.service_s)
        st.outcomes += 1
        self.fleet_service_s = (
            held if self.fleet_outcomes == 0 else self.fleet_service_s + 0.02 * (held - self.fleet_service_s)
        )
        self.fleet_outcomes += 1
        return True
