"""JSON logs with a correlation id (W3C traceparent when the caller sent one), and a rate limiter so that a flood
of bad input produces one line per kind of problem, not one per delta."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable

correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node_id,
            "msg": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid:
            doc["correlation_id"] = cid
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str, json_format: bool, node_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RateLimitedLog:
    """Logs the first occurrence of each key, then at most once per `interval_s` with the count suppressed."""

    def __init__(
        self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, msg: str, **fields: object) -> None:
        now = self.clock()
        last, suppressed = self._last.get(key, (float("-inf"), 0))
        if now - last < self.interval_s:
            self._last[key] = (last, suppressed + 1)
            return
        if suppressed:
            fields["suppressed"] = suppressed
        self._last[key] = (now, 0)
        self.logger.warning(msg, extra={"fields": fields})
