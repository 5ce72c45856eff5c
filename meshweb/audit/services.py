"""Writing audit entries; every service that writes calls `audit_record` inside its transaction."""

from __future__ import annotations

from typing import Any

from django.db import models

from meshweb.audit.models import AuditEntry
from meshweb.core.context import correlation_id
from meshweb.dashboard.events import publish as ring_dashboard


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
    # After commit, live dashboards re-read the audit log (they read it themselves, restricted to the viewer).
    ring_dashboard("audit", id=entry.pk, tenant_id=tenant_id)
    return entry
