"""Router figures for the overview, scraped from a router's /metrics: requests per second and p99 TTFT.

Rates and the quantile come from the difference between two scrapes (the previous one is kept per URL in this
process), so they describe the last refresh interval rather than the router's whole life.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "infermesh_router_requests_total"
TTFT = "infermesh_router_ttft_seconds"
MIN_WINDOW_S = 5.0


@dataclass(frozen=True)
class Scrape:
    at: float
    requests: float
    ttft_buckets: dict[float, float]  # upper bound -> cumulative count, summed over every label set


@dataclass(frozen=True)
class RouterStats:
    url: str
    ok: bool
    error: str = ""
    requests_total: float = 0.0
    requests_per_s: float | None = None
    ttft_p99_ms: float | None = None


_last: dict[str, Scrape] = {}
_lock = threading.Lock()


def parse(text: str, at: float) -> Scrape:
    requests = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REQUESTS:
                requests += sample.value
            elif sample.name == f"{TTFT}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Scrape(at=at, requests=requests, ttft_buckets=buckets)


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets (linear within a bucket)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # beyond the last finite bucket: its bound is the best estimate
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def derive(url: str, now: Scrape, before: Scrape | None) -> RouterStats:
    rate = None
    window = now.ttft_buckets
    if before is not None and now.at > before.at and now.requests >= before.requests:
        rate = round((now.requests - before.requests) / (now.at - before.at), 2)
        delta = {b: now.ttft_buckets[b] - before.ttft_buckets.get(b, 0.0) for b in now.ttft_buckets}
        if delta and max(delta.values()) > 0:
            window = delta  # requests arrived since the last scrape: report their p99, not the lifetime one
    p99 = quantile(window, 0.99)
    return RouterStats(
        url=url,
        ok=True,
        requests_total=now.requests,
        requests_per_s=rate,
        ttft_p99_ms=None if p99 is None else round(p99 * 1000.0, 1),
    )


def scrape(url: str, timeout_s: float = 2.0) -> RouterStats:
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return RouterStats(url=url, ok=False, error=f"unreachable: {exc.__class__.__name__}")
    if response.status_code != 200:
        return RouterStats(url=url, ok=False, error=f"HTTP {response.status_code}")
    try:
        now = parse(response.text, time.monotonic())
    except ValueError as exc:
        return RouterStats(url=url, ok=False, error=f"not Prometheus text: {exc}")
    with _lock:
        before = _last.get(url)
        # Several pages refreshing together would otherwise measure over a few milliseconds: the baseline moves
        # only once it is MIN_WINDOW_S old, and a younger one gives no rate yet.
        if before is None or now.at - before.at >= MIN_WINDOW_S:
            _last[url] = now
    if before is not None and now.at - before.at < 1.0:
        return derive(url, now, None)
    return derive(url, now, before)
