"""Binary wire codec for gossip packets (UDP, size-bounded) and push/pull frames (TCP).

Every decode error raises `CodecError` naming what was wrong; nothing partially decoded escapes.
"""

from __future__ import annotations

import struct

from agents.gossip.messages import (
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    MemberRecord,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    Summary,
    Suspect,
)

MAGIC = b"IM"
VERSION = 1
MAX_NAME_BYTES = 128
MAX_META_BYTES = 512
MAX_ACK_PAYLOAD = 512
MAX_SUMMARY_BYTES = 60_000  # summaries above the inline budget travel as digests and are fetched over TCP
MAX_MESSAGES_PER_PACKET = 255
MAX_UDP_PACKET = 65_507  # absolute ceiling; the driver enforces its (smaller) configured budget
MAX_STREAM_FRAME = 16 * 1024 * 1024
MAX_STREAM_MEMBERS = 65_535

_HEADER = struct.Struct("!2sBB")  # magic, version, message count
_ITEM = struct.Struct("!BH")  # type, body length
_STREAM_HEADER = struct.Struct("!2sBI")  # magic, version, body length

T_PING, T_INDIRECT, T_ACK, T_NACK, T_SUSPECT, T_ALIVE, T_DEAD, T_SUMMARY = range(1, 9)


class CodecError(ValueError):
    """A packet or frame that is not a valid gossip encoding."""


class _Writer:
    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def u8(self, v: int) -> None:
        self.buf.append(v)

    def u16(self, v: int) -> None:
        self.buf += struct.pack("!H", v)

    def u32(self, v: int) -> None:
        self.buf += struct.pack("!I", v)

    def u64(self, v: int) -> None:
        self.buf += struct.pack("!Q", v)

    def name(self, s: str) -> None:
        b = s.encode()
        if len(b) > MAX_NAME_BYTES:
            raise CodecError(f"name {s[:40]!r}... is {len(b)} bytes, limit {MAX_NAME_BYTES}")
        self.buf.append(len(b))
        self.buf += b

    def blob(self, b: bytes, limit: int, what: str) -> None:
        if len(b) > limit:
            raise CodecError(f"{what} is {len(b)} bytes, limit {limit}")
        self.u16(len(b))
        self.buf += b

    def addr(self, a: Addr) -> None:
        self.name(a[0])
        self.u16(a[1])


class _Reader:
    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise CodecError(f"truncated {self.what}: needs {end} bytes, has {len(self.data)}")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        v: int = struct.unpack("!H", self._take(2))[0]
        return v

    def u32(self) -> int:
        v: int = struct.unpack("!I", self._take(4))[0]
        return v

    def u64(self) -> int:
        v: int = struct.unpack("!Q", self._take(8))[0]
        return v

    def name(self) -> str:
        n = self.u8()
        if n > MAX_NAME_BYTES:
            raise CodecError(f"name of {n} bytes in {self.what} exceeds limit {MAX_NAME_BYTES}")
        try:
            return bytes(self._take(n)).decode()
        except UnicodeDecodeError as exc:
            raise CodecError(f"name in {self.what} is not UTF-8") from exc

    def blob(self, limit: int, field: str) -> bytes:
        n = self.u16()
        if n > limit:
            raise CodecError(f"{field} of {n} bytes in {self.what} exceeds limit {limit}")
        return bytes(self._take(n))

    def addr(self) -> Addr:
        host = self.name()
        port = self.u16()
        if not host or port == 0:
            raise CodecError(f"invalid address {host!r}:{port} in {self.what}")
        return (host, port)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise CodecError(f"{len(self.data) - self.pos} trailing bytes in {self.what}")


