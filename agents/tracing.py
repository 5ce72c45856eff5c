"""OTLP trace export shared by the router, the agent-side processes and the runtime emulator.

`otlp_provider` builds a TracerProvider that batches spans to an OTLP collector over gRPC (default :4317) or
HTTP/protobuf (default :4318/v1/traces), sampling new traces at `sample_ratio` and following the caller's decision
for traces that arrive with a `traceparent` (ParentBased). The exporter modules are imported only here, so a process
with tracing off never loads them."""

from __future__ import annotations

from typing import Literal

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

Protocol = Literal["grpc", "http/protobuf"]


def otlp_provider(
    service_name: str, endpoint: str, *, protocol: Protocol = "grpc", sample_ratio: float = 1.0, insecure: bool = True
) -> TracerProvider:
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"sample_ratio must be within 0..1, got {sample_ratio}")
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        provider.add_span_processor(BatchSpanProcessor(GrpcExporter(endpoint=endpoint, insecure=insecure)))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        provider.add_span_processor(BatchSpanProcessor(HttpExporter(endpoint=endpoint)))
    return provider
