"""Quota enforcement driver: local token buckets, or buckets shared by all router replicas through Redis.

The Redis path runs one Lua script per request (requests/s, tokens/min and a concurrency lease set, atomically);
if Redis is slow or down the request is decided by the local buckets and a counter says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from router.config import RedisConfig, TenantConfig
from router.core.quota import QuotaDecision, TenantLimits, TenantQuota, day_of
from router.metrics import QUOTA_BACKEND
from router.obs import log_event

# KEYS: 1 request bucket, 2 token bucket, 3 lease zset, 4 tokens of the current UTC day.
# ARGV: rps, burst, tpm, est_tokens, concurrent, lease_id, lease_ttl_ms, tokens_per_day. 0 means "no limit".
# Returns {allowed(0/1), reason, retry_after_ms}.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rps, burst, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local est, conc, lease, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local tpd = tonumber(ARGV[8])
local function take(key, rate_per_ms, cap, amount)
  local b = redis.call('HMGET', key, 'tokens', 'stamp')
  local tokens = tonumber(b[1]) or cap
  local stamp = tonumber(b[2]) or now
  if now > stamp then tokens = math.min(cap, tokens + (now - stamp) * rate_per_ms) end
  local need = math.min(amount, cap)
  if tokens >= need then
    tokens = tokens - amount
    redis.call('HSET', key, 'tokens', tokens, 'stamp', now)
    redis.call('PEXPIRE', key, math.ceil(cap / rate_per_ms) + 1000)
    return 0
  end
  redis.call('HSET', key, 'tokens', tokens, 'stamp', now)
  return math.ceil((need - tokens) / rate_per_ms)
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then return {0, 'concurrent', 1000} end
end
if rps > 0 then
  local w = take(KEYS[1], rps / 1000, burst, 1)
  if w > 0 then return {0, 'requests_per_s', w} end
end
if tpm > 0 and est > 0 then
  local w = take(KEYS[2], tpm / 60000, tpm, est)
  if w > 0 then
    if rps > 0 then
      redis.call('HINCRBYFLOAT', KEYS[1], 'tokens', 1)
    end
    return {0, 'tokens_per_min', w}
  end
end
if tpd > 0 and est > 0 then
  local used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used + math.min(est, tpd) > tpd then
    if rps > 0 then redis.call('HINCRBYFLOAT', KEYS[1], 'tokens', 1) end
    if tpm > 0 then redis.call('HINCRBYFLOAT', KEYS[2], 'tokens', est) end
    return {0, 'tokens_per_day', 86400000 - now % 86400000}
  end
  redis.call('INCRBYFLOAT', KEYS[4], est)
  redis.call('PEXPIRE', KEYS[4], 2 * 86400000)
end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + ttl, lease)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return {1, '', 0}
"""


class Lease:
    """What `release` needs to undo an admitted request."""

    __slots__ = ("day", "est_tokens", "lease_id", "local", "tenant")

    def __init__(self, tenant: str, est_tokens: float, local: bool, lease_id: str = "", day: int = -1) -> None:
        self.tenant = tenant
        self.est_tokens = est_tokens
        self.local = local
        self.lease_id = lease_id
        self.day = day  # UTC day the daily budget was charged on