def _encode_body(msg: Message, w: _Writer) -> int:
    if isinstance(msg, Ping):
        w.u32(msg.seq)
        w.name(msg.target)
        w.name(msg.source)
        w.addr(msg.source_addr)
        return T_PING
    if isinstance(msg, IndirectPing):
        w.u32(msg.seq)
        w.name(msg.target)
        w.addr(msg.target_addr)
        w.u8(1 if msg.nack else 0)
        w.name(msg.source)
        w.addr(msg.source_addr)
        return T_INDIRECT
    if isinstance(msg, Ack):
        w.u32(msg.seq)
        w.blob(msg.payload, MAX_ACK_PAYLOAD, "ack payload")
        return T_ACK
    if isinstance(msg, Nack):
        w.u32(msg.seq)
        return T_NACK
    if isinstance(msg, Suspect):
        w.u32(msg.incarnation)
        w.name(msg.node)
        w.name(msg.source)
        return T_SUSPECT
    if isinstance(msg, Alive):
        w.u32(msg.incarnation)
        w.name(msg.node)
        w.addr(msg.addr)
        w.blob(msg.meta, MAX_META_BYTES, "node metadata")
        return T_ALIVE
    if isinstance(msg, Dead):
        w.u32(msg.incarnation)
        w.name(msg.node)
        w.name(msg.source)
        return T_DEAD
    if isinstance(msg, Summary):
        w.name(msg.node)
        w.u64(msg.version)
        w.u8(1 if msg.digest_only else 0)
        w.blob(b"" if msg.digest_only else msg.payload, MAX_SUMMARY_BYTES, "state summary")
        return T_SUMMARY
    raise CodecError(f"cannot encode {type(msg).__name__}")


def _decode_body(kind: int, r: _Reader) -> Message:
    msg: Message
    if kind == T_PING:
        msg = Ping(seq=r.u32(), target=r.name(), source=r.name(), source_addr=r.addr())
    elif kind == T_INDIRECT:
        msg = IndirectPing(
            seq=r.u32(), target=r.name(), target_addr=r.addr(), nack=r.u8() == 1, source=r.name(), source_addr=r.addr()
        )
    elif kind == T_ACK:
        msg = Ack(seq=r.u32(), payload=r.blob(MAX_ACK_PAYLOAD, "ack payload"))
    elif kind == T_NACK:
        msg = Nack(seq=r.u32())
    elif kind == T_SUSPECT:
        msg = Suspect(incarnation=r.u32(), node=r.name(), source=r.name())
    elif kind == T_ALIVE:
        msg = Alive(incarnation=r.u32(), node=r.name(), addr=r.addr(), meta=r.blob(MAX_META_BYTES, "node metadata"))
    elif kind == T_DEAD:
        msg = Dead(incarnation=r.u32(), node=r.name(), source=r.name())
    elif kind == T_SUMMARY:
        node, version, digest = r.name(), r.u64(), r.u8() == 1
        payload = r.blob(MAX_SUMMARY_BYTES, "state summary")
        msg = Summary(node=node, version=version, payload=payload, digest_only=digest)
    else:
        raise CodecError(f"unknown message type {kind}")
    r.done()
    if not isinstance(msg, (Ping, Ack, Nack)) and not getattr(msg, "node", getattr(msg, "target", "")):
        raise CodecError(f"empty node name in {type(msg).__name__}")
    return msg


def encode_message(msg: Message) -> bytes:
    """One message as a packet item (type, length, body); packets are built from these."""
    w = _Writer()
    kind = _encode_body(msg, w)
    if len(w.buf) > 0xFFFF:
        raise CodecError(f"{type(msg).__name__} body of {len(w.buf)} bytes does not fit a packet")
    return _ITEM.pack(kind, len(w.buf)) + bytes(w.buf)


PACKET_OVERHEAD = _HEADER.size


def encode_packet_items(items: list[bytes]) -> bytes:
    if not items:
        raise CodecError("a packet needs at least one message")
    if len(items) > MAX_MESSAGES_PER_PACKET:
        raise CodecError(f"{len(items)} messages exceed the per-packet limit {MAX_MESSAGES_PER_PACKET}")
    return _HEADER.pack(MAGIC, VERSION, len(items)) + b"".join(items)


