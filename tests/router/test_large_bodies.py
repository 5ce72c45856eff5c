"""Large chat bodies: parsed only as far as routing reads them (the first messages, every other member), relayed as
they came; and a prompt tokenized and hashed only for strategies that read it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.config import parse_config
from router.openai_api import LAZY_MIN_BYTES, PartialBody, parse_chat_body, parse_json_body, validate
from router.prefix import RequestPrefix, request_prefix
from router.service import Refusal, RouterService
from router.upstream import UpstreamPool
from tests.router.procs import router_config, running_router
from tests.support import free_port

_WORDS = ["the", "mesh", "routes", "each", "request,", "{x}", "é", '"quoted"', "back\\slash", "line\n", "ü€"]


def _chat(size: int, seed: int = 1) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    msgs: list[dict[str, Any]] = []
    total = 0
    while total < size:
        text = " ".join(rnd.choice(_WORDS) for _ in range(150))
        if rnd.random() < 0.02:
            text += " a: [b] [1] [[2], [3]] ]"  # brackets in the text
        role = "assistant" if len(msgs) % 2 else "user"
        msgs.append({"role": role, "content": text if rnd.random() < 0.8 else [{"type": "text", "text": text}]})
        total += len(text) + 40
    return msgs


def _members(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "messages"}


@pytest.mark.parametrize("order", ["model_first", "sdk", "arrays_after"])
def test_a_large_chat_is_parsed_as_far_as_routing_reads_it(order: str) -> None:
    msgs = _chat(300_000)
    if order == "model_first":
        doc: dict[str, Any] = {"model": "m", "stream": True, "max_tokens": 8, "messages": msgs}
    elif order == "sdk":  # the OpenAI SDK sends the messages first
        doc = {"messages": msgs, "model": "m", "session_id": "s-1", "stream": False, "user": "u"}
    else:  # arrays and objects after the messages, one of them holding a ']' right before a comma
        doc = {"messages": msgs, "model": "m", "stop": ["]", "x"], "tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "array", "items": [[1], 2]}}}}}],
            "logit_bias": {"1": -1}, "max_completion_tokens": 4}  # fmt: skip
    for indent in (None, 2):
        body = json.dumps(doc, ensure_ascii=indent is None, indent=indent).encode()
        assert len(body) >= LAZY_MIN_BYTES
        got = parse_chat_body(body, 5_000)
        assert type(got) is PartialBody
        assert 1 < len(got["messages"]) < len(msgs) and got["messages"] == msgs[: len(got["messages"])]
        assert _members(got) == _members(doc) and list(got) == list(doc)  # every other member, in order
        parsed = validate("chat", got)
        assert parsed.partial and (parsed.model, parsed.stream) == ("m", doc.get("stream", False))
        # the characters not parsed are counted by their length: never fewer than the messages hold
        assert parsed.prompt_chars >= validate("chat", json.loads(body)).prompt_chars
        assert parsed.whole(body) == doc and not parsed.partial
        # a budget that covers the whole chat parses it all
        assert parse_chat_body(body, 10**9) == doc


def test_partial_parse_agrees_with_json_on_random_documents() -> None:
    rnd = random.Random(5)
    tricky = ["a", "b,", "[x]", "]", "[", "{", "}", ",", '"q"', "\\", "model", '"model": "z"', "\n", "é", '], "k": 1']

    def text() -> str:
        return " ".join(rnd.choice(tricky) for _ in range(rnd.randrange(0, 30)))

    def value(depth: int = 0) -> Any:
        r = rnd.random()
        if depth > 2 or r < 0.4:
            return rnd.choice([1, 2.5, True, None, text(), "x"])
        if r < 0.7:
            return [value(depth + 1) for _ in range(rnd.randrange(4))]
        return {text()[:8]: value(depth + 1) for _ in range(rnd.randrange(4))}

    lazy = 0
    for _ in range(400):
        msgs = [{"role": "user", "content": text() * 40} for _ in range(rnd.randrange(1, 30))]
        members: list[tuple[str, Any]] = [("model", "m"), ("messages", msgs)]
        for _ in range(rnd.randrange(6)):
            key = rnd.choice(["stream", "stop", "tools", "max_tokens", "x", "model", text()[:6]])
            members.insert(rnd.randrange(len(members) + 1), (key, value()))
        if rnd.random() < 0.1:  # a second "messages" after the first: the last one counts, as for json.loads
            members.append(("messages", [{"role": "user", "content": "again"}]))
        sep = rnd.choice([":", " : ", ":\n"])
        doc = "{" + ", ".join(json.dumps(k) + sep + json.dumps(v, ensure_ascii=False) for k, v in members) + "}\n"
        body = doc.encode().ljust(LAZY_MIN_BYTES, b" ")  # trailing whitespace: large enough to be read lazily
        want = json.loads(body)
        got = parse_chat_body(body, rnd.choice([0, 50, 5_000, 10**9]))
        if type(got) is PartialBody:
            lazy += 1
            assert got["messages"] == want["messages"][: len(got["messages"])]
            assert _members(got) == _members(want)
        else:
            assert got == want
    assert lazy > 20  # the rest were parsed in full (too many brackets to look at, or a second "messages")


@pytest.mark.parametrize(
    "body",
    ids=["no_json", "not_an_object", "bad_last_member", "messages_not_a_list", "not_utf8"],
    argvalues=[
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}, ' + b"oops" * 20_000 + b"]}",  # no JSON
        b'["model", ' + b'"x", ' * 20_000 + b'"y"]',  # not an object
        b'{"model": "m", "messages": [1, ' + b'"x", ' * 20_000 + b'"y"], "model": }',  # bad member at the end
        b'{"model": "m", "messages": "' + b"x" * LAZY_MIN_BYTES + b'"}',  # messages not an array
        '{"model": "\u00e9", "messages": []}'.encode("latin-1").ljust(LAZY_MIN_BYTES, b" "),  # not UTF-8
    ],
)
def test_a_large_body_that_is_not_clear_cut_gets_the_usual_answer(body: bytes) -> None:
    try:
        want: Any = parse_json_body(body)
    except Refusal as r:
        want = (r.status, r.code, r.message)
    try:
        got: Any = parse_chat_body(body, 5_000)
    except Refusal as r:
        got = (r.status, r.code, r.message)
    assert got == want


def test_hashes_of_a_partly_parsed_chat_are_those_of_the_whole() -> None:
    from router.config import CacheConfig

    cfg = CacheConfig(max_prompt_tokens=2048, block_size=16)
    msgs = _chat(200_000, seed=3)
    body = json.dumps({"messages": msgs, "model": "m"}).encode()
    part = parse_chat_body(body, 5 * cfg.max_prompt_tokens)
    assert type(part) is PartialBody
    whole = request_prefix("chat", json.loads(body), {}, cfg)
    assert whole.tokens == cfg.max_prompt_tokens
    assert request_prefix("chat", part, {}, cfg) == whole


# -- the strategy decides whether the prompt is hashed ---------------------------------------------------------------
def _service(strategy: str, **policy: Any) -> RouterService:
    cfg = parse_config(
        {
            "agent": {"address": None},
            "tenants": [{"name": "t", "api_keys": ["k"]}],
            "targets": [{"model": "m", "url": "http://127.0.0.1:9", "node": "n0"}],
            "default_policy": {"strategy": strategy, **policy},
        },
        env={},
    )
    return RouterService(cfg, UpstreamPool(limit=2, connect_timeout_s=1.0))


@pytest.mark.parametrize(
    ("strategy", "policy", "hashed"),
    [
        ("least_queue", {}, False),
        ("baseline_rr", {}, False),
        ("hybrid_mesh", {}, True),
        ("cache_aware", {}, True),
        ("least_queue", {"shadow_strategy": "hybrid_mesh"}, True),  # the shadow ranks it too
        ("least_queue", {"ab_split": {"least_queue": 0.5, "session_affinity": 0.5}}, True),
    ],
)
def test_the_prompt_is_hashed_only_for_a_strategy_that_reads_it(
    strategy: str, policy: dict[str, Any], hashed: bool
) -> None:
    svc = _service(strategy, **policy)
    asked: list[bool] = []

    def prefix(hashes: bool) -> RequestPrefix:
        asked.append(hashes)
        return RequestPrefix([1, 2], 32, "s") if hashes else RequestPrefix([], 0, "s")

    async def admit() -> Any:
        tenant = svc.authenticate({"Authorization": "Bearer k"})
        return await svc.admit(api="chat", model="m", tenant=tenant, priority="standard", prompt_chars=400,
                               max_tokens=4, corr_id="c1", prefix=prefix)  # fmt: skip

    ticket = asyncio.run(admit())
    assert asked == [hashed]
    assert ticket.prefix == (RequestPrefix([1, 2], 32, "s") if hashed else RequestPrefix([], 0, "s"))


# -- end to end: what the runtime receives ---------------------------------------------------------------------------
_ECHO = r"""
import asyncio, hashlib, json, sys
async def handle(reader, writer):
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            i = head.find(b"content-length:")
            body = await reader.readexactly(int(head[i + 15 : head.index(b"\r\n", i)])) if i >= 0 else b""
            if head.startswith(b"get"):
                out = b"{}"
            else:
                out = json.dumps({"sha256": hashlib.sha256(body).hexdigest(), "len": len(body), "choices": [],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(out)
                         + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), limit=1 << 23)
    print("listening", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


@contextmanager
def _echo() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _ECHO, str(port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and b"listening" in proc.stdout.readline()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("strategy", ["hybrid_mesh", "least_queue"])
def test_a_2mb_chat_reaches_the_runtime_byte_for_byte(tmp_path: Path, strategy: str) -> None:
    msgs = _chat(2_000_000, seed=9)
    with _echo() as url:
        cfg = router_config([url], default_policy={"strategy": strategy}, listen={"max_body_bytes": 8 << 20})
        cfg["targets"].append({"model": "renamed", "url": url, "upstream_model": "demo-llm-v2", "node": "n9"})
        with running_router(cfg, tmp_path) as r, httpx.Client(timeout=30) as c:
            headers = {"Authorization": "Bearer demo-key", "Content-Type": "application/json"}
            # the SDK's order (messages first), odd spacing and escapes: relayed exactly as sent
            body = b'{"messages" :' + json.dumps(msgs, indent=1).encode() + b',\n "model":"demo-llm", "stream": false}'
            assert len(body) > 2_000_000
            got = c.post(r.url + "/v1/chat/completions", content=body, headers=headers)
            assert got.status_code == 200, got.text
            assert got.json()["sha256"] == hashlib.sha256(body).hexdigest()
            # a target under another name gets the body rewritten for it: every message, its own model name
            got = c.post(r.url + "/v1/chat/completions", content=body.replace(b'"demo-llm"', b'"renamed"'),
                         headers=headers)  # fmt: skip
            assert got.status_code == 200, got.text
            expected = json.dumps({"messages": msgs, "model": "demo-llm-v2", "stream": False}).encode()
            assert got.json()["sha256"] == hashlib.sha256(expected).hexdigest()
            # a chat whose unparsed messages are no JSON reaches the runtime too (it answers for them)
            i = body.rindex(b'"role": "assistant"')
            bad = body[:i] + b'"role": assistant' + body[i + len(b'"role": "assistant"') :]
            assert c.post(r.url + "/v1/chat/completions", content=bad, headers=headers).status_code == 200


def test_a_wrapped_plugin_answers_for_what_its_strategy_reads() -> None:
    from agents.strategies.builtins import HybridMesh, LeastQueue
    from agents.strategies.plugins import Isolated

    assert Isolated(LeastQueue()).reads_prompt is False
    assert Isolated(HybridMesh()).reads_prompt is True


def test_a_deep_object_after_the_messages_is_parsed_in_full_not_tried_from_every_comma() -> None:
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(300):  # every comma inside is a member tried, each parsing the rest of the nesting
        cur["a"], cur["b"] = "y, " * 100, {}
        cur = cur["b"]
    doc = {"messages": _chat(100_000), "model": "m", "deep": deep, "stream": True}
    body = json.dumps(doc).encode()
    got = parse_chat_body(body, 5_000)
    assert type(got) is dict and got == doc
