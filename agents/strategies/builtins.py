"""Built-in inference strategies: `baseline_rr`, `least_queue` and `hybrid_mesh`.

All three decide in time independent of fleet size: round-robin walks a per-model cursor; the other two score a
random sample plus a small elite list that `refresh` keeps out of the request path.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agents.signals.prefixindex import EVENTS, BlockSet, PrefixIndex, default_index
from agents.strategies.base import (
    RouteRequest,
    RttFn,
    SampleParams,
    Scored,
    Strategy,
    TargetIndex,
    TargetView,
    rank_sampled,
)
from agents.strategies.booking import PrefixBookings
from agents.strategies.lora import LoraAffinity
from agents.strategies.predict import LatencyPredictor, PredictorParams, mig_fraction


class BaselineRR(Strategy):
    """Round-robin over a model's admissible targets: the reference every other strategy must beat."""

    name = "baseline_rr"
    reads_prompt = False

    def __init__(self, max_probe: int = 64) -> None:
        self._cursor: dict[str, int] = {}
        self._max_probe = max_probe

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        targets = index.candidates(request.model)
        n = len(targets)
        if n == 0:
            return []
        start = self._cursor.get(request.model, 0) % n
        out: list[Scored] = []
        admits = request.admits
        # Probe a bounded window first; only a fleet where nearly everything is unroutable walks it all.
        limit = n if n <= self._max_probe else self._max_probe
        probed = 0
        while probed < n and len(out) < k:
            view = targets[(start + probed) % n]
            probed += 1
            if admits(view):
                out.append(Scored(view, float(len(out))))
            if probed >= limit and out:
                break
        self._cursor[request.model] = (start + 1) % n
        return out

    def explain(self, view: TargetView, request: RouteRequest) -> dict[str, float]:
        return {"rotation": 1.0}


def _load(view: TargetView) -> float:
    """Requests per unit of capacity: queued + running + what this host sent since the last update."""
    cap = view.max_concurrency if view.max_concurrency else 1
    return ((view.requests_waiting or 0.0) + (view.requests_running or 0.0) + view.inflight) / cap


