"""Cell summaries and the spill-over rule, sans-IO: the same code in the gateway agents (what a cell publishes), in
the routers (which cell serves a request) and in `bench/wan_routing.py`.

A cell is saturated for a model when its healthy targets' running + waiting requests reach `spill_at` x their batch
slots: a request sent there would queue behind a full batch, which costs far more than a WAN round trip. It has
failed for a model when no healthy target serves it. A router keeps a request in its own cell unless the cell is
saturated (then the nearest cell by measured RTT with headroom, else home after all), failed (the nearest allowed
cell still serving the model, headroom first) or outside the tenant's allowed regions (the same, residency first:
a cell outside them is never chosen, whatever its load).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from agents.proto.infermesh.v1 import wan_pb2
from agents.strategies.base import UNHEALTHY, TargetView

MAX_MODELS = 64  # a summary's bound: one datagram, whatever the catalog
DEFAULT_CELL = "default"  # the cell of an agent whose config names none: a single-cell mesh needs no setting

Reason = Literal["home", "saturated", "failed", "residency"]


def summarize(cell: str, region: str, ingress: str, views: Iterable[TargetView], seq: int = 0) -> wan_pb2.CellSummary:
    """A cell's per-model load from its targets' fused state; at most `MAX_MODELS` models, the busiest first."""
    acc: dict[str, list[float]] = {}  # model -> [targets, healthy, capacity, running, waiting, ttft_p95]
    for v in views:
        a = acc.setdefault(v.model, [0, 0, 0, 0.0, 0.0, 0.0])
        a[0] += 1
        if not v.routable or v.health == UNHEALTHY:
            continue
        running, waiting = v.requests_running or 0.0, v.requests_waiting or 0.0
        a[1] += 1
        # a runtime that does not say its batch slots (vLLM) counts as full once it queues, else one slot short of it
        a[2] += v.max_concurrency or (int(running) if waiting >= 1 and running >= 1 else int(running) + 1)
        a[3] += running
        a[4] += waiting
        a[5] = max(a[5], v.ttft_p95_s or 0.0)
    busiest = sorted(acc.items(), key=lambda kv: (-(kv[1][3] + kv[1][4]), kv[0]))[:MAX_MODELS]
    models = [
        wan_pb2.ModelLoad(
            model=m,
            targets=int(a[0]),
            healthy=int(a[1]),
            capacity=int(a[2]),
            running=a[3],
            waiting=a[4],
            ttft_p95_s=a[5],
        )
        for m, a in sorted(busiest)
    ]
    return wan_pb2.CellSummary(cell=cell, region=region, ingress=ingress, seq=seq, models=models)


def load(m: wan_pb2.ModelLoad | None) -> float:
    """Requests in the cell per batch slot (running + waiting over capacity); infinite when nothing healthy serves."""
    if m is None or m.healthy == 0 or m.capacity == 0:
        return math.inf
    return (m.running + m.waiting) / m.capacity


def model_load(summary: wan_pb2.CellSummary, model: str) -> wan_pb2.ModelLoad | None:
    for m in summary.models:
        if m.model == model:
            return m
    return None


@dataclass(frozen=True, slots=True)
class CellOption:
    """A cell as the rule sees it for one model: its place, its distance from the router, its load there."""

    cell: str
    region: str
    rtt_s: float
    load: float  # `load()` of the model there; inf = cannot serve it
    ingress: str = ""


@dataclass(frozen=True, slots=True)
class Choice:
    """Where a request goes: `order` best first (empty: no allowed cell can serve it) and why it left home."""

    order: tuple[CellOption, ...]
    reason: Reason

    @property
    def spilled(self) -> bool:
        return self.reason != "home"


def allowed(region: str, regions: frozenset[str] | None) -> bool:
    """Whether a tenant whose residency is `regions` (None: anywhere) may be served in `region`."""
    return regions is None or region in regions


def choose(
    home: CellOption, remotes: Sequence[CellOption], regions: frozenset[str] | None, spill_at: float = 1.0
) -> Choice:
    """The cells to try for one request, best first (see the module's docstring)."""
    near = sorted(
        (c for c in remotes if allowed(c.region, regions) and math.isfinite(c.load)), key=lambda c: (c.rtt_s, c.cell)
    )
    roomy = [c for c in near if c.load < spill_at]
    if not allowed(home.region, regions):
        return Choice(tuple(roomy + [c for c in near if c not in roomy]), "residency")
    if not math.isfinite(home.load):
        return Choice(tuple(roomy + [c for c in near if c not in roomy]), "failed")
    if home.load < spill_at or not roomy:
        return Choice((home,), "home")
    return Choice((roomy[0], home), "saturated")
