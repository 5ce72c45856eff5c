"""Reads behind every dashboard page, already narrowed to what the principal may see (meshweb/tenancy/rbac.py).

Telemetry and quarantine records live in models of the fleet; they are looked up
through the app registry so that the dashboard keeps working (showing "no telemetry yet") on a portal without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.db import models
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from agents.scheduler.model import GpuInfo, NodeState
from agents.scheduler.planner import mig_fragmentation
from meshweb.audit.models import AuditEntry
from meshweb.catalog.models import Deployment, Model
from meshweb.dashboard.access import visible_tenant_ids
from meshweb.fleet.mig import mig_slices
from meshweb.fleet.models import Gpu, Node, NodeStatus
from meshweb.fleet.quarantine import BAD_THROTTLE
from meshweb.tenancy.models import Tenant
from meshweb.tenancy.rbac import Principal, restrict
from meshweb.tenancy.roles import Role
from meshweb.training.models import ACTIVE, JobEvent, JobPlacement, JobTelemetry, TrainingJob

FEED_LIMIT = 50
HISTORY_LIMIT = 200
JOB_EVENT_LIMIT = 50
PLACEMENT_LIMIT = 1024


def _model(app_label: str, name: str) -> type[models.Model] | None:
    try:
        return apps.get_model(app_label, name)
    except LookupError:
        return None


# -- fleet -------------------------------------------------------------------------------------------------------


def nodes(principal: Principal) -> models.QuerySet[Node]:
    return restrict(Node.objects.select_related("zone").annotate(gpu_count=Count("gpus")), principal)


def nodes_with_mig(principal: Principal) -> list[Node]:
    """The nodes page's rows: each node with `mig`, its MIG report (`mig_reports`), or None."""
    rows = list(nodes(principal))
    reports = mig_reports(rows)
    for n in rows:
        n.mig = reports.get(n.name)  # type: ignore[attr-defined]
    return rows


def node_by_name(principal: Principal, name: str) -> Node | None:
    return nodes(principal).filter(name=name).first()


def nodes_by_status(principal: Principal) -> dict[str, int]:
    counts = {status: 0 for status in NodeStatus.values}
    for row in restrict(Node.objects.all(), principal).values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


def mig_reports(nodes: list[Node]) -> dict[str, dict[str, Any]]:
    """Per node with MIG slices: each profile's free and total slices, the largest free slice and the fragmentation,
    by the scheduler's own rule (`agents/scheduler/planner.mig_fragmentation`) over the slices the portal knows and
    those its running and waiting jobs' placements hold."""
    slices = mig_slices([n.name for n in nodes])
    if not slices:
        return {}
    placed = JobPlacement.objects.filter(node__name__in=list(slices), job__status__in=ACTIVE)
    held = {str(u) for uuids in placed.values_list("gpu_uuids", flat=True) for u in uuids or []}
    states = [
        NodeState(name=n.name, status=n.status, gpus=[GpuInfo(uuid=u, gpu_type=f, mig_profile=p)
                                                     for u, (p, f) in sorted(slices[n.name].items())])
        for n in nodes
        if n.name in slices
    ]  # fmt: skip
    return mig_fragmentation(states, held)


def gpus_of(node: Node) -> list[Gpu]:
    return list(node.gpus.order_by("index", "uuid"))


def latest_gpu_readings(principal: Principal, node: Node | None = None) -> list[dict[str, Any]]:
    """The latest reading of every GPU (or of one node's), as reported by the agents; [] before any report."""
    gpu_telemetry = _model("fleet", "GpuTelemetry")
    if gpu_telemetry is None:
        return []
    rows = gpu_telemetry.objects.select_related("node").order_by("node__name", "index", "uuid")  # type: ignore[attr-defined]
    rows = rows.filter(node__in=restrict(Node.objects.all(), principal))
    if node is not None:
        rows = rows.filter(node=node)
    return [{"node": r.node.name, "uuid": r.uuid, "index": r.index, "at": r.at, **(r.data or {})} for r in rows]


