"""The one reconnect loop of the router's streams from its agent, and the store mirror built on it.

Three readers follow the agent: the target view (`WatchTargets`, router/agentlink.py), the portal's access records
(router/access.py) and the portal's models and routing policies (router/portal_routing.py). Each runs one session at
a time through `reconnecting`: a session that ends or breaks is started again after a jittered backoff that doubles
up to a ceiling and drops back to the floor once a session has taken hold (`healthy()`), and the reason of each break
is handed to the reader (which says it once per outage and keeps its last state in force meanwhile).

`StoreMirror` is the store reader's session: a serializable `Store.Get` of its prefixes (with the store's revision),
then one `Store.Watch` from the next revision; after any break it starts over with a fresh `Get`, so a reader that
was cut off during a change rebuilds the current state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc

from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc


def break_reason(exc: BaseException) -> str:
    """What broke a session, for the log: a gRPC status by name, anything else by its repr."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)


async def reconnecting(
    session: Callable[[Callable[[], None]], Awaitable[None]],
    *,
    min_s: float,
    max_s: float,
    on_break: Callable[[str], None],
) -> NoReturn:
    """Run `session(healthy)` forever: after each end or break, `on_break(reason)` and a backoff of `min_s` doubling
    up to `max_s` (with jitter, 0.5x to 1.5x); `healthy()`, called by the session once it has what it came for,
    brings the backoff back to `min_s`. Cancellation stops it."""
    backoff = min_s

    def healthy() -> None:
        nonlocal backoff
        backoff = min_s

    while True:
        try:
            await session(healthy)
            reason = "stream ended"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = break_reason(exc)
        on_break(reason)
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(max_s, backoff * 2)


class StoreMirror:
    """Mirrors `prefixes` of the agent's store: `on_snapshot(items, revision)` after each `Get` (items are the
    (key, value) pairs of every prefix), then `on_event(event)` for each change of the `watch_prefix` ("" for all)."""

    def __init__(
        self,
        channel: Callable[[], grpc.aio.Channel],
        prefixes: Sequence[str],
        *,
        on_snapshot: Callable[[list[tuple[str, str]], int], None],
        on_event: Callable[[Any], None],
        on_break: Callable[[str], None],
        min_s: float,
        max_s: float,
        watch_prefix: str | None = None,
        get_timeout_s: float | None = None,
    ) -> None:
        self._channel = channel
        self.prefixes = tuple(prefixes)
        self.watch_prefix = watch_prefix if watch_prefix is not None else self.prefixes[0]
        self._on_snapshot = on_snapshot
        self._on_event = on_event
        self._on_break = on_break
        self._min = min_s
        self._max = max_s
        self._get_timeout = get_timeout_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(
            reconnecting(self._session, min_s=self._min, max_s=self._max, on_break=self._on_break)
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _session(self, healthy: Callable[[], None]) -> None:
        stub = store_pb2_grpc.StoreStub(self._channel())
        items: list[tuple[str, str]] = []
        revision = 0
        for prefix in self.prefixes:
            got = await stub.Get(
                store_pb2.StoreGetRequest(key=prefix, prefix=True, serializable=True), timeout=self._get_timeout
            )
            items.extend((kv.key, kv.value) for kv in got.kvs)
            revision = max(revision, got.revision)
        self._on_snapshot(items, revision)
        healthy()
        call = stub.Watch(store_pb2.StoreWatchRequest(prefix=self.watch_prefix, start_revision=revision + 1))
        async for ev in call:
            self._on_event(ev)
