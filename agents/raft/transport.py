"""gRPC transport between Raft members: per-peer ordered senders that batch messages onto one long-lived `Stream`
call per peer (the unary AppendEntries / RequestVote / Forward calls are still served), InstallSnapshot as a client
stream, and the servicer that checks cluster, group and
message shape before stepping the core. With the agent's `tls:` section each peer channel presents the node's SVID
(and is opened again once it rotates)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc

from agents.proto.infermesh.v1 import raft_pb2, raft_pb2_grpc
from agents.security.tls import ClientIdentity, Dialer

from .types import ConfState, Entry, EntryType, MalformedMessage, Message, MsgType, Snapshot

log = logging.getLogger("infermesh.raft.transport")

SNAPSHOT_CHUNK = 1 << 20
_APPEND = frozenset({MsgType.APP, MsgType.APP_RESP, MsgType.HEARTBEAT, MsgType.HEARTBEAT_RESP})
_VOTE = frozenset({MsgType.VOTE, MsgType.VOTE_RESP, MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP})
_FORWARD = frozenset(
    {MsgType.PROP, MsgType.READ_INDEX, MsgType.READ_INDEX_RESP, MsgType.TRANSFER_LEADER, MsgType.TIMEOUT_NOW}
)
_STREAM = _APPEND | _VOTE | _FORWARD
_REMOTE = _STREAM | {MsgType.SNAP}


def to_pb(m: Message) -> raft_pb2.RaftMessage:
    return raft_pb2.RaftMessage(
        type=int(m.type),
        to=m.to,
        term=m.term,
        log_term=m.log_term,
        index=m.index,
        commit=m.commit,
        reject=m.reject,
        reject_hint=m.reject_hint,
        context=m.context,
        entries=[raft_pb2.RaftEntry(index=e.index, term=e.term, type=int(e.type), data=e.data) for e in m.entries],
        **{"from": m.frm},
    )


def from_pb(p: raft_pb2.RaftMessage, sender: int) -> Message:
    """Convert and sanity-check a message from the network; raises MalformedMessage naming the problem."""
    try:
        kind = MsgType(p.type)
    except ValueError as exc:
        raise MalformedMessage(f"unknown raft message type {p.type}") from exc
    if kind not in _REMOTE:
        raise MalformedMessage(f"message type {kind.name} is local-only and cannot come from the network")
    frm = getattr(p, "from")
    if frm != sender:
        raise MalformedMessage(f"message claims to be from node {frm} inside a batch from node {sender}")
    ents = []
    for e in p.entries:
        if e.type not in (0, 1):
            raise MalformedMessage(f"entry {e.index} has unknown type {e.type}")
        ents.append(Entry(e.term, e.index, EntryType(e.type), e.data))
    return Message(
        kind,
        to=p.to,
        frm=frm,
        term=p.term,
        log_term=p.log_term,
        index=p.index,
        entries=ents,
        commit=p.commit,
        reject=p.reject,
        reject_hint=p.reject_hint,
        context=p.context,
    )


class InboundHandler(Protocol):
    """What the transport needs from the host: find a group by name and hand it a message."""

    def deliver(self, group: str, m: Message) -> None: ...

    def has_group(self, group: str) -> bool: ...


class RaftServicer(raft_pb2_grpc.RaftServicer):
    def __init__(self, cluster_id: str, node_id: int, handler: InboundHandler) -> None:
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.handler = handler

    async def _check(self, cluster_id: str, group: str, context: grpc.aio.ServicerContext) -> None:
        if cluster_id != self.cluster_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cluster id mismatch: request from cluster {cluster_id!r}, this node belongs to {self.cluster_id!r}",
            )
        if not self.handler.has_group(group):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"raft group {group!r} is not hosted on node {self.node_id}")

    async def _batch(
        self, req: raft_pb2.RaftBatch, context: grpc.aio.ServicerContext, allowed: frozenset[MsgType]
    ) -> raft_pb2.RaftAck:
        await self._check(req.cluster_id, req.group, context)
        msgs = []
        try:
            for p in req.messages:
                m = from_pb(p, getattr(req, "from"))
                if m.type not in allowed:
                    raise MalformedMessage(f"{m.type.name} does not belong on this RPC")
                if m.to != self.node_id:
                    raise MalformedMessage(f"message addressed to node {m.to} reached node {self.node_id}")
                msgs.append(m)
        except MalformedMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed raft message: {exc}")
        try:
            for m in msgs:
                self.handler.deliver(req.group, m)
        except MalformedMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed raft message: {exc}")
        return raft_pb2.RaftAck()

    async def Stream(
        self, request_iterator: AsyncIterator[raft_pb2.RaftBatch], context: grpc.aio.ServicerContext
    ) -> raft_pb2.RaftAck:
        """A peer's batches in order; the same checks as the unary calls, any message type but snapshots."""
        async for req in request_iterator:
            await self._batch(req, context, _STREAM)
        return raft_pb2.RaftAck()

    async def AppendEntries(self, request: raft_pb2.RaftBatch, context: grpc.aio.ServicerContext) -> raft_pb2.RaftAck:
        return await self._batch(request, context, _APPEND)

    async def RequestVote(self, request: raft_pb2.RaftBatch, context: grpc.aio.ServicerContext) -> raft_pb2.RaftAck:
        return await self._batch(request, context, _VOTE)

    async def Forward(self, request: raft_pb2.RaftBatch, context: grpc.aio.ServicerContext) -> raft_pb2.RaftAck:
        return await self._batch(request, context, _FORWARD)

    async def InstallSnapshot(
        self, request_iterator: AsyncIterator[raft_pb2.SnapshotChunk], context: grpc.aio.ServicerContext
    ) -> raft_pb2.RaftAck:
        header: raft_pb2.SnapshotChunk | None = None
        parts: list[bytes] = []
        size = 0
        async for chunk in request_iterator:
            if header is None:
                header = chunk
                await self._check(chunk.cluster_id, chunk.group, context)
            if chunk.offset != size:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"snapshot chunk at {chunk.offset}, want {size}")
            parts.append(chunk.data)
            size += len(chunk.data)
        if header is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty InstallSnapshot stream")
        assert header is not None
        if size != header.total_size:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"snapshot has {size} bytes, header said {header.total_size}"
            )
        try:
            m = from_pb(header.message, getattr(header.message, "from"))
            if m.type != MsgType.SNAP:
                raise MalformedMessage(f"InstallSnapshot carries {m.type.name}")
        except MalformedMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed raft message: {exc}")
        meta = header.meta
        m.snapshot = Snapshot(
            meta.index, meta.term, ConfState(tuple(meta.voters), tuple(meta.learners)), b"".join(parts)
        )
        self.handler.deliver(header.group, m)
        return raft_pb2.RaftAck()


