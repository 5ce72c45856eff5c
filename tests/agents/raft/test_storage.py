"""Durable log: round trip, torn tails truncated, corruption and foreign data refused with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.raft.storage import CorruptStorageError, DiskStorage, StorageIdentityError
from agents.raft.types import ConfState, Entry, HardState, Ready, Snapshot


def _ready(entries: list[Entry], hs: HardState | None) -> Ready:
    return Ready(None, hs, None, entries, [], [], [])


def _store(tmp: Path) -> DiskStorage:
    return DiskStorage(tmp, cluster_id="c1", node_id=1, group="g")


def _fill(tmp: Path) -> DiskStorage:
    s = _store(tmp)
    s.save_ready(_ready([Entry(1, 1, data=b"a"), Entry(1, 2, data=b"b")], HardState(1, 1, 1)))
    s.save_ready(_ready([Entry(2, 3, data=b"c")], HardState(2, 1, 3)))
    s.close()
    return s


def test_round_trip_and_overwrite(tmp_path: Path) -> None:
    s = _fill(tmp_path)
    s = _store(tmp_path)
    r = s.load()
    assert [(e.index, e.term, e.data) for e in r.entries] == [(1, 1, b"a"), (2, 1, b"b"), (3, 2, b"c")]
    assert r.hard_state == HardState(2, 1, 3)
    # a later frame that rewrites index 3 onwards replaces the old suffix
    s.save_ready(_ready([Entry(3, 3, data=b"x"), Entry(3, 4, data=b"y")], None))
    s.close()
    r = _store(tmp_path).load()
    assert [(e.index, e.term) for e in r.entries] == [(1, 1), (2, 1), (3, 3), (4, 3)]


def test_torn_tail_is_truncated(tmp_path: Path) -> None:
    _fill(tmp_path)
    log = tmp_path / "log"
    good = log.read_bytes()
    s = _store(tmp_path)
    s.save_ready(_ready([Entry(2, 4, data=b"d" * 100)], HardState(2, 1, 3)))
    s.close()
    full = log.read_bytes()
    log.write_bytes(full[: len(good) + 30])  # the last write was cut short by a crash
    s = _store(tmp_path)
    r = s.load()
    assert [e.index for e in r.entries] == [1, 2, 3]
    assert s.truncated_bytes == 30
    assert log.read_bytes() == good
    # zero-filled tail (allocated, never written) is torn too
    log.write_bytes(good + b"\0" * 64)
    assert [e.index for e in _store(tmp_path).load().entries] == [1, 2, 3]


def test_checksum_mismatch_before_other_frames_is_corruption(tmp_path: Path) -> None:
    _fill(tmp_path)
    log = tmp_path / "log"
    blob = bytearray(log.read_bytes())
    blob[14] ^= 0xFF  # inside the first frame's payload; a valid frame follows
    log.write_bytes(bytes(blob))
    with pytest.raises(CorruptStorageError, match="checksum mismatch in frame at offset 0"):
        _store(tmp_path).load()


def test_garbage_header_is_corruption(tmp_path: Path) -> None:
    _fill(tmp_path)
    log = tmp_path / "log"
    log.write_bytes(log.read_bytes() + b"garbage-not-a-frame")
    with pytest.raises(CorruptStorageError, match="bad frame header"):
        _store(tmp_path).load()


def test_missing_committed_entries_are_detected(tmp_path: Path) -> None:
    s = _store(tmp_path)
    s.save_ready(_ready([Entry(1, 1, data=b"a")], HardState(1, 1, 5)))  # claims 5 committed, has 1
    s.close()
    with pytest.raises(CorruptStorageError, match="committed index 5 is beyond the last durable entry 1"):
        _store(tmp_path).load()


def test_snapshot_round_trip_compaction_and_corruption(tmp_path: Path) -> None:
    s = _fill(tmp_path)
    s = _store(tmp_path)
    s.load()
    snap = Snapshot(2, 1, ConfState((1, 2, 3), ()), b"state")
    s.compact(snap, HardState(2, 1, 3), [Entry(1, 2, data=b"b"), Entry(2, 3, data=b"c")])
    s.close()
    r = _store(tmp_path).load()
    assert r.snapshot is not None and r.snapshot.index == 2 and r.snapshot.data == b"state"
    assert r.snapshot.conf.voters == (1, 2, 3)
    assert [e.index for e in r.entries] == [3]
    blob = bytearray((tmp_path / "snapshot").read_bytes())
    blob[-1] ^= 1
    (tmp_path / "snapshot").write_bytes(bytes(blob))
    with pytest.raises(CorruptStorageError, match="snapshot checksum"):
        _store(tmp_path).load()


def test_gap_after_snapshot_is_detected(tmp_path: Path) -> None:
    s = _store(tmp_path)
    s.compact(Snapshot(2, 1, ConfState((1,), ()), b""), HardState(1, 1, 2), [Entry(1, 5, data=b"z")])
    s.close()
    with pytest.raises(CorruptStorageError, match="resumes at 5 but the snapshot ends at 2"):
        _store(tmp_path).load()


def test_data_dir_of_another_cluster_or_node_is_refused(tmp_path: Path) -> None:
    _fill(tmp_path)
    with pytest.raises(StorageIdentityError, match="cluster 'c1' node 1"):
        DiskStorage(tmp_path, cluster_id="other", node_id=1, group="g")
    with pytest.raises(StorageIdentityError):
        DiskStorage(tmp_path, cluster_id="c1", node_id=2, group="g")
