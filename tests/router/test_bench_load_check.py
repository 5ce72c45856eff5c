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


def test_a_short_run_whose_pipeline_is_still_filling_is_not_flagged() -> None:
    """25 s at 8 req/s with 10 s answers: the first completion comes 10 s after the first arrival, so over the
    window the requests in service grow and completions lag arrivals, but nothing waits for a first byte: the fleet
    kept up."""
    rq = _bench()
    run = [rq.Result(True, 0.1, 10.0, at=i / 8) for i in range(200)]
    verdict = rq.load_check(run)
    assert verdict["served"] < 0.9 * verdict["offered"]  # what a served-rate rule flagged
    assert verdict["grown"] == 0.0 and verdict["overloaded"] == 0.0


def test_the_modelled_capacity_is_deterministic_and_scales_with_the_fleet() -> None:
    rq = _bench()
    reqs = [rq.Req(0.0, 500 + 300 * (i % 5), 50 + 40 * (i % 7)) for i in range(400)]
    one, n = rq.model_trace_capacity(reqs, ["h100"], 4)
    assert n == 280 and one == rq.model_trace_capacity(reqs, ["h100"], 4)[0]
    two, _ = rq.model_trace_capacity(reqs, ["h100", "h100"], 4)
    assert abs(two / one - 2.0) < 0.05
    slow, _ = rq.model_trace_capacity(reqs, ["l40s"], 4)
    assert slow < 0.5 * one  # an L40S decodes at a quarter of an H100's rate
    try:
        rq.model_trace_capacity(reqs[:10], ["h100"], 4)
    except ValueError as e:
        assert "too few requests" in str(e)
    else:
        raise AssertionError("10 requests cannot give a steady rate")
