"""Writing audit entries; every service that writes calls `audit_record` inside its transaction. It rings the live
dashboard's doorbell (after commit) and sends `write_recorded`, on which the outbox (meshweb/meshlink/outbox.py)
appends what agents must know of the write."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models

from meshweb.audit.models import AuditEntry
from meshweb.audit.signals import write_recorded
from meshweb.core.context import correlation_id
from meshweb.core.doorbell import ring as ring_dashboard


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
    # Every portal write passes here, so the outbox listening here misses no write that agents must know. It comes
    # last because it locks the outbox counter, which every writer waits on, until the caller commits.
    if not write_recorded.has_listeners(type(obj)):
        raise ImproperlyConfigured("no outbox listens to audit writes: meshweb.meshlink must be in INSTALLED_APPS")
    write_recorded.send(sender=type(obj), obj=obj, action=action, entry=entry)
    return entry
