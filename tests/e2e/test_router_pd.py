"""Disaggregated serving end to end: a real router in front of a prefill pool and a decode pool of emulated vLLM
runtimes, driven by the official OpenAI client, streamed and not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from agents.emulator.testing import EmulatorProcess, start_emulator
from tests.router.procs import RouterProc, router_config, running_router

pytestmark = pytest.mark.e2e
SYSTEM = "You are the mesh's long-context assistant. " * 120  # about 1,300 tokens: many full KV blocks


@pytest.fixture(scope="module")
def pools() -> Iterator[dict[str, list[EmulatorProcess]]]:
    out: dict[str, list[EmulatorProcess]] = {"prefill": [], "decode": []}
    try:
        for role in ("prefill", "prefill", "decode", "decode"):
            out[role].append(start_emulator("--role", role, "--seed", str(len(out[role])), "--kv-link-gbps", "50"))
        yield out
    finally:
        for ems in out.values():
            for em in ems:
                em.stop()


@pytest.fixture(scope="module")
def router(pools: dict[str, list[EmulatorProcess]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    cfg = router_config([])
    cfg["targets"] = [
        {"model": "demo-llm", "url": em.url, "node": f"{role}{i}", "zone": "z1", "role": role}
        for role, ems in pools.items()
        for i, em in enumerate(ems)
    ]
    with running_router(cfg, tmp_path_factory.mktemp("pd")) as rp:
        yield rp


def stats(em: EmulatorProcess) -> dict[str, Any]:
    return httpx.get(f"{em.url}/emulator/stats").json()  # type: ignore[no-any-return]


def pd_lines(router: RouterProc, n: int) -> list[dict[str, Any]]:
    """The access-log lines of disaggregated requests, once there are `n` (a line follows the answer's end)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in router.logs() if line.get("strategy") == "pd"]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_chat_is_prefilled_on_one_pool_and_decoded_on_the_other(
    pools: dict[str, list[EmulatorProcess]], router: RouterProc
) -> None:
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="demo-key", max_retries=0)
    messages: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where is my KV?"}]
    answer = client.chat.completions.create(model="demo-llm", messages=messages, max_tokens=12)
    assert answer.choices[0].message.content and answer.usage is not None
    assert answer.usage.completion_tokens == 12 and answer.usage.prompt_tokens > 1000

    prefill = [stats(em) for em in pools["prefill"]]
    decode = [stats(em) for em in pools["decode"]]
    # one prefill instance computed the prompt and produced one token; one decode instance pulled the KV and
    # computed only the prompt's partial last block, then generated all 12 tokens
    assert sorted(s["generation_tokens"] for s in prefill) == [0, 1]
    assert sum(s["prompt_tokens"] for s in prefill) == answer.usage.prompt_tokens
    pulled = [s for s in decode if s["kv_transfer"]["transfers"]]
    assert len(pulled) == 1 and pulled[0]["generation_tokens"] == 12
    assert pulled[0]["kv_transfer"]["bytes"] == (answer.usage.prompt_tokens // 16) * 16 * 131_072
    assert pulled[0]["prompt_tokens"] < 16  # the partial block, not the prompt

    (line,) = pd_lines(router, 1)
    assert line["status"] == 200 and line["pd_prefill"].startswith("demo-llm@") and line["pd_transfer_ms"] > 0
    assert line["target"] != line["pd_prefill"]

    # the same prompt again, streamed: the prefill that holds it is chosen, and the decode that holds it pulls less
    stream = client.chat.completions.create(
        model="demo-llm", messages=messages, max_tokens=9, stream=True, stream_options={"include_usage": True}
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens == 9 and len("".join(pieces).split()) == 9
    first, second = pd_lines(router, 2)
    assert second["pd_prefill"] == first["pd_prefill"] and second["target"] == first["target"]
    assert second["pd_transfer_ms"] < first["pd_transfer_ms"]
    hits = [stats(em)["prefix_cache"]["hits"] for em in pools["prefill"]]
    assert max(hits) >= answer.usage.prompt_tokens - 16

    metrics = httpx.get(router.url + "/metrics").text
    assert 'infermesh_router_pd_requests_total{model="demo-llm",outcome="ok"} 2.0' in metrics
    assert "infermesh_router_pd_kv_transfer_seconds_count" in metrics


def test_completions_stream_through_the_decode_pool(router: RouterProc) -> None:
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="demo-key", max_retries=0)
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model="demo-llm", prompt="mesh " * 600, max_tokens=7, stream=True)
        if c.choices
    )
    assert len(text.split()) == 7
    done = client.completions.create(model="demo-llm", prompt="mesh " * 600, max_tokens=5)
    assert done.usage is not None and done.usage.completion_tokens == 5


def test_a_bad_prompt_is_refused_by_the_prefill_stage(router: RouterProc) -> None:
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="demo-key", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model="demo-llm", prompt="mesh " * 40_000, max_tokens=5)


def test_other_apis_of_the_model_go_to_its_decode_pool(
    pools: dict[str, list[EmulatorProcess]], router: RouterProc
) -> None:
    before = [stats(em)["requests"] for em in pools["prefill"]]
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="demo-key", max_retries=0)
    answer = client.responses.create(model="demo-llm", input="Which pool answers me?", max_output_tokens=6)
    assert answer.usage is not None and answer.usage.output_tokens == 6  # a prefill target would stop at one
    assert [stats(em)["requests"] for em in pools["prefill"]] == before
