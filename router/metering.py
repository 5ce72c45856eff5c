"""Sends the router's usage to the portal: a batch (unique id) every `usage.flush_s`, kept and resent in order while
the portal cannot be reached, and a last one when the router stops. The portal applies each batch id once, so a
resend after a lost answer counts nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque

import aiohttp

from agents.proto.usage import REPORT_PATH, UsageBatch
from router.config import UsageConfig
from router.core.metering import Meter
from router.metrics import USAGE_BATCHES
from router.obs import log_event


class UsageReporter:
    def __init__(self, cfg: UsageConfig, router: str = "") -> None:
        self.cfg = cfg
        self.meter = Meter(router or socket.gethostname())
        self._pending: deque[UsageBatch] = deque()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.portal_url)

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self.enabled:
            await self.flush()  # what was counted since the last batch
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.flush_s)
            await self.flush()

    async def flush(self) -> None:
        batch = self.meter.drain()
        if batch is not None:
            self._pending.append(batch)
            while len(self._pending) > self.cfg.max_pending:
                lost = self._pending.popleft()
                USAGE_BATCHES.labels("dropped").inc()
                log_event("usage batch dropped: too many unsent", logging.WARNING, batch=lost.batch)
        while self._pending:
            if not await self._send(self._pending[0]):
                return
            self._pending.popleft()

    async def _send(self, batch: UsageBatch) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        url = str(self.cfg.portal_url).rstrip("/") + REPORT_PATH
        try:
            async with self._session.post(
                url,
                data=batch.model_dump_json(),
                headers={"Authorization": f"Bearer {self.cfg.token()}", "Content-Type": "application/json"},
            ) as resp:
                body = await resp.text()
                if resp.status in (200, 201):
                    USAGE_BATCHES.labels("sent").inc()
                    if self._failing:
                        self._failing = False
                        log_event("usage reports reach the portal again", pending=len(self._pending))
                    return True
                if 400 <= resp.status < 500 and resp.status not in (401, 403, 408, 429):
                    # The portal refuses this batch for good (malformed): resending cannot help.
                    USAGE_BATCHES.labels("refused").inc()
                    log_event("usage batch refused by the portal", logging.ERROR, status=resp.status, body=body[:300])
                    return True
                reason = f"HTTP {resp.status}: {body[:200]}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            reason = repr(e)
        USAGE_BATCHES.labels("failed").inc()
        if not self._failing:
            self._failing = True
            log_event("usage reports cannot reach the portal; keeping them", logging.WARNING, reason=reason)
        return False
