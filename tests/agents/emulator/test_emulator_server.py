"""The emulator as a real process on loopback, driven by the official `openai` client and plain HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.emulator.profiles import get_profile
from agents.emulator.testing import EmulatorProcess, running_emulator, start_emulator

MODEL = "demo-llm"


@pytest.fixture(scope="module")
def vllm() -> Iterator[EmulatorProcess]:
    with running_emulator("--profile", "h100", "--flavor", "vllm", "--seed", "1") as em:
        yield em


def _client(em: EmulatorProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{em.url}/v1", api_key="unused", max_retries=0, timeout=30)


def _stats(em: EmulatorProcess) -> dict:
    return httpx.get(f"{em.url}/emulator/stats").json()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _wait_for(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_models_and_chat_completion(vllm: EmulatorProcess) -> None:
    client = _client(vllm)
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    r = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x" * 400}], max_tokens=7
    )
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.role == "assistant"
    assert r.usage is not None and r.usage.completion_tokens == 7
    # the project's tokenizer: BOS, role, 100 tokens of four characters, end of turn, assistant header
    assert r.usage.prompt_tokens == 1 + 1 + 100 + 1 + 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7
    assert len(r.choices[0].message.content.split()) == 7  # one word per token


async def test_completion_with_explicit_prompt_tokens(vllm: EmulatorProcess) -> None:
    client = _client(vllm)
    r = await client.completions.create(model=MODEL, prompt="hi", max_tokens=3, extra_body={"prompt_tokens": 1500})
    assert r.object == "text_completion"
    assert r.usage is not None and r.usage.prompt_tokens == 1500 and r.usage.completion_tokens == 3
    r2 = await client.completions.create(model=MODEL, prompt=[1, 2, 3, 4, 5], max_tokens=1)
    assert r2.usage is not None and r2.usage.prompt_tokens == 5


async def test_without_max_tokens_ends_with_stop(vllm: EmulatorProcess) -> None:
    r = await _client(vllm).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"prompt_tokens": 10}
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens >= 1


async def test_streaming_chat_chunks_and_usage(vllm: EmulatorProcess) -> None:
    client = _client(vllm)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"prompt_tokens": 3000},
    )
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 12
    assert content[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 3000 and chunks[-1].usage.completion_tokens == 12


async def test_streaming_completion_timing_follows_profile(vllm: EmulatorProcess) -> None:
    p = get_profile("h100")
    client = _client(vllm)
    start = time.monotonic()
    stream = await client.completions.create(
        model=MODEL, prompt="x", max_tokens=6, stream=True, extra_body={"prompt_tokens": 8000}
    )
    arrivals = []
    async for chunk in stream:
        arrivals.append(time.monotonic() - start)
        assert chunk.object == "text_completion"
    assert len(arrivals) == 6
    # the emulated GPU cannot be faster than its model: prefill of 8000 tokens, then one decode step per token
    # (judged from the request's start: a client that reads late squeezes the gaps between chunks, never the total)
    prefill = p.ttft_fixed_s + 8000 / p.prefill_tok_s
    assert arrivals[0] >= 0.9 * prefill
    assert arrivals[-1] >= 0.9 * (prefill + 5 * p.decode_step_s(1, 8000))


async def test_bad_requests_get_openai_errors(vllm: EmulatorProcess) -> None:
    client = _client(vllm)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        await client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="messages"):
        await client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        await client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    r = httpx.post(f"{vllm.url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{vllm.url}/emulator/faults", json={"slowdwn": 2})
    assert r.status_code == 400 and "slowdwn" in r.json()["error"]["message"]
    r = httpx.post(f"{vllm.url}/emulator/faults", json={"error_rate": 3})
    assert r.status_code == 400 and "error_rate" in r.json()["error"]["message"]


async def test_traceparent_is_recorded(vllm: EmulatorProcess) -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await _client(vllm).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1, extra_headers={"traceparent": tp}
    )
    assert tp in _stats(vllm)["traceparents"]


async def test_client_disconnect_aborts_request(vllm: EmulatorProcess) -> None:
    before = _stats(vllm)
    async with httpx.AsyncClient(timeout=30) as http:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 5000, "stream": True}
        async with http.stream("POST", f"{vllm.url}/v1/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    break  # first token arrived; hang up mid-generation
        # a non-streaming request abandoned while it waits
        task = asyncio.create_task(http.post(f"{vllm.url}/v1/completions", json={**body, "stream": False}))
        await _wait_for(lambda: _stats(vllm)["running"] >= 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await _wait_for(lambda: _stats(vllm)["aborted"] == before["aborted"] + 2)
    await _wait_for(lambda: _stats(vllm)["running"] == 0)
    stats = _stats(vllm)
    assert stats["kv_cache_usage"] == 0.0
    samples = _samples(httpx.get(f"{vllm.url}/metrics").text)
    key = ("vllm:request_success_total", (("finished_reason", "abort"), ("model_name", MODEL)))
    assert samples[key] == before["aborted"] + 2


async def test_queueing_when_sequence_slots_are_full() -> None:
    em = start_emulator("--profile", "l40s", "--max-num-seqs", "2", "--flavor", "vllm")
    try:
        client = _client(em)
        tasks = [
            asyncio.create_task(
                client.completions.create(model=MODEL, prompt="x", max_tokens=40, extra_body={"prompt_tokens": 100})
            )
            for _ in range(5)
        ]
        await _wait_for(lambda: _stats(em)["waiting"] == 3)
        stats = _stats(em)
        assert stats["running"] == 2 and stats["kv_cache_usage"] > 0
        samples = _samples(httpx.get(f"{em.url}/metrics").text)
        assert samples[("vllm:num_requests_running", (("model_name", MODEL),))] == 2
        assert samples[("vllm:num_requests_waiting", (("model_name", MODEL),))] == 3
        results = await asyncio.gather(*tasks)
        assert all(r.usage is not None and r.usage.completion_tokens == 40 for r in results)
        samples = _samples(httpx.get(f"{em.url}/metrics").text)
        assert samples[("vllm:request_success_total", (("finished_reason", "length"), ("model_name", MODEL)))] == 5
        assert samples[("vllm:generation_tokens_total", (("model_name", MODEL),))] == 200
        assert samples[("vllm:time_to_first_token_seconds_count", (("model_name", MODEL),))] == 5
        # queued requests waited for a slot, so their queue time is positive
        assert samples[("vllm:request_queue_time_seconds_sum", (("model_name", MODEL),))] > 0
    finally:
        em.stop()


async def test_faults_error_rate_slowdown_hang_and_crash() -> None:
    em = start_emulator("--profile", "h100", "--flavor", "tgi", "--seed", "3")
    try:
        client = _client(em)
        assert httpx.post(f"{em.url}/emulator/faults", json={"error_rate": 1.0}).status_code == 200
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert _stats(em)["errors"] == 1
        httpx.post(f"{em.url}/emulator/faults", json={"error_rate": 0.0, "slowdown": 20.0})
        p = get_profile("h100")
        start = time.monotonic()
        await client.completions.create(model=MODEL, prompt="x", max_tokens=5, extra_body={"prompt_tokens": 10})
        assert time.monotonic() - start >= 0.9 * 20 * (p.ttft_fixed_s + 4 * p.itl_b1_s)
        httpx.post(f"{em.url}/emulator/faults", json={"reset": True, "hang": True})
        task = asyncio.create_task(client.completions.create(model=MODEL, prompt="x", max_tokens=2))
        await asyncio.sleep(0.5)
        assert not task.done()
        assert _stats(em)["faults"]["hang"] is True
        httpx.post(f"{em.url}/emulator/faults", json={"hang": False})
        r = await asyncio.wait_for(task, 10)
        assert r.usage is not None and r.usage.completion_tokens == 2
        text = httpx.get(f"{em.url}/metrics").text
        assert 'tgi_request_failure{err="generation"} 1' in text
        r = httpx.post(f"{em.url}/emulator/faults", json={"crash": True})
        assert r.status_code == 200
        assert em.proc.wait(10) == 70
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{em.url}/health")
    finally:
        em.stop()


async def test_instant_mode_answers_without_token_timing() -> None:
    with running_emulator("--instant", "--flavor", "triton") as em:
        client = _client(em)
        r = await client.completions.create(
            model=MODEL, prompt="x", max_tokens=2000, extra_body={"prompt_tokens": 8000}
        )
        assert r.usage is not None and r.usage.completion_tokens == 2000
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=50, stream=True
        )
        assert len([c async for c in stream if c.choices and c.choices[0].delta.content]) == 50
        stats = _stats(em)
        assert stats["instant"] is True and stats["completed"] == 2 and stats["iterations"] == 0


@pytest.mark.parametrize("flavor", ["vllm", "vllm-v0", "tgi", "triton", "sglang"])
def test_metrics_parse_as_prometheus_text(flavor: str) -> None:
    with running_emulator("--flavor", flavor, "--profile", "a100") as em:
        r = httpx.post(
            f"{em.url}/v1/completions", json={"model": MODEL, "prompt": "hello world", "max_tokens": 3}, timeout=30
        )
        assert r.status_code == 200
        resp = httpx.get(f"{em.url}/metrics")
        assert resp.headers["content-type"].startswith("text/plain")
        names = {s.name for fam in text_string_to_metric_families(resp.text) for s in fam.samples}
        expected = {
            "vllm": {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                     "vllm:time_to_first_token_seconds_bucket"},
            "vllm-v0": {"vllm:gpu_cache_usage_perc", "vllm:num_requests_swapped",
                        "vllm:time_per_output_token_seconds_sum"},
            "tgi": {"tgi_queue_size", "tgi_batch_current_size", "tgi_request_duration_bucket"},
            "triton": {"nv_inference_pending_request_count", "nv_trt_llm_kv_cache_block_metrics",
                       "nv_inference_first_response_histogram_ms_bucket"},
            "sglang": {"sglang:num_queue_reqs", "sglang:token_usage", "sglang:time_to_first_token_seconds_count"},
        }[flavor]  # fmt: skip
        assert expected <= names
        assert httpx.get(f"{em.url}/health").status_code == 200


def test_bad_command_line_names_the_problem() -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "agents.emulator", "--profile", "tpu"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "--profile" in r.stderr and "tpu" in r.stderr
