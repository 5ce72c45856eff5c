"""The asyncio driver of one Raft group on one node: runs the core's Ready/Advance loop over durable storage and the
transport, applies committed commands to the policy store, and serves proposals, ReadIndex reads and watches."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.store.machine import Event, PolicyStore, encode_command

from .core import RaftConfig, RaftNode, decode_conf_change
from .storage import DiskStorage, LogWriteError
from .types import NONE, ConfChangeType, EntryType, MalformedMessage, Message, RaftError, Ready, Role

log = logging.getLogger("infermesh.raft")


class NoQuorum(RaftError):
    """Writes are refused: the group has no leader reachable by this member (quorum lost or electing)."""


class RequestTimeout(RaftError):
    """A request was accepted but not committed/confirmed in time (quorum may have been lost meanwhile)."""


@dataclass(slots=True)
class ReadResult:
    stale: bool
    reason: str = ""


@dataclass(slots=True)
class GroupOptions:
    tick_s: float = 0.1
    election_tick: int = 10
    heartbeat_tick: int = 1
    snapshot_entries: int = 10_000  # snapshot + compact after this many applied entries
    keep_entries: int = 1_000  # log tail kept after compaction for slightly lagging followers
    fsync: bool = True
    request_timeout_s: float = 5.0
    read_timeout_s: float = 1.0
    max_uncommitted_bytes: int = 64 << 20


class RaftGroup:
    def __init__(
        self,
        *,
        group: str,
        node_id: int,
        cluster_id: str,
        voters: tuple[int, ...],
        data_dir: Path,
        send: Callable[[str, Message], None],
        options: GroupOptions | None = None,
        learners: tuple[int, ...] = (),
        on_address: Callable[[int, str], None] | None = None,
    ) -> None:
        self.group = group
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.opts = options or GroupOptions()
        self._send = send
        self._on_address = on_address
        self.storage = DiskStorage(data_dir, cluster_id=cluster_id, node_id=node_id, group=group, fsync=self.opts.fsync)
        restored = self.storage.load()
        cfg = RaftConfig(
            node_id=node_id,
            voters=voters,
            learners=learners,
            election_tick=self.opts.election_tick,
            heartbeat_tick=self.opts.heartbeat_tick,
            max_uncommitted_bytes=self.opts.max_uncommitted_bytes,
        )
        self.core = RaftNode(cfg, random.Random(os.urandom(8)), restored)
        self.sm = PolicyStore()
        if restored.snapshot is not None:
            self.sm.restore(restored.snapshot.data)
        self.session = int.from_bytes(os.urandom(7), "big") | 1  # this member's own client session
        self._seq = itertools.count(1)
        self._waiters: dict[tuple[int, int], asyncio.Future[dict[str, Any]]] = {}
        self._read_ctx = itertools.count(1)
        self._read_batch: list[asyncio.Future[int]] = []
        self._reads: dict[bytes, tuple[float, list[asyncio.Future[int]]]] = {}
        self._wake = asyncio.Event()
        self._applied = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_req: list[asyncio.Future[tuple[int, int, int]]] = []
        self._last_snap_index = self.core.log.offset
        self.leader_changes = 0
        self.log_syncs = 0  # fsyncs of the log (group commit: each may carry many entries)
        self.log_entries = 0  # entries written to the log
        self.disk_error: str | None = None  # set while the log cannot be written (a full disk)
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"raft-{self.group}"),
            asyncio.create_task(self._ticker(), name=f"raft-tick-{self.group}"),
        ]
        self._wake.set()

    async def stop(self) -> None:
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(NoQuorum(f"raft group {self.group!r} is shutting down"))
        self.storage.close()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.opts.tick_s)
            self.core.tick()
            self._expire_reads()
            self._wake.set()

    # ------------------------------------------------------------------ network in
    def receive(self, m: Message) -> None:
        try:
            self.core.step(m)
        except MalformedMessage:
            raise  # the transport answers INVALID_ARGUMENT to the sender
        except RaftError as exc:  # a forwarded proposal dropped here; its sender times out
            log.debug("raft %s: dropped %s from %d: %s", self.group, m.type.name, m.frm, exc)
        self._wake.set()

    def report_unreachable(self, peer: int) -> None:
        self.core.report_unreachable(peer)
        self._wake.set()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.core.report_snapshot(peer, ok)
        self._wake.set()

    # ------------------------------------------------------------------ Ready loop
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # let the callbacks already due (incoming batches, proposals) step the core first: they share this Ready
            await asyncio.sleep(0)
            self._wake.clear()
            while self.core.has_ready():
                rd = self.core.ready()
                await self._handle_ready(rd)
            if self._snapshot_req or self.core.log.applied - self._last_snap_index >= self.opts.snapshot_entries:
                await self._compact()

    async def _handle_ready(self, rd: Ready) -> None:
        if rd.send_first:  # a leader's appends go out while its own write is in progress
            for m in rd.messages:
                self._send(self.group, m)
        if rd.snapshot is not None or rd.entries or rd.hard_state is not None:
            await self._save(rd)
            self.log_entries += len(rd.entries)
            self.log_syncs += rd.must_sync
        if not rd.send_first:
            for m in rd.messages:
                self._send(self.group, m)
        if rd.snapshot is not None:
            self.sm.restore(rd.snapshot.data)
            self._last_snap_index = rd.snapshot.index
        changed = rd.snapshot is not None
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                self._apply_conf(e.data)
                continue
            result = self.sm.apply(e.data)
            changed = True
            fut = self._waiters.pop(self.sm.last_request, None)
            if fut is not None and not fut.done():
                fut.set_result(result)
        if rd.soft_state is not None:
            self.leader_changes += 1
        self.core.advance(rd)
        for rs in rd.read_states:
            entry = self._reads.pop(rs.context, None)
            if entry:
                for rfut in entry[1]:
                    if not rfut.done():
                        rfut.set_result(rs.index)
        if self._read_batch and not self._reads:
            self._issue_read()
        if changed or rd.committed_entries:
            async with self._applied:
                self._applied.notify_all()
        if self.core.has_ready():
            self._wake.set()

    async def _save(self, rd: Ready) -> None:
        """Persist a Ready; while the disk refuses (full), retry it and refuse new writes with the reason, so that
        nothing is acknowledged or applied before it is durable."""
        while True:
            try:
                if rd.must_sync and self.storage.fsync:
                    # group commit: fsync off the event loop; proposals and acks arriving meanwhile share the next Ready
                    await asyncio.to_thread(self.storage.save_ready, rd)
                else:  # a commit index alone (or fsync off): a write to the page cache, no thread hop
                    self.storage.save_ready(rd)
            except LogWriteError as exc:
                if self.disk_error is None:
                    log.error("raft %s: %s; refusing writes and retrying until space returns", self.group, exc)
                self.disk_error = str(exc)
                await asyncio.sleep(self.opts.tick_s * 5)
                continue
            if self.disk_error is not None:
                log.warning("raft %s: the log is writable again", self.group)
                self.disk_error = None
            return

    def _apply_conf(self, data: bytes) -> None:
        kind, node = decode_conf_change(data)
        address = json.loads(data).get("address", "")
        if address and self._on_address is not None:
            self._on_address(node, address)
        self.core.apply_conf_change(kind, node)

    async def _compact(self) -> None:
        core = self.core
        applied = core.log.applied
        if applied <= core.log.offset or core.log.term(applied) is None:
            reqs, self._snapshot_req = self._snapshot_req, []
            for f in reqs:
                if not f.done() and core.snapshot:
                    f.set_result((core.snapshot.index, core.snapshot.term, len(core.snapshot.data)))
            return
        data = self.sm.snapshot()
        snap = core.compact(applied, data, keep=self.opts.keep_entries)
        stable = [e for e in core.log.entries if e.index <= core.log.stable]
        try:
            await asyncio.to_thread(self.storage.compact, snap, core.hard_state(), stable)
        except LogWriteError as exc:  # the old snapshot and log stay; compaction is tried again later
            log.error("raft %s: compaction failed: %s", self.group, exc)
            self._last_snap_index = applied
            return
        self._last_snap_index = applied
        reqs, self._snapshot_req = self._snapshot_req, []
        for f in reqs:
            if not f.done():
                f.set_result((snap.index, snap.term, len(snap.data)))

    # ------------------------------------------------------------------ writes
    def _check_writable(self) -> None:
        if self.disk_error is not None:
            raise NoQuorum(
                f"write refused by raft group {self.group!r} on node {self.node_id}: {self.disk_error}; "
                "writes are refused until the log can be written again"
            )
        if self.core.lead == NONE:
            raise NoQuorum(
                f"no quorum: raft group {self.group!r} has no leader reachable from node {self.node_id}; "
                "writes are refused until a quorum is restored (reads serve the last known state)"
            )

    async def propose_command(
        self,
        op: str,
        key: str,
        *,
        value: str | None = None,
        expected: str | None = None,
        expect_absent: bool = False,
        client: int = 0,
        seq: int = 0,
    ) -> dict[str, Any]:
        if not client:
            client, seq = self.session, next(self._seq)
        elif seq <= 0:
            raise ValueError("a request with a client_id needs a positive seq")
        self._check_writable()
        data = encode_command(
            op, key, value=value, expected=expected, expect_absent=expect_absent, client=client, seq=seq
        )
        loop = asyncio.get_running_loop()
        fut = self._waiters.get((client, seq))
        if fut is None or fut.done():
            fut = loop.create_future()
            self._waiters[(client, seq)] = fut
        try:
            self.core.propose(data)
        except RaftError as exc:
            self._waiters.pop((client, seq), None)
            raise NoQuorum(f"write refused by raft group {self.group!r}: {exc}") from exc
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.opts.request_timeout_s)
        except TimeoutError as exc:
            self._waiters.pop((client, seq), None)
            raise RequestTimeout(
                f"write to raft group {self.group!r} not committed within {self.opts.request_timeout_s}s "
                "(quorum lost or leader changed); retry with the same client_id/seq to apply it at most once"
            ) from exc

    async def change_membership(self, kind: ConfChangeType, node: int, address: str = "") -> None:
        self._check_writable()
        if self.core.role != Role.LEADER:
            raise NoQuorum(f"membership changes go to the leader (node {self.core.lead})")
        try:
            self.core.propose_conf_change(kind, node, address)
        except RaftError as exc:
            raise NoQuorum(f"membership change refused: {exc}") from exc
        target = self.core.log.last_index()
        self._wake.set()
        await self.wait_applied(target, self.opts.request_timeout_s)

    async def transfer_leader(self, target: int) -> None:
        if target not in self.core.voters:
            raise ValueError(
                f"node {target} is not a voter of group {self.group!r} (voters {sorted(self.core.voters)})"
            )
        self._check_writable()
        deadline = time.monotonic() + self.opts.request_timeout_s
        self.core.transfer_leader(target)
        self._wake.set()
        while time.monotonic() < deadline:
            if self.core.lead == target:
                return
            await asyncio.sleep(self.opts.tick_s / 2)
        raise RequestTimeout(f"leadership did not move to node {target} within {self.opts.request_timeout_s}s")

    async def snapshot(self) -> tuple[int, int, int]:
        fut: asyncio.Future[tuple[int, int, int]] = asyncio.get_running_loop().create_future()
        self._snapshot_req.append(fut)
        self._wake.set()
        return await asyncio.wait_for(fut, self.opts.request_timeout_s)

    # ------------------------------------------------------------------ reads
    def _issue_read(self) -> None:
        batch, self._read_batch = self._read_batch, []
        ctx = f"{self.session}:{next(self._read_ctx)}".encode()
        self._reads[ctx] = (time.monotonic(), batch)
        self.core.read_index(ctx)
        self._wake.set()

    def _expire_reads(self) -> None:
        # a ReadIndex request or answer lost on the network: let the next read start a new round
        now = time.monotonic()
        for ctx, (t0, _) in list(self._reads.items()):
            if now - t0 > self.opts.read_timeout_s:
                del self._reads[ctx]
        if self._read_batch and not self._reads:
            self._issue_read()

    async def linearizable_read(self) -> ReadResult:
        """Wait until local state reflects every write acknowledged before this call (ReadIndex)."""
        if self.core.lead == NONE:
            return ReadResult(True, f"no quorum: raft group {self.group!r} has no leader; serving last known state")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._read_batch.append(fut)
        if not self._reads:
            self._issue_read()  # reads arriving while a round is in flight share the next round
        try:
            index = await asyncio.wait_for(fut, self.opts.read_timeout_s)
            if self.core.log.applied < index:
                await self.wait_applied(index, self.opts.read_timeout_s)
        except TimeoutError:
            return ReadResult(True, f"could not confirm leadership with a quorum within {self.opts.read_timeout_s}s")
        return ReadResult(False)

    async def wait_applied(self, index: int, timeout: float) -> None:
        async with self._applied:
            await asyncio.wait_for(self._applied.wait_for(lambda: self.core.log.applied >= index), timeout)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        """Events under `prefix` from `start_revision` (0: from the next change), then live ones."""
        next_rev = start_revision if start_revision > 0 else self.sm.revision + 1
        while not self._closed:
            upto = self.sm.revision
            for ev in self.sm.events_since(next_rev, prefix):
                yield ev
                next_rev = ev.revision + 1
            # Revisions up to `upto` hold nothing more under `prefix`: without skipping them, a write elsewhere in
            # the store would satisfy the wait below at once and this loop would spin, starving the event loop.
            next_rev = max(next_rev, upto + 1)
            want = next_rev
            async with self._applied:
                await self._applied.wait_for(lambda want=want: self.sm.revision >= want or self._closed)  # type: ignore[misc]

    def status(self) -> dict[str, Any]:
        st = self.core.status()
        st["group"] = self.group
        return st

    def is_leader(self) -> bool:
        return self.core.role == Role.LEADER
