"""The project's deterministic tokenizer and vLLM-style chained block hashes.

Every process that needs token ids (the runtime emulator, the router computing a request's block hashes, the
benchmarks) uses this one module, so identical text gives identical ids everywhere. It is not a trained BPE: a
token is up to four non-space characters plus the whitespace after them (about four characters per token, like
English BPE), mapped to an id by CRC-32. That keeps token counts realistic and prefixes stable: text that shares a
prefix ending in whitespace shares the token prefix, and each chat message is tokenized on its own so a
conversation's earlier turns are an exact token prefix of its later ones.

Block hashes follow vLLM's prefix-caching scheme (vllm/v1/core/kv_cache_utils.py `hash_block_tokens`): the hash of
block i covers the hash of block i-1 and block i's token ids, so equal hashes mean equal whole prefixes. Only full
blocks are hashed. Hashes are unsigned 64-bit integers, the form vLLM puts in its KV events.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

VOCAB_SIZE = 32_000
NUM_SPECIAL = 16  # ids below this are special tokens (chat template markers)
BOS = 1
ROLE_IDS = {"system": 2, "user": 3, "assistant": 4, "tool": 5, "developer": 6}
END_OF_TURN = 7
ROOT_HASH = 0  # the parent hash of a prompt's first block (vLLM's NONE_HASH, fixed so every process agrees)

_PIECE = re.compile(r"\S{1,4}\s*|\s+")
_CACHE_MAX = 200_000  # distinct pieces remembered (a few MB at most)
_ids: dict[str, int] = {}


def _piece_id(piece: str) -> int:
    i = _ids.get(piece)
    if i is None:
        i = NUM_SPECIAL + zlib.crc32(piece.encode("utf-8", "surrogatepass")) % (VOCAB_SIZE - NUM_SPECIAL)
        if len(_ids) < _CACHE_MAX:
            _ids[piece] = i
    return i


def encode(text: str) -> list[int]:
    """Token ids of `text` (no special tokens). Deterministic across processes and runs."""
    get = _ids.get
    crc = zlib.crc32
    span = VOCAB_SIZE - NUM_SPECIAL
    out: list[int] = []
    append = out.append
    for piece in _PIECE.findall(text):
        i = get(piece)
        if i is None:  # inlined `_piece_id` (the hot path of a router hashing every prompt)
            i = NUM_SPECIAL + crc(piece.encode("utf-8", "surrogatepass")) % span
            if len(_ids) < _CACHE_MAX:
                _ids[piece] = i
        append(i)
    return out


def count(text: str) -> int:
    return len(_PIECE.findall(text))


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string or a list of parts with `text`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise TypeError("content must be a string or a list of parts")


def encode_chat(messages: Iterable[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a chat conversation under the emulated model's chat template.

    BOS, then per message a role marker, the content's ids and an end-of-turn marker; the assistant marker last.
    """
    out = [BOS]
    for m in messages:
        out.append(ROLE_IDS.get(str(m.get("role")), 8))
        out.extend(encode(message_text(m.get("content"))))
        out.append(END_OF_TURN)
    if add_generation_prompt:
        out.append(ROLE_IDS["assistant"])
    return out


def hash_block(parent: int, token_ids: Sequence[int], extra: bytes = b"") -> int:
    """Hash of one full block chained on its parent's hash (64-bit, unsigned)."""
    h = hashlib.blake2b(parent.to_bytes(8, "big"), digest_size=8)
    h.update(array("I", token_ids).tobytes())
    if extra:
        h.update(extra)
    return int.from_bytes(h.digest(), "big")


def root_hash(extra: str = "") -> int:
    """The parent hash of the first block; requests for a LoRA adapter chain from the adapter's own root."""
    if not extra:
        return ROOT_HASH
    return int.from_bytes(hashlib.blake2b(extra.encode(), digest_size=8).digest(), "big")


def block_hashes(
    token_ids: Sequence[int], block_size: int, root: int = ROOT_HASH, limit: int | None = None
) -> list[int]:
    """Chained hashes of the full blocks of `token_ids` (at most `limit` blocks)."""
    n = len(token_ids) // block_size
    if limit is not None:
        n = min(n, limit)
    out: list[int] = []
    parent = root
    for b in range(n):
        parent = hash_block(parent, token_ids[b * block_size : (b + 1) * block_size])
        out.append(parent)
    return out


def request_token_ids(body: dict[str, Any], chat: bool) -> list[int] | None:
    """Token ids of an OpenAI request body, or None when it carries no text (a bare `prompt_tokens` count).

    `prompt_token_ids` (a list of ints) is accepted as an extension on both endpoints; a completion's `prompt` may
    also be a list of token ids. Raises ValueError naming the problem for malformed input.
    """
    ids = body.get("prompt_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ValueError("prompt_token_ids must be a non-empty list of integers")
        if any(t < 0 or t >= 1 << 32 for t in ids):
            raise ValueError("prompt_token_ids must be integers in [0, 2^32)")
        return ids
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        return encode_chat(m for m in messages if isinstance(m, dict))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return encode(prompt)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return encode(prompt[0])
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if any(t < 0 or t >= 1 << 32 for t in prompt):
            raise ValueError("prompt token ids must be integers in [0, 2^32)")
        return list(prompt)
    return None
