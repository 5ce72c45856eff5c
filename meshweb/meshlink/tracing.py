"""Trace context of portal writes: a SERVER span per REST request under the caller's `traceparent`, an
`outbox.publish` span per write that agents must know, and the write's `traceparent` kept on its outbox entries so
that each agent's apply and Raft's commit join the same trace.

Export follows OpenTelemetry's environment (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and the rest, see
`agents.tracing.setup_from_env`). With it unset nothing is exported, yet a caller's `traceparent` still travels with
the write to the agents (the portal's hop is then missing from the trace, not the agents')."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from agents import tracing

_TRACER = tracing.tracer("infermesh.portal")
_ROUTE_PARAM = re.compile(r"\(\?P<(\w+)>[^)]*\)")  # a regex route's named group, shown as <name>


@contextlib.contextmanager
def request_span(request: HttpRequest) -> Iterator[trace.Span | None]:
    parent = tracing.context_of(request.headers.get("traceparent", "").strip().lower())
    if tracing.configured():
        attributes = {"http.request.method": request.method or "", "url.path": request.path}
        with _TRACER.start_as_current_span(
            f"{request.method} {request.path}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            yield span
        return
    if parent is None:
        yield None
        return
    token = context_api.attach(parent)  # not exported here, but carried on to the agents
    try:
        yield None
    finally:
        context_api.detach(token)


def _finish(span: trace.Span | None, request: HttpRequest, response: HttpResponseBase) -> None:
    if span is None or not span.is_recording():
        return
    match = getattr(request, "resolver_match", None)
    route = _ROUTE_PARAM.sub(r"<\1>", getattr(match, "route", "") or "").replace("^", "").replace("$", "")
    if route:  # the route's pattern names the span (a path with ids would make every span name unique)
        span.update_name(f"{request.method} /{route}")
        span.set_attribute("http.route", f"/{route}")
    span.set_attribute("http.response.status_code", response.status_code)
    if response.status_code >= 500:
        span.set_status(trace.StatusCode.ERROR)


class TracingMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        with request_span(request) as span:
            response = self.get_response(request)
            assert isinstance(response, HttpResponseBase)
            _finish(span, request, response)
        return response  # type: ignore[return-value]

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        with request_span(request) as span:
            response = await self.get_response(request)  # type: ignore[misc]
            _finish(span, request, response)
        return response  # type: ignore[no-any-return]


@contextlib.contextmanager
def publish_span(action: str, kinds: list[str]) -> Iterator[str]:
    """Within a traced request: an `outbox.publish` span; yields the `traceparent` its entries carry ("" outside a
    trace: writes of Celery tasks and commands start none)."""
    if not trace.get_current_span().get_span_context().is_valid:
        yield ""
        return
    attributes = {"outbox.action": action, "outbox.kinds": sorted(set(kinds))}
    with _TRACER.start_as_current_span("outbox.publish", kind=SpanKind.PRODUCER, attributes=attributes):
        yield tracing.current_traceparent()
