"""Run with the InferMesh environment: `pip install -e .` then `pytest tests`."""

from __future__ import annotations

import random

from agents.strategies import RouteRequest, TargetIndex, TargetView, load_strategy
from agents.strategies.plugins import discover


def test_installed_and_ranks_the_least_loaded_first() -> None:
    assert "example_least_queue" in discover()
    strategy = load_strategy("example_least_queue")
    index = TargetIndex()
    for i, waiting in enumerate([3.0, 0.0, 5.0]):
        index.upsert(TargetView(f"t{i}", "m", f"n{i}", "e", requests_waiting=waiting, max_concurrency=2))
    ranked = strategy.rank(index, RouteRequest("m"), 2, random.Random(0))
    assert [s.target.target_id for s in ranked] == ["t1", "t0"]


def test_placement_strategy_groups_each_nodes_workers() -> None:
    from agents.collective.costmodel import Fabric, RankSlot
    from agents.strategies.host import StrategyHost
    from agents.strategies.placement import PlacementCandidate

    ranks = [RankSlot(node=n, gpu_type="A100-80GB") for n in ("b", "a", "b", "a")]
    cand = PlacementCandidate("job", ranks, compute_s=0.1, grad_bytes=100 << 20)
    decision = StrategyHost().score_placements([cand], Fabric(), strategies=["example_node_local_ring"])
    best = decision.best
    assert best is not None and best.strategy == "example_node_local_ring" and not decision.fallback
    assert [r.node for r in best.ordered_ranks] == ["a", "a", "b", "b"]
