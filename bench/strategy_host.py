"""Decision time of the same strategy (least_queue) as a built-in, as a packaged Python strategy and as WebAssembly.

Each side decides through a `StrategyHost` over the same index of 100, 1k and 10k targets, exactly as the router
does (`host.decide`), with a budget large enough that nothing falls back. The packaged strategy is the template in
examples/strategies/python installed with `pip install --target` into a temporary directory and loaded through its
`infermesh.strategies` entry point, so it runs isolated in its own thread as in the router. The WebAssembly one is
examples/strategies/wasm/least_queue.wat under the default fuel and memory caps. Sides alternate in rounds so that a
loaded machine slows each alike; the table prints p50/p99 per side and size, the summary the 1k-target figures.

    .venv/bin/python bench/strategy_host.py [--decisions 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.strategies import LeastQueue, RouteRequest, Strategy, TargetView, load_strategy  # noqa: E402
from agents.strategies.host import StrategyHost  # noqa: E402
from agents.strategies.wasm import wasm_spec_name  # noqa: E402

SIZES = (100, 1000, 10_000)


def build_sides(tmp: Path) -> dict[str, Callable[[], Strategy]]:
    """A factory per side: every host gets fresh instances (strategies keep per-host state)."""
    site = tmp / "site"
    src = tmp / "template"
    shutil.copytree(ROOT / "examples/strategies/python", src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
         str(src)],
        check=True, cwd=src,
    )  # fmt: skip
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    wasm_path = tmp / "least_queue.wasm"
    wasm_path.write_bytes(wasmtime.wat2wasm((ROOT / "examples/strategies/wasm/least_queue.wat").read_text()))
    wasm_spec = wasm_spec_name(wasm_path)
    return {
        "builtin_python": LeastQueue,
        "packaged_python": lambda: load_strategy("example_least_queue"),
        "wasm": lambda: load_strategy(wasm_spec),
    }


def make_host(name: str, strategy: Strategy, n: int, seed: int) -> StrategyHost:
    host = StrategyHost({name: strategy}, default=name, budget_us=1e9, trip_after=10**9, rng=random.Random(seed))
    rng = random.Random(seed)
    for i in range(n):
        host.upsert(
            TargetView(
                f"t{i}", "m", f"n{i % 64}", f"http://10.0.{i // 250}.{i % 250}:8000",
                requests_waiting=float(rng.randrange(0, 20)), requests_running=float(rng.randrange(0, 8)),
                max_concurrency=8, health="healthy",
            )
        )  # fmt: skip
    host.refresh()
    return host


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=3000, help="decisions per side and size, over all rounds")
    ap.add_argument("--rounds", type=int, default=30, help="short interleaved rounds spread a loaded box's stalls")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        sides = build_sides(Path(td))
        samples: dict[tuple[str, int], list[float]] = {}
        hosts = {(name, n): make_host(name, make(), n, seed=n) for n in SIZES for name, make in sides.items()}
        per_round = max(1, args.decisions // args.rounds)
        fallbacks = 0
        for _ in range(args.rounds):
            for n in SIZES:
                for name in sides:
                    host = hosts[(name, n)]
                    out = samples.setdefault((name, n), [])
                    for i in range(per_round):
                        t0 = time.perf_counter()
                        req = RouteRequest("m", request_id=str(i))
                        d = host.decide(req, k=3)
                        out.append((time.perf_counter() - t0) * 1e6)
                        fallbacks += d.fallback
                        if d.best is not None:  # keep the loads moving as a router would
                            host.routed(d, req, d.best.target_id)
                            host.note_finished(d.best.target_id)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'side':16s} {'targets':>8s} {'p50_us':>9s} {'p99_us':>9s}")
    for n in SIZES:
        for name in sides:
            v = samples[(name, n)]
            print(f"{name:16s} {n:8d} {pct(v, 0.5):9.1f} {pct(v, 0.99):9.1f}")
    wasm99 = pct(samples[("wasm", 1000)], 0.99)
    py99 = pct(samples[("builtin_python", 1000)], 0.99)
    pkg99 = pct(samples[("packaged_python", 1000)], 0.99)
    p50_ratio = pct(samples[("wasm", 1000)], 0.5) / pct(samples[("builtin_python", 1000)], 0.5)
    print(
        f"summary: wasm_p99_us_1k={wasm99:.1f} python_p99_us_1k={py99:.1f} packaged_p99_us_1k={pkg99:.1f} "
        f"wasm_overhead_ratio_1k={wasm99 / py99:.2f} wasm_p50_ratio_1k={p50_ratio:.2f} fallbacks={fallbacks}"
    )


if __name__ == "__main__":
    main()
