"""Cell-aware routing across a WAN against one global hybrid_mesh mesh and a router that ignores the network.

The fleet, the workload, signal staleness and the runtimes are the mesh simulator's (`agents/sim`): four cells of
eight H100 nodes (16 batch slots each) in two regions, bursty traffic (MMPP 220/420 req/s) entering at every cell's
router, remote cells' state 50-200 ms stale. The RTT between two cells is injected (1, 30 or 80 ms; 0.5 ms inside a
cell) and the routers see it as measured. Three routers rank the same fleet:

- **cell-aware**: the rule of `agents/wan/cells.py` (own cell unless saturated or failed, then the cell with headroom of
  least RTT plus expected TTFT; a share of the requests to a cell with headroom whose RTT plus expected TTFT home's
  expected TTFT exceeds by the speed rule's margin; never outside the tenant's regions; each cell's load and expected
  TTFT from the same `summarize` the WAN gateways publish, the speed rule with the router's default `cells.speed_*`),
  then hybrid_mesh inside the chosen cell;
- **global hybrid_mesh**: one mesh, every target ranked by hybrid_mesh with its network term (the RTT);
- **network-blind**: hybrid_mesh with the network term at zero (any target anywhere, by predicted wait alone).

Two scenarios: `bursts` (the summary's main figures) and `cell 0 throttled` (its nodes at half speed for the middle
third: slower, not fuller; reported beside, the case the speed rule is for). A tenant restricted to
region 0 sends 1 request in 100; a cross-region violation is a ranked target (first choice or retry) of such a
request outside region 0. Each p99 TTFT is over every completed request of its run (counts in the table).

    python bench/wan_routing.py [--duration 60] [--seed 7]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.sim.config import parse_config
from agents.sim.core import Simulation
from agents.strategies.base import RouteRequest, Scored, Strategy, TargetIndex, TargetView
from agents.strategies.builtins import HybridMesh
from agents.wan.cells import CellOption, Speed, choose, load, summarize

CELLS, REGIONS, NODES = 4, 2, 8
RESIDENT_TENANT = "0"  # of 100 tenants: restricted to region 0
RESIDENCY = {RESIDENT_TENANT: frozenset({"r0"})}
SCENARIOS = ("bursts", "cell 0 throttled")


def cell_of(node: str) -> int:
    return int(node[1 : node.index("-")])  # "c2-n5", "c2-router"


def region_of(cell: int) -> str:
    return f"r{cell * REGIONS // CELLS}"


class Violations:
    def __init__(self) -> None:
        self.restricted = 0
        self.crossed = 0


class Counted(Strategy):
    """Counts ranked targets outside a restricted tenant's regions (the cross-region violations)."""

    def __init__(self, inner: Strategy, v: Violations) -> None:
        self.inner, self.v = inner, v
        self.name = inner.name  # type: ignore[misc]
        for attr in ("observe_outcome", "predicted_ttft", "prediction_trusted", "set_rtt"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))

    def on_upsert(self, view: TargetView, previous: TargetView | None) -> None:
        self.inner.on_upsert(view, previous)

    def on_remove(self, view: TargetView) -> None:
        self.inner.on_remove(view)

    def refresh(self, index: TargetIndex) -> None:
        self.inner.refresh(index)

    def on_routed(self, view: TargetView, request: RouteRequest) -> None:
        self.inner.on_routed(view, request)

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        ranked = self.inner.rank(index, request, k, rng)
        regions = RESIDENCY.get(request.tenant)
        if regions is not None:
            self.v.restricted += 1
            self.v.crossed += sum(region_of(cell_of(s.target.node)) not in regions for s in ranked)
        return ranked


class NetworkBlind(HybridMesh):
    name = "hybrid_mesh_network_blind"

    def set_rtt(self, rtt: Any) -> None:
        super().set_rtt(lambda src, dst: 0.0)


