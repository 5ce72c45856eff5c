"""Validation of OpenAI-style request bodies and the error shape the OpenAI clients expect."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from router.service import Refusal

# api -> (upstream path, field that must be present, what it must be)
APIS: dict[str, tuple[str, str]] = {
    "chat": ("/v1/chat/completions", "messages"),
    "completions": ("/v1/completions", "prompt"),
    "embeddings": ("/v1/embeddings", "input"),
}


@dataclass(slots=True)
class ParsedRequest:
    obj: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    prompt_chars: int


def parse_json_body(body: bytes) -> dict[str, Any]:
    if not body:
        raise Refusal(400, "invalid_json", "request body is empty; expected a JSON object")
    try:
        obj = json.loads(body)
    except UnicodeDecodeError:
        raise Refusal(400, "invalid_json", "request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise Refusal(
            400, "invalid_json", f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    if not isinstance(obj, dict):
        raise Refusal(400, "invalid_json", f"request body must be a JSON object, got {type(obj).__name__}")
    return obj


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, dict):
        return _chars(value.get("content", "")) + _chars(value.get("text", ""))
    return 0


def _message_chars(messages: Any) -> int | None:
    """Characters of a chat's messages (their content and text), in one pass that also checks the list: None when
    it is not a non-empty list of objects. A long chat is hundreds of messages: no call per plain-text one."""
    if not isinstance(messages, list) or not messages:
        return None
    n = 0
    for m in messages:
        if not isinstance(m, dict):
            return None
        c = m.get("content", "")
        n += len(c) if type(c) is str else _chars(c)
        if "text" in m:
            n += _chars(m["text"])
    return n


def validate(api: str, obj: dict[str, Any]) -> ParsedRequest:
    _, required = APIS[api]
    model = obj.get("model")
    if model is None:
        raise Refusal(400, "missing_model", "missing required field 'model'", param="model")
    if not isinstance(model, str) or not model:
        raise Refusal(400, "invalid_model", "'model' must be a non-empty string", param="model")
    stream = obj.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise Refusal(
            400, "invalid_stream", f"'stream' must be true or false, got {json.dumps(stream)}", param="stream"
        )
    if stream and api == "embeddings":
        raise Refusal(400, "invalid_stream", "embeddings cannot be streamed", param="stream")
    if required not in obj:
        raise Refusal(400, f"missing_{required}", f"missing required field {required!r}", param=required)
    value = obj[required]
    if api == "chat":
        chars = _message_chars(value)
        if chars is None:
            raise Refusal(
                400, "invalid_messages", "'messages' must be a non-empty list of message objects", param=required
            )
    elif not isinstance(value, str | list):
        raise Refusal(400, f"invalid_{required}", f"{required!r} must be a string or a list", param=required)
    else:
        chars = _chars(value)
    max_tokens = obj.get("max_completion_tokens", obj.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0):
        raise Refusal(400, "invalid_max_tokens", "'max_tokens' must be a non-negative integer", param="max_tokens")
    return ParsedRequest(obj, model, stream, max_tokens, chars)


def error_body(message: str, code: str, status: int, param: str | None = None) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    elif status == 429:
        kind = "rate_limit_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()
