"""Node status lifecycle through the API: legal moves only, refusals change nothing."""

from __future__ import annotations

from typing import Any

import pytest

from meshweb.fleet.models import Node
from tests.meshweb.conftest import World, make_client

pytestmark = pytest.mark.django_db


def move(client: Any, node: Node, status: str) -> Any:
    return client.post(f"/api/v1/nodes/{node.pk}/status/", {"status": status, "reason": "test"}, format="json")


def test_lifecycle(world: World, token_for: Any) -> None:
    client = make_client(token_for(world.own.tenant, "platform_admin"))
    node = world.node
    for status in ["cordoned", "draining", "quarantined", "active", "offline", "active"]:
        response = move(client, node, status)
        assert response.status_code == 200, (status, response.content)
        assert response.json()["status"] == status
    assert response.json()["gpu_count"] == 1


@pytest.mark.parametrize(("path", "illegal"), [(["draining"], "active"), (["quarantined"], "draining")])
def test_illegal_transitions_are_refused(world: World, token_for: Any, path: list[str], illegal: str) -> None:
    client = make_client(token_for(world.own.tenant, "platform_admin"))
    for status in path:
        assert move(client, world.node, status).status_code == 200
    before = Node.objects.values().get(pk=world.node.pk)
    response = move(client, world.node, illegal)
    assert response.status_code == 409
    message = response.json()["error"]["message"]
    assert f"from {path[-1]} to {illegal}" in message and "allowed:" in message
    assert Node.objects.values().get(pk=world.node.pk) == before


def test_unknown_status_is_a_field_error(world: World, token_for: Any) -> None:
    client = make_client(token_for(world.own.tenant, "platform_admin"))
    response = move(client, world.node, "sleeping")
    assert response.status_code == 400
    assert "status" in response.json()["error"]["fields"]
