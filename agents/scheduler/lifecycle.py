"""The training job lifecycle, sans-IO: `reconcile(snapshot, now, config)` turns what the store holds (portal jobs
and quotas, node status, trainer inventories and worker reports, committed plans and job states) into the writes
and deletes that move every job along, and the events it says about them. No I/O, no clock, no state kept between
calls: a new leader that reads the same store decides the same, which is what lets it carry on.

    pending -> queued (reason carried over while it holds) -> placing -> running -> succeeded
                    \\-> preempted -> queued ...     failed workers -> restart from checkpoint (a new generation)
                                                     ... more than `max_restarts` -> failed
    a plan whose portal job is gone or terminal -> cancelled (the plan's deletion stops its workers)

The asyncio driver (`agents/scheduler/component.py`) reads the snapshot, calls `reconcile` and commits the result;
the table-driven tests (`tests/agents/scheduler/test_lifecycle.py`) drive it directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.collective.costmodel import Fabric
from agents.scheduler import storekeys as K
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
from agents.scheduler.planner import LocalityFn, Planner, PlannerConfig
from agents.scheduler.reserved import PINNING, PLACEMENTS, reserved_nodes

log = logging.getLogger("meshd.scheduler")

PORTAL_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
DONE = frozenset({"succeeded", "failed"})  # job states the scheduler never leaves
MAX_EVENTS = 50
TELEMETRY_FIELDS = ("status", "step", "step_s", "mean_step_s", "allreduce_count", "allreduce_s", "allreduce_bytes",
                    "busbw_gbps", "ranks", "checkpoint_saves", "checkpoint_save_s", "checkpoint_save_last_s",
                    "checkpoint_restore_s", "checkpoint_bytes")  # fmt: skip
# every store prefix a pass reads
SNAPSHOT_PREFIXES = ("kv/", K.NODE_STATUS, PINNING, PLACEMENTS)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one pass reads from the store, each section keyed by the part of the key after its prefix."""

    portal_jobs: Mapping[str, Any] = field(default_factory=dict)  # kv/portal/jobs/<job>
    quotas: Mapping[str, Any] = field(default_factory=dict)  # kv/portal/quotas/<tenant>
    inventory: Mapping[str, Any] = field(default_factory=dict)  # kv/training/inventory/<node>
    plans: Mapping[str, Any] = field(default_factory=dict)  # kv/training/plans/<job>
    jobs: Mapping[str, Any] = field(default_factory=dict)  # kv/training/jobs/<job>
    reports: Mapping[str, Any] = field(default_factory=dict)  # kv/training/reports/<job>/<node>
    node_status: Mapping[str, Any] = field(default_factory=dict)  # nodes/<node>
    reserved: Mapping[str, str] = field(default_factory=dict)  # node -> why inference keeps it
    unreachable: frozenset[str] = frozenset()  # nodes gossip sees down while the mesh is degraded
    mig: Mapping[str, Any] = field(default_factory=dict)  # kv/training/mig: the last MIG report written

    @classmethod
    def from_store(cls, kv: Mapping[str, Any], unreachable: frozenset[str] = frozenset()) -> Snapshot:
        """Sections of a flat key -> JSON value map that holds every prefix of `SNAPSHOT_PREFIXES`."""

        def section(prefix: str) -> dict[str, Any]:
            return {k[len(prefix) :]: v for k, v in kv.items() if k.startswith(prefix)}

        return cls(
            portal_jobs=section(K.PORTAL_JOBS),
            quotas=section(K.PORTAL_QUOTAS),
            inventory=section(K.INVENTORY),
            plans=section(K.PLANS),
            jobs=section(K.JOBS),
            reports=section(K.REPORTS),
            node_status=section(K.NODE_STATUS),
            reserved=reserved_nodes(section(PINNING), section(PLACEMENTS)),
            unreachable=unreachable,
            mig=kv.get(K.MIG) or {},
        )


@dataclass(slots=True)
class LifecycleConfig:
    preemption: bool = True
    preempt_min_gap: int = 10
    rdzv_port_base: int = 29500
    rdzv_port_span: int = 400
    max_restarts: int = 3  # worker failures re-placed (from checkpoint) before the job fails
    offline_after_s: float = 15.0  # a trainer inventory older than this: node offline
    fabric: Fabric = field(default_factory=Fabric)  # the cost model (calibrated by the driver between passes)
    locality: LocalityFn | None = None  # data and checkpoint locality cost (agents/io/locality.py), if measured


