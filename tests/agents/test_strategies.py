"""Strategies and their host: ranking rules, sub-linear sampling, budget and fallback."""

from __future__ import annotations

import random

import pytest

from agents.strategies import (
    BaselineRR,
    HybridMesh,
    LeastQueue,
    RouteRequest,
    SampleParams,
    Scored,
    Strategy,
    TargetIndex,
    TargetView,
    load_strategy,
)
from agents.strategies.host import StrategyHost, UnknownStrategyError


def view(tid: str, model: str = "m", node: str = "n1", **kw: object) -> TargetView:
    kw.setdefault("health", "healthy")
    return TargetView(target_id=tid, model=model, node=node, endpoint=f"http://{tid}", **kw)  # type: ignore[arg-type]


# Tests of what strategies decide use a budget no loaded test machine can overrun; the budget has its own test.
GENEROUS_BUDGET_US = 1e6


def host_with(*views: TargetView, **kw: object) -> StrategyHost:
    kw.setdefault("budget_us", GENEROUS_BUDGET_US)
    h = StrategyHost(rng=random.Random(7), **kw)  # type: ignore[arg-type]
    for v in views:
        h.upsert(v)
    h.refresh()
    return h


def test_index_buckets_by_model_and_removes_in_constant_time() -> None:
    idx = TargetIndex()
    for i in range(5):
        idx.upsert(view(f"t{i}", model="a" if i % 2 else "b"))
    assert sorted(v.target_id for v in idx.candidates("a")) == ["t1", "t3"]
    idx.remove("t0")
    idx.upsert(view("t1", model="b"))  # a model change moves the target
    assert [v.target_id for v in idx.candidates("a")] == ["t3"]
    assert sorted(v.target_id for v in idx.candidates("b")) == ["t1", "t2", "t4"]
    assert idx.candidates("zzz") == ()
    for tid in ("t1", "t2", "t4"):
        idx.remove(tid)
    assert "b" not in idx.buckets


def test_round_robin_rotates_and_skips_unroutable() -> None:
    h = host_with(view("a"), view("b", routable=False), view("c"))
    picks = [h.decide(RouteRequest("m"), strategy="baseline_rr", k=1).best for _ in range(4)]
    assert [p.target_id for p in picks if p] == ["a", "c", "c", "a"]


def test_least_queue_prefers_the_emptier_target() -> None:
    h = host_with(
        view("busy", requests_waiting=10, requests_running=8, max_concurrency=8),
        view("idle", requests_waiting=0, requests_running=1, max_concurrency=8),
    )
    d = h.decide(RouteRequest("m"), strategy="least_queue", k=2)
    assert [s.target.target_id for s in d.ranked] == ["idle", "busy"]


@pytest.mark.parametrize(
    ("worse", "why"),
    [
        ({"requests_waiting": 20.0, "requests_running": 8.0}, "queue"),
        ({"kv_cache_usage": 0.99}, "kv"),
        ({"vram_used_frac": 0.99}, "vram"),
        ({"warming": True}, "warm"),
        ({"loaded": False}, "warm"),
        ({"freshness": 0.0}, "stale"),
        ({"error_rate": 0.5}, "errors"),
        ({"ttft_p95_s": 3.0}, "latency"),
        ({"cost_per_mtok": 50.0}, "cost"),
        ({"node": "far"}, "network"),
    ],
)
def test_hybrid_mesh_charges_each_term(worse: dict[str, object], why: str) -> None:
    node = str(worse.pop("node", "n1"))
    rtt = {("n1", "n1"): 0.0, ("n1", "far"): 0.2}
    h = StrategyHost(rng=random.Random(1), budget_us=GENEROUS_BUDGET_US)
    hybrid = h.strategies["hybrid_mesh"]
    assert isinstance(hybrid, HybridMesh)
    hybrid.set_rtt(lambda a, b: rtt[(a, b)])
    for v in (view("good", max_concurrency=8), view("bad", node=node, max_concurrency=8, **worse)):
        h.upsert(v)
    d = h.decide(RouteRequest("m", client_node="n1", max_tokens=500), k=2, explain=True)
    assert [s.target.target_id for s in d.ranked] == ["good", "bad"], why
    bad_terms = d.ranked[1].terms or {}
    good_terms = d.ranked[0].terms or {}
    key = "wait" if why == "queue" else why
    assert bad_terms[key] > good_terms[key]


def test_hybrid_mesh_mig_profile_is_a_hard_constraint_and_small_slices_cost_more() -> None:
    h = host_with(view("whole"), view("slice", mig_profile="1g.10gb"), view("big", mig_profile="7g.80gb"))
    only = h.decide(RouteRequest("m", mig_profile="1g.10gb"), k=3)
    assert [s.target.target_id for s in only.ranked] == ["slice"]
    ranked = [s.target.target_id for s in h.decide(RouteRequest("m", prompt_tokens=8000), k=3).ranked]
    assert ranked[-1] == "slice"


def test_revision_and_exclude_are_respected() -> None:
    h = host_with(view("r1", revision="v1"), view("r2", revision="v2"), view("r3", revision="v2"))
    for name in ("baseline_rr", "least_queue", "hybrid_mesh"):
        d = h.decide(RouteRequest("m", revision="v2", exclude=frozenset({"r3"})), strategy=name, k=3)
        assert [s.target.target_id for s in d.ranked] == ["r2"], name


