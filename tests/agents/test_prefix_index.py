"""The per-target KV-block index: events (gaps, replays, restarts, bad frames) and the approximate kind."""

from __future__ import annotations

import asyncio
import logging
import time

import msgpack
import pytest
import zmq.asyncio

from agents.emulator.testing import running_emulator
from agents.emulator.tokenizer import block_hashes
from agents.signals.prefixindex import APPROX, EVENTS, BlockSet, KVEventStream, PrefixIndex, Resync
from agents.signals.runtime.kvevents import KVEventSubscriber
from tests.support import free_port


def _msg(seq: int, *events: list) -> list[bytes]:
    return [b"kv", seq.to_bytes(8, "big"), msgpack.packb([1.0, list(events)])]


def _stored(*hashes: int) -> dict:
    return {
        "type": "BlockStored",
        "block_hashes": list(hashes),
        "parent_block_hash": None,
        "token_ids": [1] * 16 * len(hashes),
        "block_size": 16,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
    }


def test_gap_asks_for_a_replay_that_fills_the_hole(caplog: pytest.LogCaptureFixture) -> None:
    bs = BlockSet(EVENTS, 100)
    s = KVEventStream("t1", bs)
    assert s.on_message(_msg(0, _stored(1, 2))) is None
    lost = _msg(1, ["BlockRemoved", [2], "GPU"], _stored(3))  # the older tagged-array form is read too
    assert s.on_message(_msg(2, _stored(4))) == Resync(1)  # seq 1 never arrived
    assert set(bs.blocks) == {1, 2, 4}
    s.on_replay(1, lost[2])
    s.on_replay(2, _msg(2, _stored(4))[2])  # already applied live: not applied twice
    s.on_replay(-1, b"")
    assert set(bs.blocks) == {1, 3, 4} and s.last_seq == 2
    assert (s.counters.gaps, s.counters.resyncs, s.counters.replayed) == (1, 1, 1)
    assert s.on_message(_msg(3, _stored(5))) is None and s.last_seq == 3


def test_restart_clears_and_bad_input_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    bs = BlockSet(EVENTS, 100)
    s = KVEventStream("t1", bs)
    for i in range(5):
        s.on_message(_msg(i, _stored(10 + i)))
    with caplog.at_level(logging.WARNING):
        assert s.on_message(_msg(4, _stored(99))) is None  # repeated: ignored
        assert s.on_message(_msg(4, _stored(98))) is None
        s.on_message([b"kv", b"\x00"])  # two frames
        s.on_message([b"kv", (5).to_bytes(8, "big"), b"\xc1not msgpack"])
        s.on_message(_msg(6, ["Bogus", 1], "x", ["BlockStored", "nope"]))
    assert s.counters.out_of_order == 2 and s.counters.malformed == 5 and 99 not in bs.blocks
    assert sum("ignored" in r.message for r in caplog.records) == 1  # one line per kind of problem
    assert s.on_message(_msg(0, {"type": "AllBlocksCleared"})) is None  # a new process: sequence back at 0
    assert s.counters.restarts == 1 and len(bs) == 0 and s.last_seq == 0
    s.on_message(_msg(1, _stored(20)))
    s.on_message(_msg(2, _stored(21)))
    # a restart whose first messages were missed: forget everything, replay the new process from 0
    assert s.on_message(_msg(1, _stored(30))) == Resync(0) and len(bs) == 0
    s.on_replay(0, _msg(0, ["AllBlocksCleared"])[2])
    s.on_replay(1, _msg(1, _stored(30))[2])
    s.on_replay(-1, b"")
    assert set(bs.blocks) == {30} and s.last_seq == 1 and s.counters.restarts == 2


def test_bounded_sets_and_the_approximate_kind() -> None:
    idx = PrefixIndex(max_blocks=4)
    idx.note_routed("a", [1, 2, 3])
    assert idx.kind("a") == APPROX and idx.match("a", [1, 2, 3, 9]) == 3 and idx.match("a", [9, 2]) == 0
    idx.note_routed("a", [7, 8])  # 5 blocks > 4: the least recently routed block (1) goes
    assert len(idx.targets["a"]) == 4 and idx.match("a", [1, 2]) == 0
    idx.ensure("b", EVENTS)
    idx.note_routed("b", [1])  # event-fed: held apart as just routed (its events lag by a prefill), not as stored
    assert idx.match("b", [1]) == 1 and len(idx.targets["b"]) == 0
    assert idx.bytes_estimate == (4 + 1 + 1) * 100  # a, b's just-routed block and b's pending one