def fleet_gpu_utilization(principal: Principal, fresh_s: float = 120.0) -> float | None:
    """Mean utilization (percent) over GPUs with a fresh reading; None when no GPU reported lately."""
    since = timezone.now() - timedelta(seconds=fresh_s)
    values = [
        float(r["utilization"])
        for r in latest_gpu_readings(principal)
        if r.get("utilization") is not None and r["at"] >= since
    ]
    return round(sum(values) / len(values), 1) if values else None


def node_gpu_summary(principal: Principal, fresh_s: float = 120.0) -> list[dict[str, Any]]:
    """Per node, over its GPUs with a fresh reading: mean utilization and memory use (percent), the hottest GPU's
    temperature and whether any is throttled, for the overview (they move with the load the node serves)."""
    since = timezone.now() - timedelta(seconds=fresh_s)
    by_node: dict[str, list[dict[str, Any]]] = {}
    for r in latest_gpu_readings(principal):
        if r["at"] >= since:
            by_node.setdefault(r["node"], []).append(r)

    def mean(values: list[Any]) -> float | None:
        known = [float(v) for v in values if v is not None]
        return round(sum(known) / len(known), 1) if known else None

    out = []
    for node, gpus in sorted(by_node.items()):
        temps = [float(g["temperature_c"]) for g in gpus if g.get("temperature_c") is not None]
        out.append(
            {
                "node": node,
                "gpus": len(gpus),
                "utilization": mean([g.get("utilization") for g in gpus]),
                "memory_pct": mean([_pct(g.get("memory_used_frac")) for g in gpus]),
                "temperature_c": round(max(temps), 1) if temps else None,
                "throttled": any(
                    r in BAD_THROTTLE for g in gpus for r in (g.get("throttle_reasons") or []) if isinstance(r, str)
                ),
            }
        )
    return out


@dataclass
class GpuSeries:
    uuid: str
    index: int
    t: list[float] = field(default_factory=list)  # unix seconds
    utilization: list[float | None] = field(default_factory=list)
    memory_used_pct: list[float | None] = field(default_factory=list)
    temperature_c: list[float | None] = field(default_factory=list)
    power_w: list[float | None] = field(default_factory=list)


def _pct(frac: Any) -> float | None:
    return None if frac is None else round(float(frac) * 100.0, 1)


def gpu_series(node: Node, minutes: int = 30, limit: int = 600) -> list[GpuSeries]:
    """Per-GPU time series from the node's telemetry history, oldest first, for the charts."""
    sample_model = _model("fleet", "TelemetrySample")
    if sample_model is None:
        return []
    since = timezone.now() - timedelta(minutes=minutes)
    rows = list(
        sample_model.objects.filter(node=node, at__gte=since).order_by("-at").values_list("at", "data")[:limit]  # type: ignore[attr-defined]
    )
    rows.reverse()
    series: dict[str, GpuSeries] = {}
    for at, data in rows:
        stamp = at.timestamp()
        for gpu in (data or {}).get("gpus", []) or []:
            uuid = str(gpu.get("uuid", ""))
            if not uuid:
                continue
            s = series.setdefault(uuid, GpuSeries(uuid=uuid, index=int(gpu.get("index", 0) or 0)))
            s.t.append(stamp)
            s.utilization.append(gpu.get("utilization"))
            s.memory_used_pct.append(_pct(gpu.get("memory_used_frac")))
            s.temperature_c.append(gpu.get("temperature_c"))
            s.power_w.append(gpu.get("power_w"))
    return sorted(series.values(), key=lambda s: (s.index, s.uuid))


def node_rollup(node: Node) -> dict[str, Any] | None:
    telemetry = _model("fleet", "NodeTelemetry")
    if telemetry is None:
        return None
    row = telemetry.objects.filter(node=node).first()  # type: ignore[attr-defined]
    return None if row is None else {"at": row.at, **(row.data or {})}


# -- quarantine ----------------------------------------------------------------------------------------------------


