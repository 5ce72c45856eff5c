"""Channel-layer helpers shared by the portal's doorbells."""

from __future__ import annotations

from typing import Any

from channels.layers import InMemoryChannelLayer


def nobody_listens(layer: Any, group: str) -> bool:
    """An in-memory layer reaches only sockets of this process: with none in the group, a send would only cost the
    request a hop to the server's event loop."""
    return isinstance(layer, InMemoryChannelLayer) and not layer.groups.get(group)
