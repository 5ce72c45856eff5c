"""The loop of a router's watchers that poll their agent (gossip view, cell view): poll every `refresh_s`, keep the
last view when a poll fails, and never stop on a bad answer."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging

import grpc

from router.obs import log_event


class AgentPoller(abc.ABC):
    name = "agent-poller"
    what = "view"  # named in the warning when a poll fails

    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @abc.abstractmethod
    async def poll_once(self) -> None:
        """One poll of the watcher's own RPC, folded into its view."""

    @abc.abstractmethod
    def rpc_failed(self, exc: grpc.aio.AioRpcError) -> None:
        """An RPC error worth saying (once); an unreachable agent is the agent link's business, and the last view
        stays in force either way."""

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.rpc_failed(exc)
            except Exception as exc:  # a bad answer must not stop the watcher
                log_event(f"{self.what} not refreshed", logging.WARNING, error=repr(exc))
            await asyncio.sleep(self.refresh_s)
