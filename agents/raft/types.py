"""Plain records exchanged by the sans-IO Raft core: messages, log entries, snapshots, hard state, Ready."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

NONE = 0  # node ids start at 1; 0 means "nobody" (no leader, no vote)


class MsgType(IntEnum):
    HUP = 0  # local: start an election
    BEAT = 1  # local: leader sends heartbeats
    PROP = 2  # proposal (local, or forwarded from a follower)
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    PRE_VOTE = 7
    PRE_VOTE_RESP = 8
    SNAP = 9
    HEARTBEAT = 10
    HEARTBEAT_RESP = 11
    TRANSFER_LEADER = 12
    TIMEOUT_NOW = 13
    READ_INDEX = 14
    READ_INDEX_RESP = 15
    SNAP_STATUS = 16  # local: the driver reports whether a snapshot reached a follower
    UNREACHABLE = 17  # local: the driver could not reach a peer
    CHECK_QUORUM = 18  # local: leader verifies it still hears from a quorum


LOCAL_TYPES = frozenset({MsgType.HUP, MsgType.BEAT, MsgType.SNAP_STATUS, MsgType.UNREACHABLE, MsgType.CHECK_QUORUM})


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class ConfChangeType(IntEnum):
    ADD_VOTER = 0  # also promotes a learner
    ADD_LEARNER = 1
    REMOVE = 2


CAMPAIGN_TRANSFER = b"transfer"  # vote context: a leadership transfer may break a leader lease


@dataclass(slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(slots=True, frozen=True)
class ConfState:
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(slots=True)
class Snapshot:
    index: int
    term: int
    conf: ConfState
    data: bytes = b""


@dataclass(slots=True, frozen=True)
class HardState:
    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(slots=True)
class Message:
    type: MsgType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


@dataclass(slots=True, frozen=True)
class ReadState:
    index: int
    context: bytes


@dataclass(slots=True, frozen=True)
class SoftState:
    lead: int
    role: Role


@dataclass(slots=True)
class Ready:
    """What the driver must do, in order: persist snapshot/entries/hard state, send messages, apply, then advance.

    `must_sync`: the write must be durable (fsync) before messages go out or the Ready is advanced; False when only
    the commit index changed (etcd's MustSync: a lost commit index is learnt again from the leader).
    `send_first`: the messages may go out while the write is in progress (a leader's appends, Raft thesis 10.2.1);
    the leader counts its own entries toward a quorum only once `advance` says they are durable. Never set when the
    Ready carries a new term or vote: those must be durable before anyone hears of them.
    """

    soft_state: SoftState | None
    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: list[Entry]
    committed_entries: list[Entry]
    messages: list[Message]
    read_states: list[ReadState]
    must_sync: bool = True
    send_first: bool = False


@dataclass(slots=True)
class RestoredState:
    """What durable storage hands back to a restarting node."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]


class RaftError(Exception):
    """Base class for errors the core reports to its caller."""


class ProposalDropped(RaftError):
    """The proposal was not accepted (no leader, leadership transfer, uncommitted log full, conf change pending)."""


class MalformedMessage(RaftError, ValueError):
    """A message from the network violates the protocol's shape (bad indices, unknown type, ...)."""
