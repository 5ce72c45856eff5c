"""The signal `audit_record` sends for every portal write, inside the writer's transaction.

The outbox (meshweb/meshlink) listens to it to append what agents must know of the write, so that the audit app,
below every domain app, never imports the agents' link. Receivers run synchronously and their errors roll the write
back, as a call from `audit_record` would.
"""

from __future__ import annotations

from django.dispatch import Signal

# sender: the model class written; obj: the object; action: "<model>.<verb>"; entry: the AuditEntry just written.
write_recorded = Signal()
