"""The emulator's paged KV cache with prefix caching, against a hand-worked example."""

from __future__ import annotations

import pytest

from agents.emulator.engine import EngineConfig, EngineCore, Sequence
from agents.emulator.kvcache import AllBlocksCleared, BlockRemoved, BlockStored
from agents.emulator.profiles import get_profile
from agents.emulator.tokenizer import block_hashes, hash_block


def _core() -> EngineCore:
    # 6 blocks of 4 tokens: small enough to work out by hand
    return EngineCore(EngineConfig(profile=get_profile("h100"), block_size=4, kv_tokens=24))


def _serve(core: EngineCore, rid: str, ids: list[int], t: float = 0.0) -> Sequence:
    seq = Sequence(req_id=rid, prompt_tokens=len(ids), max_tokens=1, target_tokens=1, arrival=t, token_ids=ids)
    core.add(seq)
    while (step := core.schedule()) is not None:
        t += step.duration_s
        core.complete(step, t)
    assert seq.finish_reason == "length"
    return seq


def test_hand_worked_hits_evictions_and_events() -> None:
    core = _core()
    kv = core.kv
    a_ids = list(range(1, 11))  # 10 tokens: blocks [1-4] [5-8] full, [9-10] partial
    h0, h1 = block_hashes(a_ids, 4)

    # A: nothing cached; 3 blocks (0, 1, 2); the two full ones are stored; freed tail first
    a = _serve(core, "a", a_ids)
    assert a.cached_tokens == 0
    assert list(kv.free) == [3, 4, 5, 2, 1, 0]
    assert (kv.stats.queries, kv.stats.hits) == (10, 0)
    assert kv.drain_events() == [BlockStored([h0, h1], None, list(range(1, 9)), 4, None, "GPU")]

    # B shares the two full blocks: only 3 tokens are prefilled, one new block (3, from the queue's head)
    b_ids = [*range(1, 9), 99, 98, 97]
    b = Sequence(req_id="b", prompt_tokens=11, max_tokens=1, target_tokens=1, arrival=0.0, token_ids=b_ids)
    core.add(b)
    step = core.schedule()
    assert step is not None and step.prefill_tokens == 3
    assert b.kv.block_ids == [0, 1, 3]
    core.complete(step, step.duration_s)
    assert b.cached_tokens == 8 and (kv.stats.queries, kv.stats.hits) == (21, 8)
    assert list(kv.free) == [4, 5, 2, 3, 1, 0]
    assert kv.drain_events() == []  # its only full new block... there is none: [99 98 97] is partial

    # C is exactly the two blocks: the last token is always computed, so only one block hits; its second
    # block duplicates cached content and stays uncached (no event)
    c = _serve(core, "c", list(range(1, 9)))
    assert c.cached_tokens == 4 and (kv.stats.queries, kv.stats.hits) == (29, 12)
    assert kv.drain_events() == []
    assert list(kv.free) == [5, 2, 3, 1, 4, 0]

    # D: 20 new tokens need 5 blocks: 5, 2, 3, 1, 4 leave the head; block 1 held h1, which is evicted
    d_ids = list(range(50, 70))
    d = Sequence(req_id="d", prompt_tokens=20, max_tokens=1, target_tokens=1, arrival=0.0, token_ids=d_ids)
    core.add(d)
    step = core.schedule()
    assert step is not None and core.kv_usage == pytest.approx(5 / 6)
    core.complete(step, step.duration_s)
    assert kv.drain_events() == [
        BlockRemoved([h1], "GPU"),
        BlockStored(block_hashes(d_ids, 4), None, d_ids, 4, None, "GPU"),
    ]
    assert kv.stats.evicted_blocks == 1 and kv.usage == 0.0

    # A again: only its first block survived
    a2 = _serve(core, "a2", a_ids)
    assert a2.cached_tokens == 4 and (kv.stats.queries, kv.stats.hits) == (59, 16)
    stored = kv.drain_events()
    assert stored[-1] == BlockStored([h1], h0, list(range(5, 9)), 4, None, "GPU")
    assert hash_block(h0, list(range(5, 9))) == h1

    assert kv.clear() and kv.drain_events()[-1] == AllBlocksCleared() and not kv.cached


def test_preempted_request_is_looked_up_again_and_its_blocks_stay_evictable() -> None:
    core = EngineCore(EngineConfig(profile=get_profile("h100"), block_size=4, kv_tokens=16, max_num_batched_tokens=64))
    x = Sequence(req_id="x", prompt_tokens=8, max_tokens=6, target_tokens=6, arrival=0.0, token_ids=list(range(8)))
    y = Sequence(req_id="y", prompt_tokens=8, max_tokens=4, target_tokens=4, arrival=0.0, token_ids=[9] * 8)
    core.add(x)
    core.add(y)
    t = 0.0
    while (step := core.schedule()) is not None:
        t += step.duration_s
        core.complete(step, t)
    assert (core.counters.preemptions, y.preemptions) == (1, 1) and x.finish_reason and y.finish_reason
    # y was looked up twice (8 + 8 + 8 queried tokens); x's decode blocks evicted y's cached ones meanwhile
    assert (core.kv.stats.queries, core.kv.stats.hits, y.cached_tokens) == (24, 0, 0)
    assert core.kv.stats.evicted_blocks == 3 and core.kv.usage == 0.0
