"""Validation of OpenAI-style request bodies and the error shape the OpenAI clients expect."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]  # the C string scanner
from typing import Any

from router.service import Refusal

# api -> (upstream path, field that must be present, what it must be)
APIS: dict[str, tuple[str, str]] = {
    "chat": ("/v1/chat/completions", "messages"),
    "completions": ("/v1/completions", "prompt"),
    "embeddings": ("/v1/embeddings", "input"),
}


@dataclass(slots=True)
class ParsedRequest:
    obj: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    prompt_chars: int
    partial: bool = False  # `obj` is a `PartialBody`: its messages only as far as routing reads them

    def whole(self, body: bytes) -> dict[str, Any]:
        """The body parsed in full (once), where the router rewrites it or reads beyond its routing fields."""
        if self.partial:
            self.obj, self.partial = parse_json_body(body), False
        return self.obj


def parse_json_body(body: bytes) -> dict[str, Any]:
    if not body:
        raise Refusal(400, "invalid_json", "request body is empty; expected a JSON object")
    try:
        obj = json.loads(body)
    except UnicodeDecodeError:
        raise Refusal(400, "invalid_json", "request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise Refusal(
            400, "invalid_json", f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    if not isinstance(obj, dict):
        raise Refusal(400, "invalid_json", f"request body must be a JSON object, got {type(obj).__name__}")
    return obj


# -- large chat bodies: parsed as far as routing reads them ---------------------------------------------------------
LAZY_MIN_BYTES = 64 << 10  # a chat body this large is parsed only as far as routing reads it
# '[' looked at as the start of an array member after the messages (per KB of them, at least 256) before parsing in
# full: about a quarter of a full parse's time at most
_BRACKETS_PER_KB = 1
_WS = re.compile(r"[ \t\n\r]*")
_BOUNDARY = re.compile(r"\}[ \t\n\r]*,[ \t\n\r]*\{")  # between two objects of an array (or in a string)
# the C scanner: (text, index) -> (value, end); StopIteration on bad input
_SCAN = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class PartialBody(dict[str, Any]):
    """A chat body whose `messages` hold only the first messages, as many as routing reads (the prompt's first
    characters, for the block hashes): the rest of the array, `unparsed` characters of it (JSON syntax included), is
    neither parsed nor checked, and is relayed as it came. Every other top-level member is parsed."""

    __slots__ = ("unparsed",)

    def __init__(self, members: dict[str, Any], unparsed: int) -> None:
        super().__init__(members)
        self.unparsed = unparsed


def parse_chat_body(body: bytes, budget_chars: int) -> dict[str, Any]:
    """A chat request's body: in full below `LAZY_MIN_BYTES`, else (a `PartialBody`) its top-level members and the
    first messages until their content holds `budget_chars` characters, plus one. The members after the messages
    are found from the end of the body; where that is not clear-cut (the body is not a JSON object, the messages are
    not an array, a later member is another `messages`, too many arrays look like members) it is parsed in full,
    which also gives invalid JSON its usual error."""
    if len(body) >= LAZY_MIN_BYTES:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            text = ""
        if text:
            try:
                obj = _partial_object(text, budget_chars)
            except (StopIteration, ValueError, IndexError):
                obj = None
            if obj is not None:
                return obj
    return parse_json_body(body)


def _partial_object(s: str, budget: int) -> dict[str, Any] | None:
    ws: Any = _WS.match  # always matches (it may match nothing)
    i = ws(s, 0).end()
    if s[i] != "{":
        return None
    i = ws(s, i + 1).end()
    out: dict[str, Any] = {}
    while True:
        head = _key_at(s, i)
        if head is None:
            return None
        key, i = head
        if key == "messages" and s[i] == "[":
            msgs, i, lazy = _first_messages(s, i, budget)
            if lazy:  # `i`: where the first message left unparsed starts
                tail = _members_after(s, i)
                if tail is None or "messages" in tail[0]:
                    return None
                members, end = tail
                out["messages"] = msgs
                out.update(members)
                return PartialBody(out, end - i)
            value: Any = msgs
        else:
            value, i = _SCAN(s, i)
        out[key] = value
        i = ws(s, i).end()
        if s[i] == ",":
            i = ws(s, i + 1).end()
        elif s[i] == "}" and ws(s, i + 1).end() == len(s):
            return out  # parsed whole: what json.loads gives
        else:
            return None


def _first_messages(s: str, i: int, budget: int) -> tuple[list[Any], int, bool]:
    """The array at `i` parsed until the content of its elements but the last holds `budget` characters: (elements,
    where parsing stopped, whether elements were left). Whole: stopped after its ']'. The elements within the first
    `budget` characters of the array (JSON syntax included, so never more content than that) are parsed at once,
    cut after the first element boundary from there; the rest one by one."""
    ws: Any = _WS.match  # always matches (it may match nothing)
    msgs: list[Any] = []
    chars = 0
    j = ws(s, i + 1).end()
    if s[j] == "]":
        return msgs, j + 1, False
    cut = _BOUNDARY.search(s, i + budget) if budget > 0 else None
    if cut is not None:
        try:
            bulk = json.loads(s[i : cut.start() + 1] + "]")
        except ValueError:
            bulk = None  # the boundary was in a string: one by one from the start
        if bulk is not None:
            msgs = bulk
            chars = _message_chars(msgs) or 0
            j = cut.end() - 1
    while True:
        enough = chars >= budget
        v, j = _SCAN(s, j)
        msgs.append(v)
        if type(v) is dict:
            c = v.get("content")
            chars += len(c) if type(c) is str else _chars(c)
        if s[j] not in ",]":
            j = ws(s, j).end()
        if s[j] == "]":
            return msgs, j + 1, False
        if s[j] != ",":
            raise ValueError("not an array")
        j = ws(s, j + 1).end()
        if enough:
            return msgs, j, True


def _last_non_ws(s: str, hi: int) -> int:
    k = hi - 1
    while s[k] in " \t\n\r":
        k -= 1
    return k


def _members_after(s: str, lo: int) -> tuple[dict[str, Any], int] | None:
    """The top-level members after the array that holds `lo` (the messages, parsed up to `lo`) and where that
    array's ']' is, read from the end of the body: each member is taken from the comma before it, a comma that
    only the top level's can be (from any other the member would not end where the next one starts, or at the
    object's end). None: not clear-cut (parse in full)."""
    hi = _last_non_ws(s, len(s))  # the object's closing brace
    if s[hi] != "}":
        return None
    found: list[tuple[str, Any]] = []
    # each member tried from a comma parses at most the text after it: bounded by four times what a full parse of
    # the rest reads, so no body costs more than a few full parses (say a deep object after the messages)
    work, most = 0, 4 * (len(s) - lo)
    while True:
        end = _last_non_ws(s, hi)  # the last character of the member before `hi`
        if end < lo:
            return None
        search_hi = hi
        if s[end] == "]":
            start = _array_start(s, lo, end)
            if start is None:
                return None
            if start < 0:  # no array starts after `lo` and ends there: it is the messages'
                found.reverse()
                return dict(found), end
            search_hi = start
        c = s.rfind(",", lo, search_hi)
        while c >= 0:
            work += len(s) - c
            if work > most:
                return None
            member = _member_at(s, c + 1, hi)
            if member is not None:
                found.append(member)
                hi = c
                break
            c = s.rfind(",", lo, c)
        else:
            return None


