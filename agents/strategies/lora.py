"""LoRA affinity: which targets have an adapter resident, and what a target that must load it pays.

A runtime serving LoRA adapters (vLLM's `--enable-lora`) is seen as one target per adapter (the adapter is the
model, `parent` its base model), so a request naming an adapter is only ever ranked among targets that serve it.
Among those, the term added to a strategy's score, in seconds:

- the adapter resident there (its requests run or wait, as `vllm:lora_requests_info` says, or this host sent it
  there and no other adapter has pushed it out of the runtime's slots since): nothing;
- otherwise the load time (the request's `lora_load_s`, from its model's routing policy, else the strategy's
  default), plus the same again x `lora_evict` when every slot holds an adapter
  (loading evicts one, which is loaded again later), plus `lora_slot_wait_s` when every slot serves running requests
  (the request waits for one to free);
- bounded load: a target loaded beyond its batch and `(1 + lora_epsilon) x` the mean load of the adapter's targets
  (+ `lora_slack`) loses its residency credit, so a hot adapter spreads to a second target instead of queueing on
  the first.

What is resident where is kept per runtime (endpoint) as an LRU of `max_loras` adapters, the engine's own rule:
adapters this host routes there are touched, and so are those the runtime reports in use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from agents.strategies.base import UNHEALTHY, RouteRequest, TargetIndex, TargetView

MAX_TRACKED = 64  # adapters remembered per runtime when it does not say how many slots it has

Scorer = Callable[[TargetView, RouteRequest], float]


class LoraAffinity:
    """Per-runtime adapter residency and the LoRA term of a score (sans-IO, owned by one strategy)."""

    def __init__(self, load_s: float, evict: float, slot_wait_s: float, epsilon: float, slack: float) -> None:
        self.load_s = load_s
        self.evict = evict
        self.slot_wait_s = slot_wait_s
        self.epsilon = epsilon
        self.slack = slack
        self.slots: dict[str, OrderedDict[str, None]] = {}  # endpoint -> adapters in its slots, least recent first

    def touch(self, endpoint: str, adapter: str, cap: int | None) -> None:
        lru = self.slots.get(endpoint)
        if lru is None:
            lru = self.slots[endpoint] = OrderedDict()
        lru[adapter] = None
        lru.move_to_end(adapter)
        limit = cap if cap else MAX_TRACKED
        while len(lru) > limit:
            lru.popitem(last=False)  # the runtime evicts its least recently used adapter

    def seen(self, view: TargetView) -> None:
        """A fresh view of an adapter's target: one the runtime reports in use is resident there."""
        if view.parent and view.lora_resident:
            self.touch(view.endpoint, view.model, view.max_loras)

    def forget(self, view: TargetView) -> None:
        """An adapter's target is gone (unloaded, or its runtime left)."""
        lru = self.slots.get(view.endpoint)
        if view.parent and lru is not None:
            lru.pop(view.model, None)
            if not lru:
                del self.slots[view.endpoint]

    def resident(self, view: TargetView) -> bool:
        lru = self.slots.get(view.endpoint)
        return bool(view.lora_resident) or (lru is not None and view.model in lru)

    def cost(self, view: TargetView, over: bool, load_s: float | None = None) -> float:
        """Seconds the adapter costs a request at `view`; `over`: the target is beyond the bounded load; `load_s`:
        the model's policy's load time (None: this strategy's default)."""
        if not view.parent:
            return 0.0
        load = self.load_s if load_s is None else load_s
        if self.resident(view):
            return load if over else 0.0
        cost = load
        cap = view.max_loras
        if cap:
            lru = self.slots.get(view.endpoint)
            active = view.loras_active or 0
            if max(len(lru) if lru is not None else 0, active) >= cap:
                cost += self.evict * load
            if active >= cap:
                cost += self.slot_wait_s
        return cost

    def bound(self, views: Sequence[TargetView], load: Callable[[TargetView], float]) -> float:
        total = 0.0
        n = 0
        for v in views:
            if v.routable and v.health != UNHEALTHY:
                total += load(v)
                n += 1
        return (1.0 + self.epsilon) * (total / max(n, 1)) + self.slack

    def scorer(
        self,
        index: TargetIndex,
        request: RouteRequest,
        base: Scorer,
        load: Callable[[TargetView], float],
        default_slots: int,
    ) -> Scorer:
        """`base` with the LoRA term added when the request names an adapter; `base` itself otherwise."""
        views = index.candidates(request.model)
        if not views or not views[0].parent:
            return base
        bound = self.bound(views, load)
        cost = self.cost
        load_s = request.lora_load_s

        def score(v: TargetView, req: RouteRequest) -> float:
            return base(v, req) + cost(v, load(v) > max(bound, v.max_concurrency or default_slots), load_s)

        return score

    def chosen(self, view: TargetView) -> None:
        """The request goes to `view`: its adapter is loaded into a slot there, most recently used."""
        if view.parent:
            self.touch(view.endpoint, view.model, view.max_loras)


__all__ = ["LoraAffinity"]
