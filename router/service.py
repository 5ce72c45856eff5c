"""The per-request pipeline shared by every ingress (OpenAI HTTP, KServe v2 HTTP and gRPC, WebSocket).

admit: model known? admission (queues vs thresholds, by SLO class) -> tenant quota -> rank with the model's
routing policy. open: forward with retries and hedging. finish: release quota, metrics, access log, outcome report.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agents.proto.access import InferenceLimits
from agents.strategies.outcomes import Trial
from router.access import AccessState, AccessWatcher
from router.agentlink import AgentLink, Outcome
from router.cells import CellRoute, CellRouter, CellWatcher
from router.config import RouterConfig, RoutingPolicy, TenantConfig
from router.core import spill_proof
from router.core.admission import AdmissionController, TargetLoad
from router.core.fairshare import FairQueue, SlotShare
from router.core.quota import TenantLimits, estimate_tokens
from router.forward import Forwarder, Winner
from router.meshview import MeshWatcher
from router.metering import UsageReporter
from router.metrics import (
    ADMISSION_REFUSED,
    AUTH_REFUSED,
    ERRORS,
    HELD,
    INFLIGHT,
    INFLIGHT_LIMIT,
    LATENCY,
    REQUESTS,
    SPILLED_IN,
    TOKENS,
    UNKNOWN_MODEL,
    add,
    child,
    observe,
)
from router.obs import access_log
from router.pd import Disaggregation
from router.portal_routing import CatalogModel, PortalRouting, PortalWatcher
from router.prefix import RequestPrefix
from router.quota import Lease, QuotaManager
from router.ranking import Booking, Ranker, to_strategy_view
from router.route_report import RouteStats
from router.upstream import UpstreamPool
from router.view import Target, TargetView

PRIORITIES = ("batch", "standard", "critical")


class Refusal(Exception):
    """The router answers this request itself: auth, validation, admission and quota failures."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.param = param


@dataclass(slots=True)
class Tenant:
    name: str
    priority: str
    models: frozenset[str] = frozenset()  # empty = every model
    key: str = ""  # quota name of the key's own limits ("key:<prefix>"), "" when it has none
    scoped: bool = False  # a portal key scoped to `models`: other models are refused with 403, not hidden
    key_prefix: str = ""  # the portal key's prefix, for usage reports
    exhausted_until: float = 0.0  # the portal saw the tenant's daily tokens spent, across routers, until then
    regions: frozenset[str] | None = None  # data residency: the regions whose cells may serve it (None: any)

    def may_use(self, model: str) -> bool:
        return not self.models or model in self.models


@dataclass(slots=True)
class Ticket:
    """An admitted request on its way to a runtime."""

    api: str
    model: str
    tenant: str
    priority: str
    corr_id: str
    policy: RoutingPolicy
    lease: Lease | None
    est_tokens: float
    key_lease: Lease | None
    ranked: list[Target]
    strategy: str
    t0: float
    trace_id: str = ""
    key: str = ""  # prefix of the portal key used, for usage reports
    deadline: float = float("inf")  # monotonic time by which the whole answer must be through
    winner: Winner | None = None
    status: int = 0
    cause: str = ""
    bytes_out: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cancelled: bool = False
    extra: dict[str, object] = field(default_factory=dict)
    trial: Trial | None = None  # the decision, for the strategies' win rates (router/ranking.py)
    prefix: RequestPrefix | None = None  # the prompt's KV-block hashes (disaggregated serving picks pairs by them)
    holds_slot: bool = False  # counted in its tenant's share of the model's batch slots until it finishes
    booking: Booking | None = None  # where the strategy booked it; follows its attempts (router/ranking.py)


def _tenant_index(tenants: list[TenantConfig]) -> dict[str, Tenant]:
    out: dict[str, Tenant] = {}
    for t in tenants:
        for h in t.key_hashes():
            out[h] = Tenant(t.name, t.priority, frozenset(t.models))
    return out


def _limits(lim: InferenceLimits) -> TenantLimits | None:
    out = TenantLimits(
        lim.requests_per_s,
        None,
        float(lim.tokens_per_min) if lim.tokens_per_min else None,
        lim.concurrent,
        float(lim.tokens_per_day) if lim.tokens_per_day else None,
    )
    return None if out.unlimited() else out


