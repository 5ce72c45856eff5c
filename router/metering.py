"""Sends the router's usage to the portal: a batch (unique id) every `usage.flush_s`, kept and resent in order while
the portal cannot be reached, and a last one when the router stops. The portal applies each batch id once, so a
resend after a lost answer counts nothing twice.

With `usage.spool_dir` the counts also survive the router's death (kill -9 included): every `spool_s` the counts
since the last batch are written to `open.json` under the id their batch will carry, and each batch is written to a
file of its own (fsync'd) before it is sent and removed once the portal has it. A restarted router sends what its
spool holds, oldest first; a batch the portal had already taken (the router died before removing its file) is
recognised by its id and not counted again. At most `spool_s` of counts are lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from pathlib import Path

import aiohttp
from pydantic import ValidationError

from agents.proto.usage import REPORT_PATH, UsageBatch
from router.config import UsageConfig
from router.core.metering import Meter
from router.metrics import USAGE_BATCHES
from router.obs import log_event

OPEN = "open.json"


class Spool:
    """A directory of usage batches not yet taken by the portal (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"usage.spool_dir {path}: cannot create it ({exc.strerror})") from exc
        if not os.access(path, os.W_OK):
            raise ValueError(f"usage.spool_dir {path}: not writable")

    def _write(self, name: str, batch: UsageBatch, *, sync: bool) -> Path:
        target = self.path / name
        tmp = target.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write(batch.model_dump_json())
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)  # readers see the old file or the new one, never a torn one
        return target

    def checkpoint(self, batch: UsageBatch | None) -> None:
        """The counts since the last batch (None: nothing counted). Not fsync'd: a killed process's writes are
        already in the kernel; only a crash of the host loses the last ones."""
        if batch is None:
            (self.path / OPEN).unlink(missing_ok=True)
        else:
            self._write(OPEN, batch, sync=False)

    def seal(self, batch: UsageBatch) -> Path:
        """A batch about to be sent: its own file (the open counts it holds are dropped with `open.json`)."""
        path = self._write(f"batch-{time.time_ns():020d}-{batch.batch}.json", batch, sync=True)
        (self.path / OPEN).unlink(missing_ok=True)
        return path

    def load(self) -> list[tuple[UsageBatch, Path]]:
        """What a previous run left, oldest first; the open counts are sealed as a batch of their own. A file that
        is not a usage batch is set aside as `*.bad` with an error naming it."""
        found: list[tuple[UsageBatch, Path]] = []
        seen: set[str] = set()
        for path in [*sorted(self.path.glob("batch-*.json")), self.path / OPEN]:
            if not path.exists():
                continue
            try:
                batch = UsageBatch.model_validate_json(path.read_bytes())
            except (ValidationError, ValueError) as exc:
                path.replace(path.with_suffix(".bad"))
                log_event("usage spool file is not a usage batch; set aside", logging.ERROR, file=str(path),
                          error=str(exc)[:300])  # fmt: skip
                continue
            if batch.batch in seen:  # the open counts of a batch sealed just before the router died
                path.unlink(missing_ok=True)
                continue
            seen.add(batch.batch)
            found.append((batch, self.seal(batch) if path.name == OPEN else path))
        return found


class UsageReporter:
    def __init__(self, cfg: UsageConfig, router: str = "") -> None:
        self.cfg = cfg
        self.meter = Meter(router or socket.gethostname())
        self._pending: deque[tuple[UsageBatch, Path | None]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._failing = False
        self.spool = Spool(Path(cfg.spool_dir)) if cfg.spool_dir and self.enabled else None
        self._open_id = uuid.uuid4().hex  # the id the counts since the last batch will be sent under
        self._spooled = 0  # meter.recorded when the open counts were last written
        self._disk = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.portal_url)

    def start(self) -> None:
        if self.enabled:
            if self.spool is not None:
                left = self.spool.load()
                self._pending.extend(left)
                if left:
                    log_event("usage left by the previous run will be sent", batches=len(left),
                              spool=str(self.spool.path))  # fmt: skip
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
        tick = min(self.cfg.spool_s, self.cfg.flush_s) if self.spool is not None else self.cfg.flush_s
        next_flush = time.monotonic() + self.cfg.flush_s
        while True:
            await asyncio.sleep(tick)
            if time.monotonic() >= next_flush:
                next_flush = time.monotonic() + self.cfg.flush_s
                await self.flush()
            else:
                await self.checkpoint()

    async def checkpoint(self) -> None:
        """Write the counts since the last batch to the spool when they changed."""
        if self.spool is None or self.meter.recorded == self._spooled:
            return
        recorded, batch = self.meter.recorded, self.meter.peek(self._open_id)
        async with self._disk:
            await asyncio.to_thread(self.spool.checkpoint, batch)
        self._spooled = recorded

    async def flush(self) -> None:
        batch = self.meter.drain(self._open_id)
        self._open_id = uuid.uuid4().hex
        if batch is not None:
            path = None
            if self.spool is not None:
                async with self._disk:
                    path = await asyncio.to_thread(self.spool.seal, batch)
            self._spooled = self.meter.recorded
            self._pending.append((batch, path))
            while len(self._pending) > self.cfg.max_pending:
                lost, lost_path = self._pending.popleft()
                if lost_path is not None:
                    lost_path.unlink(missing_ok=True)
                USAGE_BATCHES.labels("dropped").inc()
                log_event("usage batch dropped: too many unsent", logging.WARNING, batch=lost.batch)
        while self._pending:
            batch, path = self._pending[0]
            if not await self._send(batch):
                return
            self._pending.popleft()
            if path is not None:
                path.unlink(missing_ok=True)

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
