"""KServe v2 as NVIDIA's `tritonclient` speaks it, with its default settings, through a real router to emulated
runtimes: the binary tensor data extension over HTTP (inputs and outputs, BYTES and numeric, mixed JSON and binary
outputs), gRPC ModelInfer with raw tensors, and the ModelStreamInfer token stream of decoupled models."""

from __future__ import annotations

import json
import queue
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from agents.emulator.testing import EmulatorProcess, start_emulator
from tests.router.procs import RouterProc, router_config, start_router

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": "Bearer demo-key"}  # tritonclient adds its own headers to the dict it is given: pass copies


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    em: EmulatorProcess = start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm")
    rp = start_router(router_config([em.url], listen={"grpc_port": 0}), tmp_path_factory.mktemp("router"))
    yield rp
    rp.stop()
    em.stop()


def _inputs(mod: Any, prompt: bytes, max_tokens: int, stream: bool | None = None) -> list[Any]:
    text = mod.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt], dtype=np.object_))
    mt = mod.InferInput("max_tokens", [1], "INT32")
    mt.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    out = [text, mt]
    if stream is not None:
        s = mod.InferInput("stream", [1], "BOOL")
        s.set_data_from_numpy(np.array([stream], dtype=bool))
        out.append(s)
    return out


def test_http_client_defaults_binary_in_and_out(router: RouterProc) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{router.port}")
    assert client.is_server_live()
    assert client.is_model_ready("demo-llm", headers=dict(AUTH))
    meta = client.get_model_metadata("demo-llm", headers=dict(AUTH))
    assert [o["name"] for o in meta["outputs"]] == [
        "text_output",
        "finish_reason",
        "num_input_tokens",
        "num_output_tokens",
    ]
    # Defaults: inputs in binary, and with no outputs named every output comes back binary.
    res = client.infer("demo-llm", _inputs(httpclient, b"tell me about meshes", 5), headers=dict(AUTH))
    text = res.as_numpy("text_output")
    assert text.dtype == np.object_ and text.shape == (1,) and len(text[0]) > 0
    assert res.as_numpy("num_output_tokens").tolist() == [5]
    assert res.as_numpy("num_input_tokens")[0] > 0
    assert res.as_numpy("finish_reason")[0] == b"length"
    assert all("binary_data_size" in o["parameters"] for o in res.get_response()["outputs"])


def test_http_mixed_json_and_binary_outputs(router: RouterProc) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{router.port}")
    outputs = [
        httpclient.InferRequestedOutput("text_output"),  # binary by default
        httpclient.InferRequestedOutput("num_output_tokens", binary_data=False),
    ]
    res = client.infer("demo-llm", _inputs(httpclient, b"hi", 3), outputs=outputs, request_id="r7", headers=dict(AUTH))
    assert res.get_response()["id"] == "r7"
    by_name = {o["name"]: o for o in res.get_response()["outputs"]}
    assert set(by_name) == {"text_output", "num_output_tokens"}  # only what was asked
    assert by_name["num_output_tokens"]["data"] == [3] and "binary_data_size" in by_name["text_output"]["parameters"]
    assert res.as_numpy("num_output_tokens").tolist() == [3] and res.as_numpy("text_output")[0]
    # JSON inputs (binary_data=False) still work, answered in JSON when no binary output is asked for.
    text = httpclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hi"], dtype=np.object_), binary_data=False)
    res = client.infer(
        "demo-llm", [text], outputs=[httpclient.InferRequestedOutput("text_output", False)], headers=dict(AUTH)
    )
    assert res.get_response()["outputs"][0]["data"][0]


def _binary_request(declared: int, blob: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(
        {
            "inputs": [
                {"name": "text_input", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": declared}}
            ]
        }
    ).encode()
    return head + blob, {**AUTH, "Inference-Header-Content-Length": str(len(head))}


def test_http_binary_size_mismatch_is_a_clear_400(router: RouterProc) -> None:
    url = router.url + "/v2/models/demo-llm/infer"
    element = struct.pack("<I", 2) + b"hi"
    # Declared larger than the body holds.
    body, headers = _binary_request(len(element) + 10, element)
    r = httpx.post(url, content=body, headers=headers)
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"], r.text
    # Declared smaller: bytes left over after the inputs.
    body, headers = _binary_request(len(element), element + b"xx")
    r = httpx.post(url, content=body, headers=headers)
    assert r.status_code == 400 and "add up to" in r.json()["error"], r.text
    # An element length running past the tensor.
    body, headers = _binary_request(6, struct.pack("<I", 50) + b"hi")
    r = httpx.post(url, content=body, headers=headers)
    assert r.status_code == 400 and "runs past" in r.json()["error"], r.text
    # A header length past the body; binary data without the header.
    r = httpx.post(url, content=b"{}", headers={**AUTH, "Inference-Header-Content-Length": "99"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    r = httpx.post(url, content=body, headers=dict(AUTH))
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    # Numeric tensor of the wrong byte size.
    head = json.dumps(
        {
            "inputs": [
                {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["x"]},
                {"name": "max_tokens", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 2}},
            ]
        }
    ).encode()
    r = httpx.post(url, content=head + b"\x01\x00", headers={**AUTH, "Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "INT32" in r.json()["error"], r.text


def test_grpc_client_defaults(router: RouterProc) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{router.grpc_port}")
    headers = {"authorization": "Bearer demo-key"}
    assert client.is_server_live() and client.is_model_ready("demo-llm", headers=headers)
    res = client.infer("demo-llm", _inputs(grpcclient, b"tell me", 4), headers=headers)
    assert res.as_numpy("text_output")[0] and res.as_numpy("num_output_tokens").tolist() == [4]
    with pytest.raises(InferenceServerException) as e:
        client.infer("demo-llm", _inputs(grpcclient, b"x", 4))
    assert "API key" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", _inputs(grpcclient, b"x", 4), headers=headers)
    assert "not served" in e.value.message()
    client.close()


def test_grpc_stream_infer_streams_tokens(router: RouterProc) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{router.grpc_port}")
    got: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: got.put((result, error)), headers={"authorization": "Bearer demo-key"}
    )
    client.async_stream_infer("demo-llm", _inputs(grpcclient, b"stream please", 6, stream=True), request_id="s1")
    client.async_stream_infer("demo-llm", _inputs(grpcclient, b"once", 2, stream=False), request_id="s2")
    pieces: dict[str, list[bytes]] = {"s1": [], "s2": []}
    finals: dict[str, Any] = {}
    while len(finals) < 2:
        result, error = got.get(timeout=30)
        assert error is None, error
        resp = result.get_response()
        pieces[resp.id].append(result.as_numpy("text_output")[0])
        if resp.parameters["triton_final_response"].bool_param:
            finals[resp.id] = result
    assert len(pieces["s1"]) == 6 and all(pieces["s1"])  # one response per token
    assert finals["s1"].as_numpy("num_output_tokens").tolist() == [6]
    assert len(pieces["s2"]) == 1 and finals["s2"].as_numpy("num_output_tokens").tolist() == [2]
    # An error for one request of the stream is reported for it; the stream goes on.
    client.async_stream_infer("nope", _inputs(grpcclient, b"x", 2), request_id="s3")
    result, error = got.get(timeout=30)
    assert result is None and "not served" in str(error)
    client.async_stream_infer("demo-llm", _inputs(grpcclient, b"after", 1, stream=True), request_id="s4")
    result, error = got.get(timeout=30)
    assert error is None and result.get_response().id == "s4"
    client.stop_stream()
    client.close()