class QuotaManager:
    def __init__(self, tenants: list[TenantConfig], redis_cfg: RedisConfig, lease_ttl_s: float = 600.0) -> None:
        self._limits: dict[str, TenantLimits] = {}
        self._local: dict[str, TenantQuota] = {}
        for t in tenants:
            q = t.quotas
            self.set_limits(t.name, TenantLimits(q.requests_per_s, q.burst_requests, q.tokens_per_min, q.concurrent))
        self._cfg = redis_cfg
        self._redis: Any = None
        self._script: Any = None
        self._lease_ttl_ms = int(lease_ttl_s * 1000)
        self._redis_down_logged = False

    async def start(self) -> None:
        if not self._cfg.url:
            return
        import redis.asyncio as aioredis  # imported only when shared quotas are configured

        self._redis = aioredis.from_url(self._cfg.url, socket_connect_timeout=1.0, socket_timeout=1.0)
        self._script = self._redis.register_script(_LUA)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def set_limits(self, name: str, lim: TenantLimits | None) -> None:
        """Install or change (None: drop) the limits of a tenant or key at runtime. Changed limits start from full
        buckets; requests in flight keep counting against the concurrency limit."""
        if lim is None:
            self._limits.pop(name, None)
            self._local.pop(name, None)
            return
        if self._limits.get(name) == lim:
            return
        old = self._local.get(name)
        self._limits[name] = lim
        quota = TenantQuota(lim)
        if old is not None:
            quota.inflight = old.inflight
            quota.day, quota.day_used = old.day, old.day_used
        self._local[name] = quota

    def names(self) -> set[str]:
        return set(self._limits)

    def limits_of(self, name: str) -> TenantLimits | None:
        return self._limits.get(name)

    async def acquire(self, tenant: str, est_tokens: float) -> tuple[QuotaDecision, Lease | None]:
        lim = self._limits.get(tenant)
        if lim is None or lim.unlimited():
            return QuotaDecision(True), None
        wall = time.time()
        if self._script is not None:
            lease_id = uuid.uuid4().hex
            try:
                p = self._cfg.key_prefix + tenant
                res = await asyncio.wait_for(
                    self._script(
                        keys=[p + ":rps", p + ":tpm", p + ":conc", f"{p}:tpd:{day_of(wall)}"],
                        args=[
                            lim.requests_per_s or 0,
                            lim.burst_requests or max(1.0, lim.requests_per_s or 0),
                            lim.tokens_per_min or 0,
                            est_tokens,
                            lim.concurrent or 0,
                            lease_id,
                            self._lease_ttl_ms,
                            lim.tokens_per_day or 0,
                        ],
                    ),
                    self._cfg.timeout_s,
                )
                if self._redis_down_logged:
                    self._redis_down_logged = False
                    log_event("shared quotas back on Redis", url=self._cfg.url)
                allowed, reason, wait_ms = int(res[0]), res[1], float(res[2])
                if isinstance(reason, bytes):
                    reason = reason.decode()
                if allowed:
                    return QuotaDecision(True), Lease(tenant, est_tokens, False, lease_id, day_of(wall))
                return QuotaDecision(False, str(reason), wait_ms / 1000.0), None
            except Exception as e:
                QUOTA_BACKEND.inc()
                if not self._redis_down_logged:
                    self._redis_down_logged = True
                    log_event(
                        "shared quotas unavailable, enforcing locally",
                        logging.WARNING,
                        url=self._cfg.url,
                        error=repr(e),
                    )
        local = self._local[tenant]
        d = local.acquire(est_tokens, time.monotonic(), wall)
        return d, (Lease(tenant, est_tokens, True, day=local.day) if d.allowed else None)

    async def release(self, lease: Lease | None, used_tokens: float | None) -> None:
        if lease is None:
            return
        if lease.local:
            local = self._local.get(lease.tenant)  # gone when its limits were dropped meanwhile
            if local is not None:
                local.release(lease.est_tokens, used_tokens, lease.day)
            return
        if self._redis is None:
            return
        p = self._cfg.key_prefix + lease.tenant
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrem(p + ":conc", lease.lease_id)
            if used_tokens is not None and used_tokens < lease.est_tokens:
                pipe.hincrbyfloat(p + ":tpm", "tokens", lease.est_tokens - used_tokens)
                lim = self._limits.get(lease.tenant)
                if lim is not None and lim.tokens_per_day:
                    pipe.incrbyfloat(f"{p}:tpd:{lease.day}", used_tokens - lease.est_tokens)
            await asyncio.wait_for(pipe.execute(), 1.0)
        except Exception:
            QUOTA_BACKEND.inc()
