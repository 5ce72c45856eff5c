"""WebSocket routes of the dashboard: browser sockets only, behind the origin check and the session."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import ParseResult

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.urls import path

from meshweb.dashboard.consumers import DashboardConsumer

log = logging.getLogger(__name__)


class LoggedOriginValidator(OriginValidator):  # type: ignore[misc]
    """channels' AllowedHostsOriginValidator that also logs what it refuses (cross-site socket attempts)."""

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        ok = bool(super().valid_origin(parsed_origin))
        if not ok:
            log.warning(
                "dashboard socket refused",
                extra={"reason": "origin", "origin": parsed_origin.geturl() if parsed_origin else None},
            )
        return ok


def allowed_hosts_origin_validator(app: Any) -> LoggedOriginValidator:
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = ["localhost", "127.0.0.1", "[::1]"]
    return LoggedOriginValidator(app, allowed)


websocket_urlpatterns = [
    path("ws/dashboard/", allowed_hosts_origin_validator(AuthMiddlewareStack(DashboardConsumer.as_asgi()))),
]
