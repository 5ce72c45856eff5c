"""What agents learn of nodes (registered with the outbox at app ready)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agents.proto.portal_link import STORE_NODE_STATUS
from meshweb.core.changes import Put, register
from meshweb.fleet.models import Node


def node_key(name: str) -> str:
    return f"nodes/{name}"


def _node(n: Node) -> Iterator[Put]:
    value: dict[str, Any] = {"status": STORE_NODE_STATUS[n.status], "reason": n.status_reason[:500]}
    if n.status_changed_at is not None:
        value["since"] = n.status_changed_at.timestamp()
    yield Put("node", node_key(n.name), value)


def _doorbell(n: Node) -> tuple[str, dict[str, Any], int | None]:
    return "node.status", {"node": n.name, "status": n.status, "reason": n.status_reason}, None


def register_changes() -> None:
    register(Node, _node, doorbell=_doorbell)
