"""Router end to end over loopback: SSE passthrough, the official openai client, KServe v2 HTTP and gRPC, WebSocket,
traceparent propagation, several workers on one port. Real emulated runtimes and a real router process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import httpx
import openai
import pytest

from agents.emulator.testing import EmulatorProcess, start_emulator
from router.proto import grpc_predict_v2_pb2 as pb
from router.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.router.procs import FIXED_STREAM, RouterProc, free_port, router_config, scripted_upstream, start_router

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": "Bearer demo-key"}


@pytest.fixture(scope="module")
def emulators() -> Iterator[list[EmulatorProcess]]:
    ems = [
        start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm", "--seed", "1"),
        start_emulator("--profile", "a100", "--flavor", "vllm", "--model", "demo-llm", "--seed", "2"),
    ]
    yield ems
    for em in ems:
        em.stop()


@pytest.fixture(scope="module")
def router(emulators: list[EmulatorProcess], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    cfg = router_config([e.url for e in emulators], listen={"grpc_port": 0})
    rp = start_router(cfg, tmp_path_factory.mktemp("router"))
    yield rp
    rp.stop()


def _events(raw: bytes) -> list[bytes]:
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


async def test_sse_streams_arrive_intact_and_in_order(router: RouterProc) -> None:
    body = {"model": "demo-llm", "messages": [{"role": "user", "content": "count"}], "max_tokens": 12, "stream": True}

    async def one(session: aiohttp.ClientSession) -> None:
        async with session.post(router.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            raw = await r.read()
        events = _events(raw)
        assert events[-1] == b"[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert len({c["id"] for c in chunks}) == 1  # one response, not spliced from two upstreams
        content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert len([x for x in content if x]) == 12
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(one(s) for _ in range(20)))


async def test_sse_passthrough_is_byte_exact(tmp_path: Path) -> None:
    with scripted_upstream() as up:
        rp = start_router(router_config([up]), tmp_path)
        try:
            async with aiohttp.ClientSession() as s:
                body = {"model": "demo-llm", "messages": [{"role": "user", "content": "x"}], "stream": True}
                async with s.post(rp.url + "/v1/chat/completions", json={**body, "mode": "fixed"}, headers=AUTH) as r:
                    assert r.status == 200
                    pieces = [chunk async for chunk in r.content.iter_any()]
            assert b"".join(pieces) == FIXED_STREAM
            # Embeddings pass through the same way (JSON, Content-Length kept).
            async with aiohttp.ClientSession() as s:
                emb = {"model": "demo-llm", "input": "hello", "mode": "json"}
                async with s.post(rp.url + "/v1/embeddings", json=emb, headers=AUTH) as r:
                    assert r.status == 200
                    assert (await r.json())["data"][0]["embedding"] == [0.5, 0.25]
        finally:
            rp.stop()


def test_openai_client_streaming_and_not(router: RouterProc) -> None:
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="demo-key", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == ["demo-llm"]
    r = client.chat.completions.create(model="demo-llm", messages=[{"role": "user", "content": "hello"}], max_tokens=6)
    assert r.choices[0].message.content
    assert r.usage is not None and r.usage.completion_tokens == 6
    stream = client.chat.completions.create(
        model="demo-llm", messages=[{"role": "user", "content": "hello"}], max_tokens=6, stream=True
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 6
    comp = client.completions.create(model="demo-llm", prompt="once upon", max_tokens=4)
    assert comp.choices[0].text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=router.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "nope" in str(e.value)


def test_traceparent_reaches_the_runtime(router: RouterProc, emulators: list[EmulatorProcess]) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    tp = f"00-{trace_id}-00f067aa0ba902b7-01"
    for _ in range(2):  # either runtime may serve it
        r = httpx.post(
            router.url + "/v1/completions",
            json={"model": "demo-llm", "prompt": "x", "max_tokens": 2},
            headers={**AUTH, "traceparent": tp},
            timeout=30,
        )
        assert r.status_code == 200
    seen = [tp for em in emulators for tp in httpx.get(em.url + "/emulator/stats").json()["traceparents"]]
    ours = [s for s in seen if s.split("-")[1] == trace_id]
    assert ours, seen
    # The runtime sees the router's own span as parent, in the same trace.
    assert all(s.split("-")[2] != "00f067aa0ba902b7" for s in ours)


def test_kserve_v2_http(router: RouterProc) -> None:
    assert httpx.get(router.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(router.url + "/v2/health/ready").status_code == 200
    assert httpx.get(router.url + "/v2/models/demo-llm/ready", headers=AUTH).json()["ready"] is True
    assert httpx.get(router.url + "/v2/models/nope/ready", headers=AUTH).status_code == 404
    assert httpx.get(router.url + "/v2/models/demo-llm/ready").status_code == 401
    body = {
        "id": "r1",
        "inputs": [
            {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["tell me"]},
            {"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [3]},
        ],
    }
    r = httpx.post(router.url + "/v2/models/demo-llm/infer", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "r1" and out["outputs"][0]["name"] == "text_output" and out["outputs"][0]["data"][0]
    bad = httpx.post(router.url + "/v2/models/demo-llm/infer", json={"inputs": []}, headers=AUTH)
    assert bad.status_code == 400 and "inputs" in bad.json()["error"]


async def test_kserve_v2_grpc(router: RouterProc) -> None:
    assert router.grpc_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        auth = (("authorization", "Bearer demo-key"),)
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="demo-llm"), metadata=auth)).ready
        req = pb.ModelInferRequest(
            model_name="demo-llm",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="text_input",
                    datatype="BYTES",
                    shape=[1],
                    contents=pb.InferTensorContents(bytes_contents=[b"hi"]),
                )
            ],
            parameters={"max_tokens": pb.InferParameter(int64_param=3)},
        )
        resp = await stub.ModelInfer(req, metadata=(("authorization", "Bearer demo-key"),))
        assert resp.outputs[0].name == "text_output" and resp.outputs[0].contents.bytes_contents[0]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ModelInfer(req)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        req.model_name = "nope"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ModelInfer(req, metadata=(("authorization", "Bearer demo-key"),))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_websocket_streams_tokens(router: RouterProc) -> None:
    async with aiohttp.ClientSession() as s, s.ws_connect(router.url + "/v1/ws?api_key=demo-key") as ws:
        await ws.send_json({"model": "demo-llm", "messages": [{"role": "user", "content": "a"}], "max_tokens": 5})
        tokens = []
        while True:
            msg = await ws.receive_json(timeout=30)
            if msg["type"] == "token":
                assert msg["index"] == len(tokens)
                tokens.append(msg["text"])
            else:
                assert msg["type"] == "done" and msg["tokens"] == 5
                break
        await ws.send_json({"model": "nope", "prompt": "x"})
        err = await ws.receive_json(timeout=30)
        assert err["type"] == "error" and err["status"] == 404
    async with aiohttp.ClientSession() as s:
        r = await s.get(router.url + "/v1/ws")
        assert r.status == 401


def test_several_workers_share_one_port(emulators: list[EmulatorProcess], tmp_path: Path) -> None:
    cfg = router_config([e.url for e in emulators], listen={"workers": 2, "port": free_port()})
    rp = start_router(cfg, tmp_path)
    try:
        body = {"model": "demo-llm", "prompt": "x", "max_tokens": 1}
        with httpx.Client() as c:
            for _ in range(20):
                # A new connection each time so the kernel spreads them over the workers.
                r = c.post(rp.url + "/v1/completions", json=body, headers={**AUTH, "Connection": "close"}, timeout=30)
                assert r.status_code == 200
        # each worker says so once it listens; a worker slower to start may say it after the first answers
        deadline = time.monotonic() + 20
        while len(pids := {e["pid"] for e in rp.logs() if e.get("msg") == "router listening"}) < 2:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(pids) == 2
        metrics = httpx.get(rp.url + "/metrics").text
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("infermesh_router_requests_total{") and 'code="200"' in line
        )
        assert total == 20  # any worker's /metrics shows the whole router
    finally:
        rp.stop()
