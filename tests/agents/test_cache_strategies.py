"""cache_aware, session_affinity and hybrid_mesh's cache term, sans-IO."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from agents.signals.prefixindex import EVENTS, PrefixIndex
from agents.strategies import load_strategy
from agents.strategies.base import HEALTHY, RouteRequest, Scored, TargetIndex, TargetView
from agents.strategies.builtins import HybridMesh
from agents.strategies.cache import CacheAware, SessionAffinity


def _fleet(n: int = 8) -> TargetIndex:
    idx = TargetIndex()
    for i in range(n):
        idx.upsert(TargetView(target_id=f"t{i}", model="m", node=f"n{i}", endpoint=f"http://e{i}", health=HEALTHY,
                              requests_waiting=0.0, requests_running=0.0))  # fmt: skip
    return idx


def test_registered_by_name() -> None:
    assert isinstance(load_strategy("cache_aware"), CacheAware)
    assert isinstance(load_strategy("session_affinity"), SessionAffinity)


def test_prefers_the_target_holding_the_prefix_and_hybrid_has_the_term() -> None:
    pi = PrefixIndex()
    pi.ensure("http://e5", EVENTS).add(range(1, 61))  # 60 blocks: 960 cached tokens
    idx = _fleet()
    req = RouteRequest(model="m", prompt_tokens=1000, max_tokens=50, block_hashes=list(range(1, 61)))
    s = CacheAware(index=pi)
    assert s.rank(idx, req, 3, random.Random(1))[0].target.target_id == "t5"
    assert s.explain(idx.get("t5"), req)["cached_tokens"] == 960  # type: ignore[arg-type]
    h = HybridMesh()
    h.prefix_index = pi
    assert h.rank(idx, req, 3, random.Random(1))[0].target.target_id == "t5"
    # without hashes hybrid_mesh is unchanged: any of the idle targets
    assert h.rank(idx, RouteRequest(model="m"), 1, random.Random(1))


def test_hybrid_counts_only_the_uncached_part_of_a_prompt_as_queued_prefill() -> None:
    """A burst sharing a prefix the target holds stays there: each request adds only its own question to the
    target's pending prefill, not the whole prompt (which would push the next ones to targets that must prefill
    the prefix again)."""
    from agents.strategies.host import StrategyHost

    pi = PrefixIndex()
    pi.ensure("http://e3", EVENTS).add(range(1, 121))  # 120 blocks: 1,920 tokens of a 2,000-token prompt
    h = HybridMesh()
    h.prefix_index = pi
    host = StrategyHost({"hybrid_mesh": h}, default="hybrid_mesh", budget_us=1e9, rng=random.Random(3))
    for v in _fleet():
        host.upsert(v)
    host.refresh()
    picks = []
    for i in range(4):  # one scrape interval: nothing but this router's own bookkeeping changes
        req = RouteRequest(model="m", prompt_tokens=2000, max_tokens=32, block_hashes=[*range(1, 121), 500 + i])
        d = host.decide(req, strategy="hybrid_mesh", k=1)
        tid = d.ranked[0].target.target_id
        host.routed(d, req, tid)  # what the router does with its first choice
        picks.append(tid)
    assert picks == ["t3"] * 4
    pending = h.predictor.targets["t3"].pending_tokens
    assert pending == 4 * 80  # the four questions (2,000 - 1,920 tokens each), not 4 x 2,000


def test_hybrid_reads_the_prefill_still_queued_from_kv_events() -> None:
    """On a runtime with KV events the prefill queued there is what its events have not stored yet: a backlog routed
    by another router counts though this one booked nothing, and it is gone once the events store it."""
    pi = PrefixIndex()
    for i in range(2):
        pi.ensure(f"http://e{i}", EVENTS)
    h = HybridMesh()
    h.prefix_index = pi
    idx = _fleet(2)
    for v in idx:
        h.on_upsert(v, None)
    elsewhere = list(range(9000, 9250))  # 4,000 tokens sent to e0 (by another router), not stored yet
    pi.targets["http://e0"].routed(elsewhere, 4000, 16)
    req = RouteRequest(model="m", prompt_tokens=500, max_tokens=32, block_hashes=list(range(1, 32)))
    assert [s.target.target_id for s in h.rank(idx, req, 2, random.Random(1))] == ["t1", "t0"]
    pi.targets["http://e0"].add(elsewhere)  # its events: prefilled and stored
    pi.targets["http://e1"].routed(list(range(7000, 7250)), 4000, 16)
    req = RouteRequest(model="m", prompt_tokens=500, max_tokens=32, block_hashes=list(range(100, 131)))
    assert h.rank(idx, req, 2, random.Random(1))[0].target.target_id == "t0"


def test_hybrid_credits_a_cached_prefix_even_when_its_fit_says_prefill_is_free() -> None:
    """The predictor's prefill slope is fitted on TTFTs that cached prefixes make short and can fall to 0; the cached
    prefix is still worth the prefill it saves at the rate the runtime's events timed."""
    pi = PrefixIndex()
    held = pi.ensure("http://e5", EVENTS)
    held.add(range(1, 121))
    held.prefill_tok_s = 20_000.0
    h = HybridMesh()
    h.prefix_index = pi
    h.predictor.fleet_ttft.theta[1] = 0.0  # a fit that learnt prefill costs nothing
    idx = _fleet()
    for v in idx:
        h.on_upsert(v, None)
    req = RouteRequest(model="m", prompt_tokens=2000, max_tokens=32, block_hashes=[*range(1, 121), 999])
    for seed in range(5):
        assert h.rank(idx, req, 1, random.Random(seed))[0].target.target_id == "t5"