class _EliteMixin:
    """Keeps, per model, the ids of the few best targets by a request-independent key, renewed by `refresh`.

    Ids, not views, are kept: the index replaces views on every update and a decision must see the current one.
    Every routable target's current key is kept too, with a heap of (key, id) pushed whenever a key changes: `refresh`
    takes the elite from the heap's top (dropping entries whose key has changed since) instead of re-keying every
    target, so its cost follows the changes, not the fleet. Keys change only through `_elite_touch` (every update of
    a target, and whatever else moves a key must call it); `_elite_rekey` asks for every key anew (what the keys
    depend on changed for all targets).
    """

    def _init_elite(self, size: int) -> None:
        self._elite: dict[str, list[str]] = {}
        self._elite_keys: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._elite_size = size
        self._keys: dict[str, dict[str, float]] = {}  # model -> target id -> current key (routable targets)
        self._heaps: dict[str, list[tuple[float, str]]] = {}  # model -> (key, id), stale entries included
        self._rekey: set[str] = set()  # models whose keys are all rebuilt at the next refresh

    def _elite_key(self, view: TargetView) -> float:
        raise TypeError("subclasses define _elite_key")

    def _elite_rekey(self, model: str) -> None:
        self._rekey.add(model)
        self._dirty.add(model)

    def _elite_touch(self, view: TargetView, key: float | None = None) -> None:
        """`view` was updated; `key`: its key, when the caller has it at hand."""
        model = view.model
        self._dirty.add(model)
        if not view.routable:
            self._elite_drop(view)
            return
        if key is None:
            key = self._elite_key(view)
        tid = view.target_id
        self._elite_note(model, tid, key)
        keys = self._elite_keys
        elite = self._elite.setdefault(model, [])
        if tid in keys:
            keys[tid] = key
            return
        # A target that just became better than the elite's worst joins at once, so a freshly idle target is found
        # before the next refresh.
        if len(elite) < self._elite_size:
            elite.append(tid)
            keys[tid] = key
            return
        worst = max(elite, key=keys.__getitem__)
        if key < keys[worst]:
            elite[elite.index(worst)] = tid
            del keys[worst]
            keys[tid] = key

    def _elite_note(self, model: str, tid: str, key: float) -> None:
        """A routable target's key is now `key`: the next refresh sees it (the elite itself is left as it is)."""
        current = self._keys.get(model)
        if current is None:
            current = self._keys[model] = {}
        if current.get(tid) != key:
            current[tid] = key
            heap = self._heaps.get(model)
            if heap is None:
                heap = self._heaps[model] = []
            heapq.heappush(heap, (key, tid))
            if len(heap) > 2 * len(current) + 64:  # mostly stale entries: start again from the current keys
                heap[:] = [(k, t) for t, k in current.items()]
                heapq.heapify(heap)
            self._dirty.add(model)

    def _elite_drop(self, view: TargetView) -> None:
        current = self._keys.get(view.model)
        if current is not None:
            current.pop(view.target_id, None)  # its heap entries are stale now
        if self._elite_keys.pop(view.target_id, None) is not None:
            self._elite[view.model] = [i for i in self._elite.get(view.model, []) if i != view.target_id]

    def _elite_refresh(self, index: TargetIndex) -> None:
        for model in list(self._dirty):
            for old in self._elite.pop(model, []):
                self._elite_keys.pop(old, None)
            current = self._keys.get(model)
            heap = self._heaps.get(model)
            if model in self._rekey or current is None or heap is None:
                keyed = [(self._elite_key(t), t.target_id) for t in index.candidates(model) if t.routable]
                self._keys[model] = current = {tid: key for key, tid in keyed}
                heapq.heapify(keyed)
                self._heaps[model] = heap = keyed
            # The smallest current entries: popped, stale ones dropped for good, the chosen pushed back.
            by_id = index.by_id
            best: list[tuple[float, str]] = []
            while heap and len(best) < self._elite_size:
                entry = heapq.heappop(heap)
                key, tid = entry
                if current.get(tid) != key:
                    continue  # superseded by a newer key (or the target left)
                view = by_id.get(tid)
                if view is None or not view.routable or view.model != model:
                    del current[tid]  # gone without a touch (a subclass's own bookkeeping): forgotten here
                    continue
                if best and best[-1] == entry:
                    continue  # the same key pushed twice (it changed and came back)
                best.append(entry)
            for entry in best:
                heapq.heappush(heap, entry)
            if best:
                self._elite[model] = [tid for _, tid in best]
                self._elite_keys.update((tid, key) for key, tid in best)
        self._dirty.clear()
        self._rekey.clear()

    def _elite_views(self, index: TargetIndex, model: str) -> list[TargetView]:
        by_id = index.by_id
        return [v for v in (by_id.get(i) for i in self._elite.get(model, ())) if v is not None]


class LeastQueue(_EliteMixin, Strategy):
    """Fewest queued + running requests per unit of capacity among sampled candidates (power of d choices)."""

    name = "least_queue"
    reads_prompt = False
    late_answer_kept = True

    def __init__(self, params: SampleParams | None = None) -> None:
        self.params = params or SampleParams()
        self._init_elite(self.params.elite)

    def _elite_key(self, view: TargetView) -> float:
        return _load(view)

    def on_upsert(self, view: TargetView, previous: TargetView | None) -> None:
        self._elite_touch(view)

    def on_remove(self, view: TargetView) -> None:
        self._elite_drop(view)

    def refresh(self, index: TargetIndex) -> None:
        self._elite_refresh(index)

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        elite = self._elite_views(index, request.model)
        return rank_sampled(index, request, k, rng, _score_least_queue, self.params, elite)

    def explain(self, view: TargetView, request: RouteRequest) -> dict[str, float]:
        return {"load": _load(view)}


def _score_least_queue(view: TargetView, request: RouteRequest) -> float:
    return _load(view)


