"""KServe v2 `GRPCInferenceService` on grpc.aio, sharing the HTTP ingress pipeline (auth, quota, routing)."""

from __future__ import annotations

import struct
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from router import kserve
from router.app import infer_v2, upstream_headers_from
from router.obs import extract, trace_id_hex, tracer
from router.proto import grpc_predict_v2_pb2 as pb
from router.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from router.service import Refusal, RouterService, new_corr_id

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


def _raw_bytes(raw: bytes) -> list[bytes]:
    """Decode a BYTES tensor in raw form: each element is a 4-byte little-endian length then the bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise Refusal(400, "invalid_input", "raw BYTES tensor is truncated")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise Refusal(400, "invalid_input", "raw BYTES tensor is truncated")
        out.append(raw[i : i + n])
        i += n
    return out


def to_v2(req: pb.ModelInferRequest) -> kserve.V2Request:
    text: str | None = None
    max_tokens: int | None = None
    for i, t in enumerate(req.inputs):
        if t.name == kserve.TEXT_IN:
            if t.datatype not in ("BYTES", ""):
                raise Refusal(400, "invalid_input", f"{kserve.TEXT_IN} must have datatype BYTES")
            items = list(t.contents.bytes_contents)
            if not items and i < len(req.raw_input_contents):
                items = _raw_bytes(req.raw_input_contents[i])
            if len(items) != 1:
                raise Refusal(400, "invalid_input", f"{kserve.TEXT_IN} must hold exactly one element")
            try:
                text = items[0].decode()
            except UnicodeDecodeError:
                raise Refusal(400, "invalid_input", f"{kserve.TEXT_IN} is not UTF-8") from None
        elif t.name == "max_tokens":
            vals = list(t.contents.int_contents) or list(t.contents.int64_contents)
            if not vals and i < len(req.raw_input_contents) and len(req.raw_input_contents[i]) >= 4:
                vals = [struct.unpack_from("<i", req.raw_input_contents[i])[0]]
            if len(vals) != 1 or vals[0] < 0:
                raise Refusal(400, "invalid_input", "max_tokens must be one non-negative integer")
            max_tokens = int(vals[0])
    if text is None:
        raise Refusal(400, "missing_text_input", f"missing input tensor {kserve.TEXT_IN!r} (BYTES, shape [1])")
    params = {k: _param(v) for k, v in req.parameters.items()}
    if max_tokens is None and isinstance(params.get("max_tokens"), int):
        max_tokens = params["max_tokens"]
    return kserve.V2Request(req.id, text, max_tokens, params)


def _metadata(context: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


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
            inputs=[tm(name=kserve.TEXT_IN, datatype="BYTES", shape=[1])],
            outputs=[tm(name=kserve.TEXT_OUT, datatype="BYTES", shape=[1])],
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
                if r.retry_after:
                    context.set_trailing_metadata((("retry-after", r.retry_after),))
                await context.abort(_CODES.get(r.status, grpc.StatusCode.INTERNAL), r.message)
            try:
                status, out = await infer_v2(svc, ticket, req, b"", upstream_headers_from(corr), request.model_name)
            finally:
                await svc.finish(ticket)
            if status != 200:
                await context.abort(_CODES.get(status, grpc.StatusCode.INTERNAL), str(out.get("error", "")))
            o = out["outputs"][0]
            text = o["data"][0]
            return pb.ModelInferResponse(
                model_name=request.model_name,
                id=out.get("id", corr),
                outputs=[
                    pb.ModelInferResponse.InferOutputTensor(
                        name=kserve.TEXT_OUT,
                        datatype="BYTES",
                        shape=[1],
                        contents=pb.InferTensorContents(bytes_contents=[str(text).encode()]),
                    )
                ],
            )


async def start_grpc(svc: RouterService, host: str, port: int) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(svc), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC on {host}:{port}")
    await server.start()
    return server
