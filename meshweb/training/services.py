"""Writes of the training domain: submission (quota-checked, idempotent), cancel, scale, status transitions, and what
the scheduler reports back (status along legal transitions, placements, telemetry)."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Sum
from django.utils import timezone

from meshweb.audit.services import audit_record
from meshweb.core.exceptions import Conflict, QuotaExceeded
from meshweb.fleet.mig import require_mig_slices
from meshweb.fleet.models import Node
from meshweb.tenancy.models import Quota, Tenant
from meshweb.tenancy.rbac import Principal
from meshweb.training.models import (
    ACTIVE,
    JOB_TRANSITIONS,
    TERMINAL,
    IdempotencyKey,
    JobEvent,
    JobPlacement,
    JobStatus,
    JobTelemetry,
    TrainingJob,
)
from meshweb.training.spec import validate_spec


def mig_check(spec: dict[str, Any]) -> None:
    """Refuse a MIG job that no enrolled node could ever hold: fewer slices of its profile (and GPU family, when the
    spec names families) in the whole fleet than its minimum of workers."""
    if spec.get("mig_profile"):
        require_mig_slices(
            spec["mig_profile"], spec["workers"]["min"], set(spec.get("gpu_types") or ()), "the job", "workers"
        )


@dataclass(frozen=True)
class Submission:
    job: TrainingJob
    replayed: bool  # True when an earlier request with the same Idempotency-Key created the job


def request_fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# The usage that submission quotas count and an earlier use of the Idempotency-Key, read in one statement: this is
# the portal's busiest write, so it goes out as plain SQL (no ORM compilation) and in one round trip. Unfinished jobs
# are charged what they may still run; finished ones what they ran.
_IN_ACTIVE = f"status IN ({', '.join(['%s'] * len(ACTIVE))})"
_USAGE_SQL = f"""
SELECT COUNT(*) FILTER (WHERE {_IN_ACTIVE}),
       SUM(workers * gpus_per_worker) FILTER (WHERE {_IN_ACTIVE}),
       SUM(CAST(workers AS bigint) * gpus_per_worker * max_runtime_s) FILTER (WHERE {_IN_ACTIVE}),
       SUM(gpu_seconds_charged) FILTER (WHERE NOT {_IN_ACTIVE} AND created_at >= %s),
       (SELECT job_id FROM "{IdempotencyKey._meta.db_table}" WHERE tenant_id = %s AND "key" = %s),
       (SELECT request_hash FROM "{IdempotencyKey._meta.db_table}" WHERE tenant_id = %s AND "key" = %s)
