"""Focused behaviours of the sans-IO core and the state machine, on a lossless in-memory network."""

from __future__ import annotations

import contextlib
import random

import pytest

from agents.raft.core import RaftConfig, RaftNode, decode_conf_change
from agents.raft.types import MalformedMessage, Message, MsgType, ProposalDropped, Role
from agents.store.machine import Compacted, PolicyStore, encode_command


class Net:
    def __init__(self, n: int = 3, **cfg: int) -> None:
        ids = tuple(range(1, n + 1))
        self.nodes = {i: RaftNode(RaftConfig(node_id=i, voters=ids, **cfg), random.Random(i)) for i in ids}  # type: ignore[arg-type]
        self.cut: set[int] = set()
        self.applied: dict[int, list[bytes]] = {i: [] for i in ids}
        self.reads: dict[int, list[int]] = {i: [] for i in ids}

    def flush(self) -> None:
        for _ in range(200):
            moved = False
            for i, node in self.nodes.items():
                while node.has_ready():
                    rd = node.ready()
                    for m in rd.messages:
                        if m.to not in self.cut and i not in self.cut:
                            self.inbox.append(m)
                    for e in rd.committed_entries:
                        if e.type == 1:
                            node.apply_conf_change(*decode_conf_change(e.data))
                        elif e.data:
                            self.applied[i].append(e.data)
                    self.reads[i].extend(rs.index for rs in rd.read_states)
                    node.advance(rd)
                    moved = True
            inbox, self.inbox = self.inbox, []
            for m in inbox:
                moved = True
                with contextlib.suppress(ProposalDropped):
                    self.nodes[m.to].step(m)
            if not moved:
                return

    inbox: list[Message] = []

    def elect(self, who: int) -> None:
        self.inbox = []
        self.flush()  # apply the bootstrap membership first: nobody campaigns with conf changes pending
        self.nodes[who].campaign_now()
        self.flush()
        assert self.nodes[who].role == Role.LEADER

    def ticks(self, n: int) -> None:
        for _ in range(n):
            for i, node in self.nodes.items():
                if i not in self.cut:
                    node.tick()
            self.flush()


def test_election_replication_and_follower_forwarding() -> None:
    net = Net()
    net.elect(1)
    net.nodes[3].propose(b"from-follower")  # forwarded to the leader
    net.flush()
    assert all(b"from-follower" in net.applied[i] for i in (1, 2, 3))


def test_prevote_keeps_a_rejoining_node_from_disrupting_the_leader() -> None:
    net = Net()
    net.elect(1)
    term = net.nodes[1].term
    net.cut = {3}
    net.ticks(60)  # node 3 keeps pre-campaigning alone without bumping its term
    assert net.nodes[3].term == term
    net.cut = set()
    net.ticks(3)
    assert net.nodes[1].role == Role.LEADER and net.nodes[1].term == term


def test_check_quorum_steps_down_and_uncommitted_log_is_bounded() -> None:
    net = Net(max_uncommitted_bytes=100)
    net.elect(1)
    net.cut = {2, 3}
    leader = net.nodes[1]
    leader.propose(b"x" * 60)
    with pytest.raises(ProposalDropped, match="uncommitted log is full"):
        leader.propose(b"y" * 60)
    net.ticks(25)
    assert leader.role == Role.FOLLOWER and leader.lead == 0
    with pytest.raises(ProposalDropped, match="no leader"):
        leader.propose(b"z")


def test_leadership_transfer() -> None:
    net = Net()
    net.elect(1)
    net.nodes[1].transfer_leader(3)
    net.flush()
    assert net.nodes[3].role == Role.LEADER and net.nodes[1].lead == 3


def test_read_index_on_follower_waits_for_quorum_confirmation() -> None:
    net = Net()
    net.elect(1)
    net.nodes[1].propose(b"a")
    net.flush()
    net.nodes[2].read_index(b"ctx-1")
    net.flush()
    assert net.reads[2] == [net.nodes[1].log.committed]


def test_malformed_messages_are_refused() -> None:
    node = Net().nodes[1]
    with pytest.raises(MalformedMessage, match="without a sender"):
        node.step(Message(MsgType.HEARTBEAT, to=1, term=5))
    with pytest.raises(MalformedMessage, match="negative"):
        node.step(Message(MsgType.APP, to=1, frm=2, term=-1))


def test_store_sessions_apply_a_retried_command_once() -> None:
    sm = PolicyStore()
    cmd = encode_command("put", "kv/a", value="1", client=7, seq=1)
    r1 = sm.apply(cmd)
    r2 = sm.apply(cmd)
    assert r1 == r2 and sm.revision == 1
    assert not sm.apply(encode_command("put", "kv/a", value="0", client=7, seq=0))["ok"]
    cas = sm.apply(encode_command("cas", "kv/a", value="2", expected="1", client=7, seq=2))
    assert cas["succeeded"] and sm.get("kv/a").value == "2"  # type: ignore[union-attr]
    snap = sm.snapshot()
    other = PolicyStore()
    other.restore(snap)
    assert other.apply(encode_command("cas", "kv/a", value="2", expected="1", client=7, seq=2)) == cas
    with pytest.raises(Compacted):
        other.events_since(1, "")
