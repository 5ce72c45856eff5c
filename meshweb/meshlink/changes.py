"""What agents learn of each portal object: its policy-store key and value (the wire shape of agents.proto.portal_link).

One builder per model that agents must know; objects of other models (memberships, API tokens, audit) publish
nothing. A delete also removes what depended on the object (a tenant's models, a model's policies, ...).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.db import models

from agents.proto.access import ApiKeyRecord, InferenceLimits, TenantAccess, api_key_key, tenant_key
from agents.proto.portal_link import STORE_NODE_STATUS
from meshweb.catalog.models import Deployment, Model, ModelRevision
from meshweb.fleet.models import Node
from meshweb.policy.models import AdmissionPolicy, RoutingPolicy, Slo, StrategyModule
from meshweb.tenancy.models import InferenceKey, Quota, Tenant
from meshweb.training.models import TrainingJob


@dataclass(frozen=True, slots=True)
class Put:
    """A key the object writes; value None: the key must not exist (an optional key the object no longer has)."""

    kind: str
    key: str
    value: dict[str, Any] | None


def _tenant(t: Tenant) -> Iterator[Put]:
    yield Put(
        "tenant", f"kv/portal/tenants/{t.pk}", {"id": t.pk, "slug": t.slug, "name": t.name, "active": t.is_active}
    )


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


def _withdrawn(obj: models.Model) -> bool:
    """Objects whose keys leave the store although their row stays (a revoked key is kept for the audit trail)."""
    return isinstance(obj, InferenceKey) and obj.revoked_at is not None


def _model(m: Model) -> Iterator[Put]:
    yield Put(
        "model",
        f"kv/portal/models/{m.pk}",
        {"id": m.pk, "tenant": m.tenant_id, "name": m.name, "aliases": list(m.aliases or [])},
    )


def _revision(r: ModelRevision) -> Iterator[Put]:
    yield Put(
        "revision",
        f"kv/portal/revisions/{r.pk}",
        {
            "id": r.pk,
            "model": r.model_id,
            "revision": r.revision,
            "quant": r.quant,
            "runtime": r.runtime,
            "artifact_uri": r.artifact_uri,
        },
    )


def _deployment(d: Deployment) -> Iterator[Put]:
    zone = d.zone.name if d.zone is not None else ""
    yield Put(
        "deployment",
        f"kv/portal/deployments/{d.pk}",
        {
            "id": d.pk,
            "revision": d.revision_id,
            "zone": d.zone_id,
            "zone_name": zone,
            "node_selector": d.node_selector,
            "gpu_type": d.gpu_type,
            "min_replicas": d.min_replicas,
            "max_replicas": d.max_replicas,
        },
    )
    # The typed placement the scheduler honours: the nodes of the deployment's zone are kept for the model.
    nodes = sorted(Node.objects.filter(zone=d.zone).values_list("name", flat=True)) if d.zone is not None else []
    yield Put(
        "placement",
        f"placements/deployment-{d.pk}",
        {"model": d.revision.model.name, "nodes": nodes, "replicas": d.min_replicas},
    )


def _job(j: TrainingJob) -> Iterator[Put]:
    yield Put(
        "job",
        f"kv/portal/jobs/{j.pk}",
        {
            "id": j.pk,
            "tenant": j.tenant_id,
            "name": j.name,
            "status": j.status,
            "priority": j.priority,
            "workers": j.workers,
            "gpus_per_worker": j.gpus_per_worker,
            "max_runtime_s": j.max_runtime_s,
            "spec": j.spec,
        },
    )


def _slo(s: Slo) -> Iterator[Put]:
    yield Put(
        "slo",
        f"kv/portal/slos/{s.pk}",
        {"tenant": s.tenant_id, "model": s.model_id, "ttft_p99_ms": s.ttft_p99_ms, "latency_p99_ms": s.latency_p99_ms},
    )
    # The typed target routers read: per model of a tenant, or the tenant's default.
    where = f"tenant-{s.tenant_id}" + (f"/model-{s.model_id}" if s.model_id is not None else "")
    yield Put("slo", f"slos/{where}", {"ttft_ms_p99": float(s.ttft_p99_ms)})


def _routing(p: RoutingPolicy) -> Iterator[Put]:
    params = dict(p.params or {})
    params.update(
        tenant=p.tenant_id,
        model=p.model_id,
        ab_split=dict(p.ab_split or {}),
        shadow_strategy=p.shadow_strategy,
        hedging=p.hedging,
        pin_nodes=list(p.pin_nodes or []),
        pin_zones=list(p.pin_zones or []),
        # Targets a router learns through gossip may not say their zone: the pinned zones' nodes stand in for it.
        zone_nodes=sorted(Node.objects.filter(zone__name__in=p.pin_zones).values_list("name", flat=True))
        if p.pin_zones
        else [],
    )
    yield Put("routing", f"routing/policy-{p.pk}", {"strategy": p.strategy, "params": params})
    # Nodes pinned to the model, for the scheduler (routers read the pins from the policy itself).
    pins = list(p.pin_nodes or [])
    yield Put("pinning", f"pinning/policy-{p.pk}", {"model": p.model.name, "nodes": pins} if pins else None)


def _strategy_module(m: StrategyModule) -> Iterator[Put]:
    # Routers materialise it by checksum (router/portal_routing.py) for the policies naming module:<sha256>.
    wasm = base64.b64encode(bytes(m.wasm)).decode()
    yield Put(
        "strategy_module",
        f"kv/portal/strategy-modules/{m.sha256}",
        {"tenant": m.tenant_id, "name": m.name, "sha256": m.sha256, "size": m.size, "wasm_b64": wasm},
    )


def _admission(a: AdmissionPolicy) -> Iterator[Put]:
    yield Put(
        "admission",
        f"kv/portal/admission/{a.pk}",
        {
            "tenant": a.tenant_id,
            "model": a.model_id,
            "max_queue_depth": a.max_queue_depth,
            "max_kv_usage": a.max_kv_usage,
            "retry_after_s": a.retry_after_s,
        },
    )


def _node(n: Node) -> Iterator[Put]:
    value: dict[str, Any] = {"status": STORE_NODE_STATUS[n.status], "reason": n.status_reason[:500]}
    if n.status_changed_at is not None:
        value["since"] = n.status_changed_at.timestamp()
    yield Put("node", node_key(n.name), value)


def node_key(name: str) -> str:
    return f"nodes/{name}"


BUILDERS: dict[type[models.Model], Callable[[Any], Iterator[Put]]] = {
    Tenant: _tenant,
    Quota: _quota,
    Model: _model,
    ModelRevision: _revision,
    Deployment: _deployment,
    TrainingJob: _job,
    Slo: _slo,
    RoutingPolicy: _routing,
    AdmissionPolicy: _admission,
    StrategyModule: _strategy_module,
    Node: _node,
    InferenceKey: _inference_key,
}


def _dependents(obj: models.Model) -> Iterable[models.Model]:
    """Objects deleted with `obj` by cascade whose keys must go too."""
    if isinstance(obj, Tenant):
        yield from Quota.objects.filter(tenant=obj)
        yield from InferenceKey.objects.filter(tenant=obj)
        for m in Model.objects.filter(tenant=obj):
            yield m
            yield from _dependents(m)
        yield from TrainingJob.objects.filter(tenant=obj)
        yield from Slo.objects.filter(tenant=obj, model__isnull=True)
        yield from AdmissionPolicy.objects.filter(tenant=obj, model__isnull=True)
        yield from StrategyModule.objects.filter(tenant=obj)
    elif isinstance(obj, Model):
        for r in ModelRevision.objects.filter(model=obj):
            yield r
            yield from _dependents(r)
        yield from Slo.objects.filter(model=obj)
        yield from RoutingPolicy.objects.filter(model=obj)
        yield from AdmissionPolicy.objects.filter(model=obj)
    elif isinstance(obj, ModelRevision):
        yield from Deployment.objects.filter(revision=obj)


def puts_for(obj: models.Model) -> list[Put]:
    builder = BUILDERS.get(type(obj))
    if builder is None:
        return []
    out = list(builder(obj))
    if isinstance(obj, Tenant):
        quota = Quota.objects.filter(tenant=obj).first()  # created with the tenant, in the same transaction
        if quota is not None:
            out.extend(_quota(quota))
    return out


def changes_for(obj: models.Model, *, deleted: bool) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(kind, key, op, value) for every store key that `obj`'s write touches."""
    if type(obj) not in BUILDERS:
        return []
    deleted = deleted or _withdrawn(obj)
    if not deleted:
        return [(p.kind, p.key, "put" if p.value is not None else "delete", p.value) for p in puts_for(obj)]
    doomed = [*puts_for(obj)]
    for dep in _dependents(obj):
        doomed.extend(puts_for(dep))
    doomed = [p for p in doomed if p.value is not None]  # an optional key the object did not have
    seen: set[str] = set()
    out: list[tuple[str, str, str, dict[str, Any] | None]] = []
    for p in doomed:
        if p.key not in seen:
            seen.add(p.key)
            out.append((p.kind, p.key, "delete", None))
    return out


def snapshot_entries() -> list[Put]:
    """Every key the portal owns, from the current database state."""
    out: list[Put] = []
    for model_cls in BUILDERS:
        qs = model_cls.objects.all()  # type: ignore[attr-defined]
        for obj in qs.order_by("pk").iterator(chunk_size=500):
            if not _withdrawn(obj):
                out.extend(p for p in BUILDERS[model_cls](obj) if p.value is not None)
    return out
