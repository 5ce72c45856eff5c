"""Cells and regions in the portal: a tenant's data residency (set through REST, pushed to the agents' store for the
routers) and the spill-over between cells that routers report with their usage, served with the fleet's cells."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agents.proto.access import TenantAccess
from meshweb.fleet.models import Cell, Node
from meshweb.identity.credentials import node_credential_issue
from meshweb.meshlink.models import OutboxEntry
from meshweb.meshlink.outbox import head
from meshweb.tenancy.services import SYSTEM
from tests.meshweb.conftest import World, make_client

pytestmark = pytest.mark.django_db
NOW_MIN = int(time.time() // 60)


def test_residency_is_set_through_rest_and_pushed_to_the_routers(world: World, token_for: Any) -> None:
    admin = make_client(token_for(world.own.tenant, "platform_admin"))
    tid = world.own.tenant.pk
    mark = head().version
    resp = admin.patch(f"/api/v1/tenants/{tid}/", {"regions": ["eu-west", "eu-north"]}, format="json")
    assert resp.status_code == 200 and resp.json()["regions"] == ["eu-west", "eu-north"]
    pushed = OutboxEntry.objects.filter(version__gt=mark, key=f"tenants/tenant-{tid}").latest("version")
    assert TenantAccess.model_validate(pushed.value).regions == ["eu-west", "eu-north"]
    for bad in ([], ["EU West"], ["eu", "eu"], "eu"):
        resp = admin.patch(f"/api/v1/tenants/{tid}/", {"regions": bad}, format="json")
        assert resp.status_code == 400 and "regions" in resp.json()["error"]["fields"], bad
    resp = admin.patch(f"/api/v1/tenants/{tid}/", {"regions": None}, format="json")
    pushed = OutboxEntry.objects.filter(key=f"tenants/tenant-{tid}").latest("version")
    assert resp.status_code == 200 and TenantAccess.model_validate(pushed.value).regions is None
    viewer = make_client(token_for(world.own.tenant, "viewer"))
    assert viewer.patch(f"/api/v1/tenants/{tid}/", {"regions": ["us"]}, format="json").status_code == 403


def test_spillover_reported_by_routers_is_shown_with_the_cells(world: World, token_for: Any) -> None:
    Node.objects.filter(pk=world.node.pk).update(cell=world.cell)
    Cell.objects.create(zone=world.zone, name="cell-2")
    credential = node_credential_issue(principal=SYSTEM, node=world.node)[1]
    spills = [
        {"minute": NOW_MIN, "from_cell": "cell-1", "to_cell": "cell-2", "reason": "saturated", "requests": 3},
        {"minute": NOW_MIN - 1, "from_cell": "cell-1", "to_cell": "cell-2", "reason": "saturated", "requests": 2},
        {"minute": NOW_MIN, "from_cell": "cell-2", "to_cell": "cell-1", "reason": "failed", "requests": 1},
    ]
    for batch in ("spill-0001", "spill-0001", "spill-0002"):  # a resent batch counts once
        resp = make_client().post(
            "/api/v1/usage/reports/",
            {"batch": batch, "router": "r1", "rows": [], "spills": spills[:2] if batch == "spill-0001" else spills[2:]},
            format="json",
            HTTP_AUTHORIZATION=f"Bearer {credential}",
        )
        assert resp.status_code == 200, resp.json()
    admin = make_client(token_for(world.own.tenant, "platform_admin"))
    body = admin.get("/api/v1/usage/spillover/").json()
    assert body["regions"] == [
        {
            "name": "region-1",
            "cells": [
                {"name": "cell-1", "zone": "zone-a", "nodes": ["node-1"]},
                {"name": "cell-2", "zone": "zone-a", "nodes": []},
            ],
        }
    ]
    assert body["spillover"] == [
        {"from_cell": "cell-1", "to_cell": "cell-2", "reason": "saturated", "requests": 5},
        {"from_cell": "cell-2", "to_cell": "cell-1", "reason": "failed", "requests": 1},
    ]
    assert admin.get("/api/v1/usage/spillover/?hours=abc").status_code == 400
    assert make_client(token_for(world.own.tenant, "tenant_admin")).get("/api/v1/usage/spillover/").status_code == 403
    bad = {"minute": NOW_MIN, "from_cell": "cell-1", "to_cell": "cell-2", "reason": "bored", "requests": 1}
    resp = make_client().post(
        "/api/v1/usage/reports/",
        {"batch": "spill-0003", "rows": [], "spills": [bad]},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {credential}",
    )
    assert resp.status_code == 400 and "spills.0.reason" in resp.json()["error"]["fields"]
