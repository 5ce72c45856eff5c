"""Training jobs and what happens to them."""

from __future__ import annotations

from django.db import models

from agents.proto.vocab import JOB_STATUSES, check_choices
from meshweb.core.models import TimeStamped


class JobStatus(models.TextChoices):
    PENDING = "pending"
    QUEUED = "queued"
    PLACING = "placing"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"


check_choices("JobStatus", JobStatus.values, JOB_STATUSES)

TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# Jobs in these states hold (or are about to hold) GPUs and count against concurrency quotas.
ACTIVE = frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.PLACING, JobStatus.RUNNING, JobStatus.PREEMPTED})

JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    JobStatus.PENDING: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.QUEUED: frozenset({JobStatus.PLACING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.PLACING: frozenset({JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PREEMPTED, JobStatus.PLACING}
    ),
    JobStatus.PREEMPTED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class Topology(models.TextChoices):
    AUTO = "auto"
    RING = "ring"
    TREE = "tree"
    HIERARCHICAL = "hierarchical"


class TrainingJob(TimeStamped):
    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=128)
    spec = models.JSONField(help_text="validated job spec (image, entrypoint, workers, GPUs, topology, ...)")
    priority = models.IntegerField(default=50)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING, db_index=True)
    status_reason = models.CharField(max_length=500, blank=True)
    workers = models.PositiveIntegerField(help_text="current target number of workers, within the spec's range")
    gpus_per_worker = models.PositiveIntegerField()
    max_runtime_s = models.PositiveIntegerField()
    submitted_by = models.CharField(max_length=200)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # GPU-seconds charged to the tenant's GPU-hour quota, fixed when the job finishes.
    gpu_seconds_charged = models.FloatField(default=0.0)

    TENANT_PATH = "tenant_id"

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "status"], name="job_tenant_status")]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def gpus_requested(self) -> int:
        return self.workers * self.gpus_per_worker

    @property
    def gpu_hours_reserved(self) -> float:
        return self.gpus_requested * self.max_runtime_s / 3600.0


class JobPlacement(TimeStamped):
    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="placements")
    node = models.ForeignKey("fleet.Node", on_delete=models.PROTECT, related_name="placements")
    gpu_uuids = models.JSONField(default=list)
    rank = models.PositiveIntegerField()

    TENANT_PATH = "job__tenant_id"

    class Meta:
        ordering = ["job_id", "rank"]
        constraints = [models.UniqueConstraint(fields=["job", "rank"], name="uniq_placement_job_rank")]


class JobEvent(models.Model):
    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=50)
    message = models.CharField(max_length=1000)
    data = models.JSONField(default=dict, blank=True)

    TENANT_PATH = "job__tenant_id"

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class IdempotencyKey(models.Model):
    """Remembers a job submission so that a retried request returns the same job instead of a second one."""

    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "key"], name="uniq_idempotency_tenant_key")]


class JobTelemetry(models.Model):
    """The latest telemetry roll-up of a job as its scheduler reports it: per node steps, step time and all-reduce
    bytes / time / bus bandwidth, and the plan's prediction. Replaced on each report (a measurement, not a change)."""

    job = models.OneToOneField(TrainingJob, on_delete=models.CASCADE, related_name="telemetry")
    at = models.DateTimeField()
    generation = models.PositiveIntegerField(default=0)
    data = models.JSONField(default=dict)
    reports = models.PositiveIntegerField(default=0)

    TENANT_PATH = "job__tenant_id"

    def __str__(self) -> str:
        return f"telemetry of job {self.job_id} (generation {self.generation})"
