"""KServe v2 `GRPCInferenceService` on grpc.aio, sharing the HTTP ingress pipeline (auth, quota, routing)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from agents.binding import BindError, join_host_port, probe_reason
from router import kserve, v2codec
from router.app import infer_v2, sse_events, upstream_headers_from
from router.forward import ForwardError
from router.obs import access_log, extract, trace_id_hex, tracer
from router.proto import grpc_predict_v2_pb2 as pb
from router.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from router.service import Refusal, RouterService, Tenant, new_corr_id
from router.upstream import UpstreamError
from router.view import Target

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _param(p: pb.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


# datatype -> the InferTensorContents field that holds it (FP16 and BF16 travel raw only)
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def tensors_of(req: pb.ModelInferRequest) -> list[v2codec.Tensor]:
    """The request's input tensors, from `contents` or from `raw_input_contents` (what tritonclient sends)."""
    raw = list(req.raw_input_contents)
    if raw and len(raw) != len(req.inputs):
        raise Refusal(400, "invalid_input", f"raw_input_contents holds {len(raw)} tensors for {len(req.inputs)} inputs")
    out = []
    for i, t in enumerate(req.inputs):
        if t.datatype not in v2codec.DATATYPES:
            raise Refusal(400, "invalid_input", f"tensor {t.name!r}: unknown datatype {t.datatype!r}")
        shape = list(t.shape)
        count = v2codec.element_count(shape)
        if raw:
            data = v2codec.decode_binary(t.name, t.datatype, raw[i], count)
        else:
            where = _CONTENTS.get(t.datatype)
            if where is None:
                raise Refusal(400, "invalid_input", f"tensor {t.name!r}: {t.datatype} travels in raw_input_contents")
            data = list(getattr(t.contents, where))
            if len(data) != count:
                raise Refusal(
                    400, "invalid_input", f"tensor {t.name!r}: holds {len(data)} elements, its shape says {count}"
                )
        out.append(v2codec.Tensor(t.name, t.datatype, shape, data))
    return out


def to_v2(req: pb.ModelInferRequest) -> kserve.V2Request:
    params = {k: _param(v) for k, v in req.parameters.items() if not k.startswith("triton_")}
    return kserve.from_tensors(req.id, tensors_of(req), params)


def to_response(model: str, rid: str, out: dict[str, Any], raw: bool, names: list[str]) -> pb.ModelInferResponse:
    """A v2 answer as gRPC: raw_output_contents when the request came raw (as Triton answers), else contents."""
    tensors = kserve.tensors_of(out)
    if names:
        tensors = [t for n in names for t in tensors if t.name == n]
    resp = pb.ModelInferResponse(model_name=model, id=rid)
    for t in tensors:
        o = resp.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        if raw or t.datatype not in _CONTENTS:
            resp.raw_output_contents.append(v2codec.encode_binary(t.datatype, t.data))
        else:
            getattr(o.contents, _CONTENTS[t.datatype]).extend(t.data)
    return resp


def _requested(req: pb.ModelInferRequest) -> list[str]:
    known = [n for n, _ in kserve.OUTPUTS]
    for o in req.outputs:
        if o.name not in known:
            raise Refusal(400, "unknown_output", f"unknown output {o.name!r}; this model has {', '.join(known)}")
    return [o.name for o in req.outputs]


