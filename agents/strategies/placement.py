"""Training strategies: the placement side of the strategy interface (`PlacementStrategy`) and the built-ins
`ring`, `tree` and `hierarchical`, each scoring a candidate placement with the collective cost model.

Same rules as routing strategies: sans-IO, no clocks, one object shared by the scheduler, the simulator and the
benchmark; the `StrategyHost` runs them under a budget and falls back to `ring` when one overruns or raises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from agents.collective.costmodel import Fabric, RankSlot, StepCost, step_time

# What each algorithm asks of NCCL (NCCL_ALGO); hierarchical is NCCL's tree inside nodes plus ring-ordered ranks.
NCCL_ALGO = {"ring": "Ring", "tree": "Tree", "hierarchical": "Tree,Ring"}


@dataclass(slots=True)
class PlacementCandidate:
    """A possible placement of a job's workers: one RankSlot per worker, in allocation order."""

    job_id: str
    ranks: list[RankSlot]
    compute_s: float  # step compute time on one reference GPU worker
    grad_bytes: int  # gradient bytes all-reduced per step
    label: str = ""  # how the candidate was built (for explanations)


@dataclass(slots=True)
class PlacementScore:
    """A strategy's verdict on a candidate: predicted step, the rank order and the hint for the collective library.

    `rank_order[i]` is the index into `candidate.ranks` of the worker that gets rank i. Lower `score` is better.
    """

    candidate: PlacementCandidate
    strategy: str
    score: float
    cost: StepCost
    rank_order: list[int]
    nccl_algo: str
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def ordered_ranks(self) -> list[RankSlot]:
        return [self.candidate.ranks[i] for i in self.rank_order]


def topology_order(ranks: Sequence[RankSlot]) -> list[int]:
    """Ranks grouped by region, zone, host and node, so that a ring crosses each boundary as few times as possible
    and consecutive ranks share the fastest links."""
    return sorted(range(len(ranks)), key=lambda i: (ranks[i].region, ranks[i].zone, ranks[i].host, ranks[i].node, i))


class PlacementStrategy(ABC):
    """The interface for built-in and plugin training strategies: score one candidate placement."""

    name: ClassVar[str] = ""
    algorithm: ClassVar[str] = "ring"

    def order(self, candidate: PlacementCandidate) -> list[int]:
        return topology_order(candidate.ranks)

    @abstractmethod
    def score(self, candidate: PlacementCandidate, fabric: Fabric) -> PlacementScore:
        """Predict the step time of `candidate` under this strategy's collective algorithm."""


class _CostModelStrategy(PlacementStrategy):
    def score(self, candidate: PlacementCandidate, fabric: Fabric) -> PlacementScore:
        order = self.order(candidate)
        ranks = [candidate.ranks[i] for i in order]
        cost = step_time(
            ranks, compute_s=candidate.compute_s, grad_bytes=candidate.grad_bytes, fabric=fabric,
            algorithm=self.algorithm,
        )  # fmt: skip
        terms = {"compute_s": cost.compute_s, "comm_s": cost.comm.time_s, "exposed_comm_s": cost.exposed_comm_s}
        terms.update(cost.comm.terms)
        return PlacementScore(candidate, self.name, cost.step_s, cost, order, NCCL_ALGO[self.algorithm], terms)


class Ring(_CostModelStrategy):
    """Ring all-reduce, 2(N-1) steps of S/N over the slowest hop."""

    name = "ring"
    algorithm = "ring"


class Tree(_CostModelStrategy):
    """NCCL double binary tree: log-depth latency across nodes."""

    name = "tree"
    algorithm = "tree"


class Hierarchical(_CostModelStrategy):
    """Reduce-scatter inside nodes, all-reduce across nodes, all-gather inside nodes."""

    name = "hierarchical"
    algorithm = "hierarchical"


class AllocationOrderRing(_CostModelStrategy):
    """Ring in the order workers were allocated, with no regard for topology: what a topology-blind scheduler
    gets (the baseline of the placement benchmark)."""

    name = "ring_unordered"
    algorithm = "ring"

    def order(self, candidate: PlacementCandidate) -> list[int]:
        return list(range(len(candidate.ranks)))


PLACEMENT_BUILTINS: dict[str, type[PlacementStrategy]] = {
    Ring.name: Ring,
    Tree.name: Tree,
    Hierarchical.name: Hierarchical,
    AllocationOrderRing.name: AllocationOrderRing,
}
PLACEMENT_FALLBACK = Ring.name


def make_placement_strategies() -> dict[str, PlacementStrategy]:
    return {name: cls() for name, cls in PLACEMENT_BUILTINS.items()}


@dataclass(slots=True)
class PlacementDecision:
    """The host's answer for a set of candidates: best first."""

    ranked: list[PlacementScore]
    strategies: list[str]
    fallback: bool = False
    fallback_reason: str = ""
    decision_ms: float = 0.0

    @property
    def best(self) -> PlacementScore | None:
        return self.ranked[0] if self.ranked else None
