"""Typed gossip messages exchanged by SWIM cores; the codec turns them into bytes and back."""

from __future__ import annotations

import enum
from dataclasses import dataclass

Addr = tuple[str, int]


class MemberState(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str  # name of the node this ping is meant for; a node drops pings for someone else
    source: str
    source_addr: Addr


@dataclass(frozen=True, slots=True)
class IndirectPing:
    seq: int
    target: str
    target_addr: Addr
    nack: bool  # whether the requester wants a nack if the target stays silent (Lifeguard)
    source: str
    source_addr: Addr


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    payload: bytes = b""  # the responder's Vivaldi coordinate rides here


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    node: str
    source: str


@dataclass(frozen=True, slots=True)
class Alive:
    incarnation: int
    node: str
    addr: Addr
    meta: bytes = b""


@dataclass(frozen=True, slots=True)
class Dead:
    incarnation: int
    node: str
    source: str  # source == node means a graceful leave


@dataclass(frozen=True, slots=True)
class Summary:
    """A versioned summary of one node's state (fused targets); `digest_only` ones carry no payload."""

    node: str
    version: int
    payload: bytes = b""
    digest_only: bool = False


@dataclass(frozen=True, slots=True)
class MemberRecord:
    name: str
    addr: Addr
    incarnation: int
    state: MemberState
    meta: bytes = b""


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full state exchanged over TCP: at join, periodically, and to reconnect after a partition."""

    join: bool
    members: tuple[MemberRecord, ...]
    summaries: tuple[Summary, ...] = ()


Message = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | Summary
