"""Summaries, CSV files and plots of simulation runs (matplotlib, written without a display)."""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.sim.core import RunResult
from agents.sim.workload import KIND_NAMES

SUMMARY_FIELDS = (
    "strategy",
    "arrivals",
    "completed",
    "failed",
    "unfinished",
    "throughput_rps",
    "tokens_per_s",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttft_p99_ms",
    "e2e_p50_ms",
    "e2e_p95_ms",
    "e2e_p99_ms",
    "wait_mean_ms",
    "cross_cell_frac",
    "hedge_rate",
    "hedge_wins",
    "retries",
    "cost_per_request",
    "cost_per_1k_requests",
    "events",
    "wall_s",
)


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else float("nan")


def summarize(r: RunResult) -> dict[str, Any]:
    rec = r.rec
    ttft = np.frombuffer(rec.ttft, dtype=np.float64) if len(rec.ttft) else np.zeros(0)
    e2e = np.frombuffer(rec.e2e, dtype=np.float64) if len(rec.e2e) else np.zeros(0)
    wait = np.frombuffer(rec.wait, dtype=np.float64) if len(rec.wait) else np.zeros(0)
    dur = r.config.duration_s
    out: dict[str, Any] = {
        "strategy": r.strategy,
        "arrivals": r.arrivals,
        "completed": r.completed,
        "failed": r.failed,
        "unfinished": r.unfinished,
        "throughput_rps": r.completed / dur,
        "tokens_per_s": float(sum(rec.out_tokens)) / dur,
        "ttft_p50_ms": _pct(ttft, 50) * 1e3,
        "ttft_p95_ms": _pct(ttft, 95) * 1e3,
        "ttft_p99_ms": _pct(ttft, 99) * 1e3,
        "e2e_p50_ms": _pct(e2e, 50) * 1e3,
        "e2e_p95_ms": _pct(e2e, 95) * 1e3,
        "e2e_p99_ms": _pct(e2e, 99) * 1e3,
        "wait_mean_ms": float(wait.mean()) * 1e3 if wait.size else float("nan"),
        "cross_cell_frac": float(np.mean(np.frombuffer(rec.cell_hop, dtype=np.int8))) if len(rec.cell_hop) else 0.0,
        "hedge_rate": r.hedges / r.arrivals if r.arrivals else 0.0,
        "hedge_wins": r.hedge_wins,
        "retries": r.retries,
        "cost_per_request": r.fleet_cost / r.completed if r.completed else float("nan"),
        "cost_per_1k_requests": 1000 * r.fleet_cost / r.completed if r.completed else float("nan"),
        "events": r.events,
        "wall_s": r.wall_s,
    }
    util: dict[str, dict[str, float]] = {}
    for c in r.classes:
        if not c.nodes:
            continue
        denom = c.nodes * dur
        util[c.name] = {"nodes": c.nodes, "busy": c.busy_s / denom, "batch_occupancy": c.occupancy_s / denom}
    out["utilization"] = util
    return out


def write_outputs(results: Sequence[RunResult], folder: str | Path) -> list[Path]:
    """summary.csv, utilization.csv, utilization_over_time.csv, requests_<strategy>.csv and the plots."""
    base = Path(folder)
    base.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    summaries = [summarize(r) for r in results]
    p = base / "summary.csv"
    with p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(SUMMARY_FIELDS))
        w.writeheader()
        for s in summaries:
            w.writerow({k: _fmt(s[k]) for k in SUMMARY_FIELDS})
    written.append(p)
    p = base / "utilization.csv"
    with p.open("w", newline="") as fh:
        w2 = csv.writer(fh)
        w2.writerow(["strategy", "gpu", "nodes", "busy", "batch_occupancy"])
        for s in summaries:
            for gpu, u in s["utilization"].items():
                w2.writerow([s["strategy"], gpu, u["nodes"], _fmt(u["busy"]), _fmt(u["batch_occupancy"])])
    written.append(p)
    p = base / "utilization_over_time.csv"
    with p.open("w", newline="") as fh:
        w2 = csv.writer(fh)
        w2.writerow(["strategy", "gpu", "t_s", "busy"])
        for r in results:
            for c in r.classes:
                if not c.nodes or c.bins is None:
                    continue
                for i, b in enumerate(c.bins):
                    w2.writerow([r.strategy, c.name, _fmt(i * c.bin_s), _fmt(b / (c.nodes * c.bin_s))])
    written.append(p)
    for r in results:
        written.append(_requests_csv(r, base / f"requests_{_safe(r.strategy)}.csv"))
    if results and results[0].config.output.plots:
        written.extend(plot(results, base))
    return written


def _requests_csv(r: RunResult, path: Path) -> Path:
    rec = r.rec
    n = len(rec.t0)
    limit = r.config.output.max_request_rows
    idx: Sequence[int] = range(n)
    if n > limit:
        idx = sorted(random.Random(r.config.seed).sample(range(n), limit))
    names = [c.name for c in r.classes]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arrival_s", "kind", "ttft_ms", "e2e_ms", "wait_ms", "gpu", "cross_cell", "hedged", "out_tokens"])
        for i in idx:
            w.writerow(
                [
                    f"{rec.t0[i]:.4f}",
                    KIND_NAMES[rec.kind[i]],
                    f"{rec.ttft[i] * 1e3:.3f}",
                    f"{rec.e2e[i] * 1e3:.3f}",
                    f"{rec.wait[i] * 1e3:.3f}",
                    names[rec.gpu[i]],
                    rec.cell_hop[i],
                    rec.hedged[i],
                    rec.out_tokens[i],
                ]
            )
    return path


def plot(results: Sequence[RunResult], base: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[Path] = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        for ax, arr, label in ((axes[0], r.rec.ttft, "TTFT"), (axes[1], r.rec.e2e, "end-to-end latency")):
            if not len(arr):
                continue
            x = np.sort(np.frombuffer(arr, dtype=np.float64)) * 1e3
            y = np.arange(1, x.size + 1) / x.size
            ax.plot(x, y, label=r.strategy)
            ax.set_xscale("log")
            ax.set_xlabel(f"{label} (ms)")
            ax.set_ylabel("fraction of requests")
            ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{results[0].config.name}: latency CDFs")
    fig.tight_layout()
    p = base / "latency_cdf.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)

    fig, ax = plt.subplots(figsize=(11, 4))
    for r in results:
        for c in r.classes:
            if not c.nodes or c.bins is None:
                continue
            xs = [i * c.bin_s for i in range(len(c.bins))]
            ys = [b / (c.nodes * c.bin_s) for b in c.bins]
            ax.plot(xs, ys, label=f"{r.strategy} / {c.name}")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("busy fraction")
    ax.set_title(f"{results[0].config.name}: utilization over time by GPU type")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = base / "utilization_over_time.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)

    summaries = [summarize(r) for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(results) + 3), 4))
    metrics = ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms")
    width = 0.8 / len(summaries)
    for i, s in enumerate(summaries):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [s[m] for m in metrics], width, label=s["strategy"])
    ax.set_xticks([j + width * (len(summaries) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics)
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title(f"{results[0].config.name}: strategy comparison")
    ax.legend()
    fig.tight_layout()
    p = base / "strategy_comparison.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)
    return out


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    cols = ("strategy", "completed", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "cross_cell_frac",
            "hedge_rate", "cost_per_1k_requests", "wall_s")  # fmt: skip
    rows = [[_cell(s[c]) for c in cols] for s in summaries]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