@dataclass(frozen=True, slots=True)
class JobEvent:
    job_id: str
    kind: str
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Reconciled:
    writes: dict[str, Any] = field(default_factory=dict)  # full store key -> JSON value
    deletes: list[str] = field(default_factory=list)  # full store keys, in order, no repeats
    events: list[JobEvent] = field(default_factory=list)  # what this pass said (also in the job states written)
    # (plan, this generation's reports) of jobs with reports: the driver calibrates the cost model from them
    observations: list[tuple[Plan, dict[str, dict[str, Any]]]] = field(default_factory=list)
    # per node with MIG slices, after this pass: slices free / total per profile, largest free, fragmentation
    mig: dict[str, dict[str, Any]] = field(default_factory=dict)


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
            mig_profile=str(spec.get("mig_profile") or ""),
            mps_percent=int(spec.get("mps_percent") or 0),
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


def reports_by_job(raw: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """`<job>/<node>` -> report, as job -> node -> report (malformed keys and values skipped)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, value in raw.items():
        jid, _, node = key.partition("/")
        if node and isinstance(value, dict):
            out.setdefault(jid, {})[node] = value
    return out


def _fleet(planner: Planner, snap: Snapshot, now: float, config: LifecycleConfig) -> None:
    for name, inv in snap.inventory.items():
        try:
            node = NodeState.from_dict(inv)
        except (SpecError, TypeError) as exc:
            log.warning("inventory of %s ignored: %s", name, exc)
            continue
        st = snap.node_status.get(node.name)
        if isinstance(st, dict) and st.get("status") in K.STORE_TO_NODE_STATUS:
            node.status = K.STORE_TO_NODE_STATUS[st["status"]]
            node.reason = str(st.get("reason", ""))
        if node.status == "active" and node.name in snap.reserved:
            node.status, node.reason = "cordoned", f"kept for inference: {snap.reserved[node.name]}"
        if now - float(inv.get("at", now)) > config.offline_after_s:
            node.status, node.reason = "offline", "no trainer heartbeat"
        if node.name in snap.unreachable:
            node.status, node.reason = "offline", "unreachable over gossip (local-only mode)"
        planner.upsert_node(node)
    for tenant, q in snap.quotas.items():
        planner.set_quota(tenant, TenantQuota(q.get("gpus_max"), q.get("concurrent_jobs_max")))


def reconcile(snap: Snapshot, now: float, config: LifecycleConfig) -> Reconciled:
    """One scheduling pass over `snap` at time `now` (seconds, the store's clock for events and heartbeats)."""
    planner = Planner(
        fabric=config.fabric,
        config=PlannerConfig(
            preemption=config.preemption, preempt_min_gap=config.preempt_min_gap,
            rdzv_port_base=config.rdzv_port_base, rdzv_port_span=config.rdzv_port_span,
        ),
        locality=config.locality,
    )  # fmt: skip
    _fleet(planner, snap, now, config)
    out = Reconciled()
    states: dict[str, dict[str, Any]] = {jid: dict(v) for jid, v in snap.jobs.items()}

    def event(jid: str, kind: str, message: str, **data: Any) -> None:
        st = states.setdefault(jid, {"status": "pending", "events": []})
        events = [*st.get("events", []), {"at": now, "kind": kind, "message": message, "data": data}]
        st["events"] = events[-MAX_EVENTS:]
        out.events.append(JobEvent(jid, kind, message, data))

    def set_status(jid: str, status: str, reason: str) -> None:
        st = states.setdefault(jid, {"status": "pending", "events": []})
        if st.get("status") != status or st.get("reason") != reason:
            st["status"], st["reason"] = status, reason
            event(jid, f"status.{status}", reason)

    def delete_plan(jid: str) -> None:
        out.deletes.append(f"{K.PLANS}{jid}")

    # 1. the portal's live jobs; a queued job keeps its reason until the planner says otherwise
    for jid, value in snap.portal_jobs.items():
        st = states.get(jid, {})
        if value.get("status") in PORTAL_TERMINAL or st.get("status") in DONE:
            continue
        try:
            planner.submit(job_from_portal(value))
        except SpecError as exc:
            set_status(jid, "failed", f"invalid job: {exc}")
            continue
        if st.get("status") == "queued":
            planner.reasons[jid] = str(st.get("reason", ""))
    # 2. committed plans: adopted while their job lives; otherwise the job was cancelled (or finished)
    for jid, value in snap.plans.items():
        if jid in planner.jobs:
            planner.adopt(Plan.from_dict(value))
        else:
            delete_plan(jid)  # trainers stop its workers
            if states.get(jid, {}).get("status") not in DONE:
                set_status(jid, "cancelled", "job cancelled")

    # 3. worker failures of the current generation: re-place from checkpoint, up to max_restarts
    reports = reports_by_job(snap.reports)
    for jid, plan in list(planner.plans.items()):
        rep = reports.get(jid, {})
        failed = [n for n, r in rep.items() if r.get("generation") == plan.generation and r.get("status") == "failed"]
        if not failed:
            continue
        used = int(states.get(jid, {}).get("restarts", 0))
        if used >= config.max_restarts:
            planner.finish(jid)
            delete_plan(jid)
            set_status(jid, "failed", f"workers failed on {', '.join(failed)} after {used} restarts")
            continue
        states.setdefault(jid, {"status": "pending", "events": []})["restarts"] = used + 1
        event(jid, "worker_failed", f"workers failed on {', '.join(failed)}; restarting from checkpoint")
        del planner.plans[jid]

    # 4. the planner's decisions
    actions = planner.schedule()
    out.mig = planner.fragmentation()  # the fleet's MIG slices as this pass leaves them
    for action in actions:
        if isinstance(action, (Placed, Replanned)):
            plan = action.plan
            out.writes[f"{K.PLANS}{plan.job_id}"] = plan.to_dict()
            kind = "placed" if isinstance(action, Placed) else "replanned"
            workers: list[dict[str, Any]] = [
                {"rank": w.rank, "node": w.node, "gpu_uuids": w.gpu_uuids} for w in plan.workers
            ]
            extra: dict[str, Any] = {}
            if any(w.mig_profile or w.mps_percent for w in plan.workers):
                for d, w in zip(workers, plan.workers, strict=True):
                    if w.mig_profile:
                        d["mig_profile"] = w.mig_profile
                    else:
                        d["mps_percent"] = w.mps_percent
            if any(w.mig_profile for w in plan.workers):
                # the fragmentation of the job's nodes once its slices are taken
                extra["mig_fragmentation"] = {n: out.mig[n]["fragmentation"] for n in plan.nodes if n in out.mig}
            event(
                plan.job_id, kind, plan.reason, generation=plan.generation, nodes=plan.nodes,
                strategy=plan.strategy, nccl_algo=plan.nccl_algo, predicted_step_s=plan.predicted_step_s,
                workers=workers, **extra,
            )  # fmt: skip
            set_status(plan.job_id, "placing", plan.reason)
        elif isinstance(action, Preempted):
            delete_plan(action.job_id)
            set_status(action.job_id, "preempted", action.reason)
        elif isinstance(action, Queued):
            set_status(action.job_id, "queued", action.reason)
            states[action.job_id]["never_fits"] = action.never_fits

    # 5. progress: every worker of the plan's generation running, or all of them succeeded
    for jid, plan in planner.plans.items():
        rep = {n: r for n, r in reports.get(jid, {}).items() if r.get("generation") == plan.generation}
        nodes = set(plan.nodes)
        st = states.setdefault(jid, {"status": "pending", "events": []})
        if rep:
            st["telemetry"] = rollup(plan, rep)
            out.observations.append((plan, rep))
        if nodes and nodes <= set(rep) and all(r.get("status") == "succeeded" for r in rep.values()):
            set_status(jid, "succeeded", f"all {len(plan.workers)} workers finished")
            delete_plan(jid)
        elif nodes and nodes <= set(rep) and all(r.get("status") in ("running", "succeeded") for r in rep.values()):
            set_status(jid, "running", f"{len(plan.workers)} workers running on {', '.join(plan.nodes)}")

    # 6. the fleet's MIG slices and their fragmentation, written when they changed
    if out.mig != dict(snap.mig):
        out.writes[K.MIG] = out.mig

    for jid, st in states.items():
        if st != snap.jobs.get(jid):
            out.writes[f"{K.JOBS}{jid}"] = st
    out.deletes = list(dict.fromkeys(out.deletes))
    for key in out.deletes:
        out.writes.pop(key, None)  # a plan written and deleted in one pass (placed, then done) is deleted
    return out