FROM "{TrainingJob._meta.db_table}" WHERE tenant_id = %s
"""


@dataclass(frozen=True)
class _Usage:
    n_active: int
    gpus_held: int
    gpu_hours: float
    earlier_job_id: int | None  # the job an earlier request with the same Idempotency-Key created
    earlier_hash: str | None


def _usage(*, tenant: Tenant, quota: Quota, idempotency_key: str | None) -> _Usage:
    """Read after the quota row is locked: in READ COMMITTED each statement sees what committed before it began, so
    a racing submission of the tenant that held the lock is counted (or its key found) here."""
    since = connection.ops.adapt_datetimefield_value(timezone.now() - timedelta(days=quota.period_days))
    active = sorted(ACTIVE)
    key = idempotency_key or ""
    with connection.cursor() as cursor:
        cursor.execute(_USAGE_SQL, [*(active * 4), since, tenant.pk, key, tenant.pk, key, tenant.pk])
        n_active, gpus_held, reserved_s, charged_s, job_id, request_hash = cursor.fetchone()
    return _Usage(
        n_active=int(n_active or 0),
        gpus_held=int(gpus_held or 0),
        gpu_hours=(float(reserved_s or 0) + float(charged_s or 0.0)) / 3600.0,
        earlier_job_id=job_id if idempotency_key else None,
        earlier_hash=request_hash,
    )


def _quota_check(*, tenant: Tenant, quota: Quota, usage: _Usage, gpus: int, gpu_hours: float) -> None:
    n_active, gpus_held, used = usage.n_active, usage.gpus_held, usage.gpu_hours
    if n_active + 1 > quota.concurrent_jobs_max:
        raise QuotaExceeded(
            f"Quota concurrent_jobs_max exceeded: tenant {tenant.slug} has {n_active} active jobs "
            f"and may have at most {quota.concurrent_jobs_max}."
        )
    if gpus_held + gpus > quota.gpus_max:
        raise QuotaExceeded(
            f"Quota gpus_max exceeded: the job needs {gpus} GPUs, tenant {tenant.slug} holds {gpus_held} "
            f"of {quota.gpus_max}."
        )
    if used + gpu_hours > quota.gpu_hours_per_period + 1e-9:
        raise QuotaExceeded(
            f"Quota gpu_hours_per_period exceeded: the job may use {gpu_hours:.1f} GPU-hours, tenant {tenant.slug} "
            f"has {used:.1f} of {quota.gpu_hours_per_period:.1f} charged in the last {quota.period_days} days."
        )


def job_submit(
    *,
    principal: Principal,
    tenant: Tenant,
    name: str,
    spec: Any,
    priority: int = 50,
    idempotency_key: str | None = None,
    fingerprint: str | None = None,
) -> Submission:
    clean = validate_spec(spec)
    mig_check(clean)
    workers_min = clean["workers"]["min"]
    gpus = workers_min * clean["gpus_per_worker"]
    gpu_hours = gpus * clean["max_runtime_s"] / 3600.0
    with transaction.atomic():
        # Serialises submissions of one tenant so that two racing requests cannot both fit under a quota.
        quota = Quota.objects.select_for_update().get(tenant=tenant)
        usage = _usage(tenant=tenant, quota=quota, idempotency_key=idempotency_key)
        if usage.earlier_job_id is not None:
            if usage.earlier_hash != fingerprint:
                raise Conflict(
                    "Idempotency-Key was already used with a different request body; use a new key.",
                    code="idempotency_key_reused",
                )
            return Submission(
                job=TrainingJob.objects.select_related("tenant").get(pk=usage.earlier_job_id), replayed=True
            )
        _quota_check(tenant=tenant, quota=quota, usage=usage, gpus=gpus, gpu_hours=gpu_hours)
        job = TrainingJob.objects.create(
            tenant=tenant,
            name=name,
            spec=clean,
            priority=priority,
            workers=workers_min,
            gpus_per_worker=clean["gpus_per_worker"],
            max_runtime_s=clean["max_runtime_s"],
            submitted_by=principal.name,
        )
        if idempotency_key:
            IdempotencyKey.objects.create(tenant=tenant, key=idempotency_key, request_hash=fingerprint or "", job=job)
        JobEvent.objects.create(
            job=job, kind="submitted", message=f"submitted by {principal.name}", data={"workers": workers_min}
        )
        audit_record(actor=principal.name, action="job.submit", obj=job, tenant_id=tenant.pk, after=job.snapshot())
    return Submission(job=job, replayed=False)


def _locked(job: TrainingJob) -> TrainingJob:
    return TrainingJob.objects.select_for_update().get(pk=job.pk)


@transaction.atomic
def job_transition(*, principal: Principal, job: TrainingJob, status: str, reason: str = "") -> TrainingJob:
    job = _locked(job)
    if status not in JobStatus.values:
        raise Conflict(f"Unknown job status {status!r}.", code="illegal_transition")
    if status not in JOB_TRANSITIONS[job.status]:
        raise Conflict(
            f"Job {job.pk} cannot go from {job.status} to {status}.",
            code="illegal_transition",
        )
    before = job.snapshot()
    now = timezone.now()
    job.status = status
    job.status_reason = reason
    if status == JobStatus.RUNNING and job.started_at is None:
        job.started_at = now
    if status in TERMINAL:
        job.finished_at = now
        if job.started_at is not None:
            job.gpu_seconds_charged = job.gpus_requested * (now - job.started_at).total_seconds()
    job.save()
    JobEvent.objects.create(job=job, kind=f"status.{status}", message=reason or f"status {before['status']} → {status}")
    audit_record(
        actor=principal.name,
        action=f"job.{status}",
        obj=job,
        tenant_id=job.tenant_id,
        before=before,
        after=job.snapshot(),
    )
    return job


def job_cancel(*, principal: Principal, job: TrainingJob, reason: str = "") -> TrainingJob:
    if job.status in TERMINAL:
        raise Conflict(f"Job {job.pk} is already {job.status}; it cannot be cancelled.", code="illegal_transition")
    return job_transition(
        principal=principal, job=job, status=JobStatus.CANCELLED, reason=reason or f"cancelled by {principal.name}"
    )


@transaction.atomic
def job_scale(*, principal: Principal, job: TrainingJob, workers: int) -> TrainingJob:
    job = _locked(job)
    if job.status in TERMINAL:
        raise Conflict(f"Job {job.pk} is {job.status}; a finished job cannot be scaled.", code="illegal_transition")
    lo, hi = job.spec["workers"]["min"], job.spec["workers"]["max"]
    if not lo <= workers <= hi:
        raise Conflict(
            f"workers must stay within the job's elastic range {lo}..{hi}; got {workers}.", code="out_of_range"
        )
    if workers > job.workers:
        quota = Quota.objects.select_for_update().get(tenant_id=job.tenant_id)
        extra = (workers - job.workers) * job.gpus_per_worker
        held = int(
            TrainingJob.objects.filter(tenant_id=job.tenant_id, status__in=ACTIVE).aggregate(
                gpus=Sum(F("workers") * F("gpus_per_worker"))
            )["gpus"]
            or 0
        )
        if held + extra > quota.gpus_max:
            raise QuotaExceeded(
                f"Quota gpus_max exceeded: scaling to {workers} workers needs {extra} more GPUs, tenant holds "
                f"{held} of {quota.gpus_max}."
            )
    before = job.snapshot()
    old = job.workers
    job.workers = workers
    job.save(update_fields=["workers", "updated_at"])
    JobEvent.objects.create(
        job=job, kind="scaled", message=f"workers {old} → {workers}", data={"from": old, "to": workers}
    )
    audit_record(
        actor=principal.name, action="job.scale", obj=job, tenant_id=job.tenant_id, before=before, after=job.snapshot()
    )
    return job


def transition_path(current: str, target: str) -> list[str]:
    """The shortest chain of legal transitions from `current` to `target` (empty when already there). The scheduler
    reports where a job is, not every step it took (a short job can be placed and finish between two reports), so the
    portal walks the legal steps in between. Conflict when no legal chain exists (e.g. out of a terminal status)."""
    if current == target:
        return []
    if target not in JobStatus.values:
        raise Conflict(f"Unknown job status {target!r}.", code="illegal_transition")
    seen = {current: [current]}
    todo = deque([current])
    while todo:
        status = todo.popleft()
        for nxt in sorted(JOB_TRANSITIONS[status]):
            if nxt in seen:
                continue
            seen[nxt] = [*seen[status], nxt]
            if nxt == target:
                return seen[nxt][1:]
            todo.append(nxt)
    raise Conflict(f"Job cannot go from {current} to {target}.", code="illegal_transition")


def job_advance(*, principal: Principal, job: TrainingJob, status: str, reason: str = "") -> TrainingJob:
    """Bring a job to `status` through each legal transition once (each audited and published as usual); a report
    of the status the job already has changes nothing."""
    with transaction.atomic():
        job = _locked(job)
        path = transition_path(job.status, status)
        for step in path:
            why = reason if step == status else f"{reason} (via {step})" if reason else f"via {step}"
            job = job_transition(principal=principal, job=job, status=step, reason=why[:500])
    return job


@dataclass(frozen=True)
class PlacementSlot:
    rank: int
    node: str
    gpu_uuids: Sequence[str]


@transaction.atomic
def job_place(*, principal: Principal, job: TrainingJob, slots: Sequence[PlacementSlot], generation: int = 0) -> None:
    """Record where the job's workers run now (one row per rank), replacing the previous placement."""
    job = _locked(job)
    names = {s.node for s in slots}
    nodes = {n.name: n for n in Node.objects.filter(name__in=names)}
    unknown = sorted(names - set(nodes))
    if unknown:
        raise Conflict(f"Placement names nodes the portal does not know: {', '.join(unknown)}.", code="unknown_node")
    ranks = [s.rank for s in slots]
    if len(set(ranks)) != len(ranks):
        raise Conflict("Placement repeats a rank.", code="invalid_placement")
    before = {"placements": [[p.rank, p.node_id, p.gpu_uuids] for p in job.placements.all()]}
    JobPlacement.objects.filter(job=job).delete()
    JobPlacement.objects.bulk_create(
        [JobPlacement(job=job, node=nodes[s.node], gpu_uuids=list(s.gpu_uuids), rank=s.rank) for s in slots]
    )
    after = {"generation": generation, "placements": [[s.rank, s.node, list(s.gpu_uuids)] for s in slots]}
    audit_record(actor=principal.name, action="job.place", obj=job, tenant_id=job.tenant_id, before=before, after=after)


def job_telemetry_record(*, job: TrainingJob, generation: int, data: dict[str, Any]) -> JobTelemetry:
    """Keep the job's latest telemetry roll-up (a measurement: replaced, not audited, like node telemetry)."""
    row, created = JobTelemetry.objects.get_or_create(
        job=job, defaults={"at": timezone.now(), "generation": generation, "data": data, "reports": 1}
    )
    if not created:
        row.at, row.generation, row.data, row.reports = timezone.now(), generation, data, row.reports + 1
        row.save(update_fields=["at", "generation", "data", "reports"])
    return row
