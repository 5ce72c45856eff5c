"""What every test package shares: a free loopback port (defined once, in agents/binding.py, which the demo uses
too)."""

from __future__ import annotations

from agents.binding import free_port

__all__ = ["free_port"]
