"""Pair selection of disaggregated serving (router/core/pd.py): prefill load, decode load, cached prefix and the
cost of moving the KV over the pair's link each decide when the others are equal."""

from __future__ import annotations

import pytest

from router.core.pd import DecodeSide, PairCosts, PrefillSide, choose_pairs, cost, link_bandwidth

KV = 131_072
COSTS = PairCosts(kv_bytes_per_token=KV, decode_s_per_request=0.004)
GB = 1e9 / 8  # bytes/s of 1 Gbit/s
BW = link_bandwidth(400 * GB, 100 * GB, 25 * GB, {})


def p(id: str, queued: int = 0, cached: int = 0, node: str = "", zone: str = "z1") -> PrefillSide:
    return PrefillSide(id, node or id, zone, queued, cached, 20_000.0)


def d(id: str, inflight: int = 0, cached: int = 0, node: str = "", zone: str = "z1") -> DecodeSide:
    return DecodeSide(id, node or id, zone, inflight, cached)


def best(prompt: int, ps: list[PrefillSide], ds: list[DecodeSide]) -> tuple[str, str]:
    c = choose_pairs(prompt, ps, ds, BW, COSTS)[0]
    return c.prefill, c.decode


def test_least_queued_prefill_wins() -> None:
    assert best(4000, [p("p1", queued=16_000), p("p2", queued=2_000)], [d("d1")]) == ("p2", "d1")


def test_least_loaded_decode_wins() -> None:
    assert best(4000, [p("p1")], [d("d1", inflight=40), d("d2", inflight=3)]) == ("p1", "d2")


def test_cached_prefix_outweighs_a_short_queue() -> None:
    # p1 holds 7,000 of 8,000 tokens: 1,000 to compute behind 4,000 queued beats 8,000 on an idle p2
    assert best(8000, [p("p1", queued=4_000, cached=7_000), p("p2")], [d("d1")])[0] == "p1"


def test_decode_holding_the_prefix_needs_a_smaller_transfer() -> None:
    c = choose_pairs(8000, [p("p1")], [d("d1"), d("d2", cached=6_000)], BW, COSTS)
    assert (c[0].decode, c[0].kv_bytes) == ("d2", 2_000 * KV)
    assert c[1].kv_bytes == 8_000 * KV


def test_network_cost_keeps_the_kv_near_its_prefill() -> None:
    # same load everywhere: the decode in the prefill's zone (100 Gbit/s) beats the one across zones (25 Gbit/s)
    ps = [p("p1", node="a", zone="east")]
    ds = [d("far", node="b", zone="west"), d("near", node="c", zone="east")]
    pairs = choose_pairs(16_000, ps, ds, BW, COSTS)
    assert pairs[0].decode == "near"
    assert pairs[0].transfer_s == pytest.approx(16_000 * KV / (100 * GB))
    assert pairs[1].transfer_s == pytest.approx(4 * pairs[0].transfer_s)


def test_measured_link_overrides_the_class_default_and_same_node_is_fastest() -> None:
    bw = link_bandwidth(400 * GB, 100 * GB, 25 * GB, {frozenset(("a", "b")): 10 * GB})
    assert bw(p("x", node="a"), d("y", node="b")) == 10 * GB
    assert bw(p("x", node="a"), d("y", node="a")) == 400 * GB
    assert bw(p("x", node="a", zone=""), d("y", node="c")) == 100 * GB  # unknown zone: same-zone default


def test_cost_terms_and_deterministic_ties() -> None:
    c = cost(p("p1", queued=2_000, cached=1_000), d("d1", inflight=5, cached=500), 3_000, BW, COSTS)
    assert c.prefill_s == pytest.approx((2_000 + 2_000) / 20_000)
    assert c.prefill_tokens == 2_000 and c.kv_bytes == 2_500 * KV
    assert c.decode_s == pytest.approx(5 * 0.004)
    assert c.cost_s == pytest.approx(c.prefill_s + c.transfer_s + c.decode_s)
    assert best(1000, [p("b"), p("a")], [d("y"), d("x")]) == ("a", "x")


def test_empty_pool_is_an_error() -> None:
    with pytest.raises(ValueError, match="prefill and one decode"):
        choose_pairs(10, [], [d("d1")], BW, COSTS)
