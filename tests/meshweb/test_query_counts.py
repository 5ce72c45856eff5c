"""List endpoints run a fixed number of queries however many rows they return (pinned in query_counts.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from meshweb.tenancy.roles import Role
from tests.meshweb.conftest import World, build_tenant, make_client

PINNED: dict[str, int] = json.loads((Path(__file__).parent / "query_counts.json").read_text())


def _count(client: Any, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, {"limit": 500})
    assert response.status_code == 200, response.content
    return len(ctx.captured_queries)


@pytest.mark.parametrize("endpoint", sorted(PINNED))
def test_list_query_count_is_pinned_and_flat(world: World, token_for: Any, endpoint: str) -> None:
    client = make_client(token_for(world.own.tenant, Role.PLATFORM_ADMIN))
    url = f"/api/v1/{endpoint}/"
    _count(client, url)  # first request of a token also stamps last_used_at
    small = _count(client, url)
    for i in range(3):
        build_tenant(f"extra-{i}", world.zone)
    large = _count(client, url)
    assert small == large, f"{url}: {small} queries with few rows, {large} with more (N+1)"
    assert large == PINNED[endpoint], f"{url}: {large} queries, pinned {PINNED[endpoint]}"