class CellAware(Strategy):
    """The routers' cell rule (agents/wan/cells.py) over hybrid_mesh: a cell first, then a target inside it."""

    name = "cell_aware"

    def __init__(self, spill_at: float = 1.0, speed: Speed | None = None, seed: int = 0) -> None:
        self.inner = HybridMesh()
        self.spill_at = spill_at
        self.speed = speed if speed is not None else Speed()  # the router's defaults (router/config.py)
        self.draws = random.Random(seed)  # the speed rule's split, one draw per decision as a router makes it
        self.cells: list[dict[str, TargetView]] = [{} for _ in range(CELLS)]
        self.rtt: Callable[[str, str], float] = lambda a, b: 0.0
        self.observe_outcome = self.inner.observe_outcome
        self.predicted_ttft = self.inner.predicted_ttft
        self.prediction_trusted = self.inner.prediction_trusted

    def set_rtt(self, rtt: Callable[[str, str], float] | None) -> None:
        self.inner.set_rtt(rtt)
        self.rtt = rtt or self.rtt

    def on_upsert(self, view: TargetView, previous: TargetView | None) -> None:
        self.cells[cell_of(view.node)][view.target_id] = view
        self.inner.on_upsert(view, previous)

    def on_remove(self, view: TargetView) -> None:
        self.cells[cell_of(view.node)].pop(view.target_id, None)
        self.inner.on_remove(view)

    def refresh(self, index: TargetIndex) -> None:
        self.inner.refresh(index)

    def on_routed(self, view: TargetView, request: RouteRequest) -> None:
        self.inner.on_routed(view, request)

    def _option(self, cell: int, home: str, model: str) -> CellOption:
        s = summarize(str(cell), region_of(cell), "", self.cells[cell].values())
        m = next((x for x in s.models if x.model == model), None)
        rtt = self.rtt(home, f"c{cell}-router")
        return CellOption(str(cell), region_of(cell), rtt, load(m), "", m.ttft_s if m is not None else 0.0)

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        home = cell_of(request.client_node)
        opts = [self._option(c, request.client_node, request.model) for c in range(CELLS)]
        choice = choose(opts[home], [o for i, o in enumerate(opts) if i != home],
                        RESIDENCY.get(request.tenant), self.spill_at, self.speed, self.draws.random())  # fmt: skip
        order = {int(o.cell): i for i, o in enumerate(choice.order)}
        if not order:
            return []
        everyone = self.inner.rank(index, request, len(index.candidates(request.model)), rng)
        inside = [s for s in everyone if cell_of(s.target.node) in order]
        inside.sort(key=lambda s: order[cell_of(s.target.node)])  # stable: hybrid_mesh's order inside a cell
        return inside[:k]


def config(duration: float, seed: int, scenario: str) -> Any:
    # the throttled cell runs at half speed for the middle third: its load per slot stays below 1, its TTFT doubles
    faults = [{"kind": "throttle", "at_s": duration / 3, "duration_s": duration / 3, "cell": 0, "fraction": 1.0,
               "factor": 0.5}] if scenario != "bursts" else []  # fmt: skip
    return parse_config(
        {
            "name": "wan",
            "seed": seed,
            "duration_s": duration,
            "drain_s": 30,
            "topology": {
                "regions": REGIONS,
                "cells": CELLS,
                "nodes_per_cell": NODES,
                "max_num_seqs": 16,
                "gpus": [{"type": "h100", "share": 1.0}],
            },
            "network": {"vivaldi_rounds": 0},
            "workload": {
                "arrival": {"kind": "mmpp", "rates_rps": [220, 420], "dwell_s": [8, 3]},
                "tenants": {"count": 100},
            },
            "signals": {"inter_cell_ms": {"min": 50, "max": 200}},
            "routing": {"strategies": ["hybrid_mesh"], "view": "full", "k": 2, "retries": 2},
            "faults": faults,
        }
    )  # fmt: skip


