"""What agents learn of training jobs (registered with the outbox at app ready)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from meshweb.core.changes import Put, register, register_dependents
from meshweb.tenancy.models import Tenant
from meshweb.training.models import TrainingJob


def _job(j: TrainingJob) -> Iterator[Put]:
    yield Put(
        "job",
        f"kv/portal/jobs/{j.pk}",
        {
            "id": j.pk,
            "tenant": j.tenant_id,
            "name": j.name,
            "status": j.status,
            "priority": j.priority,
            "workers": j.workers,
            "gpus_per_worker": j.gpus_per_worker,
            "max_runtime_s": j.max_runtime_s,
            "spec": j.spec,
        },
    )


def _doorbell(j: TrainingJob) -> tuple[str, dict[str, Any], int | None]:
    data = {"job": j.pk, "tenant": j.tenant_id, "name": j.name, "status": j.status, "workers": j.workers}
    return "job.status", data, j.tenant_id


def register_changes() -> None:
    register(TrainingJob, _job, doorbell=_doorbell)
    register_dependents(Tenant, "training.trainingjob", lambda t: TrainingJob.objects.filter(tenant=t))
