"""The Raft log's disk fills: a three-member group of real agents, one member's data directory on a small tmpfs that
the test fills to the last byte. That member refuses writes with a clear error (the others go on), its log is not
corrupted (no torn frame, it loads again after kill -9), and it catches up once space returns."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc
from agents.raft.storage import DiskStorage
from agents.raft.testing.cluster import LocalCluster
from tests.faults.zoned import wait_for

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    assert done.returncode == 0, f"this test mounts a tmpfs (needs root): {done.stderr.decode().strip()}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0")
    return filler


def put(address: str, key: str, value: str, timeout: float = 3.0) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(address) as ch:
        try:
            store_pb2_grpc.StoreStub(ch).Put(store_pb2.StorePutRequest(key=key, value=value), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def state(address: str) -> dict[str, str]:
    with grpc.insecure_channel(address) as ch:
        resp = store_pb2_grpc.StoreStub(ch).Get(
            store_pb2.StoreGetRequest(key="kv/", prefix=True, serializable=True), timeout=5
        )
    return {kv.key: kv.value for kv in resp.kvs}


def test_raft_log_disk_full(tmp_path: Path) -> None:
    cluster = LocalCluster(3, tmp_path, cluster_id="diskfull", tick_ms=50, election_ticks=10)
    raft_dir = tmp_path / "data" / "raft" / "node-1"
    with small_tmpfs(raft_dir, "1m"), cluster:
        cluster.start()
        cluster.leader()
        full = cluster.members[1].address
        others = [cluster.members[i].address for i in (2, 3)]
        acked: dict[str, str] = {}
        for i in range(10):
            code, _ = put(full, f"kv/k{i}", f"v{i}")
            assert code == grpc.StatusCode.OK
            acked[f"kv/k{i}"] = f"v{i}"
        filler = fill(raft_dir)
        t_full = time.monotonic()

        # The full member refuses writes with the reason; the other two keep taking them.
        errors: list[str] = []

        def refused_clearly() -> bool:
            code, detail = put(full, "kv/refused", "x", timeout=3)
            errors.append(f"{code.name}: {detail}")
            return code == grpc.StatusCode.UNAVAILABLE and "No space left on device" in detail

        try:
            wait_for("a clear refusal from the member whose disk is full", refused_clearly, 40, every=0.5)
        except AssertionError:
            raise AssertionError(f"answers: {errors[-5:]}") from None
        attempted = 10 + len(errors)
        for i in range(10, 20):
            attempted += 1

            def through_others(i: int = i) -> bool:
                code, _ = put(others[i % 2], f"kv/k{i}", f"v{i}")
                return code == grpc.StatusCode.OK

            wait_for(f"write {i} through the members with space", through_others, 30, every=0.3)
            acked[f"kv/k{i}"] = f"v{i}"
        assert cluster.members[1].proc is not None and cluster.members[1].proc.poll() is None, "the full member died"

        # Space returns: the member takes writes again and catches up with the others.
        filler.unlink()
        t_free = time.monotonic()

        def writable_again() -> bool:
            return put(full, "kv/after", "yes")[0] == grpc.StatusCode.OK

        wait_for("writes accepted after space returned", writable_again, 30, every=0.5)
        acked["kv/after"] = "yes"
        recover_s = time.monotonic() - t_free
        wait_for("the member caught up", lambda: state(full) == state(others[0]), 30)

        # kill -9 and a restart: the log loads (no torn frame, nothing corrupt) and holds every acknowledged write.
        cluster.kill(1)
        meta = next(raft_dir.rglob("meta.json"))
        storage = DiskStorage(meta.parent, **json.loads(meta.read_text()))
        restored = storage.load()
        storage.close()
        assert storage.truncated_bytes == 0
        assert restored.entries or restored.snapshot is not None
        cluster.start(1)
        cluster.leader()
        wait_for("the restarted member holding every acknowledged write", lambda: all(
            state(full).get(k) == v for k, v in acked.items()), 30)  # fmt: skip
        assert all(state(a) == state(full) for a in others)
        print(
            "scenario:", {"scenario": "raft log disk full (1 MiB tmpfs)", "writes_attempted": attempted,
                          "acked": len(acked), "lost": 0, "duplicated": 0, "refusals": errors[-1],
                          "full_for_s": round(t_free - t_full, 1), "recover_s": round(recover_s, 1)}
        )  # fmt: skip
    assert not os.path.ismount(raft_dir)
