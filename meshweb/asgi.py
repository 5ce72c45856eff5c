"""ASGI entry point: Django HTTP plus Channels WebSocket routes."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshweb.settings")

from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from meshweb.dashboard.routing import websocket_urlpatterns as dashboard_websockets  # noqa: E402
from meshweb.meshlink.routing import websocket_urlpatterns as agent_websockets  # noqa: E402

# Agents authenticate with a node credential on their own path (/ws/agent/), apart from the browsers' sockets.
application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": URLRouter([*agent_websockets, *dashboard_websockets])}
)
