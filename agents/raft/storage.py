"""Durable Raft storage: an append-only, checksummed log of frames fsynced before anything is acknowledged, plus an
atomically replaced snapshot file. Recovery truncates a torn tail (an unacknowledged write cut short by a crash)
and refuses, with a clear error, anything else that does not check out.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import struct
import zlib
from pathlib import Path

from .types import ConfState, Entry, EntryType, HardState, Ready, RestoredState, Snapshot

log = logging.getLogger("infermesh.raft.storage")

FRAME_MAGIC = b"IMRL"  # one frame per Ready: entries + hard state, written and fsynced together
SNAP_MAGIC = b"IMRS"
_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32(payload)
_ENTRY = struct.Struct("<BQQBI")  # kind, index, term, entry type, data length
_HS = struct.Struct("<BQQQ")  # kind, term, vote, commit
_K_ENTRY = 1
_K_HS = 2
MAX_FRAME = 1 << 30


class CorruptStorageError(RuntimeError, ValueError):
    """The on-disk log or snapshot is damaged in a way that is not a torn tail; refusing to guess."""


class LogWriteError(OSError):
    """The log or snapshot could not be written (typically a full disk); nothing half-written is left behind."""


class StorageIdentityError(RuntimeError, ValueError):
    """The data directory belongs to another cluster, node or group."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_frame(entries: list[Entry], hs: HardState | None) -> bytes:
    parts: list[bytes] = []
    for e in entries:
        parts.append(_ENTRY.pack(_K_ENTRY, e.index, e.term, int(e.type), len(e.data)))
        parts.append(e.data)
    if hs is not None:
        parts.append(_HS.pack(_K_HS, hs.term, hs.vote, hs.commit))
    payload = b"".join(parts)
    return _FRAME.pack(FRAME_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode_payload(payload: bytes, where: str) -> tuple[list[Entry], HardState | None]:
    entries: list[Entry] = []
    hs: HardState | None = None
    pos = 0
    while pos < len(payload):
        kind = payload[pos]
        if kind == _K_ENTRY:
            if pos + _ENTRY.size > len(payload):
                raise CorruptStorageError(f"{where}: truncated entry header")
            _, index, term, etype, n = _ENTRY.unpack_from(payload, pos)
            pos += _ENTRY.size
            if pos + n > len(payload) or etype not in (0, 1):
                raise CorruptStorageError(f"{where}: bad entry {index} (type {etype}, {n} bytes)")
            entries.append(Entry(term, index, EntryType(etype), payload[pos : pos + n]))
            pos += n
        elif kind == _K_HS:
            if pos + _HS.size > len(payload):
                raise CorruptStorageError(f"{where}: truncated hard state")
            _, term, vote, commit = _HS.unpack_from(payload, pos)
            hs = HardState(term, vote, commit)
            pos += _HS.size
        else:
            raise CorruptStorageError(f"{where}: unknown record kind {kind}")
    return entries, hs


def encode_snapshot(snap: Snapshot) -> bytes:
    meta = json.dumps(
        {"index": snap.index, "term": snap.term, "voters": list(snap.conf.voters), "learners": list(snap.conf.learners)}
    ).encode()
    payload = struct.pack("<I", len(meta)) + meta + snap.data
    return _FRAME.pack(SNAP_MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_snapshot(blob: bytes, where: str) -> Snapshot:
    if len(blob) < _FRAME.size:
        raise CorruptStorageError(f"{where}: snapshot file is truncated ({len(blob)} bytes)")
    magic, n, crc = _FRAME.unpack_from(blob)
    payload = blob[_FRAME.size :]
    if magic != SNAP_MAGIC or n != len(payload) or zlib.crc32(payload) != crc:
        raise CorruptStorageError(f"{where}: snapshot checksum or length mismatch")
    (mlen,) = struct.unpack_from("<I", payload)
    try:
        meta = json.loads(payload[4 : 4 + mlen])
        conf = ConfState(tuple(meta["voters"]), tuple(meta["learners"]))
        return Snapshot(int(meta["index"]), int(meta["term"]), conf, payload[4 + mlen :])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptStorageError(f"{where}: snapshot metadata unreadable: {exc}") from exc


class DiskStorage:
    """Files of one Raft group on one node: `meta.json`, `log`, `snapshot`."""

    def __init__(self, path: str | os.PathLike[str], *, cluster_id: str, node_id: int, group: str,
                 fsync: bool = True) -> None:  # fmt: skip
        self.dir = Path(path)
        self.fsync = fsync
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "log"
        self.snap_path = self.dir / "snapshot"
        self._check_identity(cluster_id, node_id, group)
        self._fd: int | None = None
        self.truncated_bytes = 0  # how much torn tail the last load removed

    def _check_identity(self, cluster_id: str, node_id: int, group: str) -> None:
        meta = self.dir / "meta.json"
        want = {"cluster_id": cluster_id, "node_id": node_id, "group": group}
        if meta.exists():
            try:
                have = json.loads(meta.read_text())
            except ValueError as exc:
                raise CorruptStorageError(f"{meta}: unreadable ({exc})") from exc
            if have != want:
                raise StorageIdentityError(
                    f"{self.dir} holds data of cluster {have.get('cluster_id')!r} node {have.get('node_id')} group "
                    f"{have.get('group')!r}, not cluster {cluster_id!r} node {node_id} group {group!r}"
                )
            return
        self._atomic_write(meta, json.dumps(want).encode())

    def _atomic_write(self, path: Path, blob: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # the old file stays as it was
            raise LogWriteError(f"raft storage {path}: cannot write ({exc.strerror or exc})") from exc
        os.replace(tmp, path)
        if self.fsync:
            _fsync_dir(self.dir)

    # ---------------------------------------------------------------- recovery
    def load(self) -> RestoredState:
        snap = decode_snapshot(self.snap_path.read_bytes(), str(self.snap_path)) if self.snap_path.exists() else None
        entries: list[Entry] = []
        hs = HardState()
        blob = self.log_path.read_bytes() if self.log_path.exists() else b""
        pos = 0
        end = len(blob)
        while pos < end:
            if self._torn_or_corrupt(blob, pos):
                break
            _, n, _ = _FRAME.unpack_from(blob, pos)
            payload = blob[pos + _FRAME.size : pos + _FRAME.size + n]
            ents, fhs = _decode_payload(payload, f"{self.log_path} frame at offset {pos}")
            for e in ents:
                last = entries[-1].index if entries else None
                if last is not None and e.index <= last:
                    del entries[e.index - entries[0].index :]  # a later frame overwrote a conflicting suffix
                elif last is not None and e.index != last + 1:
                    raise CorruptStorageError(f"{self.log_path}: entry {e.index} follows {last} (gap)")
                if entries and e.index < entries[0].index:
                    raise CorruptStorageError(f"{self.log_path}: entry {e.index} precedes the log start")
                entries.append(e)
            if fhs is not None:
                hs = fhs
            pos += _FRAME.size + n
        if pos < end:
            self.truncated_bytes = end - pos
            log.warning("raft log %s: truncating a torn tail of %d bytes at offset %d", self.log_path, end - pos, pos)
            with open(self.log_path, "r+b") as f:
                f.truncate(pos)
                if self.fsync:
                    os.fsync(f.fileno())
        floor = snap.index if snap else 0
        entries = [e for e in entries if e.index > floor] if floor else entries
        if entries and entries[0].index != floor + 1 and floor:
            raise CorruptStorageError(
                f"{self.log_path}: log resumes at {entries[0].index} but the snapshot ends at {floor} (entries lost)"
            )
        if entries and not floor and entries[0].index != 1:
            raise CorruptStorageError(f"{self.log_path}: log starts at {entries[0].index} with no snapshot")
        last = entries[-1].index if entries else floor
        if hs.commit > last:
            raise CorruptStorageError(
                f"{self.log_path}: committed index {hs.commit} is beyond the last durable entry {last} "
                "(committed entries are missing)"
            )
        return RestoredState(hs, snap, entries)

    def _torn_or_corrupt(self, blob: bytes, pos: int) -> bool | None:
        """None: a good frame starts here. True: a torn tail starts here. Raises on corruption."""
        end = len(blob)
        if end - pos < _FRAME.size:
            return True
        magic, n, crc = _FRAME.unpack_from(blob, pos)
        if magic != FRAME_MAGIC:
            if not blob[pos:].strip(b"\0"):
                return True  # zero-filled tail: space allocated but never written
            raise CorruptStorageError(f"{self.log_path}: bad frame header at offset {pos} of {end}")
        if n > MAX_FRAME or pos + _FRAME.size + n > end:
            return True  # the last write was cut short
        payload = blob[pos + _FRAME.size : pos + _FRAME.size + n]
        if zlib.crc32(payload) != crc:
            if pos + _FRAME.size + n == end:
                return True  # the last frame, partially written: never acknowledged
            raise CorruptStorageError(
                f"{self.log_path}: checksum mismatch in frame at offset {pos} ({n} bytes) followed by more frames"
            )
        return None

    # ---------------------------------------------------------------- writes
    def _log_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd

    def save_ready(self, rd: Ready) -> None:
        """Persist what a Ready asks for; returns once it is durable (when `rd.must_sync`)."""
        if rd.snapshot is not None:
            self.install_snapshot(rd.snapshot, rd.hard_state or HardState(), rd.entries)
            return
        if not rd.entries and rd.hard_state is None:
            return
        fd = self._log_fd()
        frame = encode_frame(rd.entries, rd.hard_state)
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            if os.write(fd, frame) != len(frame):
                raise OSError(errno.ENOSPC, "No space left on device (short write)")
        except OSError as exc:
            # a full disk (or a failing one): cut the partial frame back off, so the next write does not follow a
            # torn frame (which the loader would take for corruption), and say what failed
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            raise LogWriteError(f"raft log {self.log_path}: cannot append ({exc.strerror or exc})") from exc
        if self.fsync and rd.must_sync:  # a commit index alone is written, not waited for (see Ready.must_sync)
            os.fdatasync(fd)

    def install_snapshot(self, snap: Snapshot, hs: HardState, retained: list[Entry]) -> None:
        """Write a snapshot atomically, then atomically replace the log by the entries after it."""
        self._atomic_write(self.snap_path, encode_snapshot(snap))
        self.rewrite_log([e for e in retained if e.index > snap.index], hs)

    def rewrite_log(self, entries: list[Entry], hs: HardState) -> None:
        """Replace the log by `entries` and `hs` (after compaction); atomic by rename."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._atomic_write(self.log_path, encode_frame(entries, hs))

    def compact(self, snap: Snapshot, hs: HardState, retained: list[Entry]) -> None:
        """After the state machine snapshotted at `snap.index`, keep only `retained` (the tail kept for followers)."""
        self._atomic_write(self.snap_path, encode_snapshot(snap))
        self.rewrite_log(retained, hs)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