def test_bounded_load_under_a_hot_prefix_spills_and_replicates() -> None:
    pi = PrefixIndex()
    idx = _fleet()
    s = CacheAware(index=pi)
    rng = random.Random(7)
    hot = list(range(1000, 1060))
    picks: Counter[str] = Counter()
    order: list[str] = []
    for _ in range(80):  # 80 concurrent requests with one hot prefix (approximate index: learnt as routed)
        req = RouteRequest(model="m", prompt_tokens=1000, max_tokens=50, block_hashes=hot)
        best = s.rank(idx, req, 1, rng)[0].target
        s.on_routed(best, req)  # the host's routed: booked, then counted in flight
        best.inflight += 1
        picks[best.target_id] += 1
        order.append(best.target_id)
    loads = [v.inflight for v in idx]
    mean = sum(loads) / len(loads)
    assert max(loads) <= (1 + s.cache.epsilon) * mean + s.cache.slack + 1  # none beyond the bound (+ the crossing one)
    home = order[0]
    slots = s.weights.default_concurrency
    # locality kept under imbalance: the home takes the hot prefix until its batch is full, while the others idle ...
    assert order[:slots] == [home] * slots and picks[home] >= mean
    assert len(picks) >= 4  # ... then it spills, and the hot prefix is cached elsewhere too
    assert sum(1 for e in pi.targets if pi.match(e, hot) == 60) == len(picks)


def test_session_affinity_rehomes_when_a_target_fails_and_returns() -> None:
    idx = _fleet()
    s = SessionAffinity(index=PrefixIndex())
    for v in idx:
        s.on_upsert(v, None)
    rng = random.Random(0)
    keys = [f"user-{i}" for i in range(200)]
    home = {k: s.rank(idx, RouteRequest(model="m", session_key=k), 1, rng)[0].target.target_id for k in keys}
    assert len(set(home.values())) == 8  # spread over the ring
    again = {k: s.rank(idx, RouteRequest(model="m", session_key=k), 1, rng)[0].target.target_id for k in keys}
    assert again == home
    failed = idx.get("t3")
    assert failed is not None
    failed.routable = False
    moved = {k: s.rank(idx, RouteRequest(model="m", session_key=k), 1, rng)[0].target.target_id for k in keys}
    assert all(moved[k] != "t3" for k in keys)
    assert all(moved[k] == home[k] for k in keys if home[k] != "t3")  # only the failed target's sessions move
    failed.routable = True
    back = {k: s.rank(idx, RouteRequest(model="m", session_key=k), 1, rng)[0].target.target_id for k in keys}
    assert back == home


def test_session_affinity_bounded_load_and_no_key() -> None:
    idx = _fleet(4)
    s = SessionAffinity(index=PrefixIndex())
    rng = random.Random(0)
    first = s.rank(idx, RouteRequest(model="m", session_key="hot"), 4, rng)
    home = first[0].target
    home.inflight = 50  # one hot session saturates its home
    nxt = s.rank(idx, RouteRequest(model="m", session_key="hot"), 4, rng)
    assert nxt[0].target is not home and nxt[-1].target is home
    assert s.rank(idx, RouteRequest(model="m"), 2, rng)  # no key: ranked by cache_aware


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _slow(cls: type[HybridMesh], clock: _Clock, pi: PrefixIndex, kept: bool = False) -> HybridMesh:
    """`cls` whose every decision takes 2 ms of the host's clock: over any sub-millisecond budget; `kept`: whether
    the host keeps its late answer (the built-ins' rule) or falls back to round-robin (a plugin's)."""

    class Slow(cls):  # type: ignore[valid-type, misc]
        late_answer_kept = kept

        def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
            clock.now += 0.002
            return super().rank(index, request, k, rng)

    s = Slow(index=pi) if issubclass(cls, CacheAware) else Slow()
    s.prefix_index = pi
    return s


