"""What the portal says about routing, mirrored from the agent's policy store: each tenant's models (names, aliases,
deployed revisions and zones) and each model's routing policy (strategy, A/B split, shadow, hedging, pins, SLO).

`PortalRouting` is sans-IO: `apply(key, value)` per store change, then lookups; `PortalWatcher` is the asyncio driver
(one `Store.Get` per prefix, then one `Store.Watch` from the revision read, again from scratch after any break).
A tenant the portal has no models for keeps the router config's behaviour (its `policies:` and every served model).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.security.tls import ClientIdentity, Dialer
from router.config import AgentConfig, RoutingPolicy
from router.obs import log_event
from router.storewatch import StoreMirror
from router.view import Target

TENANTS = "kv/portal/tenants/"
MODELS = "kv/portal/models/"
REVISIONS = "kv/portal/revisions/"
DEPLOYMENTS = "kv/portal/deployments/"
ROUTING = "routing/"
SLOS = "slos/"
MODULES = "kv/portal/strategy-modules/"  # WebAssembly strategies uploaded to the portal, by SHA-256
MODULE_PREFIX = "module:"  # how a portal policy names one
PREFIXES = (TENANTS, MODELS, REVISIONS, DEPLOYMENTS, ROUTING, SLOS, MODULES)


@dataclass(frozen=True, slots=True)
class PortalPolicy:
    """A model's routing policy as the portal set it (store key `routing/policy-<id>`)."""

    key: str
    strategy: str
    ab_split: dict[str, float] = field(default_factory=dict)
    shadow_strategy: str = ""
    hedging: bool = False
    pin_nodes: frozenset[str] = frozenset()
    pin_zones: frozenset[str] = frozenset()
    zone_nodes: frozenset[str] = frozenset()  # nodes of the pinned zones, for targets that do not say their zone
    lora_load_s: float | None = None  # adapter load time the strategies charge (params.lora_load_s)

    def allows(self, t: Target) -> bool:
        if not self.pin_nodes and not self.pin_zones:
            return True
        if t.node in self.pin_nodes:
            return True
        return bool(self.pin_zones) and (t.zone in self.pin_zones or (not t.zone and t.node in self.zone_nodes))

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "strategy": self.strategy,
            "ab_split": self.ab_split,
            "shadow_strategy": self.shadow_strategy,
            "hedging": self.hedging,
            "pin_nodes": sorted(self.pin_nodes),
            "pin_zones": sorted(self.pin_zones),
            "lora_load_s": self.lora_load_s,
        }


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one deployment lets its revision run; an empty field places no constraint."""

    revision: str
    zone: str = ""
    gpu_type: str = ""  # GPU family (H100, A100, ...); a target whose family is unknown is not excluded
    mig_profile: str = ""  # a MIG slice profile: only targets on such slices (a whole GPU is no slice)
    nodes: tuple[str, ...] | None = None  # the nodes its node selector admits; None = no selector

    def admits(self, t: Target) -> bool:
        return (
            (not t.revision or t.revision == self.revision)
            and (self.nodes is None or t.node in self.nodes)
            and (not self.zone or not t.zone or t.zone == self.zone)
            and (not self.gpu_type or not t.gpu_type or t.gpu_type == self.gpu_type)
            and (not self.mig_profile or t.mig_profile == self.mig_profile)
        )

    def order(self) -> tuple[str, str, str, str, tuple[str, ...]]:
        return (self.revision, self.zone, self.gpu_type, self.mig_profile, self.nodes or ())

    def describe(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "zone": self.zone,
            "gpu_type": self.gpu_type,
            "mig_profile": self.mig_profile,
            "nodes": list(self.nodes) if self.nodes is not None else None,
        }


@dataclass(slots=True)
class CatalogModel:
    """One model of a tenant's catalog: what names reach it and which targets may serve it."""

    id: int
    name: str
    aliases: tuple[str, ...] = ()
    revisions: frozenset[str] = frozenset()  # deployed revisions; empty: no deployment (not listed)
    placements: tuple[Placement, ...] = ()  # one per deployment: a target serves when any admits it
    policy: PortalPolicy | None = None
    slo_ttft_ms: float | None = None
    router_policy: RoutingPolicy | None = None  # built by PortalRouting.policy_for, cached until the next change

    def serves(self, t: Target) -> bool:
        if self.placements and not any(p.admits(t) for p in self.placements):
            return False
        return self.policy is None or self.policy.allows(t)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


