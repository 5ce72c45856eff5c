"""The stores the IO adapter probes: a local (or NFS-mounted) directory and an S3-compatible bucket through boto3.

A probe writes a small object, reads it back (checking the bytes), and deletes it, timing each operation. The calls
block; the driver runs them in a thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

from agents.io.core import ProbeResult


class Store(Protocol):
    name: str
    uri: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def close(self) -> None: ...


class LocalStore:
    """A directory: written with fsync (a checkpoint that is not on the disk is not saved), read, removed."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = Path(path).absolute()
        self.uri = f"file://{self.path}"

    def put(self, key: str, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        return (self.path / key).read_bytes()

    def delete(self, key: str) -> None:
        (self.path / key).unlink()

    def close(self) -> None:
        return None


class S3Store:
    """A bucket (and key prefix) of an S3-compatible object store, through boto3."""

    def __init__(
        self,
        name: str,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str = "",
        region: str = "us-east-1",
        timeout_s: float = 10.0,
        access_key: str = "",
        secret_key: str = "",
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - the io extra is not installed
            raise ValueError(f"store {name}: kind s3 needs boto3 (pip install 'infermesh[io]'): {exc}") from exc
        self.name = name
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        creds: dict[str, Any] = {}
        if access_key or secret_key:
            creds = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region,
            config=Config(
                connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1, "mode": "standard"}
            ),
            **creds,
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        return body

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def close(self) -> None:
        self.client.close()


def probe(store: Store, nbytes: int, node: str, seq: int, clock: Any = time.time) -> ProbeResult:
    """Write `nbytes`, read them back, delete them; each step timed. Never raises: a failure is the result."""
    key = f".infermesh-probe-{node}-{seq}"
    data = os.urandom(nbytes)
    at = clock()
    times: dict[str, float] = {}
    op = "write"
    try:
        t = time.perf_counter()
        store.put(key, data)
        times["write_s"] = time.perf_counter() - t
        op = "read"
        t = time.perf_counter()
        back = store.get(key)
        times["read_s"] = time.perf_counter() - t
        if back != data:
            raise ValueError(f"read back {len(back)} bytes that differ from the {nbytes} written")
        op = "delete"
        t = time.perf_counter()
        store.delete(key)
        times["delete_s"] = time.perf_counter() - t
    except Exception as exc:  # a store's failure is a figure, never the adapter's crash
        text = str(exc) or type(exc).__name__
        return ProbeResult(store.name, at, nbytes, times.get("write_s"), times.get("read_s"), times.get("delete_s"),
                           error=f"{op}: {text}"[:300])  # fmt: skip
    return ProbeResult(store.name, at, nbytes, times["write_s"], times["read_s"], times["delete_s"])
