"""Paged KV cache with prefix caching, as vLLM V1's block pool and KV-cache manager keep it (sans-IO).

A block is cached under the chained hash of its tokens (`agents.emulator.tokenizer.block_hashes`) once it is full.
A new request reuses the cached blocks of its longest cached prefix and computes only the rest; vLLM never reuses
the whole prompt (the last token is always computed, to produce logits), so the hit stops one token short of the
prompt's end. Blocks nobody references sit in a free queue in LRU order: a request frees its blocks tail first, so a
prompt's last blocks are evicted before its first ones, and allocation takes the queue's head, evicting the cached
content there. Every change of the cached set is recorded as a vLLM KV event (BlockStored, BlockRemoved,
AllBlocksCleared) for the publisher in `kvevents.py` to send.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from agents.emulator.tokenizer import ROOT_HASH, hash_block


@dataclass(slots=True)
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = "GPU"

    def wire(self) -> dict[str, Any]:
        # vllm.distributed.kv_events.BlockStored as msgspec encodes it: a map, the tag first, fields in order
        return {"type": "BlockStored", "block_hashes": self.block_hashes, "parent_block_hash": self.parent_block_hash,
                "token_ids": self.token_ids, "block_size": self.block_size, "lora_id": self.lora_id,
                "medium": self.medium, "lora_name": None}  # fmt: skip


@dataclass(slots=True)
class BlockRemoved:
    block_hashes: list[int]
    medium: str | None = "GPU"

    def wire(self) -> dict[str, Any]:
        return {"type": "BlockRemoved", "block_hashes": self.block_hashes, "medium": self.medium}


@dataclass(slots=True)
class AllBlocksCleared:
    def wire(self) -> dict[str, Any]:
        return {"type": "AllBlocksCleared"}


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(slots=True)
class CacheStats:
    queries: int = 0  # prompt tokens looked up (vllm:prefix_cache_queries_total)
    hits: int = 0  # of which found cached (vllm:prefix_cache_hits_total)
    requests: int = 0
    stored_blocks: int = 0
    evicted_blocks: int = 0


@dataclass(eq=False, slots=True)
class SeqBlocks:
    """The blocks one request holds and how many of them are hashed into the cache."""

    token_ids: list[int] | None  # prompt then output ids; None: no ids known, nothing is cached
    root: int = ROOT_HASH  # parent hash of the first block (a LoRA adapter has its own)
    lora_id: int | None = None
    block_ids: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # hashes of blocks 0..len-1 (full, known-token blocks)


class BlockPool:
    """`num_blocks` blocks of `block_size` tokens; a cache of full blocks by hash; an LRU free queue."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("a KV cache needs at least one block of at least one token")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.ref = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> block id
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))  # head = evict first
        self.events: list[KVEvent] = []
        self.stats = CacheStats()

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks

    # -- lookup ----------------------------------------------------------------------------------------------
    def lookup(self, seq: SeqBlocks, prompt_len: int) -> list[tuple[int, int]]:
        """(block, hash) of the request's longest cached prefix: full blocks, never the whole prompt. No side
        effects: `admit` takes them when the request is scheduled."""
        ids = seq.token_ids
        if not self.enable_caching or ids is None or seq.block_ids:
            return []
        bs = self.block_size
        max_blocks = (min(prompt_len, len(ids)) - 1) // bs
        parent = seq.root
        hit: list[tuple[int, int]] = []
        for b in range(max_blocks):
            h = hash_block(parent, ids[b * bs : (b + 1) * bs])
            block = self.cached.get(h)
            if block is None:
                break
            hit.append((block, h))
            parent = h
        return hit

    def admit(self, seq: SeqBlocks, hit: list[tuple[int, int]], total_tokens: int, prompt_len: int) -> bool:
        """Schedule a waiting request: take its cached prefix `hit` and blocks for `total_tokens` tokens in all.

        False (and nothing changed) when the free queue cannot cover the new blocks plus the hit blocks that sit
        in it. Counts the lookup in the prefix-cache statistics, as vLLM does when it schedules a request.
        """
        need = -(-total_tokens // self.block_size) - len(hit) - len(seq.block_ids)
        idle_hits = sum(1 for block, _ in hit if self.ref[block] == 0)
        if max(need, 0) + idle_hits > len(self.free):
            return False
        for block, h in hit:
            if self.ref[block] == 0:
                del self.free[block]
            self.ref[block] += 1
            seq.block_ids.append(block)
            seq.hashes.append(h)
        if need > 0:
            self.allocate(seq, need)
        self.stats.requests += 1
        self.stats.queries += prompt_len
        self.stats.hits += len(hit) * self.block_size
        return True

    # -- allocation ------------------------------------------------------------------------------------------
    def can_allocate(self, n: int) -> bool:
        return n <= len(self.free)

    def allocate(self, seq: SeqBlocks, n: int) -> None:
        """Give the request `n` fresh blocks from the free queue's head, evicting what they cached."""
        removed: list[int] = []
        for _ in range(n):
            block, _ = self.free.popitem(last=False)
            h = self.hash_of[block]
            if h is not None:
                self.hash_of[block] = None
                if self.cached.get(h) == block:
                    del self.cached[h]
                    removed.append(h)
            self.ref[block] = 1
            seq.block_ids.append(block)
        if removed:
            self.stats.evicted_blocks += len(removed)
            self.events.append(BlockRemoved(removed))

    def release(self, seq: SeqBlocks) -> None:
        """Drop the request's references, tail first, so its last blocks are the first evicted."""
        for block in reversed(seq.block_ids):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None
        seq.block_ids.clear()
        seq.hashes.clear()

    def commit(self, seq: SeqBlocks, computed: int) -> None:
        """Hash and cache the request's blocks that are now full of computed tokens with known ids."""
        ids = seq.token_ids
        if not self.enable_caching or ids is None:
            return
        bs = self.block_size
        full = min(computed, len(ids)) // bs
        start = len(seq.hashes)
        if full <= start:
            return
        parent = seq.hashes[-1] if seq.hashes else seq.root
        run: list[int] = []  # one BlockStored per contiguous run of newly cached blocks
        run_tokens: list[int] = []
        run_parent: int | None = None
        for b in range(start, full):
            tokens = ids[b * bs : (b + 1) * bs]
            h = hash_block(parent, tokens)
            if h in self.cached:
                # another request cached the same content first: this copy stays uncached, as in vLLM
                self._stored(run, run_parent, run_tokens, seq.lora_id)
                run, run_tokens = [], []
            else:
                if not run:
                    run_parent = None if b == 0 else parent
                block = seq.block_ids[b]
                self.cached[h] = block
                self.hash_of[block] = h
                run.append(h)
                run_tokens.extend(tokens)
            seq.hashes.append(h)
            parent = h
        self._stored(run, run_parent, run_tokens, seq.lora_id)

    def _stored(self, hashes: list[int], parent: int | None, tokens: list[int], lora_id: int | None) -> None:
        if hashes:
            self.stats.stored_blocks += len(hashes)
            self.events.append(BlockStored(hashes, parent, tokens, self.block_size, lora_id))

    def clear(self) -> bool:
        """Reset the prefix cache (vLLM's /reset_prefix_cache): only when no block is in use."""
        if len(self.free) != self.num_blocks:
            return False
        for block in range(self.num_blocks):
            self.hash_of[block] = None
        self.cached.clear()
        self.events.append(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KVEvent]:
        out, self.events = self.events, []
        return out