_warned_lora: set[tuple[str, str]] = set()


def _lora_load_s(key: str, v: Any) -> float | None:
    """A policy's adapter load time; one the portal should have refused (not a number of 0..600 s) is logged once
    and the strategy's default kept, never a wrong value."""
    if v is None:
        return None
    x = _num(v)
    if x is not None and 0.0 <= x <= 600.0:
        return x
    if (key, repr(v)) not in _warned_lora:
        _warned_lora.add((key, repr(v)))
        log_event("routing policy: lora_load_s ignored (a number of seconds, 0..600)", logging.WARNING, key=key,
                  value=repr(v)[:64])  # fmt: skip
    return None


class PortalRouting:
    def __init__(self) -> None:
        self._kv: dict[str, dict[str, Any]] = {}
        self._tenants: dict[str, dict[str, CatalogModel]] = {}  # slug -> name or alias -> model
        self._listed: dict[str, list[CatalogModel]] = {}  # slug -> models with a deployment
        self.version = 0
        self.revision = 0  # the store revision this mirror has seen
        # where uploaded modules are written (by checksum) for the router to load them from
        self.module_dir = Path(tempfile.gettempdir()) / f"infermesh-strategy-modules-{os.getuid()}"
        self._written: set[str] = set()

    # -- changes ----------------------------------------------------------------------------------------------------
    @staticmethod
    def relevant(key: str) -> bool:
        return key.startswith(PREFIXES)

    def apply(self, key: str, value: str | None) -> bool:
        """One store change; True when it concerns routing (call `rebuild` after a batch)."""
        if not self.relevant(key):
            return False
        if value is None:
            return self._kv.pop(key, None) is not None
        try:
            obj = json.loads(value)
        except ValueError:
            return False
        if not isinstance(obj, dict) or self._kv.get(key) == obj:
            return False
        self._kv[key] = obj
        return True

    def replace(self, items: Iterable[tuple[str, str]]) -> None:
        self._kv = {}
        for k, v in items:
            self.apply(k, v)
        self.rebuild()

    def rebuild(self) -> None:
        kv = self._kv
        slugs = {_num(v.get("id")): str(v.get("slug", "")) for k, v in kv.items() if k.startswith(TENANTS)}
        revisions = {_num(v.get("id")): v for k, v in kv.items() if k.startswith(REVISIONS)}
        models: dict[int, CatalogModel] = {}
        owner: dict[int, str] = {}
        for k, v in kv.items():
            if not k.startswith(MODELS):
                continue
            mid, tid = _num(v.get("id")), _num(v.get("tenant"))
            slug = slugs.get(tid)
            if mid is None or not slug or not v.get("name"):
                continue
            aliases = tuple(str(a) for a in v.get("aliases") or [] if isinstance(a, str))
            models[int(mid)] = CatalogModel(id=int(mid), name=str(v["name"]), aliases=aliases)
            owner[int(mid)] = slug
        placements: dict[int, list[Placement]] = {}
        for k, v in kv.items():
            if not k.startswith(DEPLOYMENTS):
                continue
            rev = revisions.get(_num(v.get("revision")))
            if rev is None or _num(rev.get("model")) is None:
                continue
            placements.setdefault(int(rev["model"]), []).append(
                Placement(
                    revision=str(rev.get("revision", "")),
                    zone=str(v.get("zone_name") or ""),
                    gpu_type=str(v.get("gpu_type") or ""),
                    mig_profile=str(v.get("mig_profile") or ""),
                    nodes=tuple(str(n) for n in v["selector_nodes"])
                    if isinstance(v.get("selector_nodes"), list)
                    else None,
                )
            )
        for mid, m in models.items():
            m.placements = tuple(sorted(set(placements.get(mid, ())), key=Placement.order))
            m.revisions = frozenset(p.revision for p in m.placements)
        modules = {k[len(MODULES) :]: v for k, v in kv.items() if k.startswith(MODULES)}

        def named(name: str) -> str:
            return self._module_spec(name, modules) if name.startswith(MODULE_PREFIX) else name

        for k, v in kv.items():
            if k.startswith(ROUTING):
                params = v.get("params") or {}
                pm = models.get(int(params["model"])) if _num(params.get("model")) is not None else None
                if pm is None:
                    continue
                split = {str(n): float(w) for n, w in (params.get("ab_split") or {}).items() if _num(w) is not None}
                shadow = str(params.get("shadow_strategy") or "")
                pm.policy = PortalPolicy(
                    key=k,
                    strategy=named(str(v.get("strategy") or "hybrid_mesh")),
                    ab_split={named(n): w for n, w in split.items() if w > 0},
                    shadow_strategy=named(shadow) if shadow else "",
                    hedging=bool(params.get("hedging")),
                    pin_nodes=frozenset(str(n) for n in params.get("pin_nodes") or []),
                    pin_zones=frozenset(str(z) for z in params.get("pin_zones") or []),
                    zone_nodes=frozenset(str(n) for n in params.get("zone_nodes") or []),
                    lora_load_s=_lora_load_s(k, params.get("lora_load_s")),
                )
            elif k.startswith(SLOS):
                # slos/tenant-<tid>/model-<mid>: the model's TTFT target (a tenant-wide one applies below).
                parts = k.split("/")
                if len(parts) == 3 and parts[2].startswith("model-") and parts[2][6:].isdigit():
                    sm = models.get(int(parts[2][6:]))
                    if sm is not None:
                        sm.slo_ttft_ms = _num(v.get("ttft_ms_p99"))
        tenant_slo: dict[str, float] = {}
        for k, v in kv.items():
            parts = k.split("/")
            if k.startswith(SLOS) and len(parts) == 2 and parts[1].startswith("tenant-") and parts[1][7:].isdigit():
                slug = slugs.get(float(parts[1][7:]))
                ttft = _num(v.get("ttft_ms_p99"))
                if slug and ttft:
                    tenant_slo[slug] = ttft
        by_tenant: dict[str, dict[str, CatalogModel]] = {}
        listed: dict[str, list[CatalogModel]] = {}
        for mid, m in sorted(models.items()):
            slug = owner[mid]
            if m.slo_ttft_ms is None:
                m.slo_ttft_ms = tenant_slo.get(slug)
            names = by_tenant.setdefault(slug, {})
            names.setdefault(m.name, m)
            for a in m.aliases:
                names.setdefault(a, m)
            if m.revisions:
                listed.setdefault(slug, []).append(m)
        self._tenants = by_tenant
        self._listed = listed
        self.version += 1

    def _module_spec(self, name: str, modules: dict[str, dict[str, Any]]) -> str:
        """`module:<sha256>` -> the pinned `wasm:PATH#sha256=...` of the module the store carries, written to
        `module_dir` once its bytes match the checksum; the name unchanged (a strategy that cannot be loaded, so the
        model keeps its previous one) when the store lacks it or its bytes do not match."""
        digest = name[len(MODULE_PREFIX) :].lower()
        entry = modules.get(digest)
        path = self.module_dir / f"{digest}.wasm"
        if digest not in self._written:
            if entry is None:
                return name
            try:
                data = base64.b64decode(str(entry.get("wasm_b64", "")), validate=True)
            except ValueError:
                data = b""
            if hashlib.sha256(data).hexdigest() != digest:
                log_event(
                    "strategy module refused: its bytes do not match its checksum", logging.WARNING, sha256=digest
                )
                return name
            self.module_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            self._written.add(digest)
        return f"wasm:{path}#sha256={digest}"

    # -- lookups ----------------------------------------------------------------------------------------------------
    def knows(self, tenant: str) -> bool:
        """Whether the portal governs this tenant's models (it has at least one)."""
        return tenant in self._tenants

    def resolve(self, tenant: str, name: str) -> CatalogModel | None:
        """The catalog model a name (or alias) means for a tenant, if deployed."""
        m = self._tenants.get(tenant, {}).get(name)
        return m if m is not None and m.revisions else None

    def listed(self, tenant: str) -> list[CatalogModel]:
        return self._listed.get(tenant, [])

    def models(self) -> list[tuple[str, CatalogModel]]:
        return [(slug, m) for slug, names in sorted(self._tenants.items()) for n, m in names.items() if n == m.name]

    def policy_for(self, m: CatalogModel, base: RoutingPolicy) -> RoutingPolicy:
        """The router policy in force for a catalog model: the portal's choices over the router's own defaults."""
        if m.router_policy is not None:
            return m.router_policy
        p = m.policy
        if p is None and m.slo_ttft_ms is None:
            m.router_policy = base
            return base
        update: dict[str, Any] = {}
        hedging = base.hedging
        if p is not None:
            update.update(strategy=p.strategy, ab_split=dict(p.ab_split), shadow_strategy=p.shadow_strategy or None)
            if p.lora_load_s is not None:
                update["lora_load_s"] = p.lora_load_s
            hedging = hedging.model_copy(update={"enabled": p.hedging})
        if m.slo_ttft_ms:
            # Hedge no later than half the TTFT target, so a hedge can still meet it.
            cap = max(hedging.min_delay_ms, min(hedging.max_delay_ms, m.slo_ttft_ms / 2))
            hedging = hedging.model_copy(update={"max_delay_ms": cap})
            update["slo_ttft_ms"] = m.slo_ttft_ms
        update["hedging"] = hedging
        m.router_policy = base.model_copy(update=update)
        return m.router_policy

    def strategies(self) -> set[str]:
        out: set[str] = set()
        for names in self._tenants.values():
            for m in names.values():
                if m.policy is not None:
                    out.add(m.policy.strategy)
                    out.update(m.policy.ab_split)
                    if m.policy.shadow_strategy:
                        out.add(m.policy.shadow_strategy)
        return out


