"""WebSocket routes of the agent link (kept apart from the browsers' sockets, which check the Origin)."""

from django.urls import path

from meshweb.meshlink.consumers import AgentConsumer

websocket_urlpatterns = [path("ws/agent/", AgentConsumer.as_asgi())]
