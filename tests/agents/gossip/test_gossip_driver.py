"""The asyncio driver over real loopback sockets: join, failure detection, keyring (including rotation and a node
without the key), summaries over UDP and TCP, and bad input that is dropped and counted without changing anything."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import CollectorRegistry

from agents.gossip.codec import encode_packet
from agents.gossip.driver import GossipNode, NodeMeta
from agents.gossip.keyring import Keyring
from agents.gossip.messages import Alive, Dead, MemberState, Suspect
from agents.gossip.metrics import GossipMetrics
from agents.gossip.swim import SwimConfig
from agents.topology.service import Topology

FAST = dict(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, push_pull_interval=2.0, reconnect_interval=1.0)


async def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def states(node: GossipNode) -> dict[str, MemberState]:
    return {m.name: m.state for m in node.members()}


async def make_cluster(n: int, keyring: Callable[[], Keyring | None] = lambda: None) -> list[GossipNode]:
    nodes: list[GossipNode] = []
    for i in range(n):
        node = GossipNode(
            f"g{i}",
            ("127.0.0.1", 0),
            config=SwimConfig(**FAST),  # type: ignore[arg-type]
            keyring=keyring(),
            meta=NodeMeta(roles=["gpu"], zone=f"z{i % 2}", region="r1"),
            metrics=GossipMetrics(CollectorRegistry()),
            topology=Topology(f"g{i}", {"zone": f"z{i % 2}", "region": "r1"}),
            seed=i,
        )
        await node.start([nodes[0].addr] if nodes else None)
        nodes.append(node)
    await wait_for(lambda: all(len([s for s in states(x).values() if s == MemberState.ALIVE]) == n for x in nodes))
    return nodes


@pytest.fixture
async def cluster() -> AsyncIterator[list[GossipNode]]:
    nodes = await make_cluster(4)
    yield nodes
    for node in nodes:
        await node.stop(leave=False)


async def test_join_metadata_coordinates_and_failure(cluster: list[GossipNode]) -> None:
    a = cluster[0]
    m = {x.name: x for x in a.members()}
    assert NodeMeta.decode(m["g1"].meta).zone == "z1"
    await wait_for(lambda: a.topology is not None and len(a.topology.peers) >= 3 and a.topology.client.updates > 5)
    assert a.topology is not None
    assert 0 < a.topology.rtt("g0", "g1") < 0.05
    victim = cluster[3]
    await victim.stop(leave=False)  # silent: sockets closed, no leave message
    await wait_for(lambda: all(states(x)["g3"] == MemberState.DEAD for x in cluster[:3]), timeout=20)
    assert not any(x.degraded for x in cluster[:3])


async def test_graceful_leave_and_summaries(cluster: list[GossipNode]) -> None:
    cluster[1].set_summary(b"small-summary")
    big = os.urandom(4000)  # above the inline limit: spreads as a digest, fetched over TCP
    cluster[2].set_summary(big)
    await wait_for(lambda: all(x.summaries().get("g1") == (1, b"small-summary") for x in cluster if x.name != "g1"))
    await wait_for(lambda: all(x.summaries().get("g2") == (1, big) for x in cluster if x.name != "g2"))
    await cluster[3].stop(leave=True)
    await wait_for(lambda: all(states(x)["g3"] == MemberState.LEFT for x in cluster[:3]))


async def test_keyring_rotation_and_outsider() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    nodes = await make_cluster(3, keyring=lambda: Keyring([k1]))
    outsider = GossipNode("intruder", ("127.0.0.1", 0), config=SwimConfig(**FAST), keyring=Keyring([os.urandom(32)]))  # type: ignore[arg-type]
    plain = GossipNode("plain", ("127.0.0.1", 0), config=SwimConfig(**FAST))  # type: ignore[arg-type]
    try:
        await outsider.start([nodes[0].addr])
        await plain.start([nodes[1].addr])
        await asyncio.sleep(1.5)
        for x in nodes:
            assert set(states(x)) == {"g0", "g1", "g2"}
        assert nodes[0].dropped["unauthenticated"] >= 1
        # Rotation without a flag day: install k2 everywhere, switch the primary, then retire k1.
        for x in nodes:
            assert x.keyring is not None
            x.keyring.add_key(k2)
        for x in nodes:
            assert x.keyring is not None
            x.keyring.use_key(k2)
        for x in nodes:
            assert x.keyring is not None
            x.keyring.remove_key(k1)
        nodes[0].set_summary(b"after-rotation")
        await wait_for(lambda: all(x.summaries().get("g0") == (1, b"after-rotation") for x in nodes[1:]))
        assert all(states(x)[y.name] == MemberState.ALIVE for x in nodes for y in nodes)
    finally:
        for x in [*nodes, outsider, plain]:
            await x.stop(leave=False)


async def test_bad_input_is_dropped_counted_and_changes_nothing() -> None:
    key = os.urandom(32)
    nodes = await make_cluster(2, keyring=lambda: Keyring([key]))
    target = nodes[0]
    try:
        before = {m.name: (m.state, m.incarnation) for m in target.members()}
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        forged = encode_packet([Dead(99, "g1", "x"), Suspect(99, "g0", "x"), Alive(99, "evil", ("127.0.0.1", 9))])
        sealed_other = Keyring([os.urandom(32)]).seal(forged)
        good_ring = Keyring([key])
        valid = good_ring.seal(encode_packet([Alive(0, "g1", nodes[1].addr)]))
        payloads = [
            forged,  # not sealed at all
            sealed_other,  # sealed with a key we do not hold
            valid[:-5],  # truncated
            b"\x01" + os.urandom(3000),  # oversized
            b"",
            valid,
            valid,  # the same sealed packet again: a replay
        ]
        for data in payloads:
            sock.sendto(data, target.addr)
        # A truncated and a garbage push/pull over TCP.
        for blob in (struct.pack("!I", 1000) + b"abc", struct.pack("!I", 64) + os.urandom(64), b"\xff\xff\xff\xff"):
            r, w = await asyncio.open_connection(*target.addr)
            w.write(blob)
            await w.drain()
            w.write_eof()
            await r.read()
            w.close()
        sock.close()
        await wait_for(lambda: target.dropped["replayed"] >= 1 and target.dropped["oversized"] >= 1)
        assert target.dropped["unauthenticated"] >= 3  # unsealed, wrong key, truncated, empty
        assert target.dropped["truncated"] + target.dropped["malformed"] >= 2
        after = {m.name: (m.state, m.incarnation) for m in target.members()}
        assert after == before
        assert "evil" not in after
        assert target.core is not None and target.core.stats.self_refutes == 0
    finally:
        for x in nodes:
            await x.stop(leave=False)


async def test_unencrypted_bad_input_is_dropped_and_counted(cluster: list[GossipNode]) -> None:
    target = cluster[0]
    before = {m.name: (m.state, m.incarnation) for m in target.members()}
    good = encode_packet([Alive(0, "g1", cluster[1].addr)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for data in (good[:-3], b"IM\x01\x05", os.urandom(200), b"x" * 5000, good[:2] + b"\x09" + good[3:]):
        sock.sendto(data, target.addr)
    sock.close()
    await wait_for(lambda: sum(target.dropped.values()) >= 5)
    assert target.dropped["oversized"] == 1
    assert target.dropped["truncated"] >= 2
    assert {m.name: (m.state, m.incarnation) for m in target.members()} == before