class PortalWatcher:
    """Keeps a PortalRouting current from the agent's store; `on_change` runs after each batch of changes."""

    def __init__(self, state: PortalRouting, cfg: AgentConfig, on_change: Callable[[], None]) -> None:
        self.state = state
        self.cfg = cfg
        self.on_change = on_change
        self.synced = asyncio.Event()
        self._dialer: Dialer | None = None
        self._mirror: StoreMirror | None = None
        self._warned = False

    def start(self) -> None:
        if not self.cfg.address:
            return
        self._dialer = Dialer(self.cfg.address, ClientIdentity.of(self.cfg.tls), check_s=0.0)
        self._mirror = StoreMirror(
            self._dialer.channel,
            PREFIXES,
            watch_prefix="",
            on_snapshot=self._snapshot,
            on_event=self._event,
            on_break=self._broken,
            min_s=self.cfg.reconnect_min_s,
            max_s=self.cfg.reconnect_max_s,
        )
        self._mirror.start()

    async def close(self) -> None:
        if self._mirror is not None:
            await self._mirror.close()
        if self._dialer is not None:
            await self._dialer.close()

    def _snapshot(self, items: list[tuple[str, str]], revision: int) -> None:
        self.state.replace(items)
        self.state.revision = revision
        self.on_change()
        self.synced.set()
        if self._warned:
            log_event("portal routing state readable again", agent=self.cfg.address)
            self._warned = False

    def _event(self, ev: Any) -> None:
        self.state.revision = max(self.state.revision, ev.revision)
        if self.state.apply(ev.key, ev.value if ev.type == "put" else None):
            self.state.rebuild()
            self.on_change()

    def _broken(self, reason: str) -> None:
        if not self._warned:
            self._warned = True
            log_event(
                "portal routing state unreadable: keeping the last one and the config's policies",
                logging.WARNING,
                agent=self.cfg.address,
                reason=reason,
            )