def quarantines(principal: Principal, node: Node | None = None) -> list[Any]:
    """Quarantine records (reason, evidence, release) newest first, when the fleet keeps them."""
    quarantine_model = _model("fleet", "NodeQuarantine")
    if quarantine_model is None:
        return []
    rows = quarantine_model.objects.select_related("node").filter(  # type: ignore[attr-defined]
        node__in=restrict(Node.objects.all(), principal)
    )
    if node is not None:
        rows = rows.filter(node=node)
    records = list(rows.order_by("-created_at", "-id")[:HISTORY_LIMIT])
    for record in records:
        record.evidence_json = json.dumps(record.evidence, sort_keys=True)
    return records


def node_events(node: Node, limit: int = 50) -> list[Any]:
    """What happened to the node (quarantined, released, offline, online), newest first, when the fleet keeps it."""
    event_model = _model("fleet", "NodeEvent")
    if event_model is None:
        return []
    return list(event_model.objects.filter(node=node).order_by("-at", "-id")[:limit])  # type: ignore[attr-defined]


def node_status_history(principal: Principal, node: Node | None = None) -> models.QuerySet[AuditEntry]:
    """Audited node status changes that entered or left quarantine (or offline), newest first."""
    entries = AuditEntry.objects.filter(object_type="fleet.node", action__startswith="node.")
    entries = entries.filter(
        Q(action__in=["node.quarantined", "node.offline"])
        | Q(before__status=NodeStatus.QUARANTINED)
        | Q(before__status=NodeStatus.OFFLINE)
    )
    if node is not None:
        entries = entries.filter(object_id=str(node.pk))
    if not principal.is_authenticated:
        return entries.none()
    return entries.order_by("-at", "-id")[:HISTORY_LIMIT]  # type: ignore[return-value]


# -- tenants and quotas -------------------------------------------------------------------------------------------


def tenants_with_usage(principal: Principal) -> list[dict[str, Any]]:
    """Each visible tenant with its quota and what it uses now, in one aggregate query."""
    active = Q(jobs__status__in=ACTIVE)
    gpus_of = F("jobs__workers") * F("jobs__gpus_per_worker")
    rows = (
        restrict(Tenant.objects.select_related("quota"), principal)
        .annotate(
            n_active=Count("jobs", filter=active),
            gpus_held=Sum(gpus_of, filter=active),
            reserved_s=Sum(gpus_of * F("jobs__max_runtime_s"), filter=active),
            charged_s=Sum("jobs__gpu_seconds_charged", filter=~active),
        )
        .order_by("slug")
    )
    out = []
    for tenant in rows:
        quota = getattr(tenant, "quota", None)
        used_hours = ((tenant.reserved_s or 0) + (tenant.charged_s or 0.0)) / 3600.0  # type: ignore[attr-defined]
        out.append(
            {
                "tenant": tenant,
                "quota": quota,
                "active_jobs": tenant.n_active,  # type: ignore[attr-defined]
                "gpus_held": int(tenant.gpus_held or 0),  # type: ignore[attr-defined]
                "gpu_hours_used": round(used_hours, 1),
                "gpus_pct": _share(int(tenant.gpus_held or 0), quota.gpus_max if quota else 0),  # type: ignore[attr-defined]
                "jobs_pct": _share(tenant.n_active, quota.concurrent_jobs_max if quota else 0),  # type: ignore[attr-defined]
                "hours_pct": _share(used_hours, quota.gpu_hours_per_period if quota else 0),
            }
        )
    return out


def _share(used: float, limit: float) -> int:
    if limit <= 0:
        return 100 if used > 0 else 0
    return min(100, round(100.0 * used / limit))


def submit_tenants(principal: Principal) -> models.QuerySet[Tenant]:
    """Tenants the principal may submit jobs for."""
    return restrict(Tenant.objects.filter(is_active=True), principal, Role.MEMBER).order_by("slug")


# -- models and deployments -----------------------------------------------------------------------------------------


def catalog(principal: Principal) -> list[Model]:
    return list(
        restrict(Model.objects.select_related("tenant"), principal)
        .prefetch_related("revisions__deployments__zone")
        .order_by("tenant__slug", "name")
    )


