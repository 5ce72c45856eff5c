"""KV-cache events in vLLM's wire format (vllm/distributed/kv_events.py, `ZmqEventPublisher`).

A ZeroMQ PUB socket sends one multipart message per engine step that changed the cache: `[topic, seq, payload]`,
where `seq` is a 64-bit big-endian counter starting at 0 and `payload` is msgpack of the `EventBatch` array
`[ts, [event, ...]]`, each event a map tagged by `type`, fields in vLLM's order (vLLM 0.3x: `{"type":
"BlockStored", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name"}`,
`{"type": "BlockRemoved", "block_hashes", "medium"}`, `{"type": "AllBlocksCleared"}`). A ROUTER replay socket
answers a request `[identity, b"", start seq (8 bytes)]` with every buffered message from there on,
`[identity, b"", topic, seq, payload]` each, then the end marker `[identity, b"", b"", seq=-1, b""]`.

As in vLLM, an endpoint with a wildcard host (`tcp://*:5557`) or an ipc/inproc address binds, and an explicit
address connects (the subscriber binds). The replay endpoint always binds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable

import msgpack
import zmq
import zmq.asyncio

from agents.emulator.kvcache import KVEvent

log = logging.getLogger("infermesh.emulator.kvevents")

END_SEQ = (-1).to_bytes(8, "big", signed=True)


def encode_batch(events: Iterable[KVEvent], ts: float | None = None) -> bytes:
    return msgpack.packb([time.time() if ts is None else ts, [e.wire() for e in events]], use_bin_type=True)


def _binds(endpoint: str) -> bool:
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class KVEventPublisher:
    """Publishes event batches and serves replays from a bounded buffer of the last `buffer_steps` messages."""

    def __init__(self, endpoint: str, replay_endpoint: str = "", topic: str = "", buffer_steps: int = 10_000) -> None:
        self.ctx = zmq.asyncio.Context()
        self.topic = topic.encode()
        self.seq = 0
        self.buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.pub.setsockopt(zmq.LINGER, 0)
        if _binds(endpoint):
            self.pub.bind(endpoint)
        else:
            self.pub.connect(endpoint)
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint
        self.replay: zmq.asyncio.Socket | None = None
        self.replay_endpoint = ""
        if replay_endpoint:
            self.replay = self.ctx.socket(zmq.ROUTER)
            self.replay.setsockopt(zmq.LINGER, 0)
            self.replay.bind(replay_endpoint)
            self.replay_endpoint = self.replay.getsockopt_string(zmq.LAST_ENDPOINT)
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def start(self) -> None:
        if self.replay is not None:
            self._task = asyncio.get_running_loop().create_task(self._serve_replay(), name="kv-events-replay")

    def publish(self, events: list[KVEvent]) -> None:
        if not events:
            return
        payload = encode_batch(events)
        seq = self.seq
        self.seq += 1
        self.buffer.append((seq, payload))
        try:
            self.pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload], flags=zmq.NOBLOCK)
            self.published += 1
        except zmq.Again:
            pass  # a slow subscriber loses messages (as with a PUB socket's high-water mark) and replays them

    async def _serve_replay(self) -> None:
        assert self.replay is not None
        while True:
            frames = await self.replay.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                log.warning("kv-events replay: malformed request of %d frames ignored", len(frames))
                continue
            client, _, start_bytes = frames
            start = int.from_bytes(start_bytes, "big")
            for seq, payload in list(self.buffer):
                if seq >= start:
                    await self.replay.send_multipart([client, b"", self.topic, seq.to_bytes(8, "big"), payload])
            await self.replay.send_multipart([client, b"", b"", END_SEQ, b""])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.pub.close(0)
        if self.replay is not None:
            self.replay.close(0)
        self.ctx.term()
