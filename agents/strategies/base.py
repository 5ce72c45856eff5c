"""The strategy interface: what a routing strategy sees (`TargetView`), what it is asked (`RouteRequest`), what it
answers (`Scored`), and the per-model `TargetIndex` it decides over.

Built-ins and user plugins implement the same `Strategy` class. Strategies are sans-IO: randomness comes in as an
argument and they never read clocks or sockets, so the router, the scheduler and the simulator run the same object.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from agents.proto.infermesh.v1 import state_pb2

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
UNKNOWN = "unknown"

# RTT in seconds from the node where a request enters (first argument) to a target's node (second argument).
RttFn = Callable[[str, str], float]


@dataclass(slots=True)
class TargetView:
    """One routing target as strategies see it: fused state plus what this host assigned since the last update.

    None means unknown (a stale or unreported signal), never zero.
    """

    target_id: str
    model: str
    node: str
    endpoint: str
    revision: str = ""
    runtime: str = ""
    zone: str = ""
    quant: str = ""
    mig_profile: str = ""
    gpu_uuids: tuple[str, ...] = ()
    health: str = UNKNOWN
    routable: bool = True
    loaded: bool = True
    warming: bool = False
    requests_waiting: float | None = None
    requests_running: float | None = None
    max_concurrency: int | None = None
    kv_cache_usage: float | None = None
    vram_used_frac: float | None = None
    tokens_per_s: float | None = None
    ttft_p95_s: float | None = None
    latency_p95_s: float | None = None
    ewma_latency_s: float = 0.0  # 0 = no outcome seen yet
    ewma_ttft_s: float = 0.0
    service_rate_rps: float = 0.0  # 0 = unknown
    work_left_s: float = 0.0
    error_rate: float = 0.0
    freshness: float = 1.0  # 1 = just observed, 0 = stale
    cost_per_mtok: float = 0.0
    inflight: int = 0  # requests this host sent there since the fused state last changed
    version: int = 0
    parent: str = ""  # a LoRA adapter served as a model: its base model
    lora_resident: bool | None = None  # the adapter's requests run or wait there (vllm:lora_requests_info)
    max_loras: int | None = None  # the runtime's adapter slots
    loras_active: int | None = None  # adapters its running and waiting requests use

    @classmethod
    def from_proto(cls, msg: state_pb2.TargetState) -> TargetView:
        """Build a view from the agent's `TargetState` (what `WatchTargets` streams)."""

        def opt(name: str) -> float | None:
            return float(getattr(msg, name)) if msg.HasField(name) else None

        health = {1: HEALTHY, 2: UNHEALTHY}.get(int(msg.health), UNKNOWN)
        return cls(
            target_id=msg.target_id,
            model=msg.model,
            node=msg.node,
            endpoint=msg.endpoint,
            revision=msg.revision,
            runtime=msg.runtime,
            zone=msg.zone,
            quant=msg.quant,
            mig_profile=msg.mig_profile,
            gpu_uuids=tuple(msg.gpu_uuids),
            health=health,
            routable=msg.routable,
            loaded=msg.loaded,
            warming=msg.warming,
            requests_waiting=opt("requests_waiting"),
            requests_running=opt("requests_running"),
            max_concurrency=int(msg.max_concurrency) if msg.HasField("max_concurrency") else None,
            kv_cache_usage=opt("kv_cache_usage"),
            vram_used_frac=opt("vram_used_frac"),
            tokens_per_s=opt("tokens_per_s"),
            ttft_p95_s=opt("ttft_p95_s"),
            latency_p95_s=opt("latency_p95_s"),
            ewma_latency_s=msg.ewma_latency_s,
            ewma_ttft_s=msg.ewma_ttft_s,
            service_rate_rps=msg.service_rate_rps,
            work_left_s=msg.work_left_s,
            error_rate=msg.error_rate,
            freshness=msg.freshness,
            cost_per_mtok=msg.cost_per_mtok,
            version=msg.version,
            parent=msg.parent,
            lora_resident=msg.lora_resident if msg.HasField("lora_resident") else None,
            max_loras=int(msg.max_loras) if msg.HasField("max_loras") else None,
            loras_active=int(msg.loras_active) if msg.HasField("loras_active") else None,
        )


