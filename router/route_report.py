"""`GET /infermesh/routing[?model=NAME][&tenant=SLUG]`: how this router routes each model right now, for operators
and the dashboard's routing page. Per model: the policy in force and where it comes from (portal or config), every
target with its fused state, the strategy's current ranking with each term's contribution, and this router's own
counts per target (requests, errors, TTFT). Guarded like /metrics (listen.metrics_token_file) since it names tenants.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from router.view import Target

if TYPE_CHECKING:
    from router.service import RouterService


@dataclass(slots=True)
class TargetCounts:
    requests: int = 0
    errors: int = 0
    ttft_sum_s: float = 0.0
    ttft_n: int = 0


class RouteStats:
    """Monotonic per-target counts of this router (the dashboard turns them into rates between two reads)."""

    def __init__(self) -> None:
        self.by_target: dict[str, TargetCounts] = {}

    def record(self, target_id: str, ok: bool, ttft_s: float | None) -> None:
        c = self.by_target.get(target_id)
        if c is None:
            c = self.by_target[target_id] = TargetCounts()
        c.requests += 1
        if not ok:
            c.errors += 1
        if ttft_s is not None and ok:
            c.ttft_sum_s += ttft_s
            c.ttft_n += 1


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


def _target(t: Target, counts: TargetCounts | None) -> dict[str, Any]:
    st = t.state
    p50 = t.ttft.quantile(0.5) if len(t.ttft) else None
    out: dict[str, Any] = {
        "id": t.id,
        "node": t.node,
        "zone": t.zone,
        "gpu_type": t.gpu_type,
        "mig_profile": t.mig_profile,
        "revision": t.revision,
        "url": t.url,
        "source": t.source,
        "healthy": t.healthy,
        "health": "",
        "waiting": _r(t.waiting, 2),
        "running": _r(t.running, 2),
        "kv_cache_usage": _r(t.kv_cache_usage),
        "gpu_utilization": None,
        "vram_used_frac": None,
        "thermal_margin_c": None,
        "freshness": _r(t.freshness, 3),
        "age_s": None,
        "inflight": t.inflight,
        "requests": counts.requests if counts else 0,
        "errors": counts.errors if counts else 0,
        "ttft_sum_s": _r(counts.ttft_sum_s, 6) if counts else 0.0,
        "ttft_n": counts.ttft_n if counts else 0,
        "ttft_p50_ms": _r(p50 * 1000, 1) if p50 is not None else None,
    }
    if st is not None:
        from agents.proto.infermesh.v1 import state_pb2

        out["health"] = state_pb2.TargetHealth.Name(st.health).removeprefix("TARGET_HEALTH_").lower()
        for name in ("gpu_utilization", "vram_used_frac", "thermal_margin_c"):
            if st.HasField(name):
                out[name] = _r(getattr(st, name), 3)
        out["age_s"] = _r(st.age_s, 2)
    return out


def model_report(svc: RouterService, model: str, tenant: str | None = None) -> dict[str, Any]:
    """One model as one tenant sees it (`tenant`: its slug; else the first tenant the portal has it for)."""
    entries = [(slug, m) for slug, m in svc.portal.models() if m.name == model and tenant in (None, slug)]
    slug, entry = entries[0] if entries else ("", None)
    policy = svc.policy_for(model, entry)
    targets = svc.view.all(model)
    allowed = [t for t in targets if entry is None or entry.serves(t)]
    candidates = [t for t in allowed if t.healthy] or allowed
    arms = dict(policy.ab_split) if policy.ab_split else {policy.strategy: 100.0}
    ranking = []
    main = max(arms, key=lambda n: arms[n])
    for pos, (t, score, terms) in enumerate(svc.ranker.explain(model, main, candidates), start=1):
        ranking.append(
            {"rank": pos, "target": t.id, "score": _r(score, 6), "terms": {k: _r(v, 6) for k, v in terms.items()}}
        )
    return {
        "model": model,
        "tenant": slug,
        "aliases": list(entry.aliases) if entry else [],
        "revisions": sorted(entry.revisions) if entry else [],
        "placements": [p.describe() for p in entry.placements] if entry else [],
        "policy": {
            "source": "portal" if entry is not None and entry.policy is not None else "config",
            "strategy": policy.strategy,
            "ab_split": arms if policy.ab_split else {},
            "shadow_strategy": policy.shadow_strategy or "",
            "hedging": policy.hedging.enabled,
            "hedge_max_delay_ms": policy.hedging.max_delay_ms,
            "pin_nodes": sorted(entry.policy.pin_nodes) if entry and entry.policy else [],
            "pin_zones": sorted(entry.policy.pin_zones) if entry and entry.policy else [],
            "slo_ttft_ms": entry.slo_ttft_ms if entry else None,
        },
        "ranked_by": main,
        "ranking": ranking,
        # each A/B arm's and shadow's win rate against the live strategy, from this router's outcomes
        "strategies": svc.ranker.book.describe(model),
        "targets": [{**_target(t, svc.route_stats.by_target.get(t.id)), "allowed": t in allowed} for t in targets],
    }


def report(svc: RouterService, model: str | None = None, tenant: str | None = None) -> dict[str, Any]:
    names = [model] if model else sorted(set(svc.view.models()) | {m.name for _, m in svc.portal.models()})
    return {
        "at": time.time(),
        "portal_revision": svc.portal.revision,
        "portal_version": svc.portal.version,
        "local_only": svc.view.local_only,
        # this router's place in the mesh: the network term's source, and gossip's degraded (local-only) mode
        "mesh": {"node": svc.ranker.mesh.node, "zone": svc.ranker.mesh.zone, "degraded": svc.ranker.mesh.degraded},
        "models": [model_report(svc, n, tenant) for n in names],
    }


def strategies_report(svc: RouterService, model: str | None = None) -> dict[str, Any]:
    """`GET /infermesh/strategies`: the strategies this router holds and each model's challengers' win rates."""
    names = [model] if model else sorted(set(svc.view.models()) | {m.name for _, m in svc.portal.models()})
    policies = []
    for name in names:
        entries = [m for _, m in svc.portal.models() if m.name == name]
        policies.append((name, svc.policy_for(name, entries[0] if entries else None)))
    return {"at": time.time(), "node": svc.ranker.mesh.node, **svc.ranker.report(policies)}


def add_routes(app: web.Application, svc: RouterService) -> None:
    token = svc.cfg.listen.metrics_token()
    secret = token.encode() if token is not None else None

    async def routing(request: web.Request) -> web.Response:
        if secret is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), secret):
                return web.json_response(
                    {"error": f"{request.path} needs the metrics bearer token (listen.metrics_token_file)"},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        if request.path == "/infermesh/strategies":
            return web.json_response(strategies_report(svc, request.query.get("model") or None))
        return web.json_response(report(svc, request.query.get("model") or None, request.query.get("tenant") or None))

    app.router.add_get("/infermesh/routing", routing)
    app.router.add_get("/infermesh/strategies", routing)
