"""Real agent processes on loopback: concurrent clients while the leader is killed (-9), a follower is paused
(SIGSTOP) and nodes restart. No acknowledged write may be lost, histories must be linearizable, and a new leader
must appear within the bound."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest

from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc
from agents.raft.testing.cluster import LocalCluster, Workload
from agents.raft.testing.lincheck import check_history

pytestmark = pytest.mark.e2e

LEADER_BOUND_S = 10.0  # election timeout is 0.5-1 s here; generous for a loaded 2-core machine


async def _chaos(cluster: LocalCluster, n: int, timings: dict[str, float]) -> None:
    await asyncio.sleep(1.5)
    old = await asyncio.to_thread(cluster.leader)
    t0 = time.monotonic()
    cluster.kill(old)
    new = await asyncio.to_thread(cluster.leader, LEADER_BOUND_S, {old})
    timings["failover_s"] = time.monotonic() - t0
    assert new != old
    follower = next(i for i in cluster.members if i not in (old, new))
    cluster.pause(follower)
    await asyncio.sleep(1.5)
    cluster.resume(follower)
    await asyncio.to_thread(cluster.start, old)  # the killed leader comes back from its log
    if n == 5:
        # with five members, two may be down at once
        victims = [i for i in cluster.members if i != new][:2]
        for v in victims:
            cluster.kill(v)
        await asyncio.sleep(1.0)
        for v in victims:
            await asyncio.to_thread(cluster.start, v)
    await asyncio.sleep(1.0)


@pytest.mark.parametrize("n", [3, 5])
async def test_faults_under_concurrent_clients(tmp_path: Path, n: int) -> None:
    with LocalCluster(n, tmp_path) as cluster:
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(cluster.leader)
        work = Workload([m.address for m in cluster.members.values()], clients=6, keys=3)
        timings: dict[str, float] = {}
        await asyncio.gather(work.run(9.0 if n == 3 else 11.0), _chaos(cluster, n, timings))
        await asyncio.to_thread(cluster.leader)
        await work.final_reads()
        assert timings["failover_s"] < LEADER_BOUND_S
        assert work.acked_writes > 20, work.errors
        res = check_history(work.history)
        assert res.ok, f"not linearizable on keys {res.bad_keys}"
        # every member converges to the same state (a member restarted last may need a moment to hear the leader)
        deadline = time.monotonic() + 15.0
        while True:
            states = set()
            stale = []
            for m in cluster.members.values():
                with grpc.insecure_channel(m.address) as ch:
                    req = store_pb2.StoreGetRequest(key="kv/", prefix=True)
                    resp = store_pb2_grpc.StoreStub(ch).Get(req, timeout=5)
                if resp.stale:
                    stale.append(m.address)
                states.add(tuple((kv.key, kv.value) for kv in resp.kvs))
            if (not stale and len(states) == 1) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert not stale, f"members still stale: {stale}"
        assert len(states) == 1


async def test_quorum_loss_refuses_writes_and_serves_stale_reads(tmp_path: Path) -> None:
    with LocalCluster(3, tmp_path) as cluster:
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(cluster.leader)
        a = cluster.members[1].address
        async with grpc.aio.insecure_channel(a) as ch:
            stub = store_pb2_grpc.StoreStub(ch)
            await stub.Put(store_pb2.StorePutRequest(key="nodes/gpu-1", value='{"status": "cordon"}'), timeout=5)
            cluster.kill(2)
            cluster.kill(3)
            # once node 1 notices (an election timeout), writes fail at once with a clear error
            deadline = time.monotonic() + 15
            while True:
                t0 = time.monotonic()
                try:
                    await stub.Put(store_pb2.StorePutRequest(key="kv/x", value="1"), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAVAILABLE and "no quorum" in (exc.details() or ""):
                        assert time.monotonic() - t0 < 1.0  # refused at once, not after a timeout
                        break
                assert time.monotonic() < deadline, "writes were not refused after quorum loss"
                await asyncio.sleep(0.2)
            resp = await stub.Get(store_pb2.StoreGetRequest(key="nodes/gpu-1"), timeout=5)
            assert resp.stale and "quorum" in resp.stale_reason
            assert json.loads(resp.kvs[0].value)["status"] == "cordon"
            await asyncio.to_thread(cluster.start, 2)
            await asyncio.to_thread(cluster.leader)
            deadline = time.monotonic() + 15
            while True:
                try:
                    await stub.Put(store_pb2.StorePutRequest(key="kv/x", value="2"), timeout=5)
                    break
                except grpc.aio.AioRpcError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            resp = await stub.Get(store_pb2.StoreGetRequest(key="kv/x"), timeout=5)
            assert not resp.stale and resp.kvs[0].value == "2"


def _raft_counter(cluster: LocalCluster, node: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.members[node].http_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(f"{name}_total{{"))


async def test_group_commit_under_a_burst_with_leader_kill_and_pause(tmp_path: Path) -> None:
    """Twenty-four clients at once: the leader persists many proposals per fsync and sends its appends while its own
    write is in progress; kill -9 of that leader and SIGSTOP of a follower in the middle lose no acknowledged write
    and the history stays linearizable."""
    with LocalCluster(3, tmp_path) as cluster:
        await asyncio.to_thread(cluster.start)
        leader = await asyncio.to_thread(cluster.leader)
        work = Workload([m.address for m in cluster.members.values()], clients=24, keys=4)

        async def chaos() -> None:
            await asyncio.sleep(2.0)
            syncs = _raft_counter(cluster, leader, "infermesh_raft_log_syncs")
            entries = _raft_counter(cluster, leader, "infermesh_raft_log_entries")
            assert entries > 50 and entries >= 1.5 * syncs, (entries, syncs)  # group commit happened
            cluster.kill(leader)
            new = await asyncio.to_thread(cluster.leader, LEADER_BOUND_S, {leader})
            follower = next(i for i in cluster.members if i not in (leader, new))
            cluster.pause(follower)
            await asyncio.sleep(1.0)
            cluster.resume(follower)
            await asyncio.to_thread(cluster.start, leader)

        await asyncio.gather(work.run(6.0), chaos())
        await asyncio.to_thread(cluster.leader)
        await work.final_reads()
        assert work.acked_writes > 100, work.errors
        res = check_history(work.history)
        assert res.ok, f"not linearizable on keys {res.bad_keys}"
