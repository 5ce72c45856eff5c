"""KServe v2 / Open Inference Protocol for LLM targets: a text_input tensor in, a text_output tensor out.

OpenAI-compatible runtimes get the request translated to /v1/completions; KServe runtimes get it passed through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from router.service import Refusal

TEXT_IN = "text_input"
TEXT_OUT = "text_output"


@dataclass(slots=True)
class V2Request:
    id: str
    text: str
    max_tokens: int | None
    params: dict[str, Any]


def _scalar(inp: dict[str, Any]) -> Any:
    data = inp.get("data")
    if not isinstance(data, list) or len(data) != 1:
        raise Refusal(400, "invalid_input", f"input {inp.get('name')!r} must hold exactly one element")
    v = data[0]
    while isinstance(v, list) and len(v) == 1:
        v = v[0]
    return v


def parse_v2(obj: dict[str, Any]) -> V2Request:
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise Refusal(400, "missing_inputs", "'inputs' must be a non-empty list of tensors")
    text: str | None = None
    max_tokens: int | None = None
    for inp in inputs:
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
            raise Refusal(400, "invalid_input", "every input must be an object with a 'name'")
        name = inp["name"]
        if name == TEXT_IN:
            if inp.get("datatype", "BYTES") != "BYTES":
                raise Refusal(400, "invalid_input", f"{TEXT_IN} must have datatype BYTES")
            v = _scalar(inp)
            if not isinstance(v, str):
                raise Refusal(400, "invalid_input", f"{TEXT_IN} must hold a string")
            text = v
        elif name == "max_tokens":
            v = _scalar(inp)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise Refusal(400, "invalid_input", "max_tokens must be a non-negative integer")
            max_tokens = v
    if text is None:
        raise Refusal(400, "missing_text_input", f"missing input tensor {TEXT_IN!r} (BYTES, shape [1])")
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise Refusal(400, "invalid_parameters", "'parameters' must be an object")
    if max_tokens is None and isinstance(params.get("max_tokens"), int):
        max_tokens = params["max_tokens"]
    rid = obj.get("id", "")
    return V2Request(str(rid) if rid is not None else "", text, max_tokens, params)


def to_completion(req: V2Request, upstream_model: str) -> bytes:
    body: dict[str, Any] = {"model": upstream_model, "prompt": req.text, "stream": False}
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    for k in ("temperature", "top_p", "seed", "stop"):
        if k in req.params:
            body[k] = req.params[k]
    return json.dumps(body).encode()


def to_v2_json(req: V2Request) -> bytes:
    inputs: list[dict[str, Any]] = [{"name": TEXT_IN, "datatype": "BYTES", "shape": [1], "data": [req.text]}]
    if req.max_tokens is not None:
        inputs.append({"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [req.max_tokens]})
    return json.dumps({"id": req.id, "inputs": inputs, "parameters": req.params}).encode()


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
    out = {
        "model_name": model,
        "model_version": "",
        "id": rid,
        "outputs": [{"name": TEXT_OUT, "datatype": "BYTES", "shape": [1], "data": [text]}],
        "parameters": {"finish_reason": finish if isinstance(finish, str) else None},
    }
    return out, _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")


def model_metadata(model: str, versions: list[str]) -> dict[str, Any]:
    return {
        "name": model,
        "versions": versions,
        "platform": "infermesh-router",
        "inputs": [{"name": TEXT_IN, "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": TEXT_OUT, "datatype": "BYTES", "shape": [1]}],
    }
