"""Round trip: the emulator's /metrics, scraped and parsed by the runtime adapter, gives its true queue and KV state."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import httpx
import pytest

from agents.emulator.testing import start_emulator
from agents.signals.runtime import RuntimeScraper, ScrapeError, scrape_runtime


async def _until(pred, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("flavor", ["vllm", "tgi", "triton", "sglang"])
async def test_parsed_state_matches_emulator_truth(flavor: str) -> None:
    em = start_emulator("--flavor", flavor, "--profile", "l40s", "--max-num-seqs", "3", "--model", "m-1")
    try:
        async with aiohttp.ClientSession() as session, httpx.AsyncClient(timeout=60) as http:
            body = {"model": "m-1", "prompt": "x", "max_tokens": 400, "prompt_tokens": 3000}
            tasks = [asyncio.create_task(http.post(f"{em.url}/v1/completions", json=body)) for _ in range(5)]
            stats = lambda: httpx.get(f"{em.url}/emulator/stats").json()  # noqa: E731
            await _until(lambda: stats()["running"] == 3 and stats()["waiting"] == 2)
            # freeze the engine so that the truth and the scrape describe the same instant
            httpx.post(f"{em.url}/emulator/faults", json={"hang": True})
            await asyncio.sleep(0.2)
            truth = stats()
            states = await scrape_runtime(session, em.url, flavor, 5.0)
            assert len(states) == 1
            s = states[0]
            assert s.model == "m-1" and s.runtime == flavor and s.endpoint == em.url
            assert s.requests_running == truth["running"] == 3
            assert s.requests_waiting == truth["waiting"] == 2
            if flavor == "vllm":
                assert s.kv_cache_usage == pytest.approx(truth["kv_cache_usage"], abs=1e-12)
            elif flavor in ("sglang", "triton"):
                assert s.kv_cache_usage == pytest.approx(truth["kv_cache_usage"], abs=0.01)
                assert s.kv_cache_usage > 0
            else:
                assert s.kv_cache_usage is None  # TGI does not publish it
            if flavor == "triton":
                assert s.max_concurrency == 3
            httpx.post(f"{em.url}/emulator/faults", json={"hang": False})
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        em.stop()


async def test_scraper_rates_follow_load_and_errors_name_the_url() -> None:
    em = start_emulator("--flavor", "vllm", "--profile", "h100")
    try:
        async with aiohttp.ClientSession() as session, httpx.AsyncClient(timeout=60) as http:
            scraper = RuntimeScraper(em.url + "/metrics", "vllm", timeout_s=5.0)
            first = await scraper.scrape(session)
            assert first[0].tokens_per_s is None  # one scrape: no rate yet
            body = {"model": "demo-llm", "prompt": "x", "max_tokens": 50, "prompt_tokens": 100}
            rs = await asyncio.gather(*(http.post(f"{em.url}/v1/completions", json=body) for _ in range(4)))
            assert all(r.status_code == 200 for r in rs)
            second = await scraper.scrape(session)
            assert second[0].tokens_per_s is not None and second[0].tokens_per_s > 0
            assert second[0].ttft_p95_s is not None and second[0].ttft_p95_s > 0
            assert second[0].latency_p95_s is not None
        em.stop()
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ScrapeError, match=str(em.port)):
                await scrape_runtime(session, em.url, "vllm", 2.0)
    finally:
        em.stop()


async def test_non_200_is_a_scrape_error() -> None:
    em = start_emulator("--flavor", "vllm")
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ScrapeError, match="HTTP 404"):
                await scrape_runtime(session, em.url + "/nope/metrics", "vllm", 2.0)
    finally:
        em.stop()
