"""Inference access in the router without I/O: the portal's records (as the agent's store holds them) applied to the
service's index, the precedence over YAML tenants, refusals by reason, per-key and daily quotas, the usage meter."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest

from agents.proto.access import ApiKeyRecord, TenantAccess, api_key_key, tenant_key
from agents.proto.usage import UsageBatch
from router.access import AccessState
from router.config import parse_config
from router.core.metering import Meter
from router.core.quota import DAY_S, TenantLimits, TenantQuota
from router.service import Refusal, RouterService
from router.upstream import UpstreamPool

KEY = "imk_0123456789ab_secret"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()


def _service(**cfg: object) -> RouterService:
    base = {"agent": {"address": None}, "tenants": [{"name": "acme", "api_keys": ["yaml-key"]}]}
    return RouterService(parse_config({**base, **cfg}, env={}), UpstreamPool(limit=2, connect_timeout_s=1.0))


def _put(svc: RouterService, key: str, value: object) -> None:
    prefix = key.split("/", 1)[0] + "/"
    assert svc.access.apply(prefix, key, json.dumps(value) if value is not None else None)
    svc.reindex_access()


def _tenant(active: bool = True, **limits: object) -> dict[str, object]:
    return TenantAccess(id=7, slug="acme", active=active, priority="critical", limits=limits).model_dump()  # type: ignore[arg-type]


def test_the_portal_wins_over_yaml_for_the_same_tenant() -> None:
    svc = _service()
    assert svc.authenticate({"Authorization": "Bearer yaml-key"}).name == "acme"  # standalone: YAML only
    _put(svc, tenant_key(7), _tenant(requests_per_s=2))
    with pytest.raises(Refusal) as e:
        svc.authenticate({"Authorization": "Bearer yaml-key"})  # the portal now owns tenant "acme"
    assert e.value.status == 401
    _put(svc, api_key_key(DIGEST), ApiKeyRecord(id=1, tenant=7, prefix="0123456789ab", models=["m"]).model_dump())
    t = svc.authenticate({"Authorization": f"Bearer {KEY}"})
    assert (t.name, t.priority, t.models, t.key_prefix) == ("acme", "critical", frozenset({"m"}), "0123456789ab")
    assert svc.quotas._limits["acme"] == TenantLimits(2.0, None, None, None, None)
    _put(svc, tenant_key(7), None)  # the portal forgets the tenant: the YAML tenant is back, with its limits
    assert svc.authenticate({"Authorization": "Bearer yaml-key"}).name == "acme"


@pytest.mark.parametrize(
    ("tenant", "key", "status", "code"),
    [
        (_tenant(active=False), {}, 403, "tenant_suspended"),
        (_tenant(), {"expires_at": time.time() - 1}, 401, "expired_api_key"),
        (None, {}, 401, "invalid_api_key"),  # a key whose tenant this router has not heard of
    ],
)
def test_refusals_say_why(tenant: object, key: dict[str, object], status: int, code: str) -> None:
    svc = _service()
    if tenant is not None:
        _put(svc, tenant_key(7), tenant)
    _put(svc, api_key_key(DIGEST), {"id": 1, "tenant": 7, "prefix": "0123456789ab", **key})
    with pytest.raises(Refusal) as e:
        svc.authenticate({"Authorization": f"Bearer {KEY}"})
    assert (e.value.status, e.value.code) == (status, code)


def test_a_scoped_key_is_refused_other_models_with_403() -> None:
    svc = _service(targets=[{"model": "m", "url": "http://127.0.0.1:1"}, {"model": "n", "url": "http://127.0.0.1:2"}])
    _put(svc, tenant_key(7), _tenant())
    _put(svc, api_key_key(DIGEST), {"id": 1, "tenant": 7, "prefix": "0123456789ab", "models": ["m"]})
    t = svc.authenticate({"Authorization": f"Bearer {KEY}"})
    svc.require_model(t, "m")
    with pytest.raises(Refusal) as e:
        svc.require_model(t, "n")
    assert (e.value.status, e.value.code) == (403, "model_not_allowed")


def test_bad_records_are_refused_and_the_last_good_one_kept() -> None:
    state = AccessState()
    assert state.apply("tenants/", tenant_key(7), json.dumps(_tenant()))
    assert not state.apply(
        "tenants/", tenant_key(7), json.dumps({"id": 7, "slug": "acme", "limits": {"concurrent": -1}})
    )
    assert not state.apply("tenants/", tenant_key(7), "not json")
    assert state.tenants[7].active


def test_per_key_limits_and_the_daily_budget() -> None:
    async def run() -> None:
        svc = _service()
        svc.quotas.set_limits("key:k", TenantLimits(None, None, None, None, 100.0))
        ok, lease = await svc.quotas.acquire("key:k", 80)
        assert ok.allowed
        refused, _ = await svc.quotas.acquire("key:k", 30)
        assert not refused.allowed and refused.reason == "tokens_per_day" and 0 < refused.retry_after_s <= DAY_S
        await svc.quotas.release(lease, 10)  # only 10 of the 80 charged were used: 70 back in today's budget
        again, _ = await svc.quotas.acquire("key:k", 30)
        assert again.allowed

    asyncio.run(run())


def test_changed_limits_keep_requests_in_flight() -> None:
    q = TenantQuota(TenantLimits(concurrent=2))
    assert q.acquire(0, 0.0).allowed and q.acquire(0, 0.0).allowed
    svc = _service()
    svc.quotas.set_limits("t", TenantLimits(concurrent=2))
    svc.quotas._local["t"].inflight = 2
    svc.quotas.set_limits("t", TenantLimits(concurrent=3))
    assert svc.quotas._local["t"].inflight == 2
    assert svc.quotas._local["t"].acquire(0, 0.0).allowed and not svc.quotas._local["t"].acquire(0, 0.0).allowed


def test_the_meter_drains_batches_with_unique_ids() -> None:
    m = Meter("r1")
    assert m.drain() is None
    m.record(wall=120.5, tenant="acme", key="k", model="m", status=200, prompt_tokens=3, completion_tokens=5,
             ttft_s=0.07, latency_s=0.3)  # fmt: skip
    m.record(wall=150.0, tenant="acme", key="k", model="m", status=429)
    m.record(wall=181.0, tenant="acme", key="k", model="m", status=502, latency_s=40.0)
    b = m.drain()
    assert b is not None and m.drain() is None
    UsageBatch.model_validate(b.model_dump())
    first, second = sorted(b.rows, key=lambda r: r.minute)
    assert (first.minute, first.requests, first.throttled, first.prompt_tokens, first.completion_tokens) == (
        2,
        2,
        1,
        3,
        5,
    )
    assert first.ttft[1] == 1 and first.latency[3] == 1 and second.errors == 1 and second.latency[-2] == 1
    m.record(wall=1.0, tenant="acme", key="", model="m", status=200)
    assert m.drain().batch != b.batch  # type: ignore[union-attr]
