"""Writes of the fleet domain with rules of their own: node status changes along the legal lifecycle."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from meshweb.audit.services import audit_record
from meshweb.core.exceptions import Conflict
from meshweb.fleet.models import NODE_TRANSITIONS, Node, NodeStatus
from meshweb.tenancy.rbac import Principal


@transaction.atomic
def node_set_status(*, principal: Principal, node: Node, status: str, reason: str = "") -> Node:
    node = Node.objects.select_for_update().get(pk=node.pk)
    if status not in NodeStatus.values:
        raise Conflict(f"Unknown node status {status!r}.", code="illegal_transition")
    if status == node.status:
        return node
    if status not in NODE_TRANSITIONS[node.status]:
        allowed = ", ".join(sorted(NODE_TRANSITIONS[node.status])) or "none"
        raise Conflict(
            f"Node {node.name} cannot go from {node.status} to {status} (allowed: {allowed}).",
            code="illegal_transition",
        )
    before = node.snapshot()
    node.status = status
    node.status_reason = reason
    node.status_changed_at = timezone.now()
    node.save(update_fields=["status", "status_reason", "status_changed_at", "updated_at"])
    audit_record(
        actor=principal.name, action=f"node.{status}", obj=node, tenant_id=None, before=before, after=node.snapshot()
    )
    return node


def node_cordon(*, principal: Principal, node: Node, reason: str = "") -> Node:
    return node_set_status(principal=principal, node=node, status=NodeStatus.CORDONED, reason=reason)


def node_drain(*, principal: Principal, node: Node, reason: str = "") -> Node:
    return node_set_status(principal=principal, node=node, status=NodeStatus.DRAINING, reason=reason)


def node_quarantine(*, principal: Principal, node: Node, reason: str) -> Node:
    return node_set_status(principal=principal, node=node, status=NodeStatus.QUARANTINED, reason=reason)


def node_activate(*, principal: Principal, node: Node, reason: str = "") -> Node:
    return node_set_status(principal=principal, node=node, status=NodeStatus.ACTIVE, reason=reason)
