"""Prometheus metrics of the router, labelled with the seed's schema (model, revision, runtime, node, tenant, ...).

With several worker processes the registry is multiprocess (PROMETHEUS_MULTIPROC_DIR set by the parent before any
worker imports prometheus_client), so one scrape of any worker sees the whole router.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_DECISION_BUCKETS = (1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3)

REQUESTS = Counter(
    "infermesh_router_requests_total", "Requests answered by the router", ["model", "tenant", "api", "code"]
)
ERRORS = Counter("infermesh_router_errors_total", "Failed requests by cause", ["model", "tenant", "cause"])
LATENCY = Histogram(
    "infermesh_router_request_duration_seconds",
    "End-to-end request latency as the client sees it",
    ["model", "tenant"],
    buckets=_LAT_BUCKETS,
)
TTFT = Histogram(
    "infermesh_router_ttft_seconds",
    "Time to first byte from the runtime, per target",
    ["model", "revision", "runtime", "node", "gpu_uuid", "mig_profile", "zone"],
    buckets=_LAT_BUCKETS,
)
ARM_TTFT = Histogram(
    "infermesh_router_strategy_ttft_seconds",
    "Time to first byte per strategy arm (primary, A/B arms) for win-rate comparisons",
    ["model", "strategy"],
    buckets=_LAT_BUCKETS,
)
TOKENS = Counter(
    "infermesh_router_tokens_total", "Tokens seen (prompt from usage, completion)", ["model", "tenant", "kind"]
)
DECISION = Histogram(
    "infermesh_router_decision_seconds", "Strategy decision time in-process", ["strategy"], buckets=_DECISION_BUCKETS
)
STRATEGY_FALLBACKS = Counter(
    "infermesh_router_strategy_fallbacks_total", "Decisions that fell back to baseline_rr", ["strategy"]
)
STRATEGY_OVERRUNS = Counter(
    "infermesh_router_strategy_overruns_total",
    "Decisions over the budget whose answer was kept (a built-in's late answer beats round-robin's blind one)",
    ["strategy"],
)
RETRIES = Counter("infermesh_router_retries_total", "Attempts retried on another target", ["model", "cause"])
HEDGES = Counter(
    "infermesh_router_hedges_total", "Hedged copies: fired, won (hedge answered first), wasted", ["model", "result"]
)
HEDGE_SKIPPED = Counter("infermesh_router_hedges_skipped_total", "Hedges not sent: budget spent", ["model"])
ADMISSION_REFUSED = Counter(
    "infermesh_router_admissions_refused_total", "Requests refused with 429", ["model", "tenant", "reason"]
)
SHADOW = Counter(
    "infermesh_router_shadow_decisions_total",
    "Shadow strategy decisions, and whether they agreed with the served choice",
    ["model", "strategy", "shadow", "agree"],
)
WIN_RATE = Gauge(
    "infermesh_router_strategy_win_rate",
    "Probability that a challenger's outcome (A/B arm, or a shadow's pick where it differs) beats the live "
    "strategy's, from real outcomes; 0.5 = no better, no worse (metric: overall, ttft, latency, errors)",
    ["model", "strategy", "mode", "metric"],
    multiprocess_mode="mostrecent",
)
STRATEGY_NOT_LOADED = Counter(
    "infermesh_router_strategy_not_loaded_total",
    "Decisions a policy asked of a strategy that is not loaded (refused at load): the model's previous one decided",
    ["strategy"],
)
LOCAL_ONLY = Gauge(
    "infermesh_router_local_only",
    "1 while the agent is unreachable and the router serves from its last view and static targets",
    multiprocess_mode="max",
)
SPILLOVER = Counter(
    "infermesh_router_spillover_total",
    "requests this router sent to another cell: its own saturated, slow (the speed rule) or failed, or outside the "
    "tenant's regions",
    ["from_cell", "to_cell", "reason"],
)
RESIDENCY_REFUSED = Counter(
    "infermesh_router_residency_refused_total",
    "requests refused with 503 because no cell in the tenant's allowed regions could serve the model",
    ["model"],
)
SPILLED_IN = Counter(
    "infermesh_router_spilled_in_total",
    "requests another cell's router sent here, by the verdict on its spill proof: verified ones were charged to "
    "their tenant there and are not charged again; any other verdict is charged here as an ordinary request",
    ["verdict"],
)
MESH_DEGRADED = Gauge(
    "infermesh_router_mesh_degraded",
    "1 while gossip reports most of the mesh unreachable and the router ranks only local targets",
    multiprocess_mode="max",
)
TARGETS = Gauge("infermesh_router_targets", "Targets in the view", ["source"], multiprocess_mode="max")
EJECTIONS = Counter("infermesh_router_ejections_total", "Outlier ejections", ["model", "runtime", "node"])
HELD = Gauge(
    "infermesh_router_held",
    "Requests held at the router until a target frees a batch slot",
    multiprocess_mode="livesum",
)
INFLIGHT = Gauge("infermesh_router_inflight", "Requests in flight", multiprocess_mode="livesum")
INFLIGHT_LIMIT = Gauge(
    "infermesh_router_inflight_limit",
    "Requests the router holds at once (listen.max_inflight)",
    multiprocess_mode="livesum",
)
QUOTA_BACKEND = Counter(
    "infermesh_router_quota_backend_errors_total", "Shared-quota (Redis) calls that failed, served locally", []
)
ACCESS_RECORDS = Gauge(
    "infermesh_router_access_records",
    "Portal tenants and inference keys mirrored from the agent's store",
    ["kind"],
    multiprocess_mode="max",
)
ACCESS_UPDATES = Counter(
    "infermesh_router_access_updates_total", "Access records applied from the agent's store", ["op"]
)
USAGE_BATCHES = Counter("infermesh_router_usage_batches_total", "Usage batches sent to the portal", ["result"])
AUTH_REFUSED = Counter("infermesh_router_auth_refused_total", "Requests refused by authentication", ["reason"])
UNKNOWN_MODEL = Counter(
    "infermesh_router_unknown_model_total", "Requests naming a model or LoRA adapter that no target serves (404)"
)
AGENT_REPORTS = Counter("infermesh_router_outcome_reports_total", "Outcomes reported to the agent", ["result"])


def render() -> tuple[bytes, str]:
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, memoised: label lookup is a measurable share of a request's CPU time."""
    key = (id(metric), values)
    c = _children.get(key)
    if c is None:
        c = _children[key] = metric.labels(*values)
    return c


