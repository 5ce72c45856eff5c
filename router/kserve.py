"""KServe v2 / Open Inference Protocol for LLM targets: a text_input tensor in, a text_output tensor out (the
tensor names of Triton's vLLM backend).

OpenAI-compatible runtimes get the request translated to /v1/completions; KServe runtimes get it passed through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from router import v2codec
from router.service import Refusal

TEXT_IN = "text_input"
TEXT_OUT = "text_output"
# The tensors of Triton's vLLM backend that an LLM client uses; every output is [1] and returned unless the
# request names the ones it wants.
OUTPUTS: list[tuple[str, str]] = [
    (TEXT_OUT, "BYTES"),
    ("finish_reason", "BYTES"),
    ("num_input_tokens", "UINT32"),
    ("num_output_tokens", "UINT32"),
]
INPUTS: list[tuple[str, str]] = [
    (TEXT_IN, "BYTES"),
    ("max_tokens", "INT32"),
    ("stream", "BOOL"),
    ("sampling_parameters", "BYTES"),
]
_SAMPLING = ("temperature", "top_p", "top_k", "seed", "stop", "min_tokens", "presence_penalty", "frequency_penalty")


@dataclass(slots=True)
class V2Request:
    id: str
    text: str
    max_tokens: int | None
    params: dict[str, Any]
    stream: bool = False
    outputs: v2codec.OutputSpec | None = None


def _one(t: v2codec.Tensor) -> Any:
    if len(t.data) != 1:
        raise Refusal(400, "invalid_input", f"input {t.name!r} must hold exactly one element")
    return t.data[0]


def _text(t: v2codec.Tensor) -> str:
    if t.datatype != "BYTES":
        raise Refusal(400, "invalid_input", f"{t.name} must have datatype BYTES")
    v = _one(t)
    try:
        return v.decode() if isinstance(v, bytes) else str(v)
    except UnicodeDecodeError:
        raise Refusal(400, "invalid_input", f"{t.name} is not UTF-8") from None


def from_tensors(rid: str, tensors: list[v2codec.Tensor], params: dict[str, Any]) -> V2Request:
    """The LLM request the tensors describe (Triton vLLM backend names; unknown inputs are ignored)."""
    text: str | None = None
    max_tokens: int | None = None
    stream = False
    params = dict(params)
    for t in tensors:
        if t.name == TEXT_IN:
            text = _text(t)
        elif t.name == "max_tokens":
            v = _one(t)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise Refusal(400, "invalid_input", "max_tokens must be a non-negative integer")
            max_tokens = v
        elif t.name == "stream":
            v = _one(t)
            if not isinstance(v, bool):
                raise Refusal(400, "invalid_input", "stream must be a BOOL")
            stream = v
        elif t.name == "sampling_parameters":
            try:
                sp = json.loads(_text(t))
            except ValueError:
                raise Refusal(400, "invalid_input", "sampling_parameters must hold a JSON object") from None
            if not isinstance(sp, dict):
                raise Refusal(400, "invalid_input", "sampling_parameters must hold a JSON object")
            params.update(sp)
    if text is None:
        raise Refusal(400, "missing_text_input", f"missing input tensor {TEXT_IN!r} (BYTES, shape [1])")
    if max_tokens is None and "max_tokens" in params:
        mt = params["max_tokens"]
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 0:
            raise Refusal(400, "invalid_parameters", "max_tokens must be a non-negative integer")
        max_tokens = mt
    return V2Request(rid, text, max_tokens, params, stream)


def parse_v2(obj: dict[str, Any], blob: bytes = b"") -> V2Request:
    """An HTTP v2 request: its JSON header and the binary tensor data after it."""
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise Refusal(400, "invalid_parameters", "'parameters' must be an object")
    tensors = v2codec.parse_inputs(obj, blob)
    rid = obj.get("id", "")
    req = from_tensors(str(rid) if rid is not None else "", tensors, params)
    req.outputs = v2codec.parse_outputs(obj, [n for n, _ in OUTPUTS])
    # Whether the answer is binary is between the client and the router, not for the runtime.
    req.params = {k: v for k, v in req.params.items() if k != "binary_data_output"}
    return req


def to_completion(req: V2Request, upstream_model: str) -> bytes:
    body: dict[str, Any] = {"model": upstream_model, "prompt": req.text, "stream": False}
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    for k in _SAMPLING:
        if k in req.params:
            body[k] = req.params[k]
    return json.dumps(body).encode()


def to_v2_json(req: V2Request) -> bytes:
    """The request for a KServe runtime, always in JSON (the binary extension is not every server's)."""
    inputs: list[dict[str, Any]] = [{"name": TEXT_IN, "datatype": "BYTES", "shape": [1], "data": [req.text]}]
    if req.max_tokens is not None:
        inputs.append({"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [req.max_tokens]})
    body: dict[str, Any] = {"id": req.id, "inputs": inputs, "parameters": req.params}
    if req.outputs is not None and req.outputs.names is not None:
        body["outputs"] = [{"name": n} for n in req.outputs.names]
    return json.dumps(body).encode()


def _count(usage: dict[str, Any], name: str) -> int | None:
    v = usage.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def from_completion(raw: bytes, model: str, rid: str) -> tuple[dict[str, Any], int | None, int | None]:
    """Build the v2 response from an OpenAI completion; raises ValueError on a runtime answer we cannot read."""
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError(f"runtime completion is a JSON {type(obj).__name__}, not an object")
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("runtime completion has no choices")
    text = choices[0].get("text", "")
    if not isinstance(text, str):
        raise ValueError("runtime completion's choices[0].text is not a string")
    usage = obj.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    finish = choices[0].get("finish_reason")
    finish = finish if isinstance(finish, str) else None
    pt, ct = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    out = {
        "model_name": model,
        "model_version": "",
        "id": rid,
        "outputs": outputs_of(text, finish, pt, ct),
        "parameters": {"finish_reason": finish},
    }
    return out, pt, ct


def outputs_of(text: str, finish: str | None, pt: int | None, ct: int | None) -> list[dict[str, Any]]:
    return [
        {"name": TEXT_OUT, "datatype": "BYTES", "shape": [1], "data": [text]},
        {"name": "finish_reason", "datatype": "BYTES", "shape": [1], "data": [finish or ""]},
        {"name": "num_input_tokens", "datatype": "UINT32", "shape": [1], "data": [pt or 0]},
        {"name": "num_output_tokens", "datatype": "UINT32", "shape": [1], "data": [ct or 0]},
    ]


def token_counts(out: dict[str, Any]) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens a v2 answer reports in its num_input_tokens and num_output_tokens outputs."""
    found: dict[str, int] = {}
    for o in out.get("outputs") or ():
        if isinstance(o, dict) and o.get("name") in ("num_input_tokens", "num_output_tokens"):
            data = o.get("data")
            v = data[0] if isinstance(data, list) and len(data) == 1 else None
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                found[o["name"]] = v
    return found.get("num_input_tokens"), found.get("num_output_tokens")


def tensors_of(out: dict[str, Any]) -> list[v2codec.Tensor]:
    """The output tensors of a v2 answer in JSON form (ours, or a KServe runtime's); ValueError if unreadable."""
    outs = out.get("outputs")
    if not isinstance(outs, list):
        raise ValueError("v2 answer has no 'outputs' list")
    tensors = []
    for o in outs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str) or o.get("datatype") not in v2codec.DATATYPES:
            raise ValueError("v2 answer has an output without a name or a known datatype")
        data = o.get("data")
        if not isinstance(data, list):
            raise ValueError(f"v2 answer's output {o['name']!r} has no 'data' list")
        flat = v2codec._flatten(data)
        if o["datatype"] == "BYTES":
            flat = [v.encode() if isinstance(v, str) else bytes(str(v), "utf-8") for v in flat]
        shape = o.get("shape")
        if not isinstance(shape, list) or v2codec.element_count(shape) != len(flat):
            shape = [len(flat)]
        tensors.append(v2codec.Tensor(o["name"], o["datatype"], shape, flat))
    return tensors


def model_metadata(model: str, versions: list[str]) -> dict[str, Any]:
    return {
        "name": model,
        "versions": versions,
        "platform": "infermesh-router",
        "inputs": [{"name": n, "datatype": d, "shape": [1]} for n, d in INPUTS],
        "outputs": [{"name": n, "datatype": d, "shape": [1]} for n, d in OUTPUTS],
    }
