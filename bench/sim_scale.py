"""Mesh simulator at scale: run time and peak memory for 512, 8,192 and 131,072 nodes, the strategy comparison on
the small configuration, and the simulator against real processes on the same fleet and trace.

    .venv/bin/python bench/sim_scale.py [--scale-strategy hybrid_mesh] [--mid-duration 600] [--large-duration 1800]
        [--parts compare,scale,real] [--real-duration 30]

Every simulation runs in its own process (peak memory is that process's maximum RSS; CPU seconds are its own, so
they do not depend on what else loads the machine, while wall seconds do). Parts:

1. strategy comparison: docs/examples/sim/small.yaml (512 nodes, 800 req/s, 300 s) with baseline_rr, least_queue
   and hybrid_mesh; the summary's ratio is hybrid_mesh's p99 TTFT over baseline_rr's (the e2e ratio is printed too);
2. scale: small (512 nodes), medium widened to 32 cells (8,192 nodes) and large (131,072 nodes) with one strategy;
3. sim vs real: 8 emulated runtimes (the fleet of bench/routing_quality.py), a real agent and router (hybrid_mesh),
   one slice of the Azure trace replayed through them; then the same requests, fleet and batch size through the
   simulator, once at the timing model's speed and once slowed by the measured / modelled fleet capacity (the
   emulators on a loaded machine run slower than their model); the error of p50/p99 TTFT and of throughput.

The summary line: small_hybrid_p99_ratio_vs_rr, small_run_s (CPU seconds of the hybrid_mesh run), large_run_s,
large_peak_mb, sim_vs_real_p99_error (relative error of p99 TTFT, calibrated run), with more keys after them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXAMPLES = ROOT / "docs" / "examples" / "sim"


def worker(config: str, strategy: str, overrides: dict[str, Any]) -> None:
    from agents.sim.config import load_config
    from agents.sim.core import Simulation
    from agents.sim.report import summarize

    cpu0, wall0 = time.process_time(), time.perf_counter()
    cfg = load_config(config, overrides)
    sim = Simulation(cfg, strategy)
    built_cpu = time.process_time() - cpu0
    result = sim.run()
    s = summarize(result)
    rec = result.rec
    s.update(
        makespan_s=max((a + b for a, b in zip(rec.t0, rec.e2e, strict=True)), default=0.0),
        ttft_mean_ms=1e3 * sum(rec.ttft) / max(1, len(rec.ttft)),
        cpu_s=time.process_time() - cpu0,
        build_cpu_s=built_cpu,
        wall_total_s=time.perf_counter() - wall0,
        peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        nodes=cfg.topology.nodes,
        routers=result.routers,
        view=result.view,
        tracked_per_router=result.tracked_per_router,
        duration_s=cfg.duration_s,
    )
    print("RESULT " + json.dumps(s))


def run_sim(config: Path | str, strategy: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", str(config), strategy, json.dumps(overrides or {})]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"simulation {config} {strategy} failed:\n{out.stderr[-3000:]}")


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(x, widths, strict=True)) for x in cells]
    return "\n".join(lines)


# -- sim vs real ---------------------------------------------------------------------------------------------------
def sim_vs_real(duration: float, load: float, max_num_seqs: int) -> dict[str, float]:
    """Real: 8 emulators + agent + router (hybrid_mesh) replaying a trace slice; then the simulator on the same
    requests. Returns the real and simulated figures and the relative errors."""
    sys.path.insert(0, str(ROOT / "bench"))
    import router_overhead as ro
    import routing_quality as rq  # the real-process harness of the routing benchmark
    import uvloop

    wait_http = ro.wait_http
    ro.wait_http = lambda url, timeout=300.0: wait_http(url, timeout)  # a loaded machine starts processes slowly
    rows = rq.load_trace(rq.TRACES["conv"])
    mean_ctx = sum(r[1] for r in rows) / len(rows)
    mean_gen = sum(r[2] for r in rows) / len(rows)
    real: dict[str, float] = {}
    with ro.procs() as ps:
        emus = [
            ro.start_emulator(
                ps, f"emu{i}", "--profile", p, "--model", "demo-llm", "--seed", str(i),
                "--max-num-seqs", str(max_num_seqs), "--max-model-len", "16384",
            )
            for i, p in enumerate(rq.FLEET)
        ]  # fmt: skip
        cap = uvloop.run(rq.measure_capacity(emus, max_num_seqs, int(mean_ctx), int(mean_gen), 10.0))
        rate = load * cap
        reqs = rq.schedule(rows, rate, duration, 16384)
        agent = rq.start_agent(ps, emus)
        cfg = ro.router_cfg([], "hybrid_mesh")
        cfg["agent"] = {"address": agent}
        url = ro.start_router(ps, cfg, name="hybrid_mesh")
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if httpx.get(url + "/healthz").json()["targets"]["agent"] == len(rq.FLEET):
                break
            time.sleep(0.5)
        results, wall = uvloop.run(rq.replay(url, reqs, "demo-llm"))
        # the runtimes' own TTFT (arrival at the engine to its first token), against the client's
        engine_sum = engine_n = 0.0
        for u in emus:
            for line in httpx.get(u + "/metrics", timeout=10).text.splitlines():
                if line.startswith("vllm:time_to_first_token_seconds_sum"):
                    engine_sum += float(line.rsplit(" ", 1)[1])
                elif line.startswith("vllm:time_to_first_token_seconds_count"):
                    engine_n += float(line.rsplit(" ", 1)[1])
        ok = [r for r in results if r.ok]
        real = {
            "ttft_p50_ms": rq.pct([r.ttft for r in ok], 0.5) * 1e3,
            "ttft_p99_ms": rq.pct([r.ttft for r in ok], 0.99) * 1e3,
            "ttft_mean_ms": 1e3 * sum(r.ttft for r in ok) / max(1, len(ok)),
            "engine_ttft_mean_ms": 1e3 * engine_sum / max(1.0, engine_n),
            "throughput_rps": len(ok) / wall,
            "ok": len(ok),
            "requests": len(reqs),
            "rate_rps": rate,
            "capacity_rps": cap,
        }
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "slice.csv"
        with trace.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["arrival_s", "prompt_tokens", "output_tokens"])
            for r in reqs:
                w.writerow([f"{r.at:.6f}", r.ctx, r.gen])
        # the fleet of routing_quality: 2 h100, 2 a100, 2 l40s, one 3g.40gb slice of an h100 and one of an a100
        fleet = [
            {"type": "h100", "share": 0.25}, {"type": "a100", "share": 0.25}, {"type": "l40s", "share": 0.25},
            {"type": "h100", "mig": "3g.40gb", "share": 0.125}, {"type": "a100", "mig": "3g.40gb", "share": 0.125},
        ]  # fmt: skip
        span = reqs[-1].at + 1e-3
        cfg_data = {
            "name": "sim-vs-real",
            "seed": 1,
            "duration_s": span,
            "drain_s": 300,
            "topology": {"cells": 1, "nodes_per_cell": 8, "max_num_seqs": max_num_seqs, "gpus": fleet},
            "network": {"intra_cell_rtt": {"mean_ms": 0.1, "std_ms": 0.02}, "vivaldi_rounds": 0},
            "workload": {
                "arrival": {"kind": "trace", "path": str(trace), "loop": False},
                "max_prompt_tokens": 16384,
                "max_output_tokens": 4096,
            },
            # the agent scrapes runtimes every 0.5 s and streams to its router at once; the emulators' vLLM metrics
            # do not say their batch slots, so the router learns them (and the strategy goes without)
            "signals": {
                "publish_ms": {"min": 500, "max": 500},
                "intra_cell_ms": {"min": 1, "max": 5},
                "report_max_concurrency": False,
            },
            "routing": {"strategies": ["hybrid_mesh"], "k": 2, "retries": 2, "refresh_ms": 200},
            "output": {"plots": False},
        }
        import yaml

        cfg_path = Path(tmp) / "sim.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg_data))
        raw = run_sim(cfg_path, "hybrid_mesh")
        # The emulators on this shared machine run slower than their timing model; the calibrated run slows the
        # simulated fleet by the measured / modelled capacity ratio (a throttle over the whole run).
        model_cap = sum(rq.capacity_rps(p, max_num_seqs, mean_ctx, mean_gen) for p in rq.FLEET)
        speed = min(1.0, real["capacity_rps"] / model_cap)
        if speed < 1.0:
            cfg_data["faults"] = [
                {"kind": "throttle", "at_s": 0, "duration_s": span + 400, "fraction": 1.0, "factor": max(speed, 0.01)}
            ]
            cfg_path.write_text(yaml.safe_dump(cfg_data))
            cal = run_sim(cfg_path, "hybrid_mesh")
        else:
            # the emulators kept up with their model: a throttle of 1.0 would change nothing but the order of
            # same-time events, which alone moves a 200-request p50 by 20 ms, so the calibrated run is the raw one
            cal = raw
    out = {f"real_{k}": v for k, v in real.items()}
    out["model_capacity_rps"] = model_cap
    out["speed"] = speed
    for tag, sim in (("raw", raw), ("cal", cal)):
        sim_tp = sim["completed"] / sim["makespan_s"]  # as the real side: answers / (first arrival .. last answer)
        out[f"{tag}_ttft_p50_ms"] = sim["ttft_p50_ms"]
        out[f"{tag}_ttft_p99_ms"] = sim["ttft_p99_ms"]
        out[f"{tag}_ttft_mean_ms"] = sim["ttft_mean_ms"]
        out[f"{tag}_mean_error"] = abs(sim["ttft_mean_ms"] - real["ttft_mean_ms"]) / real["ttft_mean_ms"]
        out[f"{tag}_throughput_rps"] = sim_tp
        out[f"{tag}_p50_error"] = abs(sim["ttft_p50_ms"] - real["ttft_p50_ms"]) / real["ttft_p50_ms"]
        out[f"{tag}_p99_error"] = abs(sim["ttft_p99_ms"] - real["ttft_p99_ms"]) / real["ttft_p99_ms"]
        out[f"{tag}_throughput_error"] = abs(sim_tp - real["throughput_rps"]) / real["throughput_rps"]
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", default="baseline_rr,least_queue,hybrid_mesh")
    ap.add_argument("--scale-strategy", default="hybrid_mesh")
    ap.add_argument("--small-duration", type=float, default=300.0)
    ap.add_argument("--mid-duration", type=float, default=600.0)
    ap.add_argument("--large-duration", type=float, default=1800.0)
    ap.add_argument("--parts", default="compare,scale,real", help="parts to run; a partial run prints nan for the rest")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="simulations run side by side (the real part runs alone)")
    ap.add_argument("--real-duration", type=float, default=30.0, help="seconds of compressed trace (sim vs real)")
    ap.add_argument("--real-load", type=float, default=0.7, help="fraction of the measured fleet capacity")
    args = ap.parse_args()
    print(f"# load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min) on {os.cpu_count()} CPUs", flush=True)

    parts = set(args.parts.split(","))
    nan = float("nan")
    # every simulation is its own process; --jobs of them at a time (CPU seconds are per process)
    small = EXAMPLES / "small.yaml"
    jobs: dict[str, tuple[Path, str, dict[str, Any]]] = {}
    if "compare" in parts:
        for s in args.strategies.split(","):
            jobs[f"small:{s}"] = (small, s, {"duration_s": args.small_duration, "output.plots": False})
    if "scale" in parts:
        if f"small:{args.scale_strategy}" not in jobs:
            jobs[f"small:{args.scale_strategy}"] = (small, args.scale_strategy, {"duration_s": args.small_duration})
        mid = {"topology.cells": 32, "duration_s": args.mid_duration, "output.plots": False}
        jobs["mid"] = (EXAMPLES / "medium.yaml", args.scale_strategy, mid)
        if not args.skip_large:
            over = {"duration_s": args.large_duration, "output.plots": False}
            jobs["large"] = (EXAMPLES / "large.yaml", args.scale_strategy, over)
    done: dict[str, dict[str, Any]] = {}
    order = sorted(jobs, key=lambda k: k != "large")  # the longest first
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_sim, *jobs[k]): k for k in order}
        for fut in as_completed(futures):
            k = futures[fut]
            done[k] = fut.result()
            print(f"# {k}: cpu {done[k]['cpu_s']:.1f}s wall {done[k]['wall_total_s']:.1f}s", flush=True)

    # 1. strategy comparison on the small configuration
    comp = [done[f"small:{s}"] for s in args.strategies.split(",")] if "compare" in parts else []
    cols = ["strategy", "completed", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms",
            "throughput_rps", "cross_cell_frac", "hedge_rate", "cost_per_1k_requests", "cpu_s", "wall_total_s",
            "peak_mb"]  # fmt: skip
    by = {r["strategy"]: r for r in comp}
    rr, hy = by.get("baseline_rr"), by.get("hybrid_mesh")
    ratio = hy["ttft_p99_ms"] / rr["ttft_p99_ms"] if rr and hy else nan
    e2e_ratio = hy["e2e_p99_ms"] / rr["e2e_p99_ms"] if rr and hy else nan
    if comp:
        print(f"\n## strategy comparison: small (512 nodes, 800 req/s, {args.small_duration:g}s)")
        print(table(comp, cols))
        print(f"hybrid_mesh / baseline_rr: p99 TTFT {ratio:.3f}x, p99 end-to-end {e2e_ratio:.3f}x")
        print("each p99 rests on its run's completed / 100 worst requests: " + ", ".join(
            f"{r['strategy']} {r['completed'] // 100:,}" for r in comp))  # fmt: skip

    # 2. scale
    scale = [done[k] for k in (f"small:{args.scale_strategy}", "mid", "large") if k in done and "scale" in parts]
    if scale:
        for r in scale:  # what grows with the fleet: CPU per request, memory per node
            r["cpu_ms_per_request"] = 1e3 * (r["cpu_s"] - r["build_cpu_s"]) / max(1, r["completed"])
            r["kb_per_node"] = 1024 * r["peak_mb"] / r["nodes"]
        print(f"\n## scale ({args.scale_strategy})")
        print(table(scale, ["nodes", "routers", "view", "tracked_per_router", "duration_s", "completed", "events",
                            "build_cpu_s", "cpu_s", "cpu_ms_per_request", "wall_total_s", "peak_mb", "kb_per_node",
                            "ttft_p99_ms"]))  # fmt: skip

    # 3. sim vs real
    real: dict[str, float] = {}
    if "real" in parts:
        real = sim_vs_real(args.real_duration, args.real_load, 4)
        print("\n## sim vs real (8 emulated runtimes, agent, router hybrid_mesh; same Azure trace slice)")
        sides = [{"side": "real", **{k[5:]: v for k, v in real.items() if k.startswith("real_")}}]
        for tag, label in (("raw", "sim (timing model)"), ("cal", f"sim (x{real['speed']:.2f} speed)")):
            sides.append(
                {
                    "side": label,
                    "ttft_p50_ms": real[f"{tag}_ttft_p50_ms"],
                    "ttft_p99_ms": real[f"{tag}_ttft_p99_ms"],
                    "ttft_mean_ms": real[f"{tag}_ttft_mean_ms"],
                    "throughput_rps": real[f"{tag}_throughput_rps"],
                }
            )
        print(table(sides, ["side", "ttft_p50_ms", "ttft_p99_ms", "ttft_mean_ms", "engine_ttft_mean_ms",
                            "throughput_rps", "ok", "requests", "rate_rps"]))  # fmt: skip
        print(
            "engine_ttft_mean_ms: the runtimes' own TTFT histograms (arrival at the engine to the first token); "
            "the rest of the client's TTFT is held at the router, the router's and the client's own time"
        )
        print(
            f"fleet capacity: measured {real['real_capacity_rps']:.2f} req/s, timing model "
            f"{real['model_capacity_rps']:.2f} req/s"
        )
        for tag in ("raw", "cal"):
            e = {k: real[f"{tag}_{k}_error"] for k in ("p50", "p99", "mean", "throughput")}
            print(f"errors ({tag}): p50 TTFT {e['p50']:.1%}, p99 TTFT {e['p99']:.1%}, mean TTFT {e['mean']:.1%}, "
                  f"throughput {e['throughput']:.1%}")  # fmt: skip

    print(f"# load at the end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min)", flush=True)
    large_row = done.get("large", {})
    mid_row = done.get("mid", {})
    small_run = hy["cpu_s"] if hy else nan
    print(
        f"summary: small_hybrid_p99_ratio_vs_rr={ratio:.3f} small_run_s={small_run:.1f} "
        f"large_run_s={large_row.get('cpu_s', nan):.1f} large_peak_mb={large_row.get('peak_mb', nan):.0f} "
        f"sim_vs_real_p99_error={real.get('cal_p99_error', nan):.3f} "
        f"sim_vs_real_p50_error={real.get('cal_p50_error', nan):.3f} "
        f"sim_vs_real_throughput_error={real.get('cal_throughput_error', nan):.3f} "
        f"sim_vs_real_p99_error_uncalibrated={real.get('raw_p99_error', nan):.3f} "
        f"sim_vs_real_mean_error={real.get('cal_mean_error', nan):.3f} "
        f"small_hybrid_e2e_p99_ratio_vs_rr={e2e_ratio:.3f} mid_run_s={mid_row.get('cpu_s', nan):.1f} "
        f"mid_peak_mb={mid_row.get('peak_mb', nan):.0f} large_wall_s={large_row.get('wall_total_s', nan):.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