def run(scenario: str, name: str, rtt_ms: float, duration: float, seed: int) -> dict[str, Any]:
    v = Violations()
    makers: dict[str, Callable[[], Strategy]] = {
        "cell-aware": CellAware,
        "global hybrid_mesh": HybridMesh,
        "network-blind": NetworkBlind,
    }
    cfg = config(duration, seed, scenario)
    sim = Simulation(cfg, "hybrid_mesh", strategy_factory=lambda _: Counted(makers[name](), v))
    inter, intra = rtt_ms / 1000.0, 0.0005
    matrix = [[intra if i == j else inter for j in range(CELLS)] for i in range(CELLS)]
    # injected, seen as measured: the tables are filled in place (the simulation's RTT estimate holds them)
    for table in (sim.topo.rtt_true, sim.topo.rtt_est):
        for row, injected in zip(table, matrix, strict=True):
            row[:] = injected
    res = sim.run()
    ttft = sorted(res.rec.ttft)
    n = len(ttft)
    hops = sum(res.rec.cell_hop)
    return {
        "scenario": scenario,
        "router": name,
        "rtt_ms": rtt_ms,
        "requests": n,
        "p50": ttft[n // 2] if n else math.nan,
        "p99": ttft[min(n - 1, int(n * 0.99))] if n else math.nan,
        "cross_cell": hops / n if n else 0.0,
        "failed": res.failed + res.unfinished,
        "restricted": v.restricted,
        "violations": v.crossed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="simulated seconds of traffic per run")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    rtts = (1.0, 30.0, 80.0)
    routers = ("cell-aware", "global hybrid_mesh", "network-blind")
    rows = [run(sc, name, rtt, args.duration, args.seed) for sc in SCENARIOS for rtt in rtts for name in routers]
    print(f"{'scenario':<17} {'rtt':>6} {'router':<19} {'requests':>8} {'p50 ttft':>9} {'p99 ttft':>9} "
          f"{'cross-cell':>10} {'failed':>6} {'restricted':>10} {'violations':>10}")  # fmt: skip
    for r in rows:
        print(f"{r['scenario']:<17} {r['rtt_ms']:>4.0f}ms {r['router']:<19} {r['requests']:>8} "
              f"{r['p50'] * 1000:>7.1f}ms {r['p99'] * 1000:>7.1f}ms {r['cross_cell']:>9.1%} {r['failed']:>6} "
              f"{r['restricted']:>10} {r['violations']:>10}")  # fmt: skip
    by = {(r["scenario"], r["rtt_ms"], r["router"]): r for r in rows}
    print()
    ratios: dict[str, tuple[list[str], list[str]]] = {}
    for sc in SCENARIOS:
        g_parts, b_parts = ratios.setdefault(sc, ([], []))
        for rtt in rtts:
            cell = by[(sc, rtt, "cell-aware")]["p99"]
            g, b = cell / by[(sc, rtt, "global hybrid_mesh")]["p99"], cell / by[(sc, rtt, "network-blind")]["p99"]
            print(f"{sc:<17} rtt {rtt:>2.0f} ms: cell-aware p99 TTFT = {g:.2f}x global hybrid_mesh, "
                  f"{b:.2f}x network-blind")  # fmt: skip
            g_parts.append(f"{rtt:g}ms:{g:.2f}")
            b_parts.append(f"{rtt:g}ms:{b:.2f}")
    violations = sum(r["violations"] for r in rows if r["router"] == "cell-aware")
    print(f"({time.monotonic() - t0:.0f} s wall; each p99 over its run's completed requests, counts in the table)")
    g_main, b_main = ratios[SCENARIOS[0]]
    g_thr, b_thr = ratios[SCENARIOS[1]]
    print(f"summary: p99_ttft_ratio_vs_global={','.join(g_main)} p99_ttft_ratio_vs_network_blind={','.join(b_main)} "
          f"cross_region_violations={violations} throttled_p99_ttft_ratio_vs_global={','.join(g_thr)} "
          f"throttled_p99_ttft_ratio_vs_network_blind={','.join(b_thr)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