@dataclass(slots=True)
class HybridWeights:
    """Weights of `hybrid_mesh`. The score is in seconds of expected delay, so terms add up meaningfully."""

    prior_latency_s: float = 2.0  # service time assumed before any latency is known
    default_concurrency: int = 8  # batch slots assumed when a runtime does not say
    kv_knee: float = 0.85  # KV use above which preemption risk grows
    kv_penalty_s: float = 4.0
    vram_knee: float = 0.92
    vram_penalty_s: float = 2.0
    latency_weight: float = 0.1  # weight of recent TTFT p95 (history: the predicted TTFT carries the present)
    decode_weight: float = 0.02  # weight of a default completion's predicted decode time (TTFT first: a per-target
    # ITL that differs by a few ms per token must not outweigh a network hop)
    trust_after: int = 20  # outcomes before predictions refuse requests or time hedges
    refit_every: int = 64  # fleet outcomes between re-scorings of every target by `refresh`
    warming_penalty_s: float = 10.0
    cold_penalty_s: float = 60.0
    stale_penalty_s: float = 2.0  # applied as (1 - freshness) x this
    error_penalty_s: float = 5.0  # applied as error_rate x this
    network_weight: float = 2.0  # RTT counts for request and response
    cost_weight_s_per_dollar: float = 200.0
    default_completion_tokens: int = 256
    mig_penalty_s: float = 1.0  # unused: a slice's slower prefill is the predictor's (kept for configs naming it)
    cache_block_size: int = 16  # tokens per KV block of the request's block hashes
    cache_prefill_tok_s: float = 12_000.0  # prefill a cached prompt token saves, on a whole GPU
    # placement of a missed prefix (as cache_aware's): up to this much more prefill where the caches hold most ...
    cache_spread: float = 1.0
    cache_evict: float = 2.0  # ... and this share of the blocks a miss evicts from a cache seen full
    # LoRA affinity (agents/strategies/lora.py): a target without the adapter resident pays its load time
    lora_load_s: float = 0.025  # a rank-16 adapter of an 8B model from host memory into a GPU slot
    lora_evict: float = 1.0  # share of a load charged again when loading evicts another adapter
    lora_slot_wait_s: float = 0.25  # every slot serves running requests: the wait for one to free
    lora_epsilon: float = 0.5  # bounded load: beyond (1 + epsilon) x the adapter's mean load + slack, no credit
    lora_slack: float = 2.0


@dataclass(slots=True)
class ZoneRtt:
    """Default network cost when no topology service is attached: same node, same zone, other zone."""

    same_node_s: float = 0.0
    same_zone_s: float = 0.0005
    cross_zone_s: float = 0.03
    unknown_s: float = 0.001
    zones: dict[str, str] = field(default_factory=dict)  # node -> zone, learnt from targets

    def __call__(self, src: str, dst: str) -> float:
        if not src or src == dst:
            return self.same_node_s
        zs, zd = self.zones.get(src), self.zones.get(dst)
        if not zs or not zd:
            return self.unknown_s
        return self.same_zone_s if zs == zd else self.cross_zone_s


