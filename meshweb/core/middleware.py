"""Correlation ids: taken from `traceparent` / `X-Request-ID` or created, echoed back, visible to logs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from meshweb.core.context import correlation_id, correlation_id_from_headers


class CorrelationIdMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        cid = correlation_id_from_headers(request.headers.get("traceparent"), request.headers.get("X-Request-ID"))
        if iscoroutinefunction(self):
            return self._acall(request, cid)
        token = correlation_id.set(cid)
        try:
            response = self.get_response(request)
            assert isinstance(response, HttpResponse)
        finally:
            correlation_id.reset(token)
        response["X-Request-ID"] = cid
        return response

    async def _acall(self, request: HttpRequest, cid: str) -> HttpResponse:
        token = correlation_id.set(cid)
        try:
            response = await self.get_response(request)  # type: ignore[misc]
        finally:
            correlation_id.reset(token)
        response["X-Request-ID"] = cid
        return response
