"""Dashboard pages: who may see what (tenant RBAC through rbac.restrict), and writes through the domain services."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from meshweb.audit.models import AuditEntry
from meshweb.fleet.models import Node, NodeStatus
from meshweb.fleet.services import QUARANTINE_CHECKS, node_quarantine_open, node_quarantine_release
from meshweb.tenancy.models import Quota
from meshweb.training.models import JobStatus, TrainingJob
from tests.meshweb.conftest import World, build_tenant

SPEC = json.loads(Path("docs/examples/job.json").read_text())["spec"]
pytestmark = pytest.mark.django_db
Login = Callable[..., Client]


def text(response: Any) -> str:
    return response.content.decode()


def test_anonymous_visitors_are_sent_to_the_login_page(client: Client) -> None:
    response = client.get("/dashboard/jobs/")
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/login/?next=/dashboard/jobs/"
    assert client.get("/dashboard/login/").status_code == 200


def test_login_form_signs_in_and_lands_on_the_overview(client: Client, world: World) -> None:
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("root", password="pw-123456789")
    page = client.get("/dashboard/login/?next=/dashboard/")
    assert 'name="next" value="/dashboard/"' in text(page)
    response = client.post("/dashboard/login/", {"username": "root", "password": "pw-123456789", "next": "/dashboard/"})
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    overview = client.get("/dashboard/")
    assert overview.status_code == 200
    assert 'id="nodes-active">3<' in text(overview)
    assert "no router configured" in text(overview)


@pytest.mark.parametrize("role", ["viewer", "member", "operator"])
def test_roles_below_tenant_admin_have_no_dashboard(login: Login, world: World, role: str) -> None:
    client = login(tenant=world.own.tenant, role=role)
    for url in ["/dashboard/", "/dashboard/jobs/", "/dashboard/fragments/nodes/", "/dashboard/nodes/node-1/"]:
        response = client.get(url)
        assert response.status_code == 403, url
        assert "No access" in text(response)


def test_tenant_admin_sees_own_tenant_and_the_fleet_only(login: Login, world: World) -> None:
    client = login(tenant=world.own.tenant, role="tenant_admin")
    own_job, other_job = world.own.objects["job"], world.other.objects["job"]

    jobs = text(client.get("/dashboard/jobs/"))
    assert "acme-job" in jobs and "globex-job" not in jobs
    tenants = text(client.get("/dashboard/tenants/"))
    assert 'data-tenant="acme"' in tenants and 'data-tenant="globex"' not in tenants
    models = text(client.get("/dashboard/models/"))
    assert 'data-model="acme-llm"' in models and "globex-llm" not in models
    nodes = text(client.get("/dashboard/nodes/"))
    assert 'data-node="node-1"' in nodes and 'data-node="node-globex"' in nodes  # the fleet is platform-wide
    assert client.get(f"/dashboard/jobs/{own_job.pk}/").status_code == 200
    # Another tenant's job does not exist for this admin: 404, and nothing changes when it tries to act.
    assert client.get(f"/dashboard/jobs/{other_job.pk}/").status_code == 404
    assert client.post(f"/dashboard/jobs/{other_job.pk}/cancel/").status_code == 404
    assert client.post(f"/dashboard/jobs/{other_job.pk}/scale/", {"workers": 3}).status_code == 404
    other_job.refresh_from_db()
    assert (other_job.status, other_job.workers) == (JobStatus.PENDING, 2)
    # The submit form offers only its own tenant, and a forged tenant is refused without writing.
    form = text(client.get("/dashboard/jobs/"))
    assert '<option value="acme"' in form and '<option value="globex"' not in form
    before = TrainingJob.objects.count()
    response = client.post(
        "/dashboard/jobs/", {"tenant": "globex", "name": "sneaky", "priority": 50, "spec": json.dumps(SPEC)}
    )
    assert response.status_code == 400 and "Select a valid choice" in text(response)
    assert TrainingJob.objects.count() == before


def test_only_platform_admins_change_node_status(login: Login, world: World) -> None:
    tenant_admin = login(tenant=world.own.tenant, role="tenant_admin")
    assert 'id="node-status-form"' not in text(tenant_admin.get("/dashboard/nodes/node-1/"))
    response = tenant_admin.post("/dashboard/nodes/node-1/status/", {"status": "cordoned", "reason": "x"})
    assert response.status_code == 403
    assert Node.objects.get(name="node-1").status == NodeStatus.ACTIVE

    admin = login(superuser=True)
    response = admin.post("/dashboard/nodes/node-1/status/", {"status": "cordoned", "reason": "disk swap"}, follow=True)
    assert "Node node-1 is now cordoned." in text(response)
    node = Node.objects.get(name="node-1")
    assert (node.status, node.status_reason) == (NodeStatus.CORDONED, "disk swap")
    entry = AuditEntry.objects.filter(action="node.cordoned").get()
    assert entry.actor.startswith("user:user")
    # An illegal transition is refused with the service's message and changes nothing.
    admin.post("/dashboard/nodes/node-1/status/", {"status": "offline"})
    response = admin.post("/dashboard/nodes/node-1/status/", {"status": "draining"}, follow=True)
    assert "Node node-1 cannot go from offline to draining (allowed: active, cordoned, quarantined)." in text(response)
    assert Node.objects.get(name="node-1").status == NodeStatus.OFFLINE
    response = admin.post("/dashboard/nodes/node-1/status/", {"status": "melted"}, follow=True)
    assert "Unknown node status &#x27;melted&#x27;." in text(response)


def test_submit_scale_and_cancel_through_the_services(login: Login, world: World) -> None:
    client = login(tenant=world.own.tenant, role="tenant_admin")
    response = client.post(
        "/dashboard/jobs/", {"tenant": "acme", "name": "from-dashboard", "priority": 70, "spec": json.dumps(SPEC)}
    )
    job = TrainingJob.objects.get(name="from-dashboard")
    assert response.status_code == 302 and response["Location"] == f"/dashboard/jobs/{job.pk}/"
    assert (job.tenant.slug, job.priority, job.workers, job.status) == ("acme", 70, 2, JobStatus.PENDING)
    assert job.submitted_by.startswith("user:")
    assert list(job.events.values_list("kind", flat=True)) == ["submitted"]

    response = client.post(f"/dashboard/jobs/{job.pk}/scale/", {"workers": 9}, follow=True)
    assert "workers must stay within the job&#x27;s elastic range 2..4; got 9." in text(response)
    client.post(f"/dashboard/jobs/{job.pk}/scale/", {"workers": 4})
    job.refresh_from_db()
    assert job.workers == 4

    response = client.post(f"/dashboard/jobs/{job.pk}/cancel/", {"reason": "not needed"}, follow=True)
    assert f"Job {job.pk} cancelled." in text(response)
    job.refresh_from_db()
    assert (job.status, job.status_reason) == (JobStatus.CANCELLED, "not needed")
    again = client.post(f"/dashboard/jobs/{job.pk}/cancel/", follow=True)
    assert f"Job {job.pk} is already cancelled; it cannot be cancelled." in text(again)
    assert 'id="job-cancel"' not in text(again)
    events = text(client.get(f"/dashboard/fragments/jobs/{job.pk}/"))
    assert "scaled" in events and "workers 2 → 4" in events and "status.cancelled" in events


def test_bad_submissions_name_the_problem_and_write_nothing(login: Login, world: World) -> None:
    client = login(tenant=world.own.tenant, role="tenant_admin")
    before = TrainingJob.objects.count()
    response = client.post("/dashboard/jobs/", {"tenant": "acme", "name": "x", "priority": 50, "spec": "{not json"})
    assert response.status_code == 400 and "The spec is not valid JSON" in text(response)
    bad = {**SPEC, "workers": {"min": 4, "max": 2}}
    response = client.post("/dashboard/jobs/", {"tenant": "acme", "name": "x", "priority": 50, "spec": json.dumps(bad)})
    assert "spec.workers.min: workers.min (4) must not exceed workers.max (2)." in text(response)
    Quota.objects.filter(tenant=world.own.tenant).update(gpus_max=3)
    response = client.post(
        "/dashboard/jobs/", {"tenant": "acme", "name": "x", "priority": 50, "spec": json.dumps(SPEC)}
    )
    assert response.status_code == 400
    assert "Quota gpus_max exceeded: the job needs 2 GPUs, tenant acme holds 2 of 3." in text(response)
    assert TrainingJob.objects.count() == before


def test_tenant_usage_is_summed_per_tenant(login: Login, world: World) -> None:
    client = login(superuser=True)
    rows = text(client.get("/dashboard/fragments/tenants/"))
    # Each tenant of the world holds one pending 2x1-GPU job of 3600 s: 2 GPUs, 2 GPU-hours reserved.
    assert rows.count('<span class="gpus-held">2</span> / 16') == 2
    assert "2.0 / 2000.0 (30 days)" in rows


def test_quarantine_history_shows_reason_evidence_and_release(login: Login, world: World) -> None:
    node = world.node
    node_quarantine_open(
        principal=QUARANTINE_CHECKS, node=node, reason="uncorrectable ECC", evidence=[{"gpu": "GPU-1", "ecc": 3}]
    )
    node_quarantine_release(principal=QUARANTINE_CHECKS, node=node, reason="healthy for the cool-down")
    page = text(login(superuser=True).get("/dashboard/quarantine/"))
    assert "uncorrectable ECC" in page and "{&quot;ecc&quot;: 3, &quot;gpu&quot;: &quot;GPU-1&quot;}" in page
    assert "by system:quarantine: healthy for the cool-down" in page
    assert page.count('class="history-row"') == 2  # into quarantine and back out
    assert "active → <span" in page and "quarantined → <span" in page


def test_node_page_without_telemetry_says_so(login: Login, world: World) -> None:
    page = login(superuser=True).get("/dashboard/nodes/node-1/")
    assert "no telemetry yet" in text(page)
    assert login(superuser=True).get("/dashboard/nodes/nope/").status_code == 404
    series = login(superuser=True).get("/dashboard/nodes/node-1/telemetry.json").json()
    assert series == {"node": "node-1", "gpus": []}


def test_node_page_lists_the_node_events(login: Login, world: World) -> None:
    node_quarantine_open(principal=QUARANTINE_CHECKS, node=world.node, reason="Xid 48", evidence=[{"xid": 48}])
    page = text(login(superuser=True).get("/dashboard/nodes/node-1/"))
    events = page.split('id="node-events"')[1]
    assert "<td>quarantined</td><td>Xid 48</td>" in events


@pytest.mark.parametrize(
    "url", ["/dashboard/fragments/nodes/", "/dashboard/fragments/jobs/", "/dashboard/fragments/tenants/",
            "/dashboard/models/", "/dashboard/fragments/quarantine/"],
)  # fmt: skip
def test_list_pages_do_not_query_per_row(
    login: Login, world: World, url: str, django_assert_max_num_queries: Any
) -> None:
    """One more tenant (node, model, deployment, job, quarantine) must not add queries to a list page."""
    client = login(superuser=True)
    node_quarantine_open(principal=QUARANTINE_CHECKS, node=world.node, reason="r", evidence=[])
    client.get(url)  # warm the session and the user
    with CaptureQueriesContext(connection) as before:
        assert client.get(url).status_code == 200
    extra = build_tenant("initech", world.zone)
    node_quarantine_open(
        principal=QUARANTINE_CHECKS, node=Node.objects.get(name="node-initech"), reason="r", evidence=[]
    )
    assert extra.tenant.slug == "initech"
    with django_assert_max_num_queries(len(before)):
        assert client.get(url).status_code == 200


def test_admin_quarantine_release_and_pin_keep_the_record(login: Login, world: World) -> None:
    from meshweb.fleet.models import NodeQuarantine

    admin = login(superuser=True)
    admin.post("/dashboard/nodes/node-1/status/", {"status": "quarantined", "reason": "flaky NVLink"})
    record = NodeQuarantine.objects.get(node=world.node)
    assert (record.reason, record.automatic, record.pinned, record.released_at) == ("flaky NVLink", False, False, None)
    assert Node.objects.get(pk=world.node.pk).status == NodeStatus.QUARANTINED

    admin.post("/dashboard/nodes/node-1/status/", {"status": "active", "reason": "reseated"})
    record.refresh_from_db()
    assert (record.released_by.startswith("user:"), record.release_reason) == (True, "reseated")
    assert Node.objects.get(pk=world.node.pk).status == NodeStatus.ACTIVE

    admin.post("/dashboard/nodes/node-1/status/", {"status": "active", "reason": "hold it", "pin": "1"})
    pinned = NodeQuarantine.objects.get(node=world.node, released_at__isnull=True)
    assert (pinned.pinned, pinned.reason) == (True, "hold it")
    assert Node.objects.get(pk=world.node.pk).status == NodeStatus.QUARANTINED
