"""The proxied request's shortcuts give what the general code gives: the usage of an answer read from its usage
object alone, and the traceparent formatted without the propagator."""

from __future__ import annotations

import json

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from router.app import _read_usage, upstream_headers_from
from router.obs import PropagatingTracer
from router.service import Ticket


def _ticket() -> Ticket:
    return Ticket(
        api="chat", model="m", tenant="t", priority="standard", corr_id="c", policy=None,  # type: ignore[arg-type]
        lease=None, est_tokens=0.0, key_lease=None, ranked=[], strategy="s", t0=0.0,
    )  # fmt: skip


def _usage(body: bytes, status: int = 200) -> tuple[int | None, int | None]:
    t = _ticket()
    _read_usage(t, body, status)
    return t.prompt_tokens, t.completion_tokens


def test_usage_is_read_from_the_usage_object_wherever_the_answer_puts_it() -> None:
    answer = {"id": "x", "choices": [{"text": 'he said "usage": {"prompt_tokens": 99}'}], "usage": None}
    answer["usage"] = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert _usage(json.dumps(answer).encode()) == (7, 3)
    # usage first, text after it that quotes a usage object: still the answer's own figures
    first = {"usage": {"input_tokens": 5, "output_tokens": 2}, "content": [{"text": '"usage": {"input_tokens": 1}'}]}
    assert _usage(json.dumps(first).encode()) == (5, 2)
    # nested (Responses' response.usage) and Anthropic naming
    nested = {"type": "response", "response": {"usage": {"input_tokens": 4, "output_tokens": 6}}}
    assert _usage(json.dumps(nested).encode()) == (4, 6)


def test_no_usage_from_errors_or_unreadable_answers() -> None:
    body = json.dumps({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
    assert _usage(body, 500) == (None, None)
    assert _usage(b'{"usage": {"prompt_tokens": 1, "completion_') == (None, None)
    assert _usage(b"") == (None, None)
    assert _usage(b'{"choices": []}') == (None, None)


def test_traceparent_is_the_propagators() -> None:
    parent = TraceContextTextMapPropagator().extract(
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "vendor=x"}
    )
    # the router's own span (a new span id) and, with tracing off, the caller's span passed on with its tracestate
    for tracer, state in ((PropagatingTracer(), None), (trace.NoOpTracer(), "vendor=x")):
        with tracer.start_as_current_span("s", context=parent):
            ours = upstream_headers_from("corr")
            theirs: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(theirs)
        assert ours["traceparent"] == theirs["traceparent"]
        assert ours["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
        assert ours.get("tracestate") == theirs.get("tracestate") == state
    # no span: no traceparent at all
    with trace.use_span(trace.INVALID_SPAN):
        assert "traceparent" not in upstream_headers_from("corr")


def test_a_long_chat_hashes_as_its_tokens_do_whatever_its_history() -> None:
    from agents.emulator import tokenizer as tok
    from router.config import CacheConfig
    from router.prefix import _chat_ids, request_prefix

    cfg = CacheConfig(max_prompt_tokens=256, block_size=16)
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 40} for i in range(30)]
    for n in (3, 12, 30):  # within the limit, cut in the middle, cut long before the last message
        chat = turns[:n]
        expected = tok.block_hashes(_chat_ids(chat, 256), 16)
        for _ in range(2):  # computed, then from the remembered history
            got = request_prefix("chat", {"messages": chat}, {}, cfg)
            assert got.hashes == expected
        # the same history with another ending: the blocks the new part reaches are its own
        other = [*chat[:-1], {"role": "user", "content": "something else entirely " * 30}]
        assert request_prefix("chat", {"messages": other}, {}, cfg).hashes == tok.block_hashes(
            _chat_ids(other, 256), 16
        )


def test_message_characters_as_before() -> None:
    from router.openai_api import _chars, validate

    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None, "text": "legacy"},
        {"role": "user", "content": "ok"},
    ]
    assert validate("chat", {"model": "m", "messages": messages}).prompt_chars == _chars(messages) == 21
