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
from typing import Any

import grpc
from pydantic import BaseModel, ConfigDict, Field

from agents.scheduler import storekeys as K
from agents.scheduler.costmodel import Calibration, Fabric, RankSlot, RttFn
from agents.scheduler.model import (
    JobRequest,
    NodeState,
    Placed,
    Plan,
    Preempted,
    Queued,
    Replanned,
    SpecError,
    TenantQuota,
)
from agents.scheduler.planner import Planner, PlannerConfig
from agents.scheduler.reserved import PINNING, PLACEMENTS, reserved_nodes
from agents.signals.types import CommStats

log = logging.getLogger("meshd.scheduler")
PORTAL_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
MAX_EVENTS = 50
TELEMETRY_FIELDS = ("status", "step", "step_s", "mean_step_s", "allreduce_count", "allreduce_s", "allreduce_bytes",
                    "busbw_gbps", "ranks")  # fmt: skip


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


def job_from_portal(value: Mapping[str, Any]) -> JobRequest:
    """A portal job record (kv/portal/jobs/<id>) as a scheduler request; SpecError names a bad field."""
    spec = value.get("spec") or {}
    workers = spec.get("workers") or {}
    try:
        job = JobRequest(
            job_id=str(value["id"]),
            tenant=str(value.get("tenant", "")),
            priority=int(value.get("priority", 50)),
            workers_min=int(workers.get("min", 1)),
            workers_max=int(workers.get("max", 1)),
            workers=int(value.get("workers") or workers.get("min", 1)),
            gpus_per_worker=int(spec.get("gpus_per_worker", value.get("gpus_per_worker", 1))),
            gpu_types=tuple(spec.get("gpu_types") or ()),
            topology=str(spec.get("topology", "auto")),
            submitted_at=float(value["id"]),
            checkpoint_uri=str(spec.get("checkpoint_uri", "")),
            entrypoint=list(spec.get("entrypoint") or []),
            args=list(spec.get("args") or []),
            env=dict(spec.get("env") or {}),
            max_runtime_s=int(spec.get("max_runtime_s", value.get("max_runtime_s", 86400))),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"job record is malformed: {exc}") from exc
    return job.validate()


