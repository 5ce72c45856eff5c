"""The scheduler's asyncio driver, hosted by `infermesh agent` (`scheduler:` section) on coordinator nodes.

Only the Raft leader plans. Each pass it reads the store (portal jobs and quotas, node status, trainer inventories
and reports, committed plans), rebuilds the sans-IO planner from it, and commits what the planner decides: plans
under `kv/training/plans/`, job state (status, reason, events, telemetry) under `kv/training/jobs/`, which the portal
link reports back to the portal. Rebuilding from the store each pass is what lets a new leader carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from pydantic import BaseModel, ConfigDict, Field

from agents.collective.costmodel import Calibration, Fabric, RankSlot, RttFn
from agents.collective.records import CommStats
from agents.scheduler import storekeys as K
from agents.scheduler.lifecycle import (
    MAX_EVENTS,
    PORTAL_TERMINAL,
    SNAPSHOT_PREFIXES,
    TELEMETRY_FIELDS,
    LifecycleConfig,
    Snapshot,
    job_from_portal,
    reconcile,
    rollup,
)
from agents.scheduler.model import Plan
from agents.scheduler.planner import LocalityFn

if TYPE_CHECKING:
    from agents.meshd.component import AgentContext

log = logging.getLogger("meshd.scheduler")
__all__ = ["MAX_EVENTS", "PORTAL_TERMINAL", "TELEMETRY_FIELDS", "SchedulerComponent", "SchedulerSection",
           "job_from_portal", "make_component", "rollup"]  # fmt: skip


class SchedulerSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str = ""
    interval_s: float = Field(default=1.0, gt=0, le=60)
    offline_after_s: float = Field(default=15.0, gt=0)  # a trainer inventory older than this: node offline
    preemption: bool = True
    preempt_min_gap: int = Field(default=10, ge=0)
    rdzv_port_base: int = Field(default=29500, ge=1024, le=65000)
    rdzv_port_span: int = Field(default=400, ge=1, le=10000)
    max_restarts: int = Field(default=3, ge=0)  # worker failures re-placed (from checkpoint) before the job fails
    uplink_gbps: float | None = Field(default=None, gt=0)  # inter-zone uplink per zone, when oversubscribed


class SchedulerComponent:
    name = "scheduler"

    def __init__(self, cfg: SchedulerSection) -> None:
        self.cfg = cfg
        self._task: asyncio.Task[None] | None = None
        self._client: K.StoreClient | None = None
        self._rtt: RttFn | None = None
        self.calibration = Calibration()
        self.fabric = Fabric(default_uplink_gbps=cfg.uplink_gbps)
        self.passes = 0
        self.local_only = False  # gossip reports the mesh degraded: plan only on nodes this side reaches
        self._local_only_gauge: Any = None
        self._mig_gauges: tuple[Any, Any] | None = None

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        return []

    async def start(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        ctx.on_rtt_provider(self._set_rtt)
        from prometheus_client import Gauge

        self._local_only_gauge = Gauge(
            "infermesh_scheduler_local_only",
            "1 while gossip reports the mesh degraded and the scheduler places only on nodes it reaches",
            registry=ctx.registry,
        )
        self._mig_gauges = (
            Gauge(
                "infermesh_scheduler_mig_fragmentation",
                "Per node: 1 - largest free MIG slice / free MIG compute (0: free compute is one slice)",
                ["node"],
                registry=ctx.registry,
            ),
            Gauge(
                "infermesh_scheduler_mig_slices",
                "MIG slices per node and profile as the scheduler counts them (state: free or total)",
                ["node", "profile", "state"],
                registry=ctx.registry,
            ),
        )
        self._client = K.StoreClient.of_agent(ctx, self.cfg.group)
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    def _set_rtt(self, rtt: RttFn | None) -> None:
        self.fabric.rtt = rtt

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.close()

    async def _loop(self) -> None:
        assert self._client is not None
        while True:
            try:
                if await self._client.is_leader():
                    await self.run_pass(self._client, time.time())
            except grpc.aio.AioRpcError as exc:
                log.info("scheduler pass skipped: %s", exc.details())
            except Exception:  # a bad record must not stop scheduling for everyone else
                log.exception("scheduler pass failed")
            await asyncio.sleep(self.cfg.interval_s)

    def unreachable_nodes(self) -> set[str]:
        """While gossip reports the mesh degraded (local-only mode): the nodes gossip sees down, which this pass
        treats as offline so no gang is placed across the cut. Entering and leaving the mode is said once (log,
        event, `infermesh_scheduler_local_only`)."""
        from agents.gossip.component import mesh_status

        status = mesh_status()
        on = status.running and status.degraded
        ctx = getattr(self, "ctx", None)
        down: set[str] = set()
        if on and ctx is not None:
            from agents.proto.infermesh.v1 import control_pb2

            down = {n.node_id for n in ctx.nodes.all() if n.state == control_pb2.NODE_STATE_DOWN}
        if on != self.local_only:
            self.local_only = on
            if self._local_only_gauge is not None:
                self._local_only_gauge.set(1 if on else 0)
            message = (
                f"gossip degraded ({status.reachable}/{status.total} reachable): placing only on reachable nodes"
                if on
                else "gossip recovered: placing across the whole mesh again"
            )
            log.log(logging.WARNING if on else logging.INFO, "scheduler: %s", message)
            if ctx is not None:
                from agents.meshd.events import INFO, WARNING

                ctx.events.emit(
                    "scheduler.local_only" if on else "scheduler.mesh_wide",
                    message,
                    severity=WARNING if on else INFO,
                    attrs={"unreachable": ",".join(sorted(down))},
                )
        return down

    def lifecycle_config(self, locality: LocalityFn | None = None) -> LifecycleConfig:
        c = self.cfg
        return LifecycleConfig(
            preemption=c.preemption, preempt_min_gap=c.preempt_min_gap, rdzv_port_base=c.rdzv_port_base,
            rdzv_port_span=c.rdzv_port_span, max_restarts=c.max_restarts, offline_after_s=c.offline_after_s,
            fabric=self.fabric, locality=locality,
        )  # fmt: skip

    async def run_pass(self, client: K.StoreClient, now: float) -> None:
        """Read the store, reconcile (agents/scheduler/lifecycle.py), learn from the reports, commit the result."""
        unreachable = frozenset(self.unreachable_nodes())
        kv: dict[str, Any] = {}
        for prefix in SNAPSHOT_PREFIXES:
            kv |= await client.get_prefix(prefix)
        out = reconcile(Snapshot.from_store(kv, unreachable), now, self.lifecycle_config(io_locality(kv, now)))
        for plan, rep in out.observations:
            self._calibrate(plan, rep)
        self._export_mig(out.mig)
        for key, value in out.writes.items():
            await client.put(key, value)
        for key in out.deletes:
            await client.delete(key)
        self.passes += 1

    def _export_mig(self, mig: Mapping[str, Mapping[str, Any]]) -> None:
        if self._mig_gauges is None:
            return
        frag, slices = self._mig_gauges
        frag.clear()
        slices.clear()
        for node, rep in mig.items():
            frag.labels(node).set(float(rep["fragmentation"]))
            for profile, counts in rep["slices"].items():
                slices.labels(node, profile, "free").set(counts["free"])
                slices.labels(node, profile, "total").set(counts["total"])

    def _calibrate(self, plan: Plan, rep: Mapping[str, Mapping[str, Any]]) -> None:
        ranks = [RankSlot(w.node, w.zone, w.region, "", w.gpu_type or "CPU", len(w.gpu_uuids)) for w in plan.workers]
        records = []
        for r in rep.values():
            for c in r.get("comm", []):
                try:
                    records.append(CommStats(plan.job_id, int(c["rank"]), str(c["collective"]), int(c["bytes"]),
                                             float(c["time_s"]), int(c["n_ranks"])))  # fmt: skip
                except (KeyError, TypeError, ValueError):
                    continue
        algo = plan.strategy if plan.strategy in ("ring", "tree", "hierarchical") else "ring"
        if self.calibration.observe(ranks, records, self.fabric, algo):
            self.calibration.apply(self.fabric)


def io_locality(kv: Mapping[str, Any], now: float) -> LocalityFn | None:
    """The locality cost term from the IO adapters' records under `kv/io/stores/` (None when no node publishes)."""
    from agents.io.locality import KEY_PREFIX, locality_fn

    fn = locality_fn({k[len(KEY_PREFIX) :]: v for k, v in kv.items() if k.startswith(KEY_PREFIX)}, now)
    if fn is None:
        return None
    return lambda job, node: fn(job.checkpoint_uri, job.env, node)


def plan_obj(plan: Plan) -> dict[str, Any]:
    import json

    obj: dict[str, Any] = json.loads(plan.to_json())
    return obj


def make_component(section: Mapping[str, Any]) -> SchedulerComponent:
    return SchedulerComponent(SchedulerSection.model_validate(dict(section)))
