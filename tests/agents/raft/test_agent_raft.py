"""The raft component inside real agents: ctl verbs against any member, several groups, bad input over gRPC,
config errors and a corrupt log on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agents.proto.infermesh.v1 import raft_pb2, raft_pb2_grpc, store_pb2, store_pb2_grpc
from agents.raft.component import make_component
from agents.raft.testing.cluster import ROOT, LocalCluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(3, tmp_path_factory.mktemp("raft3"), extra={"groups": ["default", "cell-a"]})
    try:
        c.start()
        c.leader()
        yield c
    finally:
        c.stop()


def ctl(cluster: LocalCluster, node: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from meshweb.cli import main; sys.exit(main())",
            "ctl",
            *args,
            "--agent",
            cluster.members[node].address,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_write_through_one_member_reads_linearizably_through_another(cluster: LocalCluster) -> None:
    assert ctl(cluster, 1, "store", "put", "kv/hello", "world").returncode == 0
    r = ctl(cluster, 3, "store", "get", "kv/hello", "--json")
    doc = json.loads(r.stdout)
    assert doc["kvs"][0]["value"] == "world" and doc["stale"] is False and doc["served_by"] == "3"
    r = ctl(cluster, 2, "store", "cas", "kv/hello", "world", "mars")
    assert r.returncode == 0, r.stderr
    r = ctl(cluster, 2, "store", "cas", "kv/hello", "world", "venus")
    assert r.returncode == 1 and "current value is mars" in r.stderr
    assert ctl(cluster, 1, "store", "get", "kv/hello").stdout.strip() == "mars"


def test_typed_namespace_and_watch_from_revision(cluster: LocalCluster) -> None:
    r = ctl(cluster, 2, "store", "put", "nodes/gpu-9", '{"status": "sleepy"}')
    assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr and "status" in r.stderr
    r = ctl(cluster, 2, "store", "put", "nodes/gpu-9", '{"status": "drain", "reason": "maintenance"}', "--json")
    rev = int(json.loads(r.stdout)["revision"])
    ctl(cluster, 3, "store", "put", "nodes/gpu-9", '{"status": "active"}')
    r = ctl(cluster, 1, "store", "watch", "nodes/", "--rev", str(rev), "--count", "2")
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and '"drain"' in lines[0] and '"active"' in lines[1]
    r = ctl(cluster, 1, "store", "get", "bogus/x")
    assert r.returncode == 1 and "unknown namespace 'bogus'" in r.stderr


def test_a_prefix_watch_idles_while_other_keys_change(cluster: LocalCluster) -> None:
    """A watch whose prefix sees none of the later writes waits for them instead of spinning on the event loop."""
    with grpc.insecure_channel(cluster.members[1].address) as ch:
        stub = store_pb2_grpc.StoreStub(ch)
        watch = stub.Watch(store_pb2.StoreWatchRequest(prefix="apikeys/"))
        try:
            assert ctl(cluster, 1, "store", "put", "kv/elsewhere", "1").returncode == 0
            t0 = time.monotonic()
            got = stub.Get(store_pb2.StoreGetRequest(key="kv/elsewhere", serializable=True), timeout=5)
            assert got.kvs[0].value == "1" and time.monotonic() - t0 < 2
        finally:
            watch.cancel()


def test_groups_are_independent(cluster: LocalCluster) -> None:
    assert ctl(cluster, 1, "store", "put", "kv/only-a", "1", "--group", "cell-a").returncode == 0
    assert ctl(cluster, 2, "store", "get", "kv/only-a", "--group", "cell-a").stdout.strip() == "1"
    assert ctl(cluster, 2, "store", "get", "kv/only-a").returncode == 1
    r = ctl(cluster, 2, "store", "get", "kv/x", "--group", "nope")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr


def test_raft_status_transfer_snapshot(cluster: LocalCluster) -> None:
    st = json.loads(ctl(cluster, 1, "raft", "status", "--json").stdout)
    assert st["voters"] == ["1", "2", "3"] and st["leader"] != "0"
    leader = int(st["leader"])
    target = next(i for i in (1, 2, 3) if i != leader)
    r = ctl(cluster, leader, "raft", "transfer", str(target), "--json")
    assert r.returncode == 0, r.stderr
    assert int(json.loads(r.stdout)["leader"]) == target
    r = ctl(cluster, 2, "raft", "snapshot")
    assert r.returncode == 0 and "snapshot at index" in r.stdout
    assert int(json.loads(ctl(cluster, 2, "raft", "status", "--json").stdout)["snapshot_index"]) > 0
    # the group still works after compaction
    assert ctl(cluster, 3, "store", "put", "kv/after-snap", "ok").returncode == 0
    assert ctl(cluster, 2, "store", "get", "kv/after-snap").stdout.strip() == "ok"


def test_bad_rpcs_are_refused(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(cluster.members[1].address) as ch:
        stub = raft_pb2_grpc.RaftStub(ch)
        hb = raft_pb2.RaftMessage(type=10, to=1, term=1, **{"from": 2})
        with pytest.raises(grpc.RpcError) as e:
            stub.AppendEntries(
                raft_pb2.RaftBatch(cluster_id="intruder", group="default", messages=[hb], **{"from": 2}), timeout=5
            )
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "cluster id mismatch" in e.value.details()
        bad = raft_pb2.RaftMessage(type=99, to=1, term=1, **{"from": 2})
        with pytest.raises(grpc.RpcError) as e:
            stub.AppendEntries(
                raft_pb2.RaftBatch(cluster_id="test-cluster", group="default", messages=[bad], **{"from": 2}), timeout=5
            )
        assert (
            e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown raft message type 99" in e.value.details()
        )
        gap = raft_pb2.RaftMessage(
            type=3, to=1, term=10**6, index=5, log_term=1, **{"from": 2}, entries=[raft_pb2.RaftEntry(index=9, term=1)]
        )
        with pytest.raises(grpc.RpcError) as e:
            stub.AppendEntries(
                raft_pb2.RaftBatch(cluster_id="test-cluster", group="default", messages=[gap], **{"from": 2}), timeout=5
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "has index 9, want 6" in e.value.details()
        vote = raft_pb2.RaftMessage(type=5, to=1, term=1, **{"from": 2})
        with pytest.raises(grpc.RpcError) as e:
            stub.AppendEntries(
                raft_pb2.RaftBatch(cluster_id="test-cluster", group="default", messages=[vote], **{"from": 2}),
                timeout=5,
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not belong on this RPC" in e.value.details()
        # an out-of-term append is answered (so a stale leader learns the term) but changes nothing
        before = cluster.status(1)
        old = raft_pb2.RaftMessage(type=3, to=1, term=1, index=0, log_term=0, commit=10**6, **{"from": 2})
        stub.AppendEntries(
            raft_pb2.RaftBatch(cluster_id="test-cluster", group="default", messages=[old], **{"from": 2}), timeout=5
        )
        after = cluster.status(1)
        assert after.term >= before.term and after.commit <= after.last_index
        with pytest.raises(grpc.RpcError) as e:
            store_pb2_grpc.StoreStub(ch).Put(store_pb2.StorePutRequest(key="kv/x", value="1", client_id=5), timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "positive seq" in e.value.details()


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="must include this node"):
        make_component({"node_id": 4, "peers": {1: "127.0.0.1:1"}})
    with pytest.raises(ValueError, match="HOST:PORT"):
        make_component({"node_id": 1, "peers": {1: "nowhere"}})
    with pytest.raises(ValueError, match="heartbeat_ticks"):
        make_component({"node_id": 1, "peers": {1: "127.0.0.1:1"}, "heartbeat_ticks": 5, "election_ticks": 5})


def test_agent_refuses_to_start_on_a_corrupt_log(tmp_path: Path) -> None:
    c = LocalCluster(1, tmp_path, cluster_id="solo")
    try:
        c.start()
        c.leader()
        with grpc.insecure_channel(c.members[1].address) as ch:
            for i in range(5):
                store_pb2_grpc.StoreStub(ch).Put(store_pb2.StorePutRequest(key=f"kv/{i}", value="v"), timeout=5)
    finally:
        c.stop()
    log = tmp_path / "data" / "raft" / "node-1" / "default" / "log"
    blob = bytearray(log.read_bytes())
    blob[20] ^= 0xFF
    log.write_bytes(bytes(blob))
    env = {**os.environ, "INFERMESH_DATA_DIR": str(tmp_path / "data")}
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from meshweb.cli import main; sys.exit(main())",
            "agent",
            "--config",
            str(c.members[1].config),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert r.returncode != 0
    assert "checksum mismatch" in (r.stdout + r.stderr)


def test_control_policies_are_replicated(cluster: LocalCluster) -> None:
    from agents.proto.infermesh.v1 import control_pb2, control_pb2_grpc

    def control(node: int) -> tuple[grpc.Channel, control_pb2_grpc.ControlStub]:
        ch = grpc.insecure_channel(cluster.members[node].address)
        return ch, control_pb2_grpc.ControlStub(ch)

    ch1, c1 = control(1)
    ch3, c3 = control(3)
    with ch1, ch3:
        policy = control_pb2.Policy(name="tenant-a-rps", kind="quota", spec_json='{"rps": 50}')
        stored = c1.PutPolicy(control_pb2.PutPolicyRequest(policy=policy), timeout=10)
        assert stored.version > 0 and stored.updated_unix_ms > 0
        deadline = time.monotonic() + 5
        seen: list[control_pb2.Policy] = []
        while time.monotonic() < deadline and not seen:
            seen = list(c3.ListPolicies(control_pb2.ListPoliciesRequest(kind="quota"), timeout=5).policies)
            time.sleep(0.05)
        assert [(p.name, json.loads(p.spec_json), p.version) for p in seen] == [
            ("tenant-a-rps", {"rps": 50}, stored.version)
        ]
        assert ctl(cluster, 2, "store", "get", "policies/tenant-a-rps", "--json").returncode == 0

        with pytest.raises(grpc.RpcError) as err:
            c3.PutPolicy(
                control_pb2.PutPolicyRequest(policy=control_pb2.Policy(name="has space", kind="quota")), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "policy.name" in (err.value.details() or "")

        assert c3.DeletePolicy(control_pb2.DeletePolicyRequest(name="tenant-a-rps"), timeout=10).deleted
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and seen:
            seen = list(c1.ListPolicies(control_pb2.ListPoliciesRequest(), timeout=5).policies)
            time.sleep(0.05)
        assert not [p for p in seen if p.name == "tenant-a-rps"]