class HybridMesh(_EliteMixin, Strategy):
    """Expected-delay score: predicted TTFT (queued prefill tokens, sequences decoding, batch slots, each target's
    learned rates, this router's assignments since the last update), the request's own prefill at the target's rate,
    KV and VRAM pressure, network cost, warm/cold state, staleness, errors and cost per token.

    The request-independent part is precomputed per target on every update (O(1)); a decision adds the prefill,
    network and cost terms for a sampled candidate set. Outcomes (`observe_outcome`) teach the predictor.
    """

    name = "hybrid_mesh"
    late_answer_kept = True  # and cache_aware, session_affinity: a late answer beats round-robin's blind one

    def __init__(
        self,
        weights: HybridWeights | None = None,
        params: SampleParams | None = None,
        rtt: RttFn | None = None,
        predictor: PredictorParams | None = None,
    ) -> None:
        self.weights = weights or HybridWeights()
        self.params = params or SampleParams()
        self._zone_rtt = ZoneRtt()
        self.rtt: RttFn = rtt or self._zone_rtt
        # target id -> (request-independent score, seconds of prefill per 1,000 prompt tokens, the predictor's fleet
        # outcomes when computed)
        self._pre: dict[str, tuple[float, float, int]] = {}
        # (client node, target node) -> RTT; emptied by `refresh` so topology changes land within a refresh period
        self._rtt_cache: dict[tuple[str, str], float] = {}
        self._init_elite(self.params.elite)
        self.prefix_index: PrefixIndex | None = default_index()  # what is cached where (agents.signals.prefixindex)
        self.bookings = PrefixBookings()  # what each routed request booked there, to take back if it never ran
        self._cache_most = 0  # blocks held by the fullest cache (`_cache_fleet`)
        self._fleet_age = 0  # decisions until the fleet's caches are scanned again
        self._prior_tok_s = self.weights.cache_prefill_tok_s
        self.predictor = LatencyPredictor(predictor)
        self._views: dict[str, TargetView] = {}
        self._home = ""  # the node this host's requests enter from (learnt from them; one per router)
        self._fleet_stamp = 0
        self._refreshes = 0
        self._own_terms = type(self).base_terms is HybridMesh.base_terms
        w = self.weights
        self.lora = LoraAffinity(w.lora_load_s, w.lora_evict, w.lora_slot_wait_s, w.lora_epsilon, w.lora_slack)

    def set_rtt(self, rtt: RttFn | None) -> None:
        """Attach a topology service's RTT estimate (or go back to the zone default with None)."""
        self.rtt = rtt or self._zone_rtt
        self._rtt_cache.clear()
        for model in self._keys:
            self._elite_rekey(model)  # every key's network term

    # -- precomputed, request-independent part -------------------------------------------------------------------
    def base_terms(self, v: TargetView) -> dict[str, float]:
        """The request-independent terms, in seconds.

        `wait` is the predicted TTFT of an empty prompt (`agents.strategies.predict`): prefill tokens queued ahead,
        sequences decoding, the wait for a batch slot when the batch is full, each with the target's own learned
        rate; what this router sent since the target's last published state is counted, in tokens, so decisions
        between two updates do not pile onto one target. `service` is the decode time of a default completion at the
        target's predicted inter-token latency (a slow GPU or a full batch costs its share; weighted low)."""
        return dict(zip(_BASE_TERMS, self._terms(v), strict=True))

    def _terms(self, v: TargetView) -> tuple[float, ...]:
        """`base_terms`' values in `_BASE_TERMS` order, without building the dict."""
        return self._terms_prefill(v)[0]

    def _terms_prefill(self, v: TargetView) -> tuple[tuple[float, ...], float]:
        """(`_terms`, the predictor's `prefill_s(v, 1000.0)`): every published state comes here."""
        w = self.weights
        wait, itl, prefill = self.predictor.predict_base_prefill(v)
        return (
            wait,
            w.decode_weight * w.default_completion_tokens * itl,
            _knee(v.kv_cache_usage, w.kv_knee) * w.kv_penalty_s,
            _knee(v.vram_used_frac, w.vram_knee) * w.vram_penalty_s,
            w.latency_weight * (v.ttft_p95_s or v.ewma_ttft_s or 0.0),
            w.cold_penalty_s if not v.loaded else (w.warming_penalty_s if v.warming else 0.0),
            (1.0 - min(max(v.freshness, 0.0), 1.0)) * w.stale_penalty_s,
            v.error_rate * w.error_penalty_s,
        ), prefill

    def _base_score(self, v: TargetView) -> float:
        # fsum is exact whatever the order: the tuple's sum is the dict's; a subclass's own terms go through its dict
        if self._own_terms:
            return math.fsum(self._terms(v))
        return math.fsum(self.base_terms(v).values())

    def _elite_key(self, view: TargetView) -> float:
        pre = self._pre.get(view.target_id)
        return self._key_of(pre[0] if pre is not None else self._base_score(view), view.node)

    def _key_of(self, base: float, node: str) -> float:
        if not self._home:
            return base
        # the elite is where this host's requests do best, network included: an elite of far targets would leave a
        # decision whose random sample holds nothing near with only far candidates
        key = (self._home, node)
        r = self._rtt_cache.get(key)
        if r is None:
            r = self._rtt_cache[key] = self.rtt(self._home, node)
        return base + self.weights.network_weight * r

    def _precompute(self, view: TargetView) -> tuple[float, float, int]:
        pred = self.predictor
        if self._own_terms:
            # fsum is exact whatever the order, as in _base_score; the prefill comes with the terms (one look-up)
            terms, prefill = self._terms_prefill(view)
            pre = (math.fsum(terms), prefill, pred.fleet_outcomes)
        else:
            pre = (self._base_score(view), pred.prefill_s(view, 1000.0), pred.fleet_outcomes)
        self._pre[view.target_id] = pre
        return pre

    def on_upsert(self, view: TargetView, previous: TargetView | None) -> None:
        self.predictor.on_view(view, previous is view)
        self._views[view.target_id] = view
        if view.parent:
            self.lora.seen(view)
        pre = self._precompute(view)
        if view.zone and self._zone_rtt.zones.get(view.node) != view.zone:
            self._zone_rtt.zones[view.node] = view.zone
            self._rtt_cache.clear()
            self._elite_rekey(view.model)
        self._elite_touch(view, self._key_of(pre[0], view.node))

    def on_remove(self, view: TargetView) -> None:
        self._pre.pop(view.target_id, None)
        self._views.pop(view.target_id, None)
        self.predictor.forget(view.target_id)
        self.lora.forget(view)
        self._elite_drop(view)

    def refresh(self, index: TargetIndex) -> None:
        stamp = self.predictor.fleet_outcomes
        # targets still on the fleet's fit (and the slot times) move with it; every few dozen outcomes is enough
        if stamp - self._fleet_stamp >= self.weights.refit_every or (stamp and not self._fleet_stamp):
            last, self._fleet_stamp = self._fleet_stamp, stamp
            pre_of = self._pre
            for tid, view in self._views.items():
                pre = pre_of.get(tid)
                if pre is not None and pre[2] > last:
                    continue  # computed (a state update, an outcome) since the last refit: no older than the others
                self._precompute(view)
                if view.routable:
                    self._elite_note(view.model, view.target_id, self._elite_key(view))
        self._refreshes += 1
        if self._refreshes % 16 == 0:
            # RTT estimates move without a new estimator (a topology service's learning): every key's network
            # term is asked again now and then; a target's own updates re-key it in between
            for model in self._keys:
                self._elite_rekey(model)
        self._elite_refresh(index)
        self._rtt_cache.clear()

    # -- outcomes --------------------------------------------------------------------------------------------------
    def observe_outcome(
        self, request_id: str, target_id: str, ttft_s: float, e2e_s: float = 0.0, completion_tokens: int = 0
    ) -> None:
        """A request this strategy ranked was answered by `target_id`: learn the target's latency curve."""
        if self.predictor.observe(request_id, target_id, ttft_s, e2e_s, completion_tokens):
            view = self._views.get(target_id)
            if view is not None:
                self._precompute(view)
                if view.routable:
                    self._elite_note(view.model, target_id, self._elite_key(view))

    def prediction_trusted(self) -> bool:
        """Whether the predictor has learned from enough outcomes to act on (refuse, time hedges)."""
        return self.predictor.fleet_outcomes >= self.weights.trust_after

    def predicted_ttft(self, view: TargetView, request: RouteRequest) -> float:
        """Seconds to the first token of `request` at `view`, as the predictor sees it now (network excluded)."""
        return self.predictor.predict_ttft(view, float(request.prompt_tokens))

    # -- per request ---------------------------------------------------------------------------------------------
    def _scorer(self, request: RouteRequest) -> Callable[[TargetView, RouteRequest], float]:
        w = self.weights
        pre_of = self._pre
        rtt = self.rtt
        rtt_cache = self._rtt_cache
        client = request.client_node
        tokens = request.max_tokens or w.default_completion_tokens
        cost_factor = tokens / 1e6 * w.cost_weight_s_per_dollar
        # the request's own prefill at the target's learned rate; a subclass ranking its own way (cache_aware charges
        # the uncached part of the prompt itself) gets the rest of the score without it
        own = type(self).rank is HybridMesh.rank
        prompt_k = (request.prompt_tokens or self.predictor.mean_prompt) / 1000.0 if own else 0.0
        net_w = w.network_weight

        def score(v: TargetView, _req: RouteRequest) -> float:
            pre = pre_of.get(v.target_id) or self._precompute(v)
            key = (client, v.node)
            r = rtt_cache.get(key)
            if r is None:
                r = rtt_cache[key] = rtt(client, v.node)
            return pre[0] + net_w * r + v.cost_per_mtok * cost_factor + pre[1] * prompt_k

        return score

    def _decided(
        self, ranked: list[Scored], request: RouteRequest, cached: Callable[[TargetView], float] | None = None
    ) -> list[Scored]:
        """Remember the candidates' features, so that whichever of them answers teaches the predictor (a memory of
        the decision, not a booking: it changes no score); `cached`: prompt tokens a target holds in its prefix
        cache (not prefilled there)."""
        if ranked and request.request_id:
            pred = self.predictor
            prompt = float(request.prompt_tokens or pred.mean_prompt)
            for s in ranked:
                own = prompt if cached is None else max(0.0, prompt - cached(s.target))
                pred.remember(request.request_id, s.target, own)
        return ranked

    def on_routed(self, view: TargetView, request: RouteRequest) -> None:
        """Book the request where it went: its adapter into a slot, its blocks into the prefix index (they count as
        there, their prefill as pending, before the runtime's events say so), and its uncached prompt as the prefill
        the next in-flight increment there carries."""
        self.lora.chosen(view)
        pred = self.predictor
        pi = self.prefix_index
        hashes = request.block_hashes
        if pi is None or not hashes:
            pred.note_choice(view.target_id, request)
            return
        bs = self.weights.cache_block_size
        prompt = float(request.prompt_tokens or pred.mean_prompt)
        matched = pi.match(view.endpoint, hashes)  # read before the blocks are booked
        held = min(float(matched * bs), prompt)
        pi.note_routed(view.endpoint, hashes, int(prompt - held), bs)
        self.bookings.note(request.request_id, view.endpoint, matched)
        pred.note_choice(view.target_id, request, max(0.0, prompt - held))

    def on_withdrawn(self, view: TargetView, request: RouteRequest) -> None:
        """The request was not prefilled at `view` after all: the blocks its booking added there are taken back."""
        if self.prefix_index is not None and request.block_hashes:
            self.bookings.withdraw(self.prefix_index, request.request_id, view.endpoint, request.block_hashes)

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        if request.client_node != self._home and request.client_node:
            self._home = request.client_node
            self._elite_rekey(request.model)  # the elite is rebuilt around the new home at the next refresh
        elite = self._elite_views(index, request.model)
        score = self.lora.scorer(index, request, self._scorer(request), _requests, self.weights.default_concurrency)
        pi = self.prefix_index
        if pi is None or not request.block_hashes:
            return self._decided(rank_sampled(index, request, k, rng, score, self.params, elite), request)
        # the cache term: the prefill the target's cached prefix saves, at the target's own learnt rate
        hashes, bs = request.block_hashes, self.weights.cache_block_size
        prompt = float(request.prompt_tokens or self.predictor.mean_prompt)
        pre_of = self._pre

        def cached(v: TargetView) -> float:
            return min(float(pi.match(v.endpoint, hashes) * bs), prompt)

        sets = pi.targets
        booked = self.predictor.targets
        prior, most = self._cache_fleet(sets)
        w = self.weights
        seen_most = 0

        def with_cache(v: TargetView, req: RouteRequest) -> float:
            nonlocal seen_most
            pre = pre_of.get(v.target_id) or self._precompute(v)
            b = sets.get(v.endpoint)
            # Tokens are priced at the prefill rate the runtime's KV events timed, else the fastest timed in the
            # fleet x the MIG share: the predictor's slope is fitted on TTFTs that cached prefixes make short, and
            # can sit near 0, which would leave a cached prefix worth nothing.
            rate = b.prefill_tok_s if b is not None and b.prefill_tok_s else prior * mig_fraction(v.mig_profile)
            held = cached(v)
            extra = -held / rate
            miss = prompt - held
            if b is not None and miss > 0:
                # A miss also places the prefix: where the caches hold least (prefixes spread over the caches
                # instead of piling onto the fastest GPU's), and on a cache seen full it evicts as much, to be
                # prefilled again later. Without it a holder with any backlog lost its prefix's next requests to a
                # copy elsewhere, which evicted another group's.
                n = len(b) + len(b.recent)
                seen_most = max(seen_most, n)
                place = w.cache_spread * miss * min(n / most, 1.0) if most else 0.0
                if b.capacity:
                    place += w.cache_evict * max(0.0, len(b) + miss / bs - b.capacity) * bs
                extra += place / rate
            if b is not None and b.kind == EVENTS:
                # a runtime with KV events says what is still to prefill (blocks routed, not yet stored), which
                # drains as prefills end; what this router booked (in the score) drains only as requests finish
                st = booked.get(v.target_id)
                extra += b.backlog_tokens(bs) / rate - pre[1] * (st.pending_tokens if st is not None else 0.0) / 1e3
            return score(v, req) + extra

        ranked = rank_sampled(index, request, k, rng, with_cache, self.params, elite)
        self._cache_most = max(self._cache_most, seen_most)
        return self._decided(ranked, request, cached)

    def _cache_fleet(self, sets: Mapping[str, BlockSet]) -> tuple[float, int]:
        """(prefill rate of a target its events have not timed yet, blocks held by the fullest cache). The rate is
        the fastest timed in the fleet (optimism: a target assumed slow would never be sent a miss, so never timed),
        else the whole-GPU default. Scanned every 256 decisions, not per request; the fullest cache is also raised
        by what decisions see in between."""
        self._fleet_age -= 1
        if self._fleet_age <= 0:
            self._fleet_age = 256
            best, most = 0.0, 0
            for b in sets.values():
                best = max(best, b.prefill_tok_s or 0.0)
                most = max(most, len(b) + len(b.recent))
            self._prior_tok_s = best or self.weights.cache_prefill_tok_s
            self._cache_most = most
        return self._prior_tok_s, self._cache_most

    def explain(self, view: TargetView, request: RouteRequest) -> dict[str, float]:
        w = self.weights
        terms = self.base_terms(view)
        tokens = request.max_tokens or w.default_completion_tokens
        terms["network"] = w.network_weight * self.rtt(request.client_node, view.node)
        terms["cost"] = view.cost_per_mtok * tokens / 1e6 * w.cost_weight_s_per_dollar
        terms["prefill"] = self.predictor.prefill_s(view, float(request.prompt_tokens or self.predictor.mean_prompt))
        if view.parent:
            terms["lora"] = self.lora.cost(view, False, request.lora_load_s)
        return terms


_BASE_TERMS = ("wait", "service", "kv", "vram", "latency", "warm", "stale", "errors")


def _requests(v: TargetView) -> float:
    """Requests at a target: the runtime's own counts, or this host's in flight where it has not reported them."""
    return max((v.requests_waiting or 0.0) + (v.requests_running or 0.0), float(v.inflight))


def _knee(value: float | None, knee: float) -> float:
    """0 below the knee, rising quadratically to 1 at full use; unknown counts as 0 (staleness is charged apart)."""
    if value is None or value <= knee:
        return 0.0
    x = min((value - knee) / (1.0 - knee), 1.0)
    return x * x


BUILTINS: dict[str, type[Strategy]] = {
    BaselineRR.name: BaselineRR,
    LeastQueue.name: LeastQueue,
    HybridMesh.name: HybridMesh,
}
