"""Cell summaries and the spill-over rule, sans-IO: the same code in the gateway agents (what a cell publishes), in
the routers (which cell serves a request) and in `bench/wan_routing.py`.

A summary also carries per model the TTFT a request sent into the cell can expect (`ttft_s`, `expected_ttft`: the
measured TTFT of its best target with a free batch slot, else the fastest one's plus the wait for a slot at the
cell's measured service rate), so a cell that is slow but not full (thermal throttling, a slower GPU) shows as slow.

A cell is saturated for a model when its healthy targets' running + waiting requests reach `spill_at` x their batch
slots: a request sent there would queue behind a full batch, which costs far more than a WAN round trip. It has failed
for a model when no healthy target serves it. A router keeps a request in its own cell unless the cell is saturated
(then the cell with headroom of least RTT plus expected TTFT, else home after all), failed (the cheapest allowed cell
still serving the model by the same cost, headroom first) or outside the tenant's allowed regions (the same, residency
first: a cell outside them is never chosen, whatever its load). With headroom at home, a share of the requests still
leaves when home is slow (`Speed`): when the home cell's expected TTFT exceeds another allowed cell's expected TTFT plus
the round trip to it by more than a margin, a share of the requests that grows with the excess, capped, goes to the
cells that beat home by that margin (spread over them), home as the retry; the rest stays, so the cells moved to are
never handed a whole cell's traffic at once and home keeps measuring its own speed.
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
SPEED_MARGIN, SPEED_MAX_SHARE = 0.2, 0.5  # the speed rule's defaults (router config `cells.speed_*`)

Reason = Literal["home", "saturated", "failed", "residency", "slow"]


def summarize(cell: str, region: str, ingress: str, views: Iterable[TargetView], seq: int = 0) -> wan_pb2.CellSummary:
    """A cell's per-model load from its targets' fused state; at most `MAX_MODELS` models, the busiest first."""
    acc: dict[str, list[float]] = {}  # model -> [targets, healthy, capacity, running, waiting, ttft_p95]
    pace: dict[str, list[float]] = {}  # model -> [best TTFT with a free slot, fastest TTFT, requests ahead, rate]
    for v in views:
        a = acc.setdefault(v.model, [0, 0, 0, 0.0, 0.0, 0.0])
        p = pace.setdefault(v.model, [math.inf, math.inf, 0.0, 0.0])
        a[0] += 1
        if not v.routable or v.health == UNHEALTHY:
            continue
        running, waiting = v.requests_running or 0.0, v.requests_waiting or 0.0
        a[1] += 1
        # a runtime that does not say its batch slots (vLLM) counts as full once it queues, else one slot short of it
        slots = v.max_concurrency or (int(running) if waiting >= 1 and running >= 1 else int(running) + 1)
        a[2] += slots
        a[3] += running
        a[4] += waiting
        a[5] = max(a[5], v.ttft_p95_s or 0.0)
        # what the view's host sent since the runtime's last figures is on its way: it takes a slot or queues
        if waiting > 0:
            waiting += v.inflight
        else:
            running += v.inflight
        ttft = v.ewma_ttft_s or v.ttft_p95_s or 0.0  # the recent TTFT measured there (the runtime's own queue in it)
        free = waiting <= 0 and running + 1 <= slots
        if ttft > 0:
            p[1] = min(p[1], ttft)
            if free:
                p[0] = min(p[0], ttft)
        p[2] += waiting if waiting > 0 else max(0.0, running - slots)
        p[3] += v.service_rate_rps or 0.0
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
            ttft_s=expected_ttft(*pace[m]),
        )
        for m, a in sorted(busiest)
    ]
    return wan_pb2.CellSummary(cell=cell, region=region, ingress=ingress, seq=seq, models=models)


def expected_ttft(free_s: float, fastest_s: float, ahead: float, rate_rps: float) -> float:
    """The TTFT a request sent into a cell can expect (0 = not known): the measured TTFT of the best target with a
    free batch slot (`free_s`; inf: none), where the cell's router sends it; with every slot taken, the fastest
    target's (`fastest_s`) plus the wait for a slot in the cell: the requests `ahead` of it (queued or beyond the
    slots) and itself, over the cell's service rate (requests its targets finish per second, `rate_rps`)."""
    if math.isfinite(free_s):
        return free_s
    if not math.isfinite(fastest_s) or rate_rps <= 0:
        return 0.0
    return fastest_s + (ahead + 1.0) / rate_rps


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
    """A cell as the rule sees it for one model: its place, its distance from the router, its load and expected TTFT
    there."""

    cell: str
    region: str
    rtt_s: float
    load: float  # `load()` of the model there; inf = cannot serve it
    ingress: str = ""
    ttft_s: float = 0.0  # the model's expected TTFT there before the WAN (`ModelLoad.ttft_s`); 0 = not known

    @property
    def cost_s(self) -> float:
        """What a request sent there from the router waits for its first token: the round trip (the request goes,
        the first token comes back) and the cell's expected TTFT."""
        return self.rtt_s + self.ttft_s


