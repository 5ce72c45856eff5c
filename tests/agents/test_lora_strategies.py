"""LoRA affinity in hybrid_mesh and cache_aware, sans-IO: the adapter resident is preferred, a load that evicts
costs more, what this host routes is remembered as the runtime's LRU slots, and a hot adapter spreads."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from agents.signals.prefixindex import PrefixIndex
from agents.strategies.base import HEALTHY, RouteRequest, Strategy, TargetIndex, TargetView
from agents.strategies.builtins import HybridMesh, HybridWeights
from agents.strategies.cache import CacheAware


def _view(i: int, model: str, **kw: object) -> TargetView:
    parent = "base" if model != "base" else ""
    return TargetView(target_id=f"{model}@e{i}", model=model, node=f"n{i}", endpoint=f"http://e{i}", health=HEALTHY,
                      requests_waiting=0.0, requests_running=0.0, parent=parent, **kw)  # type: ignore[arg-type]  # fmt: skip


def _fleet(strategy: Strategy, views: list[TargetView]) -> TargetIndex:
    idx = TargetIndex()
    for v in views:
        strategy.on_upsert(v, idx.upsert(v))
    return idx


def _strategies(**weights: float) -> list[Strategy]:
    return [HybridMesh(HybridWeights(**weights)), CacheAware(HybridWeights(**weights), index=PrefixIndex())]  # type: ignore[arg-type]


@pytest.mark.parametrize("s", _strategies(), ids=lambda s: s.name)
def test_the_target_with_the_adapter_resident_wins(s: Strategy) -> None:
    idx = _fleet(s, [_view(i, "sql", max_loras=2, loras_active=1, lora_resident=i == 2) for i in range(4)])
    req = RouteRequest(model="sql", prompt_tokens=200, max_tokens=20)
    for seed in range(5):
        assert s.rank(idx, req, 1, random.Random(seed))[0].target.endpoint == "http://e2"
    w = HybridWeights()
    assert s.explain(idx.get("sql@e2"), req)["lora"] == 0.0  # type: ignore[arg-type]
    assert s.explain(idx.get("sql@e0"), req)["lora"] == w.lora_load_s  # type: ignore[arg-type]
    # a request for the base model has no LoRA term, and an unknown adapter has no candidate at all
    assert s.rank(idx, RouteRequest(model="nope"), 3, random.Random(0)) == []


@pytest.mark.parametrize("s", _strategies(), ids=lambda s: s.name)
def test_a_load_that_evicts_costs_more_than_a_free_slot(s: Strategy) -> None:
    full = _view(0, "sql", max_loras=1, loras_active=1, lora_resident=False)  # its one slot serves other requests
    free = _view(1, "sql", max_loras=2, loras_active=0, lora_resident=False)
    idx = _fleet(s, [full, free])
    req = RouteRequest(model="sql", prompt_tokens=200, max_tokens=20)
    w = HybridWeights()
    assert s.explain(full, req)["lora"] == pytest.approx(w.lora_load_s * (1 + w.lora_evict) + w.lora_slot_wait_s)
    assert s.explain(free, req)["lora"] == pytest.approx(w.lora_load_s)
    assert s.rank(idx, req, 1, random.Random(0))[0].target is free


@pytest.mark.parametrize("s", _strategies(), ids=lambda s: s.name)
def test_routed_adapters_are_remembered_as_the_runtimes_slots(s: Strategy) -> None:
    views = [_view(i, m, max_loras=1, loras_active=0, lora_resident=False) for i in range(3) for m in ("a", "b")]
    idx = _fleet(s, views)
    rng = random.Random(3)
    req = RouteRequest(model="a")
    routed = s.rank(idx, req, 1, rng)[0].target
    s.on_routed(routed, req)
    first = routed.endpoint
    # before the next scrape says so, the adapter is resident where this host sent it
    assert all(s.rank(idx, RouteRequest(model="a"), 1, rng)[0].target.endpoint == first for _ in range(5))
    # one slot: b routed there evicts a (the runtime's LRU), so a no longer prefers that runtime ...
    s.lora.chosen(idx.get(f"b@{first[len('http://') :]}"))  # type: ignore[arg-type, attr-defined]
    assert not s.lora.resident(idx.get(f"a@{first[len('http://') :]}"))  # type: ignore[arg-type, attr-defined]
    # ... and an adapter target that leaves (unloaded) is forgotten
    gone = idx.get(f"b@{first[len('http://') :]}")
    assert gone is not None
    s.on_remove(gone)
    assert first not in s.lora.slots  # type: ignore[attr-defined]


@pytest.mark.parametrize("s", _strategies(lora_load_s=10.0), ids=lambda s: s.name)  # a slow load: residency matters
def test_a_hot_adapter_spreads_under_bounded_load(s: Strategy) -> None:
    idx = _fleet(s, [_view(i, "hot", max_loras=4, loras_active=1, lora_resident=i == 0) for i in range(6)])
    rng = random.Random(11)
    order: list[str] = []
    for _ in range(60):  # 60 concurrent requests for one adapter, resident on e0 only
        req = RouteRequest(model="hot", prompt_tokens=300, max_tokens=50)
        best = s.rank(idx, req, 1, rng)[0].target
        s.on_routed(best, req)  # the host's routed: booked, then counted in flight
        best.inflight += 1
        s.on_upsert(best, best)
        order.append(best.endpoint)
    picks = Counter(order)
    w = HybridWeights()
    loads = [v.inflight for v in idx]
    mean = sum(loads) / len(loads)
    # locality first: the resident target takes the adapter until its batch is full ...
    assert order[: w.default_concurrency] == ["http://e0"] * w.default_concurrency
    # ... then the hot adapter spreads (each new home loads it once and keeps it), none beyond the bound
    assert len(picks) >= 3
    assert max(loads) <= (1 + w.lora_epsilon) * mean + w.lora_slack + 1
    assert all(s.lora.resident(v) for v in idx if v.inflight)  # type: ignore[attr-defined]