def test_event_fed_backlog_learnt_prefill_rate_and_capacity() -> None:
    now = [0.0]
    idx = PrefixIndex(clock=lambda: now[0])
    bs = idx.ensure("e", EVENTS)
    s = KVEventStream("e", bs)
    miss = list(range(1, 126))  # 125 blocks, 2000 tokens, nothing cached: the target's backlog grows by them
    idx.note_routed("e", miss, 2000, 16)
    assert bs.backlog_tokens(16) == 2000
    idx.note_routed("e", [*miss, 126], 16, 16)  # the same prefix right behind it: one more block, not timed
    assert bs.backlog_tokens(16) == 2016 and len(bs.watched) == 1
    now[0] = 0.1
    s.on_message(_msg(0, _stored(*miss)))  # the first one's prefill is done: 2000 tokens in 0.1 s
    assert bs.backlog_tokens(16) == 16 and bs.prefill_tok_s == pytest.approx(20_000)
    s.on_message(_msg(1, _stored(126)))
    idx.note_routed("e", [500], 16, 16)  # almost nothing to prefill: times the fixed delay instead
    now[0] = 0.12
    s.on_message(_msg(2, _stored(500)))
    assert bs.fixed_s == pytest.approx(0.02) and bs.prefill_tok_s == pytest.approx(20_000)
    idx.note_routed("e", list(range(1000, 1064)), 1024, 16)
    now[0] = 0.12 + 0.02 + 1024 / 10_000
    s.on_message(_msg(3, _stored(*range(1000, 1064))))  # 1024 tokens beyond the fixed delay at 10,000 tok/s
    assert bs.prefill_tok_s == pytest.approx(0.7 * 20_000 + 0.3 * 10_000)
    idx.note_routed("e", [900, 901], 32, 16)
    bs.settle()  # nothing in flight there any more: a backlog never stored is forgotten
    assert bs.backlog_tokens(16) == 0 and not bs.watched
    held = len(bs)
    s.on_message(_msg(4, ["BlockRemoved", [1], "GPU"]))  # it evicts: its cache is full at about what it held
    assert bs.capacity == held and len(bs) == held - 1


def test_an_evicted_block_routed_here_earlier_is_no_longer_matched() -> None:
    idx = PrefixIndex()
    bs = idx.ensure("e", EVENTS)
    s = KVEventStream("e", bs)
    idx.note_routed("e", [1, 2, 3], 48, 16)
    s.on_message(_msg(0, _stored(1, 2, 3)))
    assert idx.match("e", [1, 2, 3]) == 3
    # The runtime evicts the prefix: this router routed it there, but a request sent now would prefill it again.
    s.on_message(_msg(1, ["BlockRemoved", [2, 3], "GPU"]))
    assert idx.match("e", [1, 2, 3]) == 1


