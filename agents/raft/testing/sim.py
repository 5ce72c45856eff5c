"""Deterministic simulation of a Raft group with the real core and state machine, in the style of FoundationDB/VOPR.

One seed fixes everything: network delays (reordering), drops, duplicates, partitions, crashes that lose the
unsynced part of a node's writes, slow disks, membership changes and leadership transfers. Raft invariants are
checked after every event; client histories are checked for linearizability at the end.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.raft.core import RaftConfig, RaftNode, decode_conf_change
from agents.raft.types import (
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    RaftError,
    Ready,
    RestoredState,
    Role,
    Snapshot,
)
from agents.store.machine import PolicyStore, encode_command

from .lincheck import INF, Op, check_history


class InvariantViolation(AssertionError):
    pass


@dataclass
class Disk:
    """What survives a crash: only writes whose Ready finished persisting. A Ready that need not be synced (a new
    commit index alone) is written to the page cache: a crash keeps it or loses it, and the next synced write makes
    it durable."""

    hs: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    unsynced_hs: HardState | None = None

    def save(self, rd: Ready, offset_after: int) -> None:
        if self.unsynced_hs is not None:  # an fsync flushes the earlier unsynced write too
            self.hs, self.unsynced_hs = self.unsynced_hs, None
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hs = rd.hard_state

    def write_unsynced(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self.unsynced_hs = rd.hard_state

    def crash(self, keep_unsynced: bool) -> None:
        if self.unsynced_hs is not None and keep_unsynced:
            self.hs = self.unsynced_hs
        self.unsynced_hs = None


@dataclass
class Faults:
    drop: float = 0.0
    dup: float = 0.0
    max_delay: int = 5
    partitions: bool = False
    crashes: bool = False
    slow_disk: bool = False
    membership: bool = False
    transfers: bool = False
    batching: bool = False  # many clients and a disk that always takes time: proposals and acks pile up per Ready


@dataclass
class Pending:
    op: Op
    client: int
    seq: int
    deadline: float
    tries: int = 1


class SimNode:
    def __init__(self, sim: Simulation, nid: int, founders: tuple[int, ...]) -> None:
        self.sim = sim
        self.id = nid
        self.founders = founders
        self.disk = Disk()
        self.up = True
        self.incarnation = 0
        self.disk_delay = 0
        self.in_flight: Ready | None = None
        self.boot()

    def boot(self) -> None:
        restored = None
        if self.disk.hs.term or self.disk.entries or self.disk.snapshot:
            restored = RestoredState(self.disk.hs, self.disk.snapshot, [Entry(e.term, e.index, e.type, e.data)
                                                                       for e in self.disk.entries])  # fmt: skip
        cfg = RaftConfig(node_id=self.id, voters=self.founders, election_tick=10, heartbeat_tick=2,
                         max_msg_bytes=4096, max_inflight=8, max_uncommitted_bytes=1 << 16)  # fmt: skip
        self.core = RaftNode(cfg, random.Random(self.sim.rng.random()), restored)
        self.sm = PolicyStore()
        if self.disk.snapshot is not None:
            self.sm.restore(self.disk.snapshot.data)
        self.incarnation += 1
        self.in_flight = None
        self.reads: dict[bytes, tuple[Op, int]] = {}  # context -> (op, read index or -1)
        self.was_leader_term = -1


class Simulation:
    def __init__(self, seed: int, faults: Faults | None = None, n: int = 3, duration: int = 3000,
                 clients: int = 3, keys: int = 3) -> None:  # fmt: skip
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.now = 0.0
        self.queue: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.duration = duration
        founders = tuple(range(1, n + 1))
        self.nodes: dict[int, SimNode] = {i: SimNode(self, i, founders) for i in founders}
        if self.faults.membership:
            spare = n + 1  # joins later as a learner, then voter; starts with no membership
            self.nodes[spare] = SimNode(self, spare, ())
        self.cut: set[tuple[int, int]] = set()
        self.leaders: dict[int, int] = {}  # term -> leader (election safety)
        self.max_batch = 0  # most entries persisted by one Ready (group commit)
        self.sent_first = 0  # leader messages sent while their Ready was still being persisted
        self.entry_ids: dict[tuple[int, int], tuple[int, bytes]] = {}  # (index, term) -> (prev term, data)
        self.applied: dict[int, tuple[int, bytes]] = {}  # index -> (term, data) applied anywhere
        self.history: list[Op] = []
        self.pending: dict[tuple[int, int], Pending] = {}
        self.keys = [f"kv/k{i}" for i in range(keys)]
        self.n_clients = clients
        self.client_seq: dict[int, int] = {}
        self.value_seq = 0
        self.steps = 0
        self.events_log: list[str] = []
        for nid in self.nodes:
            self.at(self.rng.randrange(10), "tick", nid)
            if self.faults.batching:
                self.nodes[nid].disk_delay = 3 + self.rng.randrange(8)
        for c in range(1, clients + 1):
            self.at(50 + self.rng.randrange(100), "client", c)
        self.at(200 + self.rng.randrange(200), "chaos", None)

    # ------------------------------------------------------------------ scheduling
    def at(self, delay: float, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (self.now + delay, self.seq, kind, payload))

    def run(self) -> None:
        handlers: dict[str, Callable[[Any], None]] = {
            "tick": self.on_tick, "deliver": self.on_deliver, "persisted": self.on_persisted,
            "client": self.on_client, "chaos": self.on_chaos, "timeout": self.on_timeout,
            "restart": self.on_restart, "heal": self.on_heal,
        }  # fmt: skip
        settle_at = self.duration
        settled = False
        while self.queue:
            t, _, kind, payload = heapq.heappop(self.queue)
            if t > settle_at and not settled:
                settled = True
                self.settle()
            if t > settle_at + 2000:
                break
            self.now = t
            handlers[kind](payload)
            self.steps += 1
            self.check_invariants()
        self.final_reads_and_check()

    # ------------------------------------------------------------------ node plumbing
    def pump(self, node: SimNode) -> None:
        """The driver's loop (agents/raft/group.py): a leader's messages go out while its Ready is persisted
        (`send_first`); a Ready with only a new commit index is written without waiting for the disk."""
        while node.up and node.in_flight is None and node.core.has_ready():
            rd = node.core.ready()
            node.in_flight = rd
            self.max_batch = max(self.max_batch, len(rd.entries))
            if rd.send_first:
                for m in rd.messages:
                    self.send(node.id, m)
                self.sent_first += len(rd.messages)
            delay = node.disk_delay if rd.must_sync and (rd.entries or rd.hard_state or rd.snapshot) else 0
            if delay:
                self.at(delay, "persisted", (node.id, node.incarnation, rd))
                return
            self.finish_ready(node, rd)

    def on_persisted(self, p: tuple[int, int, Ready]) -> None:
        nid, inc, rd = p
        node = self.nodes[nid]
        if node.up and node.incarnation == inc and node.in_flight is rd:
            self.finish_ready(node, rd)
            self.pump(node)

    def finish_ready(self, node: SimNode, rd: Ready) -> None:
        if rd.must_sync:
            node.disk.save(rd, node.core.log.offset)
        else:
            node.disk.write_unsynced(rd)
        if rd.snapshot is not None:
            node.sm.restore(rd.snapshot.data)
        if not rd.send_first:
            for m in rd.messages:
                self.send(node.id, m)
        for e in rd.committed_entries:
            self.apply(node, e)
        node.in_flight = None
        node.core.advance(rd)
        for rs in rd.read_states:
            if rs.context in node.reads:
                op, _ = node.reads[rs.context]
                node.reads[rs.context] = (op, rs.index)
        self.serve_reads(node)
        if node.core.log.applied - node.core.log.offset > 40 and self.rng.random() < 0.5:
            snap = node.core.compact(node.core.log.applied, node.sm.snapshot(), keep=5)
            node.disk.snapshot = snap
            node.disk.entries = [e for e in node.disk.entries if e.index > node.core.log.offset]

    def apply(self, node: SimNode, e: Entry) -> None:
        prev = self.applied.get(e.index)
        if prev is not None and prev != (e.term, e.data):
            raise InvariantViolation(f"state machine safety: node {node.id} applied {e.index}@{e.term}, "
                                     f"another node applied term {prev[0]}")  # fmt: skip
        self.applied[e.index] = (e.term, e.data)
        if e.type == EntryType.CONF_CHANGE:
            kind, who = decode_conf_change(e.data)
            node.core.apply_conf_change(kind, who)
            return
        result = node.sm.apply(e.data)
        if not e.data:
            return
        cmd = json.loads(e.data)
        key = (int(cmd.get("c", 0)), int(cmd.get("s", 0)))
        pend = self.pending.get(key)
        # only the node the client is talking to answers it
        if pend is not None and pend.op.ret == INF and self._client_node.get(key[0]) == node.id:
            pend.op.ret = self.now
            pend.op.out = bool(result.get("succeeded")) if pend.op.kind == "cas" else None
            del self.pending[key]
            self.at(1 + self.rng.randrange(20), "client", key[0])

    def serve_reads(self, node: SimNode) -> None:
        for ctx, (op, idx) in list(node.reads.items()):
            if idx >= 0 and node.core.log.applied >= idx:
                del node.reads[ctx]
                if op.ret == INF:
                    kv = node.sm.get(op.key)
                    op.out = kv.value if kv else None
                    op.ret = self.now
                    self.at(1 + self.rng.randrange(20), "client", op.client)

    def step(self, node: SimNode, m: Message) -> None:
        with contextlib.suppress(RaftError):  # a dropped forwarded proposal: the client times out and retries
            node.core.step(m)
        self.pump(node)

    def send(self, frm: int, m: Message) -> None:
        f = self.faults
        if (frm, m.to) in self.cut or m.to not in self.nodes:
            self.report_snap(frm, m, ok=False)
            return
        if self.rng.random() < f.drop:
            self.report_snap(frm, m, ok=False)
            return
        copies = 2 if self.rng.random() < f.dup else 1
        for _ in range(copies):
            self.at(1 + self.rng.randrange(f.max_delay), "deliver", m)
        self.report_snap(frm, m, ok=True)

    def report_snap(self, frm: int, m: Message, ok: bool) -> None:
        if m.type == MsgType.SNAP:
            node = self.nodes[frm]
            if node.up:
                node.core.report_snapshot(m.to, ok)

    # ------------------------------------------------------------------ handlers
    def on_tick(self, nid: int) -> None:
        node = self.nodes[nid]
        if node.up:
            node.core.tick()
            self.pump(node)
            self.at(10, "tick", nid)

    def on_deliver(self, m: Message) -> None:
        node = self.nodes.get(m.to)
        if node is None or not node.up or (m.frm, m.to) in self.cut:
            return
        self.step(node, m)

    _client_node: dict[int, int] = {}

    def on_client(self, c: int) -> None:
        if self.now > self.duration:
            return
        up = [n for n in self.nodes.values() if n.up]
        if not up:
            self.at(50, "client", c)
            return
        node = self.rng.choice(up)
        self._client_node[c] = node.id
        key = self.rng.choice(self.keys)
        r = self.rng.random()
        if r < 0.4:
            op = Op(c, key, "get", self.now, INF)
            self.history.append(op)
            ctx = f"{c}:{self.now}:{self.seq}".encode()
            node.reads[ctx] = (op, -1)
            node.core.read_index(ctx)
            self.pump(node)
            self.at(150, "timeout", ("read", node.id, ctx, op))
            return
        self.value_seq += 1
        value = f"v{self.value_seq}"
        seq = self.client_seq.get(c, 0) + 1
        self.client_seq[c] = seq
        if r < 0.75:
            op = Op(c, key, "put", self.now, INF, value)
            data = encode_command("put", key, value=value, client=c, seq=seq)
        else:
            expected = f"v{self.rng.randrange(max(1, self.value_seq))}" if self.rng.random() < 0.7 else None
            op = Op(c, key, "cas", self.now, INF, (expected, value))
            data = encode_command("cas", key, value=value, expected=expected, expect_absent=expected is None,
                                  client=c, seq=seq)  # fmt: skip
        self.history.append(op)
        pend = Pending(op, c, seq, self.now + 200)
        self.pending[(c, seq)] = pend
        self.propose(node, pend, data)

    def propose(self, node: SimNode, pend: Pending, data: bytes) -> None:
        with contextlib.suppress(RaftError):  # not accepted here; the timeout retries elsewhere, same sequence
            node.core.propose(data)
        self.pump(node)
        self.at(200, "timeout", ("write", pend.client, pend.seq, data))

    def on_timeout(self, p: tuple[Any, ...]) -> None:
        if p[0] == "read":
            _, nid, ctx, op = p
            node = self.nodes[nid]
            if op.ret == INF:
                node.reads.pop(ctx, None)
                op.ret = INF  # no answer: the get constrains nothing
                self.history.remove(op)
                self.at(1, "client", op.client)
            return
        _, c, seq, data = p
        pend = self.pending.get((c, seq))
        if pend is None:
            return
        if pend.tries >= 4:
            del self.pending[(c, seq)]  # give up: outcome unknown, the op stays open-ended in the history
            self.at(1, "client", c)
            return
        pend.tries += 1
        up = [n for n in self.nodes.values() if n.up]
        if not up:
            self.at(200, "timeout", p)
            return
        node = self.rng.choice(up)
        self._client_node[c] = node.id
        self.propose(node, pend, data)

    def on_chaos(self, _: Any) -> None:
        if self.now > self.duration:
            return
        f = self.faults
        choices = []
        if f.partitions:
            choices += ["isolate", "split"]
        if f.crashes:
            choices += ["crash", "crash"]
        if f.slow_disk:
            choices.append("slow")
        if f.membership:
            choices.append("member")
        if f.transfers:
            choices.append("transfer")
        if choices:
            getattr(self, "chaos_" + self.rng.choice(choices))()
        self.at(150 + self.rng.randrange(300), "chaos", None)

    def chaos_isolate(self) -> None:
        victim = self.rng.choice(list(self.nodes))
        for other in self.nodes:
            if other != victim:
                self.cut |= {(victim, other), (other, victim)}
        self.events_log.append(f"{self.now}: isolate {victim}")
        self.at(100 + self.rng.randrange(400), "heal", None)

    def chaos_split(self) -> None:
        ids = list(self.nodes)
        self.rng.shuffle(ids)
        k = self.rng.randrange(1, len(ids))
        a, b = ids[:k], ids[k:]
        for x in a:
            for y in b:
                if self.rng.random() < 0.8:
                    self.cut.add((x, y))
                if self.rng.random() < 0.8:
                    self.cut.add((y, x))  # sometimes one-way: asymmetric partitions
        self.events_log.append(f"{self.now}: split {a}|{b}")
        self.at(100 + self.rng.randrange(400), "heal", None)

    def on_heal(self, _: Any) -> None:
        self.cut.clear()
        self.events_log.append(f"{self.now}: heal")

    def chaos_crash(self) -> None:
        up = [n for n in self.nodes.values() if n.up]
        if not up:
            return
        node = self.rng.choice(up)
        node.up = False  # the in-flight Ready (unsynced writes) is lost
        node.disk.crash(keep_unsynced=self.rng.random() < 0.5)
        self.events_log.append(f"{self.now}: crash {node.id}")
        self.at(50 + self.rng.randrange(300), "restart", node.id)

    def on_restart(self, nid: int) -> None:
        node = self.nodes[nid]
        if node.up:
            return
        node.up = True
        node.boot()
        self.events_log.append(f"{self.now}: restart {nid}")
        self.at(self.rng.randrange(10), "tick", nid)
        self.pump(node)

    def chaos_slow(self) -> None:
        node = self.rng.choice(list(self.nodes.values()))
        node.disk_delay = 0 if node.disk_delay else 5 + self.rng.randrange(60)
        self.events_log.append(f"{self.now}: disk {node.id} delay {node.disk_delay}")

    def leader(self) -> SimNode | None:
        best = None
        for n in self.nodes.values():
            if n.up and n.core.role == Role.LEADER and (best is None or n.core.term > best.core.term):
                best = n
        return best

    def chaos_member(self) -> None:
        lead = self.leader()
        if lead is None:
            return
        core = lead.core
        spare = max(self.nodes)
        try:
            if spare not in core.voters | core.learners:
                core.propose_conf_change(ConfChangeType.ADD_LEARNER, spare)
                action = f"add learner {spare}"
            elif spare in core.learners:
                core.propose_conf_change(ConfChangeType.ADD_VOTER, spare)
                action = f"promote {spare}"
            elif len(core.voters) > 3:
                victim = self.rng.choice(sorted(core.voters - {lead.id}))
                core.propose_conf_change(ConfChangeType.REMOVE, victim)
                action = f"remove {victim}"
            else:
                missing = [n for n in self.nodes if n not in core.voters | core.learners]
                if not missing:
                    return
                core.propose_conf_change(ConfChangeType.ADD_LEARNER, missing[0])
                action = f"re-add learner {missing[0]}"
        except RaftError:
            return
        self.events_log.append(f"{self.now}: {action} via {lead.id}")
        self.pump(lead)

    def chaos_transfer(self) -> None:
        lead = self.leader()
        if lead is None:
            return
        others = sorted(lead.core.voters - {lead.id})
        if others:
            target = self.rng.choice(others)
            lead.core.transfer_leader(target)
            self.events_log.append(f"{self.now}: transfer {lead.id} -> {target}")
            self.pump(lead)

    # ------------------------------------------------------------------ invariants
    def check_invariants(self) -> None:
        for node in self.nodes.values():
            if not node.up:
                continue
            core = node.core
            log = core.log
            if log.committed > log.last_index():
                raise InvariantViolation(f"node {node.id}: commit {log.committed} beyond last {log.last_index()}")
            if core.role == Role.LEADER:
                known = self.leaders.setdefault(core.term, node.id)
                if known != node.id:
                    raise InvariantViolation(f"election safety: term {core.term} has leaders {known} and {node.id}")
                if node.was_leader_term != core.term:
                    node.was_leader_term = core.term
                    self.check_leader_completeness(node)
            # log matching: (index, term) fixes the entry and the term of its predecessor, so equal prefixes
            prev_term = log.offset_term
            for e in log.entries:
                ident = (prev_term, e.data)
                seen = self.entry_ids.setdefault((e.index, e.term), ident)
                if seen != ident:
                    raise InvariantViolation(f"log matching: node {node.id} entry {e.index}@{e.term} differs")
                prev_term = e.term

    def check_leader_completeness(self, node: SimNode) -> None:
        log = node.core.log
        for index, (term, _) in self.applied.items():
            if index <= log.offset:
                continue
            if log.term(index) != term:
                raise InvariantViolation(f"leader completeness: leader {node.id} (term {node.core.term}) lacks "
                                         f"committed entry {index}@{term}")  # fmt: skip

    # ------------------------------------------------------------------ end
    def settle(self) -> None:
        self.cut.clear()
        for n in self.nodes.values():
            n.disk_delay = 0
            if not n.up:
                self.at(1, "restart", n.id)

    def final_reads_and_check(self) -> None:
        lead = self.leader()
        if lead is None:
            raise InvariantViolation("no leader after the network healed and every node restarted")
        # every member that applied up to the leader's commit agrees on the state
        target = lead.core.log.committed
        for n in self.nodes.values():
            if n.core.id in lead.core.voters and n.core.log.applied >= target and n.sm.data != lead.sm.data:
                raise InvariantViolation(f"node {n.id} state differs from leader {lead.id} at index {target}")
        end = self.now + 1
        for k in self.keys:
            kv = lead.sm.get(k)
            self.history.append(Op(0, k, "get", end, end + 1, None, kv.value if kv else None))
        res = check_history(self.history)
        if not res:
            raise InvariantViolation(f"history not linearizable for keys {res.bad_keys}")

    def describe(self) -> str:
        return "\n".join(self.events_log[-30:])


def faults_for_seed(seed: int) -> tuple[Faults, int]:
    """Mix fault kinds across seeds so the suite covers each alone and together."""
    r = random.Random(seed * 7919 + 1)
    f = Faults(
        drop=r.choice([0.0, 0.02, 0.1]),
        dup=r.choice([0.0, 0.05]),
        max_delay=r.choice([2, 10, 30]),
        partitions=r.random() < 0.6,
        crashes=r.random() < 0.6,
        slow_disk=r.random() < 0.4,
        membership=r.random() < 0.3,
        transfers=r.random() < 0.3,
    )
    n = r.choice([3, 3, 5])
    f.batching = r.random() < 0.3
    return f, n


def run_seed(seed: int, duration: int = 2500) -> Simulation:
    faults, n = faults_for_seed(seed)
    sim = Simulation(seed, faults, n=n, duration=duration, clients=8 if faults.batching else 3)
    sim.run()
    return sim
