"""Quarantine and liveness through the services the Celery tasks call: reason, evidence, events, the push to agents,
idempotent re-runs, release after the cool-down, admin pin and release, stale heartbeats."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F
from django.test import override_settings
from django.utils import timezone

from agents.proto.portal_link import Telemetry
from meshweb.fleet.models import Node, NodeEvent, NodeQuarantine, TelemetrySample
from meshweb.fleet.services import (
    node_quarantine_pin,
    node_quarantine_release,
    quarantine_check_all,
)
from meshweb.fleet.tasks import quarantine_checks, stale_heartbeats
from meshweb.meshlink.models import OutboxEntry
from meshweb.meshlink.outbox import head
from meshweb.meshlink.services import heartbeat_record, telemetry_record
from meshweb.tenancy.services import SYSTEM
from tests.meshlink.conftest import Fleet

pytestmark = pytest.mark.django_db


def report(node: Node, *, ecc: int = 0, xids: list[int] | None = None, at: Any = None) -> None:
    sample = telemetry_record(
        node=node,
        telemetry=Telemetry.model_validate(
            {
                "seq": 1,
                "at_unix_ms": int(timezone.now().timestamp() * 1000),
                "gpus": [{"uuid": f"GPU-{node.name}", "index": 0, "ecc_uncorrectable": ecc, "xids": xids or [],
                          "temperature_c": 40.0, "slowdown_temp_c": 90.0}],
            }
        ),
    )  # fmt: skip
    if at is not None:
        TelemetrySample.objects.filter(pk=sample.pk).update(at=at)


def pushed_status(node: str, after: int) -> list[str]:
    return [
        (e.value or {}).get("status", "") for e in OutboxEntry.objects.filter(key=f"nodes/{node}", version__gt=after)
    ]


@override_settings(INFERMESH_QUARANTINE_COOLDOWN_S=60)
def test_a_fault_quarantines_and_a_healthy_cooldown_releases(fleet: Fleet) -> None:
    node = fleet.nodes[1]
    for n in fleet.nodes:
        report(n)
    mark = head().version
    assert quarantine_checks.apply().get() == {"node-1": "none", "node-2": "none", "node-3": "none"}
    assert head().version == mark

    report(node, xids=[79])
    assert quarantine_check_all()["node-2"] == "quarantine"
    node.refresh_from_db()
    assert node.status == "quarantined" and node.status_reason == "GPU GPU-node-2: fatal Xid 79"
    record = NodeQuarantine.objects.get(node=node)
    assert record.automatic and not record.pinned and record.released_at is None
    assert record.evidence[0]["rule"] == "xid" and record.evidence[0]["xids"] == [79]
    assert NodeEvent.objects.get(node=node, kind="quarantined").data["evidence"] == record.evidence
    assert pushed_status("node-2", mark) == ["quarantine"]

    # Running the check again (a retry, a second beat tick) changes nothing.
    mark = head().version
    assert quarantine_check_all()["node-2"] == "hold"
    assert head().version == mark and NodeQuarantine.objects.filter(node=node).count() == 1

    # Healthy samples, but not yet for the whole cool-down: still held.
    now = timezone.now()
    NodeQuarantine.objects.filter(pk=record.pk).update(last_unhealthy_at=now - timedelta(seconds=50))
    TelemetrySample.objects.filter(node=node).update(at=now - timedelta(seconds=50))
    report(node, at=now - timedelta(seconds=30))
    assert quarantine_check_all(now=now)["node-2"] == "hold"
    # Healthy for longer than the cool-down: released.
    NodeQuarantine.objects.filter(pk=record.pk).update(last_unhealthy_at=now - timedelta(seconds=90))
    TelemetrySample.objects.filter(node=node).update(at=F("at") - timedelta(seconds=40))
    report(node, at=now - timedelta(seconds=1))
    assert quarantine_check_all(now=now)["node-2"] == "release"
    node.refresh_from_db()
    record.refresh_from_db()
    assert node.status == "active" and record.released_at is not None and record.released_by == "system:quarantine"
    assert pushed_status("node-2", mark) == ["active"]
    assert [e.kind for e in NodeEvent.objects.filter(node=node)] == ["quarantined", "released"]
    # The fault it was released from is still in the window; it does not quarantine the node again.
    assert quarantine_check_all()["node-2"] == "none"


def test_ecc_errors_quarantine_and_admins_can_pin_and_release(fleet: Fleet) -> None:
    node = fleet.nodes[0]
    report(node, ecc=3)
    quarantine_check_all()
    node.refresh_from_db()
    assert node.status == "quarantined" and "3 uncorrectable ECC errors" in node.status_reason
    node_quarantine_pin(principal=SYSTEM, node=node, reason="RMA ticket 42")
    record = NodeQuarantine.objects.get(node=node)
    assert record.pinned
    TelemetrySample.objects.all().delete()
    now = timezone.now()
    for age in (400, 200, 1):
        report(node, at=now - timedelta(seconds=age))
    NodeQuarantine.objects.filter(pk=record.pk).update(last_unhealthy_at=now - timedelta(seconds=500))
    assert quarantine_check_all(now=now)["node-1"] == "none"  # pinned: the rules never release it
    node_quarantine_release(principal=SYSTEM, node=node, reason="GPU replaced")
    node.refresh_from_db()
    assert node.status == "active"
    node_quarantine_release(principal=SYSTEM, node=node, reason="again")  # idempotent
    assert NodeEvent.objects.filter(node=node, kind="released").count() == 1


@override_settings(INFERMESH_HEARTBEAT_STALE_S=30)
def test_stale_heartbeats_take_a_node_offline_and_its_return_restores_it(fleet: Fleet) -> None:
    node = fleet.nodes[2]
    for n in fleet.nodes:
        heartbeat_record(node=n)
    assert stale_heartbeats.apply().get() == []
    Node.objects.filter(pk=node.pk).update(last_heartbeat_at=timezone.now() - timedelta(seconds=45))
    mark = head().version
    assert stale_heartbeats.apply().get() == ["node-3"]
    node.refresh_from_db()
    assert node.status == "offline" and node.status_reason == "no heartbeat for 45s"
    assert pushed_status("node-3", mark) == ["offline"]
    assert stale_heartbeats.apply().get() == []  # already offline

    heartbeat_record(node=node)
    node.refresh_from_db()
    assert node.status == "active"
    assert [e.kind for e in NodeEvent.objects.filter(node=node)] == ["offline", "online"]


def test_a_node_that_returns_with_an_open_quarantine_goes_back_to_quarantine(fleet: Fleet) -> None:
    node = fleet.nodes[0]
    report(node, ecc=1)
    quarantine_check_all()
    Node.objects.filter(pk=node.pk).update(last_heartbeat_at=timezone.now() - timedelta(hours=1))
    stale_nodes = stale_heartbeats.apply().get()
    assert stale_nodes == ["node-1"]
    heartbeat_record(node=node)
    node.refresh_from_db()
    assert node.status == "quarantined"
