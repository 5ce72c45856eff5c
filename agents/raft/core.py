"""The sans-IO Raft state machine, modelled on etcd-io/raft: step messages and ticks in, take a `Ready`, `advance`.

Time is the number of `tick()` calls and randomness is an injected `random.Random`, so a simulation can replay any
schedule exactly. The driver persists, sends and applies what a `Ready` holds, in that order, then calls `advance`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from .log import RaftLog
from .progress import Progress, ProgressState
from .types import (
    CAMPAIGN_TRANSFER,
    LOCAL_TYPES,
    NONE,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MalformedMessage,
    Message,
    MsgType,
    ProposalDropped,
    ReadState,
    Ready,
    RestoredState,
    Role,
    Snapshot,
    SoftState,
)


@dataclass(slots=True)
class RaftConfig:
    node_id: int
    voters: tuple[int, ...] = ()  # initial membership when bootstrapping an empty log
    learners: tuple[int, ...] = ()
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_msg_bytes: int = 1 << 20  # batching: payload bytes per append message
    max_inflight: int = 256  # pipelining: appends in flight per follower
    max_uncommitted_bytes: int = 64 << 20  # proposals are refused beyond this while quorum is missing
    pre_vote: bool = True
    check_quorum: bool = True

    def validate(self) -> None:
        if self.node_id <= 0:
            raise ValueError(f"raft node_id must be a positive integer, got {self.node_id}")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("raft election_tick must be greater than heartbeat_tick (both positive)")
        if set(self.voters) & set(self.learners):
            raise ValueError("a raft node cannot be both voter and learner")


def encode_conf_change(kind: ConfChangeType, node: int, address: str = "") -> bytes:
    obj: dict[str, object] = {"type": int(kind), "node": node}
    if address:
        obj["address"] = address  # the driver learns how to reach a member from the log itself
    return json.dumps(obj).encode()


def decode_conf_change(data: bytes) -> tuple[ConfChangeType, int]:
    try:
        obj = json.loads(data)
        return ConfChangeType(obj["type"]), int(obj["node"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedMessage(f"malformed conf change entry: {exc}") from exc


_RESP_OF = {MsgType.VOTE: MsgType.VOTE_RESP, MsgType.PRE_VOTE: MsgType.PRE_VOTE_RESP}


class RaftNode:
    """One member of one Raft group."""

    def __init__(self, cfg: RaftConfig, rng: random.Random, restored: RestoredState | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.id = cfg.node_id
        self.rng = rng
        snap = restored.snapshot if restored else None
        entries = [e for e in restored.entries if not snap or e.index > snap.index] if restored else []
        hs = restored.hard_state if restored else HardState()
        bootstrap: list[Entry] = []
        if snap is None and not entries and hs.term == 0 and cfg.voters:
            # a fresh member of the founding group: the initial membership becomes the first log entries (all
            # founders write identical ones), so members added later learn it by replaying the log
            members = [(ConfChangeType.ADD_VOTER, n) for n in sorted(cfg.voters)]
            members += [(ConfChangeType.ADD_LEARNER, n) for n in sorted(cfg.learners)]
            bootstrap = [
                Entry(1, i + 1, EntryType.CONF_CHANGE, encode_conf_change(k, n)) for i, (k, n) in enumerate(members)
            ]
            hs = HardState(1, NONE, len(bootstrap))
        self.log = RaftLog(snap.index if snap else 0, snap.term if snap else 0, entries)
        if bootstrap:
            self.log.append(bootstrap)
        self.snapshot: Snapshot | None = snap  # latest snapshot, sent to followers that fell behind compaction
        self.term = hs.term
        self.vote = hs.vote
        if hs.commit:
            self.log.commit_to(min(hs.commit, self.log.last_index()))
        conf = snap.conf if snap else ConfState(cfg.voters, cfg.learners)
        self.voters: set[int] = set(conf.voters)
        self.learners: set[int] = set(conf.learners)
        self.prs: dict[int, Progress] = {}
        self.role = Role.FOLLOWER
        self.lead = NONE
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = cfg.election_tick
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self.votes: dict[int, bool] = {}
        # ReadIndex bookkeeping on the leader: context -> (index, requester, acks), in arrival order
        self.read_queue: dict[bytes, tuple[int, int, set[int]]] = {}
        self.pending_reads: list[Message] = []  # wait for the first commit of the term
        self.prev_hs = HardState() if bootstrap else HardState(self.term, self.vote, self.log.committed)
        self.prev_ss = SoftState(self.lead, self.role)
        self._ready_applying = 0
        self._bcast_pending = False
        self.become_follower(self.term, NONE)

    # ------------------------------------------------------------------ queries
    def conf_state(self) -> ConfState:
        return ConfState(tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def promotable(self) -> bool:
        return self.id in self.voters and self.log.pending_snapshot is None

    def status(self) -> dict[str, object]:
        return {
            "id": self.id,
            "role": self.role.name.lower(),
            "leader": self.lead,
            "term": self.term,
            "commit": self.log.committed,
            "applied": self.log.applied,
            "last_index": self.log.last_index(),
            "snapshot_index": self.snapshot.index if self.snapshot else 0,
            "voters": sorted(self.voters),
            "learners": sorted(self.learners),
            "progress": {
                str(i): {"match": p.match, "next": p.next, "state": p.state.name.lower()} for i, p in self.prs.items()
            }
            if self.role == Role.LEADER
            else {},
        }

    # ------------------------------------------------------------------ role changes
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self.cfg.election_tick + self.rng.randrange(self.cfg.election_tick)
        self.lead_transferee = NONE
        self.votes = {}
        self.read_queue = {}
        self.pending_reads = []
        self.uncommitted_bytes = 0
        self._reset_progress()

    def _reset_progress(self) -> None:
        last = self.log.last_index()
        self.prs = {}
        for n in self.voters | self.learners:
            p = Progress(last + 1, self.cfg.max_inflight, is_learner=n in self.learners)
            if n == self.id:
                p.match = self.log.stable
                p.recent_active = True
            self.prs[n] = p

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead

    def become_pre_candidate(self) -> None:
        # a pre-candidate keeps its term and vote: it only asks whether it could win
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.lead = NONE

    def become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        for p in self.prs.values():
            p.become_probe()
        self.prs[self.id].become_replicate()
        self.prs[self.id].match = self.log.stable
        # conf changes proposed by older leaders may be in the log: do not stack another until they apply
        self.pending_conf_index = self.log.last_index()
        self._append_entries([Entry(self.term, 0, EntryType.NORMAL, b"")])

    # ------------------------------------------------------------------ driver API
    def tick(self) -> None:
        if self.role == Role.LEADER:
            self.heartbeat_elapsed += 1
            self.election_elapsed += 1
            if self.election_elapsed >= self.cfg.election_tick:
                self.election_elapsed = 0
                if self.cfg.check_quorum:
                    self.step(Message(MsgType.CHECK_QUORUM, frm=self.id))
                if self.role == Role.LEADER and self.lead_transferee != NONE:
                    self.lead_transferee = NONE  # the transfer did not finish within an election timeout
            if self.role == Role.LEADER and self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
                self.heartbeat_elapsed = 0
                self.step(Message(MsgType.BEAT, frm=self.id))
        else:
            self.election_elapsed += 1
            if self.promotable() and self.election_elapsed >= self.randomized_timeout:
                self.election_elapsed = 0
                self.step(Message(MsgType.HUP, frm=self.id))

    def campaign_now(self) -> None:
        self.step(Message(MsgType.HUP, frm=self.id))

    def propose(self, data: bytes) -> None:
        self.step(Message(MsgType.PROP, frm=self.id, entries=[Entry(0, 0, EntryType.NORMAL, data)]))

    def propose_conf_change(self, kind: ConfChangeType, node: int, address: str = "") -> None:
        if node <= 0:
            raise ValueError(f"node id must be positive, got {node}")
        data = encode_conf_change(kind, node, address)
        self.step(Message(MsgType.PROP, frm=self.id, entries=[Entry(0, 0, EntryType.CONF_CHANGE, data)]))

    def read_index(self, context: bytes) -> None:
        self.step(Message(MsgType.READ_INDEX, frm=self.id, entries=[Entry(0, 0, EntryType.NORMAL, context)]))

    def transfer_leader(self, target: int) -> None:
        self.step(Message(MsgType.TRANSFER_LEADER, frm=target))

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.step(Message(MsgType.SNAP_STATUS, frm=peer, reject=not ok))

    def report_unreachable(self, peer: int) -> None:
        self.step(Message(MsgType.UNREACHABLE, frm=peer))

    def apply_conf_change(self, kind: ConfChangeType, node: int) -> ConfState:
        """Called by the driver when it applies a committed conf-change entry."""
        if kind == ConfChangeType.ADD_VOTER:
            self.learners.discard(node)
            self.voters.add(node)
        elif kind == ConfChangeType.ADD_LEARNER:
            if node not in self.voters:  # demotion is not supported: keep the voter
                self.learners.add(node)
        else:
            self.voters.discard(node)
            self.learners.discard(node)
        if self.role == Role.LEADER:
            if node in self.voters | self.learners and node not in self.prs:
                self.prs[node] = Progress(self.log.last_index() + 1, self.cfg.max_inflight)
            if node in self.prs:
                self.prs[node].is_learner = node in self.learners
            for gone in set(self.prs) - (self.voters | self.learners):
                del self.prs[gone]
            if self.id not in self.voters:
                self.become_follower(self.term, NONE)  # a removed leader steps down; the rest elect anew
            else:
                if self.lead_transferee not in self.voters:
                    self.lead_transferee = NONE
                if self._maybe_commit():
                    self._bcast_append()
                else:
                    for n in self.prs:
                        if n != self.id:
                            self._send_append(n, send_if_empty=False)
        return self.conf_state()

    def compact(self, index: int, data: bytes, keep: int = 0) -> Snapshot:
        """Snapshot the state machine at `index` (== applied); drop log entries up to `index - keep`.

        Keeping a tail lets a slightly lagging follower catch up from the log instead of a full snapshot.
        """
        if index != self.log.applied:
            raise ValueError(f"snapshot index {index} must equal the applied index {self.log.applied}")
        term = self.log.term(index)
        if term is None:
            raise ValueError(f"snapshot index {index} is not in the log")
        snap = Snapshot(index, term, self.conf_state(), data)
        self.snapshot = snap
        self.log.compact(max(self.log.offset, index - keep))
        return snap

    # ------------------------------------------------------------------ Ready / Advance
    def has_ready(self) -> bool:
        if self._ready_applying:
            return False
        return bool(
            self._bcast_pending
            or self.msgs
            or self.read_states
            or self.log.pending_snapshot
            or self.log.unstable_entries()
            or (self.log.committed > self.log.applied and self.log.next_committed())
            or self.hard_state() != self.prev_hs
            or SoftState(self.lead, self.role) != self.prev_ss
        )

    def ready(self) -> Ready:
        if self._bcast_pending:
            self._bcast_pending = False
            if self.role == Role.LEADER:
                self._bcast_append()
        hs = self.hard_state()
        ss = SoftState(self.lead, self.role)
        prev = self.prev_hs  # what the previous Ready persisted (Readies are handled one at a time)
        same_vote = hs.term == prev.term and hs.vote == prev.vote
        entries = list(self.log.unstable_entries())
        snapshot = self.log.pending_snapshot
        rd = Ready(
            soft_state=ss if ss != self.prev_ss else None,
            hard_state=hs if hs != prev else None,
            snapshot=snapshot,
            entries=entries,
            committed_entries=self.log.next_committed(),
            messages=self.msgs,
            read_states=self.read_states,
            must_sync=bool(entries) or snapshot is not None or not same_vote,
            send_first=self.role == Role.LEADER and same_vote and snapshot is None,
        )
        self.msgs = []
        self.read_states = []
        self.prev_ss = ss
        if rd.hard_state:
            self.prev_hs = rd.hard_state
        self._ready_applying = 1
        return rd

    def advance(self, rd: Ready) -> None:
        self._ready_applying = 0
        if rd.snapshot is not None and self.log.pending_snapshot is rd.snapshot:
            self.snapshot = rd.snapshot
            self.log.pending_snapshot = None
            self.log.applied = max(self.log.applied, rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
            if self.role == Role.LEADER:
                self._release_uncommitted(rd.committed_entries)
        if self.role == Role.LEADER and self.id in self.prs:
            me = self.prs[self.id]
            if me.maybe_update(self.log.stable) and self._maybe_commit():
                self._bcast_append()

    # ------------------------------------------------------------------ stepping
    def step(self, m: Message) -> None:
        self._validate(m)
        if m.type in LOCAL_TYPES or m.term == 0:
            pass
        elif m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum and self.lead != NONE and self.election_elapsed < self.cfg.election_tick
                )
                if not force and in_lease:
                    return  # we heard from a live leader recently: do not let a partitioned node disrupt it
            if m.type == MsgType.PRE_VOTE or (m.type == MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change terms unless rejected by a node in a newer term
            elif m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MsgType.HEARTBEAT, MsgType.APP):
                # tell a stale leader about the newer term so it steps down
                self._send(Message(MsgType.APP_RESP, to=m.frm))
            elif m.type == MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        if m.type == MsgType.HUP:
            if self.role != Role.LEADER:
                self._hup(transfer=False)
        elif m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (m.type == MsgType.PRE_VOTE and m.term > self.term)
            )
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                self._send(Message(_RESP_OF[m.type], to=m.frm, term=m.term))
                if m.type == MsgType.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self._send(Message(_RESP_OF[m.type], to=m.frm, term=self.term, reject=True))
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _validate(self, m: Message) -> None:
        if not isinstance(m.type, MsgType):
            raise MalformedMessage(f"unknown raft message type {m.type!r}")
        if m.term < 0 or m.index < 0 or m.log_term < 0 or m.commit < 0:
            raise MalformedMessage(f"negative term/index in {m.type.name} from {m.frm}")
        if m.type not in LOCAL_TYPES and m.type != MsgType.PROP and m.frm == NONE:
            raise MalformedMessage(f"{m.type.name} without a sender id")
        if m.type == MsgType.APP:
            for i, e in enumerate(m.entries):
                if e.index != m.index + 1 + i:
                    raise MalformedMessage(f"APP from {m.frm}: entry {i} has index {e.index}, want {m.index + 1 + i}")
                if e.term > m.term or e.term <= 0:
                    raise MalformedMessage(f"APP from {m.frm}: entry {e.index} has term {e.term} (message {m.term})")
            if m.entries and m.entries[0].term < m.log_term:
                raise MalformedMessage(f"APP from {m.frm}: entry terms go backwards")
        if m.type == MsgType.SNAP and m.snapshot is None:
            raise MalformedMessage(f"SNAP from {m.frm} carries no snapshot")

    def _hup(self, transfer: bool) -> None:
        if not self.promotable():
            return
        if any(e.type == EntryType.CONF_CHANGE for e in self.log.next_committed()):
            return  # apply pending conf changes first: they may change who may campaign
        if self.cfg.pre_vote and not transfer:
            self._campaign(MsgType.PRE_VOTE, transfer)
        else:
            self._campaign(MsgType.VOTE, transfer)

    def _campaign(self, kind: MsgType, transfer: bool) -> None:
        if kind == MsgType.PRE_VOTE:
            self.become_pre_candidate()
            term = self.term + 1
        else:
            self.become_candidate()
            term = self.term
        if self._poll(self.id, True) is True:
            # a single-voter group wins at once
            if kind == MsgType.PRE_VOTE:
                self._campaign(MsgType.VOTE, transfer)
            else:
                self.become_leader()
            return
        for n in sorted(self.voters):
            if n == self.id:
                continue
            self._send(
                Message(
                    kind,
                    to=n,
                    term=term,
                    index=self.log.last_index(),
                    log_term=self.log.last_term(),
                    context=CAMPAIGN_TRANSFER if transfer else b"",
                )
            )

    def _poll(self, frm: int, granted: bool) -> bool | None:
        """Record a vote; True when won, False when lost, None while undecided."""
        self.votes.setdefault(frm, granted)
        yes = sum(1 for n, g in self.votes.items() if g and n in self.voters)
        no = sum(1 for n, g in self.votes.items() if not g and n in self.voters)
        if yes >= self.quorum():
            return True
        if no > len(self.voters) - self.quorum():
            return False
        return None

    # ------------------------------------------------------------------ leader
    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MsgType.BEAT:
            self._bcast_heartbeat(b"")
            return
        if t == MsgType.CHECK_QUORUM:
            active = sum(1 for n, p in self.prs.items() if n in self.voters and (p.recent_active or n == self.id))
            if active < self.quorum():
                self.become_follower(self.term, NONE)
                return
            for n, p in self.prs.items():
                p.recent_active = n == self.id
            return
        if t == MsgType.PROP:
            self._leader_propose(m)
            return
        if t == MsgType.READ_INDEX:
            self._leader_read_index(m)
            return
        if t == MsgType.TRANSFER_LEADER:
            self._leader_transfer(m.frm)
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return  # not (or no longer) a member
        if t == MsgType.APP_RESP:
            pr.recent_active = True
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == ProgressState.REPLICATE:
                        pr.become_probe()
                    self._send_append(m.frm)
                return
            if pr.maybe_update(m.index) or (pr.match == m.index and pr.state == ProgressState.PROBE):
                if pr.state == ProgressState.PROBE:
                    pr.become_replicate()
                elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
                    pr.become_probe()
                    pr.become_replicate()
                elif pr.state == ProgressState.REPLICATE:
                    pr.free_to(m.index)
                if self._maybe_commit():
                    self._bcast_append()
                while self._send_append(m.frm, send_if_empty=False):
                    pass
                if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                    self._send(Message(MsgType.TIMEOUT_NOW, to=m.frm))
            return
        if t == MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.paused = False
            if pr.state == ProgressState.REPLICATE and len(pr.inflight) >= pr.max_inflight:
                pr.inflight.popleft()  # a lost append must not stall the window forever
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.context and m.context in self.read_queue:
                self._read_ack(m.context, m.frm)
            return
        if t == MsgType.SNAP_STATUS:
            if pr.state == ProgressState.SNAPSHOT:
                if m.reject:
                    pr.pending_snapshot = 0
                pr.become_probe()
                pr.paused = True  # wait for the follower's reply (or a heartbeat) before probing again
            return
        if t == MsgType.UNREACHABLE:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            return

    def _leader_propose(self, m: Message) -> None:
        if self.id not in self.prs:
            raise ProposalDropped("this node was removed from the group")
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership is being transferred to {self.lead_transferee}")
        size = sum(len(e.data) for e in m.entries)
        if self.uncommitted_bytes > 0 and self.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes:
            raise ProposalDropped(
                f"uncommitted log is full ({self.uncommitted_bytes} bytes > {self.cfg.max_uncommitted_bytes}):"
                " a quorum is not acknowledging writes"
            )
        ents: list[Entry] = []
        for e in m.entries:
            if e.type == EntryType.CONF_CHANGE:
                if self.pending_conf_index > self.log.applied:
                    raise ProposalDropped("another membership change is still being applied")
                kind, node = decode_conf_change(e.data)
                if kind == ConfChangeType.REMOVE and self.voters == {node}:
                    raise ProposalDropped("cannot remove the last voter")
                self.pending_conf_index = self.log.last_index() + len(ents) + 1
            ents.append(Entry(0, 0, e.type, e.data))
        self._append_entries(ents)
        self.uncommitted_bytes += size
        # appends go out when the driver next takes a Ready: proposals arriving until then share one message
        self._bcast_pending = True

    def _append_entries(self, ents: list[Entry]) -> None:
        last = self.log.last_index()
        for i, e in enumerate(ents):
            e.term = self.term
            e.index = last + 1 + i
        self.log.append(ents)
        # our own match advances only once these are durable (see advance)
        if len(self.voters) == 1 and self.id in self.voters:
            self._maybe_commit()

    def _release_uncommitted(self, ents: list[Entry]) -> None:
        for e in ents:
            if e.term == self.term:
                self.uncommitted_bytes = max(0, self.uncommitted_bytes - len(e.data))

    def _maybe_commit(self) -> bool:
        matches = sorted((self.prs[n].match for n in self.voters if n in self.prs), reverse=True)
        if len(matches) < self.quorum():
            return False
        mci = matches[self.quorum() - 1]
        committed = self.log.maybe_commit(mci, self.term)
        if committed and self.pending_reads and self._committed_in_term():
            pending, self.pending_reads = self.pending_reads, []
            for pm in pending:
                self._leader_read_index(pm)
        return committed

    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _bcast_append(self) -> None:
        for n in self.prs:
            if n != self.id:
                self._send_append(n)

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for n, pr in self.prs.items():
            if n != self.id:
                commit = min(pr.match, self.log.committed)
                self._send(Message(MsgType.HEARTBEAT, to=n, commit=commit, context=ctx))

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None or pr.next <= self.log.offset:
            return self._send_snapshot(to, pr)
        ents = self.log.entries_from(pr.next, self.cfg.max_msg_bytes) if pr.next <= self.log.last_index() else []
        if not ents and not send_if_empty:
            return False
        self._send(Message(MsgType.APP, to=to, index=prev, log_term=prev_term, entries=ents, commit=self.log.committed))
        if ents:
            pr.sent(ents[-1].index)
        elif pr.state == ProgressState.PROBE:
            pr.paused = True
        return bool(ents)

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active or self.snapshot is None:
            return False
        self._send(Message(MsgType.SNAP, to=to, snapshot=self.snapshot))
        pr.become_snapshot(self.snapshot.index)
        return False

    def _leader_read_index(self, m: Message) -> None:
        ctx = m.entries[0].data if m.entries else b""
        if len(self.voters) == 1:
            self._answer_read(m.frm, self.log.committed, ctx)
            return
        if not self._committed_in_term():
            self.pending_reads.append(m)  # our commit index may lag until we commit in our own term
            return
        self.read_queue[ctx] = (self.log.committed, m.frm, {self.id})
        self._bcast_heartbeat(ctx)

    def _read_ack(self, ctx: bytes, frm: int) -> None:
        _, _, acks = self.read_queue[ctx]
        acks.add(frm)
        if len([n for n in acks if n in self.voters]) < self.quorum():
            return
        # a quorum confirmed leadership at this point: every earlier request is safe too
        for key in list(self.read_queue):
            index, requester, _ = self.read_queue.pop(key)
            self._answer_read(requester, index, key)
            if key == ctx:
                break

    def _answer_read(self, requester: int, index: int, ctx: bytes) -> None:
        if requester in (NONE, self.id):
            self.read_states.append(ReadState(index, ctx))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, to=requester, index=index, context=ctx))

    def _leader_transfer(self, target: int) -> None:
        if target not in self.voters or target == self.id:
            return
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self.election_elapsed = 0
        pr = self.prs[target]
        if pr.match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, to=target))
        else:
            self._send_append(target)

    # ------------------------------------------------------------------ candidate / follower
    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t == MsgType.PROP:
            raise ProposalDropped("no leader: an election is in progress")
        if t in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            self.become_follower(m.term, m.frm)
            self._step_follower(m)
            return
        want = MsgType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if t == want:
            res = self._poll(m.frm, not m.reject)
            if res is True:
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(MsgType.VOTE, False)
                else:
                    self.become_leader()
                    self._bcast_append()
            elif res is False:
                self.become_follower(self.term, NONE)
        elif t == MsgType.READ_INDEX:
            return  # no leader to ask; the driver's deadline turns this into a stale read

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MsgType.PROP:
            if self.lead == NONE:
                raise ProposalDropped("no leader: the group has no quorum or is electing")
            m.to = self.lead
            m.term = 0
            self._send(m, keep_term=True)
        elif t == MsgType.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == MsgType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self._send(Message(MsgType.HEARTBEAT_RESP, to=m.frm, context=m.context))
        elif t == MsgType.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MsgType.TRANSFER_LEADER:
            if self.lead != NONE:
                self._send(Message(MsgType.TRANSFER_LEADER, to=self.lead, frm=m.frm), keep_frm=True)
        elif t == MsgType.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif t == MsgType.READ_INDEX:
            if self.lead != NONE:
                m.to = self.lead
                self._send(m, keep_term=True)
        elif t == MsgType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=last_new))
            return
        hint = min(m.index, self.log.last_index())
        hint = self.log.find_conflict_by_term(hint, m.log_term)
        self._send(
            Message(
                MsgType.APP_RESP,
                to=m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=self.log.term(hint) or 0,
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        if snap.index <= self.log.committed:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.committed))
            return
        if self.log.match_term(snap.index, snap.term):
            self.log.commit_to(snap.index)  # we already have it: just fast-forward the commit
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.committed))
            return
        self.log.restore(snap)
        self.voters = set(snap.conf.voters)
        self.learners = set(snap.conf.learners)
        self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.last_index()))

    def _send(self, m: Message, keep_term: bool = False, keep_frm: bool = False) -> None:
        if not keep_frm:
            m.frm = self.id
        if not keep_term and m.type not in (
            MsgType.VOTE,
            MsgType.PRE_VOTE,
            MsgType.VOTE_RESP,
            MsgType.PRE_VOTE_RESP,
        ):
            m.term = self.term
        elif m.type in (MsgType.PROP, MsgType.READ_INDEX):
            m.term = 0  # forwarded requests are term-less, like local ones
        self.msgs.append(m)
