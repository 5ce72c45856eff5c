"""Router resilience end to end: a runtime killed under load, hedging that cancels its loser, client disconnects,
broken upstreams, bad input and slowloris clients. Real emulated runtimes and router processes over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from agents.emulator.testing import EmulatorProcess, start_emulator
from tests.router.procs import RouterProc, router_config, running_router, scripted_upstream

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": "Bearer demo-key"}
BAD = {"Authorization": "Bearer x"}


def _emulators(n: int, *extra: str) -> list[EmulatorProcess]:
    profiles = ["h100", "a100", "l40s", "h200"]
    return [
        start_emulator(
            "--profile", profiles[i % 4], "--flavor", "vllm", "--model", "demo-llm", "--seed", str(i), *extra
        )
        for i in range(n)
    ]


@pytest.fixture
def three() -> Iterator[list[EmulatorProcess]]:
    ems = _emulators(3)
    yield ems
    for em in ems:
        em.stop()


def _stats(em: EmulatorProcess) -> dict[str, object]:
    stats: dict[str, object] = httpx.get(em.url + "/emulator/stats", timeout=10).json()
    return stats


def _metric(rp: RouterProc, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(rp.url + "/metrics", timeout=10).text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_killed_runtime_fails_no_request_before_first_byte(three: list[EmulatorProcess], tmp_path: Path) -> None:
    cfg = router_config([e.url for e in three], default_policy={"strategy": "baseline_rr"})
    with running_router(cfg, tmp_path) as rp:
        failures: list[tuple[bool, str]] = []  # (had a first byte, what went wrong)
        done = 0

        async def one(session: aiohttp.ClientSession, i: int) -> None:
            nonlocal done
            stream = i % 2 == 0
            body = {"model": "demo-llm", "prompt": "p" * 40, "max_tokens": 24, "stream": stream}
            got_bytes = False
            try:
                async with session.post(rp.url + "/v1/completions", json=body, headers=AUTH) as r:
                    if r.status != 200:
                        failures.append((False, f"status {r.status}: {await r.text()}"))
                        return
                    raw = b""
                    async for chunk in r.content.iter_any():
                        got_bytes = True
                        raw += chunk
                if stream and not raw.endswith(b"data: [DONE]\n\n"):
                    failures.append((got_bytes, "stream cut"))
                elif not stream:
                    json.loads(raw)
                done += 1
            except (aiohttp.ClientError, ValueError) as e:
                failures.append((got_bytes, repr(e)))

        async def killer() -> None:
            await asyncio.sleep(0.6)
            three[1].proc.kill()  # SIGKILL: in-flight requests there lose their connection

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            sem = asyncio.Semaphore(12)

            async def limited(i: int) -> None:
                async with sem:
                    await one(s, i)

            await asyncio.gather(killer(), *(limited(i) for i in range(120)))
        assert three[1].proc.poll() is not None
        before_first_byte = [f for f in failures if not f[0]]
        assert before_first_byte == [], before_first_byte
        assert done + len(failures) == 120 and done >= 100
        assert _metric(rp, "infermesh_router_retries_total") >= 1


async def test_hedge_cancels_its_loser(tmp_path: Path) -> None:
    ems = _emulators(2)
    try:
        httpx.post(ems[0].url + "/emulator/faults", json={"hang": True}, timeout=10).raise_for_status()
        cfg = router_config(
            [em.url for em in ems],  # round-robin: every other request starts on the hanging runtime
            default_policy={
                "strategy": "baseline_rr",
                "first_byte_timeout_s": 20,
                "hedging": {"enabled": True, "default_delay_ms": 150, "budget_ratio": 1.0, "budget_burst": 10},
            },
        )
        with running_router(cfg, tmp_path) as rp:
            body = {"model": "demo-llm", "prompt": "x", "max_tokens": 4}
            for _ in range(4):
                t0 = time.monotonic()
                r = httpx.post(rp.url + "/v1/completions", json=body, headers=AUTH, timeout=30)
                assert r.status_code == 200, r.text
                assert time.monotonic() - t0 < 10  # answered by the hedge, not stuck behind the hang
            assert _metric(rp, "infermesh_router_hedges_total", result="fired") >= 2
            assert _metric(rp, "infermesh_router_hedges_total", result="won") >= 2
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and int(_stats(ems[0])["aborted"]) < 2:  # type: ignore[call-overload]
                await asyncio.sleep(0.1)
            stats = _stats(ems[0])
            assert int(stats["aborted"]) >= 2, stats  # type: ignore[call-overload]
            assert int(stats["running"]) + int(stats["waiting"]) == 0, stats  # type: ignore[call-overload]
            hedged = [e for e in rp.logs() if e.get("msg") == "access" and e.get("hedge_won")]
            assert len(hedged) >= 2 and all(e["target"].endswith(ems[1].url) for e in hedged)
    finally:
        for em in ems:
            em.stop()


async def test_client_disconnect_cancels_the_upstream_request(three: list[EmulatorProcess], tmp_path: Path) -> None:
    cfg = router_config([three[0].url])
    with running_router(cfg, tmp_path) as rp:
        before = int(_stats(three[0])["aborted"])  # type: ignore[call-overload]
        body = {"model": "demo-llm", "prompt": "x", "max_tokens": 2000, "stream": True}
        async with aiohttp.ClientSession() as s:
            r = await s.post(rp.url + "/v1/completions", json=body, headers=AUTH)
            assert r.status == 200
            await r.content.readany()
            r.close()  # drop the connection mid-stream
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and int(_stats(three[0])["aborted"]) <= before:  # type: ignore[call-overload]
            await asyncio.sleep(0.1)
        assert int(_stats(three[0])["aborted"]) == before + 1  # type: ignore[call-overload]


async def test_bad_input_gets_clear_errors_without_disturbing_others(
    three: list[EmulatorProcess], tmp_path: Path
) -> None:
    cfg = router_config([e.url for e in three], listen={"max_body_bytes": 2048})
    with running_router(cfg, tmp_path) as rp:
        url = rp.url + "/v1/chat/completions"
        msgs = [{"role": "user", "content": "x"}]
        cases: list[tuple[dict[str, object], int, str]] = [
            ({"content": b'{"model": "demo-llm", "messages": [', "headers": AUTH}, 400, "not valid JSON"),
            ({"content": b"[1, 2]", "headers": AUTH}, 400, "JSON object"),
            ({"json": {"messages": msgs}, "headers": AUTH}, 400, "'model'"),
            ({"json": {"model": "ghost", "messages": msgs}, "headers": AUTH}, 404, "'ghost'"),
            ({"json": {"model": "demo-llm", "messages": msgs, "stream": "yes"}, "headers": AUTH}, 400, "'stream'"),
            ({"json": {"model": "demo-llm", "messages": msgs, "stream": 1}, "headers": AUTH}, 400, "'stream'"),
            ({"json": {"model": "demo-llm", "messages": []}, "headers": AUTH}, 400, "'messages'"),
            ({"json": {"model": "demo-llm", "messages": msgs, "max_tokens": -1}, "headers": AUTH}, 400, "max_tokens"),
            ({"json": {"model": "demo-llm", "messages": [{"content": "x" * 5000}]}, "headers": AUTH}, 413, "2048"),
            ({"json": {"model": "demo-llm", "messages": msgs}}, 401, "API key"),
            (
                {"json": {"model": "demo-llm", "messages": msgs}, "headers": {"Authorization": "Bearer x"}},
                401,
                "invalid",
            ),
        ]
        async with aiohttp.ClientSession() as s:
            # A long stream runs through all of it and must come out whole.
            good = {"model": "demo-llm", "messages": msgs, "max_tokens": 40, "stream": True}
            long_req = asyncio.ensure_future(s.post(url, json=good, headers=AUTH))
            for kwargs, status, needle in cases:
                headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
                r = httpx.post(url, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]
                assert r.status_code == status, (kwargs, r.text)
                err = r.json()["error"]
                assert needle in err["message"], (needle, err)
            resp = await long_req
            assert resp.status == 200
            raw = await resp.read()
            assert raw.endswith(b"data: [DONE]\n\n")


async def test_broken_upstreams_get_502_and_stay_contained(tmp_path: Path) -> None:
    with scripted_upstream() as up:
        cfg = router_config([up], default_policy={"strategy": "baseline_rr", "retry": {"max_attempts": 1}})
        with running_router(cfg, tmp_path) as rp:
            url = rp.url + "/v1/chat/completions"
            base = {"model": "demo-llm", "messages": [{"role": "user", "content": "x"}]}
            for mode, status, needle in [
                ("garbage", 502, "malformed"),
                ("close", 502, "attempt"),
                ("status503", 503, "503"),
            ]:
                r = httpx.post(url, json={**base, "mode": mode}, headers=AUTH, timeout=10)
                assert r.status_code == status, (mode, r.text)
                assert needle in r.json()["error"]["message"], (mode, r.text)
            # A body cut short after the first byte: the client sees an incomplete answer, never a clean short one.
            with pytest.raises(httpx.HTTPError):
                httpx.post(url, json={**base, "mode": "bad_length"}, headers=AUTH, timeout=10).read()
            cut = {**base, "mode": "cut_stream", "stream": True}
            with pytest.raises(httpx.HTTPError), httpx.stream("POST", url, json=cut, headers=AUTH) as r:
                for _ in r.iter_raw():
                    pass
            # And the router is fine afterwards.
            r = httpx.post(url, json={**base, "mode": "fixed", "stream": True}, headers=AUTH, timeout=10)
            assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
            causes = {e.get("cause") for e in rp.logs() if e.get("msg") == "access"}
            assert "upstream_broken_midstream" in causes


async def test_slowloris_clients_time_out_and_others_are_served(three: list[EmulatorProcess], tmp_path: Path) -> None:
    cfg = router_config([e.url for e in three], listen={"body_read_timeout_s": 1.0, "keepalive_timeout_s": 2.0})
    with running_router(cfg, tmp_path) as rp:

        async def slow_body() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", rp.port)
            writer.write(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer demo-key\r\n"
                b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{"
            )
            await writer.drain()
            out = b""
            try:
                for _ in range(50):
                    await asyncio.sleep(0.2)
                    writer.write(b" ")
                    await writer.drain()
                    if reader.at_eof():
                        break
                    with contextlib.suppress(TimeoutError):
                        out += await asyncio.wait_for(reader.read(4096), 0.01)
                    if out:
                        break
            except ConnectionError:
                pass
            writer.close()
            return out

        async def slow_headers() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", rp.port)
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            try:
                return await asyncio.wait_for(reader.read(4096), 8.0)
            except TimeoutError:
                return b"still open"
            finally:
                writer.close()

        async def normal(session: aiohttp.ClientSession) -> int:
            body = {"model": "demo-llm", "prompt": "x", "max_tokens": 3}
            async with session.post(rp.url + "/v1/completions", json=body, headers=AUTH) as r:
                await r.read()
                return r.status

        async with aiohttp.ClientSession() as s:
            loris = [asyncio.ensure_future(slow_body()) for _ in range(20)]
            heads = [asyncio.ensure_future(slow_headers()) for _ in range(20)]
            await asyncio.sleep(0.3)
            statuses = await asyncio.gather(*(normal(s) for _ in range(30)))
            assert statuses == [200] * 30
            bodies = await asyncio.gather(*loris)
            head_results = await asyncio.gather(*heads)
        assert all(b.startswith(b"HTTP/1.1 408") and b"body_timeout" in b for b in bodies), bodies[:2]
        # Connections stuck in their headers are closed by the router (keep-alive timeout), not held forever.
        assert all(r != b"still open" for r in head_results), head_results[:2]


async def test_request_deadline_bounds_first_byte_and_stream(three: list[EmulatorProcess], tmp_path: Path) -> None:
    cfg = router_config([three[0].url])
    with running_router(cfg, tmp_path) as rp:
        url = rp.url + "/v1/completions"
        bad = httpx.post(
            url, json={"model": "demo-llm", "prompt": "x"}, headers={**AUTH, "x-infermesh-deadline-ms": "x"}
        )
        assert bad.status_code == 400 and "x-infermesh-deadline-ms" in bad.json()["error"]["message"]
        # A long stream under a short deadline is cut when the deadline passes, and the runtime aborts it.
        before = int(_stats(three[0])["aborted"])  # type: ignore[call-overload]
        body = {"model": "demo-llm", "prompt": "x", "max_tokens": 3000, "stream": True}
        t0 = time.monotonic()
        short = {**AUTH, "x-infermesh-deadline-ms": "700"}
        with pytest.raises(httpx.HTTPError), httpx.stream("POST", url, json=body, headers=short) as r:
            assert r.status_code == 200
            for _ in r.iter_raw():
                pass
        assert time.monotonic() - t0 < 10
        assert _wait_for(lambda: int(_stats(three[0])["aborted"]) > before)  # type: ignore[call-overload]
        # No first byte within the deadline: 504 naming it.
        httpx.post(three[0].url + "/emulator/faults", json={"hang": True}, timeout=10).raise_for_status()
        try:
            r = httpx.post(url, json={**body, "stream": False}, headers={**AUTH, "x-infermesh-deadline-ms": "400"})
            assert r.status_code == 504 and "first byte" in r.json()["error"]["message"]
        finally:
            httpx.post(three[0].url + "/emulator/faults", json={"hang": False}, timeout=10).raise_for_status()


def _wait_for(pred: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False
