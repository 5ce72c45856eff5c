"""Database sessions that ignore malformed session cookies instead of passing them to the database."""

from __future__ import annotations

import re

from django.contrib.sessions.backends.db import SessionStore as DbSessionStore

# Django issues keys of 32 lower-case letters and digits; anything else cannot be one of ours.
_KEY = re.compile(r"^[a-z0-9]{8,40}$")


class SessionStore(DbSessionStore):
    def _validate_session_key(self, key: str | None) -> bool:
        return bool(key) and bool(_KEY.match(key or ""))
