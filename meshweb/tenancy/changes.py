"""What agents learn of tenants, their quotas and inference keys (registered with the outbox at app ready)."""

from __future__ import annotations

from collections.abc import Iterator

from agents.proto.access import ApiKeyRecord, InferenceLimits, TenantAccess, api_key_key, tenant_key
from meshweb.core.changes import Put, register, register_dependents
from meshweb.tenancy.models import InferenceKey, Quota, Tenant


def _tenant(t: Tenant) -> Iterator[Put]:
    yield Put(
        "tenant", f"kv/portal/tenants/{t.pk}", {"id": t.pk, "slug": t.slug, "name": t.name, "active": t.is_active}
    )


def _tenant_quota(t: Tenant) -> Iterator[Put]:
    quota = Quota.objects.filter(tenant=t).first()  # created with the tenant, in the same transaction
    if quota is not None:
        yield from _quota(quota)


def _quota(q: Quota) -> Iterator[Put]:
    # What routers enforce goes in the tenant's access record (`_access`); the scheduler's limits under kv/.
    yield Put(
        "quota",
        f"kv/portal/quotas/{q.tenant_id}",
        {
            "tenant": q.tenant_id,
            "gpus_max": q.gpus_max,
            "gpu_hours_per_period": q.gpu_hours_per_period,
            "period_days": q.period_days,
            "concurrent_jobs_max": q.concurrent_jobs_max,
        },
    )
    yield from _access(q)


def _limits(rps: float | None, tpm: int | None, conc: int | None, tpd: int | None) -> InferenceLimits:
    # The portal's 0 (quotas) and null (keys) both mean "no limit of that kind".
    return InferenceLimits(
        requests_per_s=rps or None, tokens_per_min=tpm or None, concurrent=conc or None, tokens_per_day=tpd or None
    )


def _access(q: Quota) -> Iterator[Put]:
    t = q.tenant
    record = TenantAccess(
        id=t.pk,
        slug=t.slug,
        active=t.is_active,
        priority=q.priority,  # type: ignore[arg-type]
        limits=_limits(q.requests_per_s, q.tokens_per_min, q.concurrent_requests_max, q.tokens_per_day),
        exhausted_until=q.tokens_exhausted_until.timestamp() if q.tokens_exhausted_until else None,
        regions=list(t.regions) if t.regions is not None else None,
    )
    yield Put("tenant_access", tenant_key(t.pk), record.model_dump(mode="json", exclude_none=True))


def _inference_key(k: InferenceKey) -> Iterator[Put]:
    record = ApiKeyRecord(
        id=k.pk,
        tenant=k.tenant_id,
        prefix=k.prefix,
        name=k.name,
        models=list(k.model_names or []),
        expires_at=k.expires_at.timestamp() if k.expires_at else None,
        limits=_limits(k.requests_per_s, k.tokens_per_min, k.concurrent_requests_max, k.tokens_per_day),
    )
    yield Put("inference_key", api_key_key(k.key_hash), record.model_dump(mode="json", exclude_none=True))


def register_changes() -> None:
    register(Tenant, _tenant, related=_tenant_quota)
    register(Quota, _quota)
    register(InferenceKey, _inference_key, withdrawn=lambda k: k.revoked_at is not None)
    register_dependents(Tenant, "tenancy.quota", lambda t: Quota.objects.filter(tenant=t))
    register_dependents(Tenant, "tenancy.inferencekey", lambda t: InferenceKey.objects.filter(tenant=t))
