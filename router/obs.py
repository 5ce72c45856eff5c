"""Tracing (OpenTelemetry, W3C traceparent in and out) and JSON logs with a correlation id."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from router.config import TracingConfig

PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer = trace.NoOpTracer()


def setup_tracing(cfg: TracingConfig) -> None:
    global _tracer
    if not cfg.enabled:
        _tracer = trace.NoOpTracer()
        return
    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}))
    if cfg.exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    _tracer = provider.get_tracer("infermesh.router")


def tracer() -> trace.Tracer:
    return _tracer


def extract(headers: Mapping[str, str]) -> Any:
    return PROPAGATOR.extract(carrier=headers)


def inject(headers: MutableMapping[str, str]) -> None:
    """Write the current span as `traceparent` (and `tracestate`) into the upstream request headers."""
    PROPAGATOR.inject(carrier=headers)


def trace_id_hex(span: trace.Span) -> str:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access logger would duplicate ours in a different format.
    logging.getLogger("aiohttp.access").disabled = True


ACCESS = logging.getLogger("infermesh.router.access")
LOG = logging.getLogger("infermesh.router")


def log_event(msg: str, level: int = logging.INFO, **fields: Any) -> None:
    LOG.log(level, msg, extra={"fields": fields})


def access_log(**fields: Any) -> None:
    if ACCESS.isEnabledFor(logging.INFO):
        fields.setdefault("ts_wall", time.time())
        ACCESS.info("access", extra={"fields": fields})
