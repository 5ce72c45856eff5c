"""Writes of usage: applying a router's batch once, and the daily token quota it may exhaust."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F, Sum

from agents.proto.usage import UsageBatch as WireBatch
from meshweb.audit.services import audit_record
from meshweb.fleet.models import Node
from meshweb.tenancy.models import Quota, Tenant
from meshweb.usage.models import Spillover, UsageBatch, UsageRollup


def _add(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


@transaction.atomic
def usage_ingest(*, node: Node | None, batch: WireBatch) -> tuple[int, int, bool]:
    """Apply a batch once: (rows applied, rows of unknown tenants skipped, duplicate)."""
    try:
        with transaction.atomic():
            UsageBatch.objects.create(batch=batch.batch, node=node, router=batch.router, rows=len(batch.rows))
    except IntegrityError:
        return 0, 0, True
    tenants = {t.slug: t for t in Tenant.objects.filter(slug__in={r.tenant for r in batch.rows})}
    applied = skipped = 0
    touched: set[int] = set()
    for r in sorted(batch.rows, key=lambda r: (r.tenant, r.key, r.model, r.minute)):  # one lock order for all
        tenant = tenants.get(r.tenant)
        if tenant is None:
            skipped += 1  # a router's config tenant the portal does not know
            continue
        minute = datetime.fromtimestamp(r.minute * 60, tz=UTC)
        cell, _ = UsageRollup.objects.select_for_update().get_or_create(
            tenant=tenant, key_prefix=r.key, model=r.model, minute=minute, defaults={"ttft": [], "latency": []}
        )
        UsageRollup.objects.filter(pk=cell.pk).update(
            requests=F("requests") + r.requests,
            errors=F("errors") + r.errors,
            throttled=F("throttled") + r.throttled,
            prompt_tokens=F("prompt_tokens") + r.prompt_tokens,
            completion_tokens=F("completion_tokens") + r.completion_tokens,
            ttft=_add(cell.ttft, r.ttft),
            latency=_add(cell.latency, r.latency),
        )
        applied += 1
        touched.add(tenant.pk)
    for sp in sorted(batch.spills, key=lambda r: (r.minute, r.from_cell, r.to_cell, r.reason)):
        row, _ = Spillover.objects.select_for_update().get_or_create(
            minute=datetime.fromtimestamp(sp.minute * 60, tz=UTC),
            from_cell=sp.from_cell,
            to_cell=sp.to_cell,
            reason=sp.reason,
        )
        Spillover.objects.filter(pk=row.pk).update(requests=F("requests") + sp.requests)
    for quota in Quota.objects.select_related("tenant").filter(tenant_id__in=touched, tokens_per_day__gt=0):
        quota_exhaust_check(quota=quota)
    return applied, skipped, False


def _day_bounds(now: datetime) -> tuple[datetime, datetime]:
    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def tokens_today(tenant_id: int, now: datetime | None = None) -> int:
    start, end = _day_bounds(now or datetime.now(UTC))
    agg = UsageRollup.objects.filter(tenant_id=tenant_id, minute__gte=start, minute__lt=end).aggregate(
        p=Sum("prompt_tokens"), c=Sum("completion_tokens")
    )
    return int(agg["p"] or 0) + int(agg["c"] or 0)


@transaction.atomic
def quota_exhaust_check(*, quota: Quota, now: datetime | None = None) -> bool:
    """Mark the tenant's daily tokens spent until UTC midnight once the metering (all routers) reaches its limit;
    the mark is pushed to every router with the tenant's record. True when it was set now."""
    now = now or datetime.now(UTC)
    _, midnight = _day_bounds(now)
    if not quota.tokens_per_day or (quota.tokens_exhausted_until and quota.tokens_exhausted_until >= midnight):
        return False
    used = tokens_today(quota.tenant_id, now)
    if used < quota.tokens_per_day:
        return False
    before = {"tokens_exhausted_until": None}
    quota.tokens_exhausted_until = midnight
    quota.save(update_fields=["tokens_exhausted_until", "updated_at"])
    audit_record(
        actor="metering",
        action="quota.exhaust",
        obj=quota,
        tenant_id=quota.tenant_id,
        before=before,
        after={"tokens_exhausted_until": midnight.isoformat(), "tokens_today": used, "limit": quota.tokens_per_day},
    )
    return True
