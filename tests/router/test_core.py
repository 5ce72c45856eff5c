"""Sans-IO cores of the router: token buckets, quotas, admission, hedge delay and budget, outlier ejection, retries."""

from __future__ import annotations

import random

from router.core.admission import AdmissionController, TargetLoad
from router.core.hedging import HedgeBudget, HedgeParams, LatencyWindow, hedge_delay
from router.core.outlier import OutlierDetector
from router.core.quota import TenantLimits, TenantQuota, TokenBucket, estimate_tokens
from router.core.retry import Outcome, RetryRules


def test_token_bucket_refills_at_rate_and_reports_wait() -> None:
    b = TokenBucket(rate=2.0, capacity=2.0, stamp=0.0)
    assert b.try_take(1, 0.0) == 0.0
    assert b.try_take(1, 0.0) == 0.0
    wait = b.try_take(1, 0.0)
    assert abs(wait - 0.5) < 1e-9
    assert b.try_take(1, 0.25) > 0  # half a token is not enough
    assert b.try_take(1, 0.5) == 0.0


def test_token_bucket_oversize_request_passes_alone_on_full_bucket() -> None:
    b = TokenBucket(rate=1.0, capacity=10.0, stamp=0.0)
    assert b.try_take(50, 0.0) == 0.0  # bigger than the bucket: allowed when full, then in debt
    assert b.try_take(1, 0.0) > 0


def test_tenant_quota_limits_each_dimension_and_releases() -> None:
    q = TenantQuota(TenantLimits(requests_per_s=100, tokens_per_min=600, concurrent=2))
    assert q.acquire(100, 0.0).allowed
    assert q.acquire(100, 0.0).allowed
    d = q.acquire(100, 0.0)
    assert not d.allowed and d.reason == "concurrent" and d.retry_after_header == "1"
    q.release(100, 10)  # used far less: refunded
    q.release(100, None)
    assert q.inflight == 0
    d = q.acquire(700, 0.0)  # the bucket holds 600 - 200 + 90 = 490
    assert not d.allowed and d.reason == "tokens_per_min"
    assert d.retry_after_s > 0


def test_requests_per_s_gives_retry_after() -> None:
    q = TenantQuota(TenantLimits(requests_per_s=1, burst_requests=1))
    assert q.acquire(0, 0.0).allowed
    d = q.acquire(0, 0.1)
    assert not d.allowed and d.reason == "requests_per_s" and d.retry_after_header == "1"


def test_estimate_tokens() -> None:
    assert estimate_tokens(400, 50) == 150
    assert estimate_tokens(0, None, default_max_tokens=256) == 256


def test_admission_sheds_lower_classes_first() -> None:
    ac = AdmissionController(10, {"critical": 1.5, "standard": 1.0, "batch": 0.5}, max_inflight=100)
    loads = [TargetLoad(8, service_rate=2.0), TargetLoad(12, service_rate=2.0)]
    assert ac.decide(loads, "standard", 0).admitted
    d = ac.decide(loads, "batch", 0)
    assert not d.admitted and d.reason == "queue_full" and d.retry_after_s >= 1
    assert ac.decide([TargetLoad(14)], "critical", 0).admitted
    assert not ac.decide([TargetLoad(14)], "standard", 0).admitted


def test_admission_inflight_cap_and_no_target() -> None:
    ac = AdmissionController(10, {"standard": 1.0, "batch": 0.5}, max_inflight=10)
    assert ac.decide([TargetLoad(0)], "standard", 10).reason == "router_inflight"
    assert ac.decide([TargetLoad(0)], "batch", 5).reason == "router_inflight"
    assert ac.decide([], "standard", 0).reason == "no_target"


def test_admission_retry_after_is_capped() -> None:
    ac = AdmissionController(1, {}, max_inflight=10, max_retry_after_s=7)
    d = ac.decide([TargetLoad(1000, service_rate=0.1)], "standard", 0)
    assert d.retry_after_s == 7


def test_latency_window_quantile_and_eviction() -> None:
    w = LatencyWindow(size=10)
    for x in range(100):
        w.add(float(x))
    assert len(w) == 10
    assert w.quantile(0.0) == 90.0
    assert w.quantile(0.9) == 99.0


def test_hedge_delay_uses_quantile_within_bounds() -> None:
    p = HedgeParams(quantile=0.5, multiplier=2.0, min_delay_s=0.01, max_delay_s=1.0, default_delay_s=0.2)
    assert hedge_delay(None, p) == 0.2
    w = LatencyWindow()
    for _ in range(3):
        w.add(0.1)
    assert hedge_delay(w, p) == 0.2  # too few samples yet
    for _ in range(20):
        w.add(0.1)
    assert abs(hedge_delay(w, p) - 0.2) < 1e-9
    for _ in range(200):
        w.add(5.0)
    assert hedge_delay(w, p) == 1.0


def test_hedge_budget_caps_extra_load() -> None:
    b = HedgeBudget(ratio=0.05, burst=2.0)
    rng = random.Random(1)
    for _ in range(10_000):
        b.on_request()
        if rng.random() < 0.5:  # a fleet where half the requests want a hedge
            b.try_spend()
    assert b.extra_load <= 0.0502
    assert b.hedges > 400
    none = HedgeBudget(ratio=0.0, burst=5.0)
    none.on_request()
    assert not none.try_spend()


def test_outlier_ejects_with_doubling_backoff() -> None:
    o = OutlierDetector(consecutive_failures=2, base_ejection_s=1.0, max_ejection_s=3.0, max_ejected_fraction=1.0)
    assert not o.on_failure("a", 0.0)
    assert o.on_failure("a", 0.0)
    assert o.is_ejected("a", 0.5)
    assert not o.is_ejected("a", 1.01)
    o.on_failure("a", 2.0)
    assert o.on_failure("a", 2.0)  # second ejection: 2 s
    assert o.is_ejected("a", 3.9) and not o.is_ejected("a", 4.01)
    o.on_failure("a", 5.0)
    o.on_failure("a", 5.0)  # third: capped at 3 s
    assert o.is_ejected("a", 7.9) and not o.is_ejected("a", 8.01)
    o.on_success("a")
    assert not o.on_failure("a", 9.0)  # success reset the streak


def test_outlier_never_ejects_more_than_the_fraction() -> None:
    o = OutlierDetector(1, 10.0, 10.0, max_ejected_fraction=0.5)
    for t in ("a", "b", "c", "d"):
        o.on_failure(t, 0.0)
    alive = o.filter(["a", "b", "c", "d"], 1.0)
    assert len(alive) == 2
    assert o.ejected_count(1.0) == 4


def test_retry_rules() -> None:
    r = RetryRules(max_attempts=2)
    assert r.classify_status(200) is Outcome.OK
    assert r.classify_status(503) is Outcome.BAD_STATUS
    assert r.classify_status(400) is Outcome.CLIENT_ERROR
    assert r.classify_status(500) is Outcome.SERVER_ERROR
    assert r.retryable(Outcome.CONNECT_ERROR, 1, False)
    assert not r.retryable(Outcome.CONNECT_ERROR, 2, False)  # attempts spent
    assert not r.retryable(Outcome.RESET, 1, True)  # a byte already reached the client
    assert not r.retryable(Outcome.CLIENT_ERROR, 1, False)
    assert not RetryRules.counts_as_failure(Outcome.CLIENT_ERROR)
    assert RetryRules.counts_as_failure(Outcome.TIMEOUT)
