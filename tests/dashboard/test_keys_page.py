"""The dashboard's inference keys page: create (secret shown once), list, revoke, bad input, other tenants hidden."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from meshweb.tenancy.models import InferenceKey
from tests.meshweb.conftest import World

pytestmark = pytest.mark.django_db
Login = Callable[..., Client]


def test_a_tenant_admin_creates_sees_once_and_revokes_a_key(login: Login, world: World) -> None:
    admin = login(tenant=world.own.tenant, role="tenant_admin")
    page = admin.post(
        "/dashboard/keys/", {"tenant": "acme", "name": "app", "models": "acme-llm", "requests_per_s": "4"}
    )
    assert page.status_code == 200
    key = InferenceKey.objects.get(tenant=world.own.tenant, name="app")
    body = page.content.decode()
    secret = body.split('<pre id="new-key-secret">')[1].split("</pre>")[0]
    assert secret.startswith(f"imk_{key.prefix}_") and hashlib.sha256(secret.encode()).hexdigest() == key.key_hash
    assert key.model_names == ["acme-llm"] and key.requests_per_s == 4
    again = admin.get("/dashboard/keys/").content.decode()
    assert secret not in again and f"imk_{key.prefix}_" in again  # listed by its prefix only

    assert admin.post(f"/dashboard/keys/{key.pk}/revoke/").status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_bad_input_names_the_field_and_writes_nothing(login: Login, world: World) -> None:
    admin = login(tenant=world.own.tenant, role="tenant_admin")
    for data, message in [
        ({"tenant": "acme", "models": "not-in-catalog"}, "not in the catalog"),
        ({"tenant": "acme", "requests_per_s": "-1"}, "greater than or equal to"),
        ({"tenant": "globex"}, "Select a valid choice"),  # another tenant
    ]:
        body = admin.post("/dashboard/keys/", data).content.decode()
        assert message in body, data
    assert not InferenceKey.objects.exists()


def test_other_tenants_keys_are_hidden_and_cannot_be_revoked(login: Login, world: World) -> None:
    from meshweb.tenancy.services import SYSTEM, inference_key_create

    theirs, _ = inference_key_create(principal=SYSTEM, tenant=world.other.tenant, name="theirs")
    admin = login(tenant=world.own.tenant, role="tenant_admin")
    assert theirs.prefix not in admin.get("/dashboard/keys/").content.decode()
    assert admin.post(f"/dashboard/keys/{theirs.pk}/revoke/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_the_navigation_links_the_keys_page(login: Login, world: World) -> None:
    admin: Any = login(tenant=world.own.tenant, role="tenant_admin")
    assert 'href="/dashboard/keys/"' in admin.get("/dashboard/").content.decode()


def test_the_usage_page_shows_what_routers_metered(login: Login, world: World) -> None:
    from datetime import UTC, datetime, timedelta

    from meshweb.usage.models import UsageRollup

    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    UsageRollup.objects.create(tenant=world.own.tenant, model="acme-llm", minute=minute, requests=3, throttled=1,
                               prompt_tokens=11, completion_tokens=22, ttft=[0, 2, 0], latency=[])  # fmt: skip
    UsageRollup.objects.create(tenant=world.other.tenant, model="globex-llm", minute=minute, requests=9)
    body = login(tenant=world.own.tenant, role="tenant_admin").get("/dashboard/usage/").content.decode()
    assert 'data-tenant="acme"' in body and "globex" not in body
    assert "<td>11</td><td>22</td><td>1</td>" in body and "≤ 0.1 s" in body
    chart = json.loads(body.split('<script id="usage-data" type="application/json">')[1].split("</script>")[0])
    assert sum(chart["series"]["acme"]) == 33 and len(chart["x"]) == 61