async def _until(cond, timeout: float = 10.0, info=lambda: "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"condition not reached: {info()}"
        await asyncio.sleep(0.02)


async def test_index_follows_a_real_emulator_through_a_lost_message_and_a_restart() -> None:
    import httpx

    pub, replay = free_port(), free_port()
    args = ("--block-size", "16", "--kv-events-endpoint", f"tcp://*:{pub}",
            "--kv-events-replay-endpoint", f"tcp://*:{replay}", "--host", "127.0.0.1")  # fmt: skip
    idx = PrefixIndex()
    ctx = zmq.asyncio.Context()
    sub = KVEventSubscriber(idx, "t1", f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{replay}", ctx=ctx)
    real = sub.stream.on_message
    seen = []

    def lossy(frames):  # type: ignore[no-untyped-def]
        seen.append(frames)
        if len(seen) == 3:
            return None  # this message is lost on the way
        return real(frames)

    sub.stream.on_message = lossy  # type: ignore[method-assign]
    sub.start()
    prompts = [[p * 1000 + i for i in range(40)] for p in range(1, 5)]
    try:
        with running_emulator(*args) as em:
            await asyncio.sleep(0.3)  # the subscription reaches the publisher
            async with httpx.AsyncClient(timeout=10) as c:
                for ids in prompts:
                    body = {"model": "demo-llm", "prompt": ids, "max_tokens": 1}
                    assert (await c.post(f"{em.url}/v1/completions", json=body)).status_code == 200
            want = {h for ids in prompts for h in block_hashes(ids, 16)}
            # the third prompt's BlockStored was lost; the fourth shows the gap and the replay restores it
            await _until(lambda: set(idx.targets["t1"].blocks) == want, info=lambda: sub.stream.counters)
            assert sub.stream.counters.gaps == 1 and sub.stream.counters.replayed == 1
            assert idx.match("t1", block_hashes(prompts[2], 16)) == 2
        # the runtime restarts on the same ports: its AllBlocksCleared at sequence 0 empties the index
        with running_emulator(*args) as em2:
            await asyncio.sleep(0.3)
            async with httpx.AsyncClient(timeout=10) as c:
                body = {"model": "demo-llm", "prompt": prompts[0], "max_tokens": 1}
                assert (await c.post(f"{em2.url}/v1/completions", json=body)).status_code == 200
            await _until(lambda: set(idx.targets["t1"].blocks) == set(block_hashes(prompts[0], 16)))
            assert sub.stream.counters.restarts == 1
    finally:
        await sub.close()
        ctx.term()


def test_the_agent_subscribes_and_reports_its_index(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from tests.agents.harness import start_agent

    pub, replay = free_port(), free_port()
    with running_emulator("--block-size", "16", "--kv-events-endpoint", f"tcp://*:{pub}",
                          "--kv-events-replay-endpoint", f"tcp://*:{replay}") as em:  # fmt: skip
        quiet = start_emulator_plain()
        try:
            agent = start_agent({
                "node": {"id": "n-kv", "roles": ["router", "gpu"]},
                "runtimes": [{"url": em.url, "kv_events": f"tcp://127.0.0.1:{pub}",
                              "kv_events_replay": f"tcp://127.0.0.1:{replay}"}, {"url": quiet.url}],
            }, tmp_path)  # fmt: skip
            try:
                time.sleep(0.5)
                ids = list(range(5000, 5040))
                body = {"model": "demo-llm", "prompt": ids, "max_tokens": 1}
                assert httpx.post(f"{em.url}/v1/completions", json=body, timeout=10).status_code == 200
                want = f'meshd_prefix_index_blocks{{endpoint="{em.url}",kind="events"}} 2.0'
                deadline = time.monotonic() + 10
                text = ""
                while time.monotonic() < deadline and want not in text:
                    text = httpx.get(f"http://{agent.http}/metrics", timeout=5).text
                    time.sleep(0.1)
                assert want in text
                assert f'meshd_prefix_index_blocks{{endpoint="{quiet.url}",kind="none"}} 0.0' in text
                assert "meshd_prefix_index_bytes 200.0" in text
                assert f'meshd_kv_events_total{{endpoint="{em.url}",kind="malformed"}} 0.0' in text
            finally:
                agent.stop()
        finally:
            quiet.stop()


def start_emulator_plain():  # type: ignore[no-untyped-def]
    from agents.emulator.testing import start_emulator

    return start_emulator("--seed", "3")


def test_block_set_evicts_in_exact_lru_order_against_an_ordered_dict() -> None:
    """The set drops the same blocks, in the same order, as an LRU that moves every block it is given to the newest
    end, through repeated and extended prefixes, removals and clears (any cheaper bookkeeping must keep this), and
    matches a prefix as far as it holds its blocks."""
    import random
    from collections import OrderedDict

    rnd = random.Random(7)
    for max_blocks in (1, 5, 64, 1000):
        bs = BlockSet(APPROX, max_blocks)
        ref: OrderedDict[int, None] = OrderedDict()
        prefixes = [[rnd.randrange(1 << 62) for _ in range(rnd.randrange(1, 120))] for _ in range(12)]
        for step in range(1500):
            op = rnd.random()
            if op < 0.8:
                p = rnd.choice(prefixes)
                hashes = p[: rnd.randrange(1, len(p) + 1)] + [rnd.randrange(50) for _ in range(rnd.randrange(3))]
                bs.add(hashes if step % 2 else iter(hashes))  # any iterable, repeats included
                for h in hashes:
                    if h in ref:
                        ref.move_to_end(h)
                    else:
                        ref[h] = None
                while len(ref) > max_blocks:
                    ref.popitem(last=False)
            elif op < 0.98:
                gone = [*rnd.sample(list(ref), min(len(ref), rnd.randrange(4))), rnd.randrange(50)]
                bs.remove(gone)
                for h in gone:
                    ref.pop(h, None)
            else:
                bs.clear()
                ref.clear()
            assert len(bs) == len(ref)
            assert list(bs.blocks) == list(ref), (max_blocks, step)
            p = rnd.choice(prefixes)
            held = next((i for i, h in enumerate(p) if h not in ref), len(p))
            assert bs.match(p) == held
