"""Token usage read from a streamed answer: only the SSE events that carry a `usage` object are parsed.

Covers OpenAI chat/completions (`stream_options.include_usage`), the Responses API (`response.completed` carries
`response.usage`) and Anthropic messages (`message_start` and `message_delta`). Sans-IO: feed chunks as they pass.
"""

from __future__ import annotations

import json
from typing import Any

_MAX_LINE = 4 << 20  # an event line longer than this is not kept for parsing


def counts(usage: Any) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens of a usage object in OpenAI or Anthropic/Responses naming."""
    if not isinstance(usage, dict):
        return None, None
    p = usage.get("prompt_tokens", usage.get("input_tokens"))
    c = usage.get("completion_tokens", usage.get("output_tokens"))
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    return (p if ok(p) else None), (c if ok(c) else None)


def usage_of(obj: Any) -> Any:
    if not isinstance(obj, dict):
        return None
    u = obj.get("usage")
    if isinstance(u, dict):
        return u
    for k in ("response", "message"):
        inner = obj.get(k)
        if isinstance(inner, dict) and isinstance(inner.get("usage"), dict):
            return inner["usage"]
    return None


class UsageScan:
    __slots__ = ("completion", "prompt", "tail")

    def __init__(self) -> None:
        self.tail = b""
        self.prompt: int | None = None
        self.completion: int | None = None

    def feed(self, chunk: bytes) -> None:
        edge = self.tail[-8:] + chunk[:8]
        if b"usage" not in chunk and b"usage" not in self.tail and b"usage" not in edge:
            i = chunk.rfind(b"\n")
            self.tail = chunk[i + 1 :] if i >= 0 else (self.tail + chunk)[-_MAX_LINE:]
            return
        data = self.tail + chunk
        i = data.rfind(b"\n")
        if i < 0:
            self.tail = data[-_MAX_LINE:]
            return
        self.tail = data[i + 1 :]
        for line in data[: i + 1].split(b"\n"):
            if line.startswith(b"data:") and b'"usage"' in line:
                try:
                    obj = json.loads(line[5:])
                except ValueError:
                    continue
                p, c = counts(usage_of(obj))
                # Anthropic sends output_tokens twice (message_start, then message_delta's running total).
                if p is not None:
                    self.prompt = max(p, self.prompt or 0)
                if c is not None:
                    self.completion = max(c, self.completion or 0)