class PeerSender:
    """Sends one peer its messages in order over one long-lived `Stream` call; batches what queued up while the
    previous write was in flight. Snapshots go by `InstallSnapshot`."""

    def __init__(self, transport: RaftTransport, peer: int, address: str) -> None:
        self.transport = transport
        self.peer = peer
        self.address = address
        self.queue: deque[tuple[str, Message]] = deque()
        self.event = asyncio.Event()
        opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        self.dialer = Dialer(address, transport.identity, opts)
        self.channel: grpc.aio.Channel | None = None
        self.stub: raft_pb2_grpc.RaftStub | None = None
        self.call: grpc.aio.StreamUnaryCall | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name=f"raft-send-{self.peer}")

    def _connect(self) -> raft_pb2_grpc.RaftStub:
        channel = self.dialer.channel()  # a new one after the SVID rotated
        if self.stub is None or channel is not self.channel:
            self.channel = channel
            self.stub = raft_pb2_grpc.RaftStub(channel)
            self._drop_call()
        return self.stub

    def _drop_call(self) -> None:
        if self.call is not None:
            self.call.cancel()
            self.call = None

    def enqueue(self, group: str, m: Message) -> None:
        if len(self.queue) >= self.transport.max_queue:
            self.queue.popleft()  # the peer is slow or down: Raft retransmits what matters
        self.queue.append((group, m))
        self.event.set()

    async def _loop(self) -> None:
        while True:
            await self.event.wait()
            self.event.clear()
            while self.queue:
                batch = list(self.queue)
                self.queue.clear()
                await self._send_batch(batch)

    async def _send_batch(self, batch: list[tuple[str, Message]]) -> None:
        stub = self._connect()
        groups: dict[str, list[Message]] = {}
        for group, m in batch:
            if m.type == MsgType.SNAP:
                await self._flush(stub, groups)
                groups = {}
                await self._send_snapshot(stub, group, m)
                continue
            groups.setdefault(group, []).append(m)
        await self._flush(stub, groups)

    async def _flush(self, stub: raft_pb2_grpc.RaftStub, groups: dict[str, list[Message]]) -> None:
        t = self.transport
        for group, msgs in groups.items():
            req = raft_pb2.RaftBatch(
                cluster_id=t.cluster_id, group=group, messages=[to_pb(m) for m in msgs], **{"from": t.node_id}
            )
            if self.call is None or self.call.done():
                self.call = stub.Stream()
            call = self.call
            try:
                async with asyncio.timeout(t.rpc_timeout_s):  # a stopped peer's window fills: give up on the write
                    await call.write(req)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError, TimeoutError) as exc:
                if self.call is call:
                    self.call = None
                call.cancel()
                await self._stream_failed(group, call, exc)

    async def _stream_failed(self, group: str, call: grpc.aio.StreamUnaryCall, exc: BaseException) -> None:
        code, details = grpc.StatusCode.UNAVAILABLE, f"{type(exc).__name__}: {exc}"
        if isinstance(exc, grpc.aio.AioRpcError):
            code, details = exc.code(), exc.details() or ""
        elif call.done() and not call.cancelled():
            with contextlib.suppress(Exception):
                code, details = await call.code(), await call.details()
        self._report(group, code, details)

    def _failed(self, group: str, exc: grpc.aio.AioRpcError) -> None:
        self._report(group, exc.code(), exc.details() or "")

    def _report(self, group: str, code: grpc.StatusCode, details: str) -> None:
        if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
            log.error("raft peer %d (%s) refused our messages: %s", self.peer, self.address, details)
        else:
            log.debug("raft peer %d (%s) unreachable: %s", self.peer, self.address, code)
        self.transport.on_unreachable(group, self.peer)

    async def _send_snapshot(self, stub: raft_pb2_grpc.RaftStub, group: str, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        t = self.transport
        header = to_pb(Message(m.type, to=m.to, frm=m.frm, term=m.term))
        meta = raft_pb2.RaftSnapshotMeta(
            index=snap.index, term=snap.term, voters=list(snap.conf.voters), learners=list(snap.conf.learners)
        )

        async def chunks() -> AsyncIterator[raft_pb2.SnapshotChunk]:
            data = snap.data
            off = 0
            while True:
                piece = data[off : off + SNAPSHOT_CHUNK]
                if off == 0:
                    yield raft_pb2.SnapshotChunk(
                        cluster_id=t.cluster_id,
                        group=group,
                        message=header,
                        meta=meta,
                        total_size=len(data),
                        offset=0,
                        data=piece,
                    )
                else:
                    yield raft_pb2.SnapshotChunk(offset=off, data=piece)
                off += len(piece)
                if off >= len(data):
                    break

        try:
            await stub.InstallSnapshot(chunks(), timeout=max(10.0, t.rpc_timeout_s))
            t.on_snapshot(group, self.peer, True)
        except grpc.aio.AioRpcError as exc:
            self._failed(group, exc)
            t.on_snapshot(group, self.peer, False)

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self._drop_call()
        await self.dialer.close()


class RaftTransport:
    def __init__(
        self,
        *,
        cluster_id: str,
        node_id: int,
        addresses: dict[int, str],
        on_unreachable: Callable[[str, int], None],
        on_snapshot: Callable[[str, int, bool], None],
        identity: ClientIdentity | None = None,
        rpc_timeout_s: float = 1.0,
        max_queue: int = 10_000,
    ) -> None:
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.addresses = dict(addresses)
        self.on_unreachable = on_unreachable
        self.on_snapshot = on_snapshot
        self.identity = identity  # this node's SVID for peer channels (None: plaintext)
        self.rpc_timeout_s = rpc_timeout_s
        self.max_queue = max_queue
        self.senders: dict[int, PeerSender] = {}

    def set_address(self, node: int, address: str) -> None:
        if self.addresses.get(node) != address:
            self.addresses[node] = address
            old = self.senders.pop(node, None)
            if old is not None:
                asyncio.get_running_loop().create_task(old.close())

    def send(self, group: str, m: Message) -> None:
        sender = self.senders.get(m.to)
        if sender is None:
            address = self.addresses.get(m.to)
            if address is None:
                log.warning("raft: no address for node %d; dropping %s", m.to, m.type.name)
                return
            sender = PeerSender(self, m.to, address)
            self.senders[m.to] = sender
            sender.start()
        sender.enqueue(group, m)

    async def close(self) -> None:
        for s in list(self.senders.values()):
            await s.close()
        self.senders.clear()