def deployments(principal: Principal) -> models.QuerySet[Deployment]:
    return restrict(Deployment.objects.select_related("revision__model__tenant", "zone"), principal)


# -- jobs -----------------------------------------------------------------------------------------------------------


def jobs(principal: Principal, status: str = "") -> models.QuerySet[TrainingJob]:
    rows = restrict(TrainingJob.objects.select_related("tenant"), principal).order_by("-created_at", "-id")
    if status == "active":
        rows = rows.filter(status__in=ACTIVE)
    elif status:
        rows = rows.filter(status=status)
    return rows


def job(principal: Principal, job_id: int, minimum: str = Role.VIEWER) -> TrainingJob | None:
    return restrict(TrainingJob.objects.select_related("tenant"), principal, minimum).filter(pk=job_id).first()


def job_events(job: TrainingJob, limit: int = JOB_EVENT_LIMIT) -> list[JobEvent]:
    """The job's latest events, oldest first (a long-running job may have thousands)."""
    latest = list(JobEvent.objects.filter(job=job).order_by("-at", "-id")[:limit])
    latest.reverse()
    return latest


def job_placements(job: TrainingJob) -> list[JobPlacement]:
    """Where the job's workers run now, by rank, with their nodes."""
    return list(JobPlacement.objects.filter(job=job).select_related("node").order_by("rank")[:PLACEMENT_LIMIT])


def job_telemetry(job: TrainingJob) -> JobTelemetry | None:
    """The job's latest telemetry roll-up, None until its scheduler first reports one."""
    return JobTelemetry.objects.filter(job=job).first()


# -- the event feed ---------------------------------------------------------------------------------------------------


def audit_feed(principal: Principal) -> models.QuerySet[AuditEntry]:
    """Audit entries the principal may see: its tenants' rows and platform-wide fleet changes."""
    entries = AuditEntry.objects.select_related("tenant")
    if not principal.is_authenticated:
        return entries.none()
    tenant_ids = visible_tenant_ids(principal)
    if tenant_ids is None:
        return entries
    return entries.filter(Q(tenant_id__in=tenant_ids) | Q(tenant__isnull=True, object_type__startswith="fleet."))


def audit_after(principal: Principal, after_id: int, limit: int = FEED_LIMIT) -> list[AuditEntry]:
    return list(audit_feed(principal).filter(id__gt=after_id).order_by("id")[:limit])


def last_audit_id(principal: Principal) -> int:
    return int(AuditEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0)


def recent_feed(principal: Principal, limit: int = FEED_LIMIT) -> list[AuditEntry]:
    return list(audit_feed(principal).order_by("-id")[:limit])


def feed_item(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry as the browser's live feed shows it (the same shape on first render and over the socket)."""
    after = entry.after or {}
    before = entry.before or {}
    item: dict[str, Any] = {
        "kind": "audit",
        "id": entry.pk,
        "at": entry.at.isoformat() if isinstance(entry.at, datetime) else str(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "tenant": entry.tenant.slug if entry.tenant_id and entry.tenant else None,
    }
    name = after.get("name") or before.get("name")
    if entry.object_type == "fleet.node":
        item["node"] = name
        item["status"] = after.get("status")
        item["reason"] = after.get("status_reason", "")
        item["summary"] = f"node {name}: {before.get('status', '?')} → {after.get('status', '?')}"
        if item["reason"]:
            item["summary"] += f" ({item['reason']})"
    elif entry.object_type == "training.trainingjob":
        item["job"] = entry.object_id
        item["status"] = after.get("status")
        item["summary"] = f"job {entry.object_id} {name or ''}: {entry.action}".replace("  ", " ")
        if after.get("workers") is not None and entry.action == "job.scale":
            item["summary"] += f" to {after['workers']} workers"
    else:
        label = entry.object_type.split(".")[-1]
        item["summary"] = f"{label} {name or entry.object_id}: {entry.action}"
    return item