@pytest.mark.parametrize("cls", [HybridMesh, CacheAware], ids=["hybrid_mesh", "cache_aware"])
def test_an_answer_discarded_for_overrunning_the_budget_books_nothing_and_the_fallback_pick_is_booked(
    cls: type[HybridMesh],
) -> None:
    """The strategy's pick (t5, which holds the prefix) is discarded for round-robin's (t0): the blocks, the queued
    prefill and the adapter-free prompt work are booked on t0, where the request went, and nothing on t5."""
    from agents.strategies.host import StrategyHost

    clock = _Clock()
    pi = PrefixIndex()
    for i in range(8):
        pi.ensure(f"http://e{i}", EVENTS)
    pi.targets["http://e5"].add(range(1, 121))
    s = _slow(cls, clock, pi)
    host = StrategyHost({"s": s}, default="s", budget_us=1000.0, trip_after=100, rng=random.Random(1), clock=clock)
    for v in _fleet():
        host.upsert(v)
    host.refresh()
    hashes = [*range(1, 121), 777]
    req = RouteRequest(model="m", prompt_tokens=2000, max_tokens=32, block_hashes=hashes, request_id="r1")
    assert s.rank(host.index, req, 1, random.Random(1))[0].target.target_id == "t5"  # its own answer
    d = host.decide(req, k=1)
    assert d.fallback and d.fallback_reason == "s: budget" and d.asked == "s"
    routed = d.ranked[0].target
    assert routed.target_id == "t0"
    # deciding alone booked nothing anywhere (the answer may yet be discarded, or the decision a shadow one)
    assert all(not bs.pending and not bs.recent for bs in pi.targets.values())
    host.routed(d, req, routed.target_id)
    booked = {e for e, bs in pi.targets.items() if bs.pending or bs.recent}
    assert booked == {"http://e0"}
    assert pi.match("http://e0", hashes) == len(hashes)  # the whole prompt is on its way to t0
    assert pi.targets["http://e0"].backlog_tokens(16) == 16 * len(hashes)  # all of it to prefill there
    if isinstance(s, CacheAware):
        assert set(s._work) == {"http://e0"}  # the mean uncached work per target is its book
    else:
        pending = {t: st.pending_tokens for t, st in s.predictor.targets.items() if st.pending_tokens}
        assert pending == {"t0": 2000.0}  # queued prefill where the request went, uncached there
    assert routed.inflight == 1 and sum(v.inflight for v in host.index) == 1


def test_hybrid_places_a_new_prefix_where_the_caches_hold_least_and_evict_nothing() -> None:
    """A prefix nobody holds costs the same prefill everywhere; hybrid_mesh places it where the caches hold least,
    and away from a cache seen full (it would evict another prefix, prefilled again later). Without these terms
    (both weights 0) two idle targets tie."""
    from agents.strategies.builtins import HybridWeights

    def pick(weights: HybridWeights, seed: int, full: bool) -> str:
        pi = PrefixIndex()
        e0, e1 = pi.ensure("http://e0", EVENTS), pi.ensure("http://e1", EVENTS)
        e0.add(range(10_000, 10_300))  # other groups' prefixes: 300 blocks held on e0
        if full:  # as many held on both, but e0 has been seen evicting at that size
            e1.add(range(20_000, 20_300))
            e0.capacity = 300
        h = HybridMesh(weights)
        h.prefix_index = pi
        idx = _fleet(2)
        for v in idx:
            h.on_upsert(v, None)
        req = RouteRequest(model="m", prompt_tokens=2000, max_tokens=32, block_hashes=list(range(1, 126)))
        return h.rank(idx, req, 1, random.Random(seed))[0].target.target_id

    for full in (False, True):
        assert {pick(HybridWeights(), seed, full) for seed in range(8)} == {"t1"}, full
        # without them the two tie, and the tie goes to the first target: the fuller cache
        assert pick(HybridWeights(cache_spread=0.0, cache_evict=0.0), 0, full) == "t0", full


@pytest.mark.parametrize("cls", [HybridMesh, CacheAware], ids=["hybrid_mesh", "cache_aware"])
def test_a_built_in_answer_over_the_budget_is_kept_and_booked_where_it_sends(cls: type[HybridMesh]) -> None:
    """A built-in's late answer is as right as a prompt one (the time is spent either way): the host keeps it,
    counts the overrun, and trips the strategy only after `trip_after` overruns in a row."""
    from agents.strategies.host import StrategyHost

    assert cls.late_answer_kept
    clock = _Clock()
    pi = PrefixIndex()
    for i in range(8):
        pi.ensure(f"http://e{i}", EVENTS)
    pi.targets["http://e5"].add(range(1, 121))
    s = _slow(cls, clock, pi, kept=True)
    host = StrategyHost({"s": s}, default="s", budget_us=1000.0, trip_after=3, rng=random.Random(1), clock=clock)
    for v in _fleet():
        host.upsert(v)
    host.refresh()
    hashes = [*range(1, 121), 777]
    for i in range(2):
        req = RouteRequest(model="m", prompt_tokens=2000, max_tokens=32, block_hashes=[*hashes, i], request_id=f"r{i}")
        d = host.decide(req, k=1)
        assert not d.fallback and d.overrun and d.strategy == "s" and d.decision_us > 1000
        assert d.ranked[0].target.target_id == "t5"  # its own answer: the target holding the prefix
        host.routed(d, req, "t5")
    assert {e for e, bs in pi.targets.items() if bs.pending} == {"http://e5"}
    assert host.stats["s"].overruns == 2 and host.stats["s"].fallbacks == {}
    req = RouteRequest(model="m", prompt_tokens=2000, max_tokens=32, block_hashes=hashes, request_id="r3")
    assert host.decide(req, k=1).overrun  # the third in a row is kept too, and trips it ...
    assert host.decide(req, k=1).fallback_reason == "s: tripped"  # ... so the next goes round-robin, at once
