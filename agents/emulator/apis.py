"""The emulated runtime's APIs beyond plain chat and completions, served as the runtime it follows serves them.

vLLM (0.32): `/v1/responses` (streamed events, background responses, `previous_response_id`, GET and cancel),
`/v1/messages` (Anthropic), `/tokenize`, `/detokenize`, `/v1/embeddings`; and the richer chat/completions requests
(`n` > 1, `logprobs`, `tools`, `response_format`). Generation goes through the same emulated engine as every other
request, so timing, batching, KV usage and metrics stay those of the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agents.emulator import tokenizer as tok

# Which routes each runtime flavour serves beyond chat and completions (what the real release serves).
FLAVOR_APIS: dict[str, frozenset[str]] = {
    "vllm": frozenset({"responses", "messages", "tokenize", "embeddings"}),
    "vllm-v0": frozenset({"tokenize", "embeddings"}),
    "sglang": frozenset({"embeddings"}),
    "tgi": frozenset(),
    "triton": frozenset(),
}
_STORE_MAX = 1000  # responses kept for GET / previous_response_id (vLLM keeps them in memory too)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def _openai_error(e: ApiError) -> web.Response:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(e.status, "Error")
    body = {"error": {"message": e.message, "type": kind, "param": e.param, "code": e.status}}
    return web.json_response(body, status=e.status)


def _anthropic_error(e: ApiError) -> web.Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(e.status, "api_error")
    return web.json_response({"type": "error", "error": {"type": kind, "message": e.message}}, status=e.status)


def _sse(obj: Any, event: str | None = None) -> bytes:
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return (b"event: " + event.encode() + b"\n" + data) if event else data


def _int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ApiError(400, f"{name} must be an integer >= {minimum}, got {v!r}", name)
    return v


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


class Runtime:
    """What these handlers need of the emulator (kept narrow so that this module does not import the server)."""

    def __init__(self, em: Any) -> None:
        self.em = em

    @property
    def model(self) -> str:
        return str(self.em.config.model)

    def check_model(self, model: Any) -> None:
        if model != self.model:
            raise ApiError(404, f"The model `{model}` does not exist.", "model")

    def note(self, request: web.Request) -> None:
        tp = request.headers.get("traceparent")
        if tp:
            self.em.stats.traceparents.append(tp)
        self.em.stats.requests += 1

    def plan(self, ids: list[int], max_tokens: int | None) -> tuple[int, int]:
        try:
            return self.em.plan_request(len(ids), max_tokens)  # type: ignore[no-any-return]
        except ValueError as e:
            raise ApiError(400, str(e), getattr(e, "param", None)) from None

    async def pieces(
        self, ids: list[int] | None, max_tokens: int, target: int, prompt_tokens: int | None = None
    ) -> AsyncIterator[tuple[str, bool]]:
        """(text, last?) per generated token, through the emulated engine; closing it aborts the sequence."""
        em = self.em
        seed = em.rng.randrange(1 << 30)
        n = prompt_tokens if prompt_tokens is not None else len(ids or ())
        gen = em.generate(f"emu-{uuid.uuid4().hex}", n, max_tokens, target, ids)
        try:
            async for i, finished in gen:
                yield em.token_text(seed, i), finished
        finally:
            await gen.aclose()


# -- tokenize / detokenize / embeddings --------------------------------------------------------------------------
_REVERSE: dict[int, str] = {}


def _ids_of(body: dict[str, Any], rt: Runtime) -> list[int]:
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "messages must be a list of message objects", "messages")
        try:
            return tok.encode_chat(messages, bool(body.get("add_generation_prompt", True)))
        except TypeError as e:
            raise ApiError(400, str(e), "messages") from None
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (or send messages)", "prompt")
    ids = tok.encode(prompt)
    _learn(prompt)
    return ([tok.BOS] if body.get("add_special_tokens", True) else []) + ids


async def tokenize(request: web.Request, rt: Runtime) -> web.Response:
    body = await _json_body(request)
    if "model" in body and body["model"] is not None:
        rt.check_model(body["model"])
    ids = _ids_of(body, rt)
    strs = [_REVERSE.get(i, f"<|{i}|>") for i in ids] if body.get("return_token_strs") else None
    return web.json_response(
        {"count": len(ids), "max_model_len": rt.em.max_model_len, "tokens": ids, "token_strs": strs}
    )


def _learn(text: str) -> None:
    for piece in tok._PIECE.findall(text):
        for p in {piece, piece.rstrip()} - {""}:  # a text's last piece has no trailing space
            _REVERSE.setdefault(tok.encode(p)[0], p)


async def detokenize(request: web.Request, rt: Runtime) -> web.Response:
    """Ids back to text: the tokenizer hashes pieces, so it knows those it has seen here, and the vocabulary the
    emulated model generates from (the same in every emulator process); others come back as <|id|>."""
    if not _REVERSE:
        from agents.emulator.server import _WORDS

        _learn(" ".join(_WORDS))
    body = await _json_body(request)
    if "model" in body and body["model"] is not None:
        rt.check_model(body["model"])
    ids = body.get("tokens")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ApiError(400, "tokens must be a list of non-negative integers", "tokens")
    special = {tok.BOS: "<s>", tok.END_OF_TURN: "</s>"}
    return web.json_response({"prompt": "".join(special.get(i) or _REVERSE.get(i, f"<|{i}|>") for i in ids)})


EMBED_DIM = 64


def _vector(text: str) -> list[float]:
    raw = hashlib.shake_256(text.encode()).digest(4 * EMBED_DIM)
    v = [x / 2**31 - 1.0 for x in struct.unpack(f"<{EMBED_DIM}I", raw)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


async def embeddings(request: web.Request, rt: Runtime) -> web.Response:
    rt.note(request)
    body = await _json_body(request)
    rt.check_model(body.get("model"))
    inp = body.get("input")
    texts: list[str]
    if isinstance(inp, str):
        texts = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(x, str) for x in inp):
        texts = inp
    elif isinstance(inp, list) and inp and all(isinstance(x, int) and not isinstance(x, bool) for x in inp):
        texts = [" ".join(map(str, inp))]
    else:
        raise ApiError(400, "input must be a string, a list of strings or a list of token ids", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be 'float' or 'base64'", "encoding_format")
    data = []
    n_tokens = 0
    for i, t in enumerate(texts):
        n_tokens += max(1, tok.count(t))
        vec = _vector(t)
        if fmt == "base64":
            import base64

            emb: Any = base64.b64encode(struct.pack(f"<{EMBED_DIM}f", *vec)).decode()
        else:
            emb = vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    rt.em.stats.completed += 1
    return web.json_response(
        {
            "id": f"embd-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": rt.model,
            "data": data,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens, "completion_tokens": 0},
        }
    )


# -- /v1/responses -----------------------------------------------------------------------------------------------
@dataclass
class StoredResponse:
    obj: dict[str, Any]
    messages: list[dict[str, Any]]  # the conversation so far, for previous_response_id
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ResponseStore:
    def __init__(self) -> None:
        self.items: OrderedDict[str, StoredResponse] = OrderedDict()

    def put(self, rid: str, item: StoredResponse) -> None:
        self.items[rid] = item
        while len(self.items) > _STORE_MAX:
            self.items.popitem(last=False)

    def get(self, rid: str) -> StoredResponse:
        item = self.items.get(rid)
        if item is None:
            raise ApiError(404, f"Response with id '{rid}' not found.", "response_id")
        return item


def _input_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        msgs.append({"role": "system", "content": instructions})
    inp = body.get("input")
    if isinstance(inp, str):
        msgs.append({"role": "user", "content": inp})
    elif isinstance(inp, list):
        for i, item in enumerate(inp):
            if not isinstance(item, dict):
                raise ApiError(400, f"input[{i}] must be an object", "input")
            content = item.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            elif item.get("type") == "function_call_output":
                content = str(item.get("output", ""))
            msgs.append({"role": str(item.get("role", "user")), "content": content if isinstance(content, str) else ""})
    else:
        raise ApiError(400, "input must be a string or a list of input items", "input")
    return msgs


def _response_obj(rid: str, body: dict[str, Any], model: str, status: str) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": status,
        "background": bool(body.get("background")),
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "previous_response_id": body.get("previous_response_id"),
        "output": [],
        "parallel_tool_calls": True,
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": None,
        "error": None,
        "incomplete_details": None,
        "metadata": body.get("metadata"),
        "store": body.get("store", True),
    }


def _message_item(mid: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": mid,
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _usage(prompt: int, out: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + out,
    }


async def responses(request: web.Request, rt: Runtime, store: ResponseStore) -> web.StreamResponse:
    rt.note(request)
    body = await _json_body(request)
    rt.check_model(body.get("model"))
    history: list[dict[str, Any]] = []
    prev = body.get("previous_response_id")
    if prev is not None:
        if not isinstance(prev, str):
            raise ApiError(400, "previous_response_id must be a string", "previous_response_id")
        item = store.get(prev)
        history = list(item.messages)
    messages = history + _input_messages(body)
    ids = tok.encode_chat(messages)
    max_tokens, target = rt.plan(ids, _int(body, "max_output_tokens", 1))
    stream = bool(body.get("stream"))
    background = bool(body.get("background"))
    if background and body.get("store") is False:
        raise ApiError(400, "background responses need store=true", "background")
    if background and stream:
        raise ApiError(400, "background responses cannot be streamed here; poll GET /v1/responses/{id}", "stream")
    rid = f"resp_{uuid.uuid4().hex}"
    mid = f"msg_{uuid.uuid4().hex}"
    obj = _response_obj(rid, body, rt.model, "queued" if background else "in_progress")
    stored = StoredResponse(obj, messages)
    if body.get("store", True):
        store.put(rid, stored)

    async def run(emit: Callable[[dict[str, Any]], Any] | None) -> None:
        seq = 0

        async def ev(kind: str, **fields: Any) -> None:
            nonlocal seq
            if emit is not None:
                await emit({"type": kind, "sequence_number": seq, **fields})
            seq += 1

        obj["status"] = "in_progress"
        await ev("response.created", response=dict(obj))
        await ev("response.in_progress", response=dict(obj))
        await ev("response.output_item.added", output_index=0, item=_message_item(mid, "", "in_progress"))
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        await ev("response.content_part.added", item_id=mid, output_index=0, content_index=0, part=part)
        text: list[str] = []
        try:
            async for piece, _ in rt.pieces(ids, max_tokens, target):
                text.append(piece)
                await ev(
                    "response.output_text.delta", item_id=mid, output_index=0, content_index=0, delta=piece, logprobs=[]
                )
        except asyncio.CancelledError:
            obj["status"] = "cancelled"
            stored.done.set()
            raise
        full = "".join(text)
        await ev("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=full, logprobs=[])
        await ev(
            "response.content_part.done", item_id=mid, output_index=0, content_index=0, part={**part, "text": full}
        )
        item = _message_item(mid, full, "completed")
        await ev("response.output_item.done", output_index=0, item=item)
        obj["output"] = [item]
        obj["usage"] = _usage(len(ids), len(text))
        obj["status"] = "completed" if target < max_tokens else "incomplete"
        if obj["status"] == "incomplete":
            obj["incomplete_details"] = {"reason": "max_output_tokens"}
        stored.messages = [*messages, {"role": "assistant", "content": full}]
        rt.em.stats.completed += 1
        stored.done.set()
        await ev("response.completed" if obj["status"] == "completed" else "response.incomplete", response=obj)

    if background:
        stored.task = asyncio.get_running_loop().create_task(run(None))
        return web.json_response(obj)
    if not stream:
        await run(None)
        return web.json_response(obj)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
    await resp.prepare(request)

    async def emit(e: dict[str, Any]) -> None:
        await resp.write(_sse(e, e["type"]))

    try:
        await run(emit)
    except (asyncio.CancelledError, ConnectionResetError):
        rt.em.stats.aborted += 1
        raise
    await resp.write_eof()
    return resp


async def get_response(request: web.Request, rt: Runtime, store: ResponseStore) -> web.Response:
    return web.json_response(store.get(request.match_info["response_id"]).obj)


async def cancel_response(request: web.Request, rt: Runtime, store: ResponseStore) -> web.Response:
    item = store.get(request.match_info["response_id"])
    if item.task is None:
        raise ApiError(400, "only background responses can be cancelled", "response_id")
    if not item.task.done():
        item.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await item.task
        rt.em.stats.aborted += 1
    return web.json_response(item.obj)


# -- /v1/messages (Anthropic) ------------------------------------------------------------------------------------
def _anthropic_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        raise ApiError(400, "messages: must be a non-empty list of message objects", "messages")
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, list):
        system = " ".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    if isinstance(system, str) and system:
        out.append({"role": "system", "content": system})
    for m in msgs:
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
        out.append({"role": str(m.get("role")), "content": content if isinstance(content, str) else ""})
    return out


async def messages(request: web.Request, rt: Runtime) -> web.StreamResponse:
    rt.note(request)
    body = await _json_body(request)
    rt.check_model(body.get("model"))
    max_tokens = _int(body, "max_tokens", 1)
    if max_tokens is None:
        raise ApiError(400, "max_tokens: Field required", "max_tokens")
    ids = tok.encode_chat(_anthropic_messages(body))
    max_tokens, target = rt.plan(ids, max_tokens)
    mid = f"msg_{uuid.uuid4().hex}"
    stop = "max_tokens" if target >= max_tokens else "end_turn"
    head = {"id": mid, "type": "message", "role": "assistant", "model": rt.model, "stop_sequence": None}
    if not body.get("stream"):
        text = "".join([p async for p, _ in rt.pieces(ids, max_tokens, target)])
        rt.em.stats.completed += 1
        return web.json_response(
            {
                **head,
                "content": [{"type": "text", "text": text}],
                "stop_reason": stop,
                "usage": {"input_tokens": len(ids), "output_tokens": target},
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
    await resp.prepare(request)

    async def ev(kind: str, **fields: Any) -> None:
        await resp.write(_sse({"type": kind, **fields}, kind))

    try:
        start: dict[str, Any] = {
            **head,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": len(ids), "output_tokens": 0},
        }
        await ev("message_start", message=start)
        await ev("content_block_start", index=0, content_block={"type": "text", "text": ""})
        await ev("ping")
        n = 0
        async for piece, _ in rt.pieces(ids, max_tokens, target):
            n += 1
            await ev("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
        await ev("content_block_stop", index=0)
        await ev("message_delta", delta={"stop_reason": stop, "stop_sequence": None}, usage={"output_tokens": n})
        await ev("message_stop")
    except (asyncio.CancelledError, ConnectionResetError):
        rt.em.stats.aborted += 1
        raise
    rt.em.stats.completed += 1
    await resp.write_eof()
    return resp


# -- chat / completions beyond n=1 plain text ---------------------------------------------------------------------
def wants_extended(body: dict[str, Any]) -> bool:
    """Whether a chat/completions request uses what the plain path does not model."""
    n = body.get("n")
    return bool(
        (isinstance(n, int) and not isinstance(n, bool) and n > 1)
        or body.get("logprobs")
        or body.get("tools")
        or body.get("response_format")
    )


def _filler(schema: Any, depth: int = 0) -> Any:
    """A value of a JSON schema (deterministic): what a guided decoder would force the output into."""
    if not isinstance(schema, dict) or depth > 8:
        return "the"
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _filler(v, depth + 1) for k, v in props.items() if isinstance(k, str)}
    if kind == "array":
        return [_filler(schema.get("items"), depth + 1)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "mesh"


def _tool_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function a chat request makes the model call, or None (text)."""
    tools = body.get("tools")
    if not tools:
        return None
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools
    ):
        raise ApiError(400, "tools must be a list of {type: function, function: {...}}", "tools")
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        for t in tools:
            if t["function"].get("name") == name:
                return dict(t["function"])
        raise ApiError(400, f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    if choice not in ("auto", "required"):
        raise ApiError(400, "tool_choice must be 'none', 'auto', 'required' or a named function", "tool_choice")
    return dict(tools[0]["function"])  # auto: this emulated model always calls the first tool


def _structured(body: dict[str, Any]) -> str | None:
    rf = body.get("response_format")
    if not rf:
        return None
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise ApiError(400, "response_format.type must be 'text', 'json_object' or 'json_schema'", "response_format")
    if rf["type"] == "text":
        return None
    if rf["type"] == "json_object":
        return json.dumps({"answer": "mesh"})
    js = rf.get("json_schema")
    if not isinstance(js, dict) or not isinstance(js.get("schema"), dict):
        raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object", "response_format")
    return json.dumps(_filler(js["schema"]))


def _logprob_entry(piece: str, i: int, top: int) -> dict[str, Any]:
    lp = -0.05 - (i % 7) * 0.1
    alts = [{"token": piece, "logprob": lp, "bytes": list(piece.encode())}]
    alts += [{"token": f" alt{k}", "logprob": lp - 1.0 - k, "bytes": list(f" alt{k}".encode())} for k in range(1, top)]
    return {"token": piece, "logprob": lp, "bytes": list(piece.encode()), "top_logprobs": alts[:top]}


async def extended_completion(
    request: web.Request,
    rt: Runtime,
    body: dict[str, Any],
    chat: bool,
    prompt_tokens: int,
    ids: list[int] | None,
    max_tokens: int,
    target: int,
) -> web.StreamResponse:
    """n choices (each its own engine sequence), logprobs, a forced tool call or a structured (JSON) answer."""
    n = _int(body, "n", 1) or 1
    if chat:
        want_lp = body.get("logprobs") is True
        top = _int(body, "top_logprobs", 0) or 0
        if top and not want_lp:
            raise ApiError(400, "top_logprobs needs logprobs=true", "top_logprobs")
    else:
        lp = _int(body, "logprobs", 0)
        want_lp, top = lp is not None, lp or 0
    tool = _tool_choice(body) if chat else None
    forced = _structured(body)
    if tool is not None:
        forced = json.dumps(_filler(tool.get("parameters") or {"type": "object"}))
    stream = bool(body.get("stream"))
    opts = body.get("stream_options") or {}
    include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    finish = "tool_calls" if tool is not None else ("length" if target >= max_tokens else "stop")
    call_ids = [f"chatcmpl-tool-{uuid.uuid4().hex[:16]}" for _ in range(n)]
    head = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": rt.model,
    }

    def forced_piece(i: int, k: int) -> str:
        # A forced answer (tool arguments, JSON) is spread over the generated tokens; the last token ends it.
        assert forced is not None
        step = max(1, math.ceil(len(forced) / target))
        return forced[k * step : (k + 1) * step] if k < target - 1 else forced[k * step :]

    async def one(i: int, out: asyncio.Queue[tuple[int, int, str, bool] | None]) -> None:
        k = 0
        async for piece, last in rt.pieces(ids, max_tokens, target, prompt_tokens):
            await out.put((i, k, forced_piece(i, k) if forced is not None else piece, last))
            k += 1
        await out.put(None)

    queue: asyncio.Queue[tuple[int, int, str, bool] | None] = asyncio.Queue()
    tasks = [asyncio.get_running_loop().create_task(one(i, queue)) for i in range(n)]
    texts: list[list[str]] = [[] for _ in range(n)]
    lps: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    resp: web.StreamResponse | None = None
    try:
        if stream:
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
            )
            await resp.prepare(request)
        done = 0
        while done < n:
            item = await queue.get()
            if item is None:
                done += 1
                continue
            i, k, piece, last = item
            texts[i].append(piece)
            entry = _logprob_entry(piece, k, max(top, 1)) if want_lp else None
            if entry is not None:
                lps[i].append(entry)
            if resp is None:
                continue
            fr = finish if last else None
            if chat:
                if k == 0:
                    first = {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    await resp.write(_sse({**head, "choices": [first]}))
                if tool is not None:
                    fn: dict[str, Any] = {"arguments": piece}
                    tc: dict[str, Any] = {"index": 0, "function": fn}
                    if k == 0:
                        tc.update(id=call_ids[i], type="function")
                        fn["name"] = tool.get("name")
                    delta: dict[str, Any] = {"tool_calls": [tc]}
                else:
                    delta = {"content": piece}
                lpo = {"content": [entry]} if entry is not None else None
                c: dict[str, Any] = {"index": i, "delta": delta, "logprobs": lpo, "finish_reason": fr}
            else:
                lpo = _completion_logprobs([entry], top) if entry is not None else None
                c = {"index": i, "text": piece, "logprobs": lpo, "finish_reason": fr}
            await resp.write(_sse({**head, "choices": [c]}))
        for t in tasks:
            await t
    except (asyncio.CancelledError, ConnectionResetError):
        rt.em.stats.aborted += 1
        raise
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
    rt.em.stats.completed += 1
    out_tokens = sum(len(t) for t in texts)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": out_tokens,
        "total_tokens": prompt_tokens + out_tokens,
    }
    if resp is not None:
        if include_usage:
            await resp.write(_sse({**head, "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    choices = []
    for i in range(n):
        text = "".join(texts[i])
        if chat:
            msg: dict[str, Any] = {"role": "assistant", "content": text, "tool_calls": []}
            if tool is not None:
                msg["content"] = None
                msg["tool_calls"] = [
                    {"id": call_ids[i], "type": "function", "function": {"name": tool.get("name"), "arguments": text}}
                ]
            choice: dict[str, Any] = {
                "index": i,
                "message": msg,
                "finish_reason": finish,
                "stop_reason": None,
                "logprobs": {"content": lps[i]} if want_lp else None,
            }
        else:
            choice = {
                "index": i,
                "text": text,
                "finish_reason": finish,
                "stop_reason": None,
                "logprobs": _completion_logprobs(lps[i], top) if want_lp else None,
            }
        choices.append(choice)
    return web.json_response(
        {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": rt.model,
            "choices": choices,
            "usage": usage,
        }
    )


def _completion_logprobs(entries: Sequence[dict[str, Any] | None], top: int) -> dict[str, Any]:
    es = [e for e in entries if e is not None]
    offsets, pos = [], 0
    for e in es:
        offsets.append(pos)
        pos += len(e["token"])
    return {
        "tokens": [e["token"] for e in es],
        "token_logprobs": [e["logprob"] for e in es],
        "top_logprobs": [{a["token"]: a["logprob"] for a in e["top_logprobs"][: max(top, 1)]} for e in es],
        "text_offset": offsets,
    }


# -- /version, /load ----------------------------------------------------------------------------------------------
VLLM_VERSION = "0.32.0"  # the release whose routes the vllm flavour follows


async def version(request: web.Request, rt: Runtime) -> web.Response:
    return web.json_response({"version": VLLM_VERSION})


async def load(request: web.Request, rt: Runtime) -> web.Response:
    """vLLM's GET /load: the requests the server holds (running and waiting)."""
    return web.json_response({"server_load": int(rt.em.running + rt.em.waiting)})


# -- wiring -------------------------------------------------------------------------------------------------------
def add_routes(app: web.Application, key: web.AppKey[Any], flavor: str) -> None:
    """Register the routes `flavor` serves (FLAVOR_APIS); errors in the API's own shape."""
    served = FLAVOR_APIS.get(flavor, frozenset())
    store = ResponseStore()

    def wrap(fn: Callable[..., Any], anthropic: bool = False, with_store: bool = False) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            rt = Runtime(request.app[key])
            try:
                if with_store:
                    return await fn(request, rt, store)  # type: ignore[no-any-return]
                return await fn(request, rt)  # type: ignore[no-any-return]
            except ApiError as e:
                rt.em.stats.rejected += 1
                return _anthropic_error(e) if anthropic else _openai_error(e)

        return handler

    if "embeddings" in served:
        app.router.add_post("/v1/embeddings", wrap(embeddings))
    if "tokenize" in served:
        app.router.add_post("/tokenize", wrap(tokenize))
        app.router.add_post("/detokenize", wrap(detokenize))
    if "responses" in served:
        app.router.add_post("/v1/responses", wrap(responses, with_store=True))
        app.router.add_get("/v1/responses/{response_id}", wrap(get_response, with_store=True))
        app.router.add_post("/v1/responses/{response_id}/cancel", wrap(cancel_response, with_store=True))
    if "messages" in served:
        app.router.add_post("/v1/messages", wrap(messages, anthropic=True))
    if flavor == "vllm":
        app.router.add_get("/version", wrap(version))
        app.router.add_get("/load", wrap(load))
