"""The IO adapter's driver (`io:` section of `infermesh agent`): probes the node's dataset and checkpoint stores
every `interval_s` (write, read back and delete `probe_bytes`), folds the results into the sans-IO core
(agents/io/core.py), and tells three consumers:

* the store: `kv/io/stores/<node>` holds the node's figures per store, which the training scheduler reads as its
  data and checkpoint locality cost term (agents/io/locality.py);
* the event bus: `io.store_slow` (warning) when a store trips the slow rule, `io.store_recovered` when it clears;
* Prometheus: `infermesh_io_*` on the agent's /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.io.core import IoState, ProbeResult, SlowRule, Transition
from agents.io.locality import KEY_PREFIX
from agents.io.probes import LocalStore, S3Store, Store, probe

if TYPE_CHECKING:
    from agents.meshd.component import AgentContext

log = logging.getLogger("meshd.io")


class SlowThresholds(BaseModel):
    """When a store counts as slow (see agents/io/core.py SlowRule)."""

    model_config = ConfigDict(extra="forbid")

    write_latency_s: float = Field(default=1.0, gt=0, description="a probe's write slower than this is bad")
    read_latency_s: float = Field(default=1.0, gt=0, description="a probe's read slower than this is bad")
    min_write_mbps: float = Field(default=0.0, ge=0, description="write throughput floor in MB/s (0: none)")
    trip_after: int = Field(default=3, ge=1, le=100, description="bad probes in a row that make the store slow")
    clear_after: int = Field(default=3, ge=1, le=100, description="good probes in a row that clear it")


class StoreConfig(BaseModel):
    """One store, by URI: `file:///path` (a local or NFS-mounted directory) or `s3://bucket/prefix` (with
    `endpoint` for an S3-compatible server; credentials from boto3's usual environment variables and files)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="the store's label")
    uri: str = Field(min_length=1, max_length=1024, description="file:///absolute/path or s3://bucket[/prefix]")
    role: Literal["checkpoint", "dataset", "any"] = Field(default="any", description="what jobs keep there")
    endpoint: str = Field(default="", pattern=r"^(https?://\S+)?$", description="S3-compatible server URL (s3)")
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]+$", description="S3 region (s3)")

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str) -> str:
        if uri.startswith("file:///"):
            return uri.rstrip("/") or uri
        if uri.startswith("s3://") and uri[len("s3://") :].split("/", 1)[0]:
            return uri.rstrip("/")
        raise ValueError(f"{uri!r}: use file:///absolute/path or s3://bucket[/prefix]")

    @property
    def kind(self) -> str:
        return "s3" if self.uri.startswith("s3://") else "local"


class IoSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str = Field(default="", description="the Raft group the figures are published to")
    interval_s: float = Field(default=15.0, gt=0, le=3600, description="seconds between probes of each store")
    probe_bytes: int = Field(default=1 << 20, ge=1, le=256 << 20, description="bytes each probe writes and reads")
    timeout_s: float = Field(default=10.0, gt=0, le=600, description="connect and read timeout of S3 calls")
    window: int = Field(default=20, ge=1, le=1000, description="probes per store the figures are taken over")
    publish: bool = Field(default=True, description="write kv/io/stores/<node> through the agent's Store")
    slow: SlowThresholds = Field(default_factory=SlowThresholds, description="when a store counts as slow")
    stores: list[StoreConfig] = Field(min_length=1, description="the dataset and checkpoint stores to probe")

    @model_validator(mode="after")
    def _unique(self) -> IoSection:
        names = [s.name for s in self.stores]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stores: name {dup[0]!r} is used twice")
        return self


def open_store(s: StoreConfig, timeout_s: float) -> Store:
    if s.kind == "local":
        if s.endpoint:
            raise ValueError(f"stores: {s.name}: endpoint is for s3:// stores only")
        return LocalStore(s.name, s.uri[len("file://") :])
    bucket, _, prefix = s.uri[len("s3://") :].partition("/")
    return S3Store(s.name, bucket, prefix=prefix, endpoint=s.endpoint, region=s.region, timeout_s=timeout_s)


