"""The router's API surface beyond chat/completions, end to end over loopback: /v1/responses (streamed, background,
follow-ups pinned to the target that holds the response), /v1/messages and count_tokens, /tokenize, /detokenize,
richer chat requests (tools, logprobs, n > 1, response_format, include_usage), embeddings; refusals where a runtime
flavour cannot serve the API; metering from the runtime's own usage. Real router and emulator processes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from agents.emulator.testing import EmulatorProcess, start_emulator
from tests.router.procs import RouterProc, router_config, start_router

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": "Bearer demo-key"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RouterProc, list[EmulatorProcess]]]:
    ems = [
        start_emulator("--flavor", "vllm", "--model", "demo-llm", "--profile", "h100", "--seed", "1"),
        start_emulator("--flavor", "vllm", "--model", "demo-llm", "--profile", "h100", "--seed", "2"),
        start_emulator("--flavor", "tgi", "--model", "tgi-llm", "--profile", "a100"),
    ]
    cfg = router_config([ems[0].url, ems[1].url], default_policy={"strategy": "baseline_rr"})
    cfg["targets"].append({"model": "tgi-llm", "url": ems[2].url, "runtime": "tgi", "node": "t0"})
    rp = start_router(cfg, tmp_path_factory.mktemp("router"))
    yield rp, ems
    rp.stop()
    for em in ems:
        em.stop()


def _post(rp: RouterProc, path: str, body: dict, **kw: object) -> httpx.Response:
    return httpx.post(rp.url + path, json=body, headers=AUTH, timeout=30, **kw)  # type: ignore[arg-type]


def _tokens(rp: RouterProc) -> dict[str, float]:
    out = {}
    for line in httpx.get(rp.url + "/metrics").text.splitlines():
        m = re.match(r'infermesh_router_tokens_total\{kind="(\w+)",model="demo-llm",tenant="demo"\} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def _sse(raw: str) -> list[tuple[str | None, dict]]:
    out = []
    for block in raw.split("\n\n"):
        event, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and line[6:] != "[DONE]":
                data = json.loads(line[6:])
        if data is not None:
            out.append((event, data))
    return out


def test_responses_streamed_and_metered_from_usage(fleet: tuple[RouterProc, list[EmulatorProcess]]) -> None:
    rp, _ = fleet
    before = _tokens(rp)
    r = _post(rp, "/v1/responses", {"model": "demo-llm", "input": "tell me", "max_output_tokens": 5, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    kinds = [e for e, _ in events]
    assert kinds[0] == "response.created" and kinds.count("response.output_text.delta") == 5
    final = events[-1][1]["response"]
    usage = final["usage"]
    after = _tokens(rp)
    # The router counted the runtime's own figures, not its event count.
    assert after["completion"] - before.get("completion", 0) == usage["output_tokens"] == 5
    assert after["prompt"] - before.get("prompt", 0) == usage["input_tokens"]


def test_background_response_and_follow_ups_reach_the_holder(fleet: tuple[RouterProc, list[EmulatorProcess]]) -> None:
    rp, ems = fleet
    before_tokens = _tokens(rp)
    r = _post(rp, "/v1/responses", {"model": "demo-llm", "input": "work", "max_output_tokens": 3, "background": True})
    assert r.status_code == 200 and r.json()["status"] == "queued"
    rid = r.json()["id"]
    deadline = time.monotonic() + 20
    while True:
        g = httpx.get(f"{rp.url}/v1/responses/{rid}", headers=AUTH, timeout=10)
        assert g.status_code == 200, g.text
        if g.json()["status"] in ("completed", "incomplete") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert g.json()["output"][0]["content"][0]["text"]
    httpx.get(f"{rp.url}/v1/responses/{rid}", headers=AUTH, timeout=10)  # seen finished again: counted once
    tokens = _tokens(rp)
    assert tokens["completion"] - before_tokens.get("completion", 0) == g.json()["usage"]["output_tokens"] == 3
    assert tokens["prompt"] - before_tokens.get("prompt", 0) == g.json()["usage"]["input_tokens"]
    # Round robin would alternate; follow-ups must all land on the one emulator that holds the response.
    holder = [em for em in ems[:2] if httpx.get(f"{em.url}/v1/responses/{rid}").status_code == 200]
    assert len(holder) == 1
    before = httpx.get(holder[0].url + "/emulator/stats").json()["requests"]
    for _ in range(3):
        f = _post(
            rp,
            "/v1/responses",
            {"model": "demo-llm", "input": "more", "max_output_tokens": 2, "previous_response_id": rid},
        )
        assert f.status_code == 200 and f.json()["previous_response_id"] == rid
    assert httpx.get(holder[0].url + "/emulator/stats").json()["requests"] == before + 3
    c = httpx.post(f"{rp.url}/v1/responses/{rid}/cancel", headers=AUTH, timeout=10)
    assert c.status_code == 200 and c.json()["id"] == rid


def test_follow_up_naming_an_unknown_response_is_404(fleet: tuple[RouterProc, list[EmulatorProcess]]) -> None:
    rp, _ = fleet
    r = _post(rp, "/v1/responses", {"model": "demo-llm", "input": "x", "previous_response_id": "resp_nobody"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "response_not_found" and "resp_nobody" in r.json()["error"]["message"]
    g = httpx.get(f"{rp.url}/v1/responses/resp_nobody", headers=AUTH)
    assert g.status_code == 404 and "resp_nobody" in g.json()["error"]["message"]
    assert httpx.get(f"{rp.url}/v1/responses/resp_nobody").status_code == 401


def test_messages_and_count_tokens(fleet: tuple[RouterProc, list[EmulatorProcess]]) -> None:
    rp, _ = fleet
    body = {"model": "demo-llm", "max_tokens": 4, "messages": [{"role": "user", "content": "hello there"}]}
    headers = {"x-api-key": "demo-key", "anthropic-version": "2023-06-01"}
    r = httpx.post(rp.url + "/v1/messages", json=body, headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 4
    before = _tokens(rp)
    s = httpx.post(rp.url + "/v1/messages", json={**body, "stream": True}, headers=headers, timeout=30)
    events = _sse(s.text)
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    after = _tokens(rp)
    assert after["completion"] - before["completion"] == 4
    assert after["prompt"] - before["prompt"] == events[0][1]["message"]["usage"]["input_tokens"]
    c = httpx.post(
        rp.url + "/v1/messages/count_tokens", json={k: body[k] for k in ("model", "messages")}, headers=headers
    )
    assert c.status_code == 200 and c.json()["input_tokens"] == events[0][1]["message"]["usage"]["input_tokens"]
    # Unknown model, missing max_tokens: Anthropic-shaped 4xx, never a 500.
    u = httpx.post(rp.url + "/v1/messages", json={**body, "model": "nope"}, headers=headers)
    assert u.status_code == 404 and u.json()["error"]["type"] == "not_found_error" and "nope" in u.text
    m = httpx.post(rp.url + "/v1/messages", json={k: body[k] for k in ("model", "messages")}, headers=headers)
    assert m.status_code == 400 and "max_tokens" in m.json()["error"]["message"]


def test_tokenize_and_detokenize(fleet: tuple[RouterProc, list[EmulatorProcess]]) -> None:
    rp, _ = fleet
    text = "the mesh routes tokens to a warm replica"  # words of the emulated model: every emulator knows them
    t = _post(rp, "/tokenize", {"model": "demo-llm", "prompt": text})
    assert t.status_code == 200 and t.json()["count"] == len(t.json()["tokens"]) > 1
    d = _post(rp, "/detokenize", {"model": "demo-llm", "tokens": t.json()["tokens"][1:]})
    assert d.status_code == 200 and d.json()["prompt"] == text
    assert _post(rp, "/tokenize", {"prompt": "x"}).status_code == 400  # the router routes by model


def test_flavour_without_the_api_is_refused(fleet: tuple[RouterProc, list[EmulatorProcess]]) -> None:
    rp, _ = fleet
    for path, body in [
        ("/v1/responses", {"model": "tgi-llm", "input": "x"}),
        ("/v1/embeddings", {"model": "tgi-llm", "input": "x"}),
        ("/tokenize", {"model": "tgi-llm", "prompt": "x"}),
    ]:
        r = _post(rp, path, body)
        assert r.status_code == 501, (path, r.text)
        assert "tgi" in r.json()["error"]["message"] and path in r.json()["error"]["message"]
    m = httpx.post(
        rp.url + "/v1/messages",
        json={"model": "tgi-llm", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
        headers=AUTH,
    )
    assert m.status_code == 501 and m.json()["type"] == "error"
    # The flavour serves chat all the same.
    ok = _post(
        rp,
        "/v1/chat/completions",
        {"model": "tgi-llm", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
    )
    assert ok.status_code == 200


def test_chat_tools_logprobs_n_format_usage(fleet: tuple[RouterProc, list[EmulatorProcess]]) -> None:
    rp, _ = fleet
    msgs = [{"role": "user", "content": "weather?"}]
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
    r = _post(
        rp,
        "/v1/chat/completions",
        {"model": "demo-llm", "messages": msgs, "tools": [tool], "max_tokens": 6, "tool_choice": "required"},
    )
    call = r.json()["choices"][0]["message"]["tool_calls"][0]
    assert r.json()["choices"][0]["finish_reason"] == "tool_calls" and call["function"]["name"] == "weather"
    assert set(json.loads(call["function"]["arguments"])) == {"city", "days"}
    r = _post(
        rp,
        "/v1/chat/completions",
        {"model": "demo-llm", "messages": msgs, "n": 3, "max_tokens": 4, "logprobs": True, "top_logprobs": 2},
    )
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2] and r.json()["usage"]["completion_tokens"] == 12
    assert all(
        len(c["logprobs"]["content"]) == 4 and len(c["logprobs"]["content"][0]["top_logprobs"]) == 2 for c in choices
    )
    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "score": {"type": "number"}}}
    r = _post(
        rp,
        "/v1/chat/completions",
        {
            "model": "demo-llm",
            "messages": msgs,
            "max_tokens": 8,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        },
    )
    assert set(json.loads(r.json()["choices"][0]["message"]["content"])) == {"answer", "score"}
    before = _tokens(rp)
    s = _post(
        rp,
        "/v1/chat/completions",
        {
            "model": "demo-llm",
            "messages": msgs,
            "max_tokens": 5,
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    usage = _sse(s.text)[-1][1]["usage"]
    assert usage["completion_tokens"] == 10
    assert _tokens(rp)["completion"] - before["completion"] == 10  # from usage, not the 12 content events
    e = _post(rp, "/v1/embeddings", {"model": "demo-llm", "input": ["a", "b"]})
    assert e.status_code == 200 and len(e.json()["data"]) == 2 and e.json()["usage"]["prompt_tokens"] == 2


def test_emulator_flavours_serve_what_their_release_serves(fleet: tuple[RouterProc, list[EmulatorProcess]]) -> None:
    vllm = fleet[1][0]
    assert httpx.get(vllm.url + "/version").json() == {"version": "0.32.0"}
    assert httpx.get(vllm.url + "/load").json()["server_load"] >= 0
    em = start_emulator("--flavor", "sglang", "--model", "m", "--instant")
    try:
        assert httpx.post(em.url + "/v1/responses", json={"model": "m", "input": "x"}).status_code == 404
        assert httpx.post(em.url + "/v1/embeddings", json={"model": "m", "input": "x"}).status_code == 200
    finally:
        em.stop()