# -- updates of one event-loop turn, applied at its end ---------------------------------------------------------------
# Each prometheus update takes a lock (and, with several workers, writes a memory-mapped file): a request makes about a
# dozen. The requests that finish in one turn of the event loop add theirs up here and apply them at the turn's end,
# before the handlers of the next turn run (a scrape of this worker never sees a request answered but not counted).
_adds: dict[Any, float] = {}  # counter or gauge (a child, or a metric without labels) -> amount
_observed: dict[Any, tuple[list[float], dict[int, int]]] = {}  # histogram child -> ([sum], observations per bucket)
_scheduled = False


def add(metric: Any, amount: float = 1.0) -> None:
    """`metric.inc(amount)` at the end of this event-loop turn: a counter, or a gauge that is not "mostrecent" (a
    negative amount is its `dec`)."""
    _adds[metric] = _adds.get(metric, 0.0) + amount
    if not _scheduled:
        _schedule()


def observe(hist: Any, value: float) -> None:
    """`hist.observe(value)` at the end of this event-loop turn (`hist`: a histogram's labelled child)."""
    acc = _observed.get(hist)
    if acc is None:
        acc = _observed[hist] = ([0.0], {})
    acc[0][0] += value
    if value == value:  # NaN falls in no bucket, as prometheus_client's own observe has it
        i = bisect_left(hist._upper_bounds, value)  # the first bucket that holds it, as `observe` picks
        counts = acc[1]
        counts[i] = counts.get(i, 0) + 1
    if not _scheduled:
        _schedule()


def _schedule() -> None:
    global _scheduled
    try:
        asyncio.get_running_loop().call_soon(flush)
    except RuntimeError:  # no event loop (a tool, a test): at once
        flush()
        return
    _scheduled = True


def flush() -> None:
    """Apply the pending updates (the end of a turn, and before every scrape)."""
    global _scheduled
    _scheduled = False
    if _adds:
        for metric, amount in _adds.items():
            metric._value.inc(amount)  # what `inc` does once its checks pass (they hold for what `add` is given)
        _adds.clear()
    if _observed:
        for hist, (total, counts) in _observed.items():
            hist._sum.inc(total[0])
            buckets = hist._buckets
            for i, n in counts.items():
                buckets[i].inc(n)
        _observed.clear()