class IoComponent:
    name = "io"

    def __init__(self, cfg: IoSection) -> None:
        self.cfg = cfg
        sl = cfg.slow
        self.state = IoState(SlowRule(sl.write_latency_s, sl.read_latency_s, sl.min_write_mbps, sl.trip_after,
                                      sl.clear_after), cfg.window)  # fmt: skip
        self.stores: dict[str, Store] = {}
        for s in cfg.stores:
            store = open_store(s, cfg.timeout_s)
            self.stores[s.name] = store
            self.state.add_store(s.name, s.kind, store.uri, s.role)
        self._seq = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self.node = "local"
        self.ctx: Any = None
        self.passes = 0
        self.publish_errors = 0

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        return []

    async def start(self, ctx: AgentContext) -> None:
        self.attach(ctx)
        if self.cfg.publish:
            from agents.scheduler import storekeys as K

            self._client = K.StoreClient.of_agent(ctx, self.cfg.group)
        self._task = asyncio.create_task(self._loop(), name="io")

    def attach(self, ctx: Any) -> None:
        """Take the agent's node id, event bus and metrics registry (what `start` does before its loop)."""
        from prometheus_client import Counter, Gauge, Histogram

        self.ctx = ctx
        self.node = str(ctx.node_id)
        r = ctx.registry
        self.m_seconds = Histogram("infermesh_io_probe_seconds", "Seconds of one probe operation of a store",
                                   ["store", "op"], registry=r,
                                   buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
        self.m_probes = Counter("infermesh_io_probes", "Probes of a store by result", ["store", "result"], registry=r)
        self.m_mbps = Gauge("infermesh_io_throughput_mbps", "Median probe throughput of a store over its window "
                            "(MB/s)", ["store", "op"], registry=r)  # fmt: skip
        self.m_errors = Gauge("infermesh_io_error_ratio", "Failed probes of a store over its window", ["store"],
                              registry=r)  # fmt: skip
        self.m_slow = Gauge("infermesh_io_store_slow", "1 while the store trips the slow rule", ["store", "role"],
                            registry=r)  # fmt: skip
        for name, st in self.state.stores.items():
            self.m_slow.labels(name, st.role).set(0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.close()
        for store in self.stores.values():
            store.close()

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.probe_once()
            except Exception:  # one bad pass must not end the probing
                log.exception("io probe pass failed")
            await asyncio.sleep(max(0.0, self.cfg.interval_s - (time.monotonic() - started)))

    async def probe_once(self) -> list[Transition]:
        """Probe every store (concurrently, in threads), fold the results in, announce and publish."""
        results = await asyncio.gather(
            *(asyncio.to_thread(probe, s, self.cfg.probe_bytes, self.node, next(self._seq))
              for s in self.stores.values())
        )  # fmt: skip
        transitions = [t for t in (self.observe(r) for r in results) if t is not None]
        self.passes += 1
        if self._client is not None:
            await self.publish()
        return transitions

    def observe(self, r: ProbeResult) -> Transition | None:
        t = self.state.observe(r)
        if self.ctx is not None:
            self.m_probes.labels(r.store, "ok" if r.ok else "error").inc()
            for op in ("write", "read", "delete"):
                value = getattr(r, f"{op}_s")
                if value is not None:
                    self.m_seconds.labels(r.store, op).observe(value)
            summary = self.state.stores[r.store].summary()
            for op in ("write", "read"):
                if f"{op}_mbps" in summary:
                    self.m_mbps.labels(r.store, op).set(summary[f"{op}_mbps"])
            self.m_errors.labels(r.store).set(summary["error_ratio"])
        if not r.ok:
            log.warning("io store %s: %s", r.store, r.error, extra={"fields": {"store": r.store}})
        if t is not None:
            self.announce(t)
        return t

    def announce(self, t: Transition) -> None:
        from agents.meshd.events import INFO, WARNING

        st = self.state.stores[t.store]
        what = f"{t.role} store {t.store} ({st.uri})" if t.role != "any" else f"store {t.store} ({st.uri})"
        message = f"{what} is slow: {t.reason}" if t.slow else f"{what} recovered: {t.reason}"
        log.log(logging.WARNING if t.slow else logging.INFO, "%s", message)
        if self.ctx is None:
            return
        self.m_slow.labels(t.store, t.role).set(1 if t.slow else 0)
        self.ctx.events.emit(
            "io.store_slow" if t.slow else "io.store_recovered",
            message,
            severity=WARNING if t.slow else INFO,
            target_id=t.store,
            attrs={"store": t.store, "role": t.role, "uri": st.uri, "kind": st.kind, "reason": t.reason},
        )

    def record(self) -> dict[str, Any]:
        """This node's figures as published under `kv/io/stores/<node>`."""
        return self.state.snapshot(self.node, time.time())

    async def publish(self) -> None:
        try:
            await self._client.put(f"{KEY_PREFIX}{self.node}", self.record())
        except grpc.aio.AioRpcError as exc:
            self.publish_errors += 1
            log.info("io figures not published: %s", exc.details())


def make_component(section: Mapping[str, Any]) -> IoComponent:
    return IoComponent(IoSection.model_validate(dict(section)))
