"""MIG profiles and MPS shares in the job spec through REST: an unknown profile is a 400 naming it; a profile that no
enrolled node's GPUs expose in enough slices (registered GPUs and those the agents report) is refused at submission
with a 422 naming the fleet's layout; an accepted MIG job's record, as the outbox hands it to the agents, is the
request the scheduler places on slices."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from agents.scheduler.lifecycle import job_from_portal
from meshweb.fleet.models import Gpu, GpuTelemetry, Node, Region, Zone
from meshweb.tenancy.services import SYSTEM, tenant_create
from meshweb.training.models import TrainingJob
from tests.meshweb.conftest import EXAMPLE_JOB, make_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(db: Any, token_for: Any) -> Any:
    tenant = tenant_create(principal=SYSTEM, slug="demo")
    zone = Zone.objects.create(region=Region.objects.create(name="r"), name="z")
    # registered with the portal: an H100 carved into two 3g.40gb slices
    a = Node.objects.create(name="mig-a", address="10.0.0.1:7070", zone=zone, roles=["gpu"])
    Gpu.objects.create(node=a, uuid="GPU-a", index=0, model="NVIDIA H100 80GB HBM3", gpu_type="H100", vram_mb=81920)
    for i in range(2):
        Gpu.objects.create(node=a, uuid=f"MIG-a-{i}", index=0, model="NVIDIA H100 80GB HBM3 MIG 3g.40gb",
                           gpu_type="H100", vram_mb=40960, mig_profile="3g.40gb", parent_uuid="GPU-a")  # fmt: skip
    # only reported by the node's agent: two 1g.10gb slices of an H100
    b = Node.objects.create(name="mig-b", address="10.0.0.2:7070", zone=zone, roles=["gpu"])
    for i in range(2):
        GpuTelemetry.objects.create(
            node=b, uuid=f"MIG-b-{i}", index=i, at=datetime.now(UTC),
            data={"uuid": f"MIG-b-{i}", "index": i, "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                  "mig_profile": "1g.10gb"},
        )  # fmt: skip
    return make_client(token_for(tenant, "member"))


def job(workers: int = 2, **gpu: Any) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLE_JOB)
    body["spec"].update({"workers": {"min": workers, "max": workers}, "gpu_types": [], **gpu})
    return body


def test_a_mig_job_the_fleet_can_hold_is_accepted_and_reaches_the_scheduler_as_a_slice_request(client: Any) -> None:
    response = client.post("/api/v1/jobs/", job(2, mig_profile="3g.40gb"), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["spec"]["mig_profile"] == "3g.40gb" and "mps_percent" not in body["spec"]
    stored = TrainingJob.objects.get(pk=body["id"])
    # the record the outbox writes to kv/portal/jobs/<id> (meshweb changes) as the scheduler reads it
    record = {"id": stored.pk, "tenant": stored.tenant_id, "status": stored.status, "priority": stored.priority,
              "workers": stored.workers, "gpus_per_worker": stored.gpus_per_worker, "spec": stored.spec}  # fmt: skip
    request = job_from_portal(record)
    assert request.mig_profile == "3g.40gb" and request.gpus_per_worker == 1 and request.workers_min == 2
    # the slices the agent reports count as well
    ok = client.post("/api/v1/jobs/", job(2, mig_profile="1g.10gb", gpu_types=["H100"]), format="json")
    assert ok.status_code == 201, ok.content


@pytest.mark.parametrize(
    ("gpu", "needle"),
    [
        ({"mig_profile": "7g.80gb"}, "needs 2 workers on MIG 7g.80gb slices, the enrolled fleet exposes 0"),
        (
            {"mig_profile": "3g.40gb", "workers": 3},
            "needs 3 workers on MIG 3g.40gb slices, the enrolled fleet exposes 2",
        ),
        ({"mig_profile": "1g.10gb", "gpu_types": ["A100"]}, "slices of type A100, the enrolled fleet exposes 0"),
    ],
)
def test_a_mig_job_no_enrolled_node_could_hold_is_refused_at_submission_with_the_reason(
    client: Any, gpu: dict[str, Any], needle: str
) -> None:
    before = TrainingJob.objects.count()
    workers = gpu.pop("workers", 2)
    response = client.post("/api/v1/jobs/", job(workers, **gpu), format="json")
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    text = error["message"]
    assert error["code"] == "never_fits" and needle in text, error
    assert "mig-a has H100 3g.40gb x2" in text and "mig-b has H100 1g.10gb x2" in text
    assert TrainingJob.objects.count() == before


@pytest.mark.parametrize(
    ("gpu", "field", "needle"),
    [
        ({"mig_profile": "9g.90gb"}, "mig_profile", 'Unknown MIG profile "9g.90gb"'),
        ({"mig_profile": "3g.40gb", "gpus_per_worker": 2}, "mig_profile", "needs gpus_per_worker 1"),
        ({"mps_percent": 101}, "mps_percent", "less than or equal to 100"),
        ({"mps_percent": 50, "mig_profile": "3g.40gb"}, "mps_percent", "not shared through MPS"),
        ({"mps_percent": 50, "gpus_per_worker": 2}, "mps_percent", "needs gpus_per_worker 1"),
    ],
)
def test_bad_mig_or_mps_fields_are_a_400_naming_the_field(
    client: Any, gpu: dict[str, Any], field: str, needle: str
) -> None:
    response = client.post("/api/v1/jobs/", job(2, **gpu), format="json")
    assert response.status_code == 400, response.content
    fields = response.json()["error"]["fields"]
    assert needle in " ".join(fields[f"spec.{field}"]), fields


def test_an_mps_job_is_accepted_and_empty_fields_stay_out_of_the_spec(client: Any) -> None:
    response = client.post("/api/v1/jobs/", job(4, mps_percent=25), format="json")
    assert response.status_code == 201, response.content
    spec = TrainingJob.objects.get(pk=response.json()["id"]).spec
    assert spec["mps_percent"] == 25 and "mig_profile" not in spec
    assert job_from_portal({"id": 1, "spec": spec}).mps_percent == 25
    plain = client.post("/api/v1/jobs/", job(1, mig_profile="", mps_percent=0), format="json")
    assert plain.status_code == 201, plain.content
    spec = TrainingJob.objects.get(pk=plain.json()["id"]).spec
    assert "mig_profile" not in spec and "mps_percent" not in spec


def test_a_deployment_asks_for_mig_slices_and_one_the_fleet_could_never_hold_is_refused(
    client: Any, token_for: Any
) -> None:
    """Deployments take the jobs' rule: replicas on MIG slices of a profile, refused at submission (422 naming the
    layout) when the fleet exposes fewer such slices than the deployment's minimum; an accepted one reaches the
    routers' store key with its profile (routers serve it only from such slices: tests/router/test_portal_routing)."""
    from meshweb.catalog.models import Deployment, Model, ModelRevision
    from meshweb.meshlink.models import OutboxEntry
    from meshweb.tenancy.models import Tenant

    demo = Tenant.objects.get(slug="demo")
    rev = ModelRevision.objects.create(
        model=Model.objects.create(tenant=demo, name="llm"), revision="v1", artifact_uri="hf://org/llm"
    )
    operator = make_client(token_for(demo, "operator"))
    body = {"revision": rev.pk, "gpu_type": "H100", "mig_profile": "3g.40gb", "min_replicas": 2, "max_replicas": 2}
    ok = operator.post("/api/v1/deployments/", body, format="json")
    assert ok.status_code == 201, ok.content
    row = OutboxEntry.objects.filter(key=f"kv/portal/deployments/{ok.json()['id']}").latest("version")
    assert row.value["mig_profile"] == "3g.40gb" and row.value["gpu_type"] == "H100"

    too_many = operator.post("/api/v1/deployments/", {**body, "min_replicas": 3, "max_replicas": 3}, format="json")
    assert too_many.status_code == 422, too_many.content
    error = too_many.json()["error"]
    assert error["code"] == "never_fits" and "needs 3 replicas on MIG 3g.40gb slices of type H100" in error["message"]
    assert "mig-a has H100 3g.40gb x2" in error["message"]
    wrong_family = operator.post("/api/v1/deployments/", {**body, "gpu_type": "A100"}, format="json")
    assert wrong_family.status_code == 422 and "the enrolled fleet exposes 0" in wrong_family.json()["error"]["message"]
    unknown = operator.post("/api/v1/deployments/", {**body, "mig_profile": "9g.90gb"}, format="json")
    assert unknown.status_code == 400 and 'Unknown MIG profile "9g.90gb"' in str(unknown.json()["error"]["fields"])
    assert Deployment.objects.count() == 1
