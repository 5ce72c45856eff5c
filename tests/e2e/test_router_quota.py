"""Quotas per tenant (local and shared across replicas through Redis), 429 + Retry-After, and bounded memory under
3x overload: the router refuses early instead of queueing without limit. Real processes over loopback."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from agents.emulator.testing import EmulatorProcess, start_emulator
from tests.router.procs import router_config, running_router

pytestmark = pytest.mark.e2e
BODY = {"model": "demo-llm", "prompt": "hello", "max_tokens": 2}


@pytest.fixture(scope="module")
def em() -> Iterator[EmulatorProcess]:
    e = start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm", "--max-num-seqs", "8")
    yield e
    e.stop()


def _tenants() -> list[dict[str, object]]:
    return [
        {"name": "demo", "api_keys": ["demo-key"], "quotas": {"requests_per_s": 0.2, "burst_requests": 3}},
        {"name": "other", "api_keys": ["other-key"]},
        {"name": "conc", "api_keys": ["conc-key"], "quotas": {"concurrent": 1}},
        {"name": "tok", "api_keys": ["tok-key"], "quotas": {"tokens_per_min": 600}},
    ]


def _post(url: str, key: str, **extra: object) -> httpx.Response:
    return httpx.post(
        url + "/v1/completions", json={**BODY, **extra}, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_quotas_per_tenant_give_429_with_retry_after(em: EmulatorProcess, tmp_path: Path) -> None:
    with running_router(router_config([em.url], tenants=_tenants()), tmp_path) as rp:
        codes = [_post(rp.url, "demo-key").status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = _post(rp.url, "demo-key")
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        err = r.json()["error"]
        assert err["code"] == "quota_exceeded" and "'demo'" in err["message"] and "requests_per_s" in err["message"]
        # Another tenant is not touched by demo's quota.
        assert [_post(rp.url, "other-key").status_code for _ in range(5)] == [200] * 5
        # tokens/min: the upfront charge is the prompt estimate plus max_tokens.
        assert _post(rp.url, "tok-key", max_tokens=500).status_code == 200
        r = _post(rp.url, "tok-key", max_tokens=500)
        assert r.status_code == 429 and "tokens_per_min" in r.json()["error"]["message"]
        # concurrent: one stream held open, the second request is refused until it ends.
        with httpx.stream(
            "POST",
            rp.url + "/v1/completions",
            json={**BODY, "max_tokens": 200, "stream": True},
            headers={"Authorization": "Bearer conc-key"},
            timeout=30,
        ) as held:
            chunks = held.iter_raw()  # keep the iterator: dropping it would close the stream
            next(chunks)
            r = _post(rp.url, "conc-key")
            assert r.status_code == 429 and "concurrent" in r.json()["error"]["message"]
        assert _post(rp.url, "conc-key").status_code == 200
        metrics = httpx.get(rp.url + "/metrics").text
        assert 'infermesh_router_admissions_refused_total{model="demo-llm",reason="requests_per_s",tenant="demo"}' in (
            metrics
        )


def test_quotas_are_shared_across_replicas_through_redis(em: EmulatorProcess, tmp_path: Path) -> None:
    redis_cfg = {"url": "redis://127.0.0.1:6379/0", "key_prefix": f"test:{uuid.uuid4().hex}:", "timeout_s": 1.0}
    cfg = router_config([em.url], tenants=_tenants(), redis=redis_cfg)
    with running_router(cfg, tmp_path, "r1") as r1, running_router(cfg, tmp_path, "r2") as r2:
        codes = [_post(rp.url, "demo-key").status_code for rp in (r1, r2, r1, r2, r1, r2)]
        # The burst of 3 is shared: a local bucket per replica would have let all 6 through.
        assert codes.count(200) == 3, codes
        assert codes.count(429) == 3, codes
        # Concurrency leases are shared too.
        with httpx.stream(
            "POST",
            r1.url + "/v1/completions",
            json={**BODY, "max_tokens": 200, "stream": True},
            headers={"Authorization": "Bearer conc-key"},
            timeout=30,
        ) as held:
            chunks = held.iter_raw()  # keep the iterator: dropping it would close the stream
            next(chunks)
            assert _post(r2.url, "conc-key").status_code == 429
        assert _post(r2.url, "conc-key").status_code == 200


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_bounded_memory_under_3x_overload(em: EmulatorProcess, tmp_path: Path) -> None:
    cap = 24  # the router holds at most this many requests; the load below offers 3x that at once
    cfg = router_config(
        [em.url],
        listen={"max_inflight": cap},
        default_policy={"strategy": "least_queue", "admission": {"max_queue_per_target": 8}},
    )
    with running_router(cfg, tmp_path) as rp:
        body = {"model": "demo-llm", "prompt": "x" * 200, "max_tokens": 64}
        headers = {"Authorization": "Bearer demo-key"}

        async def one(s: aiohttp.ClientSession) -> tuple[int, float, str | None]:
            t0 = time.monotonic()
            async with s.post(rp.url + "/v1/completions", json=body, headers=headers) as r:
                await r.read()
                return r.status, time.monotonic() - t0, r.headers.get("Retry-After")

        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
            await asyncio.gather(*(one(s) for _ in range(8)))  # warm up
            rss0 = _rss_kb(rp.proc.pid)
            results: list[tuple[int, float, str | None]] = []
            peak = 0
            for _ in range(4):
                batch = asyncio.gather(*(one(s) for _ in range(3 * cap)))
                await asyncio.sleep(0.2)
                peak = max(peak, int(httpx.get(rp.url + "/healthz").json()["inflight"]))
                results += await batch
            rss1 = _rss_kb(rp.proc.pid)
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 429]
        assert len(ok) + len(refused) == len(results), {r[0] for r in results}
        assert refused and ok
        assert all(r[2] is not None and int(r[2]) >= 1 for r in refused)
        # Refused early: a 429 never waits behind the queue it protects.
        assert max(r[1] for r in refused) < min(5.0, max(r[1] for r in ok))
        assert peak <= cap
        assert rss1 - rss0 < 40_000, (rss0, rss1)


async def test_requests_are_held_at_the_router_while_every_slot_is_taken(em: EmulatorProcess, tmp_path: Path) -> None:
    cfg = router_config([em.url])
    cfg["targets"][0]["max_concurrency"] = 2  # type: ignore[index]
    with running_router(cfg, tmp_path) as rp:
        body = {"model": "demo-llm", "prompt": "x", "max_tokens": 400, "stream": True}
        headers = {"Authorization": "Bearer demo-key"}

        async def one(s: aiohttp.ClientSession) -> bytes:
            async with s.post(rp.url + "/v1/completions", json=body, headers=headers) as r:
                assert r.status == 200
                return await r.read()

        async with aiohttp.ClientSession() as s:
            tasks = [asyncio.ensure_future(one(s)) for _ in range(6)]
            await asyncio.sleep(0.4)
            metrics = httpx.get(rp.url + "/metrics").text
            held = [ln for ln in metrics.splitlines() if ln.startswith("infermesh_router_held ")]
            stats = httpx.get(em.url + "/emulator/stats").json()
            bodies = await asyncio.gather(*tasks)
        assert float(held[0].split()[1]) == 4  # two running at the runtime, four held by the router
        assert stats["running"] == 2 and stats["waiting"] == 0, stats
        assert all(b.endswith(b"data: [DONE]\n\n") for b in bodies)
