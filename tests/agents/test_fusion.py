"""Fusion: freshness and decay to unknown, health, outcome-refined estimates, and bad input that never poisons."""

from __future__ import annotations

import math

import pytest

from agents.proto.infermesh.v1 import scoring_pb2, state_pb2
from agents.signals.fusion import Fusion, FusionConfig, gpu_delta_from_state, target_id_for
from agents.signals.types import CommStats, GpuState, ModelState

EP1 = "http://127.0.0.1:9001"
EP2 = "http://127.0.0.1:9002"


def fusion(**kw: float) -> Fusion:
    return Fusion("node-a", zone="z1", config=FusionConfig(fresh_s=2, stale_s=10, expire_s=60, **kw), clock=lambda: 0)


def delta(endpoint: str = EP1, **kw: object) -> state_pb2.ModelStateDelta:
    kw.setdefault("model", "demo-llm")
    kw.setdefault("runtime", "vllm")
    return state_pb2.ModelStateDelta(endpoint=endpoint, **kw)  # type: ignore[arg-type]


def test_target_identity_and_published_values() -> None:
    f = fusion()
    r = f.ingest_model(delta(requests_waiting=3, requests_running=2, kv_cache_usage=0.4, max_concurrency=8), now=100)
    assert r.accepted and not r.rejections
    assert r.target_id == target_id_for("demo-llm", "", "node-a", EP1) == "demo-llm@default/node-a/127.0.0.1:9001"
    msg = f.to_proto(f.targets[r.target_id], now=101)
    assert (msg.requests_waiting, msg.requests_running, msg.kv_cache_usage, msg.max_concurrency) == (3, 2, 0.4, 8)
    assert msg.health == state_pb2.TARGET_HEALTH_HEALTHY and msg.routable and msg.freshness == 1.0
    assert msg.zone == "z1" and not msg.HasField("ttft_p95_s")  # unreported stays unknown


def test_stale_signals_decay_to_unknown_then_expire() -> None:
    f = fusion()
    tid = f.ingest_model(delta(requests_waiting=3), now=100).target_id
    events: list[tuple[list[str], list[str]]] = []
    f.subscribe(lambda ch, rm: events.append((ch, rm)))
    half = f.to_proto(f.targets[tid], now=106)
    assert 0 < half.freshness < 1 and half.requests_waiting == 3
    f.tick(now=111)
    stale = f.to_proto(f.targets[tid], now=111)
    assert stale.freshness == 0 and not stale.HasField("requests_waiting")
    assert stale.health == state_pb2.TARGET_HEALTH_UNKNOWN and stale.routable  # unknown is not condemned
    assert events and tid in events[-1][0]
    f.tick(now=161)
    assert tid not in f.targets and events[-1] == ([], [tid])


def test_endpoint_down_marks_only_its_targets_unhealthy() -> None:
    f = fusion()
    t1 = f.ingest_model(delta(EP1), now=1).target_id
    t2 = f.ingest_model(delta(EP2), now=1).target_id
    assert f.mark_endpoint_down(EP1, "scrape failed: connection refused", now=2) == [t1]
    down = f.to_proto(f.targets[t1], now=2)
    assert down.health == state_pb2.TARGET_HEALTH_UNHEALTHY and not down.routable
    assert "connection refused" in down.health_reason
    assert f.to_proto(f.targets[t2], now=2).routable
    f.ingest_model(delta(EP1), now=3)  # the runtime answers again
    assert f.to_proto(f.targets[t1], now=3).routable


