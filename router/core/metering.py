"""Usage counted per (UTC minute, tenant, key, model), drained into batches with unique ids; no I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from agents.proto.usage import BOUNDS_S, SpillRow, UsageBatch, UsageRow, bucket_of

_N = len(BOUNDS_S) + 1


@dataclass(slots=True)
class _Cell:
    requests: int = 0
    errors: int = 0
    throttled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft: list[int] = field(default_factory=lambda: [0] * _N)
    latency: list[int] = field(default_factory=lambda: [0] * _N)


class Meter:
    def __init__(self, router: str = "") -> None:
        self.router = router
        self._cells: dict[tuple[int, str, str, str], _Cell] = {}
        self._spills: dict[tuple[int, str, str, str], int] = {}  # (minute, from cell, to cell, reason) -> requests
        self.recorded = 0  # requests recorded since start: tells a spool whether anything changed

    def record(
        self,
        *,
        wall: float,
        tenant: str,
        key: str,
        model: str,
        status: int,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        ttft_s: float | None = None,
        latency_s: float | None = None,
    ) -> None:
        k = (int(wall // 60), tenant, key, model)
        c = self._cells.get(k)
        if c is None:
            c = self._cells[k] = _Cell()
        c.requests += 1
        self.recorded += 1
        if status == 429:
            c.throttled += 1
        elif status >= 400:
            c.errors += 1
        c.prompt_tokens += prompt_tokens
        c.completion_tokens += completion_tokens
        if ttft_s is not None:
            c.ttft[bucket_of(ttft_s)] += 1
        if latency_s is not None:
            c.latency[bucket_of(latency_s)] += 1

    def spill(self, *, wall: float, from_cell: str, to_cell: str, reason: str) -> None:
        """One request sent to another cell (the portal shows the spill-over between cells)."""
        k = (int(wall // 60), from_cell, to_cell, reason)
        self._spills[k] = self._spills.get(k, 0) + 1
        self.recorded += 1

    def drain(self, batch_id: str | None = None) -> UsageBatch | None:
        """Everything counted since the last drain, as one batch with `batch_id` or a fresh id (None when nothing
        was)."""
        if not self._cells and not self._spills:
            return None
        cells, self._cells = self._cells, {}
        spills, self._spills = self._spills, {}
        return self._batch(cells, batch_id or uuid.uuid4().hex, spills)

    def peek(self, batch_id: str) -> UsageBatch | None:
        """What the next drain would return under `batch_id`, leaving the counts in place."""
        return self._batch(self._cells, batch_id, self._spills) if self._cells or self._spills else None

    def _batch(
        self,
        cells: dict[tuple[int, str, str, str], _Cell],
        batch_id: str,
        spills: dict[tuple[int, str, str, str], int],
    ) -> UsageBatch:
        rows = [
            UsageRow(
                minute=minute,
                tenant=tenant,
                key=key,
                model=model,
                requests=c.requests,
                errors=c.errors,
                throttled=c.throttled,
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
                ttft=list(c.ttft),
                latency=list(c.latency),
            )
            for (minute, tenant, key, model), c in cells.items()
        ]
        spill_rows = [
            SpillRow(minute=minute, from_cell=src, to_cell=dst, reason=reason, requests=n)
            for (minute, src, dst, reason), n in spills.items()
        ]
        return UsageBatch(batch=batch_id, router=self.router, rows=rows, spills=spill_rows)
