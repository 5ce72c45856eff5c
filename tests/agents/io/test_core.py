"""The IO adapter's sans-IO core: rolling figures per store and the slow rule's hysteresis."""

from __future__ import annotations

import pytest

from agents.io.core import IoState, ProbeResult, SlowRule

MB = 1_000_000


def ok(store: str, write_s: float, read_s: float, nbytes: int = MB, at: float = 0.0) -> ProbeResult:
    return ProbeResult(store, at, nbytes, write_s, read_s, 0.001)


def failed(store: str, error: str = "write: connection refused") -> ProbeResult:
    return ProbeResult(store, 0.0, MB, error=error)


def test_figures_are_medians_and_quantiles_over_the_window() -> None:
    st = IoState(window=4)
    st.add_store("ckpt", "local", "file:///ckpt", "checkpoint")
    for w in (0.5, 0.1, 0.2, 0.25, 0.4):  # the first falls out of the 4-probe window
        st.observe(ok("ckpt", w, w / 2))
    s = st.stores["ckpt"].summary()
    assert s["probes"] == 4 and s["error_ratio"] == 0.0
    assert s["write_p50_s"] == 0.2 and s["write_p95_s"] == 0.4  # nearest rank over 0.1, 0.2, 0.25, 0.4
    assert s["write_mbps"] == 4.0  # median of 10, 5, 4, 2.5 MB/s (nearest rank)
    assert s["read_p50_s"] == 0.1 and s["read_mbps"] == 8.0
    assert s["role"] == "checkpoint" and s["uri"] == "file:///ckpt" and not s["slow"]


def test_errors_count_in_the_window_and_a_store_never_read_has_no_throughput() -> None:
    st = IoState(window=10)
    st.add_store("data", "s3", "s3://data")
    st.observe(failed("data"))
    s = st.stores["data"].summary()
    assert s["error_ratio"] == 1.0 and s["errors_total"] == 1 and "write_mbps" not in s
    assert s["last_error"] == "write: connection refused"
    st.observe(ok("data", 0.01, 0.01))
    assert st.stores["data"].summary()["error_ratio"] == 0.5


def test_slow_trips_after_n_bad_probes_and_clears_only_after_n_good_ones() -> None:
    st = IoState(SlowRule(write_latency_s=0.1, read_latency_s=0.1, trip_after=3, clear_after=2))
    st.add_store("ckpt", "local", "file:///ckpt", "checkpoint")
    bad, good = ok("ckpt", 0.3, 0.01), ok("ckpt", 0.01, 0.01)
    assert st.observe(bad) is None and st.observe(bad) is None
    assert st.observe(good) is None  # a good probe restarts the count
    assert [st.observe(bad) for _ in range(2)] == [None, None]
    t = st.observe(bad)
    assert t is not None and t.slow and t.role == "checkpoint" and "write took 0.300s" in t.reason
    assert st.observe(bad) is None  # said once
    assert st.observe(good) is None and st.stores["ckpt"].slow  # one good probe is not enough
    assert st.observe(bad) is None and st.observe(good) is None
    t = st.observe(good)
    assert t is not None and not t.slow and not st.stores["ckpt"].slow


@pytest.mark.parametrize(
    ("probe", "why"),
    [
        (ok("s", 0.01, 0.5), "read took 0.500s"),
        (ok("s", 0.05, 0.01), "write throughput 20.00 MB/s"),
        (failed("s", "read: timed out"), "probe failed: read: timed out"),
    ],
)
def test_each_cause_of_a_bad_probe_is_named(probe: ProbeResult, why: str) -> None:
    rule = SlowRule(write_latency_s=0.1, read_latency_s=0.1, min_write_mbps=50, trip_after=1)
    assert why in rule.why_bad(probe)
    assert rule.why_bad(ok("s", 0.01, 0.01)) == ""


def test_bad_configuration_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="trip_after"):
        SlowRule(trip_after=0)
    with pytest.raises(ValueError, match="must be > 0"):
        SlowRule(write_latency_s=0)
    st = IoState()
    with pytest.raises(ValueError, match="unknown role 'logs'"):
        st.add_store("x", "local", "file:///x", "logs")
    st.add_store("x", "local", "file:///x")
    with pytest.raises(ValueError, match="named twice"):
        st.add_store("x", "local", "file:///y")
    with pytest.raises(KeyError, match="unknown store 'y'"):
        st.observe(ok("y", 0.1, 0.1))
    with pytest.raises(ValueError, match="window"):
        IoState(window=0)