def encode_packet(msgs: list[Message]) -> bytes:
    return encode_packet_items([encode_message(m) for m in msgs])


def decode_packet(data: bytes, *, limit: int = MAX_UDP_PACKET) -> list[Message]:
    if len(data) > limit:
        raise CodecError(f"packet of {len(data)} bytes exceeds limit {limit}")
    r = _Reader(data, "packet")
    head = r._take(_HEADER.size)
    magic, version, count = _HEADER.unpack(head)
    if magic != MAGIC:
        raise CodecError(f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise CodecError(f"unsupported version {version}")
    if count == 0:
        raise CodecError("empty packet")
    out: list[Message] = []
    for _ in range(count):
        kind, length = _ITEM.unpack(r._take(_ITEM.size))
        out.append(_decode_body(kind, _Reader(r._take(length), f"message type {kind}")))
    r.done()
    return out


_STATE_VALUES = {s.value for s in MemberState}


def encode_push_pull(pp: PushPull) -> bytes:
    w = _Writer()
    w.u8(1 if pp.join else 0)
    if len(pp.members) > MAX_STREAM_MEMBERS or len(pp.summaries) > MAX_STREAM_MEMBERS:
        raise CodecError("too many members or summaries for one push/pull frame")
    w.u16(len(pp.members))
    for m in pp.members:
        w.name(m.name)
        w.addr(m.addr)
        w.u32(m.incarnation)
        w.u8(int(m.state))
        w.blob(m.meta, MAX_META_BYTES, "node metadata")
    w.u16(len(pp.summaries))
    for s in pp.summaries:
        w.name(s.node)
        w.u64(s.version)
        w.blob(s.payload, MAX_SUMMARY_BYTES, "state summary")
    if len(w.buf) > MAX_STREAM_FRAME:
        raise CodecError(f"push/pull frame of {len(w.buf)} bytes exceeds {MAX_STREAM_FRAME}")
    return _STREAM_HEADER.pack(MAGIC, VERSION, len(w.buf)) + bytes(w.buf)


STREAM_HEADER_SIZE = _STREAM_HEADER.size


def decode_stream_header(head: bytes) -> int:
    """Body length announced by a push/pull frame header (validated before reading the body)."""
    if len(head) != _STREAM_HEADER.size:
        raise CodecError(f"truncated push/pull header ({len(head)} bytes)")
    magic, version, length = _STREAM_HEADER.unpack(head)
    if magic != MAGIC:
        raise CodecError(f"bad magic {bytes(magic)!r} in push/pull frame")
    if version != VERSION:
        raise CodecError(f"unsupported push/pull version {version}")
    if length > MAX_STREAM_FRAME:
        raise CodecError(f"push/pull frame of {length} bytes exceeds {MAX_STREAM_FRAME}")
    return int(length)


def decode_push_pull_body(body: bytes) -> PushPull:
    r = _Reader(body, "push/pull frame")
    join = r.u8() == 1
    members: list[MemberRecord] = []
    for _ in range(r.u16()):
        name, addr, inc, state = r.name(), r.addr(), r.u32(), r.u8()
        if state not in _STATE_VALUES:
            raise CodecError(f"unknown member state {state} for {name!r}")
        members.append(MemberRecord(name, addr, inc, MemberState(state), r.blob(MAX_META_BYTES, "node metadata")))
    summaries: list[Summary] = []
    for _ in range(r.u16()):
        summaries.append(Summary(node=r.name(), version=r.u64(), payload=r.blob(MAX_SUMMARY_BYTES, "state summary")))
    r.done()
    return PushPull(join=join, members=tuple(members), summaries=tuple(summaries))


def decode_push_pull(frame: bytes) -> PushPull:
    length = decode_stream_header(frame[: _STREAM_HEADER.size])
    body = frame[_STREAM_HEADER.size :]
    if len(body) != length:
        raise CodecError(f"push/pull frame announces {length} bytes, has {len(body)}")
    return decode_push_pull_body(body)
