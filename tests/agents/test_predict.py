"""The predicted-latency model (agents/strategies/predict.py) and what hybrid_mesh, the router's SLO admission and its
hedging do with it: a known service curve is learned from outcomes and a changed one forgotten, decisions between two
state updates do not herd onto one nearly-full target, a request no target can serve within its TTFT objective is
refused with 429, and hedges go where they pay."""

from __future__ import annotations

import random

import pytest

from agents.strategies.base import RouteRequest, TargetView
from agents.strategies.builtins import HybridMesh
from agents.strategies.host import StrategyHost
from agents.strategies.predict import LatencyPredictor, Rls
from router.config import RoutingPolicy, StaticTarget
from router.core.hedging import HedgeParams, HedgeWins, predicted_delay
from router.forward import _hedge_pick
from router.ranking import Ranker
from router.service import Refusal
from router.view import Target
from router.view import TargetView as RouterView


def view(tid: str, **kw: object) -> TargetView:
    base: dict[str, object] = {"model": "m", "node": "n1", "endpoint": f"http://{tid}", "max_concurrency": 8}
    base.update(kw)
    return TargetView(target_id=tid, **base)  # type: ignore[arg-type]


def curve(waiting: float, running: float, prompt: float, fixed: float, per_k: float) -> float:
    """A runtime's TTFT: fixed cost + every prompt token ahead (queued prompts of 512 tokens, then its own) at a rate,
    plus 5 ms per sequence decoding beside the prefill."""
    return fixed + per_k * (waiting * 512 + prompt) / 1000 + 0.005 * running


def teach(pred: LatencyPredictor, tid: str, n: int, fixed: float, per_k: float, rng: random.Random, start: int = 0):
    for i in range(start, start + n):
        v = view(tid, requests_waiting=float(rng.randrange(0, 6)), requests_running=float(rng.randrange(0, 8)))
        prompt = float(rng.randrange(100, 4000))
        pred.remember(f"r{i}", v, prompt)
        y = curve(v.requests_waiting or 0, v.requests_running or 0, prompt, fixed, per_k)
        assert pred.observe(f"r{i}", tid, y * rng.uniform(0.97, 1.03))


def test_rls_fits_a_line_and_its_forgetting_tracks_a_new_one() -> None:
    rls = Rls([0.0, 0.0], p0=10.0, lam=0.95)
    for i in range(200):
        x = (1.0, i % 10)
        rls.update(x, 1.0 + 2.0 * x[1])
    assert rls.theta == pytest.approx([1.0, 2.0], abs=1e-3)
    for i in range(200):
        x = (1.0, i % 10)
        rls.update(x, 3.0 + 0.5 * x[1])
    assert rls.theta == pytest.approx([3.0, 0.5], abs=1e-3)


def test_predictor_learns_a_known_curve_and_forgets_a_changed_one() -> None:
    pred = LatencyPredictor()
    rng = random.Random(7)
    probe = view("t", requests_waiting=3.0, requests_running=5.0)
    # the prior is an H100-class guess; a runtime 4x slower at prefill is learned from its outcomes
    teach(pred, "t", 300, fixed=0.05, per_k=0.3, rng=rng)
    want = curve(3, 5, 2000, 0.05, 0.3)
    assert pred.predict_ttft(probe, 2000) == pytest.approx(want, rel=0.05)
    # its GPU throttles: 3x the prefill time. Within a few dozen outcomes the old curve is forgotten.
    teach(pred, "t", 150, fixed=0.05, per_k=0.9, rng=rng, start=1000)
    want = curve(3, 5, 2000, 0.05, 0.9)
    assert pred.predict_ttft(probe, 2000) == pytest.approx(want, rel=0.08)
    # an outcome whose decision was never remembered teaches nothing
    assert not pred.observe("unknown", "t", 1.0)


def test_a_target_without_outcomes_borrows_the_fleet_fit_and_a_mig_slice_prefills_slower() -> None:
    pred = LatencyPredictor()
    teach(pred, "a", 200, fixed=0.05, per_k=0.2, rng=random.Random(1))
    whole, slice_ = view("new"), view("slice", mig_profile="1g.10gb")
    fleet = pred.predict_ttft(whole, 3000)
    assert fleet == pytest.approx(curve(0, 0, 3000, 0.05, 0.2), rel=0.1)
    assert pred.prefill_s(slice_, 3000) == pytest.approx(7 * pred.prefill_s(whole, 3000))


def test_two_decisions_in_one_scrape_interval_do_not_both_pick_the_nearly_full_target() -> None:
    # "near" is on the router's node with one batch slot free; "far" costs a network hop but has room.
    rtt = {("r", "n-near"): 0.0, ("r", "n-far"): 0.05}
    host = StrategyHost(rng=random.Random(1), budget_us=1e9)
    hybrid = host.strategies["hybrid_mesh"]
    assert isinstance(hybrid, HybridMesh)
    hybrid.set_rtt(lambda a, b: rtt[(a, b)])
    host.upsert(view("near", node="n-near", requests_running=7.0, requests_waiting=0.0, version=1))
    host.upsert(view("far", node="n-far", requests_running=2.0, requests_waiting=0.0, version=1))
    host.refresh()
    picks = []
    for i in range(2):
        req = RouteRequest("m", prompt_tokens=800, client_node="r", request_id=f"q{i}")
        d = host.decide(req, k=2)
        picks.append(d.ranked[0].target.target_id)
        host.routed(d, req, picks[-1])  # what the router does with its first choice
    assert picks == ["near", "far"]
    # a fresh state of "near" (the request now counted by the runtime itself) replaces this router's own count
    host.upsert(view("near", node="n-near", requests_running=8.0, requests_waiting=0.0, version=2))
    assert hybrid.predictor.targets["near"].pending_n == 0


