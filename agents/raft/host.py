"""Hosts the Raft groups of one node (one per cell, keyed by group id) behind one transport, and the gRPC services
(`Raft` for peers, `Store` for clients, `RaftAdmin` for operators) that the agent serves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc
from agents.security.tls import ClientIdentity
from agents.store.machine import Compacted
from agents.store.schema import StoreInputError, check_key, check_prefix, check_value
from agents.tracing import tracer

from .group import GroupOptions, NoQuorum, RaftGroup, RequestTimeout
from .transport import RaftServicer, RaftTransport
from .types import ConfChangeType, MalformedMessage, Message

DEFAULT_GROUP = "default"
_TRACER = tracer("infermesh.raft")


class RaftHost:
    def __init__(
        self,
        *,
        cluster_id: str,
        node_id: int,
        addresses: dict[int, str],
        groups: list[str],
        data_dir: Path,
        options: GroupOptions,
        voters: tuple[int, ...] | None = None,
        learners: tuple[int, ...] = (),
        identity: ClientIdentity | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.options = options
        self.transport = RaftTransport(
            cluster_id=cluster_id,
            node_id=node_id,
            addresses=addresses,
            identity=identity,
            on_unreachable=self._unreachable,
            on_snapshot=self._snapshot_status,
            rpc_timeout_s=max(0.5, options.tick_s * options.election_tick),
        )
        founders = tuple(sorted(addresses)) if voters is None else voters
        self.groups: dict[str, RaftGroup] = {}
        for g in groups:
            if not g or "/" in g or g.startswith("."):
                raise ValueError(f"invalid raft group id {g!r}")
            self.groups[g] = RaftGroup(
                group=g,
                node_id=node_id,
                cluster_id=cluster_id,
                voters=founders,
                learners=learners,
                data_dir=data_dir / g,
                send=self.transport.send,
                options=options,
                on_address=self.transport.set_address,
            )

    async def start(self) -> None:
        for g in self.groups.values():
            await g.start()

    async def stop(self) -> None:
        for g in self.groups.values():
            await g.stop()
        await self.transport.close()

    # InboundHandler
    def deliver(self, group: str, m: Message) -> None:
        self.groups[group].receive(m)

    def has_group(self, group: str) -> bool:
        return group in self.groups

    def _unreachable(self, group: str, peer: int) -> None:
        if group in self.groups:
            self.groups[group].report_unreachable(peer)

    def _snapshot_status(self, group: str, peer: int, ok: bool) -> None:
        if group in self.groups:
            self.groups[group].report_snapshot(peer, ok)

    def servicers(self) -> tuple[RaftServicer, StoreServicer, AdminServicer]:
        return RaftServicer(self.cluster_id, self.node_id, self), StoreServicer(self), AdminServicer(self)

    def add_to_server(self, server: grpc.aio.Server) -> list[str]:
        from agents.proto.infermesh.v1 import raft_pb2_grpc

        raft, store, admin = self.servicers()
        raft_pb2_grpc.add_RaftServicer_to_server(raft, server)
        store_pb2_grpc.add_StoreServicer_to_server(store, server)
        store_pb2_grpc.add_RaftAdminServicer_to_server(admin, server)
        return ["infermesh.v1.Raft", "infermesh.v1.Store", "infermesh.v1.RaftAdmin"]


async def _group(host: RaftHost, name: str, context: grpc.aio.ServicerContext) -> RaftGroup:
    g = host.groups.get(name or DEFAULT_GROUP)
    if g is None:
        await context.abort(
            grpc.StatusCode.NOT_FOUND,
            f"raft group {name!r} is not hosted here (groups: {', '.join(sorted(host.groups))})",
        )
    assert g is not None
    return g


async def _write_error(exc: Exception, context: grpc.aio.ServicerContext) -> None:
    if isinstance(exc, NoQuorum):
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, RequestTimeout):
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


def _write_response(res: dict[str, object], node: int) -> store_pb2.StoreWriteResponse:
    out = store_pb2.StoreWriteResponse(revision=int(res.get("rev") or 0), served_by=node)  # type: ignore[call-overload]
    out.succeeded = bool(res.get("succeeded", True))
    prev = res.get("prev")
    if prev is not None:
        out.prev_value = str(prev)
        out.has_prev = True
    if not out.succeeded and res.get("value") is not None:
        out.current_value = str(res["value"])
        out.has_current = True
    return out


class StoreServicer(store_pb2_grpc.StoreServicer):
    def __init__(self, host: RaftHost) -> None:
        self.host = host

    async def Get(
        self, request: store_pb2.StoreGetRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreGetResponse:
        g = await _group(self.host, request.group, context)
        try:
            if request.prefix:
                check_prefix(request.key)
            else:
                check_key(request.key)
        except StoreInputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        stale, reason = True, "serializable read: local state, not confirmed with the leader"
        if not request.serializable:
            res = await g.linearizable_read()
            stale, reason = res.stale, res.reason
        kvs = g.sm.range(request.key) if request.prefix else [kv for kv in [g.sm.get(request.key)] if kv]
        return store_pb2.StoreGetResponse(
            kvs=[
                store_pb2.StoreKeyValue(
                    key=kv.key,
                    value=kv.value,
                    create_revision=kv.create_rev,
                    mod_revision=kv.mod_rev,
                    version=kv.version,
                )
                for kv in kvs
            ],
            revision=g.sm.revision,
            stale=stale,
            stale_reason=reason,
            served_by=self.host.node_id,
        )

    async def _write(
        self, context: grpc.aio.ServicerContext, group: str, op: str, key: str, **kw: object
    ) -> store_pb2.StoreWriteResponse:
        g = await _group(self.host, group, context)
        try:
            check_key(key)
            if kw.get("value") is not None:
                kw["value"] = check_value(key, str(kw["value"]))
            # The span of the write's commit (proposed, replicated to a quorum, applied); it joins the caller's trace
            # through the server's tracing interceptor, a no-op when tracing is off.
            with _TRACER.start_as_current_span(
                "raft.commit", attributes={"raft.group": group, "raft.op": op, "store.key": key}
            ) as span:
                res = await g.propose_command(op, key, **kw)  # type: ignore[arg-type]
                if span.is_recording():
                    span.set_attribute("raft.ok", bool(res.get("ok", False)))
                    span.set_attribute("store.revision", int(res.get("rev") or 0))
        except (NoQuorum, RequestTimeout, StoreInputError, ValueError) as exc:
            await _write_error(exc, context)
            raise
        if not res.get("ok", False):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(res.get("error", "write refused")))
        return _write_response(res, self.host.node_id)

    async def Put(
        self, request: store_pb2.StorePutRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreWriteResponse:
        return await self._write(
            context, request.group, "put", request.key, value=request.value, client=request.client_id, seq=request.seq
        )

    async def Cas(
        self, request: store_pb2.StoreCasRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreWriteResponse:
        expected = None if request.expect_absent else request.expected
        return await self._write(
            context,
            request.group,
            "cas",
            request.key,
            value=request.value,
            expected=expected,
            expect_absent=request.expect_absent,
            client=request.client_id,
            seq=request.seq,
        )

    async def Delete(
        self, request: store_pb2.StoreDeleteRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreWriteResponse:
        return await self._write(context, request.group, "del", request.key, client=request.client_id, seq=request.seq)

    async def Watch(
        self, request: store_pb2.StoreWatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[store_pb2.StoreWatchEvent]:
        g = await _group(self.host, request.group, context)
        try:
            check_prefix(request.prefix)
            async for ev in g.watch(request.prefix, request.start_revision):
                yield store_pb2.StoreWatchEvent(
                    revision=ev.revision,
                    type=ev.type,
                    key=ev.key,
                    value=ev.value,
                    prev_value=ev.prev_value or "",
                    has_prev=ev.prev_value is not None,
                )
        except StoreInputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Compacted as exc:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))


def _status(host: RaftHost, g: RaftGroup) -> store_pb2.RaftStatusResponse:
    st = g.core
    out = store_pb2.RaftStatusResponse(
        group=g.group,
        node_id=host.node_id,
        role=st.role.name.lower(),
        leader=st.lead,
        term=st.term,
        commit=st.log.committed,
        applied=st.log.applied,
        last_index=st.log.last_index(),
        snapshot_index=st.snapshot.index if st.snapshot else 0,
        voters=sorted(st.voters),
        learners=sorted(st.learners),
        cluster_id=host.cluster_id,
        groups=sorted(host.groups),
    )
    if st.role.name == "LEADER":
        for n, p in sorted(st.prs.items()):
            out.progress.add(id=n, match=p.match, next=p.next, state=p.state.name.lower())
    for n, a in host.transport.addresses.items():
        out.addresses[n] = a
    return out


class AdminServicer(store_pb2_grpc.RaftAdminServicer):
    def __init__(self, host: RaftHost) -> None:
        self.host = host

    async def Status(
        self, request: store_pb2.RaftStatusRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.RaftStatusResponse:
        g = await _group(self.host, request.group, context)
        return _status(self.host, g)

    async def TransferLeader(
        self, request: store_pb2.RaftTransferRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.RaftStatusResponse:
        g = await _group(self.host, request.group, context)
        try:
            await g.transfer_leader(int(request.target))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (NoQuorum, RequestTimeout) as exc:
            await _write_error(exc, context)
        return _status(self.host, g)

    async def Snapshot(
        self, request: store_pb2.RaftSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.RaftSnapshotResponse:
        g = await _group(self.host, request.group, context)
        try:
            index, term, size = await g.snapshot()
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "snapshot did not complete in time")
        return store_pb2.RaftSnapshotResponse(index=index, term=term, size=size)

    async def ChangeMembership(
        self, request: store_pb2.RaftMembershipRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.RaftStatusResponse:
        g = await _group(self.host, request.group, context)
        ops = {
            "add_voter": ConfChangeType.ADD_VOTER,
            "add_learner": ConfChangeType.ADD_LEARNER,
            "remove": ConfChangeType.REMOVE,
        }
        if request.op not in ops:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"op must be one of {', '.join(ops)}, got {request.op!r}"
            )
        if request.node_id <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id must be positive")
        try:
            if request.address:
                self.host.transport.set_address(int(request.node_id), request.address)
            await g.change_membership(ops[request.op], int(request.node_id), request.address)
        except (NoQuorum, RequestTimeout, TimeoutError) as exc:
            await _write_error(NoQuorum(str(exc) or "membership change not applied in time"), context)
        return _status(self.host, g)


__all__ = ["DEFAULT_GROUP", "MalformedMessage", "RaftHost", "asyncio"]
