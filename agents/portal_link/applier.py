"""Where an agent applies the portal's changes, exactly once per version: the Raft policy store (through the agent's
own Store service) or, on a node without Raft, a local applied-state file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc
from opentelemetry.trace import SpanKind

from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc
from agents.proto.portal_link import RAFT_CLIENT_ID, SEQ_SPAN, VERSION_KEY, Change, Snapshot, encode_value
from agents.scheduler.storekeys import StoreClient
from agents.tracing import context_of, grpc_metadata, tracer

log = logging.getLogger("meshd.portal")
_TRACER = tracer("infermesh.portal_link")


@contextlib.contextmanager
def apply_span(change: Change, applier: str) -> Iterator[None]:
    """The agent's hop of a portal write's trace: a CONSUMER span under the change's `traceparent` (none for changes
    that carry no trace context, and a no-op when tracing is off)."""
    parent = context_of(change.traceparent)
    if parent is None:
        yield
        return
    attributes: dict[str, str | int] = {
        "outbox.version": change.version,
        "store.key": change.key,
        "store.op": change.op,
        "applier": applier,
    }
    with _TRACER.start_as_current_span("portal.apply", context=parent, kind=SpanKind.CONSUMER, attributes=attributes):
        yield


class StoreUnavailable(Exception):
    """The store cannot take writes now (no Raft quorum, timeout); the same write is retried later."""


class Applier(Protocol):
    kind: str

    async def applied_version(self) -> int: ...

    async def apply_changes(self, changes: Sequence[Change]) -> int:
        """Apply the changes newer than what is applied, in order; return the applied version."""
        ...

    async def apply_snapshot(self, snapshot: Snapshot) -> int: ...

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def close(self) -> None: ...


class RaftApplier:
    """Writes through Raft. Every agent of the group may propose the same version: they all use one client session
    (RAFT_CLIENT_ID) numbered from the version, so the store applies each write once and refuses the older ones.
    The applied version is kept in the store itself (VERSION_KEY), written after the version's data.

    `client` reaches the agent's own Store service; with `tls:` it presents the node's SVID like any other caller
    (coordinators may write the store) and follows its rotation."""

    kind = "raft"

    def __init__(self, client: StoreClient, timeout_s: float = 10.0) -> None:
        self.client = client
        self.group = client.group
        self.timeout_s = timeout_s

    @property
    def stub(self) -> store_pb2_grpc.StoreStub:
        return self.client.store

    async def close(self) -> None:
        await self.client.close()

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            resp = await self.stub.Get(
                store_pb2.StoreGetRequest(group=self.group, key=key, serializable=True), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise StoreUnavailable(f"store read of {key}: {exc.code().name}: {exc.details()}") from exc
        if not resp.kvs:
            return None
        value: dict[str, Any] = json.loads(resp.kvs[0].value)
        return value

    async def applied_version(self) -> int:
        marker = await self.get(VERSION_KEY)
        return int(marker["version"]) if marker else 0

    async def _write(self, op: str, key: str, value: str | None, seq: int) -> bool:
        """True when this call applied the write; False when the store had already applied it (or newer)."""
        try:
            if op == "delete":
                req_d = store_pb2.StoreDeleteRequest(group=self.group, key=key, client_id=RAFT_CLIENT_ID, seq=seq)
                await self.stub.Delete(req_d, timeout=self.timeout_s, metadata=grpc_metadata())
            else:
                req_p = store_pb2.StorePutRequest(
                    group=self.group, key=key, value=value or "", client_id=RAFT_CLIENT_ID, seq=seq
                )
                await self.stub.Put(req_p, timeout=self.timeout_s, metadata=grpc_metadata())
            return True
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.INVALID_ARGUMENT and "is older than" in details:
                return False  # another agent of the group applied this version (and later ones) already
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                raise StoreUnavailable(f"{op} {key}: {code.name}: {details}") from exc
            # A value the store refuses is a portal bug: skip it loudly rather than wedge every later change.
            log.error("store refused %s %s: %s: %s", op, key, code.name, details)
            return False

    async def apply_changes(self, changes: Sequence[Change]) -> int:
        applied = await self.applied_version()
        todo = [c for c in changes if c.version > applied]
        for c in todo:
            value = encode_value(c.value) if c.op == "put" and c.value is not None else None
            with apply_span(c, self.kind):
                await self._write("delete" if c.op == "delete" else "put", c.key, value, c.version * SEQ_SPAN)
        if todo:
            last = todo[-1].version
            await self._write("put", VERSION_KEY, encode_value({"version": last}), last * SEQ_SPAN + SEQ_SPAN - 1)
            applied = last
        return applied

    async def apply_snapshot(self, snapshot: Snapshot) -> int:
        applied = await self.applied_version()
        if snapshot.version <= applied:
            if snapshot.version < applied:
                log.warning(
                    "portal snapshot v%d is older than the store's v%d; kept the store", snapshot.version, applied
                )
            return applied
        base = snapshot.version * SEQ_SPAN
        wanted = {e.key: encode_value(e.value) for e in snapshot.entries}
        present: dict[str, str] = {}
        for prefix in snapshot.prefixes:
            resp = await self.stub.Get(
                store_pb2.StoreGetRequest(group=self.group, key=prefix, prefix=True, serializable=True),
                timeout=self.timeout_s,
            )
            present.update({kv.key: kv.value for kv in resp.kvs})
        i = 0
        for key in sorted(wanted):
            if present.get(key) != wanted[key]:
                await self._write("put", key, wanted[key], base + i)
            i += 1
        for key in sorted(set(present) - set(wanted)):
            await self._write("delete", key, None, base + i)
            i += 1
        await self._write("put", VERSION_KEY, encode_value({"version": snapshot.version}), base + SEQ_SPAN - 1)
        return snapshot.version


class FileApplier:
    """A node without Raft keeps the portal's keys in one JSON file, replaced atomically after each batch; the file
    holds the applied version, so a version is applied once across restarts."""

    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state: dict[str, Any] = {"version": 0, "data": {}}
        if path.exists():
            try:
                loaded = json.loads(path.read_text())
            except ValueError as exc:
                raise ValueError(f"portal.state_file {path}: not JSON ({exc})") from exc
            if not isinstance(loaded, dict) or not isinstance(loaded.get("data"), dict):
                raise ValueError(f"portal.state_file {path}: not an applied-state file")
            self.state = loaded

    async def close(self) -> None:
        return None

    async def get(self, key: str) -> dict[str, Any] | None:
        item = self.state["data"].get(key)
        return json.loads(item["value"]) if item else None

    async def applied_version(self) -> int:
        return int(self.state["version"])

    def _put(self, key: str, value: str) -> None:
        data = self.state["data"]
        prev = data.get(key)
        data[key] = {"value": value, "version": (prev["version"] if prev else 0) + 1}

    async def apply_changes(self, changes: Sequence[Change]) -> int:
        todo = [c for c in changes if c.version > self.state["version"]]
        for c in todo:
            with apply_span(c, self.kind):
                if c.op == "delete":
                    self.state["data"].pop(c.key, None)
                else:
                    self._put(c.key, encode_value(c.value or {}))
            self.state["version"] = c.version
        if todo:
            await asyncio.to_thread(self._save)
        return int(self.state["version"])

    async def apply_snapshot(self, snapshot: Snapshot) -> int:
        if snapshot.version == self.state["version"]:
            return snapshot.version
        data = self.state["data"]
        wanted = {e.key: encode_value(e.value) for e in snapshot.entries}
        for key in [k for k in data if k.startswith(tuple(snapshot.prefixes)) and k not in wanted]:
            del data[key]
        for key, value in wanted.items():
            if key not in data or data[key]["value"] != value:
                self._put(key, value)
        self.state["version"] = snapshot.version
        await asyncio.to_thread(self._save)
        return snapshot.version

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w") as f:
            json.dump(self.state, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
