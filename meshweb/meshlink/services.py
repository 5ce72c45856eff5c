"""Writes of the agent link: the link's client certificate, link state, heartbeats, telemetry, job reports and the
calls agents refused (node credentials are identity's: meshweb/identity/credentials.py).

The consumer in consumers.py only parses frames and calls these; every rule lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from agents.proto.portal_link import (
    CallRefusals,
    Hello,
    JobEvent,
    JobStatus,
    JobTelemetry,
    Telemetry,
)
from agents.security.ca import CaError, load_certificate, svid_info, verify_issued_by
from meshweb.audit.models import AuditEntry
from meshweb.audit.services import audit_record
from meshweb.core.doorbell import ring as ring_dashboard
from meshweb.core.exceptions import Conflict
from meshweb.fleet.models import GpuTelemetry, Node, NodeStatus, NodeTelemetry, TelemetrySample
from meshweb.fleet.services import node_mark_online
from meshweb.identity.credentials import node_authenticate
from meshweb.identity.mesh import portal_ca
from meshweb.identity.models import IssuedCertificate
from meshweb.meshlink.models import NodeLink
from meshweb.meshlink.outbox import entries_after, head, snapshot
from meshweb.tenancy.rbac import Principal
from meshweb.training.models import TERMINAL, TrainingJob
from meshweb.training.models import JobEvent as JobEventRow
from meshweb.training.services import PlacementSlot, job_advance, job_place, job_telemetry_record

log = logging.getLogger("meshweb.meshlink")


def node_principal(node: Node) -> Principal:
    """What an agent acts as: platform-wide, named after its node in the audit trail."""
    return Principal(name=f"node:{node.name}", platform_admin=True)


# -- the link's client certificate -------------------------------------------------------------------------------
CERTIFICATE_REQUIRED = "certificate_required"
CERTIFICATE_REFUSED = "certificate_refused"


@dataclass(frozen=True, slots=True)
class LinkRefusal:
    code: str  # CERTIFICATE_REQUIRED | CERTIFICATE_REFUSED
    reason: str
    spiffe_id: str = ""
    serial: str = ""


def link_certificate_check(*, node: Node, chain: Sequence[str]) -> LinkRefusal | None:
    """Whether the link of `node` (already authenticated by its credential) may go on with the client certificate it
    presented (`chain`, leaf first; empty on the plain listener). A certificate must be an SVID this portal issued to
    that very node, unrevoked and current; none at all is refused when INFERMESH_MESH_LINK_MTLS is "required"."""
    if not chain:
        if settings.INFERMESH_MESH_LINK_MTLS == "required":
            return LinkRefusal(
                CERTIFICATE_REQUIRED, "no client certificate: this portal takes agent links only over its mesh listener"
            )
        return None
    try:
        cert = load_certificate(chain[0])
        info = svid_info(cert)
    except CaError as err:
        return LinkRefusal(CERTIFICATE_REFUSED, f"client certificate: {err}")
    spiffe_id, serial = info.spiffe_id, format(info.serial, "x")

    def refused(reason: str) -> LinkRefusal:
        return LinkRefusal(CERTIFICATE_REFUSED, reason, spiffe_id, serial)

    ca = portal_ca()
    try:
        verify_issued_by(cert, ca.cert)  # the handshake checked the chain; expiry is checked again here by the rule
    except CaError as err:
        return refused(f"{spiffe_id} (serial {serial}): {err}")
    record = IssuedCertificate.objects.filter(serial=serial).first()
    if record is None:
        return refused(f"{spiffe_id} (serial {serial}) was not issued by this portal")
    if record.revoked_at is not None:
        why = f": {record.revoke_reason}" if record.revoke_reason else ""
        return refused(f"{spiffe_id} (serial {serial}) is revoked{why}")
    if info.trust_domain != ca.trust_domain or info.node != node.name:
        return refused(f"{spiffe_id} is not node {node.name}, whose credential opened this link")
    return None


def link_recheck(*, node: Node, credential: str, chain: Sequence[str]) -> LinkRefusal | None:
    """Whether a link that is up may stay up: its credential and certificate are checked again, so a revocation (or
    the node's deletion) ends a live link instead of waiting for the agent to reconnect."""
    current, why = node_authenticate(credential)
    if current is None or current.pk != node.pk:
        return LinkRefusal(CERTIFICATE_REFUSED, f"credential no longer valid: {why or 'names another node'}")
    return link_certificate_check(node=node, chain=chain)


@transaction.atomic
def link_refusal_record(*, node: Node, refusal: LinkRefusal, peer: str) -> AuditEntry:
    after = {"node": node.name, "code": refusal.code, "reason": refusal.reason, "peer": peer}
    if refusal.spiffe_id:
        after |= {"spiffe_id": refusal.spiffe_id, "serial": refusal.serial}
    obj: Node | NodeLink = node  # a link ended because its node was deleted has no link record left to count on
    if Node.objects.filter(pk=node.pk).exists():
        obj, _ = NodeLink.objects.get_or_create(node=node)
        NodeLink.objects.filter(pk=obj.pk).update(refused=F("refused") + 1)
    return audit_record(actor=f"peer:{peer}"[:200], action="mesh.link_refused", obj=obj, tenant_id=None, after=after)


# -- the link ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HelloPlan:
    mode: str  # "replay" | "snapshot" | "current"
    head: int


def plan_for(applied: int) -> HelloPlan:
    """Replay from the outbox when it still holds every version after `applied`, else a snapshot. A new agent
    (nothing applied) starts from a snapshot rather than the whole history, and an agent ahead of the portal (a
    restored database) also gets one so that it converges to what the portal holds."""
    h = head()
    if applied == 0 or applied < h.pruned_through or applied > h.version:
        return HelloPlan("snapshot", h.version)
    if applied == h.version:
        return HelloPlan("current", h.version)
    return HelloPlan("replay", h.version)


@transaction.atomic
def link_hello(*, node: Node, hello: Hello) -> HelloPlan:
    now = timezone.now()
    link, _ = NodeLink.objects.select_for_update().get_or_create(node=node)
    link.connected = True
    link.connections += 1
    link.connected_at = now
    link.last_message_at = now
    link.store = hello.store
    link.agent_version = hello.agent_version
    link.hello_version = hello.applied_version
    plan = plan_for(hello.applied_version)
    if plan.mode != "snapshot":
        # What its store already holds counts as delivered: an agent whose Raft group applied the changes through a
        # peer while its link was cut says so in its hello and acknowledges nothing more (its lag is 0, not the gap).
        link.acked_version = max(link.acked_version, hello.applied_version)
    link.save()
    Node.objects.filter(pk=node.pk).update(last_heartbeat_at=now)
    if node.status == NodeStatus.OFFLINE:
        node_mark_online(principal=node_principal(node), node=node, reason="agent connected")
    data = {"node": node.name, "connected": True, "applied_version": hello.applied_version, "store": hello.store}
    ring_dashboard("link", data=data, tenant_id=None)
    return plan


def link_opened(*, node: Node) -> None:
    """An authenticated agent's link is accepted: its link record exists from now on (refused frames count on it)."""
    NodeLink.objects.get_or_create(node=node)


def link_ack(*, node: Node, version: int) -> None:
    now = timezone.now()
    NodeLink.objects.filter(node=node).update(acked_version=Greatest(F("acked_version"), version), last_message_at=now)


def link_refused(*, node: Node) -> None:
    NodeLink.objects.filter(node=node).update(refused=F("refused") + 1)


@transaction.atomic
def link_closed(*, node: Node) -> None:
    NodeLink.objects.filter(node=node).update(connected=False, disconnected_at=timezone.now())
    data = {"node": node.name, "connected": False}
    ring_dashboard("link", data=data, tenant_id=None)


def heartbeat_record(*, node: Node) -> None:
    now = timezone.now()
    Node.objects.filter(pk=node.pk).update(last_heartbeat_at=now)
    NodeLink.objects.filter(node=node).update(last_message_at=now)
    if Node.objects.filter(pk=node.pk, status=NodeStatus.OFFLINE).exists():
        node_mark_online(principal=node_principal(node), node=node, reason="heartbeats resumed")


def changes_after(version: int, limit: int = 500) -> list[dict[str, Any]]:
    return [
        {"version": e.version, "key": e.key, "op": e.op, "value": e.value, "kind": e.kind}
        | ({"traceparent": e.traceparent} if e.traceparent else {})
        for e in entries_after(version, limit)
    ]


def snapshot_frame() -> tuple[int, list[dict[str, Any]]]:
    version, puts = snapshot()
    return version, [{"key": p.key, "value": p.value} for p in puts]


# -- telemetry ---------------------------------------------------------------------------------------------------
def _at(unix_ms: int) -> datetime:
    now = timezone.now()
    at = datetime.fromtimestamp(unix_ms / 1000, tz=UTC)
    # An agent's clock cannot put its reports in the future or far in the past of the portal's timeline.
    return min(max(at, now - timedelta(minutes=5)), now)


@transaction.atomic
def telemetry_record(*, node: Node, telemetry: Telemetry) -> TelemetrySample:
    """Keep the latest roll-up per node and per GPU, and a sample for charts and the quarantine rules."""
    at = _at(telemetry.at_unix_ms)
    gpus = [g.model_dump(exclude_defaults=False) for g in telemetry.gpus]
    peers = [p.model_dump() for p in telemetry.peers]
    node_data = telemetry.node.model_dump()
    NodeTelemetry.objects.update_or_create(node=node, defaults={"at": at, "data": {**node_data, "peers": peers}})
    for g in telemetry.gpus:
        GpuTelemetry.objects.update_or_create(
            uuid=g.uuid, defaults={"node": node, "index": g.index, "at": at, "data": g.model_dump()}
        )
    sample = TelemetrySample.objects.create(node=node, at=at, data={"node": node_data, "gpus": gpus, "peers": peers})
    Node.objects.filter(pk=node.pk).update(last_heartbeat_at=timezone.now())
    roll = {
        "node": node.name,
        "at": at.isoformat(),
        **node_data,
        "gpus": [
            {
                "uuid": g.uuid,
                "index": g.index,
                "utilization": g.utilization,
                "memory_used_frac": g.memory_used_frac,
                "temperature_c": g.temperature_c,
                "healthy": g.healthy,
            }
            for g in telemetry.gpus
        ],
    }
    ring_dashboard("telemetry", data=roll, tenant_id=None)
    return sample


@transaction.atomic
def telemetry_prune(*, older_than: timedelta) -> int:
    deleted, _ = TelemetrySample.objects.filter(at__lt=timezone.now() - older_than).delete()
    return deleted


# -- jobs --------------------------------------------------------------------------------------------------------
class JobReportError(ValueError):
    """A job report that names no job of the portal or asks for an illegal change."""


def _job(job_id: int) -> TrainingJob:
    job = TrainingJob.objects.filter(pk=job_id).first()
    if job is None:
        raise JobReportError(f"job_id: no job {job_id}")
    return job


def job_status_report(*, node: Node, report: JobStatus) -> TrainingJob:
    """The scheduler's status of a job, applied along the portal's legal transitions (each step once, audited and
    published); a repeated report (a reconnect, a new Raft leader reporting again) changes nothing."""
    job = _job(report.job_id)
    if job.status == report.status:
        return job
    try:
        return job_advance(
            principal=node_principal(node), job=job, status=report.status, reason=report.reason or f"from {node.name}"
        )
    except Conflict as exc:
        raise JobReportError(str(exc)) from exc


def _placement(event: JobEvent) -> list[PlacementSlot] | None:
    workers = event.data.get("workers")
    if event.kind not in ("placed", "replanned") or workers is None:
        return None
    try:
        return [
            PlacementSlot(int(w["rank"]), str(w["node"]), [str(u) for u in w.get("gpu_uuids", [])]) for w in workers
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise JobReportError(f"data.workers: each worker needs rank, node and gpu_uuids ({exc!r})") from exc


@transaction.atomic
def job_event_record(*, node: Node, event: JobEvent) -> JobEventRow | None:
    """A scheduler event of a job; a placement event also records where its workers run. Events carrying the
    scheduler's time (`data.at`) are recorded once however often they are reported (None for a repeat)."""
    job = _job(event.job_id)
    kind = f"agent.{event.kind}"
    at = event.data.get("at")
    if at is not None and JobEventRow.objects.filter(job=job, kind=kind, data__at=at).exists():
        return None
    slots = _placement(event)
    if slots is not None and job.status not in TERMINAL:
        try:
            job_place(
                principal=node_principal(node), job=job, slots=slots, generation=int(event.data.get("generation", 0))
            )
        except Conflict as exc:
            raise JobReportError(str(exc)) from exc
    row = JobEventRow.objects.create(
        job=job, kind=kind, message=(event.message or event.kind)[:1000], data={**event.data, "node": node.name}
    )
    data = {"job": job.pk, "kind": row.kind, "message": row.message, "node": node.name}
    ring_dashboard("job.event", data=data, tenant_id=job.tenant_id)
    return row


@transaction.atomic
def job_telemetry_report(*, node: Node, report: JobTelemetry) -> None:
    job = _job(report.job_id)
    job_telemetry_record(job=job, generation=report.generation, data=report.data)
    data = {"job": job.pk, "generation": report.generation, "telemetry": report.data}
    ring_dashboard("job.telemetry", data=data, tenant_id=job.tenant_id)


# -- refused calls -----------------------------------------------------------------------------------------------
@transaction.atomic
def call_refusals_record(*, node: Node, report: CallRefusals) -> list[AuditEntry]:
    """One `mesh.call_refused` audit entry per kind of call the node's agent refused (with how often and when),
    plus one for the refusals it only counted."""
    link, _ = NodeLink.objects.get_or_create(node=node)
    actor = node_principal(node).name
    entries = []
    for r in report.refusals:
        after = {
            "node": node.name,
            "caller": r.caller,
            "peer": r.peer,
            "method": r.method,
            "code": r.code,
            "reason": r.reason,
            "count": r.count,
            "first_at": _at(r.first_unix_ms).isoformat(),
            "last_at": _at(r.last_unix_ms).isoformat(),
        }
        entries.append(audit_record(actor=actor, action="mesh.call_refused", obj=link, tenant_id=None, after=after))
    if report.dropped:
        after = {
            "node": node.name,
            "count": report.dropped,
            "reason": f"{report.dropped} more refused calls of other kinds (counted by the agent, not itemised)",
        }
        entries.append(audit_record(actor=actor, action="mesh.call_refused", obj=link, tenant_id=None, after=after))
    return entries