def test_retain_endpoint_drops_models_the_runtime_unloaded() -> None:
    f = fusion()
    keep = f.ingest_model(delta(model="a"), now=1).target_id
    gone = f.ingest_model(delta(model="b"), now=1).target_id
    assert f.retain_endpoint(EP1, {keep}) == [gone]
    assert list(f.targets) == [keep]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("requests_waiting", math.nan, "nan"),
        ("requests_running", -1.0, "negative"),
        ("kv_cache_usage", 87.0, "range"),
        ("tokens_per_s", math.inf, "nan"),
        ("ttft_p95_s", -0.5, "negative"),
        ("max_concurrency", 0, "range"),
    ],
)
def test_bad_values_are_dropped_field_by_field(field: str, value: float, reason: str) -> None:
    f = fusion()
    good = f.ingest_model(delta(EP2, requests_waiting=1, kv_cache_usage=0.2), now=1).target_id
    r = f.ingest_model(delta(**{"requests_running": 2, field: value}), now=1)
    assert r.accepted
    assert [(x.field, x.reason) for x in r.rejections] == [(field, reason)]
    msg = f.to_proto(f.targets[r.target_id], now=1)
    assert not msg.HasField(field)
    assert field == "requests_running" or msg.requests_running == 2
    other = f.to_proto(f.targets[good], now=1)
    assert (other.requests_waiting, other.kv_cache_usage) == (1, 0.2)


@pytest.mark.parametrize(
    ("kw", "field", "reason"),
    [
        ({"model": ""}, "model", "identity"),
        ({"endpoint": ""}, "endpoint", "identity"),
        ({"node": "node-b"}, "node", "identity"),
        ({"observed_unix_ms": 10_000_000}, "observed_unix_ms", "future"),
        ({"observed_unix_ms": 1}, "observed_unix_ms", "stale"),
    ],
)
def test_deltas_with_a_bad_identity_or_time_are_refused_whole(kw: dict[str, object], field: str, reason: str) -> None:
    f = fusion()
    d = delta(**{k: v for k, v in kw.items() if k != "endpoint"})
    if "endpoint" in kw:
        d.endpoint = ""
    r = f.ingest_model(d, now=1000)
    assert not r.accepted and [(x.field, x.reason) for x in r.rejections] == [(field, reason)]
    assert f.targets == {}


def test_unknown_gpus_are_refused_when_the_inventory_is_known() -> None:
    f = fusion()
    f.set_gpu_inventory({"GPU-1"})
    r = f.ingest_gpu(state_pb2.GpuStateDelta(uuid="GPU-9", utilization_gpu=5), now=1)
    assert not r.accepted and r.rejections[0].reason == "unknown_gpu"
    m = f.ingest_model(delta(gpu_uuids=["GPU-1", "GPU-9"]), now=1)
    assert m.accepted and [x.reason for x in m.rejections] == ["unknown_gpu"]
    assert f.targets[m.target_id].gpu_uuids == ("GPU-1",)


def test_gpu_values_are_validated_and_folded_into_targets() -> None:
    f = fusion()
    g = state_pb2.GpuStateDelta(
        uuid="GPU-1", memory_total_bytes=80, memory_used_bytes=60, utilization_gpu=math.nan, temperature_c=70
    )
    g.slowdown_temp_c = 90
    r = f.ingest_gpu(g, now=1)
    assert r.accepted and [(x.field, x.reason) for x in r.rejections] == [("utilization_gpu", "nan")]
    tid = f.ingest_model(delta(gpu_uuids=["GPU-1"]), now=1).target_id
    msg = f.to_proto(f.targets[tid], now=1)
    assert msg.vram_used_frac == pytest.approx(0.75) and msg.thermal_margin_c == 20
    assert not msg.HasField("gpu_utilization")
    over = state_pb2.GpuStateDelta(uuid="GPU-2", memory_total_bytes=10, memory_used_bytes=11, ecc_corrected_volatile=-3)
    r2 = f.ingest_gpu(over, now=1)
    assert sorted(x.field for x in r2.rejections) == ["ecc_corrected_volatile", "memory_used_bytes"]