@dataclass(slots=True)
class RouteRequest:
    """What is being routed. Token counts of 0 mean unknown."""

    model: str
    revision: str = ""  # empty = any revision
    tenant: str = ""
    prompt_tokens: int = 0
    max_tokens: int = 0
    client_node: str = ""  # where the request enters the mesh (for network cost)
    mig_profile: str = ""  # required MIG slice profile, empty = any
    exclude: frozenset[str] = frozenset()  # target ids already tried
    request_id: str = ""
    block_hashes: Sequence[int] = ()  # chained KV-block hashes of the prompt (agents.emulator.tokenizer), if known
    session_key: str = ""  # session affinity key, if the request names one
    lora_load_s: float | None = None  # the model's policy: seconds to load its adapter into a slot (None: default)

    def admits(self, t: TargetView) -> bool:
        """Hard constraints every strategy applies: routable, right revision and MIG profile, not excluded."""
        return (
            t.routable
            and (not self.revision or t.revision == self.revision)
            and (not self.mig_profile or t.mig_profile == self.mig_profile)
            and t.target_id not in self.exclude
        )


@dataclass(slots=True)
class Scored:
    """One ranked target; lower score is better. `terms` explains the score when asked for."""

    target: TargetView
    score: float
    terms: dict[str, float] | None = None


@dataclass(slots=True)
class Decision:
    """The host's answer: targets best first, and how it was reached."""

    ranked: list[Scored]
    strategy: str
    fallback: bool = False
    fallback_reason: str = ""
    decision_us: float = 0.0
    asked: str = ""  # the strategy asked (differs from `strategy` on a fallback): it books the routed target
    overrun: bool = False  # the strategy's answer came after the budget and was kept (`Strategy.late_answer_kept`)

    @property
    def best(self) -> TargetView | None:
        return self.ranked[0].target if self.ranked else None


class ModelBucket:
    """The targets of one model, in a list for O(1) random sampling and a position map for O(1) removal."""

    __slots__ = ("pos", "targets")

    def __init__(self) -> None:
        self.targets: list[TargetView] = []
        self.pos: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.targets)

    def put(self, view: TargetView) -> None:
        i = self.pos.get(view.target_id)
        if i is None:
            self.pos[view.target_id] = len(self.targets)
            self.targets.append(view)
        else:
            self.targets[i] = view

    def drop(self, target_id: str) -> None:
        i = self.pos.pop(target_id, None)
        if i is None:
            return
        last = self.targets.pop()
        if i < len(self.targets):  # swap the last one into the hole
            self.targets[i] = last
            self.pos[last.target_id] = i


class TargetIndex:
    """All targets known to a host, by id and by model. Every strategy of a host reads the same index."""

    __slots__ = ("buckets", "by_id")

    def __init__(self) -> None:
        self.by_id: dict[str, TargetView] = {}
        self.buckets: dict[str, ModelBucket] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self) -> Iterator[TargetView]:
        return iter(self.by_id.values())

    def get(self, target_id: str) -> TargetView | None:
        return self.by_id.get(target_id)

    def upsert(self, view: TargetView) -> TargetView | None:
        """Insert or replace; returns the previous view. A model change moves the target between buckets."""
        previous = self.by_id.get(view.target_id)
        if previous is not None and previous.model != view.model:
            self._bucket_drop(previous)
        self.by_id[view.target_id] = view
        bucket = self.buckets.get(view.model)
        if bucket is None:
            bucket = self.buckets[view.model] = ModelBucket()
        bucket.put(view)
        return previous

    def remove(self, target_id: str) -> TargetView | None:
        previous = self.by_id.pop(target_id, None)
        if previous is not None:
            self._bucket_drop(previous)
        return previous

    def _bucket_drop(self, view: TargetView) -> None:
        bucket = self.buckets.get(view.model)
        if bucket is not None:
            bucket.drop(view.target_id)
            if not bucket:
                del self.buckets[view.model]

    def candidates(self, model: str) -> Sequence[TargetView]:
        """The model's targets, routable or not; empty when the model is unknown."""
        bucket = self.buckets.get(model)
        return bucket.targets if bucket is not None else ()


