"""Request-scoped context (correlation id, acting principal) shared by logs, audit entries and services."""

from __future__ import annotations

import contextvars
import re
import uuid

correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def correlation_id_from_headers(traceparent: str | None, request_id: str | None) -> str:
    """The W3C trace id when a valid traceparent came in, else a sane X-Request-ID, else a new id."""
    if traceparent:
        match = _TRACEPARENT.match(traceparent.strip().lower())
        if match and match.group(1) != "0" * 32:
            return match.group(1)
    if request_id and _REQUEST_ID.match(request_id.strip()):
        return request_id.strip()
    return uuid.uuid4().hex
