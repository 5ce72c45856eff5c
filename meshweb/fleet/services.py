"""Writes of the fleet domain with rules of their own: node status changes along the legal lifecycle, quarantine
(with reason, evidence and events) and liveness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from meshweb.audit.services import audit_record
from meshweb.core.doorbell import ring as ring_dashboard
from meshweb.core.exceptions import Conflict
from meshweb.fleet.models import NODE_TRANSITIONS, Node, NodeEvent, NodeQuarantine, NodeStatus, TelemetrySample
from meshweb.fleet.quarantine import Decision, Rules, State, decide, sample_from_telemetry
from meshweb.fleet.quarantine import evidence as quarantine_evidence
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


# -- quarantine and liveness (called by the Celery tasks in fleet/tasks.py and by admins) ----------------------------
def _node_event(node: Node, kind: str, message: str, data: dict[str, Any] | None = None) -> NodeEvent:
    event = NodeEvent.objects.create(node=node, kind=kind, message=message[:1000], data=data or {})
    payload = {"node": node.name, "kind": kind, "message": event.message, "data": event.data}
    ring_dashboard("node.event", data=payload, tenant_id=None)
    return event


def open_quarantine(node: Node) -> NodeQuarantine | None:
    return NodeQuarantine.objects.filter(node=node, released_at__isnull=True).order_by("-id").first()


@transaction.atomic
def node_quarantine_open(
    *,
    principal: Principal,
    node: Node,
    reason: str,
    evidence: list[dict[str, Any]],
    unhealthy_at: datetime | None = None,
    automatic: bool = True,
    pinned: bool = False,
) -> NodeQuarantine:
    """Quarantine a node with its reason and evidence (idempotent: an open quarantine only records the new
    unhealthy time, so a retried check changes nothing else)."""
    node = Node.objects.select_for_update().get(pk=node.pk)
    record = open_quarantine(node)
    at = unhealthy_at or timezone.now()
    if record is not None:
        if record.last_unhealthy_at is None or at > record.last_unhealthy_at:
            record.last_unhealthy_at = at
            record.save(update_fields=["last_unhealthy_at", "updated_at"])
        if pinned and not record.pinned:
            record.pinned = True
            record.save(update_fields=["pinned", "updated_at"])
            _node_event(node, "quarantine.pinned", f"pinned by {principal.name}: {reason}")
        if node.status != NodeStatus.QUARANTINED and node.status != NodeStatus.OFFLINE:
            node_set_status(principal=principal, node=node, status=NodeStatus.QUARANTINED, reason=record.reason)
        return record
    record = NodeQuarantine.objects.create(
        node=node, reason=reason[:500], evidence=evidence, automatic=automatic, pinned=pinned, last_unhealthy_at=at
    )
    if node.status not in (NodeStatus.QUARANTINED, NodeStatus.OFFLINE):  # offline: applied when it comes back
        node_set_status(principal=principal, node=node, status=NodeStatus.QUARANTINED, reason=reason[:500])
    _node_event(node, "quarantined", reason, {"evidence": evidence, "automatic": automatic, "pinned": pinned})
    audit_record(
        actor=principal.name,
        action="node.quarantine.open",
        obj=record,
        tenant_id=None,
        after={"node": node.name, "reason": reason, "evidence": evidence, "pinned": pinned},
    )
    data = {"node": node.name, "reason": reason, "evidence": evidence, "state": "quarantined"}
    ring_dashboard("quarantine", data=data, tenant_id=None)
    return record


@transaction.atomic
def node_quarantine_release(*, principal: Principal, node: Node, reason: str) -> Node:
    """End a node's quarantine and make it active again (idempotent)."""
    node = Node.objects.select_for_update().get(pk=node.pk)
    record = open_quarantine(node)
    if record is not None:
        record.released_at = timezone.now()
        record.released_by = principal.name
        record.release_reason = reason[:500]
        record.save(update_fields=["released_at", "released_by", "release_reason", "updated_at"])
        _node_event(node, "released", reason, {"quarantine": record.pk})
        audit_record(
            actor=principal.name,
            action="node.quarantine.release",
            obj=record,
            tenant_id=None,
            after={"node": node.name, "reason": reason},
        )
        data = {"node": node.name, "reason": reason, "state": "released"}
        ring_dashboard("quarantine", data=data, tenant_id=None)
    if node.status == NodeStatus.QUARANTINED:
        node = node_set_status(principal=principal, node=node, status=NodeStatus.ACTIVE, reason=reason)
    return node


def node_quarantine_pin(*, principal: Principal, node: Node, reason: str) -> NodeQuarantine:
    """Hold a node in quarantine until an admin releases it (quarantining it first if needed)."""
    return node_quarantine_open(
        principal=principal, node=node, reason=reason, evidence=[], automatic=False, pinned=True
    )


