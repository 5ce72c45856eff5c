"""The agent's event bus behind `SubscribeEvents`: a numbered ring buffer with per-subscriber queues."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from agents.proto.infermesh.v1 import control_pb2

INFO = control_pb2.SEVERITY_INFO
WARNING = control_pb2.SEVERITY_WARNING
ERROR = control_pb2.SEVERITY_ERROR


class Subscription:
    """One subscriber's queue; a subscriber too slow to keep up loses the oldest events, never blocks the bus."""

    def __init__(self, prefixes: Iterable[str], maxsize: int) -> None:
        self.prefixes = tuple(prefixes)
        self.queue: asyncio.Queue[control_pb2.Event | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def wants(self, kind: str) -> bool:
        return not self.prefixes or kind.startswith(self.prefixes)

    def offer(self, event: control_pb2.Event | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)


class EventBus:
    def __init__(self, node_id: str, *, history: int = 1000, clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.clock = clock
        self._seq = itertools.count(1)
        self.history: deque[control_pb2.Event] = deque(maxlen=history)
        self._subs: list[Subscription] = []

    def emit(
        self,
        kind: str,
        message: str,
        *,
        severity: int = INFO,
        target_id: str = "",
        node: str = "",
        attrs: Mapping[str, str] | None = None,
    ) -> control_pb2.Event:
        event = control_pb2.Event(
            seq=next(self._seq),
            unix_ms=int(self.clock() * 1000),
            kind=kind,
            severity=severity,  # type: ignore[arg-type]
            node=node or self.node_id,
            target_id=target_id,
            message=message,
            attrs=dict(attrs or {}),
        )
        self.history.append(event)
        for sub in self._subs:
            if sub.wants(kind):
                sub.offer(event)
        return event

    def subscribe(
        self, prefixes: Iterable[str] = (), since_seq: int = 0, maxsize: int = 1000, *, replay: bool = True
    ) -> Subscription:
        sub = Subscription(prefixes, maxsize)
        if replay:
            for event in self.history:
                if event.seq > since_seq and sub.wants(event.kind):
                    sub.offer(event)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def close(self) -> None:
        """End every subscription (shutdown): each stream sees None and finishes."""
        for sub in self._subs:
            sub.offer(None)
        self._subs.clear()
