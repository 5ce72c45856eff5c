"""The router's API surface beyond chat, completions and embeddings, as users of vLLM expect it.

`/v1/responses` (OpenAI Responses: streamed events; background responses and follow-ups go to the target that holds
them), `/v1/messages` and `/v1/messages/count_tokens` (Anthropic), `/tokenize` and `/detokenize`. Each request is
authenticated, validated, admitted, ranked by the model's policy and metered from the runtime's own usage, exactly
like a chat completion; a model none of whose runtimes serves the API is refused with 501 (router/capabilities.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from router import capabilities, usage
from router.app import _refusal_response, read_body, upstream_headers, upstream_headers_from
from router.forward import ForwardError
from router.metrics import TOKENS, child
from router.openai_api import ParsedRequest, parse_json_body
from router.service import Refusal, Tenant, Ticket, new_corr_id
from router.upstream import UpstreamError
from router.view import Target

if TYPE_CHECKING:
    from router.app import Handlers

_RESPONSE_ID = re.compile(rb'"id"\s*:\s*"(resp_[A-Za-z0-9_\-]+)"')
_HOLDERS_MAX = 100_000
_PROBE_TIMEOUT_S = 5.0


@dataclass(slots=True)
class Holder:
    target_id: str
    model: str
    tenant: str
    metered: bool = False  # a background response's tokens, counted once when it is first seen finished


class ResponseHolders:
    """Which target holds each response this router created (bounded, oldest forgotten first). A response created
    through another router or worker is found by asking the model's targets (GET /v1/responses/{id})."""

    def __init__(self) -> None:
        self.items: OrderedDict[str, Holder] = OrderedDict()

    def put(self, rid: str, target: Target, tenant: str, metered: bool = True) -> None:
        self.items[rid] = Holder(target.id, target.model, tenant, metered)
        self.items.move_to_end(rid)
        while len(self.items) > _HOLDERS_MAX:
            self.items.popitem(last=False)

    def observer(self, ticket: Ticket, tenant: str, background: bool) -> Callable[[bytes], None]:
        """Learns the response id from the answer as it passes (the first `"id": "resp_…"` is the response's)."""
        seen = False

        def observe(chunk: bytes) -> None:
            nonlocal seen
            if seen or ticket.winner is None or ticket.status != 200:
                return
            m = _RESPONSE_ID.search(chunk)
            if m is not None:
                seen = True
                self.put(m.group(1).decode(), ticket.winner.target, tenant, metered=not background)

        return observe


def _anthropic_error(status: int, message: str, corr: str, retry_after: str | None = None) -> web.Response:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    headers = {"x-request-id": corr}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status, headers=headers)


def _anthropic_refusal(r: Refusal, corr: str) -> web.Response:
    return _anthropic_error(r.status, r.message, corr, r.retry_after)


def _chars(v: Any) -> int:
    if isinstance(v, str):
        return len(v)
    if isinstance(v, list):
        return sum(_chars(x) for x in v)
    if isinstance(v, dict):
        return _chars(v.get("content", "")) + _chars(v.get("text", ""))
    return 0


def _model(obj: dict[str, Any]) -> str:
    model = obj.get("model")
    if model is None:
        raise Refusal(400, "missing_model", "missing required field 'model'", param="model")
    if not isinstance(model, str) or not model:
        raise Refusal(400, "invalid_model", "'model' must be a non-empty string", param="model")
    return model


def _bool(obj: dict[str, Any], name: str) -> bool:
    v = obj.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise Refusal(400, f"invalid_{name}", f"'{name}' must be true or false, got {json.dumps(v)}", param=name)
    return v


def _count(obj: dict[str, Any], name: str, minimum: int = 0) -> int | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise Refusal(400, f"invalid_{name}", f"'{name}' must be an integer >= {minimum}", param=name)
    return v


