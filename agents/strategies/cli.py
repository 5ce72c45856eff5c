"""`infermesh strategy test FILE --snapshot SNAP`: run a strategy offline against a recorded target snapshot (from
`infermesh ctl snapshot`) and print its ranking and its decision times, under the same host, budget and fallback
as a router.

FILE is a WebAssembly module (`.wasm`, or `.wat` text, compiled here), a Python file holding one `Strategy` subclass
(`--class` picks one of several), or any name a routing policy takes (a built-in, an installed package's strategy,
`package.module:Class`, `wasm:PATH#sha256=...`). Exit codes: 0 done, 1 the strategy was refused at load, 2 bad
arguments or an unreadable file or snapshot, 3 the snapshot has no target of the model.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.argparsing import Parser, examples


class InputError(Exception):
    """Bad arguments or unreadable input (exit 2)."""


def load_snapshot(path: Path) -> list[Any]:
    """The targets of a snapshot file as strategy views."""
    from google.protobuf.json_format import ParseDict, ParseError

    from agents.ctl.strategies import SNAPSHOT_FORMAT, SNAPSHOT_VERSION
    from agents.proto.infermesh.v1 import state_pb2
    from agents.strategies.base import TargetView

    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"--snapshot {path}: cannot read it: {exc.strerror}") from exc
    except ValueError as exc:
        raise InputError(f"--snapshot {path}: not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
        raise InputError(f"--snapshot {path}: not a target snapshot (record one with `infermesh ctl snapshot`)")
    if doc.get("version") != SNAPSHOT_VERSION:
        raise InputError(
            f"--snapshot {path}: snapshot version {doc.get('version')!r}; this build reads version {SNAPSHOT_VERSION}"
        )
    views = []
    for i, item in enumerate(doc.get("targets") or []):
        try:
            msg = ParseDict(item, state_pb2.TargetState(), ignore_unknown_fields=True)
        except ParseError as exc:
            raise InputError(f"--snapshot {path}: target #{i} is malformed: {exc}") from exc
        views.append(TargetView.from_proto(msg))
    return views


def _python_file(path: Path, class_name: str) -> Any:
    from agents.strategies.base import Strategy
    from agents.strategies.plugins import Isolated, check_api_version

    spec = importlib.util.spec_from_file_location(f"infermesh_strategy_test_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise InputError(f"{path}: cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: report what it raised
        raise ValueError(f"{path} raised {exc!r} on import") from exc
    found = {
        name: cls
        for name, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Strategy) and cls is not Strategy and cls.__module__ == module.__name__
        and not inspect.isabstract(cls)
    }  # fmt: skip
    if class_name:
        if class_name not in found:
            raise InputError(f"{path}: no Strategy subclass {class_name!r} (it has {sorted(found) or 'none'})")
        cls = found[class_name]
    elif len(found) != 1:
        what = f"{len(found)} ({', '.join(sorted(found))})" if found else "none"
        raise InputError(f"{path}: defines {what} Strategy subclasses; name one with --class")
    else:
        cls = next(iter(found.values()))
    if hasattr(cls, "api_version"):
        check_api_version(f"{path}:{cls.__name__}", cls.api_version)
    return Isolated(cls())


def load(target: str, args: argparse.Namespace, workdir: Path) -> tuple[str, Any]:
    """(name, strategy) for FILE or a strategy name; ValueError when the strategy itself is refused."""
    from agents.strategies import load_strategy
    from agents.strategies.plugins import isolate

    path = Path(target)
    suffix = path.suffix.lower()
    if suffix in (".wasm", ".wat", ".py") and not path.is_file():
        raise InputError(f"{target}: no such file")
    if suffix in (".wasm", ".wat"):
        from agents.strategies.wasm import wasm_spec_name

        if suffix == ".wat":
            import wasmtime

            try:
                data = wasmtime.wat2wasm(path.read_text())
            except wasmtime.WasmtimeError as exc:
                raise ValueError(f"{path}: not valid WebAssembly text: {exc}") from exc
            path = workdir / (path.stem + ".wasm")
            path.write_bytes(data)
        spec = wasm_spec_name(path, fuel=args.fuel, memory_mb=args.memory_mb)
        return target, load_strategy(spec)
    if suffix == ".py":
        s = _python_file(path, args.class_name)
        return s.name or path.stem, s
    return target, isolate(load_strategy(target))


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def run_test(args: argparse.Namespace) -> int:
    from agents.strategies.base import RouteRequest
    from agents.strategies.host import StrategyHost, StrategyStats

    snap = Path(args.snapshot)
    views = load_snapshot(snap)
    if args.runs < 1 or args.top < 1:
        raise InputError("--runs and --top must be at least 1")
    with tempfile.TemporaryDirectory(prefix="infermesh-strategy-") as tmp:
        try:
            name, strategy = load(args.file, args, Path(tmp))
        except InputError:
            raise
        except ValueError as exc:
            print(f"strategy test: refused at load: {exc}", file=sys.stderr)
            return 1
        host = StrategyHost(
            {name: strategy}, default=name, budget_us=args.budget_us, rng=random.Random(args.seed), trip_after=10**9
        )
        for v in views:
            host.upsert(v)
        host.refresh()
        models: dict[str, int] = {}
        for v in views:
            models[v.model] = models.get(v.model, 0) + 1
        model = args.model or (max(models, key=lambda m: models[m]) if models else "")
        if not models.get(model):
            known = ", ".join(f"{m} ({n})" for m, n in sorted(models.items())) or "none"
            print(f"strategy test: the snapshot has no target of model {model!r}; it has: {known}", file=sys.stderr)
            return 3
        # one untimed decision first: a module's first call pays for page faults and lazy set-up
        host.decide(RouteRequest(model=model, request_id="warm-up"), k=args.top)
        host.stats[name] = StrategyStats()
        times: list[float] = []
        first = None
        for i in range(args.runs):
            req = RouteRequest(
                model=model, prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens, request_id=f"test-{i}"
            )
            d = host.decide(req, k=args.top, explain=first is None)
            times.append(d.decision_us)
            if first is None:
                first = d
    assert first is not None
    times.sort()
    stats = host.stats[name]
    doc = {
        "strategy": name,
        "model": model,
        "targets": models[model],
        "decided_by": first.strategy,
        "fallback_reason": first.fallback_reason,
        "ranking": [
            {
                "rank": i,
                "target": s.target.target_id,
                "node": s.target.node,
                "score": s.score,
                "terms": s.terms or {},
            }
            for i, s in enumerate(first.ranked, 1)
        ],
        "decisions": args.runs,
        "budget_us": args.budget_us,
        "decision_us": {
            "p50": round(_pct(times, 0.5), 2),
            "p99": round(_pct(times, 0.99), 2),
            "max": round(times[-1], 2),
            "mean": round(sum(times) / len(times), 2),
        },
        "fallbacks": dict(stats.fallbacks),
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    note = f" (fell back: {first.fallback_reason})" if first.fallback_reason else ""
    print(f"{name} on {model} ({models[model]} targets of {len(views)} in {snap}){note}")
    print(f"{'rank':<5} {'target':<28} {'node':<16} {'score':>12}  terms")
    for row in doc["ranking"]:
        terms = " ".join(f"{k}={v:.3g}" for k, v in sorted(row["terms"].items()))
        print(f"{row['rank']:<5} {row['target']:<28} {row['node']:<16} {row['score']:>12.6g}  {terms}")
    dt = doc["decision_us"]
    fb = " ".join(f"{k}={v}" for k, v in sorted(stats.fallbacks.items())) or "none"
    print(
        f"decision time over {args.runs} decisions: p50 {dt['p50']} us, p99 {dt['p99']} us, max {dt['max']} us "
        f"(budget {args.budget_us:g} us); fallbacks: {fb}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="infermesh strategy",
        description="Develop and check routing strategies offline.",
        epilog=examples(
            "infermesh ctl snapshot --out targets.json",
            "infermesh strategy test examples/strategies/wasm/least_queue.wat --snapshot targets.json",
            "infermesh strategy test my_strategy.py --snapshot targets.json --model demo-llm --runs 10000 --json",
            "infermesh strategy test least_queue --snapshot targets.json    # a built-in, for comparison",
        ),
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = sub.add_parser("test", help="rank a snapshot's targets with a strategy and time its decisions")
    p.add_argument("file", metavar="FILE", help=".wasm / .wat module, .py file, or a strategy name")
    p.add_argument("--snapshot", required=True, metavar="SNAP", help="targets recorded by `infermesh ctl snapshot`")
    p.add_argument("--model", default="", help="model to route (default: the snapshot's model with most targets)")
    p.add_argument("--prompt-tokens", type=int, default=0, help="prompt length of the test request")
    p.add_argument("--max-tokens", type=int, default=0, help="output tokens of the test request")
    p.add_argument("--top", type=int, default=5, help="targets to rank")
    p.add_argument("--runs", type=int, default=1000, help="decisions to time")
    p.add_argument("--budget-us", type=float, default=1000.0, help="decision budget, as a router's")
    p.add_argument("--class", dest="class_name", default="", help="the Strategy subclass of a .py file")
    p.add_argument("--fuel", type=int, default=200_000, help="fuel per call of a WebAssembly module")
    p.add_argument("--memory-mb", type=int, default=16, help="memory cap of a WebAssembly module")
    p.add_argument("--seed", type=int, default=1, help="random seed of the sampling")
    p.add_argument("--json", action="store_true", help="the result as JSON")
    p.set_defaults(func=run_test)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        rc: int = args.func(args)
    except InputError as exc:
        print(f"strategy test: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
