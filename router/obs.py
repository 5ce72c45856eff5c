"""Tracing (OpenTelemetry, W3C traceparent in and out) and JSON logs with a correlation id."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import random
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from router.config import TracingConfig

PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer = trace.NoOpTracer()


class PropagatingTracer(trace.Tracer):
    """Spans that are not recorded but carry fresh W3C ids: used when no exporter is configured.

    The SDK would build, time and drop a full span per request for nothing; this keeps what matters without an
    exporter (the caller's trace id, a new span id of the router, `traceparent` to the runtime) at a fraction of the
    cost.
    """

    def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            trace_id, flags = parent.trace_id, parent.trace_flags
        else:
            trace_id, flags = random.getrandbits(128) or 1, trace.TraceFlags(trace.TraceFlags.SAMPLED)
        ctx = trace.SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=False, trace_flags=flags)
        return trace.NonRecordingSpan(ctx)

    def start_as_current_span(  # type: ignore[override]  # same call shape; a lighter context manager
        self, name: str, context: Any = None, *args: Any, **kwargs: Any
    ) -> _CurrentSpan:
        return _CurrentSpan(self.start_span(name, context))


class _CurrentSpan:
    """The span as the current one while the block runs; nothing to end or record (a generator and `use_span`'s
    exception bookkeeping cost more than the rest of the propagation)."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.token: object = None

    def __enter__(self) -> trace.Span:
        self.token = context_api.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc: object) -> None:
        context_api.detach(self.token)  # type: ignore[arg-type]


def setup_tracing(cfg: TracingConfig) -> None:
    global _tracer
    if not cfg.enabled:
        _tracer = trace.NoOpTracer()
        return
    if cfg.exporter == "none":
        _tracer = PropagatingTracer()
        return
    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}))
    if cfg.exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif cfg.exporter == "otlp":
        from agents.tracing import otlp_provider

        provider = otlp_provider(cfg.service_name, cfg.endpoint, protocol=cfg.protocol, sample_ratio=cfg.sample_ratio)
        atexit.register(provider.shutdown)  # flush the last batch on a clean stop
    _tracer = provider.get_tracer("infermesh.router")


def tracer() -> trace.Tracer:
    return _tracer


def agent_call_interceptors() -> list[Any]:
    """gRPC client interceptors for the router's calls to its agent: a CLIENT span per unary or client-streaming
    call, its context sent to the agent (whose server continues the trace). None unless spans are exported."""
    if not isinstance(_tracer, trace.NoOpTracer | PropagatingTracer):
        from agents.tracing import ClientTracing

        return [ClientTracing(_tracer)]
    return []


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


_access_stream: Any = None


def setup_logging(level: str) -> None:
    global _access_stream
    _access_stream = sys.stderr if logging.getLevelName(level) <= logging.INFO else None
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
    """One JSON line per request, in the JsonFormatter's shape, written without the logging machinery (hot path)."""
    stream = _access_stream
    if stream is None:
        if ACCESS.isEnabledFor(logging.INFO):
            ACCESS.info("access", extra={"fields": fields})
        return
    line = {"ts": round(time.time(), 6), "level": "INFO", "logger": ACCESS.name, "msg": "access", **fields}
    text = _ACCESS_JSON.encode(line)
    if not _pending:
        try:
            asyncio.get_running_loop().call_soon(flush_access_log)
        except RuntimeError:  # no event loop: write at once
            stream.write(text + "\n")
            return
    _pending.append(text)


_pending: list[str] = []
# json.dumps with options builds an encoder per call; the access log keeps one (the same text)
_ACCESS_JSON = json.JSONEncoder(separators=(",", ":"), default=str)


def flush_access_log() -> None:
    """Lines of the requests that finished in one event-loop turn, in one write (one syscall, not one each)."""
    stream = _access_stream
    if _pending and stream is not None:
        stream.write("\n".join(_pending) + "\n")
        stream.flush()
    _pending.clear()
