"""Writing audit entries; every service that writes calls `audit_record` inside its transaction, which also appends
what agents must know of the write to the outbox (meshweb/meshlink/outbox.py)."""

from __future__ import annotations

from typing import Any

from django.db import models

from meshweb.audit.models import AuditEntry
from meshweb.core.context import correlation_id
from meshweb.dashboard.events import publish as ring_dashboard
from meshweb.meshlink.outbox import publish as publish_to_agents


def audit_record(
    *,
    actor: str,
    action: str,
    obj: models.Model,
    tenant_id: int | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry.objects.create(
        actor=actor,
        tenant_id=tenant_id,
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk or ""),
        before=before,
        after=after,
        correlation_id=correlation_id.get(),
    )
    # Every portal write passes here, so publishing here means no write that agents must know is missed. It comes
    # last because it locks the outbox counter, which every writer waits on, until the caller commits.
    publish_to_agents(obj=obj, action=action)
    # After commit, live dashboards re-read the audit log (they read it themselves, restricted to the viewer).
    ring_dashboard("audit", id=entry.pk, tenant_id=tenant_id)
    return entry
