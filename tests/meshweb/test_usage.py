"""Usage reports: authenticated with a node credential, each batch applied once, rolled up per minute, served with
filters and granularity to those who may see the tenant; the daily token quota marked spent from the metering."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agents.proto.access import TenantAccess
from meshweb.fleet.models import Node
from meshweb.identity.credentials import node_credential_issue
from meshweb.meshlink.models import OutboxEntry
from meshweb.meshlink.outbox import head
from meshweb.tenancy.services import SYSTEM
from meshweb.usage.models import UsageRollup
from tests.meshweb.conftest import World, make_client

pytestmark = pytest.mark.django_db
NOW_MIN = int(time.time() // 60)


def _row(tenant: str = "acme", minute: int = NOW_MIN, **counts: Any) -> dict[str, Any]:
    return {"minute": minute, "tenant": tenant, "key": "abc", "model": "acme-llm", **counts}


def _report(credential: str, batch: str, rows: list[dict[str, Any]]) -> Any:
    client = make_client()
    return client.post(
        "/api/v1/usage/reports/",
        {"batch": batch, "router": "r1", "rows": rows},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {credential}",
    )


@pytest.fixture
def credential(world: World) -> str:
    return node_credential_issue(principal=SYSTEM, node=Node.objects.get(name="node-1"))[1]


def test_a_batch_is_applied_once_and_rolled_up(world: World, credential: str, token_for: Any) -> None:
    rows = [
        _row(requests=2, prompt_tokens=10, completion_tokens=20, ttft=[1, 1] + [0] * 9),
        _row(tenant="unknown-tenant", requests=1),
    ]
    first = _report(credential, "batch-0001", rows)
    assert first.status_code == 200 and first.json() == {"batch": "batch-0001", "applied": 1, "skipped": 1,
                                                         "duplicate": False}  # fmt: skip
    again = _report(credential, "batch-0001", rows)  # resent after a lost answer
    assert again.json()["duplicate"] is True
    assert _report(credential, "batch-0002", [_row(requests=1, throttled=1)]).status_code == 200
    _report(credential, "batch-0003", [_row(minute=NOW_MIN - 1, requests=1, prompt_tokens=1, completion_tokens=1)])
    cell = UsageRollup.objects.get(tenant=world.own.tenant, minute__isnull=False, requests=3)
    assert (cell.prompt_tokens, cell.completion_tokens, cell.throttled) == (10, 20, 1)

    viewer = make_client(token_for(world.own.tenant, "viewer"))
    body = viewer.get("/api/v1/usage/?granularity=minute").json()
    assert [r["requests"] for r in body["results"]] == [1, 3]
    assert body["totals"] == {"requests": 4, "prompt_tokens": 11, "completion_tokens": 21}
    day = viewer.get("/api/v1/usage/?granularity=day&model=acme-llm&key=abc").json()["results"]
    assert len(day) == 1 and day[0]["requests"] == 4 and day[0]["ttft_p50_s"] == 0.05
    assert viewer.get("/api/v1/usage/?model=other").json()["results"] == []
    stranger = make_client(token_for(world.other.tenant, "tenant_admin"))
    assert stranger.get("/api/v1/usage/?tenant=acme").json()["results"] == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"HTTP_AUTHORIZATION": "Bearer imn_000000000000_nope"}, 401),
        ({"HTTP_AUTHORIZATION": "Basic x"}, 401),
        ({"HTTP_AUTHORIZATION": "Bearer im_000000000000_not-a-token"}, 401),
    ],
)
def test_reports_need_a_node_credential(world: World, headers: dict[str, str], status: int) -> None:
    resp = make_client().post("/api/v1/usage/reports/", {"batch": "batch-x001", "rows": []}, format="json", **headers)
    assert resp.status_code == status
    assert not UsageRollup.objects.exists()


def test_a_users_valid_credential_may_not_report_usage(world: World, token_for: Any) -> None:
    client = make_client(token_for(world.own.tenant, "platform_admin"))  # a credential, of the wrong kind
    resp = client.post("/api/v1/usage/reports/", {"batch": "batch-x002", "rows": []}, format="json")
    assert resp.status_code == 403 and "node credential" in resp.json()["error"]["message"]
    assert not UsageRollup.objects.exists()


@pytest.mark.parametrize(
    "rows",
    [[{"minute": 1, "tenant": "acme", "requests": -1}], [{"minute": 1, "tenant": "acme", "bogus": 1}], "nope"],
)
def test_malformed_batches_are_refused_and_nothing_applied(world: World, credential: str, rows: Any) -> None:
    resp = _report(credential, "batch-bad1", rows)
    assert resp.status_code == 400 and resp.json()["error"]["fields"]
    assert not UsageRollup.objects.exists()
    assert _report(credential, "batch-bad1", [_row(requests=1)]).json()["duplicate"] is False  # id not burnt


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("granularity=week", "granularity"),
        ("start=yesterday", "start"),
        ("start=2030-01-01T00:00:00Z", "start"),
        ("end=0001-01-01T00:00:00Z", "end"),  # found by the schema fuzz run: a 500 before
        ("key=%00", "key"),
    ],
)
def test_bad_usage_queries_name_the_parameter(world: World, token_for: Any, query: str, field: str) -> None:
    resp = make_client(token_for(world.own.tenant, "viewer")).get(f"/api/v1/usage/?{query}")
    assert resp.status_code == 400 and field in resp.json()["error"]["fields"]


def test_the_daily_token_quota_is_marked_spent_from_the_metering(world: World, credential: str) -> None:
    quota = world.own.objects["quota"]
    quota.tokens_per_day = 100
    quota.save()
    _report(credential, "batch-d001", [_row(requests=1, prompt_tokens=40, completion_tokens=40)])
    quota.refresh_from_db()
    assert quota.tokens_exhausted_until is None
    mark = head().version
    _report(credential, "batch-d002", [_row(requests=1, prompt_tokens=10, completion_tokens=10)])  # another router
    quota.refresh_from_db()
    assert quota.tokens_exhausted_until is not None
    pushed = OutboxEntry.objects.get(version__gt=mark, key=f"tenants/tenant-{world.own.tenant.pk}")
    assert TenantAccess.model_validate(pushed.value).exhausted_until == quota.tokens_exhausted_until.timestamp()
    mark = head().version
    _report(credential, "batch-d003", [_row(requests=1, prompt_tokens=10)])
    assert head().version == mark  # marked once a day, not per batch
