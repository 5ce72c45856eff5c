"""Router figures for the overview: requests/s and p99 TTFT from a router's /metrics, over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from meshweb.dashboard import router_stats
from meshweb.dashboard.router_stats import Scrape, derive, parse, quantile

BUCKETS = (0.1, 0.25, 0.5, 1.0)


class FakeRouterMetrics:
    """The router's own metric names and labels, in a registry this test controls."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "infermesh_router_requests_total", "", ["model", "tenant", "api", "code"], registry=self.registry
        )
        self.ttft = Histogram(
            "infermesh_router_ttft_seconds", "", ["model", "runtime", "node"], buckets=BUCKETS, registry=self.registry
        )

    def text(self) -> str:
        return generate_latest(self.registry).decode()


@pytest.fixture
def router() -> Iterator[tuple[FakeRouterMetrics, str, list[int]]]:
    metrics = FakeRouterMetrics()
    status = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = metrics.text().encode() if status[0] == 200 else b"oops"
            self.send_response(status[0])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield metrics, f"http://127.0.0.1:{server.server_address[1]}/metrics", status
    finally:
        server.shutdown()
        server.server_close()


def test_first_scrape_gives_lifetime_p99_then_the_interval(router: tuple[FakeRouterMetrics, str, list[int]]) -> None:
    metrics, url, _ = router
    metrics.requests.labels("demo-llm", "demo", "openai", "200").inc(6)
    metrics.requests.labels("demo-llm", "other", "openai", "429").inc(4)
    for _ in range(50):
        metrics.ttft.labels("demo-llm", "vllm", "n1").observe(0.05)
    for _ in range(49):
        metrics.ttft.labels("demo-llm", "vllm", "n2").observe(0.2)
    metrics.ttft.labels("demo-llm", "vllm", "n2").observe(0.7)

    first = router_stats.scrape(url)
    assert (first.ok, first.requests_total, first.requests_per_s) == (True, 10.0, None)
    assert first.ttft_p99_ms == 250.0  # rank 99 of 100 ends exactly at the 0.25 s bucket

    metrics.requests.labels("demo-llm", "demo", "openai", "200").inc(20)
    for _ in range(10):
        metrics.ttft.labels("demo-llm", "vllm", "n1").observe(0.7)
    # Under a second after the first scrape there is no rate yet (no measuring over a few milliseconds).
    assert router_stats.scrape(url).requests_per_s is None
    time.sleep(1.1)
    second = router_stats.scrape(url)
    assert second.requests_total == 30.0
    assert second.requests_per_s is not None and second.requests_per_s > 0
    assert second.ttft_p99_ms == 995.0  # only the 10 new requests, all in the (0.5, 1.0] bucket


def test_rate_from_two_scrapes() -> None:
    before = Scrape(at=100.0, requests=40.0, ttft_buckets={0.5: 0.0, float("inf"): 0.0})
    now = Scrape(at=110.0, requests=60.0, ttft_buckets={0.5: 0.0, float("inf"): 0.0})
    stats = derive("u", now, before)
    assert (stats.requests_per_s, stats.ttft_p99_ms) == (2.0, None)
    # A restarted router (counter went down) gives no rate rather than a negative one.
    assert derive("u", Scrape(at=120.0, requests=5.0, ttft_buckets={}), now).requests_per_s is None


def test_quantile_beyond_the_last_bucket_is_the_last_bound() -> None:
    assert quantile({0.5: 1.0, 1.0: 1.0, float("inf"): 100.0}, 0.99) == 1.0
    assert quantile({}, 0.99) is None


def test_parse_sums_every_label_set() -> None:
    metrics = FakeRouterMetrics()
    metrics.requests.labels("a", "t", "openai", "200").inc(2)
    metrics.requests.labels("b", "t", "kserve", "500").inc(3)
    metrics.ttft.labels("a", "vllm", "n").observe(0.3)
    scrape = parse(metrics.text(), at=1.0)
    assert scrape.requests == 5.0
    assert scrape.ttft_buckets == {0.1: 0.0, 0.25: 0.0, 0.5: 1.0, 1.0: 1.0, float("inf"): 1.0}


def test_unreachable_or_failing_router_is_reported(router: tuple[FakeRouterMetrics, str, list[int]]) -> None:
    _, url, status = router
    status[0] = 503
    failing = router_stats.scrape(url)
    assert (failing.ok, failing.error) == (False, "HTTP 503")
    with_nothing = router_stats.scrape("http://127.0.0.1:9/metrics", timeout_s=1.0)
    assert with_nothing.ok is False and with_nothing.error.startswith("unreachable: ")


@pytest.mark.django_db
def test_overview_shows_the_configured_router(
    router: tuple[FakeRouterMetrics, str, list[int]], login: Any, settings: Any
) -> None:
    metrics, url, _ = router
    metrics.requests.labels("demo-llm", "demo", "openai", "200").inc(7)
    metrics.ttft.labels("demo-llm", "vllm", "n1").observe(0.2)
    settings.DASHBOARD_ROUTER_METRICS_URL = url
    page = login(superuser=True).get("/dashboard/fragments/overview/").content.decode()
    assert "no router configured" not in page
    assert "7 requests in total" in page
    assert '<strong id="router-ttft">248.5 ms</strong>' in page  # one request in (0.1, 0.25]: rank 0.99 of 1