def _array_start(s: str, lo: int, end: int) -> int | None:
    """Where the array that ends at `end` starts, when after `lo`; -1: it starts before (no '[' after `lo` that
    follows a ':', as a member's value does, parses as an array ending there); None: too much to try (more '['
    than `_BRACKETS_PER_KB` allows, or arrays tried that hold half the text)."""
    q = s.rfind("[", lo, end)
    seen = tried = 0
    most = max(256, _BRACKETS_PER_KB * (end - lo) >> 10)
    while q >= 0:
        seen += 1
        if seen > most:
            return None
        if s[_last_non_ws(s, q)] == ":":
            try:
                _, stop = _SCAN(s, q)
            except (StopIteration, ValueError):
                stop = q
            if stop == end + 1:
                return q
            tried += stop - q
            if 2 * tried > end - lo:
                return None
        q = s.rfind("[", lo, q)
    return -1


def _key_at(s: str, i: int) -> tuple[str, int] | None:
    """A member's key at `i` and where its value starts (past the ':' and whitespace), else None."""
    if s[i] != '"':
        return None
    key, i = scanstring(s, i + 1)
    i = _WS.match(s, i).end()  # type: ignore[union-attr]  # always matches
    if s[i] != ":":
        return None
    return key, _WS.match(s, i + 1).end()  # type: ignore[union-attr]


