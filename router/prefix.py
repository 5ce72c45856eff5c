"""A request's KV-block hashes and session key, computed by the router for cache-aware ranking; and the router's
subscriptions to runtimes' KV events, which keep the process-wide prefix index exact for those runtimes.

The hashes are the runtime's own: the project's tokenizer (`agents.emulator.tokenizer`, the emulated model's) and
vLLM's chained block hash. Tokenizing is the cost: a chat message's ids are remembered by its text (system prompts
and earlier turns repeat), and only the first `max_prompt_tokens` tokens are hashed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from agents.emulator import tokenizer as tok
from agents.signals.prefixindex import default_index
from agents.signals.runtime.kvevents import KVEventSubscriber
from router.config import CacheConfig

log = logging.getLogger("infermesh.router.prefix")

SESSION_KEYS_IGNORED = Counter(
    "infermesh_router_session_keys_ignored_total", "Session keys ignored (too long or not a string)", ["reason"]
)
_warned: set[str] = set()
_MSG_CACHE_MAX = 4096
_msg_ids: OrderedDict[str, list[int]] = OrderedDict()


@dataclass(slots=True)
class RequestPrefix:
    hashes: list[int]
    tokens: int  # prompt tokens counted by the tokenizer (0: unknown)
    session_key: str = ""


def _encode_cached(text: str) -> list[int]:
    ids = _msg_ids.get(text)
    if ids is None:
        ids = tok.encode(text)
        if len(text) >= 64:  # only texts worth remembering
            _msg_ids[text] = ids
            if len(_msg_ids) > _MSG_CACHE_MAX:
                _msg_ids.popitem(last=False)
    else:
        _msg_ids.move_to_end(text)
    return ids


def _chat_ids(messages: list[Any], limit: int) -> list[int]:
    return _chat_ids_used(messages, limit)[0]


def _chat_ids_used(messages: list[Any], limit: int) -> tuple[list[int], int]:
    """The chat's token ids (at most `limit`) and how many messages they reach into."""
    out = [tok.BOS]
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            continue
        out.append(tok.ROLE_IDS.get(str(m.get("role")), 8))
        try:
            out.extend(_encode_cached(tok.message_text(m.get("content"))))
        except TypeError:
            return [], 0
        out.append(tok.END_OF_TURN)
        if len(out) >= limit:
            return out[:limit], i + 1
    out.append(tok.ROLE_IDS["assistant"])
    return out, len(messages)


def _token_ids(api: str, obj: Mapping[str, Any], limit: int) -> tuple[list[int], int]:
    """The prompt's token ids (at most `limit`) and, for a chat, how many of its messages they reach into."""
    ids = obj.get("prompt_token_ids")
    if isinstance(ids, list):
        ok = all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 1 << 32 for t in ids[:limit])
        return (ids[:limit] if ok else []), 0
    if api == "chat":
        messages = obj.get("messages")
        return _chat_ids_used(messages, limit) if isinstance(messages, list) else ([], 0)
    return _prompt_ids(api, obj, limit), 0


def _prompt_ids(api: str, obj: Mapping[str, Any], limit: int) -> list[int]:
    if api == "completions":
        prompt = obj.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return _encode_cached(prompt[: limit * 8])[:limit]
        if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt[:limit]):
            return [t for t in prompt[:limit] if 0 <= t < 1 << 32]
    return []


def _warn_once(reason: str, message: str) -> None:
    SESSION_KEYS_IGNORED.labels(reason).inc()
    if reason not in _warned:
        _warned.add(reason)
        log.warning("%s (counted in infermesh_router_session_keys_ignored_total; not logged again)", message)


def session_key_of(obj: Mapping[str, Any], headers: Mapping[str, str], cfg: CacheConfig) -> str:
    key: Any = headers.get(cfg.session_header) if cfg.session_header else None
    if key is None:
        key = obj.get("session_id")
    if key is None:
        return ""
    if not isinstance(key, str):
        _warn_once("type", "a session_id that is not a string was ignored")
        return ""
    if len(key) > cfg.max_session_key_len:
        _warn_once("too_long", f"a session key of {len(key)} characters (> {cfg.max_session_key_len}) was ignored")
        return ""
    return key


_HEAD_CACHE_MAX = 1024
_heads: OrderedDict[tuple[Any, ...], list[int]] = OrderedDict()  # (block size, earlier messages) -> block hashes


def _hashes(api: str, obj: Mapping[str, Any], ids: list[int], bs: int, used: int = 0) -> list[int]:
    """Block hashes of `ids`; a chat's blocks that lie within its earlier messages (a group's system prompt, a
    conversation's history) are remembered by those messages, so only the blocks after them are hashed. `used`: how
    many messages the ids reach into; a chat cut before its last message is remembered by those alone (the rest of
    a long conversation is not even looked at)."""
    messages = obj.get("messages") if api == "chat" and "prompt_token_ids" not in obj else None
    if not isinstance(messages, list) or len(messages) < 2:
        return tok.block_hashes(ids, bs)
    earlier = messages[:-1] if not 0 < used < len(messages) else messages[:used]
    try:
        pairs = ((str(m.get("role")), tok.message_text(m.get("content"))) for m in earlier)
        key = (bs, *pairs) if len(earlier) == len(messages) - 1 else (bs, "cut", len(ids), *pairs)
    except (AttributeError, TypeError):
        return tok.block_hashes(ids, bs)
    head = _heads.get(key)
    if head is None:
        # the earlier messages end where the last message's role marker starts
        n_head = len(_chat_ids(earlier, len(ids) + 1)) - 1
        head = tok.block_hashes(ids[:n_head], bs)
        _heads[key] = head
        if len(_heads) > _HEAD_CACHE_MAX:
            _heads.popitem(last=False)
    else:
        _heads.move_to_end(key)
    out = list(head)
    parent = out[-1] if out else tok.ROOT_HASH
    for b in range(len(out), len(ids) // bs):
        parent = tok.hash_block(parent, ids[b * bs : (b + 1) * bs])
        out.append(parent)
    return out


def request_prefix(api: str, obj: Mapping[str, Any], headers: Mapping[str, str], cfg: CacheConfig) -> RequestPrefix:
    """Block hashes (empty when the request has no prompt the tokenizer reads) and session key of a request."""
    ids, used = _token_ids(api, obj, cfg.max_prompt_tokens) if api in ("chat", "completions") else ([], 0)
    hashes = _hashes(api, obj, ids, cfg.block_size, used) if ids else []
    return RequestPrefix(hashes, len(ids), session_key_of(obj, headers, cfg))


def start_kv_events(cfg: CacheConfig) -> list[KVEventSubscriber]:
    """Subscribe to every configured runtime's KV events (the index is keyed by the runtime's URL)."""
    index = default_index()
    index.max_blocks = cfg.max_blocks_per_target
    subs = []
    for src in cfg.kv_events:
        sub = KVEventSubscriber(index, src.url.rstrip("/"), src.endpoint, src.replay, src.topic)
        sub.start()
        subs.append(sub)
        log.info("kv events of %s from %s (replay %s)", src.url, src.endpoint, src.replay or "none")
    return subs


async def close_kv_events(subs: list[KVEventSubscriber]) -> None:
    for sub in subs:
        await sub.close()
