"""ASGI entry point: Django HTTP plus Channels WebSocket routes."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshweb.settings")

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

application = ProtocolTypeRouter({"http": django_asgi_app})
