"""The strategies' elite list is kept incrementally (a heap of changed keys, `_EliteMixin`): after any sequence of
updates, removals and routability changes, `refresh` gives the same few best targets as ranking every target anew."""

from __future__ import annotations

import heapq
import random

import pytest

from agents.strategies.base import HEALTHY, UNHEALTHY, TargetView
from agents.strategies.builtins import HybridMesh, LeastQueue
from agents.strategies.host import StrategyHost


def _view(i: int, rng: random.Random, version: int) -> TargetView:
    routable = rng.random() > 0.1
    return TargetView(
        target_id=f"t{i}",
        model="m",
        node=f"n{i % 7}",
        endpoint=f"http://t{i}",
        zone=f"z{(i % 7) % 3}",  # one zone per node (a zone change re-keys every target)
        health=HEALTHY if routable else UNHEALTHY,
        routable=routable,
        requests_waiting=float(rng.randrange(4)),
        requests_running=float(rng.randrange(8)),
        max_concurrency=8,
        version=version,
    )


@pytest.mark.parametrize("cls", [LeastQueue, HybridMesh])
def test_incremental_elite_is_the_full_ranking(cls: type) -> None:
    rng = random.Random(5)
    strategy = cls()
    host = StrategyHost({strategy.name: strategy}, default=strategy.name, rng=random.Random(1))
    for step in range(400):
        version = step + 1
        i = rng.randrange(60)
        roll = rng.random()
        if roll < 0.08 and host.index.get(f"t{i}") is not None:
            host.remove(f"t{i}")
        elif roll < 0.2 and host.index.get(f"t{i}") is not None:
            host.note_assigned(f"t{i}")  # the same view, its in-flight count moved
        else:
            host.upsert(_view(i, rng, version))
        if step % 7 == 0:
            host.refresh()
            views = [v for v in host.index.candidates("m") if v.routable]
            full = heapq.nsmallest(strategy._elite_size, [(strategy._elite_key(v), v.target_id) for v in views])
            assert strategy._elite.get("m", []) == [tid for _, tid in full], step
