"""Cache-aware routing: prefix locality weighed against token-level load, and session affinity.

`cache_aware` scores a target in seconds of expected delay to the request's first token, like `hybrid_mesh` (whose
terms it keeps: KV and VRAM pressure, health, errors, staleness, network, MIG fit), with the queue counted in tokens:

- the request's own prefill: the prompt tokens the target does not hold in its prefix cache;
- the prefill backlog ahead of it: for a target with KV events, the blocks routed there that its events have not
  reported stored yet (exact, and it drains as the target works); otherwise its waiting requests x the mean uncached
  work sent there;
- both over the target's prefill rate, learnt from its KV events (the time from routing a request to the event that
  stores its last block); until then the fastest rate learnt in the fleet, times the MIG slice's share of a GPU
  (optimistic: a target assumed slow would never be sent a miss, so its rate would never be learnt): a miss costs
  less on a fast GPU;
- a full batch: the wait for a slot to free (requests beyond the batch x the decode time of a request per slot);
- a small cost per request in flight (batch interference);
- placement of a prefix no one holds: it goes where the caches hold least (`spread`), and a target whose cache was
  seen full (it evicts) pays for what the miss would evict there (`evict`), so prefixes spread over the caches
  instead of thrashing the fastest target's.

So a long shared prefix keeps a request on the target that holds it as long as its batch has room and its backlog
is shorter than the prefill saved; requests that run in flight there do not count as queue, which is what made a
request-count rule spill (and miss) early.

Bounded load (as in consistent hashing with bounded loads): a target loaded beyond its batch and `(1 + epsilon) x`
the mean of the model's targets (+ `slack`) loses its cache credit, so a hot prefix spills to the next target,
which then caches it too, instead of the policy collapsing to least-load for everyone.

`session_affinity` homes a session key (a header or body field) on a consistent-hash ring of the model's targets
with the same load bound; a target that fails or leaves is skipped and its sessions re-home on the next one of the
ring, and come back when it returns. Requests without a key are ranked by `cache_aware`.

What is cached where comes from a `PrefixIndex` (`agents.signals.prefixindex`): exact from vLLM KV events where a
runtime publishes them, else approximate from the requests this strategy sent. Targets are keyed by endpoint URL.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from agents.signals.prefixindex import EVENTS, BlockSet, PrefixIndex, default_index
from agents.strategies.base import (
    UNHEALTHY,
    RouteRequest,
    SampleParams,
    Scored,
    TargetIndex,
    TargetView,
    rank_sampled,
)
from agents.strategies.builtins import HybridMesh, HybridWeights
from agents.strategies.predict import mig_fraction

log = logging.getLogger("infermesh.strategies.cache")


@dataclass(slots=True)
class CacheWeights:
    block_size: int = 16
    prefill_tok_s: float = 12_000.0  # prefill rate of a whole GPU until the target's own is learnt from its events
    itl_s: float = 0.02  # seconds a batch slot stays busy per output token, for the wait when the batch is full
    load_s: float = 0.005  # expected delay per request in flight there: batch interference, risk of a full batch
    epsilon: float = 0.5  # bounded load: a target over (1 + epsilon) x mean load + slack loses its cache credit
    slack: float = 2.0  # requests of headroom above the relative bound (a batch absorbs a few more at little cost)
    learn_approx: bool = True  # record routed prefixes for targets without KV events
    spread: float = 1.0  # a missed prefix costs up to this much more prefill on the target whose cache holds most
    evict: float = 1.0  # share of the blocks a miss evicts from a full cache that will be prefilled again


class CacheAware(HybridMesh):
    name = "cache_aware"

    def __init__(
        self,
        weights: HybridWeights | None = None,
        params: SampleParams | None = None,
        cache: CacheWeights | None = None,
        index: PrefixIndex | None = None,
    ) -> None:
        super().__init__(weights=weights, params=params or SampleParams(exact_below=64, sample=16))
        self.cache = cache or CacheWeights()
        self.cache_index: PrefixIndex = index if index is not None else default_index()
        self.prefix_index = self.cache_index
        # endpoint -> EWMA of the prefill work of requests sent there (the backlog of targets without KV events)
        self._work: dict[str, float] = {}

    # -- per request ---------------------------------------------------------------------------------------------
    def base_terms(self, v: TargetView) -> dict[str, float]:
        terms = super().base_terms(v)
        # the queue is counted in tokens per request (below), not in requests x a service time
        terms["wait"] = terms["service"] = 0.0
        return terms

    def _load(self, v: TargetView) -> float:
        # the runtime's own counts include this router's requests; inflight covers what it has not reported yet
        return max((v.requests_waiting or 0.0) + (v.requests_running or 0.0), float(v.inflight))

    def _rate(self, v: TargetView, bs: BlockSet | None, prior: float = 0.0) -> float:
        if bs is not None and bs.prefill_tok_s:
            return bs.prefill_tok_s
        return (prior or self.cache.prefill_tok_s) * mig_fraction(v.mig_profile)

    def _prior_rate(self) -> float:
        """Prefill rate assumed for a target not yet timed: the fastest learnt in the fleet (optimism: a target
        assumed slow is never sent a miss, so its rate would never be learnt and it would idle), else the default."""
        best = 0.0
        for bs in self.cache_index.targets.values():
            if bs.prefill_tok_s and bs.prefill_tok_s > best:
                best = bs.prefill_tok_s
        return best or self.cache.prefill_tok_s

    def _backlog(self, v: TargetView, bs: BlockSet | None, load: float, slots: int, prompt: float) -> float:
        """Prefill tokens ahead of a new request on `v`."""
        if bs is not None and bs.kind == EVENTS:
            if load <= 0 and bs.pending:
                bs.settle()  # nothing in flight: what is still pending will never be stored
            return float(len(bs.pending) * self.cache.block_size)
        waiting = v.requests_waiting if v.requests_waiting is not None else max(0.0, load - slots)
        return waiting * self._work.get(v.endpoint, prompt)

    def _cache_scorer(self, request: RouteRequest, base: Callable[[TargetView, RouteRequest], float],
                      bound: float, rng: random.Random) -> Callable[[TargetView, RouteRequest], float]:  # fmt: skip
        c = self.cache
        hashes = request.block_hashes
        prompt = max(request.prompt_tokens, len(hashes) * c.block_size)
        out = request.max_tokens or self.weights.default_completion_tokens
        match = self.cache_index.match
        targets = self.cache_index.targets
        held = {e: len(b) + len(b.recent) for e, b in targets.items()}
        most = max(held.values(), default=0) or 1
        jitter = rng.random
        default_slots = self.weights.default_concurrency
        prior = self._prior_rate()
        rate_of = self._rate

        def score(v: TargetView, req: RouteRequest) -> float:
            bs = targets.get(v.endpoint)
            load = self._load(v)
            slots = v.max_concurrency or default_slots
            matched = match(v.endpoint, hashes) * c.block_size if hashes else 0
            if load > max(bound, slots):
                matched = 0  # bounded load: no cache credit on an overloaded target
            miss = prompt - matched
            # A prefix no one holds goes where the cache holds least: prefixes spread evenly over the caches
            # instead of piling up (and evicting each other) on whichever target looked idle first.
            spread = miss / prompt * held.get(v.endpoint, 0) / most * c.spread * prompt if prompt else 0.0
            if bs is not None and bs.capacity and miss > 0:
                # a full cache evicts as much as the miss brings in: what was cached there is prefilled again later
                spread += c.evict * max(0.0, len(bs) + miss / c.block_size - bs.capacity) * c.block_size
            prefill = (miss + spread + self._backlog(v, bs, load, slots, prompt)) / rate_of(v, bs, prior)
            full = max(0.0, load + 1 - slots) * out * c.itl_s / slots  # waiting for a batch slot to free
            return base(v, req) + prefill + full + load * c.load_s + jitter() * 1e-6

        return score

    def _bound(self, index: TargetIndex, model: str) -> float:
        views = index.candidates(model)
        if not views:
            return 0.0
        total = 0.0
        n = 0
        for v in views:
            if v.routable and v.health != UNHEALTHY:
                total += self._load(v)
                n += 1
        return (1.0 + self.cache.epsilon) * (total / max(n, 1)) + self.cache.slack

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        # a request naming a LoRA adapter pays its load time where it is not resident (agents/strategies/lora.py)
        base = self.lora.scorer(index, request, self._scorer(request), self._load, self.weights.default_concurrency)
        scorer = self._cache_scorer(request, base, self._bound(index, request.model), rng)
        return rank_sampled(index, request, k, rng, scorer, self.params, self._elite_views(index, request.model))

    def on_routed(self, view: TargetView, request: RouteRequest) -> None:
        self.chosen(view, request)
        self.lora.chosen(view)

    def on_withdrawn(self, view: TargetView, request: RouteRequest) -> None:
        if request.block_hashes:
            self.bookings.withdraw(self.cache_index, request.request_id, view.endpoint, request.block_hashes)

    def chosen(self, v: TargetView, request: RouteRequest) -> None:
        """Book the request on its target: its prefill joins the target's backlog (and, approximate index, its
        prefix now lives there). Called through `on_routed` with the target the request was sent to."""
        c = self.cache
        hashes = request.block_hashes
        blocks = self.cache_index.match(v.endpoint, hashes) if hashes else 0
        matched = blocks * c.block_size
        prompt = max(request.prompt_tokens, len(hashes) * c.block_size)
        w = prompt - matched
        prev = self._work.get(v.endpoint)
        self._work[v.endpoint] = w if prev is None else 0.8 * prev + 0.2 * w
        if c.learn_approx and hashes:
            self.cache_index.note_routed(v.endpoint, hashes, w, c.block_size)
            self.bookings.note(request.request_id, v.endpoint, blocks)

    def explain(self, view: TargetView, request: RouteRequest) -> dict[str, float]:
        terms = super().explain(view, request)
        c = self.cache
        bs = self.cache_index.targets.get(view.endpoint)
        rate = self._rate(view, bs, self._prior_rate())
        hashes = request.block_hashes
        matched = self.cache_index.match(view.endpoint, hashes) * c.block_size if hashes else 0
        prompt = max(request.prompt_tokens, len(hashes) * c.block_size)
        load = self._load(view)
        slots = view.max_concurrency or self.weights.default_concurrency
        terms["prefill"] = (prompt - matched) / rate
        terms["queued_tokens"] = self._backlog(view, bs, load, slots, prompt) / rate
        terms["cached_tokens"] = float(matched)
        terms["prefill_tok_s"] = rate
        return terms


class SessionAffinity(CacheAware):
    """Consistent hashing of a session key with bounded loads; `cache_aware` for requests without one."""

    name = "session_affinity"
    VNODES = 64

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._rings: dict[str, tuple[list[int], list[str]]] = {}  # model -> (sorted points, target id per point)
        self._dirty: set[str] = set()

    def on_upsert(self, view: TargetView, previous: TargetView | None) -> None:
        super().on_upsert(view, previous)
        if previous is None or previous.model != view.model:
            self._dirty.add(view.model)
            if previous is not None:
                self._dirty.add(previous.model)

    def on_remove(self, view: TargetView) -> None:
        super().on_remove(view)
        self._dirty.add(view.model)

    def refresh(self, index: TargetIndex) -> None:
        super().refresh(index)
        for model in list(self._dirty):  # rebuilt out of the request path
            self._ring(index, model)

    def _ring(self, index: TargetIndex, model: str) -> tuple[list[int], list[str]]:
        ring = self._rings.get(model)
        if ring is None or model in self._dirty:
            points: list[tuple[int, str]] = []
            for v in index.candidates(model):
                for i in range(self.VNODES):
                    points.append((_h64(f"{v.target_id}#{i}"), v.target_id))
            points.sort()
            ring = ([p for p, _ in points], [t for _, t in points])
            self._rings[model] = ring
            self._dirty.discard(model)
        return ring

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        if not request.session_key:
            return super().rank(index, request, k, rng)
        points, owners = self._ring(index, request.model)
        if not points:
            return []
        bound = self._bound(index, request.model)
        start = bisect.bisect(points, _h64(request.session_key)) % len(points)
        within: list[TargetView] = []
        over: list[TargetView] = []
        seen: set[str] = set()
        for i in range(len(points)):
            tid = owners[(start + i) % len(points)]
            if tid in seen:
                continue
            seen.add(tid)
            v = index.get(tid)
            if v is None or not request.admits(v) or v.health == UNHEALTHY:
                continue  # a failed target: its sessions re-home on the next one of the ring
            (within if self._load(v) <= bound else over).append(v)
            if len(within) >= k:
                break
        return [Scored(v, float(i)) for i, v in enumerate((within + over)[:k])]


def _h64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
