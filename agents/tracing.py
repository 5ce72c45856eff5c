"""OTLP trace export shared by the router, the agent-side processes and the runtime emulator.

`otlp_provider` builds a TracerProvider that batches spans to an OTLP collector over gRPC (default :4317) or
HTTP/protobuf (default :4318/v1/traces), sampling new traces at `sample_ratio` and following the caller's decision
for traces that arrive with a `traceparent` (ParentBased). The exporter modules are imported only here, so a process
with tracing off never loads them."""

from __future__ import annotations

import atexit
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Protocol = Literal["grpc", "http/protobuf"]


def otlp_provider(
    service_name: str,
    endpoint: str,
    *,
    protocol: Protocol = "grpc",
    sample_ratio: float = 1.0,
    insecure: bool = True,
    attributes: Mapping[str, str] | None = None,
) -> TracerProvider:
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"sample_ratio must be within 0..1, got {sample_ratio}")
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, **(attributes or {})}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        provider.add_span_processor(BatchSpanProcessor(GrpcExporter(endpoint=endpoint, insecure=insecure)))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        provider.add_span_processor(BatchSpanProcessor(HttpExporter(endpoint=endpoint)))
    return provider


# -- processes configured by OpenTelemetry's own environment variables (the agent, the portal, trainer workers) ----
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_PROPAGATOR = TraceContextTextMapPropagator()
_configured = False


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str:
    return next((env[n].strip() for n in names if env.get(n, "").strip()), "")


def setup_from_env(
    service_name: str, *, instance: str = "", env: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """Export this process's spans when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is
    set: protocol from `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` (`grpc`, the default, or `http/protobuf`), sampling of
    new traces from `OTEL_TRACES_SAMPLER_ARG` (0..1, default 1). Unset: nothing is loaded and every span is the API's
    no-op. The provider becomes the process's global one; its last batch is flushed at exit."""
    global _configured
    env = os.environ if env is None else env
    endpoint = _first(env, ENDPOINT_VARS)
    if not endpoint:
        return None
    protocol = _first(env, PROTOCOL_VARS) or "grpc"
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"{PROTOCOL_VARS[0]} must be grpc or http/protobuf, got {protocol!r}")
    if protocol == "http/protobuf" and not env.get(ENDPOINT_VARS[0], "").strip():
        endpoint = endpoint.rstrip("/") + "/v1/traces"  # the generic variable names the collector's base URL
    elif protocol == "grpc":
        endpoint = endpoint.removeprefix("http://")  # host:port (plaintext) as the gRPC exporter takes it
    raw_ratio = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1"
    try:
        ratio = float(raw_ratio)
    except ValueError:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG must be a number within 0..1, got {raw_ratio!r}") from None
    attributes = {"service.instance.id": instance} if instance else None
    provider = otlp_provider(
        service_name,
        endpoint,
        protocol="grpc" if protocol == "grpc" else "http/protobuf",
        sample_ratio=ratio,
        attributes=attributes,
    )
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)
    _configured = True
    return provider


def configured() -> bool:
    """Whether `setup_from_env` installed an exporter in this process (interceptors are added only then)."""
    return _configured


def tracer(name: str) -> trace.Tracer:
    """The global tracer: the API's no-op until `setup_from_env` installs a provider (cheap when off)."""
    return trace.get_tracer(name)


def context_of(traceparent: str) -> Context | None:
    """The OpenTelemetry context of a W3C `traceparent` (None when empty or not valid)."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def current_traceparent() -> str:
    """The current span as a W3C `traceparent`, "" when there is none."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def grpc_metadata() -> tuple[tuple[str, str], ...]:
    """gRPC call metadata that carries the current span to the callee (empty when there is no span)."""
    tp = current_traceparent()
    return (("traceparent", tp),) if tp else ()


class ServerTracing(grpc.aio.ServerInterceptor):
    """A SERVER span for each unary or client-streaming call that arrives with a `traceparent` (calls of a trace a
    caller samples; the rest cost one metadata look-up). Handlers see the span as the current one, so their own
    spans (Raft's commit, for one) join the caller's trace."""

    def __init__(self, service_name: str = "infermesh.agent") -> None:
        self.tracer = tracer(service_name)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or (handler.unary_unary is None and handler.stream_unary is None):
            return handler
        tp = next((str(v) for k, v in details.invocation_metadata or () if k == "traceparent"), "")  # type: ignore[attr-defined]
        parent = context_of(tp)
        if parent is None:
            return handler
        name = str(details.method).lstrip("/")  # type: ignore[attr-defined]
        service, _, method = name.rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        traced = self.tracer

        def wrap(inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with traced.start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes):
                    return await inner(request, context)

            return call

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary), handler.request_deserializer, handler.response_serializer
        )


def _method(d: grpc.aio.ClientCallDetails) -> str:
    m = d.method
    return (m.decode() if isinstance(m, bytes) else str(m)).lstrip("/")


class ClientTracing(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    """A CLIENT span around each unary or client-streaming call, sent along as `traceparent` so that the callee's
    `ServerTracing` continues the trace. Streams of responses (watches) are long-lived and left alone."""

    def __init__(self, tracer_: trace.Tracer) -> None:
        self.tracer = tracer_

    async def _call(self, continuation: Any, d: grpc.aio.ClientCallDetails, request: Any) -> Any:
        name = _method(d)
        service, _, method = name.rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes):
            metadata = grpc.aio.Metadata(*(tuple(d.metadata or ())), *grpc_metadata())
            details = grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)
            call = await continuation(details, request)
            await call  # the span lasts until the response (or the error) came back
            return call

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._call(continuation, client_call_details, request)

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self._call(continuation, client_call_details, request_iterator)