class Strategy(ABC):
    """The one interface for built-in and plugin routing strategies.

    The host calls `on_upsert`/`on_remove` as the index changes (keep precomputed per-target state there, in O(1)),
    `refresh` out of the request path (periodic recomputation such as an elite list), and `rank` per request.
    `rank` must not scan the whole fleet: sample candidates from the model's bucket. Lower score is better.

    `rank` only answers: it books nothing (queued work, prefixes, adapter slots), because its answer may be discarded
    (an overrun of the host's budget, a shadow decision, an operator's report). Booking belongs in `on_routed`, which
    the host calls with the target the request was actually sent to, this strategy's pick or the fallback's.
    """

    name: ClassVar[str] = ""
    # Whether the host keeps this strategy's answer when it came after the decision budget. The time is spent
    # either way; a built-in's late answer is as right as a prompt one (the overrun is the machine's contention),
    # while round-robin's places the request blind. Overruns still count towards tripping the strategy.
    late_answer_kept: ClassVar[bool] = False
    # Whether ranking, booking or learning reads the request's prompt: its block hashes and token count
    # (`RouteRequest.block_hashes`, `prompt_tokens`). A router tokenizes and hashes a prompt only for a strategy that
    # reads it; one that says False is given neither (nor an exact token count). Unknown strategies are assumed to.
    reads_prompt: ClassVar[bool] = True

    def on_upsert(self, view: TargetView, previous: TargetView | None) -> None:  # noqa: B027 - optional hook
        """A target was added or changed."""

    def on_remove(self, view: TargetView) -> None:  # noqa: B027 - optional hook
        """A target left the index."""

    def refresh(self, index: TargetIndex) -> None:  # noqa: B027 - optional hook
        """Periodic out-of-band work; never called per request."""

    def on_routed(self, view: TargetView, request: RouteRequest) -> None:  # noqa: B027 - optional hook
        """`request`, which this strategy was asked to rank, was sent to `view` (whoever ranked it): book it."""

    def on_withdrawn(self, view: TargetView, request: RouteRequest) -> None:  # noqa: B027 - optional hook
        """`request`, booked on `view` by `on_routed`, was not prefilled there (its attempt failed before a first
        byte, or another target or cell served it): take back what the booking claimed is cached there."""

    @abstractmethod
    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        """Return up to `k` admissible targets for `request`, best first."""

    def explain(self, view: TargetView, request: RouteRequest) -> dict[str, float]:
        """The parts of `view`'s score for `request` (for operators and `ScoreTargets`); empty when not itemised."""
        return {}


@dataclass(slots=True)
class SampleParams:
    """How many candidates a sampling strategy looks at per decision."""

    exact_below: int = 32  # score every target of a model with fewer targets than this
    sample: int = 8  # random candidates per decision above that (power of d choices)
    elite: int = 4  # best targets kept by `refresh`, always considered
    extra_rounds: int = 3  # further samples when too few candidates were admissible


def sample_candidates(
    targets: Sequence[TargetView], params: SampleParams, rng: random.Random, elite: Sequence[TargetView] = ()
) -> list[TargetView]:
    """The candidates of one decision: all targets of a small bucket, else elite + a random sample (sub-linear).

    The sample is drawn with replacement (half the cost of `random.sample`); callers de-duplicate by id.
    """
    n = len(targets)
    if n < params.exact_below:
        return list(targets)
    draw = rng.random
    picked = [targets[int(draw() * n)] for _ in range(params.sample)]
    if elite:
        picked.extend(elite)
    return picked


def _top_k(scored: dict[str, tuple[float, TargetView]], k: int) -> list[Scored]:
    # candidate sets are small (sample + elite), where one sort beats a heap
    best = sorted(scored.values(), key=_first)[:k]
    return [Scored(v, sc) for sc, v in best]


def _first(item: tuple[float, TargetView]) -> float:
    return item[0]


def rank_sampled(
    index: TargetIndex,
    request: RouteRequest,
    k: int,
    rng: random.Random,
    score: Callable[[TargetView, RouteRequest], float],
    params: SampleParams,
    elite: Sequence[TargetView] = (),
) -> list[Scored]:
    """Score sampled admissible candidates and keep the best `k`.

    When a sample holds fewer than `k` admissible targets (much of the fleet down) it samples again a few times and
    scans the bucket only when nothing admissible was found, so the common case stays O(sample) while an admissible
    target is never missed by bad luck.
    """
    targets = index.candidates(request.model)
    if not targets:
        return []
    scored: dict[str, tuple[float, TargetView]] = {}  # by id: elite and sample may overlap
    admits = request.admits
    for view in sample_candidates(targets, params, rng, elite):
        if admits(view):
            scored[view.target_id] = (score(view, request), view)
    if len(scored) >= k or len(targets) < params.exact_below:
        return _top_k(scored, k)
    for _ in range(params.extra_rounds):
        for view in sample_candidates(targets, params, rng):
            if admits(view):
                scored[view.target_id] = (score(view, request), view)
        if len(scored) >= k:
            return _top_k(scored, k)
    if not scored:  # a short list beats an O(n) scan; only nothing at all justifies one
        for view in targets:
            if admits(view):
                scored[view.target_id] = (score(view, request), view)
    return _top_k(scored, k)