@transaction.atomic
def node_mark_offline(*, principal: Principal, node: Node, reason: str) -> Node:
    node = Node.objects.select_for_update().get(pk=node.pk)
    if node.status == NodeStatus.OFFLINE:
        return node
    node = node_set_status(principal=principal, node=node, status=NodeStatus.OFFLINE, reason=reason)
    _node_event(node, "offline", reason)
    return node


@transaction.atomic
def node_mark_online(*, principal: Principal, node: Node, reason: str) -> Node:
    """An offline node whose agent speaks again goes back to active, or to quarantine if one is still open."""
    node = Node.objects.select_for_update().get(pk=node.pk)
    if node.status != NodeStatus.OFFLINE:
        return node
    record = open_quarantine(node)
    status = NodeStatus.QUARANTINED if record is not None else NodeStatus.ACTIVE
    node = node_set_status(
        principal=principal, node=node, status=status, reason=record.reason if record is not None else reason
    )
    _node_event(node, "online", reason, {"status": status})
    return node


QUARANTINE_CHECKS = Principal(name="system:quarantine", platform_admin=True)


def quarantine_rules() -> Rules:
    from django.conf import settings

    return Rules(cooldown_s=settings.INFERMESH_QUARANTINE_COOLDOWN_S)


def _last_release(node: Node) -> float | None:
    last = NodeQuarantine.objects.filter(node=node, released_at__isnull=False).order_by("-released_at").first()
    return last.released_at.timestamp() if last is not None and last.released_at is not None else None


def quarantine_check_node(*, node: Node, now: datetime, rules: Rules, window_s: float) -> Decision:
    """Judge one node on its recent telemetry and apply the decision (each step idempotent, so a retried or
    duplicated check leaves the same state)."""

    since = now - timedelta(seconds=window_s)
    rows = TelemetrySample.objects.filter(node=node, at__gte=since, at__lte=now).order_by("at").only("at", "data")
    samples = [sample_from_telemetry(r.at.timestamp(), r.data) for r in rows]
    record = open_quarantine(node)
    state = State(
        status=node.status,
        quarantined_by_rules=record is not None and record.automatic,
        pinned=record is not None and record.pinned,
        quarantined_manually=node.status == NodeStatus.QUARANTINED and (record is None or not record.automatic),
        last_unhealthy_at=record.last_unhealthy_at.timestamp() if record and record.last_unhealthy_at else None,
        ignore_before=_last_release(node),
    )
    decision = decide(state, samples, now.timestamp(), rules)
    bad_at = datetime.fromtimestamp(decision.last_unhealthy_at, tz=UTC) if decision.last_unhealthy_at else None
    if decision.action in ("quarantine", "hold") and (decision.action == "quarantine" or record is not None):
        node_quarantine_open(
            principal=QUARANTINE_CHECKS,
            node=node,
            reason=decision.reason,
            evidence=quarantine_evidence(decision.findings),
            unhealthy_at=bad_at,
        )
    elif decision.action == "release":
        node_quarantine_release(principal=QUARANTINE_CHECKS, node=node, reason=decision.reason)
    return decision


def quarantine_check_all(*, now: datetime | None = None, window_s: float | None = None) -> dict[str, str]:
    """Run the quarantine rules over every node with telemetry; returns node -> action taken."""
    from django.conf import settings

    now = now or timezone.now()
    window = window_s if window_s is not None else settings.INFERMESH_QUARANTINE_WINDOW_S
    rules = quarantine_rules()
    out: dict[str, str] = {}
    for node in Node.objects.exclude(status=NodeStatus.OFFLINE).order_by("name"):
        decision = quarantine_check_node(node=node, now=now, rules=rules, window_s=max(window, rules.cooldown_s))
        out[node.name] = decision.action
    return out


def stale_nodes_mark_offline(*, now: datetime | None = None) -> list[str]:
    """Nodes whose agent has been silent for longer than INFERMESH_HEARTBEAT_STALE_S go offline."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.INFERMESH_HEARTBEAT_STALE_S)
    stale = Node.objects.filter(last_heartbeat_at__lt=cutoff).exclude(status=NodeStatus.OFFLINE)
    names = []
    for node in stale:
        silent = (now - node.last_heartbeat_at).total_seconds() if node.last_heartbeat_at else 0.0
        node_mark_offline(principal=SYSTEM_LIVENESS, node=node, reason=f"no heartbeat for {silent:.0f}s")
        names.append(node.name)
    return names


SYSTEM_LIVENESS = Principal(name="system:liveness", platform_admin=True)