def _member_at(s: str, i: int, hi: int) -> tuple[str, Any] | None:
    """The member `"key": value` that starts at `i` and ends right before `hi` (whitespace aside), else None."""
    ws: Any = _WS.match  # always matches (it may match nothing)
    try:
        head = _key_at(s, ws(s, i).end())
        if head is None:
            return None
        key, i = head
        value, i = _SCAN(s, i)
    except (StopIteration, ValueError, IndexError):
        return None
    return (key, value) if ws(s, i).end() == hi else None


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, dict):
        return _chars(value.get("content", "")) + _chars(value.get("text", ""))
    return 0


def _message_chars(messages: Any) -> int | None:
    """Characters of a chat's messages (their content and text), in one pass that also checks the list: None when
    it is not a non-empty list of objects. A long chat is hundreds of messages: no call per plain-text one."""
    if not isinstance(messages, list) or not messages:
        return None
    n = 0
    for m in messages:
        if not isinstance(m, dict):
            return None
        c = m.get("content", "")
        n += len(c) if type(c) is str else _chars(c)
        if "text" in m:
            n += _chars(m["text"])
    return n


def validate(api: str, obj: dict[str, Any]) -> ParsedRequest:
    _, required = APIS[api]
    model = obj.get("model")
    if model is None:
        raise Refusal(400, "missing_model", "missing required field 'model'", param="model")
    if not isinstance(model, str) or not model:
        raise Refusal(400, "invalid_model", "'model' must be a non-empty string", param="model")
    stream = obj.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise Refusal(
            400, "invalid_stream", f"'stream' must be true or false, got {json.dumps(stream)}", param="stream"
        )
    if stream and api == "embeddings":
        raise Refusal(400, "invalid_stream", "embeddings cannot be streamed", param="stream")
    if required not in obj:
        raise Refusal(400, f"missing_{required}", f"missing required field {required!r}", param=required)
    value = obj[required]
    if api == "chat":
        chars = _message_chars(value)
        if chars is None:
            raise Refusal(
                400, "invalid_messages", "'messages' must be a non-empty list of message objects", param=required
            )
        if type(obj) is PartialBody:  # the messages not parsed count by their length (a little over)
            chars += obj.unparsed
    elif not isinstance(value, str | list):
        raise Refusal(400, f"invalid_{required}", f"{required!r} must be a string or a list", param=required)
    else:
        chars = _chars(value)
    max_tokens = obj.get("max_completion_tokens", obj.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0):
        raise Refusal(400, "invalid_max_tokens", "'max_tokens' must be a non-negative integer", param="max_tokens")
    return ParsedRequest(obj, model, stream, max_tokens, chars, type(obj) is PartialBody)


def error_body(message: str, code: str, status: int, param: str | None = None) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    elif status == 429:
        kind = "rate_limit_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()
