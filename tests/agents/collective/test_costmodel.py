"""Collective cost model (α-β per link class), calibration from CommStats, and the training strategies run by the
strategy host with its budget and fallback."""

from __future__ import annotations

import math

import pytest

from agents.collective.costmodel import (
    REGION,
    ZONE,
    Calibration,
    Fabric,
    LinkParams,
    RankSlot,
    default_links,
    hierarchical_allreduce,
    ring_allreduce,
    step_time,
    tree_allreduce,
)
from agents.collective.records import CommStats
from agents.strategies.host import StrategyHost, UnknownStrategyError
from agents.strategies.placement import PlacementCandidate, PlacementScore, PlacementStrategy, topology_order

GB = 1e9


def ranks(nodes: int, per_node: int, zones: int = 1, gpu: str = "H100") -> list[RankSlot]:
    return [
        RankSlot(f"n{n}", zone=f"z{n % zones}", region="r", gpu_type=gpu) for n in range(nodes) for _ in range(per_node)
    ]


def test_ring_is_2_n_minus_1_steps_over_the_slowest_hop() -> None:
    fabric = Fabric(links={**default_links(), ZONE: LinkParams(10e-6, 10.0)})
    r = ranks(4, 1)
    cost = ring_allreduce(r, 400_000_000, fabric)
    expected = 2 * 3 * (10e-6 + 100_000_000 / (10 * GB))
    assert cost.time_s == pytest.approx(expected)
    assert cost.bottleneck == ZONE
    # nccl-tests: busbw = algbw * 2(n-1)/n; here that is the link bandwidth minus the latency share
    assert cost.busbw_gbps == pytest.approx(400_000_000 / expected / GB * 2 * 3 / 4)
    assert cost.busbw_gbps < 10.0


def test_ring_pays_for_shared_nics_and_oversubscribed_zone_uplinks() -> None:
    fabric = Fabric(default_uplink_gbps=5.0)
    grouped = ranks(4, 2, zones=2)
    grouped.sort(key=lambda s: (s.zone, s.node))
    interleaved = list(grouped)
    interleaved.sort(key=lambda s: s.node[::-1] + s.zone)  # scatter ranks across nodes and zones
    a = ring_allreduce(grouped, 1 << 30, fabric)
    b = ring_allreduce(interleaved, 1 << 30, fabric)
    assert a.bottleneck == REGION
    assert b.time_s > a.time_s


def test_tree_latency_grows_with_log2_of_nodes() -> None:
    fabric = Fabric(links={**default_links(), ZONE: LinkParams(1e-3, 1e6)})
    small = tree_allreduce(ranks(4, 1), 8, fabric)
    big = tree_allreduce(ranks(64, 1), 8, fabric)
    assert small.terms["latency_s"] == pytest.approx(2 * math.log2(4) * 1e-3)
    assert big.terms["latency_s"] == pytest.approx(2 * math.log2(64) * 1e-3)
    # for tiny messages on many nodes the tree beats the ring's 2(N-1) latencies
    assert big.time_s < ring_allreduce(ranks(64, 1), 8, fabric).time_s


def test_hierarchical_moves_less_over_the_network_with_many_gpus_per_node() -> None:
    fabric = Fabric()
    r = ranks(4, 8)
    h = hierarchical_allreduce(r, 1 << 30, fabric)
    ring = ring_allreduce(r, 1 << 30, fabric)
    assert set(h.terms) == {"reduce_scatter_s", "inter_allreduce_s", "all_gather_s"}
    assert h.terms["reduce_scatter_s"] == pytest.approx(h.terms["all_gather_s"])
    assert h.time_s < ring.time_s * 1.05


def test_single_rank_costs_nothing_and_step_time_follows_the_slowest_gpu() -> None:
    fabric = Fabric()
    assert ring_allreduce(ranks(1, 1), 1 << 20, fabric).time_s == 0.0
    mixed = [RankSlot("a", zone="z", gpu_type="H100"), RankSlot("a", zone="z", gpu_type="T4")]
    fast = [RankSlot("a", zone="z", gpu_type="H100"), RankSlot("a", zone="z", gpu_type="H100")]
    s_mixed = step_time(mixed, compute_s=0.1, grad_bytes=1 << 20, fabric=fabric)
    s_fast = step_time(fast, compute_s=0.1, grad_bytes=1 << 20, fabric=fabric)
    assert s_mixed.compute_s == pytest.approx(0.1 * 989 / 65)
    assert s_fast.compute_s == pytest.approx(0.1)


def test_calibration_learns_measured_bandwidth() -> None:
    fabric = Fabric()
    r = ranks(2, 1)
    predicted = ring_allreduce(r, 100 << 20, fabric)
    # the fabric really runs 4x slower than its data sheet
    measured = [
        CommStats("j", 0, "allreduce", 100 << 20, predicted.time_s * 4, n_ranks=2, bucket_id=i) for i in range(30)
    ]
    cal = Calibration()
    assert cal.observe(r, measured, fabric, "ring") == 30
    cal.apply(fabric)
    after = ring_allreduce(r, 100 << 20, fabric)
    assert after.time_s == pytest.approx(predicted.time_s * 4, rel=0.05)
    # records of another world size or collective are not comparable and are skipped
    other = [CommStats("j", 0, "allgather", 1, 1.0, n_ranks=2), CommStats("j", 0, "allreduce", 1, 1.0, n_ranks=3)]
    assert cal.observe(r, other, fabric, "ring") == 0


def candidate(r: list[RankSlot]) -> PlacementCandidate:
    return PlacementCandidate("j", r, compute_s=0.05, grad_bytes=256 << 20)


def test_host_ranks_candidates_with_each_training_strategy() -> None:
    host = StrategyHost()
    fabric = Fabric(default_uplink_gbps=2.0)
    one_zone = candidate(ranks(2, 4))
    two_zones = candidate(ranks(2, 4, zones=2))
    decision = host.score_placements([two_zones, one_zone], fabric)
    assert decision.strategies == ["ring", "tree", "hierarchical"]
    assert len(decision.ranked) == 6 and not decision.fallback
    assert decision.best is not None and decision.best.candidate is one_zone
    assert decision.ranked == sorted(decision.ranked, key=lambda s: s.score)
    assert {s.nccl_algo for s in decision.ranked} == {"Ring", "Tree", "Tree,Ring"}
    with pytest.raises(UnknownStrategyError, match="placement strategy 'mesh'"):
        host.score_placements([one_zone], fabric, strategies=["mesh"])


class Broken(PlacementStrategy):
    name = "broken"

    def score(self, candidate: PlacementCandidate, fabric: Fabric) -> PlacementScore:
        raise RuntimeError("plugin bug")


def test_a_failing_plugin_falls_back_to_ring() -> None:
    from agents.strategies.placement import make_placement_strategies

    host = StrategyHost(placement={**make_placement_strategies(), "broken": Broken()})
    d = host.score_placements([candidate(ranks(2, 1))], Fabric(), strategies=["broken"])
    assert d.fallback and d.fallback_reason == "broken: error"
    assert d.best is not None and d.best.strategy == "ring"
    assert host.stats["placement:broken"].fallbacks == {"error": 1}


def test_topology_order_groups_ranks_by_zone_and_node() -> None:
    r = [RankSlot("b", zone="z2"), RankSlot("a", zone="z1"), RankSlot("b", zone="z2"), RankSlot("c", zone="z1")]
    assert [r[i].node for i in topology_order(r)] == ["a", "c", "b", "b"]
