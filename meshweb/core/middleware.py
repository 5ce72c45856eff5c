"""Correlation ids and access logs: the id is taken from `traceparent` / `X-Request-ID` or created, echoed back
in `X-Request-ID`, and carried by every log line written while the request runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from meshweb.core.context import correlation_id, correlation_id_from_headers

access_log = logging.getLogger("meshweb.access")


def _log(request: HttpRequest, response: HttpResponseBase, started: float) -> None:
    access_log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )


class CorrelationIdMiddleware:
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
        started = time.perf_counter()
        token = correlation_id.set(self._cid(request))
        try:
            response = self.get_response(request)
            # Static files come back as streaming responses (WhiteNoise), hence the base class.
            assert isinstance(response, HttpResponseBase)
            response["X-Request-ID"] = correlation_id.get()
            _log(request, response, started)
        finally:
            correlation_id.reset(token)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        token = correlation_id.set(self._cid(request))
        try:
            response = await self.get_response(request)  # type: ignore[misc]
            response["X-Request-ID"] = correlation_id.get()
            _log(request, response, started)
        finally:
            correlation_id.reset(token)
        return response

    @staticmethod
    def _cid(request: HttpRequest) -> str:
        return correlation_id_from_headers(request.headers.get("traceparent"), request.headers.get("X-Request-ID"))
