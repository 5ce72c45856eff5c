"""Every endpoint × every role × own/other tenant: status codes, visibility, and refused writes change nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.apps import apps

from meshweb.tenancy.roles import RANK, Role
from tests.meshweb.conftest import EXAMPLE_JOB, World, make_client

ROLES = [Role.VIEWER, Role.MEMBER, Role.OPERATOR, Role.TENANT_ADMIN, Role.PLATFORM_ADMIN]
DOMAIN_APPS = ["tenancy", "catalog", "fleet", "training", "policy", "audit"]


def db_state() -> dict[str, list[dict[str, Any]]]:
    """Every row of the domain, minus the informative token `last_used_at`."""
    state = {}
    for label in DOMAIN_APPS:
        for model in apps.get_app_config(label).get_models():
            rows = [
                {k: v for k, v in row.items() if k != "last_used_at"} for row in model.objects.order_by("pk").values()
            ]
            state[model._meta.label] = rows
    state["auth.User"] = list(apps.get_model("auth", "User").objects.order_by("pk").values("id", "username"))
    return state


@dataclass(frozen=True)
class Resource:
    name: str  # URL segment under /api/v1/
    key: str  # key of the tenant's object in TenantWorld.objects, "" for platform-wide resources
    read_role: str
    write_role: str
    create: Callable[[World], dict[str, Any]] | None
    update: Callable[[World, Any], dict[str, Any]] | None
    delete: bool = True
    platform_object: Callable[[World], Any] | None = None


def _own(w: World, key: str) -> Any:
    return w.own.objects[key]


RESOURCES = [
    Resource(
        "tenants",
        "tenant",
        Role.VIEWER,
        Role.PLATFORM_ADMIN,
        create=lambda w: {"slug": "newco", "name": "New Co"},
        update=lambda w, obj: {"name": "Renamed"},
    ),
    Resource("quotas", "quota", Role.VIEWER, Role.PLATFORM_ADMIN, None, lambda w, obj: {"gpus_max": 99}, delete=False),
    Resource(
        "memberships",
        "membership",
        Role.TENANT_ADMIN,
        Role.TENANT_ADMIN,
        create=lambda w: {"tenant": "acme", "username": "globex-user", "role": "viewer"},
        update=lambda w, obj: {"role": "operator"},
    ),
    Resource(
        "tokens",
        "token",
        Role.TENANT_ADMIN,
        Role.TENANT_ADMIN,
        create=lambda w: {"tenant": "acme", "role": "viewer", "name": "ci"},
        update=None,
    ),
    Resource(
        "models",
        "model",
        Role.VIEWER,
        Role.OPERATOR,
        create=lambda w: {"tenant": "acme", "name": "new-model"},
        update=lambda w, obj: {"description": "updated"},
    ),
    Resource(
        "revisions",
        "revision",
        Role.VIEWER,
        Role.OPERATOR,
        create=lambda w: {"model": _own(w, "model").pk, "revision": "v2", "artifact_uri": "s3://b/m"},
        update=lambda w, obj: {"quant": "fp8"},
    ),
    Resource(
        "deployments",
        "deployment",
        Role.VIEWER,
        Role.OPERATOR,
        create=lambda w: {"revision": _own(w, "revision").pk, "zone": "zone-b", "min_replicas": 1, "max_replicas": 3},
        update=lambda w, obj: {"max_replicas": 5},
    ),
    Resource(
        "slos",
        "slo",
        Role.VIEWER,
        Role.OPERATOR,
        create=lambda w: {"tenant": "acme", "model": None, "ttft_p99_ms": 300, "latency_p99_ms": 3000},
        update=lambda w, obj: {"ttft_p99_ms": 250},
    ),
    Resource(
        "routing-policies",
        "routing_policy",
        Role.VIEWER,
        Role.OPERATOR,
        create=None,  # one per (tenant, model); the world already holds it
        update=lambda w, obj: {"strategy": "hybrid_mesh"},
    ),
    Resource(
        "admission-policies",
        "admission_policy",
        Role.VIEWER,
        Role.OPERATOR,
        create=lambda w: {"tenant": "acme", "model": None, "max_queue_depth": 10},
        update=lambda w, obj: {"max_queue_depth": 20},
    ),
    Resource(
        "jobs",
        "job",
        Role.VIEWER,
        Role.MEMBER,
        create=lambda w: {**EXAMPLE_JOB, "tenant": "acme"},
        update=None,
        delete=False,
    ),
    Resource("audit", "audit", Role.TENANT_ADMIN, Role.PLATFORM_ADMIN, None, None, delete=False),
    Resource(
        "regions",
        "",
        Role.VIEWER,
        Role.PLATFORM_ADMIN,
        create=lambda w: {"name": "region-2"},
        update=lambda w, obj: {"name": "region-9"},
        platform_object=lambda w: w.region,
        delete=False,  # regions are protected while zones use them (test_protected_delete)
    ),
    Resource(
        "zones",
        "",
        Role.VIEWER,
        Role.PLATFORM_ADMIN,
        create=lambda w: {"name": "zone-c", "region": "region-1"},
        update=lambda w, obj: {"name": "zone-z"},
        platform_object=lambda w: w.zone,
        delete=False,  # zones are protected while nodes use them
    ),
    Resource(
        "cells",
        "",
        Role.VIEWER,
        Role.PLATFORM_ADMIN,
        create=lambda w: {"name": "cell-2", "zone": "zone-a"},
        update=lambda w, obj: {"name": "cell-9"},
        platform_object=lambda w: w.cell,
    ),
    Resource(
        "nodes",
        "",
        Role.VIEWER,
        Role.PLATFORM_ADMIN,
        create=lambda w: {"name": "node-2", "address": "10.0.0.2:7070", "zone": "zone-a", "roles": ["gpu"]},
        update=lambda w, obj: {"labels": {"rack": "r1"}},
        platform_object=lambda w: w.node,
    ),
    Resource(
        "gpus",
        "",
        Role.VIEWER,
        Role.PLATFORM_ADMIN,
        create=lambda w: {
            "node": "node-1",
            "uuid": "GPU-2",
            "index": 1,
            "model": "NVIDIA H100",
            "gpu_type": "H100",
            "vram_mb": 81559,
        },
        update=lambda w, obj: {"mig_profile": "1g.10gb"},
        platform_object=lambda w: w.gpu,
    ),
]


def _allowed(role: str, minimum: str) -> bool:
    return RANK[role] >= RANK[minimum]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("res", RESOURCES, ids=[r.name for r in RESOURCES])
def test_rbac_matrix(world: World, token_for: Any, res: Resource, role: str) -> None:
    client = make_client(token_for(world.own.tenant, role))
    base = f"/api/v1/{res.name}/"
    can_read = _allowed(role, res.read_role)
    can_write = _allowed(role, res.write_role)
    platform = role == Role.PLATFORM_ADMIN

    # Reads: lists never show another tenant's objects (except to platform admins).
    listed = client.get(base, {"limit": 500})
    assert listed.status_code == 200, listed.content
    ids = {row["id"] for row in listed.json()["results"]}
    if res.key:
        own_obj, other_obj = world.own.objects[res.key], world.other.objects[res.key]
        assert (own_obj.pk in ids) == can_read
        assert (other_obj.pk in ids) == platform
        assert client.get(f"{base}{own_obj.pk}/").status_code == (200 if can_read else 404)
        assert client.get(f"{base}{other_obj.pk}/").status_code == (200 if platform else 404)
        if res.name == "jobs":
            assert client.get(f"{base}{own_obj.pk}/telemetry/").status_code == (200 if can_read else 404)
            assert client.get(f"{base}{other_obj.pk}/telemetry/").status_code == (200 if platform else 404)
    else:
        own_obj, other_obj = res.platform_object(world) if res.platform_object else None, None
        assert own_obj is not None and own_obj.pk in ids
        assert client.get(f"{base}{own_obj.pk}/").status_code == 200

    # Refused writes first, each checked to have changed nothing.
    def refused(method: str, url: str, body: dict[str, Any] | None, expected: int) -> None:
        before = db_state()
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == expected, (method, url, response.status_code, response.content)
        assert response.json()["error"]["status"] == expected
        assert db_state() == before, f"{method} {url} was refused but changed the database"

    if other_obj is not None and not platform:
        if res.update:
            refused("patch", f"{base}{other_obj.pk}/", res.update(world, other_obj), 404)
        if res.delete:
            refused("delete", f"{base}{other_obj.pk}/", None, 404)
    if not can_write:
        if res.create:
            refused("post", base, res.create(world), 403)
        if res.update:
            refused("patch", f"{base}{own_obj.pk}/", res.update(world, own_obj), 403 if can_read else 404)
        if res.delete:
            refused("delete", f"{base}{own_obj.pk}/", None, 403 if can_read else 404)
        if res.name == "jobs":
            refused("post", f"{base}{own_obj.pk}/cancel/", {}, 403)
            refused("post", f"{base}{own_obj.pk}/scale/", {"workers": 3}, 403)
        if res.name == "nodes":
            refused("post", f"{base}{own_obj.pk}/status/", {"status": "cordoned"}, 403)
            refused("post", f"{base}{own_obj.pk}/revoke-certificates/", {"reason": "leaked"}, 403)
        return
    if res.name == "jobs" and not platform:
        refused("post", f"{base}{other_obj.pk}/cancel/", {}, 404)

    # Allowed writes succeed and leave an audit entry.
    audit = apps.get_model("audit", "AuditEntry")
    n_audit = audit.objects.count()
    if res.create:
        created = client.post(base, res.create(world), format="json")
        assert created.status_code == 201, created.content
    if res.update:
        updated = client.patch(f"{base}{own_obj.pk}/", res.update(world, own_obj), format="json")
        assert updated.status_code == 200, updated.content
    if res.name == "jobs":
        assert client.post(f"{base}{own_obj.pk}/scale/", {"workers": 3}, format="json").status_code == 200
        assert client.post(f"{base}{own_obj.pk}/cancel/", {}, format="json").status_code == 200
    if res.name == "nodes":
        assert client.post(f"{base}{own_obj.pk}/status/", {"status": "cordoned"}, format="json").status_code == 200
        revoked = client.post(f"{base}{own_obj.pk}/revoke-certificates/", {"reason": "leaked"}, format="json")
        assert revoked.status_code == 200 and revoked.json() == {"revoked": []}, revoked.content
    if res.delete:
        assert client.delete(f"{base}{own_obj.pk}/").status_code == 204
    if res.create or res.update or res.delete:
        assert audit.objects.count() > n_audit


def test_protected_delete_is_a_conflict_and_changes_nothing(world: World, token_for: Any) -> None:
    client = make_client(token_for(world.own.tenant, Role.PLATFORM_ADMIN))
    before = db_state()
    response = client.delete(f"/api/v1/regions/{world.region.pk}/")
    assert response.status_code == 409
    assert "still used by" in response.json()["error"]["message"]
    assert db_state() == before
