"""A template routing strategy for InferMesh: fewest queued + running requests per unit of capacity.

Copy this package, rename it, change `score`, keep `api_version` at the strategy API you build against.
"""

from __future__ import annotations

import random

from agents.strategies.base import RouteRequest, SampleParams, Scored, Strategy, TargetIndex, TargetView, rank_sampled
from agents.strategies.placement import PlacementCandidate, Ring


def score(view: TargetView, request: RouteRequest) -> float:
    """Lower is better. Unknown signals are None: count them as 0 here."""
    cap = view.max_concurrency or 1
    return ((view.requests_waiting or 0.0) + (view.requests_running or 0.0) + view.inflight) / cap


class ExampleLeastQueue(Strategy):
    name = "example_least_queue"
    api_version = "1.0"  # the strategy API this package was built for; the host refuses an incompatible one

    def __init__(self, params: SampleParams | None = None) -> None:
        self.params = params or SampleParams()

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        # rank_sampled samples candidates (never a scan of the whole fleet) and applies the hard constraints
        return rank_sampled(index, request, k, rng, score, self.params)

    def explain(self, view: TargetView, request: RouteRequest) -> dict[str, float]:
        return {"load": score(view, request)}


class ExampleNodeLocalRing(Ring):
    """A template training (placement) strategy: a ring whose ranks are grouped by node name (then allocation
    order), so that each node's workers are neighbours in the ring; scored by the mesh's collective cost model."""

    name = "example_node_local_ring"
    api_version = "1.0"

    def order(self, candidate: PlacementCandidate) -> list[int]:
        ranks = candidate.ranks
        return sorted(range(len(ranks)), key=lambda i: (ranks[i].node, i))