class CountingHybrid(HybridMesh):
    """Counts how many candidates a decision scores."""

    name = "counting"

    def __init__(self) -> None:
        super().__init__(params=SampleParams(exact_below=32, sample=8, elite=4))
        self.scored = 0

    def _scorer(self, request: RouteRequest):  # type: ignore[no-untyped-def]
        inner = super()._scorer(request)

        def score(v: TargetView, r: RouteRequest) -> float:
            self.scored += 1
            return inner(v, r)

        return score


def test_decisions_look_at_a_bounded_sample_not_the_fleet() -> None:
    counting = CountingHybrid()
    h = StrategyHost({"counting": counting}, default="counting", rng=random.Random(3), budget_us=GENEROUS_BUDGET_US)
    for i in range(10_000):
        h.upsert(view(f"t{i}", node=f"n{i % 50}", requests_waiting=1.0 + i % 17, max_concurrency=8))
    # the single idle target joins the elite on update, so it is found without scanning
    h.upsert(view("t5000", node="n0", requests_waiting=0.0, requests_running=0.0, max_concurrency=8))
    h.refresh()
    counting.scored = 0
    for _ in range(100):
        d = h.decide(RouteRequest("m", client_node="n0"), k=3)
        assert d.best is not None and d.best.target_id == "t5000"
    assert counting.scored <= 100 * 12


def test_sampling_still_finds_the_last_routable_target() -> None:
    views = [view(f"t{i}", routable=(i == 777)) for i in range(2000)]
    h = host_with(*views)
    for name in ("baseline_rr", "least_queue", "hybrid_mesh"):
        d = h.decide(RouteRequest("m"), strategy=name, k=3)
        assert [s.target.target_id for s in d.ranked] == ["t777"], name


class Exploding(Strategy):
    name = "exploding"

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        raise RuntimeError("plugin bug")


class Slow(Strategy):
    """Pretends to take 1 ms by advancing the host's fake clock."""

    name = "slow"

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        self.clock[0] += 0.001
        return [Scored(v, 0.0) for v in index.candidates(request.model)][:k]


def test_host_falls_back_to_round_robin_when_a_strategy_raises() -> None:
    h = StrategyHost({"exploding": Exploding()}, default="exploding", rng=random.Random(1))
    h.upsert(view("a"))
    d = h.decide(RouteRequest("m"))
    assert d.fallback and d.strategy == "baseline_rr" and d.fallback_reason == "exploding: error"
    assert d.best is not None and d.best.target_id == "a"
    assert h.stats["exploding"].fallbacks == {"error": 1}


def test_host_enforces_the_budget_and_trips_a_repeat_offender() -> None:
    now = [0.0]
    slow = Slow(now)
    h = StrategyHost(
        {"slow": slow}, default="slow", budget_us=500, trip_after=2, trip_cooldown_s=10, clock=lambda: now[0]
    )
    h.upsert(view("a"))
    first = h.decide(RouteRequest("m"))
    assert first.fallback and first.fallback_reason == "slow: budget"
    h.decide(RouteRequest("m"))  # second overrun trips it
    before = now[0]
    tripped = h.decide(RouteRequest("m"))
    assert tripped.fallback_reason == "slow: tripped" and now[0] == before  # not even called
    now[0] += 11  # after the cool-down it gets another chance
    assert h.decide(RouteRequest("m")).fallback_reason == "slow: budget"
    assert h.stats["slow"].fallbacks == {"budget": 3, "tripped": 1}


def test_inflight_spreads_a_burst_before_fresh_state_arrives() -> None:
    h = host_with(view("a", max_concurrency=1), view("b", max_concurrency=1))
    firsts = []
    for _ in range(4):
        best = h.decide(RouteRequest("m"), strategy="least_queue", k=1).best
        assert best is not None
        h.note_assigned(best.target_id)
        firsts.append(best.target_id)
    assert sorted(firsts) == ["a", "a", "b", "b"]


def test_unknown_strategy_and_plugins() -> None:
    h = host_with(view("a"))
    with pytest.raises(UnknownStrategyError, match="nope"):
        h.decide(RouteRequest("m"), strategy="nope")
    assert isinstance(load_strategy("least_queue"), LeastQueue)
    plugin = load_strategy("tests.agents.test_strategies:Exploding")
    assert plugin.name == "exploding"
    with pytest.raises(ValueError, match="not a subclass"):
        load_strategy("tests.agents.test_strategies:view")
    with pytest.raises(ValueError, match="unknown strategy"):
        load_strategy("fastest")
    assert isinstance(load_strategy("baseline_rr"), BaselineRR)


def test_from_proto_keeps_unknown_as_none() -> None:
    from agents.proto.infermesh.v1 import state_pb2

    msg = state_pb2.TargetState(target_id="x", model="m", node="n", endpoint="e", health=2, routable=False)
    msg.kv_cache_usage = 0.5
    v = TargetView.from_proto(msg)
    assert v.health == "unhealthy" and not v.routable
    assert v.kv_cache_usage == 0.5 and v.requests_waiting is None and v.max_concurrency is None
