"""The official clients a platform team points at us, with their default settings, through a real router: `openai`
(sync and async; chat, completions, responses, embeddings; streaming), `anthropic` (messages, streaming, token
counting) and `tritonclient` (HTTP and gRPC). Each runs against the router in front of emulated vLLM runtimes, and
in front of a real vLLM (CPU build, started once per session) for every API that runtime serves."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import anthropic
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from agents.emulator.testing import start_emulator
from tests.router.procs import router_config, start_router

# The first test to use the session's real vLLM waits for it to start (minutes on two busy cores).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
KEY = "demo-key"


@dataclass
class Backend:
    name: str
    url: str
    grpc_port: int
    model: str
    apis: frozenset[str]  # what the runtime behind the router serves


EMULATED = frozenset({"chat", "completions", "responses", "embeddings", "messages", "tokenize", "kserve"})
REAL_VLLM = frozenset({"chat", "completions", "responses", "messages", "tokenize", "kserve"})  # a generative model


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    ems = [start_emulator("--flavor", "vllm", "--model", "demo-llm", "--profile", p) for p in ("h100", "a100")]
    rp = start_router(router_config([e.url for e in ems], listen={"grpc_port": 0}), tmp_path_factory.mktemp("r"))
    assert rp.grpc_port
    yield Backend("emulated vLLM", rp.url, rp.grpc_port, "demo-llm", EMULATED)
    rp.stop()
    for e in ems:
        e.stop()


@pytest.fixture(scope="module")
def real(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    srv = request.getfixturevalue("real_vllm")  # one server for the whole session (tests/conftest.py)
    cfg = router_config([], listen={"grpc_port": 0})
    cfg["targets"] = [{"model": srv.model, "url": srv.url, "runtime": "vllm", "node": "cpu0"}]
    rp = start_router(cfg, tmp_path_factory.mktemp("r"))
    assert rp.grpc_port
    yield Backend("real vLLM", rp.url, rp.grpc_port, srv.model, REAL_VLLM)
    rp.stop()


@pytest.fixture(params=["emulated", "real"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def _msgs() -> list[dict[str, str]]:
    return [{"role": "user", "content": "tell me about the mesh"}]


def test_openai_sync(backend: Backend) -> None:
    c = openai.OpenAI(base_url=backend.url + "/v1", api_key=KEY)
    r = c.chat.completions.create(model=backend.model, messages=_msgs(), max_tokens=5)  # type: ignore[arg-type]
    assert r.usage is not None and r.usage.completion_tokens > 0 and r.choices[0].message.content is not None
    stream = c.chat.completions.create(
        model=backend.model,
        messages=_msgs(),  # type: ignore[arg-type]
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 5
    comp = c.completions.create(model=backend.model, prompt="the mesh", max_tokens=4)
    assert comp.usage is not None and 0 < comp.usage.completion_tokens <= 4
    pieces = [
        ch.choices[0].text for ch in c.completions.create(model=backend.model, prompt="a", max_tokens=3, stream=True)
    ]
    assert 0 < len(pieces) <= 3


def test_openai_responses(backend: Backend) -> None:
    c = openai.OpenAI(base_url=backend.url + "/v1", api_key=KEY)
    r = c.responses.create(model=backend.model, input="tell me", max_output_tokens=16)
    assert r.id and r.usage is not None and r.usage.output_tokens > 0
    kinds = [ev.type for ev in c.responses.create(model=backend.model, input="more", max_output_tokens=16, stream=True)]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds
    follow = c.responses.create(model=backend.model, input="and then?", max_output_tokens=16, previous_response_id=r.id)
    assert follow.previous_response_id == r.id
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model=backend.model, input="x", previous_response_id="resp_nobody_holds_this")


def test_openai_embeddings(emulated: Backend) -> None:
    """Embeddings against the emulator only: the real vLLM here serves a generative model, not a pooling one."""
    c = openai.OpenAI(base_url=emulated.url + "/v1", api_key=KEY)
    e = c.embeddings.create(model=emulated.model, input=["a mesh", "a router"])
    assert len(e.data) == 2 and len(e.data[0].embedding) > 8


async def test_openai_async(backend: Backend) -> None:
    c = openai.AsyncOpenAI(base_url=backend.url + "/v1", api_key=KEY)
    r = await c.chat.completions.create(model=backend.model, messages=_msgs(), max_tokens=4)  # type: ignore[arg-type]
    assert r.usage is not None and r.usage.completion_tokens > 0
    parts = []
    stream = await c.chat.completions.create(
        model=backend.model,
        messages=_msgs(),
        max_tokens=4,  # type: ignore[arg-type]
        stream=True,
    )
    async for ch in stream:
        if ch.choices and ch.choices[0].delta.content:
            parts.append(ch.choices[0].delta.content)
    assert parts
    comp = await c.completions.create(model=backend.model, prompt="x", max_tokens=3)
    assert comp.usage is not None and 0 < comp.usage.completion_tokens <= 3
    kinds = [
        ev.type
        async for ev in await c.responses.create(model=backend.model, input="x", max_output_tokens=8, stream=True)
    ]
    assert kinds[0] == "response.created"
    if "embeddings" in backend.apis:
        e = await c.embeddings.create(model=backend.model, input="x")
        assert e.data[0].embedding
    await c.close()


def test_anthropic_messages(backend: Backend) -> None:
    c = anthropic.Anthropic(base_url=backend.url, api_key=KEY)
    m = c.messages.create(model=backend.model, max_tokens=8, messages=[{"role": "user", "content": "hello"}])
    assert m.usage.output_tokens > 0 and m.content[0].type == "text"
    with c.messages.stream(model=backend.model, max_tokens=8, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert final.usage.output_tokens > 0 and isinstance(text, str)
    n = c.messages.count_tokens(model=backend.model, messages=[{"role": "user", "content": "hello there"}])
    assert n.input_tokens > 0
    with pytest.raises(anthropic.NotFoundError):
        c.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])


def _triton_inputs(mod: object, max_tokens: int) -> list[object]:
    text = mod.InferInput("text_input", [1], "BYTES")  # type: ignore[attr-defined]
    text.set_data_from_numpy(np.array([b"tell me about the mesh"], dtype=np.object_))
    mt = mod.InferInput("max_tokens", [1], "INT32")  # type: ignore[attr-defined]
    mt.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    return [text, mt]


def _tokens_ok(backend: Backend, got: list[int], max_tokens: int) -> bool:
    # The emulator generates exactly max_tokens; the real tiny model samples and may end early at its EOS.
    return got == [max_tokens] if backend.name != "real vLLM" else len(got) == 1 and 1 <= got[0] <= max_tokens


def test_tritonclient_http_and_grpc(backend: Backend) -> None:
    h = httpclient.InferenceServerClient(backend.url.removeprefix("http://"))
    res = h.infer(backend.model, _triton_inputs(httpclient, 4), headers={"Authorization": f"Bearer {KEY}"})
    assert _tokens_ok(backend, res.as_numpy("num_output_tokens").tolist(), 4)
    g = grpcclient.InferenceServerClient(f"127.0.0.1:{backend.grpc_port}")
    res = g.infer(backend.model, _triton_inputs(grpcclient, 3), headers={"authorization": f"Bearer {KEY}"})
    assert _tokens_ok(backend, res.as_numpy("num_output_tokens").tolist(), 3)
    g.close()
