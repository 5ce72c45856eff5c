"""What agents learn of SLOs, routing and admission policies and strategy modules (registered at app ready)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

from meshweb.catalog.models import Model
from meshweb.core.changes import Put, register, register_dependents
from meshweb.fleet.models import Node
from meshweb.policy.models import AdmissionPolicy, RoutingPolicy, Slo, StrategyModule
from meshweb.tenancy.models import Tenant


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


def register_changes() -> None:
    register(Slo, _slo)
    register(RoutingPolicy, _routing)
    register(AdmissionPolicy, _admission)
    register(StrategyModule, _strategy_module)
    # A tenant's defaults (no model) go with the tenant; per-model ones with the model.
    register_dependents(Tenant, "policy.slo", lambda t: Slo.objects.filter(tenant=t, model__isnull=True))
    register_dependents(
        Tenant, "policy.admissionpolicy", lambda t: AdmissionPolicy.objects.filter(tenant=t, model__isnull=True)
    )
    register_dependents(Tenant, "policy.strategymodule", lambda t: StrategyModule.objects.filter(tenant=t))
    register_dependents(Model, "policy.slo", lambda m: Slo.objects.filter(model=m))
    register_dependents(Model, "policy.routingpolicy", lambda m: RoutingPolicy.objects.filter(model=m))
    register_dependents(Model, "policy.admissionpolicy", lambda m: AdmissionPolicy.objects.filter(model=m))
