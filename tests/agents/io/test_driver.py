"""The IO adapter's driver against real stores: an S3 bucket on moto's server (a real HTTP S3 API, reached through
boto3) and a local directory whose writes a wrapper slows down on demand. Probes, figures, Prometheus metrics, the
slow-store events and the record the scheduler reads."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from prometheus_client import CollectorRegistry

from agents.io.component import IoComponent, make_component
from agents.io.locality import KEY_PREFIX
from agents.io.probes import Store
from agents.meshd.events import EventBus
from agents.scheduler.component import io_locality
from agents.scheduler.model import JobRequest

from .conftest import MotoServer


class SlowWrites:
    """A store whose writes take `delay_s` longer (the injected slowness); everything else is the real store."""

    def __init__(self, inner: Store, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.name, self.uri = inner.name, inner.uri

    def put(self, key: str, data: bytes) -> None:
        time.sleep(self.delay_s)
        self.inner.put(key, data)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()


def component(tmp_path: Path, endpoint: str) -> tuple[IoComponent, Any]:
    comp = make_component({
        "interval_s": 1, "probe_bytes": 256 << 10, "timeout_s": 2, "publish": False,
        "slow": {"write_latency_s": 0.2, "read_latency_s": 0.5, "trip_after": 2, "clear_after": 2},
        "stores": [
            {"name": "ckpt", "uri": f"file://{tmp_path / 'ckpt'}", "role": "checkpoint"},
            {"name": "data", "uri": "s3://datasets/probes", "endpoint": endpoint, "role": "dataset"},
        ],
    })  # fmt: skip
    ctx = SimpleNamespace(node_id="n1", events=EventBus("n1"), registry=CollectorRegistry())
    comp.attach(ctx)
    return comp, ctx


def sample(ctx: Any, name: str, **labels: str) -> float | None:
    value: float | None = ctx.registry.get_sample_value(name, labels)
    return value


async def test_probes_real_s3_and_local_stores_and_reports_slow_and_failing_ones(
    tmp_path: Path, moto: MotoServer
) -> None:
    comp, ctx = component(tmp_path, moto.endpoint)
    # the bucket does not exist yet: a failed probe with the server's reason (one is not enough to be slow)
    assert await comp.probe_once() == []
    s = comp.record()["stores"]["data"]
    assert s["error_ratio"] == 1.0 and "NoSuchBucket" in s["last_error"] and "write_mbps" not in s
    s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="datasets")
    for _ in range(3):
        assert await comp.probe_once() == []
    rec = comp.record()["stores"]
    assert rec["data"]["error_ratio"] == 0.25 and rec["ckpt"]["error_ratio"] == 0.0
    for name in ("ckpt", "data"):
        s = rec[name]
        assert s["probes"] == 4 and not s["slow"], s
        assert s["write_mbps"] > 0 and s["read_mbps"] > 0 and 0 < s["write_p50_s"] <= s["write_p95_s"]
    assert rec["data"]["uri"] == "s3://datasets/probes" and rec["ckpt"]["uri"] == f"file://{tmp_path / 'ckpt'}"
    assert "Contents" not in s3.list_objects_v2(Bucket="datasets")  # every probe object was deleted
    assert list((tmp_path / "ckpt").iterdir()) == []
    assert sample(ctx, "infermesh_io_probes_total", store="data", result="ok") == 3
    assert sample(ctx, "infermesh_io_probe_seconds_count", store="data", op="write") == 3
    assert (sample(ctx, "infermesh_io_throughput_mbps", store="ckpt", op="write") or 0) > 0
    assert not ctx.events.history

    # the checkpoint store's writes slow down: one bad probe is not enough, two trip the rule (one event)
    real = comp.stores["ckpt"]
    comp.stores["ckpt"] = SlowWrites(real, 0.3)
    assert await comp.probe_once() == []
    [t] = await comp.probe_once()
    assert t.store == "ckpt" and t.slow and "write took" in t.reason
    [ev] = list(ctx.events.history)
    assert ev.kind == "io.store_slow" and ev.attrs["role"] == "checkpoint" and ev.target_id == "ckpt"
    assert ev.message.startswith("checkpoint store ckpt (file://") and "is slow: write took 0.3" in ev.message
    assert sample(ctx, "infermesh_io_store_slow", store="ckpt", role="checkpoint") == 1
    assert await comp.probe_once() == []  # still slow, said once
    # the scheduler reading this record puts the slow store's nodes behind others that reach it
    fn = io_locality({f"{KEY_PREFIX}n1": comp.record()}, time.time())
    assert fn is not None
    job = JobRequest("1", checkpoint_uri=f"file://{tmp_path / 'ckpt'}/job-1")
    assert fn(job, "n1") >= 0.5  # the slow penalty (the window's median latency lags behind the flag)

    comp.stores["ckpt"] = real
    assert await comp.probe_once() == []
    [t] = await comp.probe_once()
    assert t.store == "ckpt" and not t.slow
    assert ctx.events.history[-1].kind == "io.store_recovered"
    assert sample(ctx, "infermesh_io_store_slow", store="ckpt", role="checkpoint") == 0
    assert fn(job, "n1") >= 0.5  # the old record; a fresh one no longer carries the penalty
    fresh = io_locality({f"{KEY_PREFIX}n1": comp.record()}, time.time())
    assert fresh is not None and fresh(job, "n1") < 0.5

    # the S3 server goes away: probes fail at once (connection refused), the dataset store turns slow
    moto.stop()
    await comp.probe_once()
    [t] = await comp.probe_once()
    assert t.store == "data" and t.slow and t.reason.startswith("probe failed: write: ")
    assert ctx.events.history[-1].attrs["role"] == "dataset"
    s = comp.record()["stores"]["data"]
    assert s["error_ratio"] == pytest.approx(3 / 11, abs=1e-3) and s["errors_total"] == 3 and s["last_error"]
    assert sample(ctx, "infermesh_io_probes_total", store="data", result="error") == 3
    await comp.stop()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"stores": []}, "stores"),
        ({"stores": [{"name": "a"}]}, "uri"),
        ({"stores": [{"name": "a", "uri": "/mnt/ckpt"}]}, "use file:///absolute/path or s3://bucket"),
        ({"stores": [{"name": "a", "uri": "s3:///prefix"}]}, "use file:///absolute/path or s3://bucket"),
        ({"stores": [{"name": "a", "uri": "nfs://host/x"}]}, "use file:///absolute/path"),
        ({"stores": [{"name": "a", "uri": "file:///x", "endpoint": "http://s3"}]}, "endpoint is for s3://"),
        ({"stores": [{"name": "a", "uri": "file:///x"}] * 2}, "name 'a' is used twice"),
        ({"stores": [{"name": "a", "uri": "file:///x", "role": "logs"}]}, "role"),
        ({"stores": [{"name": "a", "uri": "file:///x"}], "slow": {"trip_after": 0}}, "trip_after"),
    ],
)
def test_bad_sections_are_refused_with_the_field(section: dict[str, Any], message: str) -> None:
    from agents.meshd.component import ComponentConfigError, build_component

    with pytest.raises(ComponentConfigError, match=message) as err:
        build_component("io", section)
    assert str(err.value).startswith("io") or "io." in str(err.value)