class Apis:
    def __init__(self, h: Handlers) -> None:
        self.h = h
        self.svc = h.svc
        self.holders = ResponseHolders()

    # -- shared ---------------------------------------------------------------------------------------------------
    async def _pass(
        self,
        request: web.Request,
        api: str,
        path: str,
        validate: Callable[[dict[str, Any]], ParsedRequest],
        *,
        anthropic: bool = False,
        pin: Callable[[Tenant, ParsedRequest], Awaitable[Target | None]] | None = None,
        observe: Callable[[Ticket, Tenant], Callable[[bytes], None]] | None = None,
    ) -> web.StreamResponse:
        """The chat completion's pipeline (router/app.py), with Anthropic's error shape where `anthropic`."""
        refuse = _anthropic_refusal if anthropic else None
        return await self.h.pipeline(request, api, path, validate, refuse=refuse, pin=pin, observe=observe)

    async def _get_from(
        self, target: Target, path: str, corr: str, method: str = "GET", body: bytes = b""
    ) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        headers = upstream_headers_from(corr)
        resp = await self.svc.forwarder.pool.post(
            target.url, path, body, headers, deadline=loop.time() + _PROBE_TIMEOUT_S, method=method
        )
        try:
            data = await resp.read()
        finally:
            resp.close()
        return resp.status, data

    async def _holder(self, tenant: Tenant, rid: str, model: str | None, corr: str) -> Target:
        """The target that holds response `rid` for this tenant: remembered, else asked; 404 when none does."""
        h = self.holders.items.get(rid)
        if h is not None and h.tenant == tenant.name:
            for t in self.svc.view.all(h.model):
                if t.id == h.target_id:
                    return t
        models = [model] if model else [m for m in self.svc.view.models() if tenant.may_use(m)]
        targets = [t for m in models for t in self.svc.view.all(m) if capabilities.serves(t, "responses")]

        async def ask(t: Target) -> Target | None:
            try:
                status, data = await self._get_from(t, f"/v1/responses/{rid}", corr)
            except (UpstreamError, OSError, TimeoutError):
                return None
            if status != 200:
                return None
            try:
                owner = json.loads(data).get("model")
            except (ValueError, AttributeError):
                return None
            return t if isinstance(owner, str) and owner in (t.upstream_model, t.model) else None

        for found in await asyncio.gather(*(ask(t) for t in targets)):
            if found is not None:
                self.holders.put(rid, found, tenant.name)
                return found
        where = f"of model {model!r}" if model else "this key may use"
        raise Refusal(404, "response_not_found", f"no target {where} holds response {rid!r}", param="response_id")

    # -- /v1/responses --------------------------------------------------------------------------------------------
    @staticmethod
    def _validate_responses(obj: dict[str, Any]) -> ParsedRequest:
        model = _model(obj)
        stream = _bool(obj, "stream")
        background = _bool(obj, "background")
        if background and obj.get("store") is False:
            raise Refusal(400, "invalid_background", "a background response needs store=true", param="background")
        inp = obj.get("input")
        if inp is None:
            raise Refusal(400, "missing_input", "missing required field 'input'", param="input")
        if not isinstance(inp, str | list):
            raise Refusal(400, "invalid_input", "'input' must be a string or a list of input items", param="input")
        prev = obj.get("previous_response_id")
        if prev is not None and (not isinstance(prev, str) or not prev):
            raise Refusal(400, "invalid_previous_response_id", "'previous_response_id' must be a response id string")
        max_tokens = _count(obj, "max_output_tokens", 1)
        return ParsedRequest(obj, model, stream, max_tokens, _chars(inp) + _chars(obj.get("instructions")))

    async def responses(self, request: web.Request) -> web.StreamResponse:
        async def pin(tenant: Tenant, parsed: ParsedRequest) -> Target | None:
            prev = parsed.obj.get("previous_response_id")
            if prev is None:
                return None
            return await self._holder(tenant, prev, parsed.model, new_corr_id(request.headers, ""))

        return await self._pass(
            request,
            "responses",
            "/v1/responses",
            self._validate_responses,
            pin=pin,
            observe=lambda ticket, tenant: self.holders.observer(
                ticket, tenant.name, ticket.extra.get("background") is True
            ),
        )

    async def response_followup(self, request: web.Request) -> web.Response:
        """GET /v1/responses/{id} and POST /v1/responses/{id}/cancel, answered by the target that holds it."""
        corr = new_corr_id(request.headers, "")
        rid = request.match_info["response_id"]
        cancel = request.path.endswith("/cancel")
        try:
            tenant = self.svc.authenticate(request.headers)
            target = await self._holder(tenant, rid, None, corr)
            path = f"/v1/responses/{rid}" + ("/cancel" if cancel else "")
            try:
                status, data = await self._get_from(target, path, corr, "POST" if cancel else "GET")
            except (UpstreamError, OSError, TimeoutError) as e:
                raise Refusal(502, "upstream_unreachable", f"the target holding {rid!r} did not answer: {e}") from None
        except Refusal as r:
            return _refusal_response(r, corr, "responses")
        if status == 200:
            self._meter_background(rid, data)
        return web.Response(status=status, body=data, content_type="application/json", headers={"x-request-id": corr})

    def _meter_background(self, rid: str, data: bytes) -> None:
        """A background response was admitted with no usage yet: its tokens count once it is seen finished."""
        h = self.holders.items.get(rid)
        if h is None or h.metered:
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if not isinstance(obj, dict) or obj.get("status") not in ("completed", "incomplete"):
            return
        prompt, completion = usage.counts(usage.usage_of(obj))
        if completion is None:
            return
        h.metered = True
        child(TOKENS, h.model, h.tenant, "completion").inc(completion)
        if prompt:
            child(TOKENS, h.model, h.tenant, "prompt").inc(prompt)

    # -- /v1/messages (Anthropic) ---------------------------------------------------------------------------------
    @staticmethod
    def _validate_messages(obj: dict[str, Any], need_max_tokens: bool = True) -> ParsedRequest:
        model = _model(obj)
        msgs = obj.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise Refusal(400, "invalid_messages", "messages: must be a non-empty list of message objects")
        max_tokens = _count(obj, "max_tokens", 1)
        if need_max_tokens and max_tokens is None:
            raise Refusal(400, "missing_max_tokens", "max_tokens: Field required", param="max_tokens")
        return ParsedRequest(obj, model, _bool(obj, "stream"), max_tokens, _chars(msgs) + _chars(obj.get("system")))

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._pass(request, "messages", "/v1/messages", self._validate_messages, anthropic=True)

    async def count_tokens(self, request: web.Request) -> web.Response:
        """Anthropic's count_tokens, answered from the runtime's own tokenizer (its /tokenize of the chat)."""
        svc = self.svc
        corr = new_corr_id(request.headers, "")
        try:
            tenant = svc.authenticate(request.headers)
            body = await read_body(request, self.h.cfg)
            parsed = self._validate_messages(parse_json_body(body), need_max_tokens=False)
            capabilities.check(svc.view.all(parsed.model), parsed.model, "tokenize")
            ticket = await svc.admit(
                api="count_tokens",
                model=parsed.model,
                tenant=tenant,
                priority=svc.priority_for(tenant, request.headers.get("x-infermesh-priority")),
                prompt_chars=parsed.prompt_chars,
                max_tokens=0,
                corr_id=corr,
            )
        except Refusal as r:
            return _anthropic_error(r.status, r.message, corr, r.retry_after)
        ticket.ranked = capabilities.only_serving_or_all(ticket.ranked, "tokenize")
        chat = _anthropic_as_chat(parsed.obj)

        def body_for(t: Target) -> bytes:
            return json.dumps({"model": t.upstream_model, "messages": chat, "add_generation_prompt": True}).encode()

        try:
            try:
                w = await svc.open(ticket, "/tokenize", body_for, upstream_headers(request, corr))
            except ForwardError as e:
                ticket.status, ticket.cause = e.status, e.cause
                return _anthropic_error(e.status, e.message, corr)
            try:
                data = w.first + await w.resp.read()
            except UpstreamError as e:
                ticket.status, ticket.cause = 502, "upstream_broken"
                return _anthropic_error(502, f"runtime broke the answer: {e}", corr)
            finally:
                w.resp.close()
            ticket.status = w.resp.status
            try:
                count = json.loads(data)["count"] if w.resp.status == 200 else None
            except (ValueError, KeyError, TypeError):
                count = None
            if not isinstance(count, int):
                ticket.cause = "upstream_error" if w.resp.status == 200 else ""
                status = w.resp.status if w.resp.status != 200 else 502
                return _anthropic_error(
                    status, f"runtime's /tokenize answered: {data[:500].decode(errors='replace')}", corr
                )
            ticket.prompt_tokens, ticket.completion_tokens = count, 0
            return web.json_response({"input_tokens": count}, headers={"x-request-id": corr})
        finally:
            await svc.finish(ticket)

    # -- /tokenize, /detokenize -----------------------------------------------------------------------------------
    @staticmethod
    def _validate_tokenize(obj: dict[str, Any]) -> ParsedRequest:
        model = _model(obj)
        if "prompt" not in obj and "messages" not in obj:
            raise Refusal(400, "missing_prompt", "send 'prompt' (a string) or 'messages' to tokenize", param="prompt")
        return ParsedRequest(obj, model, False, 0, _chars(obj.get("prompt")) + _chars(obj.get("messages")))

    @staticmethod
    def _validate_detokenize(obj: dict[str, Any]) -> ParsedRequest:
        model = _model(obj)
        tokens = obj.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise Refusal(400, "invalid_tokens", "'tokens' must be a list of token ids", param="tokens")
        return ParsedRequest(obj, model, False, 0, len(tokens))

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        return await self._pass(request, "tokenize", "/tokenize", self._validate_tokenize)

    async def detokenize(self, request: web.Request) -> web.StreamResponse:
        return await self._pass(request, "tokenize", "/detokenize", self._validate_detokenize)


def _anthropic_as_chat(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """An Anthropic request's system prompt and messages as chat messages (text blocks joined)."""

    def text(c: Any) -> str:
        if isinstance(c, str):
            return c
        if isinstance(c, list):
            return " ".join(str(b.get("text", "")) for b in c if isinstance(b, dict))
        return ""

    out = [{"role": "system", "content": text(obj["system"])}] if obj.get("system") else []
    out += [{"role": str(m.get("role", "user")), "content": text(m.get("content"))} for m in obj["messages"]]
    return out


def add_routes(app: web.Application, h: Handlers) -> None:
    a = Apis(h)
    app.router.add_post("/v1/responses", a.responses)
    app.router.add_get("/v1/responses/{response_id}", a.response_followup)
    app.router.add_post("/v1/responses/{response_id}/cancel", a.response_followup)
    app.router.add_post("/v1/messages", a.messages)
    app.router.add_post("/v1/messages/count_tokens", a.count_tokens)
    app.router.add_post("/tokenize", a.tokenize)
    app.router.add_post("/detokenize", a.detokenize)