class SchedulerComponent:
    name = "scheduler"

    def __init__(self, cfg: SchedulerSection) -> None:
        self.cfg = cfg
        self._task: asyncio.Task[None] | None = None
        self._client: K.StoreClient | None = None
        self._rtt: RttFn | None = None
        self.calibration = Calibration()
        self.fabric = Fabric(default_uplink_gbps=cfg.uplink_gbps)
        self.restarts: dict[str, int] = {}
        self.passes = 0
        self.local_only = False  # gossip reports the mesh degraded: plan only on nodes this side reaches
        self._local_only_gauge: Any = None

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        return []

    async def start(self, ctx: Any) -> None:
        self.ctx = ctx
        ctx.on_rtt_provider(self._set_rtt)
        from prometheus_client import Gauge

        self._local_only_gauge = Gauge(
            "infermesh_scheduler_local_only",
            "1 while gossip reports the mesh degraded and the scheduler places only on nodes it reaches",
            registry=ctx.registry,
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

    async def run_pass(self, client: K.StoreClient, now: float) -> None:
        unreachable = self.unreachable_nodes()
        kv = await client.get_prefix("kv/")
        statuses = await client.get_prefix(K.NODE_STATUS)
        reserved = reserved_nodes(await client.get_prefix(PINNING), await client.get_prefix(PLACEMENTS))
        section = {
            name: {k[len(name) :]: v for k, v in kv.items() if k.startswith(name)}
            for name in (K.PORTAL_JOBS, K.PORTAL_QUOTAS, K.INVENTORY, K.PLANS, K.JOBS, K.REPORTS)
        }
        planner = Planner(
            fabric=self.fabric,
            config=PlannerConfig(
                preemption=self.cfg.preemption, preempt_min_gap=self.cfg.preempt_min_gap,
                rdzv_port_base=self.cfg.rdzv_port_base, rdzv_port_span=self.cfg.rdzv_port_span,
            ),
        )  # fmt: skip
        for name, inv in section[K.INVENTORY].items():
            try:
                node = NodeState.from_dict(inv)
            except (SpecError, TypeError) as exc:
                log.warning("inventory of %s ignored: %s", name, exc)
                continue
            st = statuses.get(f"{K.NODE_STATUS}{node.name}")
            if isinstance(st, dict) and st.get("status") in K.STORE_TO_NODE_STATUS:
                node.status = K.STORE_TO_NODE_STATUS[st["status"]]
                node.reason = str(st.get("reason", ""))
            if node.status == "active" and node.name in reserved:
                node.status, node.reason = "cordoned", f"kept for inference: {reserved[node.name]}"
            if now - float(inv.get("at", now)) > self.cfg.offline_after_s:
                node.status, node.reason = "offline", "no trainer heartbeat"
            if node.name in unreachable:
                node.status, node.reason = "offline", "unreachable over gossip (local-only mode)"
            planner.upsert_node(node)
        for tenant, q in section[K.PORTAL_QUOTAS].items():
            planner.set_quota(tenant, TenantQuota(q.get("gpus_max"), q.get("concurrent_jobs_max")))

        states: dict[str, dict[str, Any]] = {jid: dict(v) for jid, v in section[K.JOBS].items()}
        writes: dict[str, Any] = {}
        deletes: list[str] = []

        def event(jid: str, kind: str, message: str, **data: Any) -> None:
            st = states.setdefault(jid, {"status": "pending", "events": []})
            events = [*st.get("events", []), {"at": now, "kind": kind, "message": message, "data": data}]
            st["events"] = events[-MAX_EVENTS:]

        def set_status(jid: str, status: str, reason: str) -> None:
            st = states.setdefault(jid, {"status": "pending", "events": []})
            if st.get("status") != status or st.get("reason") != reason:
                st["status"], st["reason"] = status, reason
                event(jid, f"status.{status}", reason)

        for jid, value in section[K.PORTAL_JOBS].items():
            st = states.get(jid, {})
            if value.get("status") in PORTAL_TERMINAL or st.get("status") in ("succeeded", "failed"):
                continue
            try:
                planner.submit(job_from_portal(value))
            except SpecError as exc:
                set_status(jid, "failed", f"invalid job: {exc}")
                continue
            if st.get("status") == "queued":
                planner.reasons[jid] = str(st.get("reason", ""))
        for jid, value in section[K.PLANS].items():
            if jid in planner.jobs:
                plan = Plan.from_dict(value)
                planner.adopt(plan)
                self.restarts.setdefault(jid, int(states.get(jid, {}).get("restarts", 0)))
            else:
                deletes.append(f"{K.PLANS}{jid}")  # cancelled or finished: trainers stop its workers
                if states.get(jid, {}).get("status") not in ("succeeded", "failed"):
                    set_status(jid, "cancelled", "job cancelled")

        reports = self._reports(section[K.REPORTS])
        # worker failures of the current generation: re-place from checkpoint, up to max_restarts
        for jid, plan in list(planner.plans.items()):
            rep = reports.get(jid, {})
            failed = [
                n for n, r in rep.items() if r.get("generation") == plan.generation and r.get("status") == "failed"
            ]
            if failed:
                used = self.restarts.get(jid, 0)
                if used >= self.cfg.max_restarts:
                    planner.finish(jid)
                    deletes.append(f"{K.PLANS}{jid}")
                    set_status(jid, "failed", f"workers failed on {', '.join(failed)} after {used} restarts")
                    continue
                self.restarts[jid] = used + 1
                states.setdefault(jid, {})["restarts"] = used + 1
                event(jid, "worker_failed", f"workers failed on {', '.join(failed)}; restarting from checkpoint")
                del planner.plans[jid]

        for action in planner.schedule():
            if isinstance(action, (Placed, Replanned)):
                plan = action.plan
                writes[f"{K.PLANS}{plan.job_id}"] = plan.to_dict()
                kind = "placed" if isinstance(action, Placed) else "replanned"
                event(
                    plan.job_id, kind, plan.reason, generation=plan.generation, nodes=plan.nodes,
                    strategy=plan.strategy, nccl_algo=plan.nccl_algo, predicted_step_s=plan.predicted_step_s,
                    workers=[{"rank": w.rank, "node": w.node, "gpu_uuids": w.gpu_uuids} for w in plan.workers],
                )  # fmt: skip
                set_status(plan.job_id, "placing", plan.reason)
            elif isinstance(action, Preempted):
                deletes.append(f"{K.PLANS}{action.job_id}")
                set_status(action.job_id, "preempted", action.reason)
            elif isinstance(action, Queued):
                set_status(action.job_id, "queued", action.reason)
                states[action.job_id]["never_fits"] = action.never_fits

        # progress: all workers of the plan running / succeeded for its generation
        for jid, plan in planner.plans.items():
            rep = {n: r for n, r in reports.get(jid, {}).items() if r.get("generation") == plan.generation}
            nodes = set(plan.nodes)
            st = states.setdefault(jid, {"status": "pending", "events": []})
            if rep:
                st["telemetry"] = rollup(plan, rep)
                self._calibrate(plan, rep)
            if nodes and nodes <= set(rep) and all(r.get("status") == "succeeded" for r in rep.values()):
                set_status(jid, "succeeded", f"all {len(plan.workers)} workers finished")
                deletes.append(f"{K.PLANS}{jid}")
            elif nodes and nodes <= set(rep) and all(r.get("status") in ("running", "succeeded") for r in rep.values()):
                set_status(jid, "running", f"{len(plan.workers)} workers running on {', '.join(plan.nodes)}")

        for jid, st in states.items():
            if st != section[K.JOBS].get(jid):
                writes[f"{K.JOBS}{jid}"] = st
        for key, value in writes.items():
            if key not in deletes:
                await client.put(key, value)
        for key in dict.fromkeys(deletes):
            await client.delete(key)
        self.passes += 1

    @staticmethod
    def _reports(raw: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for key, value in raw.items():
            jid, _, node = key.partition("/")
            if node and isinstance(value, dict):
                out.setdefault(jid, {})[node] = value
        return out

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


def plan_obj(plan: Plan) -> dict[str, Any]:
    import json

    obj: dict[str, Any] = json.loads(plan.to_json())
    return obj


def rollup(plan: Plan, rep: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per-job telemetry for the portal: steps, step time and all-reduce figures per node, and the prediction."""
    per_node = {}
    for node, r in sorted(rep.items()):
        per_node[node] = {k: r.get(k) for k in TELEMETRY_FIELDS}
    return {
        "generation": plan.generation,
        "strategy": plan.strategy,
        "nccl_algo": plan.nccl_algo,
        "predicted_step_s": plan.predicted_step_s,
        "predicted_busbw_gbps": plan.predicted_busbw_gbps,
        "nodes": per_node,
    }


def make_component(section: Mapping[str, Any]) -> SchedulerComponent:
    return SchedulerComponent(SchedulerSection.model_validate(dict(section)))
