"""The Cells page: regions, cells and their nodes, and the spill-over between cells, for platform admins only."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from meshweb.fleet.models import Node
from meshweb.usage.models import Spillover
from tests.dashboard.conftest import World

pytestmark = pytest.mark.django_db


def test_cells_page_shows_cells_and_spillover(login: Callable[..., Any], world: World) -> None:
    Node.objects.filter(pk=world.node.pk).update(cell=world.cell)
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    Spillover.objects.create(minute=minute, from_cell="cell-1", to_cell="cell-2", reason="saturated", requests=7)
    page = login(superuser=True).get("/dashboard/cells/")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'data-region="region-1" data-cell="cell-1"' in html and "node-1" in html
    assert 'data-from="cell-1" data-to="cell-2" data-reason="saturated"' in html and "<td>7</td>" in html
    assert login(tenant=world.own.tenant, role="tenant_admin").get("/dashboard/cells/").status_code == 403