def test_a_remote_target_keeps_its_zone_and_its_gpu_figures() -> None:
    """A target learnt from another node's summary carries that node's zone and GPU figures (its GPUs are not in
    this node's inventory), and they decay to unknown with its runtime's signals."""
    there = Fusion("node-b", zone="z2", config=FusionConfig(fresh_s=2, stale_s=10, expire_s=60), clock=lambda: 0)
    g = state_pb2.GpuStateDelta(uuid="GPU-B", memory_total_bytes=80, memory_used_bytes=20, utilization_gpu=64.0,
                                temperature_c=61, slowdown_temp_c=90, name="NVIDIA H100 80GB HBM3")  # fmt: skip
    assert there.ingest_gpu(g, now=1).accepted
    tid = there.ingest_model(delta(gpu_uuids=["GPU-B"], requests_running=2), now=1).target_id
    published = there.to_proto(there.targets[tid], now=1)
    assert published.gpu_type == "H100"  # the family, from its GPU's product name (deployments place by it)
    here = fusion()
    here.set_gpu_inventory({"GPU-1"})  # GPU-B is not ours: the summary's figures, not our inventory, speak for it
    r = here.ingest_remote(published, now=1)
    assert r.accepted and not r.rejections
    msg = here.to_proto(here.targets[r.target_id], now=1)
    assert (msg.node, msg.zone, list(msg.gpu_uuids), msg.gpu_type) == ("node-b", "z2", ["GPU-B"], "H100")
    assert (msg.gpu_utilization, msg.thermal_margin_c, msg.requests_running) == (64.0, 29.0, 2)
    assert msg.vram_used_frac == pytest.approx(0.25)
    stale = here.to_proto(here.targets[r.target_id], now=20)
    assert not stale.HasField("gpu_utilization") and not stale.HasField("vram_used_frac")
    refused = here.ingest_remote(state_pb2.TargetState(model="demo-llm", endpoint=EP2, zone="z9"), now=1)
    assert not refused.accepted  # a summary must name its node: nothing of it is kept
    assert all(rec.zone != "z9" for rec in here.targets.values())


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"xid_events": [79]}, "xid 79"),
        ({"ecc_uncorrected_volatile": 2}, "uncorrectable ECC"),
        ({"remapped_rows_pending": True}, "row remapping pending"),
    ],
)
def test_a_failed_gpu_makes_its_targets_unhealthy(fault: dict[str, object], reason: str) -> None:
    f = fusion()
    tid = f.ingest_model(delta(gpu_uuids=["GPU-1"]), now=1).target_id
    other = f.ingest_model(delta(EP2, gpu_uuids=["GPU-2"]), now=1).target_id
    f.ingest_gpu(state_pb2.GpuStateDelta(uuid="GPU-1", **fault), now=2)  # type: ignore[arg-type]
    msg = f.to_proto(f.targets[tid], now=2)
    assert msg.health == state_pb2.TARGET_HEALTH_UNHEALTHY and reason in msg.health_reason
    assert f.to_proto(f.targets[other], now=2).routable
    f.ingest_gpu(state_pb2.GpuStateDelta(uuid="GPU-1", xid_events=[13]), now=3)  # clean but for a non-fatal Xid
    # an Xid is reported once, so it is held for a while; counters and pending remaps speak for themselves
    assert f.to_proto(f.targets[tid], now=3).routable is ("xid" not in reason)
    f.ingest_gpu(state_pb2.GpuStateDelta(uuid="GPU-1"), now=2 + f.config.xid_hold_s + 1)
    assert f.to_proto(f.targets[tid], now=2 + f.config.xid_hold_s + 1).health != state_pb2.TARGET_HEALTH_UNHEALTHY


