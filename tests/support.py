"""What every test package shares: a free loopback port, defined once."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (gossip's tests, which need the UDP twin free too, keep their own)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
