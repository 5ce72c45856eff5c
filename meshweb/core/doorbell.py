"""The live dashboard's one doorbell: after a write commits, ring the Channels group "dashboard".

Every app rings it the same way (`ring(kind, **fields)`), deferred to the commit and never blocking it. An "audit"
message only says that something changed; dashboard sockets read what changed from the audit log (restricted to the
viewer); other kinds carry their data. A lost doorbell (Redis down, a process with an in-memory layer) only delays an
update until the socket's next poll. With Redis, messages go out from one background thread so that a slow or absent
Redis never holds up the write that rang, nor the commit hooks that follow it.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

from meshweb.core.layers import nobody_listens

GROUP = "dashboard"
MESSAGE_TYPE = "dashboard.event"
_QUEUE_MAX = 1000

log = logging.getLogger(__name__)


class _Sender:
    """One daemon thread with its own event loop, so the Redis layer keeps one connection pool."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.pending = 0  # messages handed to put() and not yet sent (or dropped)
        self._count_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-doorbell", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._queue = asyncio.Queue(maxsize=_QUEUE_MAX)
        self._ready.set()
        self._loop.run_until_complete(self._drain())

    async def _drain(self) -> None:
        assert self._queue is not None
        layer = get_channel_layer()
        while True:
            message = await self._queue.get()
            try:
                await asyncio.wait_for(layer.group_send(GROUP, message), timeout=5)
            except Exception as exc:  # a doorbell is best effort: the sockets' poll catches up
                log.warning("dashboard doorbell not delivered: %s", exc)
            finally:
                self._count(-1)

    def put(self, message: dict[str, Any]) -> None:
        self._count(1)
        self._loop.call_soon_threadsafe(self._offer, message)

    def _offer(self, message: dict[str, Any]) -> None:
        assert self._queue is not None
        if self._queue.full():
            self._count(-1)
            return  # Redis is away and messages pile up: drop, the poll delivers the changes later
        self._queue.put_nowait(message)

    def _count(self, delta: int) -> None:
        with self._count_lock:
            self.pending += delta

    def flush(self, timeout_s: float = 2.0) -> None:
        """Give queued doorbells a moment to go out before a short-lived process (a CLI command) exits."""
        deadline = time.monotonic() + timeout_s
        while self.pending > 0 and time.monotonic() < deadline:
            time.sleep(0.01)


_sender: _Sender | None = None
_sender_lock = threading.Lock()


def _send_now(message: dict[str, Any]) -> None:
    global _sender
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, InMemoryChannelLayer):
        # Only sockets of this very process can hear it; async_to_sync runs it on the server's own loop.
        if nobody_listens(layer, GROUP):
            return
        try:
            async_to_sync(layer.group_send)(GROUP, message)
        except Exception as exc:
            log.warning("dashboard doorbell not delivered: %s", exc)
        return
    with _sender_lock:
        # A forked child (Celery's prefork pool) inherits the object but not its thread.
        if _sender is None or _sender.pid != os.getpid():
            _sender = _Sender()
            atexit.register(_sender.flush)
    _sender.put(message)


def ring(kind: str, **fields: Any) -> None:
    """Ring the dashboard group with {"kind": kind, **fields} once the current transaction commits (at once outside
    a transaction). Sockets forward `tenant_id` to the viewers of that tenant only (None: platform-wide)."""
    message = {"type": MESSAGE_TYPE, "payload": {"kind": kind, **fields}}
    transaction.on_commit(lambda: _send_now(message), robust=True)
