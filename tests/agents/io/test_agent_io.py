"""The `io:` component inside a real agent (a one-member Raft store): it probes a directory and a bucket on moto's
S3 server, publishes its figures under kv/io/stores/<node>, exports them on /metrics, and when the S3 server goes
away says so on the agent's event stream."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest

from agents.io.locality import KEY_PREFIX
from agents.proto.infermesh.v1 import control_pb2, control_pb2_grpc, store_pb2, store_pb2_grpc
from agents.raft.testing.cluster import LocalCluster

from .conftest import MotoServer

pytestmark = pytest.mark.e2e


def record(address: str, node: str) -> dict[str, Any] | None:
    with grpc.insecure_channel(address) as ch:
        resp = store_pb2_grpc.StoreStub(ch).Get(store_pb2.StoreGetRequest(key=f"{KEY_PREFIX}{node}"), timeout=2)
    return json.loads(resp.kvs[0].value) if resp.kvs else None


def wait_for(what: str, check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_agent_publishes_store_figures_and_raises_the_slow_store_event(tmp_path: Path, moto: MotoServer) -> None:
    boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1").create_bucket(Bucket="datasets")
    io = {
        "interval_s": 0.2, "probe_bytes": 64 << 10, "timeout_s": 2,
        "slow": {"write_latency_s": 2.0, "read_latency_s": 2.0, "trip_after": 2, "clear_after": 2},
        "stores": [
            {"name": "ckpt", "uri": f"file://{tmp_path / 'ckpt'}", "role": "checkpoint"},
            {"name": "data", "uri": "s3://datasets/probes", "endpoint": moto.endpoint, "role": "dataset"},
        ],
    }  # fmt: skip
    cluster = LocalCluster(1, tmp_path / "c", sections=lambda m: {"io": io})
    try:
        cluster.start()
        cluster.leader()
        member = cluster.members[1]

        def published() -> dict[str, Any] | None:
            rec = record(member.address, "raft-1")
            ok = rec and all(s["probes"] >= 2 and s["error_ratio"] == 0.0 for s in rec["stores"].values())
            return rec if ok else None

        rec = wait_for("the node's figures in the store", published)
        assert rec["node"] == "raft-1" and set(rec["stores"]) == {"ckpt", "data"}
        assert rec["stores"]["data"]["uri"] == "s3://datasets/probes" and rec["stores"]["data"]["write_mbps"] > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{member.http_port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'infermesh_io_probes_total{result="ok",store="data"}' in metrics
        assert 'infermesh_io_store_slow{role="checkpoint",store="ckpt"} 0.0' in metrics

        moto.stop()  # the S3 server goes away
        with grpc.insecure_channel(member.address) as ch:
            stream = control_pb2_grpc.ControlStub(ch).SubscribeEvents(
                control_pb2.SubscribeEventsRequest(kinds=["io."]), timeout=20
            )
            event = next(iter(stream))
            stream.cancel()
        assert event.kind == "io.store_slow" and event.target_id == "data" and event.attrs["role"] == "dataset"
        assert "probe failed" in event.message
        slow = wait_for("the slow flag in the store", lambda: (r := record(member.address, "raft-1"))
                        and r["stores"]["data"]["slow"] and r)  # fmt: skip
        assert not slow["stores"]["ckpt"]["slow"]
    finally:
        cluster.stop()