def test_pending_work_is_counted_in_tokens_not_requests() -> None:
    host = StrategyHost(rng=random.Random(2), budget_us=1e9)
    for tid in ("a", "b"):
        host.upsert(view(tid, requests_running=0.0, requests_waiting=0.0, max_concurrency=64, version=1))
    host.refresh()
    req = RouteRequest("m", prompt_tokens=12_000, request_id="big")
    d = host.decide(req, k=2)
    big = d.ranked[0].target.target_id
    host.routed(d, req, big)
    # one long prompt queued at a target with 63 free slots still delays the next first token there
    nxt = host.decide(RouteRequest("m", prompt_tokens=200, request_id="small"), k=2).ranked[0].target.target_id
    assert nxt != big


def _trained_ranker(slo_ms: float | None) -> tuple[Ranker, RouterView, RoutingPolicy]:
    rview = RouterView([StaticTarget(model="m", url=f"http://127.0.0.1:{9100 + i}", node=f"n{i}") for i in range(3)])
    policy = RoutingPolicy(strategy="hybrid_mesh", slo_ttft_ms=slo_ms)
    r = Ranker(rview, [policy], decision_budget_us=1e9)
    rng = random.Random(5)
    for i in range(60):  # every target answers in about 2 s: the predictor learns it
        ranked, _ = r.rank("m", rview.candidates("m"), policy if slo_ms is None else RoutingPolicy(), f"w{i}")
        r.learn(f"w{i}", ranked[0].id, rng.uniform(1.9, 2.1), 4.0, 100)
        r.finished(ranked[0].id)
    return r, rview, policy


def test_slo_admission_refuses_with_429_when_no_target_can_meet_the_ttft_objective() -> None:
    r, rview, policy = _trained_ranker(500.0)
    with pytest.raises(Refusal) as e:
        r.rank("m", rview.candidates("m"), policy, "late", prompt_chars=400)
    assert e.value.status == 429 and e.value.code == "slo_unmeetable"
    assert "TTFT objective of 500 ms" in e.value.message and e.value.retry_after


def test_slo_admission_admits_what_a_target_can_serve_in_time() -> None:
    r, rview, _ = _trained_ranker(None)
    ranked, _ = r.rank("m", rview.candidates("m"), RoutingPolicy(slo_ttft_ms=5000.0), "ok", prompt_chars=400)
    assert ranked and 1.0 < ranked[0].pred_ttft_s < 5.0


def test_an_untrained_predictor_refuses_nothing() -> None:
    rview = RouterView([StaticTarget(model="m", url="http://127.0.0.1:9200", node="n0")])
    r = Ranker(rview, [RoutingPolicy()], decision_budget_us=1e9)
    ranked, _ = r.rank("m", rview.candidates("m"), RoutingPolicy(slo_ttft_ms=1.0), "first")
    assert ranked and ranked[0].pred_ttft_s == 0.0


def test_hedge_delay_follows_the_predicted_ttft_within_the_bounds() -> None:
    p = HedgeParams(min_delay_s=0.01, max_delay_s=2.0)
    assert predicted_delay(0.4, 1.5, p) == pytest.approx(0.6)
    assert predicted_delay(0.001, 1.5, p) == 0.01
    assert predicted_delay(9.0, 1.5, p) == 2.0


def test_hedging_stops_where_hedges_never_win_and_probes_now_and_then() -> None:
    wins = HedgeWins(min_win_rate=0.1, min_samples=20, probe_every=10)
    for _ in range(20):
        assert wins.worth("slow-gpu")
        wins.record("slow-gpu", won=False)
        wins.record("good", won=True)
    allowed = [wins.worth("slow-gpu") for _ in range(30)]
    assert allowed.count(True) == 3  # one probe in 10
    assert all(wins.worth("good") for _ in range(5))
    for _ in range(60):  # the probes start winning: hedging resumes
        wins.record("slow-gpu", won=True)
    assert wins.worth("slow-gpu")


def test_a_hedge_goes_to_another_node_else_another_gpu() -> None:
    def t(tid: str, node: str, gpu: str) -> Target:
        return Target(id=tid, model="m", url=f"http://{tid}", node=node, gpu_uuid=gpu)

    primary = t("p", "n1", "g0")
    assert _hedge_pick([primary, t("same", "n1", "g0"), t("gpu", "n1", "g1"), t("node", "n2", "g2")], 1) == 3
    assert _hedge_pick([primary, t("same", "n1", "g0"), t("gpu", "n1", "g1")], 1) == 2
    assert _hedge_pick([primary, t("same", "n1", "g0")], 1) == 1