def _metadata(context: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def log_refusal(svc: RouterService, r: Refusal, api: str, method: str, context: Any) -> None:
    """The access-log line of a gRPC call refused before admission, as for HTTP (never the credential)."""
    if svc.cfg.logging.access_log:
        remote = context.peer() if context is not None else None
        access_log(api=api, method=method, status=r.status, cause=r.code, reason=r.message, remote=remote)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, svc: RouterService) -> None:
        self.svc = svc

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        v = self.svc.view
        return pb.ServerReadyResponse(ready=any(v.candidates(m) for m in v.models()))

    async def _require_model(self, name: str, context: Any) -> None:
        """Model-level calls need the tenant's key (metadata `authorization`) and a model it may see; another
        tenant's model is NOT_FOUND exactly like an unknown one."""
        try:
            self.svc.require_model(self.svc.authenticate(_metadata(context)), name)
        except Refusal as r:
            log_refusal(self.svc, r, "grpc", "model", context)
            await context.abort(_CODES.get(r.status, grpc.StatusCode.INTERNAL), r.message)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        await self._require_model(request.name, context)
        return pb.ModelReadyResponse(ready=bool(self.svc.view.candidates(request.name)))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="infermesh-router", version="1")

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        await self._require_model(request.name, context)
        revs = sorted({t.revision for t in self.svc.view.all(request.name) if t.revision})
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=revs,
            platform="infermesh-router",
            inputs=[tm(name=n, datatype=d, shape=[1]) for n, d in kserve.INPUTS],
            outputs=[tm(name=n, datatype=d, shape=[1]) for n, d in kserve.OUTPUTS],
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        svc = self.svc
        md = _metadata(context)
        with tracer().start_as_current_span("grpc ModelInfer", context=extract(md), kind=SpanKind.SERVER) as span:
            trace_id = trace_id_hex(span)
            corr = new_corr_id(md, trace_id)
            try:
                tenant = svc.authenticate(md)
                if not request.model_name:
                    raise Refusal(400, "missing_model", "model_name is required")
                req = to_v2(request)
                names = _requested(request)
                ticket = await svc.admit(
                    api="grpc",
                    model=request.model_name,
                    tenant=tenant,
                    priority=svc.priority_for(tenant, md.get("x-infermesh-priority")),
                    prompt_chars=len(req.text),
                    max_tokens=req.max_tokens,
                    corr_id=corr,
                    trace_id=trace_id,
                )
            except Refusal as r:
                log_refusal(svc, r, "grpc", "ModelInfer", context)
                if r.retry_after:
                    context.set_trailing_metadata((("retry-after", r.retry_after),))
                await context.abort(_CODES.get(r.status, grpc.StatusCode.INTERNAL), r.message)
            try:
                status, out = await infer_v2(svc, ticket, req, upstream_headers_from(corr), request.model_name, md)
            finally:
                await svc.finish(ticket)
            if status != 200:
                await context.abort(_CODES.get(status, grpc.StatusCode.INTERNAL), str(out.get("error", "")))
            try:
                return to_response(
                    request.model_name, out.get("id") or corr, out, bool(request.raw_input_contents), names
                )
            except ValueError as e:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"runtime answered an unreadable v2 response: {e}")
                raise  # abort raises; this keeps type checkers content

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Triton's decoupled streaming: each request of the stream is answered by one response per token piece
        when its `stream` input is true (else by one response), the last flagged `triton_final_response`.
        Requests run concurrently; an error for one request is an `error_message` and the stream goes on."""
        md = _metadata(context)
        try:
            tenant = self.svc.authenticate(md)
        except Refusal as r:
            log_refusal(self.svc, r, "grpc_stream", "ModelStreamInfer", context)
            await context.abort(_CODES.get(r.status, grpc.StatusCode.INTERNAL), r.message)
        out: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(self._stream_one(request, tenant, md, out))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.wait(set(running))
            await out.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await out.get()) is not None:
                yield item
            await reader  # surfaces an error of the request stream itself
        finally:
            # The client went away (or the call ended): stop every request still running, which closes its
            # upstream connection so the runtime aborts the sequence.
            for task in (reader, *running):
                task.cancel()
            for task in (reader, *running):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _stream_one(
        self,
        request: pb.ModelInferRequest,
        tenant: Tenant,
        md: dict[str, str],
        out: asyncio.Queue[pb.ModelStreamInferResponse | None],
    ) -> None:
        svc = self.svc
        with tracer().start_as_current_span("grpc ModelStreamInfer", context=extract(md), kind=SpanKind.SERVER) as span:
            trace_id = trace_id_hex(span)
            corr = new_corr_id({}, trace_id)
            rid = request.id
            try:
                if not request.model_name:
                    raise Refusal(400, "missing_model", "model_name is required")
                req = to_v2(request)
                names = _requested(request)
                ticket = await svc.admit(
                    api="grpc_stream",
                    model=request.model_name,
                    tenant=tenant,
                    priority=svc.priority_for(tenant, md.get("x-infermesh-priority")),
                    prompt_chars=len(req.text),
                    max_tokens=req.max_tokens,
                    corr_id=corr,
                    trace_id=trace_id,
                )
            except Refusal as r:
                log_refusal(svc, r, "grpc_stream", "ModelStreamInfer", None)  # one request of an open stream
                await out.put(pb.ModelStreamInferResponse(error_message=f"{r.status} {r.code}: {r.message}"))
                return
            raw = bool(request.raw_input_contents)
            model = request.model_name
            try:
                first = ticket.ranked[0] if ticket.ranked else None
                # another cell's router (a spill-over) answers in one piece, as a KServe runtime does
                spilled = any(t.source == "cell" for t in ticket.ranked)
                if not req.stream or first is None or first.api == "kserve" or spilled:
                    status, res = await infer_v2(svc, ticket, req, upstream_headers_from(corr), model, md)
                    if status != 200:
                        await out.put(pb.ModelStreamInferResponse(error_message=f"{status}: {res.get('error', '')}"))
                        return
                    resp = to_response(model, rid, res, raw, names)
                    resp.parameters["triton_final_response"].bool_param = True
                    await out.put(pb.ModelStreamInferResponse(infer_response=resp))
                    return
                async for piece in stream_completion(svc, ticket, req, upstream_headers_from(corr)):
                    if isinstance(piece, str):
                        await out.put(pb.ModelStreamInferResponse(error_message=piece))
                        return
                    resp = to_response(model, rid, {"outputs": piece[0]}, raw, names)
                    resp.parameters["triton_final_response"].bool_param = piece[1]
                    await out.put(pb.ModelStreamInferResponse(infer_response=resp))
            except ValueError as e:
                await out.put(pb.ModelStreamInferResponse(error_message=f"502: unreadable runtime answer: {e}"))
            finally:
                await svc.finish(ticket)


async def stream_completion(
    svc: RouterService, ticket: Any, req: kserve.V2Request, headers: dict[str, str]
) -> AsyncIterator[tuple[list[dict[str, Any]], bool] | str]:
    """Token pieces of a streamed /v1/completions as v2 outputs (outputs, final?); a str is an error."""

    def body_for(t: Target) -> bytes:
        body = json.loads(kserve.to_completion(req, t.upstream_model))
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # metered from the runtime's own count
        return json.dumps(body).encode()

    try:
        w = await svc.open(ticket, "/v1/completions", body_for, headers)
    except ForwardError as e:
        ticket.status, ticket.cause = e.status, e.cause
        yield f"{e.status} {e.cause}: {e.message}"
        return
    ticket.status = w.resp.status
    try:
        if w.resp.status != 200:
            raw = w.first + await w.resp.read()
            yield f"{w.resp.status}: {raw.decode(errors='replace')[:2000]}"
            return
        pending: tuple[str, str | None] | None = None
        pt = ct = None
        n = 0
        async for event in sse_events(w):
            if event == b"[DONE]":
                break
            try:
                obj = json.loads(event)
            except ValueError:
                continue
            usage = obj.get("usage") if isinstance(obj, dict) else None
            if isinstance(usage, dict):
                pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
            choices = obj.get("choices") if isinstance(obj, dict) else None
            if not choices or not isinstance(choices[0], dict):
                continue
            text = choices[0].get("text") or ""
            finish = choices[0].get("finish_reason")
            # One piece behind, so that the last piece can carry the final flag and the usage.
            if pending is not None:
                yield kserve.outputs_of(pending[0], pending[1], None, n), False
            n += 1
            pending = (text, finish if isinstance(finish, str) else None)
        ticket.prompt_tokens = pt if isinstance(pt, int) else None
        ticket.completion_tokens = ct if isinstance(ct, int) else n
        last = pending or ("", None)
        yield kserve.outputs_of(last[0], last[1], ticket.prompt_tokens, ticket.completion_tokens), True
    except UpstreamError as e:
        ticket.cause = "upstream_broken_midstream"
        yield f"502: runtime broke the stream: {e}"
    except asyncio.CancelledError:
        ticket.cancelled, ticket.cause = True, "client_disconnected"
        raise
    finally:
        w.resp.close()


async def start_grpc(svc: RouterService, host: str, port: int, reuse_port: bool = False) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(svc), server)
    address = join_host_port(host, port)
    change = "--grpc-port or listen.grpc_port (INFERMESH_ROUTER__LISTEN__GRPC_PORT)"
    reason = probe_reason(host, port, reuse_port)
    if reason is not None:
        raise BindError(address, reason, change)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpc raises it for a port it cannot bind and says no more
        bound = 0
    if bound == 0:
        raise BindError(address, probe_reason(host, port, reuse_port) or "could not bind", change)
    await server.start()
    return server