def test_outcomes_refine_latency_service_rate_and_work_left() -> None:
    f = fusion(ewma_alpha=0.5)
    tid = f.ingest_model(delta(requests_waiting=4, requests_running=4, latency_p95_s=8.0), now=1).target_id
    prior = f.to_proto(f.targets[tid], now=1)
    assert prior.service_rate_rps == pytest.approx(4 / 8.0) and prior.work_left_s == pytest.approx(16.0)
    for _ in range(6):
        ok = scoring_pb2.OutcomeReport(target_id=tid, ok=True, latency_s=2.0, ttft_s=0.2, completion_tokens=100)
        assert f.record_outcome(ok, now=2).accepted
    f.ingest_model(delta(requests_waiting=4, requests_running=4, latency_p95_s=8.0), now=3)
    after = f.to_proto(f.targets[tid], now=3)
    assert after.ewma_latency_s == pytest.approx(2.0) and after.ewma_ttft_s == pytest.approx(0.2)
    assert after.service_rate_rps > prior.service_rate_rps and after.work_left_s < prior.work_left_s
    f.record_outcome(scoring_pb2.OutcomeReport(target_id=tid, ok=False, error="502"), now=4)
    f.record_outcome(scoring_pb2.OutcomeReport(target_id=tid, ok=False, cancelled=True), now=4)
    after_err = f.to_proto(f.targets[tid], now=4)
    assert after_err.error_rate == pytest.approx(0.5) and after_err.outcomes_error == 1
    assert after_err.outcomes_ok == 6
    bad = f.record_outcome(scoring_pb2.OutcomeReport(target_id=tid, ok=True, latency_s=math.nan), now=4)
    assert not bad.accepted and bad.rejections[0].field == "latency_s"
    assert f.record_outcome(scoring_pb2.OutcomeReport(target_id="nope", ok=True), now=4).rejections[0].reason == (
        "unknown_target"
    )


def test_cordon_makes_targets_unroutable_but_keeps_them() -> None:
    f = fusion()
    tid = f.ingest_model(delta(), now=1).target_id
    f.set_node_routable(False, "cordoned", now=1)
    msg = f.to_proto(f.targets[tid], now=1)
    assert not msg.routable and msg.health == state_pb2.TARGET_HEALTH_HEALTHY and msg.health_reason == "cordoned"
    f.set_node_routable(True, now=1)
    assert f.to_proto(f.targets[tid], now=1).routable


def test_comm_stats_roll_up_per_job_and_collective() -> None:
    f = fusion(ewma_alpha=0.5)
    for t in (0.01, 0.02):
        stats = CommStats("job-1", 0, "allreduce", 100_000_000, t, 4, "ring", step=3)
        assert f.ingest_comm_stats(stats, now=1).accepted
    (summary,) = [c.summary for c in f.comm.values()]
    assert summary.count == 2 and summary.ewma_time_s == pytest.approx(0.015)
    assert summary.ewma_busbw_gbps == pytest.approx(summary.ewma_algbw_gbps * 1.5)
    bad = state_pb2.CommStatsDelta(job_id="job-1", collective="allreduce", rank=4, n_ranks=4, time_s=1, bytes=1)
    assert f.ingest_comm(bad, now=1).rejections[0].field == "rank"
    nan = state_pb2.CommStatsDelta(job_id="job-1", collective="allreduce", rank=0, n_ranks=4, time_s=math.nan)
    assert f.ingest_comm(nan, now=1).rejections[0].reason == "nan"


def test_in_process_records_go_through_the_same_validation() -> None:
    f = fusion()
    r = f.ingest_model_state(
        ModelState(model="m", runtime="tgi", endpoint=EP1, requests_waiting=-5.0, kv_cache_usage=0.3),
        cost_per_mtok=0.4,
        now=1,
    )
    assert [x.reason for x in r.rejections] == ["negative"]
    assert f.targets[r.target_id].cost_per_mtok == 0.4
    g = GpuState(uuid="GPU-1", index=0, name="H100", temperature_c=-500.0, xid_events=[79])
    assert gpu_delta_from_state(g).xid_events == [79]
    res = f.ingest_gpu_state(g, now=1)
    assert res.accepted and [x.reason for x in res.rejections] == ["negative"]