@dataclass(frozen=True, slots=True)
class Speed:
    """The speed rule (router config `cells.speed_margin`, `cells.speed_max_share`): with headroom at home, requests
    leave a cell whose expected TTFT exceeds another cell's cost (`CellOption.cost_s`) by more than `margin` of that
    cost. The share that leaves is the excess beyond the margin as a fraction of the other cell's cost, at most
    `max_share`: none at the margin (no flapping around it; each router's draw makes the split), rising as home
    slows, and never the whole cell's traffic (the cells it goes to are not swamped, home keeps measuring itself).
    `max_share` 0 turns the rule off."""

    margin: float = SPEED_MARGIN
    max_share: float = SPEED_MAX_SHARE

    def share(self, home_ttft_s: float, cost_s: float) -> float:
        """The share of a home cell's requests that go to a cell of cost `cost_s` (both > 0), for speed alone."""
        excess = home_ttft_s - cost_s * (1.0 + self.margin)
        if excess <= 0 or cost_s <= 0:
            return 0.0
        return min(self.max_share, excess / cost_s)


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
    home: CellOption,
    remotes: Sequence[CellOption],
    regions: frozenset[str] | None,
    spill_at: float = 1.0,
    speed: Speed | None = None,
    draw: float = 1.0,
) -> Choice:
    """The cells to try for one request, best first (see the module's docstring). Other cells rank by their cost
    (`CellOption.cost_s`: RTT plus expected TTFT; by RTT alone where no TTFT is known), so a cell spilled to is not
    a slow one when a fast one is as near. `draw`, uniform in [0, 1) per request, decides the speed rule's split
    (1.0: stay)."""
    near = sorted(
        (c for c in remotes if allowed(c.region, regions) and math.isfinite(c.load)),
        key=lambda c: (c.cost_s, c.rtt_s, c.cell),
    )
    roomy = [c for c in near if c.load < spill_at]
    if not allowed(home.region, regions):
        return Choice(tuple(roomy + [c for c in near if c not in roomy]), "residency")
    if not math.isfinite(home.load):
        return Choice(tuple(roomy + [c for c in near if c not in roomy]), "failed")
    if not roomy:
        return Choice((home,), "home")
    if home.load >= spill_at:
        return Choice((roomy[0], home), "saturated")
    if speed is not None and speed.max_share > 0 and home.ttft_s > 0:
        faster = sorted(
            (c for c in roomy if c.ttft_s > 0 and speed.share(home.ttft_s, c.cost_s) > 0),
            key=lambda c: (c.cost_s, c.cell),
        )
        if faster:
            share = speed.share(home.ttft_s, faster[0].cost_s)  # the best one's: the most that leaves
            if draw < share:  # spread over the cells that beat home by the margin, not all onto the best
                return Choice((faster[min(int(draw / share * len(faster)), len(faster) - 1)], home), "slow")
    return Choice((home,), "home")
