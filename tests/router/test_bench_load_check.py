"""bench/routing_quality.py's overload check: a run whose fleet kept up is reported, one whose queue grew to the
end is marked (its p99 would be the backlog, not routing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "routing_quality.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routing_quality_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_a_fleet_that_keeps_up_is_not_flagged_and_a_growing_queue_is() -> None:
    rq = _bench()
    # 5 req/s for 120 s, each served in 2 s (first byte after 0.1 s): completions follow arrivals
    kept = [rq.Result(True, 0.1, 2.0, at=i / 5) for i in range(600)]
    verdict = rq.load_check(kept)
    assert verdict["overloaded"] == 0.0
    assert abs(verdict["served"] - verdict["offered"]) < 0.1 * verdict["offered"]
    # the same arrivals at a fleet serving 4 req/s in order: request i starts at max(arrival, i / 4)
    slow = [rq.Result(True, max(0.0, i / 4 - i / 5) + 0.1, max(0.0, i / 4 - i / 5) + 2.0, at=i / 5) for i in range(600)]
    verdict = rq.load_check(slow)
    assert verdict["overloaded"] == 1.0
    assert verdict["served"] < 0.9 * verdict["offered"]
    assert verdict["backlog"] > 16
