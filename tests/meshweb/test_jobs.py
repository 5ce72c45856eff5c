"""Job submission: the example job, idempotency, quotas, bad input, cancel/scale and the status machine."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F

from meshweb.audit.models import AuditEntry
from meshweb.core.exceptions import Conflict
from meshweb.tenancy.models import Quota
from meshweb.tenancy.services import SYSTEM, tenant_create
from meshweb.training.models import JobEvent, JobStatus, TrainingJob
from meshweb.training.services import job_transition
from tests.meshweb.conftest import EXAMPLE_JOB, make_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(db: Any, token_for: Any) -> tuple[Any, Any]:
    tenant = tenant_create(principal=SYSTEM, slug="demo")
    return tenant, make_client(token_for(tenant, "member"))


def counts() -> tuple[int, int, int]:
    return TrainingJob.objects.count(), JobEvent.objects.count(), AuditEntry.objects.count()


def post_raw(client: Any, body: bytes | str, content_type: str = "application/json", **headers: str) -> Any:
    return client.generic("POST", "/api/v1/jobs/", body, content_type=content_type, **headers)


def test_example_job_is_accepted_with_default_quotas(demo: Any) -> None:
    _, client = demo
    response = client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["tenant"] == "demo"
    assert body["status"] == "pending"
    assert body["workers"] == 2
    assert body["spec"]["workers"] == {"min": 2, "max": 4}
    assert response["Location"] == f"/api/v1/jobs/{body['id']}/"
    events = client.get(f"/api/v1/jobs/{body['id']}/events/").json()["results"]
    assert [e["kind"] for e in events] == ["submitted"]
    entry = AuditEntry.objects.get(action="job.submit")
    assert entry.object_id == str(body["id"]) and entry.actor.startswith("token:")


def test_idempotency_key_replays_and_refuses_a_different_body(demo: Any) -> None:
    _, client = demo
    first = client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    before = counts()
    changed = {**EXAMPLE_JOB, "priority": 99}
    clash = client.post("/api/v1/jobs/", changed, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "idempotency_key_reused"
    assert "Idempotency-Key" in clash.json()["error"]["message"]
    assert counts() == before
    assert TrainingJob.objects.count() == 1


@pytest.mark.parametrize(
    ("field", "value", "job", "needle"),
    [
        ("gpus_max", 3, {"workers": {"min": 4, "max": 4}}, "gpus_max"),
        ("concurrent_jobs_max", 0, {}, "concurrent_jobs_max"),
        ("gpu_hours_per_period", 1.0, {"max_runtime_s": 7200}, "gpu_hours_per_period"),
    ],
)
def test_quota_refusal_names_the_quota_and_writes_nothing(
    demo: Any, field: str, value: Any, job: dict[str, Any], needle: str
) -> None:
    tenant, client = demo
    Quota.objects.filter(tenant=tenant).update(**{field: value})
    body = copy.deepcopy(EXAMPLE_JOB)
    body["spec"].update(job)
    before = counts()
    response = client.post("/api/v1/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="q-1")
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded" and needle in error["message"] and "demo" in error["message"]
    assert counts() == before


def test_gpu_quota_counts_jobs_already_active(demo: Any) -> None:
    tenant, client = demo
    Quota.objects.filter(tenant=tenant).update(gpus_max=5)
    assert client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json").status_code == 201  # 2 GPUs
    assert client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json").status_code == 201  # 4 GPUs
    third = client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json")
    assert third.status_code == 422
    assert "holds 4 of 5" in third.json()["error"]["message"]


def test_quota_sums_do_not_overflow_at_the_spec_limits(demo: Any) -> None:
    # 1024 workers x 16 GPUs x 30 days = 4.2e10 GPU-seconds: more than a 32-bit integer holds.
    tenant, client = demo
    Quota.objects.filter(tenant=tenant).update(gpus_max=40_000, gpu_hours_per_period=1e9, concurrent_jobs_max=10)
    big = copy.deepcopy(EXAMPLE_JOB)
    big["spec"] |= {"workers": {"min": 1024, "max": 1024}, "gpus_per_worker": 16, "max_runtime_s": 30 * 24 * 3600}
    assert client.post("/api/v1/jobs/", big, format="json").status_code == 201
    second = client.post("/api/v1/jobs/", big, format="json")
    assert second.status_code == 201, second.content
    third = client.post("/api/v1/jobs/", big, format="json")
    assert third.status_code == 422 and "holds 32768 of 40000" in third.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b'{"name": "x", "spec": ', 400, "Malformed JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"name": "x", "name": "y"}', 400, "duplicate key"),
        (b'{"priority": NaN}', 400, "NaN"),
        (b"\xff\xfe", 400, "UTF-8"),
    ],
)
def test_malformed_bodies(demo: Any, body: bytes, status: int, needle: str) -> None:
    _, client = demo
    before = counts()
    response = post_raw(client, body)
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]
    assert counts() == before


def _mutated(path: list[str], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLE_JOB)
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**EXAMPLE_JOB, "colour": "blue"}, "colour"),
        (_mutated(["spec", "gpu_count"], 2), "spec.gpu_count"),
        (_mutated(["spec", "workers"], {"min": 3, "max": 2}), "spec.workers.min"),
        (_mutated(["spec", "workers"], {"min": "two", "max": 2}), "spec.workers.min"),
        (_mutated(["spec", "gpu_types"], ["Z100"]), "spec.gpu_types"),
        (_mutated(["spec", "gpus_per_worker"], -1), "spec.gpus_per_worker"),
        (_mutated(["spec", "topology"], "mesh"), "spec.topology"),
        (_mutated(["spec", "env"], {"1BAD": "x"}), "spec.env"),
        (_mutated(["spec", "entrypoint"], "torchrun"), "spec.entrypoint"),
        (_mutated(["spec", "checkpoint_uri"], "not a uri"), "spec.checkpoint_uri"),
        (_mutated(["priority"], 5000), "priority"),
        (_mutated(["name"], "bad name!"), "name"),
        ({"name": "x"}, "spec"),
    ],
)
def test_invalid_specs_name_the_field(demo: Any, body: dict[str, Any], field: str) -> None:
    _, client = demo
    before = counts()
    response = client.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert any(name == field or name.startswith(f"{field}.") for name in error["fields"]), error
    assert counts() == before


def test_oversize_body_is_refused(demo: Any) -> None:
    _, client = demo
    body = _mutated(["spec", "env"], {f"V{i}": "x" * 2000 for i in range(200)})
    response = post_raw(client, json.dumps(body))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert TrainingJob.objects.count() == 0


def test_wrong_content_type_is_refused(demo: Any) -> None:
    _, client = demo
    response = post_raw(client, "name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert TrainingJob.objects.count() == 0


def test_unauthenticated_and_bad_tokens(db: Any) -> None:
    assert make_client().post("/api/v1/jobs/", EXAMPLE_JOB, format="json").status_code == 401
    for token in ["im_short", "im_0123456789ab_wrong-secret"]:
        response = make_client(token).get("/api/v1/jobs/")
        assert response.status_code == 401
        assert "token" in response.json()["error"]["message"].lower()


def test_cancel_scale_and_illegal_transitions(demo: Any) -> None:
    _, client = demo
    job_id = client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json").json()["id"]
    scaled = client.post(f"/api/v1/jobs/{job_id}/scale/", {"workers": 4}, format="json")
    assert scaled.status_code == 200 and scaled.json()["workers"] == 4
    out_of_range = client.post(f"/api/v1/jobs/{job_id}/scale/", {"workers": 5}, format="json")
    assert out_of_range.status_code == 409 and "2..4" in out_of_range.json()["error"]["message"]
    cancelled = client.post(f"/api/v1/jobs/{job_id}/cancel/", {"reason": "no longer needed"}, format="json")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    before = counts()
    again = client.post(f"/api/v1/jobs/{job_id}/cancel/", {}, format="json")
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]["message"]
    assert client.post(f"/api/v1/jobs/{job_id}/scale/", {"workers": 2}, format="json").status_code == 409
    assert counts() == before
    kinds = [e["kind"] for e in client.get(f"/api/v1/jobs/{job_id}/events/").json()["results"]]
    assert kinds == ["submitted", "scaled", "status.cancelled"]


def test_job_status_machine(demo: Any) -> None:
    _, client = demo
    job = TrainingJob.objects.get(pk=client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json").json()["id"])
    for status in [JobStatus.QUEUED, JobStatus.PLACING, JobStatus.RUNNING, JobStatus.SUCCEEDED]:
        job = job_transition(principal=SYSTEM, job=job, status=status)
    assert job.started_at is not None and job.finished_at is not None
    with pytest.raises(Conflict, match="cannot go from succeeded to running"):
        job_transition(principal=SYSTEM, job=job, status=JobStatus.RUNNING)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED


def test_gpu_hours_charge_what_finished_jobs_ran(demo: Any) -> None:
    tenant, client = demo
    Quota.objects.filter(tenant=tenant).update(gpu_hours_per_period=3.0)
    first = TrainingJob.objects.get(pk=client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json").json()["id"])
    refused = client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json")  # 2 reserved + 2 > 3
    assert refused.status_code == 422 and "has 2.0 of 3.0" in refused.json()["error"]["message"]
    for status in [JobStatus.QUEUED, JobStatus.PLACING, JobStatus.RUNNING]:
        first = job_transition(principal=SYSTEM, job=first, status=status)
    TrainingJob.objects.filter(pk=first.pk).update(started_at=F("started_at") - timedelta(minutes=15))
    job_transition(principal=SYSTEM, job=first, status=JobStatus.SUCCEEDED)
    first.refresh_from_db()
    assert first.gpu_seconds_charged == pytest.approx(2 * 900, rel=0.01)
    assert client.post("/api/v1/jobs/", EXAMPLE_JOB, format="json").status_code == 201  # 0.5 charged + 2 ≤ 3
