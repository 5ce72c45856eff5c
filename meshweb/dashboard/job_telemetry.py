"""A job's telemetry roll-up as the job page shows it: the scheduler's report (JobTelemetry.data, written by agents)
reduced to known fields with checked types, one entry per node, labelled with the ranks placed there.

The portal keeps only the latest roll-up of a job, so the page's charts start from it and add one point per node
for each later report it sees; this module is the one shape both the first render and the refreshes use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

# A roll-up names every node of the plan; a damaged or hostile one must not make the page unbounded.
MAX_NODES = 256

NODE_NUMBERS = ("step_s", "mean_step_s", "allreduce_s", "busbw_gbps")
NODE_COUNTS = ("step", "ranks", "allreduce_count", "allreduce_bytes")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _number(value: Any) -> float | None:
    out = _finite(value)
    # Six significant digits: agents round to microseconds already, and the page shows what it charts.
    return None if out is None else float(f"{out:.6g}")


def _count(value: Any) -> int | None:
    out = _finite(value)
    return None if out is None else int(out)


def _text(value: Any, limit: int = 64) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _node_entry(name: str, raw: Mapping[str, Any], placed: list[int]) -> dict[str, Any]:
    entry: dict[str, Any] = {"node": name, "status": _text(raw.get("status"), 32), "placed_ranks": placed}
    entry.update({key: _count(raw.get(key)) for key in NODE_COUNTS})
    entry.update({key: _number(raw.get(key)) for key in NODE_NUMBERS})
    return entry


def telemetry_view(
    *,
    job_id: int,
    at: datetime | None,
    reports: int,
    data: Any,
    placements: Iterable[tuple[int, str]] = (),
) -> dict[str, Any]:
    """The page's view of one roll-up; `placements` are (rank, node name) pairs, `reports` 0 means none arrived yet."""
    placed: dict[str, list[int]] = {}
    for rank, node in sorted(placements):
        placed.setdefault(node, []).append(rank)
    data = data if isinstance(data, Mapping) else {}
    raw_nodes = data.get("nodes")
    raw_nodes = raw_nodes if isinstance(raw_nodes, Mapping) else {}
    reported = sorted(
        ((str(name)[:128], value) for name, value in raw_nodes.items() if isinstance(value, Mapping)),
        key=lambda pair: pair[0],
    )
    nodes = [_node_entry(name, value, placed.get(name, [])) for name, value in reported[:MAX_NODES]]
    return {
        "job": job_id,
        "reports": reports,
        "at": at.isoformat() if at is not None else None,
        "generation": _count(data.get("generation")),
        "strategy": _text(data.get("strategy")),
        "nccl_algo": _text(data.get("nccl_algo")),
        "predicted_step_s": _number(data.get("predicted_step_s")),
        "predicted_busbw_gbps": _number(data.get("predicted_busbw_gbps")),
        "nodes": nodes,
        "nodes_left_out": max(0, len(reported) - MAX_NODES),
    }
