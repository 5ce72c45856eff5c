"""Our KV-event consumer against a real vLLM (its CPU build, the `real_vllm` session fixture), and the emulator's
event layout against the one vLLM actually sends."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import msgpack
import zmq
import zmq.asyncio

from agents.emulator.kvcache import AllBlocksCleared, BlockRemoved, BlockStored
from agents.signals.prefixindex import PrefixIndex
from agents.signals.runtime.kvevents import KVEventSubscriber


async def test_the_index_follows_a_real_vllm_and_the_emulator_speaks_its_layout(real_vllm: Any) -> None:
    ctx = zmq.asyncio.Context()
    index = PrefixIndex()
    sub = KVEventSubscriber(index, real_vllm.url, real_vllm.kv_events_endpoint, ctx=ctx)
    raw = ctx.socket(zmq.SUB)  # a second subscriber keeps the raw frames for the layout comparison
    raw.setsockopt(zmq.SUBSCRIBE, b"")
    raw.connect(real_vllm.kv_events_endpoint)
    sub.start()
    try:
        await asyncio.sleep(0.5)  # the subscriptions reach the publisher
        prompt = uuid.uuid4().hex + " " + " ".join(f"block{i} of the mesh" for i in range(60))
        async with httpx.AsyncClient(timeout=120) as c:
            r = await c.post(real_vllm.url + "/v1/completions",
                             json={"model": real_vllm.model, "prompt": prompt, "max_tokens": 2})  # fmt: skip
            assert r.status_code == 200
        deadline = time.monotonic() + 20
        blocks = index.targets[real_vllm.url]
        while len(blocks) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(blocks) > 0, sub.stream.counters
        c = sub.stream.counters
        assert c.malformed == 0 and c.gaps == 0 and c.events > 0
        stored = None
        while stored is None and await raw.poll(2000):
            _topic, _seq, payload = await raw.recv_multipart()
            for ev in msgpack.unpackb(payload, raw=False, strict_map_key=False)[1]:
                if isinstance(ev, dict) and ev.get("type") == "BlockStored":
                    stored = ev
        assert stored is not None
        ours = BlockStored([1], None, [1] * 16, 16).wire()
        assert list(ours) == list(stored)[: len(ours)]  # same tag, same fields in the same order
        assert set(BlockRemoved([1]).wire()) <= {"type", "block_hashes", "medium", "group_idx", "locality",
                                                 "ownership"}  # fmt: skip
        assert AllBlocksCleared().wire() == {"type": "AllBlocksCleared"}
    finally:
        await sub.close()
        raw.close(0)
        ctx.term()
