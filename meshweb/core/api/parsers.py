"""A JSON parser that refuses what the standard one lets through: NaN/Infinity, duplicate keys, non-objects, and NUL
characters in strings (PostgreSQL text and jsonb cannot hold them: a lookup or a write with one would fail as a
server error instead of a clear 400)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from meshweb.core.exceptions import PayloadTooLarge


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _nul_at(value: Any, path: str = "") -> str | None:
    """The path of the first string (value or key) holding a NUL character, or None."""
    if isinstance(value, str):
        return (path or "the body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return name
            found = _nul_at(item, name)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_at(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


class StrictJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
        if not raw:
            return {}
        try:
            text = raw.decode("utf-8")
            data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
        except UnicodeDecodeError as exc:
            raise ParseError("Malformed JSON: the body is not UTF-8.") from exc
        except ValueError as exc:
            raise ParseError(f"Malformed JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ParseError("Malformed JSON: the body must be a JSON object.")
        where = _nul_at(data)
        if where is not None:
            raise ParseError(f"Malformed JSON: {where!r} holds a NUL character (\\u0000), which is not accepted.")
        return data
