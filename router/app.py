"""The aiohttp application: OpenAI ingress with byte-exact streaming, KServe v2 over HTTP, WebSocket tokens, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.trace import SpanKind, get_current_span

from router import capabilities, kserve, route_report, usage, v2codec
from router.cells import SPILLED_FROM, spill_headers
from router.config import RouterConfig
from router.core import spill_proof
from router.forward import HOP_BY_HOP, ForwardError, Winner
from router.metrics import ERRORS, REQUESTS, render
from router.obs import access_log, extract, trace_id_hex, tracer
from router.openai_api import APIS, ParsedRequest, error_body, parse_chat_body, parse_json_body, validate
from router.prefix import RequestPrefix, close_kv_events, request_prefix, session_key_of, start_kv_events
from router.service import Refusal, RouterService, Tenant, Ticket, new_corr_id, request_deadline
from router.upstream import Response, UpstreamError
from router.view import Target

SVC = web.AppKey("svc", RouterService)
_USAGE_BUFFER = 1 << 20  # a non-streamed answer up to this size is also parsed for its token usage


def _json(status: int, body: bytes, corr: str, retry_after: str | None = None) -> web.Response:
    headers = {"x-request-id": corr}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _refusal_response(r: Refusal, corr: str, api: str, v2: bool = False) -> web.Response:
    if v2:
        body = json.dumps({"error": r.message, "code": r.code}).encode()
    else:
        body = error_body(r.message, r.code, r.status, r.param)
    headers = {"x-request-id": corr}
    if r.retry_after is not None:
        headers["Retry-After"] = r.retry_after
    resp = RefusalResponse(status=r.status, body=body, content_type="application/json", headers=headers)
    resp.refusal = (r, api)
    return resp


class RefusalResponse(web.Response):
    """An error answer that carries its refusal for the access log (refusal_access_log): a type test is all the
    admitted requests pay."""

    refusal: tuple[Refusal, str]


@web.middleware
async def refusal_access_log(request: web.Request, handler: Any) -> web.StreamResponse:
    """An access-log line for each request refused before it was admitted (401, 403, 404, 400, 413, 429...): the
    status, the reason and who asked, never the credential (admitted requests are logged when they finish)."""
    try:
        resp: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:  # no such route or method
        if exc.status >= 400 and request.app[SVC].cfg.logging.access_log:
            access_log(
                corr_id=request.headers.get("x-request-id") or None, method=request.method, path=request.path,
                status=exc.status, cause="no_route" if exc.status in (404, 405) else exc.reason,
                reason=exc.reason, remote=request.remote,
            )  # fmt: skip
        raise
    if type(resp) is RefusalResponse and request.app[SVC].cfg.logging.access_log:
        r, api = resp.refusal
        access_log(
            corr_id=resp.headers.get("x-request-id"), api=api, method=request.method, path=request.path,
            status=r.status, cause=r.code, reason=r.message, remote=request.remote,
        )  # fmt: skip
    return resp


async def read_body(request: web.Request, cfg: RouterConfig) -> bytes:
    """The request body as the bytes that arrived: a body that came with the head is taken without an await (and,
    in one piece, without a copy); a longer one is gathered chunk by chunk and joined once (aiohttp's own `read`
    copies twice, into a bytearray and out of it)."""
    limit = cfg.listen.max_body_bytes
    size = request.content_length
    if size is not None and size > limit:
        raise Refusal(413, "body_too_large", f"request body of {size} bytes exceeds {limit} bytes")
    content = request.content
    if content.is_eof():  # the whole body came with the headers: no timer, no await
        body = content.read_nowait()
        if len(body) > limit:
            raise Refusal(413, "body_too_large", f"request body exceeds {limit} bytes")
        return body
    chunks: list[bytes] = []
    got = 0
    try:
        async with asyncio.timeout(cfg.listen.body_read_timeout_s):
            while chunk := await content.readany():
                got += len(chunk)
                if got > limit:
                    raise Refusal(413, "body_too_large", f"request body exceeds {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Refusal(
            408, "body_timeout", f"request body not received within {cfg.listen.body_read_timeout_s:g}s"
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def upstream_headers_from(corr: str, accept: str | None = None) -> dict[str, str]:
    h = {"Content-Type": "application/json", "x-request-id": corr}
    if accept:
        h["Accept"] = accept
    # traceparent of the router's span (or the caller's, when tracing is off), formatted here: the propagator's
    # inject costs more than the rest of the headers together
    ctx = get_current_span().get_span_context()
    if ctx.is_valid:
        h["traceparent"] = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        if ctx.trace_state:
            h["tracestate"] = ctx.trace_state.to_header()
    return h


def upstream_headers(request: web.Request, corr: str) -> dict[str, str]:
    return upstream_headers_from(corr, request.headers.get("Accept"))


def _count_events(chunk: bytes) -> int:
    return chunk.count(b"data: {") + chunk.count(b"data:{")


def _copy_headers(up: Response, ticket: Ticket) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for k, v in up.headers:
        if k.lower() not in HOP_BY_HOP:
            headers.add(k, v)
    headers["x-request-id"] = ticket.corr_id
    return headers


_USAGE_KEY = re.compile(rb'(?<!\\)"usage"\s*:\s*')
_DECODER = json.JSONDecoder()


def _read_usage(ticket: Ticket, body: bytes, status: int) -> None:
    """Token usage of a non-streamed answer (OpenAI, Responses or Anthropic naming), for quotas and metrics.

    Only the usage object is parsed: the last `"usage":` of the body (where the runtimes put it) is decoded as far
    as its object goes; the whole answer is parsed only when that finds no counts."""
    if status != 200 or not body:
        return
    i = body.rfind(b'"usage"')
    if i >= 0:
        m = _USAGE_KEY.match(body, i)
        if m is not None:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                obj, _ = _DECODER.raw_decode(body[m.end() :].decode())
                p, c = usage.counts(obj)
                if p is not None or c is not None:
                    ticket.prompt_tokens, ticket.completion_tokens = p, c
                    return
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        ticket.prompt_tokens, ticket.completion_tokens = usage.counts(usage.usage_of(json.loads(body)))


async def stream_back(
    request: web.Request, ticket: Ticket, w: Winner, sse: bool, observe: Callable[[bytes], None] | None = None
) -> web.StreamResponse:
    """Copy the runtime's answer to the client chunk by chunk as it arrives: byte-exact, never buffered whole.
    `observe` sees every chunk (the Responses API learns which target holds a response id from it)."""
    up = w.resp
    ticket.status = up.status
    if observe is not None:
        observe(w.first)
    if not sse and up.complete and up.content_length == len(w.first):
        # The whole answer came with the first read (a non-streamed one, usually): sent in one piece.
        body = w.first
        up.release()
        ticket.bytes_out += len(body)
        _read_usage(ticket, body, up.status)
        if up.status >= 500:
            ticket.cause = f"upstream_{up.status}"
        return web.Response(status=up.status, body=body, headers=_copy_headers(up, ticket))
    resp = web.StreamResponse(status=up.status, headers=_copy_headers(up, ticket))
    if up.content_length is not None:
        resp.content_length = up.content_length
    keep: list[bytes] | None = None if sse else []
    kept = 0
    events = 0
    scan = usage.UsageScan() if sse else None
    finished = False
    try:
        await resp.prepare(request)
        chunk = w.first
        remaining = ticket.deadline - time.monotonic()
        async with asyncio.timeout(remaining if remaining != float("inf") else None):
            while chunk:
                await resp.write(chunk)
                ticket.bytes_out += len(chunk)
                if scan is not None:
                    events += _count_events(chunk)
                    scan.feed(chunk)
                elif keep is not None:
                    kept += len(chunk)
                    if kept <= _USAGE_BUFFER:
                        keep.append(chunk)
                    else:
                        keep = None
                chunk = await up.readany()
                if observe is not None and chunk:
                    observe(chunk)
        finished = True
    except TimeoutError:
        # The request's deadline passed mid-answer: stop both sides; the client sees a truncated answer.
        ticket.cause = "deadline_exceeded"
        if request.transport is not None:
            request.transport.close()
        return resp
    except UpstreamError as e:
        # The runtime broke after bytes reached the client: nothing can be retried. Drop the client connection
        # without a clean end so it sees a truncated answer instead of a silently short one.
        ticket.cause = "upstream_broken_midstream"
        ticket.extra["upstream_error"] = repr(e)
        if request.transport is not None:
            request.transport.close()
        return resp
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        ticket.cancelled = True
        ticket.status = 499
        ticket.cause = "client_disconnected"
        return resp
    finally:
        if finished:
            up.release()
        else:
            up.close()  # the runtime sees the disconnect and aborts the request
    if scan is not None:
        # The runtime's own figures when the stream carries them (include_usage, Responses, Anthropic), else events.
        ticket.prompt_tokens = scan.prompt
        ticket.completion_tokens = scan.completion if scan.completion is not None else events
    elif keep:
        _read_usage(ticket, b"".join(keep), up.status)
    if up.status >= 500:
        ticket.cause = f"upstream_{up.status}"
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
        await resp.write_eof()
    return resp


class Handlers:
    def __init__(self, svc: RouterService) -> None:
        self.svc = svc
        self.cfg = svc.cfg
        token = svc.cfg.listen.metrics_token()
        self._metrics_token = token.encode() if token is not None else None

    # -- OpenAI -------------------------------------------------------------------------------------------------
    def openai(self, api: str) -> Callable[[web.Request], Any]:
        path = APIS[api][0]

        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._openai(request, api, path)

        return handler

    async def _openai(self, request: web.Request, api: str, path: str) -> web.StreamResponse:
        parse = self._parse_chat if api == "chat" else parse_json_body
        return await self.pipeline(request, api, path, functools.partial(validate, api), parse=parse)

    def _parse_chat(self, body: bytes) -> dict[str, Any]:
        # a large chat is parsed as far as the block hashes read it: its first messages, up to the characters that
        # hold `max_prompt_tokens` tokens (a token is at most four characters and a space); the rest is relayed
        return parse_chat_body(body, 5 * self.cfg.cache.max_prompt_tokens)

    def _prefix(self, api: str, parsed: ParsedRequest, body: bytes, headers: Any, hashes: bool) -> RequestPrefix:
        """The request's block hashes and session key (`hashes` False: the session key alone, for strategies that
        do not read the prompt). A partly parsed chat whose first messages held too few tokens is parsed in full."""
        cfg = self.cfg.cache
        if not hashes:
            return RequestPrefix([], 0, session_key_of(parsed.obj, headers, cfg))
        prefix = request_prefix(api, parsed.obj, headers, cfg)
        if parsed.partial and prefix.tokens < cfg.max_prompt_tokens:
            prefix = request_prefix(api, parsed.whole(body), headers, cfg)
        return prefix

    async def pipeline(
        self,
        request: web.Request,
        api: str,
        path: str,
        check: Callable[[dict[str, Any]], ParsedRequest],
        *,
        refuse: Callable[[Refusal, str], web.StreamResponse] | None = None,
        pin: Callable[[Tenant, ParsedRequest], Awaitable[Target | None]] | None = None,
        observe: Callable[[Ticket, Tenant], Callable[[bytes], None]] | None = None,
        parse: Callable[[bytes], dict[str, Any]] = parse_json_body,
    ) -> web.StreamResponse:
        """The pipeline of every JSON inference API (OpenAI, Responses, Anthropic, tokenize): authenticate, read and
        check the body, admit, rank (only targets whose runtime serves `api`, or the one `pin` names) and stream the
        runtime's answer back byte for byte. `refuse` shapes the API's own error body (OpenAI's by default)."""
        svc = self.svc
        headers = request.headers
        # no traceparent: nothing to extract (the propagator would build an empty context for it)
        parent = extract(headers) if "traceparent" in headers else None
        with tracer().start_as_current_span(f"POST {path}", context=parent, kind=SpanKind.SERVER) as span:
            trace_id = trace_id_hex(span)
            corr = new_corr_id(headers, trace_id)
            try:
                tenant = svc.authenticate(headers)
                body = await read_body(request, self.cfg)
                parsed = check(parse(body))
                if api not in capabilities.BASIC:  # embeddings and the rest: not every runtime serves them
                    capabilities.check(svc.view.all(parsed.model), parsed.model, api)
                pinned = await pin(tenant, parsed) if pin is not None else None
                priority = svc.priority_for(tenant, request.headers.get("x-infermesh-priority"))
                ticket = await svc.admit(
                    api=api,
                    model=parsed.model,
                    tenant=tenant,
                    priority=priority,
                    prompt_chars=parsed.prompt_chars,
                    max_tokens=parsed.max_tokens,
                    corr_id=corr,
                    trace_id=trace_id,
                    deadline_s=request_deadline(request.headers),
                    prefix=functools.partial(self._prefix, api, parsed, body, headers) if api in APIS else None,
                    spilled_from=request.headers.get(SPILLED_FROM),
                    spill_signature=request.headers.get(spill_proof.HEADER),
                )
            except Refusal as r:
                if r.status not in (404, 429):
                    REQUESTS.labels(model="", tenant="", api=api, code=str(r.status)).inc()
                span.set_attribute("http.response.status_code", r.status)
                return refuse(r, corr) if refuse is not None else _refusal_response(r, corr, api)
            span.set_attribute("infermesh.tenant", tenant.name)
            span.set_attribute("infermesh.model", parsed.model)
            # A follow-up goes to the target that holds its response; otherwise the policy's order, serving targets.
            if pinned is not None:
                ticket.ranked = [pinned]
            elif api not in capabilities.BASIC:
                ticket.ranked = capabilities.only_serving_or_all(ticket.ranked, api)
            if api == "responses" and parsed.obj.get("background") is True:
                ticket.extra["background"] = True  # its tokens are counted when it is seen finished
            try:
                obs = observe(ticket, tenant) if observe is not None else None
                return await self._forward(request, ticket, parsed, body, path, span, obs)
            finally:
                await svc.finish(ticket)

    async def _forward(
        self,
        request: web.Request,
        ticket: Ticket,
        parsed: ParsedRequest,
        body: bytes,
        path: str,
        span: Any,
        observe: Callable[[bytes], None] | None = None,
    ) -> web.StreamResponse:
        headers = upstream_headers(request, ticket.corr_id)
        if any(t.source == "cell" for t in ticket.ranked):  # another cell's router authenticates it again
            headers.update(spill_headers(request.headers, self.svc.cells.view.cell, self.svc.sign_spill(ticket)))

        def as_parsed(t: Target) -> bytes:
            if t.upstream_model == parsed.model:
                return body  # as it came: a large chat's messages are never parsed whole for it
            return json.dumps({**parsed.whole(body), "model": t.upstream_model}).encode()

        body_for: Callable[[Target], bytes] = as_parsed

        try:
            if not ticket.ranked and self.svc.pd.serves(ticket.model, ticket.api):
                parsed.whole(body)  # the prefill stage rewrites it
                body_for = await self._prefill(ticket, parsed, path, headers)
            w = await self.svc.open(ticket, path, body_for, headers, hedge_ok=ticket.strategy != "pd")
        except ForwardError as e:
            ticket.status, ticket.cause = e.status, e.cause
            span.set_attribute("http.response.status_code", e.status)
            return _json(e.status, error_body(e.message, e.cause, e.status), ticket.corr_id)
        except asyncio.CancelledError:
            ticket.cancelled, ticket.cause = True, "client_disconnected"
            raise
        span.set_attribute("infermesh.target", w.target.id)
        span.set_attribute("http.response.status_code", w.resp.status)
        try:
            return await stream_back(request, ticket, w, parsed.stream, observe)
        except asyncio.CancelledError:
            ticket.cancelled, ticket.cause = True, "client_disconnected"
            w.resp.close()
            raise

    async def _prefill(
        self, ticket: Ticket, parsed: ParsedRequest, path: str, headers: dict[str, str]
    ) -> Callable[[Target], bytes]:
        """Disaggregated serving's first stage (router/pd.py): the decode targets become the ticket's ranking."""
        fbt = min(ticket.policy.first_byte_timeout_s, max(0.001, ticket.deadline - time.monotonic()))
        decodes, body_for = await self.svc.pd.prefill(
            model=ticket.model, obj=parsed.obj, prompt_tokens=max(1, parsed.prompt_chars // 4), prefix=ticket.prefix,
            path=path, headers=headers, policy=ticket.policy, first_byte_timeout=fbt, extra=ticket.extra,
        )  # fmt: skip
        ticket.ranked = decodes
        self.svc.ranker.assigned(decodes[0].id)
        return body_for

    async def models(self, request: web.Request) -> web.Response:
        corr = new_corr_id(request.headers, "")
        try:
            tenant = self.svc.authenticate(request.headers)
        except Refusal as r:
            return _refusal_response(r, corr, "models")
        now = int(time.time())
        if self.svc.portal.knows(tenant.name):
            # The portal's catalog decides: the tenant's deployed models, each alias listed with its model as root.
            data = [
                {"id": name, "object": "model", "created": now, "owned_by": tenant.name, "root": m.name}
                for m in self.svc.portal.listed(tenant.name)
                if tenant.may_use(m.name)
                for name in (m.name, *m.aliases)
            ]
            return web.json_response({"object": "list", "data": data}, headers={"x-request-id": corr})
        models = [m for m in self.svc.view.models() if tenant.may_use(m)]
        cards: list[dict[str, object]] = []
        for m in models:
            card: dict[str, object] = {"id": m, "object": "model", "created": now, "owned_by": "infermesh"}
            # a LoRA adapter names its base model, as vLLM's own /v1/models does
            parent = next((t.state.parent for t in self.svc.view.all(m) if t.state is not None and t.state.parent), "")
            if parent:
                card["parent"] = parent
            cards.append(card)
        return web.json_response({"object": "list", "data": cards}, headers={"x-request-id": corr})

    # -- KServe v2 ----------------------------------------------------------------------------------------------
    async def v2_live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def v2_ready(self, request: web.Request) -> web.Response:
        ready = any(self.svc.view.candidates(m) for m in self.svc.view.models())
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def v2_server(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "infermesh-router", "version": "1", "extensions": ["binary_tensor_data"]})

    def _visible_model(self, request: web.Request) -> str:
        """The {name} of a model-level KServe path, after the tenant's key and its right to see that model."""
        name = request.match_info["name"]
        self.svc.require_model(self.svc.authenticate(request.headers), name)
        return name

    async def v2_model(self, request: web.Request) -> web.Response:
        corr = new_corr_id(request.headers, "")
        try:
            name = self._visible_model(request)
        except Refusal as r:
            return _refusal_response(r, corr, "v2", v2=True)
        revs = sorted({t.revision for t in self.svc.view.all(name) if t.revision})
        return web.json_response(kserve.model_metadata(name, revs), headers={"x-request-id": corr})

    async def v2_model_ready(self, request: web.Request) -> web.Response:
        corr = new_corr_id(request.headers, "")
        try:
            name = self._visible_model(request)
        except Refusal as r:
            return _refusal_response(r, corr, "v2", v2=True)
        ready = bool(self.svc.view.candidates(name))
        return web.json_response(
            {"name": name, "ready": ready}, status=200 if ready else 503, headers={"x-request-id": corr}
        )

    async def v2_infer(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        svc = self.svc
        with tracer().start_as_current_span(
            "POST /v2/models/{name}/infer", context=extract(request.headers), kind=SpanKind.SERVER
        ) as span:
            trace_id = trace_id_hex(span)
            corr = new_corr_id(request.headers, trace_id)
            try:
                tenant = svc.authenticate(request.headers)
                body = await read_body(request, self.cfg)
                obj, blob = v2codec.split_body(body, request.headers.get(v2codec.HEADER))
                req = kserve.parse_v2(obj, blob)
                ticket = await svc.admit(
                    api="v2",
                    model=name,
                    tenant=tenant,
                    priority=svc.priority_for(tenant, request.headers.get("x-infermesh-priority")),
                    prompt_chars=len(req.text),
                    max_tokens=req.max_tokens,
                    corr_id=corr,
                    trace_id=trace_id,
                    spilled_from=request.headers.get(SPILLED_FROM),
                    spill_signature=request.headers.get(spill_proof.HEADER),
                )
            except Refusal as r:
                return _refusal_response(r, corr, "v2", v2=True)
            try:
                status, out = await infer_v2(svc, ticket, req, upstream_headers(request, corr), name, request.headers)
                if status != 200:
                    return _json(status, json.dumps(out).encode(), corr)
                return _v2_answer(out, req, corr)
            finally:
                await svc.finish(ticket)

    # -- WebSocket ----------------------------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        svc = self.svc
        corr0 = new_corr_id(request.headers, "")
        try:
            tenant = svc.authenticate(request.headers, request.query.get("api_key"))
        except Refusal as r:
            return _refusal_response(r, corr0, "ws")
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=self.cfg.listen.max_body_bytes)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_json({"type": "error", "status": 400, "message": "send JSON text frames"})
                continue
            await self._ws_request(ws, request, tenant, msg.data)
        return ws

    async def _ws_request(self, ws: web.WebSocketResponse, request: web.Request, tenant: Tenant, data: str) -> None:
        svc = self.svc
        with tracer().start_as_current_span("WS /v1/ws", context=extract(request.headers), kind=SpanKind.SERVER) as sp:
            trace_id = trace_id_hex(sp)
            corr = new_corr_id({}, trace_id)
            try:
                obj = parse_json_body(data.encode())
                api = "chat" if "messages" in obj else "completions"
                parsed = validate(api, {**obj, "stream": True})
                ticket = await svc.admit(
                    api="ws",
                    model=parsed.model,
                    tenant=tenant,
                    priority=svc.priority_for(tenant, obj.get("priority")),
                    prompt_chars=parsed.prompt_chars,
                    max_tokens=parsed.max_tokens,
                    corr_id=corr,
                    trace_id=trace_id,
                )
            except Refusal as r:
                err: dict[str, Any] = {"type": "error", "status": r.status, "code": r.code, "message": r.message}
                if r.retry_after:
                    err["retry_after"] = int(r.retry_after)
                await ws.send_json(err)
                return
            path = APIS[api][0]
            headers = upstream_headers(request, corr)
            if any(t.source == "cell" for t in ticket.ranked):  # another cell's router: the key as a header
                key = request.query.get("api_key")
                client: Mapping[str, str] = request.headers
                if key and not _has_key(request.headers):
                    client = {"Authorization": f"Bearer {key}"}
                headers.update(spill_headers(client, svc.cells.view.cell, svc.sign_spill(ticket)))
            try:
                await self._ws_stream(ws, ticket, parsed, path, headers)
            finally:
                await svc.finish(ticket)

    async def _ws_stream(
        self, ws: web.WebSocketResponse, ticket: Ticket, parsed: ParsedRequest, path: str, headers: dict[str, str]
    ) -> None:
        def body_for(t: Target) -> bytes:
            return json.dumps({**parsed.obj, "model": t.upstream_model, "stream": True}).encode()

        try:
            w = await self.svc.open(ticket, path, body_for, headers)
        except ForwardError as e:
            ticket.status, ticket.cause = e.status, e.cause
            await ws.send_json({"type": "error", "status": e.status, "code": e.cause, "message": e.message})
            return
        ticket.status = w.resp.status
        if w.resp.status != 200:
            raw = w.first + await w.resp.read()
            w.resp.release()
            await ws.send_json({"type": "error", "status": w.resp.status, "message": raw.decode(errors="replace")})
            return
        index = 0
        finish = None
        try:
            async for event in sse_events(w):
                if event == b"[DONE]":
                    break
                try:
                    obj = json.loads(event)
                    choice = (obj.get("choices") or [{}])[0]
                except (ValueError, AttributeError, IndexError):
                    continue
                text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                finish = choice.get("finish_reason") or finish
                if text:
                    await ws.send_json({"type": "token", "index": index, "text": text})
                    index += 1
            ticket.completion_tokens = index
            await ws.send_json({"type": "done", "id": ticket.corr_id, "tokens": index, "finish_reason": finish})
        except UpstreamError as e:
            ticket.cause = "upstream_broken_midstream"
            await ws.send_json({"type": "error", "status": 502, "message": f"runtime broke the stream: {e}"})
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            ticket.cancelled = True
        finally:
            w.resp.close()

    # -- ops ----------------------------------------------------------------------------------------------------
    async def metrics(self, request: web.Request) -> web.Response:
        if self._metrics_token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._metrics_token):
                return web.json_response(
                    {"error": "/metrics needs the metrics bearer token (listen.metrics_token_file)"},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        data, ctype = render()
        return web.Response(body=data, headers={"Content-Type": ctype})

    async def healthz(self, request: web.Request) -> web.Response:
        v = self.svc.view
        # Open to probes, so it names no model: which models exist is for a tenant's key (/v1/models).
        return web.json_response(
            {"ok": True, "local_only": v.local_only, "mesh_degraded": self.svc.ranker.mesh.degraded,
             "targets": v.counts(), "inflight": self.svc.inflight}
        )  # fmt: skip


async def sse_events(w: Winner) -> AsyncIterator[bytes]:
    """Yield the data of each SSE event (for the WebSocket bridge; the HTTP path never parses the stream)."""
    buf = w.first
    while True:
        while True:
            idx = buf.find(b"\n\n")
            if idx < 0:
                break
            block, buf = buf[:idx], buf[idx + 2 :]
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[5:].strip()
        chunk = await w.resp.readany()
        if not chunk:
            return
        buf += chunk


def _v2_answer(out: dict[str, Any], req: kserve.V2Request, corr: str) -> web.Response:
    """A v2 answer in the form the client asked for: JSON, or binary tensors after a JSON header."""
    try:
        tensors = kserve.tensors_of(out)
    except ValueError as e:
        return _json(502, json.dumps({"error": f"runtime answered an unreadable v2 response: {e}"}).encode(), corr)
    head = {k: v for k, v in out.items() if k != "outputs"}
    spec = req.outputs or v2codec.OutputSpec(None, {}, False)
    body, header_len = v2codec.encode_http(head, tensors, spec)
    if header_len is None:
        return _json(200, body, corr)
    headers = {"x-request-id": corr, v2codec.HEADER: str(header_len)}
    return web.Response(status=200, body=body, content_type="application/octet-stream", headers=headers)


async def infer_v2(
    svc: RouterService,
    ticket: Ticket,
    req: kserve.V2Request,
    headers: dict[str, str],
    name: str,
    client: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Forward one KServe v2 inference (shared by HTTP and gRPC); returns (status, v2 response or error body).
    Another cell's router (a spill-over, router/cells.py) gets the v2 request itself with the client's credentials
    (`client`: its headers or gRPC metadata) and the signed spill; a runtime gets it as its kind takes it."""

    def body_for(t: Target) -> bytes:
        if t.api == "kserve" or t.source == "cell":
            return kserve.to_v2_json(req)
        return kserve.to_completion(req, t.upstream_model)

    if any(t.source == "cell" for t in ticket.ranked):
        headers = {**headers, **spill_headers(client or {}, svc.cells.view.cell, svc.sign_spill(ticket))}
    try:
        w = await _open_by_path(svc, ticket, body_for, headers)
    except ForwardError as e:
        ticket.status, ticket.cause = e.status, e.cause
        return e.status, {"error": e.message, "code": e.cause}
    try:
        data = w.first + await w.resp.read()
    except UpstreamError as e:
        ticket.status, ticket.cause = 502, "upstream_broken"
        return 502, {"error": f"runtime broke the response: {e}", "code": "upstream_broken"}
    finally:
        w.resp.close()
    ticket.bytes_out = len(data)
    ticket.status = w.resp.status
    if w.resp.status != 200:
        ticket.cause = f"upstream_{w.resp.status}" if w.resp.status >= 500 else ""
        return w.resp.status, {"error": data.decode(errors="replace")[:2000], "code": "upstream_error"}
    if w.target.api == "kserve" or w.target.source == "cell":
        try:
            out = json.loads(data)
        except ValueError:
            ticket.status, ticket.cause = 502, "upstream_broken"
            return 502, {"error": "runtime answered a body that is not JSON", "code": "upstream_broken"}
        if w.target.source == "cell" and isinstance(out, dict):  # that router's counts, for this one's token quota
            ticket.prompt_tokens, ticket.completion_tokens = kserve.token_counts(out)
        return 200, out
    try:
        out, pt, ct = kserve.from_completion(data, name, req.id or ticket.corr_id)
    except ValueError as e:
        ticket.status, ticket.cause = 502, "upstream_broken"
        ERRORS.labels(ticket.model, ticket.tenant, "upstream_broken").inc()
        return 502, {"error": f"runtime answered an unreadable completion: {e}", "code": "upstream_broken"}
    ticket.prompt_tokens, ticket.completion_tokens = pt, ct
    return 200, out


def _has_key(headers: Mapping[str, str]) -> bool:
    return bool(headers.get("Authorization") or headers.get("x-api-key"))


def _v2_path(t: Target) -> str:
    if t.source == "cell":  # another cell's router: its own v2 endpoint, whatever its runtimes are
        return f"/v2/models/{t.upstream_model}/infer"
    return f"/v2/models/{t.upstream_model}/infer" if t.api == "kserve" else "/v1/completions"


async def _open_by_path(
    svc: RouterService, ticket: Ticket, body_for: Callable[[Target], bytes], headers: dict[str, str]
) -> Winner:
    """`svc.open` over the ranked targets; where they differ in path (another cell's router takes v2, this cell's
    runtimes their own kind), each run of one path in rank order, the next tried when one fails."""
    ranked = ticket.ranked
    runs: list[tuple[str, list[Target]]] = []
    for t in ranked:
        p = _v2_path(t)
        if runs and runs[-1][0] == p:
            runs[-1][1].append(t)
        else:
            runs.append((p, [t]))
    if len(runs) <= 1:
        return await svc.open(ticket, runs[0][0] if runs else "/v1/completions", body_for, headers)
    try:
        for path, run in runs[:-1]:
            ticket.ranked = run
            with contextlib.suppress(ForwardError):
                return await svc.open(ticket, path, body_for, headers)
        path, run = runs[-1]
        ticket.ranked = run
        return await svc.open(ticket, path, body_for, headers)
    finally:
        ticket.ranked = ranked


async def _start_service(app: web.Application) -> AsyncIterator[None]:
    svc = app[SVC]
    await svc.start()
    kv_events = start_kv_events(svc.cfg.cache)
    yield
    await close_kv_events(kv_events)
    await svc.close()


def build_app(svc: RouterService) -> web.Application:
    cfg = svc.cfg
    app = web.Application(client_max_size=cfg.listen.max_body_bytes, middlewares=[refusal_access_log])
    app[SVC] = svc
    h = Handlers(svc)
    app.router.add_post("/v1/chat/completions", h.openai("chat"))
    app.router.add_post("/v1/completions", h.openai("completions"))
    app.router.add_post("/v1/embeddings", h.openai("embeddings"))
    app.router.add_get("/v1/models", h.models)
    app.router.add_get("/v1/ws", h.websocket)
    app.router.add_get("/v2", h.v2_server)
    app.router.add_get("/v2/health/live", h.v2_live)
    app.router.add_get("/v2/health/ready", h.v2_ready)
    app.router.add_get("/v2/models/{name}", h.v2_model)
    app.router.add_get("/v2/models/{name}/ready", h.v2_model_ready)
    app.router.add_post("/v2/models/{name}/infer", h.v2_infer)
    app.router.add_get("/metrics", h.metrics)
    app.router.add_get("/healthz", h.healthz)
    from router import apis  # it builds on this module's handlers

    apis.add_routes(app, h)
    route_report.add_routes(app, svc)
    app.cleanup_ctx.append(_start_service)
    return app
