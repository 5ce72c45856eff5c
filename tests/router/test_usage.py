"""Usage read from streamed answers: only events carrying `usage` are parsed, wherever the chunks split them."""

from __future__ import annotations

import json

import pytest

from router.usage import UsageScan, counts, usage_of

OPENAI = (
    b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n'
    b"data: [DONE]\n\n"
)
RESPONSES = (
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1","usage":null}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"usage"}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":{"input_tokens":5,'
    b'"output_tokens":4}}}\n\n'
)
ANTHROPIC = (
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"x"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":6}}\n\n'
)


@pytest.mark.parametrize(("stream", "want"), [(OPENAI, (7, 3)), (RESPONSES, (5, 4)), (ANTHROPIC, (9, 6))])
@pytest.mark.parametrize("size", [1, 3, 7, 64, 10_000])
def test_usage_from_any_chunking(stream: bytes, want: tuple[int, int], size: int) -> None:
    scan = UsageScan()
    for i in range(0, len(stream), size):
        scan.feed(stream[i : i + size])
    assert (scan.prompt, scan.completion) == want


def test_no_usage_and_broken_events() -> None:
    scan = UsageScan()
    scan.feed(b'data: {"choices":[]}\n\ndata: {"usage": broken\n\n')
    assert (scan.prompt, scan.completion) == (None, None)
    assert counts({"prompt_tokens": -1, "completion_tokens": True}) == (None, None)
    assert counts(usage_of(json.loads('{"message": {"usage": {"input_tokens": 2}}}'))) == (2, None)
