"""Fixtures of the agent-link tests: a zone with three nodes, a tenant, and node credentials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from meshweb.fleet.models import Node, Region, Zone
from meshweb.identity.credentials import node_credential_issue
from meshweb.tenancy.models import Tenant
from meshweb.tenancy.scoped.writes import object_create
from meshweb.tenancy.services import SYSTEM, tenant_create


@dataclass
class Fleet:
    zone: Zone
    nodes: list[Node]
    credentials: dict[str, str]
    tenant: Tenant


def build_fleet() -> Fleet:
    region = object_create(principal=SYSTEM, model=Region, data={"name": "region-1"})
    zone = object_create(principal=SYSTEM, model=Zone, data={"name": "zone-a", "region": region})
    nodes = [
        object_create(
            principal=SYSTEM,
            model=Node,
            data={"name": f"node-{i}", "address": f"127.0.0.1:70{i}0", "zone": zone, "roles": ["gpu"]},
        )
        for i in (1, 2, 3)
    ]
    creds = {n.name: node_credential_issue(principal=SYSTEM, node=n)[1] for n in nodes}
    tenant = tenant_create(principal=SYSTEM, slug="acme")
    return Fleet(zone, nodes, creds, tenant)


@pytest.fixture
def fleet(db: Any) -> Fleet:
    return build_fleet()
