"""The versioned outbox: appended in the writer's transaction, read by the agents' consumers, rung after commit.

`publish` runs on the signal `audit_record` sends, the one function every portal write goes through, so a write that
agents must know cannot forget to tell them. Redis (the channel layer) only rings a doorbell: consumers also poll, so a
lost ring delays a change but never loses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, models, transaction

from meshweb.core.changes import registration
from meshweb.core.context import correlation_id
from meshweb.core.doorbell import ring as ring_dashboard
from meshweb.core.layers import nobody_listens
from meshweb.meshlink.changes import Put, changes_for, snapshot_entries
from meshweb.meshlink.models import OutboxCounter, OutboxEntry
from meshweb.meshlink.tracing import publish_span

log = logging.getLogger("meshweb.meshlink")

AGENTS_GROUP = "meshlink.agents"


def _counter_for_update() -> OutboxCounter:
    counter = OutboxCounter.objects.select_for_update().filter(pk=1).first()
    if counter is None:
        OutboxCounter.objects.get_or_create(pk=1)
        counter = OutboxCounter.objects.select_for_update().get(pk=1)
    return counter


def _advance_counter(n: int) -> int:
    """Hand out `n` versions and return the last one, in one round trip; the counter row stays locked until commit."""
    table = connection.ops.quote_name(OutboxCounter._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET version = version + %s WHERE id = 1 RETURNING version", [n])
        row = cursor.fetchone()
    if row is None:  # a fresh database: the row is created once
        OutboxCounter.objects.get_or_create(pk=1)
        return _advance_counter(n)
    return int(row[0])


def publish(*, obj: models.Model, action: str) -> int:
    """Append the changes of a write to the outbox (inside the caller's transaction); returns the last version
    appended, 0 when agents need not know. A delete must be published before the row goes. Call it last before
    commit: every writer waits on the counter row from here until the commit."""
    changes = changes_for(obj, deleted=action.endswith(".delete"))
    if not changes:
        return 0
    cid = (correlation_id.get() or "")[:64]
    with publish_span(action, [kind for kind, *_ in changes]) as tp:
        entries = [
            OutboxEntry(kind=kind, key=key, op=op, value=value, action=action[:100], correlation_id=cid, traceparent=tp)
            for kind, key, op, value in changes
        ]
        # The row lock serialises appends until commit: versions then follow commit order, which is what lets a
        # consumer that has sent version N skip everything below N for good.
        version = _advance_counter(len(entries))
        for i, entry in enumerate(entries):
            entry.version = version - len(entries) + 1 + i
        OutboxEntry.objects.bulk_create(entries)
    transaction.on_commit(lambda: ring(version), robust=True)
    reg = registration(type(obj))
    if reg is not None and reg.doorbell is not None:
        kind, data, tenant_id = reg.doorbell(obj)
        ring_dashboard(kind, data=data, tenant_id=tenant_id)
    return version


def publish_recorded(sender: type[models.Model], *, obj: models.Model, action: str, **_: Any) -> None:
    """Receiver of `write_recorded` (meshweb/audit/signals.py), sent by `audit_record` for every portal write."""
    publish(obj=obj, action=action)


def ring(version: int) -> None:
    """Tell connected agents' consumers that the outbox grew. Failure is logged only: they poll as well."""
    layer = get_channel_layer()
    if layer is None or nobody_listens(layer, AGENTS_GROUP):
        return
    try:
        async_to_sync(layer.group_send)(AGENTS_GROUP, {"type": "outbox.doorbell", "version": version})
    except Exception as exc:  # Redis down: the consumers' polling delivers the change a little later
        log.warning("outbox doorbell for v%d not rung: %r", version, exc)


@dataclass(frozen=True, slots=True)
class Head:
    version: int
    pruned_through: int


def head() -> Head:
    counter = OutboxCounter.objects.filter(pk=1).first()
    if counter is None:
        return Head(0, 0)
    return Head(counter.version, counter.pruned_through)


def entries_after(version: int, limit: int = 500) -> list[OutboxEntry]:
    return list(OutboxEntry.objects.filter(version__gt=version).order_by("version")[:limit])


@transaction.atomic
def snapshot() -> tuple[int, list[Put]]:
    """A consistent (version, entries) pair: holding the counter lock keeps writers out while the state is read."""
    counter = _counter_for_update()
    return counter.version, snapshot_entries()


@transaction.atomic
def prune(*, keep: int) -> int:
    """Drop all but the last `keep` versions; agents further behind get a snapshot. Returns rows deleted."""
    counter = _counter_for_update()
    floor = counter.version - keep
    if floor <= counter.pruned_through:
        return 0
    deleted, _ = OutboxEntry.objects.filter(version__lte=floor).delete()
    counter.pruned_through = floor
    counter.save(update_fields=["pruned_through"])
    return deleted
