"""`infermesh sim --config FILE`: run every configured strategy, print a table, write CSV and plots."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from agents.argparsing import Parser, examples
from agents.sim.config import SimConfigError, load_config


def _progress(label: str, stream: Any = sys.stderr) -> Callable[[float, float, int], None]:
    start = time.perf_counter()
    last = [0.0]

    def show(t: float, end: float, events: int) -> None:
        now = time.perf_counter()
        done = min(1.0, t / end) if end > 0 else 1.0
        if done < 1.0 and now - last[0] < 0.5:
            return
        last[0] = now
        elapsed = now - start
        eta = elapsed / done - elapsed if done > 0 else float("inf")
        bar = "#" * int(done * 30)
        eta_s = f"{eta:5.0f}s" if eta != float("inf") else "    ?"
        stream.write(f"\r{label:<24} [{bar:<30}] {done * 100:5.1f}% sim {t:7.1f}s  {events:>10,} events  ETA {eta_s}")
        if done >= 1.0:
            stream.write(f"  done in {elapsed:.1f}s\n")
        stream.flush()

    return show


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SimConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="infermesh sim",
        description=__doc__,
        epilog=examples(
            "infermesh sim --config docs/examples/sim/small.yaml",
            "infermesh sim --config mesh.yaml --strategy hybrid_mesh --set topology.nodes=64",
            "infermesh sim --config mesh.yaml --validate",
        ),
    )
    parser.add_argument("--config", required=True, help="simulation YAML (docs/examples/sim/*.yaml)")
    parser.add_argument("--out", default="", help="output folder (default: sim-out/<config name>)")
    parser.add_argument("--strategy", action="append", default=[], help="run only these (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--no-progress", action="store_true", help="no progress line while it runs")
    parser.add_argument("--validate", action="store_true", help="check the config and exit")
    args = parser.parse_args(list(argv))
    try:
        cfg = load_config(args.config, _parse_set(args.set))
    except SimConfigError as exc:
        print(f"infermesh sim: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.validate:
        print(f"{args.config}: valid ({cfg.topology.nodes} nodes, {len(cfg.routing.strategies)} strategies)")
        return 0
    from agents.sim.core import Simulation
    from agents.sim.report import format_table, summarize, write_outputs

    strategies = args.strategy or cfg.routing.strategies
    results = []
    for spec in strategies:
        try:
            sim = Simulation(cfg, spec, progress=None if args.no_progress else _progress(spec))
        except ValueError as exc:  # an unknown strategy or a plugin that cannot be loaded
            print(f"infermesh sim: routing.strategies: {exc}", file=sys.stderr)
            return 2
        results.append(sim.run())
    out = args.out or f"sim-out/{cfg.name}"
    files = write_outputs(results, out)
    print(format_table([summarize(r) for r in results]))
    for s in (summarize(r) for r in results):
        util = ", ".join(f"{g} busy {u['busy']:.1%}" for g, u in s["utilization"].items())
        print(f"{s['strategy']}: {util}")
    print(f"wrote {len(files)} files to {out}")
    return 0
