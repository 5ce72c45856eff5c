"""Inference API keys and inference quotas in the portal: created through REST (secret shown once, stored hashed),
pushed to agents as typed store records, revoked out of the store; bad input refused naming the field, nothing
written."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from agents.proto.access import ApiKeyRecord, TenantAccess
from agents.store.schema import check_value
from meshweb.audit.models import AuditEntry
from meshweb.meshlink.models import OutboxEntry
from meshweb.meshlink.outbox import head, snapshot
from meshweb.tenancy.models import InferenceKey
from meshweb.tenancy.scoped.writes import object_delete
from meshweb.tenancy.services import SYSTEM
from tests.meshweb.conftest import World, make_client

pytestmark = pytest.mark.django_db


def _changes(after: int) -> list[tuple[str, str, Any]]:
    return [(e.key, e.op, e.value) for e in OutboxEntry.objects.filter(version__gt=after).order_by("version")]


def test_a_key_is_shown_once_stored_hashed_and_pushed_to_agents(world: World, token_for: Any) -> None:
    client = make_client(token_for(world.own.tenant, "tenant_admin"))
    mark = head().version
    expires = timezone.now() + timedelta(days=3)
    resp = client.post(
        "/api/v1/inference-keys/",
        {"name": "app", "models": ["acme-llm"], "expires_at": expires.isoformat(), "requests_per_s": 5},
        format="json",
    )
    assert resp.status_code == 201, resp.content
    body = resp.json()
    plaintext = body["key"]
    assert plaintext.startswith(f"imk_{body['prefix']}_") and body["tenant"] == "acme"
    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    row = InferenceKey.objects.get(pk=body["id"])
    assert row.key_hash == digest and plaintext not in json.dumps(list(InferenceKey.objects.values()), default=str)
    listed = client.get(f"/api/v1/inference-keys/{body['id']}/").json()
    assert "key" not in listed and listed["models"] == ["acme-llm"]
    audit = AuditEntry.objects.get(action="inference_key.create", object_id=str(row.pk))
    assert "key_hash" not in (audit.after or {})

    ((key, op, value),) = _changes(mark)
    assert (key, op) == (f"apikeys/{digest}", "put")
    record = ApiKeyRecord.model_validate(value)
    assert record.tenant == world.own.tenant.pk and record.models == ["acme-llm"] and record.limits.requests_per_s == 5
    assert abs((record.expires_at or 0) - expires.timestamp()) < 1e-3
    check_value(key, json.dumps(value))  # the agents' store accepts it as is

    mark = head().version
    assert client.delete(f"/api/v1/inference-keys/{body['id']}/").status_code == 204
    assert _changes(mark) == [(f"apikeys/{digest}", "delete", None)]
    row.refresh_from_db()
    assert row.revoked_at is not None  # kept for the audit trail, gone from the agents
    assert f"apikeys/{digest}" not in {p.key for p in snapshot()[1]}


def test_quota_and_priority_reach_the_tenant_record(world: World, token_for: Any) -> None:
    admin = make_client(token_for(world.own.tenant, "platform_admin"))
    quota = world.own.objects["quota"]
    mark = head().version
    resp = admin.patch(
        f"/api/v1/quotas/{quota.pk}/",
        {"requests_per_s": 3, "tokens_per_min": 0, "tokens_per_day": 50_000, "priority": "batch"},
        format="json",
    )
    assert resp.status_code == 200, resp.content
    access = next(v for k, op, v in _changes(mark) if k == f"tenants/tenant-{world.own.tenant.pk}")
    record = TenantAccess.model_validate(access)
    assert record.priority == "batch" and record.active
    assert record.limits.model_dump(exclude_none=True) == {
        "requests_per_s": 3.0,
        "concurrent": 256,
        "tokens_per_day": 50_000,
    }  # 0 tokens/min: no limit of that kind

    mark = head().version
    assert (
        admin.patch(f"/api/v1/tenants/{world.own.tenant.pk}/", {"is_active": False}, format="json").status_code == 200
    )
    access = next(v for k, op, v in _changes(mark) if k == f"tenants/tenant-{world.own.tenant.pk}")
    assert access["active"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"models": ["no-such-model"]}, "models"),
        ({"models": ["globex-llm"]}, "models"),  # another tenant's model
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"requests_per_s": -1}, "requests_per_s"),
        ({"tokens_per_min": 0}, "tokens_per_min"),
        ({"tokens_per_day": 10**20}, "tokens_per_day"),
        ({"concurrent_requests_max": 10**9}, "concurrent_requests_max"),
        ({"models": "acme-llm"}, "models"),
        ({"scope": ["x"]}, "scope"),
    ],
)
def test_bad_keys_are_refused_naming_the_field(world: World, token_for: Any, body: dict[str, Any], field: str) -> None:
    client = make_client(token_for(world.own.tenant, "tenant_admin"))
    mark = head().version
    resp = client.post("/api/v1/inference-keys/", body, format="json")
    assert resp.status_code == 400, resp.content
    assert field in resp.json()["error"]["fields"], resp.json()
    assert not InferenceKey.objects.exists() and head().version == mark


@pytest.mark.parametrize(
    "body",
    [{"requests_per_s": -0.5}, {"tokens_per_day": -1}, {"tokens_per_min": 10**12}, {"priority": "urgent"}],
)
def test_bad_quotas_are_refused_and_nothing_changes(world: World, token_for: Any, body: dict[str, Any]) -> None:
    admin = make_client(token_for(world.own.tenant, "platform_admin"))
    quota = world.own.objects["quota"]
    mark = head().version
    resp = admin.patch(f"/api/v1/quotas/{quota.pk}/", {"requests_per_s": 1, **body}, format="json")
    assert resp.status_code == 400, resp.content
    assert set(body) <= set(resp.json()["error"]["fields"])
    quota.refresh_from_db()
    assert quota.requests_per_s == 100.0 and head().version == mark


def test_who_may_see_and_manage_keys(world: World, token_for: Any) -> None:
    admin = make_client(token_for(world.own.tenant, "tenant_admin"))
    key_id = admin.post("/api/v1/inference-keys/", {"name": "k"}, format="json").json()["id"]
    member = make_client(token_for(world.own.tenant, "member"))
    assert [k["id"] for k in member.get("/api/v1/inference-keys/").json()["results"]] == [key_id]
    assert member.post("/api/v1/inference-keys/", {"name": "x"}, format="json").status_code == 403
    assert member.delete(f"/api/v1/inference-keys/{key_id}/").status_code == 403
    stranger = make_client(token_for(world.other.tenant, "tenant_admin"))
    assert stranger.get("/api/v1/inference-keys/").json()["results"] == []
    assert stranger.delete(f"/api/v1/inference-keys/{key_id}/").status_code == 404
    assert InferenceKey.objects.get(pk=key_id).revoked_at is None


def test_deleting_a_tenant_takes_its_keys_and_record_out_of_the_store(world: World, token_for: Any) -> None:
    admin = make_client(token_for(world.own.tenant, "tenant_admin"))
    key_id = admin.post("/api/v1/inference-keys/", {"name": "k"}, format="json").json()["id"]
    digest = InferenceKey.objects.get(pk=key_id).key_hash
    mark, tenant_id = head().version, world.own.tenant.pk
    object_delete(principal=SYSTEM, obj=world.own.tenant)
    deleted = {k for k, op, _ in _changes(mark) if op == "delete"}
    assert {f"apikeys/{digest}", f"tenants/tenant-{tenant_id}"} <= deleted