class RouterService:
    def __init__(self, cfg: RouterConfig, pool: UpstreamPool) -> None:
        self.cfg = cfg
        self.view = TargetView(cfg.targets)
        self.quotas = QuotaManager(cfg.tenants, cfg.redis)
        self.forwarder = Forwarder(pool, cfg.outlier)
        self.ranker = Ranker(self.view, [cfg.default_policy, *cfg.policies.values()])
        self.ranker.mesh.node, self.ranker.mesh.zone = cfg.agent.node, cfg.agent.zone
        self.pd = Disaggregation(cfg.disaggregation, self.view, self.forwarder, cfg.cache.block_size)
        self._mesh_watcher: MeshWatcher | None = None
        # which cell serves a request (router/cells.py), from the agent's WAN tier
        # spills are signed with the first secret, verified with any (router/core/spill_proof.py); none: unsigned
        self._mesh_secrets = cfg.cells.mesh_secrets()
        self._mesh_secret = self._mesh_secrets[0] if self._mesh_secrets else None
        self.cells = CellRouter(cfg.cells.spill_at, signed=self._mesh_secret is not None, speed=cfg.cells.speed())
        self._spill_replays = spill_proof.ReplayGuard(cfg.cells.spill_proof_max_age_s)
        self._cell_watcher: CellWatcher | None = None
        self.agent = AgentLink(self.view, cfg.agent)
        # Models and routing policies from the portal, mirrored from the agent's store (router/portal_routing.py).
        self.portal = PortalRouting()
        self._portal_watcher = PortalWatcher(self.portal, cfg.agent, self._portal_changed)
        self.route_stats = RouteStats()
        self._tenants = _tenant_index(cfg.tenants)
        self._digests: dict[str, str] = {}  # API key -> its SHA-256, for the keys seen lately (per worker, no lock)
        # Tenants, keys and quotas from the portal, mirrored from the agent's store (router/access.py).
        self.access = AccessState()
        self._access_watcher: AccessWatcher | None = None
        self.usage = UsageReporter(cfg.usage, cfg.agent.node)
        self._admission: dict[int, AdmissionController] = {}
        # Requests held for a batch slot, per model and SLO class, shared among tenants by weighted DRR.
        self._held: dict[str, dict[str, FairQueue[asyncio.Future[None]]]] = {}
        self._shares: dict[str, SlotShare] = {}  # per model: which tenants hold its slots, what light ones are kept
        self.forwarder.on_slot_free = self.slot_freed
        self.inflight = 0
        self._unknown_logged: set[str] = set()  # model names refused as unknown, each logged once (bounded)
        self._reports: list[tuple[Ticket, float]] = []  # finished requests to report at the end of this loop turn
        INFLIGHT_LIMIT.set(cfg.listen.max_inflight)  # per worker; summed over live workers like INFLIGHT

    async def start(self) -> None:
        await self.quotas.start()
        await self.agent.start()
        if self.cfg.agent.address:
            # the network cost from this router's node and gossip's degraded flag (router/meshview.py)
            self._mesh_watcher = MeshWatcher(
                self.agent.channel, self.ranker.mesh, lambda: None, refresh_s=self.cfg.agent.mesh_refresh_s
            )
            self._mesh_watcher.start()
            self._cell_watcher = CellWatcher(self.agent.channel, self.cells, refresh_s=self.cfg.cells.refresh_s)
            self._cell_watcher.start()
        self._portal_watcher.start()
        if self.cfg.agent.address:
            self._access_watcher = AccessWatcher(
                self.agent.channel,
                self.access,
                self.reindex_access,
                reconnect_min_s=self.cfg.agent.reconnect_min_s,
                reconnect_max_s=self.cfg.agent.reconnect_max_s,
            )
            self._access_watcher.start()
        self.usage.start()

    async def close(self) -> None:
        if self._mesh_watcher is not None:
            await self._mesh_watcher.close()
        if self._cell_watcher is not None:
            await self._cell_watcher.close()
        await self._portal_watcher.close()
        if self._access_watcher is not None:
            await self._access_watcher.close()
        await self.usage.close()
        await self.agent.close()
        await self.quotas.close()

    def reindex_access(self) -> None:
        """After a change of the portal's records: the portal's tenants replace YAML tenants of the same name
        (keys, quotas, priority); the quotas of every tenant and key are brought to what is in force now."""
        portal = self.access.tenant_by_slug()
        self._tenants = {h: t for h, t in _tenant_index(self.cfg.tenants).items() if t.name not in portal}
        desired: dict[str, TenantLimits | None] = {}
        for t in self.cfg.tenants:
            if t.name not in portal:
                q = t.quotas
                desired[t.name] = TenantLimits(q.requests_per_s, q.burst_requests, q.tokens_per_min, q.concurrent)
        for slug, ta in portal.items():
            desired[slug] = _limits(ta.limits)
        for rec in self.access.keys.values():
            desired[f"key:{rec.prefix}"] = _limits(rec.limits)
        for name in self.quotas.names() - desired.keys():
            self.quotas.set_limits(name, None)
        for name, lim in desired.items():
            self.quotas.set_limits(name, lim)

    def _refuse_auth(self, status: int, code: str, message: str) -> Refusal:
        AUTH_REFUSED.labels(code).inc()
        return Refusal(status, code, message)

    # -- the portal's models and policies -------------------------------------------------------------------------
    def _portal_changed(self) -> None:
        bad = self.ranker.ensure(self.portal.strategies())
        if bad:  # the portal checks names against its own list; a router of another version may lack one
            self.log_error("portal policy names strategies this router cannot load", strategies=bad)
        self._admission.clear()
        self.forwarder.policies_changed()

    def resolve_model(self, tenant: Tenant, name: str) -> tuple[str, CatalogModel | None]:
        """The model a requested name means for this tenant: its catalog model (by name or alias) when the portal
        governs the tenant's models, the name itself otherwise."""
        if not self.portal.knows(tenant.name):
            return name, None
        entry = self.portal.resolve(tenant.name, name)
        if entry is None:
            raise Refusal(404, "model_not_found", f"model {name!r} is not served here", param="model")
        return entry.name, entry

    def policy_for(self, model: str, entry: CatalogModel | None) -> RoutingPolicy:
        if entry is None:
            return self.cfg.policy_for(model)
        return self.portal.policy_for(entry, self.cfg.policy_for(model))

    def candidates_for(self, model: str, entry: CatalogModel | None) -> list[Target]:
        if entry is None:
            return self.view.candidates(model) or self.view.all(model)
        allowed = [t for t in self.view.all(model) if entry.serves(t)]
        if not allowed and self.view.all(model):
            raise Refusal(
                503,
                "no_target",
                f"model {model!r} has no target on its pinned nodes or zones, or of a deployed revision",
                retry_after="1",
            )
        return [t for t in allowed if t.healthy] or allowed

    # -- auth -----------------------------------------------------------------------------------------------------
    def authenticate(self, headers: Mapping[str, str], query_key: str | None = None) -> Tenant:
        key = query_key
        auth = headers.get("Authorization") or headers.get("authorization")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Refusal(401, "invalid_api_key", "Authorization header must be 'Bearer <api key>'")
            key = value.strip()
        elif headers.get("x-api-key"):
            key = headers["x-api-key"]
        if not key:
            if not self.cfg.auth_required:
                return Tenant("anonymous", "standard")
            raise self._refuse_auth(401, "missing_api_key", "missing API key: send 'Authorization: Bearer <api key>'")
        digest = self._digests.get(key)
        if digest is None:
            digest = hashlib.sha256(key.encode()).hexdigest()
            if len(self._digests) >= 4096:  # bounded: a flood of made-up keys only costs a hash each
                self._digests.clear()
            self._digests[key] = digest
        rec = self.access.keys.get(digest)
        if rec is not None:
            ta = self.access.tenants.get(rec.tenant)
            if ta is None:
                raise self._refuse_auth(401, "invalid_api_key", "invalid API key (its tenant is unknown here)")
            if not ta.active:
                raise self._refuse_auth(403, "tenant_suspended", f"tenant {ta.slug!r} is suspended")
            if rec.expires_at is not None and rec.expires_at <= time.time():
                raise self._refuse_auth(401, "expired_api_key", f"API key {rec.prefix} has expired")
            key_quota = f"key:{rec.prefix}" if _limits(rec.limits) is not None else ""
            return Tenant(
                ta.slug,
                ta.priority,
                frozenset(rec.models),
                key=key_quota,
                scoped=bool(rec.models),
                key_prefix=rec.prefix,
                exhausted_until=ta.exhausted_until or 0.0,
                regions=frozenset(ta.regions) if ta.regions is not None else None,
            )
        tenant = self._tenants.get(digest)
        if tenant is None:
            raise self._refuse_auth(401, "invalid_api_key", "invalid API key")
        return tenant

    def require_model(self, tenant: Tenant, model: str) -> None:
        """The one check of which models a tenant may see, for inference, metadata and readiness alike: another
        tenant's model answers exactly like an unknown one, so its existence is not revealed."""
        if not self.view.has_model(model):
            self._unknown_model(model)
            raise Refusal(404, "model_not_found", f"model {model!r} is not served here", param="model")
        if not tenant.may_use(model):
            if tenant.scoped:  # the tenant's own key: say why, the model is the tenant's to know
                raise Refusal(403, "model_not_allowed", f"this API key is not scoped to model {model!r}", param="model")
            raise Refusal(404, "model_not_found", f"model {model!r} is not served here", param="model")

    @staticmethod
    def priority_for(tenant: Tenant, requested: str | None) -> str:
        """A request may lower its SLO class below its tenant's, never raise it."""
        if not requested:
            return tenant.priority
        if requested not in PRIORITIES:
            raise Refusal(400, "invalid_priority", f"x-infermesh-priority must be one of {', '.join(PRIORITIES)}")
        return min(requested, tenant.priority, key=PRIORITIES.index)

    def _admission_for(self, policy: RoutingPolicy) -> AdmissionController:
        ac = self._admission.get(id(policy))
        if ac is None:
            a = policy.admission
            ac = AdmissionController(
                a.max_queue_per_target, a.priority_factor, self.cfg.listen.max_inflight, a.max_retry_after_s
            )
            self._admission[id(policy)] = ac
        return ac

    # -- admit ------------------------------------------------------------------------------------------------------
    async def admit(
        self,
        *,
        api: str,
        model: str,
        tenant: Tenant,
        priority: str,
        prompt_chars: int,
        max_tokens: int | None,
        corr_id: str,
        trace_id: str = "",
        deadline_s: float | None = None,
        prefix: RequestPrefix | Callable[[bool], RequestPrefix] | None = None,
        spilled_from: str | None = None,
        spill_signature: str | None = None,
    ) -> Ticket:
        t0 = time.monotonic()
        try:
            model, entry = self.resolve_model(tenant, model)
            self.require_model(tenant, model)
        except Refusal as r:
            REQUESTS.labels(model="", tenant=tenant.name, api=api, code=str(r.status)).inc()
            raise
        policy = self.policy_for(model, entry)
        candidates = self.candidates_for(model, entry)
        route = self._cell_route(model, tenant, candidates, spilled_from)
        remote_first = route is not None and route.home_at != 0  # the other cell admits it, by its own load
        decision = self._admission_for(policy).decide(
            (TargetLoad(t.est_waiting(), t.service_rate or t.service_rate_rps) for t in candidates),
            priority,
            self.inflight,
        )
        if not decision.admitted and not remote_first:
            self._refused(model, tenant.name, api, decision.reason, tenant.key_prefix)
            raise Refusal(
                429,
                "overloaded",
                f"model {model!r} is overloaded ({decision.reason}); retry after {decision.retry_after_s}s",
                retry_after=str(decision.retry_after_s),
            )
        if tenant.exhausted_until > time.time():
            self._refused(model, tenant.name, api, "tokens_per_day", tenant.key_prefix)
            wait = str(max(1, int(tenant.exhausted_until - time.time()) + 1))
            raise Refusal(
                429,
                "quota_exceeded",
                f"tenant {tenant.name!r} has used its tokens for the day (counted across routers); retry after {wait}s",
                retry_after=wait,
            )
        est = estimate_tokens(prompt_chars, max_tokens)
        charged_here = spilled_from is None or not self._spill_charged(spill_signature, corr_id, tenant.name)
        q, lease = await self.quotas.acquire(tenant.name, est) if charged_here else (None, None)
        if q is not None and not q.allowed:
            self._refused(model, tenant.name, api, q.reason, tenant.key_prefix)
            raise Refusal(
                429,
                "quota_exceeded",
                f"tenant {tenant.name!r} is over its {q.reason} quota; retry after {q.retry_after_header}s",
                retry_after=q.retry_after_header,
            )
        key_lease = None
        if tenant.key and charged_here:
            kq, key_lease = await self.quotas.acquire(tenant.key, est)
            if not kq.allowed:
                await self.quotas.release(lease, 0.0)
                self._refused(model, tenant.name, api, "key_" + kq.reason, tenant.key_prefix)
                raise Refusal(
                    429,
                    "quota_exceeded",
                    f"this API key is over its {kq.reason} limit; retry after {kq.retry_after_header}s",
                    retry_after=kq.retry_after_header,
                )
        self.inflight += 1
        add(INFLIGHT)
        booking: Booking | None = None
        try:
            if callable(prefix):  # `prefix(hashes)`: the prompt is tokenized and hashed only where something reads it
                prefix = prefix(self.ranker.reads_prompt(policy) or self.pd.serves(model, api))
            if policy.hold_when_full and not remote_first:
                await self._hold_for_slot(model, candidates, priority, policy, tenant.name)
            ranked: list[Target]
            if self.pd.serves(model, api):  # the pair is chosen when the request is forwarded (router/pd.py)
                ranked, strategy = [], "pd"
            else:
                # holding at full batches, the targets with a free slot go first; the ranker orders them before
                # the strategy books the first (a cell route's order is settled below)
                hold_local = policy.hold_when_full and route is None
                ranked, strategy = self.ranker.rank(
                    model, self.pd.without_prefill(candidates), policy, corr_id, prompt_chars, max_tokens, prefix,
                    usable=(lambda t: self._usable(t, model)) if hold_local else None,
                )  # fmt: skip
                booking = self.ranker.booking
            if route is not None:
                ranked, strategy = self._with_cells(route, ranked, strategy)
        except BaseException:
            self.inflight -= 1
            add(INFLIGHT, -1.0)
            if booking is not None:
                self.ranker.settle(booking)
            await self.quotas.release(lease, None)
            await self.quotas.release(key_lease, None)
            raise
        holds_slot = policy.hold_when_full and not remote_first
        if holds_slot:
            self._share(model).started(tenant.name)
        if policy.hold_when_full and route is not None and len(ranked) > 1:
            # Targets that can start the request now go first, in the strategy's order.
            flags = [(t, self._usable(t, model)) for t in ranked]
            ranked = [t for t, ok in flags if ok] + [t for t, ok in flags if not ok]
        return Ticket(
            api=api,
            model=model,
            tenant=tenant.name,
            priority=priority,
            corr_id=corr_id,
            policy=policy,
            lease=lease,
            est_tokens=est,
            key_lease=key_lease,
            key=tenant.key_prefix,
            ranked=ranked,
            strategy=strategy,
            trial=self.ranker.trial if ranked else None,
            booking=booking,
            prefix=prefix,
            t0=t0,
            trace_id=trace_id,
            deadline=t0 + min(policy.deadline_s, deadline_s if deadline_s is not None else policy.deadline_s),
            holds_slot=holds_slot,
        )

    def sign_spill(self, ticket: Ticket) -> str | None:
        """The signed proof a request this router spills carries: it charged the tenant here (None: no secret)."""
        if self._mesh_secret is None:
            return None
        return spill_proof.sign(self._mesh_secret, ticket.corr_id, ticket.tenant, time.time())

    def _spill_charged(self, proof: str | None, corr_id: str, tenant: str) -> bool:
        """Whether a request another cell's router spilled here was charged to its tenant there (a valid, fresh,
        first-seen proof); anything else is charged here as an ordinary request. Counted by verdict."""
        now = time.time()
        verdict = spill_proof.verify(
            self._mesh_secrets, proof, corr_id, tenant, now, self.cfg.cells.spill_proof_max_age_s
        )
        if verdict is spill_proof.Verdict.VERIFIED and not self._spill_replays.first_use(proof or "", now):
            verdict = spill_proof.Verdict.REPLAYED
        SPILLED_IN.labels(verdict.value).inc()
        return verdict is spill_proof.Verdict.VERIFIED

    def _cell_route(
        self, model: str, tenant: Tenant, candidates: list[Target], spilled_from: str | None
    ) -> CellRoute | None:
        """Another cell for this request, when this one is saturated, failed, or outside the tenant's regions
        (router/cells.py); None: this cell serves it. No allowed cell at all: 503 naming the regions."""
        cells = self.cells
        if not cells.view.known:
            return None
        route = cells.route(model, tenant.regions, cells.home_load(candidates, to_strategy_view), spilled_from)
        if route is not None and not route.choice.order:
            raise Refusal(
                503,
                "residency_unavailable",
                f"model {model!r}: no cell in the regions tenant {tenant.name!r} may be served in "
                f"({', '.join(sorted(tenant.regions or ()))}) can serve it now",
                retry_after="1",
            )
        if route is not None and route.choice.order[0].cell != cells.view.cell and self.usage.enabled:
            self.usage.meter.spill(
                wall=time.time(), from_cell=cells.view.cell, to_cell=route.choice.order[0].cell,
                reason=route.choice.reason,
            )  # fmt: skip
        return route

    def _with_cells(self, route: CellRoute, ranked: list[Target], strategy: str) -> tuple[list[Target], str]:
        """The other cells' ingress targets in the route's order, this cell's ranked targets where it comes (if at
        all); the local decision leaves the strategy's win rates, and its booking stays only if the request is sent
        to the target it booked (the first attempt settles it: `Ranker.attempt`)."""
        self.ranker.trial = None
        order = list(route.remote)
        if route.home_at is not None:
            order[route.home_at : route.home_at] = ranked
        return order, "cells"

    def _usable(self, t: Target, model: str) -> int:
        """0: cannot start the request now; else the target's slot tier (2 a free slot, 1 a probe of a learned
        slot count: `Target.slot_tier`), the higher first."""
        tier = t.slot_tier()
        if not tier or not self.forwarder.is_slow(t, model):
            return tier
        # A straggler still gets one chance in 20 so that its TTFT window sees it recover.
        t.slow_skips += 1
        return tier if t.slow_skips % 20 == 0 else 0

    def _fair_weight(self, tenant: str) -> float | None:
        """A tenant's share of freed slots: its requests/s quota (None: as much as the heaviest waiting)."""
        lim = self.quotas.limits_of(tenant)
        return lim.requests_per_s if lim is not None else None

    def _share(self, model: str) -> SlotShare:
        share = self._shares.get(model)
        if share is None:
            share = self._shares[model] = SlotShare()
        return share

    def _may_start(self, model: str, candidates: list[Target], tenant: str) -> bool:
        """Whether `tenant`'s request may take a free batch slot now: one is usable, and free beyond those kept for
        light tenants (router/core/fairshare.py's SlotShare; a target that does not say its slots keeps none)."""
        if not any(self._usable(t, model) for t in candidates):
            return False
        share = self._shares.get(model)
        if share is None or tenant not in share.serving:  # nothing is kept from a tenant with nothing in service
            return True
        free, total = 0, 0
        for t in candidates:
            slots = t.slots
            if slots is None:
                return True
            total += slots
            free += max(0, slots - t.inflight)
        return free > share.reserved(tenant, total, time.monotonic())

    async def _hold_for_slot(
        self, model: str, candidates: list[Target], priority: str, policy: RoutingPolicy, tenant: str
    ) -> None:
        queues = self._held.get(model)
        if queues is None:
            queues = self._held[model] = {p: FairQueue() for p in PRIORITIES}
        self._share(model).arrived(tenant, time.monotonic())
        held = sum(map(len, queues.values()))
        if not held and self._may_start(model, candidates, tenant):
            return
        limit = policy.admission.max_queue_per_target * max(1, len(candidates))
        limit *= policy.admission.priority_factor.get(priority, 1.0)
        fq = queues[priority]
        if held >= limit:
            # Full: the tenant holding the most of this class's queue gives way, not whoever comes next.
            victim = fq.victim(tenant)
            evicted = fq.pop_newest(victim) if victim is not None and victim != tenant else None
            if evicted is None:
                raise Refusal(
                    429, "overloaded", f"model {model!r} is overloaded (router queue {held})", retry_after="1"
                )
            if not evicted.done():
                evicted.set_exception(
                    Refusal(429, "overloaded", f"model {model!r} is overloaded (fair share)", retry_after="1")
                )
        loop = asyncio.get_running_loop()
        ttl = policy.admission.queue_ttl_s
        wait_s = min(policy.first_byte_timeout_s, ttl) if ttl else policy.first_byte_timeout_s
        deadline = loop.time() + wait_s
        weight = self._fair_weight(tenant)
        first = True
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            # A request woken for a slot it should not take waits again at its tenant's head, keeping its turn.
            fq.push(tenant, fut, weight, front=not first)
            if first and held and self._may_start(model, candidates, tenant):
                # A slot is free that the held requests may not take (kept for a light tenant, maybe this one):
                # wake the next in fair order, which is this request when it is the one the slot is kept for.
                self.slot_freed(model)
            first = False
            HELD.inc()
            try:
                await asyncio.wait_for(fut, max(0.001, deadline - loop.time()))
            except TimeoutError:
                if ttl and ttl < policy.first_byte_timeout_s:
                    msg = f"held {ttl:g}s for model {model!r} without a free batch slot"
                    raise Refusal(429, "queue_ttl", msg, retry_after="1") from None
                raise Refusal(
                    504,
                    "queue_timeout",
                    f"no batch slot freed for model {model!r} within {policy.first_byte_timeout_s:g}s",
                ) from None
            finally:
                HELD.dec()
                if not fut.done():
                    fut.cancel()
                fq.remove(tenant, fut)
            if self._may_start(model, candidates, tenant):
                return
            # Only a slow target (a throttled GPU) freed a slot: wait for a good one, unless all of them are slow.
            if all(self.forwarder.is_slow(t, model) for t in candidates):
                return

    def slot_freed(self, model: str) -> None:
        """A target of `model` finished a request: wake the longest-held request of the highest SLO class."""
        queues = self._held.get(model)
        if not queues:
            return
        for p in reversed(PRIORITIES):  # critical first; within a class, tenants by weighted DRR
            q = queues[p]
            while (fut := q.pop()) is not None:
                if not fut.done():
                    fut.set_result(None)
                    return

    def _refused(self, model: str, tenant: str, api: str, reason: str, key: str = "") -> None:
        ADMISSION_REFUSED.labels(model, tenant, reason).inc()
        REQUESTS.labels(model=model, tenant=tenant, api=api, code="429").inc()
        if self.usage.enabled:
            self.usage.meter.record(wall=time.time(), tenant=tenant, key=key, model=model, status=429)

    async def open(
        self,
        ticket: Ticket,
        path: str,
        body_for: Callable[[Target], bytes],
        headers: Mapping[str, str],
        hedge_ok: bool = True,
    ) -> Winner:
        fbt = min(ticket.policy.first_byte_timeout_s, max(0.001, ticket.deadline - time.monotonic()))
        booking = ticket.booking
        on_attempt = None if booking is None else (lambda t, sent: self.ranker.attempt(booking, t, sent))
        w = await self.forwarder.open(
            ticket.ranked, path, body_for, headers, ticket.policy, ticket.model, hedge_ok, fbt, on_attempt
        )
        ticket.winner = w
        self.ranker.observe(ticket.model, ticket.strategy, w.ttft)
        return w

    async def finish(self, ticket: Ticket) -> None:
        """Exactly once per admitted request, whatever happened: what the next request depends on (in-flight
        counts, batch slots, quota) now; what only reports it (learning, win rates, metrics, the access log, usage,
        the agent's outcome) once the answer is out, at the end of this event-loop turn (`_report`)."""
        self.inflight -= 1
        add(INFLIGHT, -1.0)
        if ticket.booking is not None:
            self.ranker.settle(ticket.booking)
        elif ticket.ranked:  # disaggregated serving's decode target (router/app.py `_prefill`)
            self.ranker.finished(ticket.ranked[0].id)
        now = time.monotonic()
        w = ticket.winner
        if ticket.holds_slot:
            self._share(ticket.model).done(ticket.tenant)
        if w is not None:
            w.target.inflight -= 1
            w.target.on_done(now)
            self.slot_freed(ticket.model)
        used = None
        if ticket.completion_tokens is not None:
            used = float(ticket.completion_tokens + (ticket.prompt_tokens or 0))
        if w is not None and w.target.source == "cell" and self._mesh_secret is None:
            used = 0.0  # unsigned: the serving cell's router charges it (again); signed, charged here alone
        await self.quotas.release(ticket.lease, used)
        await self.quotas.release(ticket.key_lease, used)
        if not self._reports:
            try:
                asyncio.get_running_loop().call_soon(self._report_all)
            except RuntimeError:  # no event loop: at once
                self._report(ticket, now)
                return
        self._reports.append((ticket, now))

    def _report_all(self) -> None:
        reports = self._reports
        self._reports = []
        for ticket, now in reports:
            try:
                self._report(ticket, now)
            except Exception:  # one request's report must not cost the others theirs
                logging.getLogger("infermesh.router").exception("reporting request %s failed", ticket.corr_id)

    def _report(self, ticket: Ticket, now: float) -> None:
        """A finished request, reported: the strategies learn from it, metrics, access log, usage, the agent."""
        w = ticket.winner
        dur = now - ticket.t0
        status = ticket.status or (499 if ticket.cancelled else 502)
        if w is not None:
            self.route_stats.record(w.target.id, 200 <= (ticket.status or 502) < 400, w.ttft)
            if ticket.status == 200:  # the latency predictor learns from what the request took
                self.ranker.learn(ticket.corr_id, w.target.id, w.ttft, dur, ticket.completion_tokens or 0)
        elsewhere = w is not None and w.target.source == "cell"  # the serving cell's router meters and charges it
        if not ticket.cancelled and status != 499:  # a client that left says nothing about the strategy
            served = w.target.id if w is not None else ""
            self.ranker.outcome(ticket.trial, 200 <= status < 400, w.ttft if w is not None else None, dur, served)
        add(child(REQUESTS, ticket.model, ticket.tenant, ticket.api, str(status)))
        observe(child(LATENCY, ticket.model, ticket.tenant), dur)
        if ticket.cause:
            ERRORS.labels(ticket.model, ticket.tenant, ticket.cause).inc()
        if self.usage.enabled and not elsewhere:
            self.usage.meter.record(
                wall=time.time(),
                tenant=ticket.tenant,
                key=ticket.key,
                model=ticket.model,
                status=status,
                prompt_tokens=ticket.prompt_tokens or 0,
                completion_tokens=ticket.completion_tokens or 0,
                ttft_s=w.ttft if w is not None else None,
                latency_s=dur,
            )
        if ticket.completion_tokens:
            add(child(TOKENS, ticket.model, ticket.tenant, "completion"), ticket.completion_tokens)
        if ticket.prompt_tokens:
            add(child(TOKENS, ticket.model, ticket.tenant, "prompt"), ticket.prompt_tokens)
        if self.cfg.logging.access_log:
            access_log(
                corr_id=ticket.corr_id,
                trace_id=ticket.trace_id,
                api=ticket.api,
                model=ticket.model,
                tenant=ticket.tenant,
                priority=ticket.priority,
                status=status,
                cause=ticket.cause or None,
                strategy=ticket.strategy,
                target=w.target.id if w else None,
                node=w.target.node if w else None,
                attempts=w.attempts if w else None,
                hedged=w.hedged if w else False,
                hedge_won=w.hedge_won if w else False,
                ttft_ms=round(w.ttft * 1000, 3) if w else None,
                duration_ms=round(dur * 1000, 3),
                bytes=ticket.bytes_out,
                **ticket.extra,
            )
        if w is not None and w.target.source == "agent":  # the agent knows only the targets it announced
            self.agent.report(
                Outcome(
                    target_id=w.target.id,
                    request_id=ticket.corr_id,
                    ok=200 <= status < 400,
                    ttft_s=w.ttft,
                    latency_s=dur,
                    prompt_tokens=ticket.prompt_tokens or 0,
                    completion_tokens=ticket.completion_tokens or 0,
                    error=ticket.cause,
                    hedged=w.hedged,
                    cancelled=ticket.cancelled,
                )
            )

    def _unknown_model(self, model: str) -> None:
        """A model (or LoRA adapter) no target serves: counted every time, logged the first time per name. A request
        for an adapter never falls back to its base model: the base model would answer without the adapter."""
        UNKNOWN_MODEL.inc()
        if model in self._unknown_logged or len(self._unknown_logged) >= _UNKNOWN_LOGGED_MAX:
            return
        self._unknown_logged.add(model)
        more = " (no further unknown names are logged)" if len(self._unknown_logged) == _UNKNOWN_LOGGED_MAX else ""
        self.log_error(f"request for unknown model or LoRA adapter {model[:256]!r}: 404 model_not_found{more}")

    def log_error(self, msg: str, **fields: object) -> None:
        logging.getLogger("infermesh.router").warning(msg, extra={"fields": fields})


_UNKNOWN_LOGGED_MAX = 1024


def request_deadline(headers: Mapping[str, str]) -> float | None:
    """Seconds the caller allows (`x-infermesh-deadline-ms`, or gRPC-style `grpc-timeout` is handled by grpc)."""
    raw = headers.get("x-infermesh-deadline-ms")
    if raw is None:
        return None
    try:
        ms = float(raw)
    except ValueError:
        raise Refusal(400, "invalid_deadline", "x-infermesh-deadline-ms must be a number of milliseconds") from None
    if not ms > 0:
        raise Refusal(400, "invalid_deadline", "x-infermesh-deadline-ms must be positive")
    return ms / 1000.0


def new_corr_id(headers: Mapping[str, str], trace_id: str) -> str:
    rid = headers.get("x-request-id")
    if rid and len(rid) <= 128 and rid.isprintable():
        return rid
    return trace_id or uuid.uuid4().hex
