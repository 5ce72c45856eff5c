"""Asyncio driver of `KVEventStream`: subscribes to one runtime's vLLM-format KV events over ZeroMQ.

A SUB socket receives `[topic, seq, payload]`; when the stream reports a gap, a DEALER socket asks the runtime's
replay endpoint for the missing messages (a REQ socket would accept only the first of the many replies). Like
vLLM's publisher, an endpoint with a wildcard host binds and an explicit address connects; here the subscriber
connects to `tcp://HOST:PORT` and binds `tcp://*:PORT` (for runtimes configured to connect out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import zmq
import zmq.asyncio

from agents.signals.prefixindex import EVENTS, KVEventStream, PrefixIndex, Resync

log = logging.getLogger("infermesh.kvevents")

REPLAY_TIMEOUT_S = 2.0


class KVEventSubscriber:
    def __init__(
        self,
        index: PrefixIndex,
        target_id: str,
        endpoint: str,
        replay_endpoint: str = "",
        topic: str = "",
        ctx: zmq.asyncio.Context | None = None,
        max_blocks: int | None = None,
    ) -> None:
        self.ctx = ctx or zmq.asyncio.Context.instance()
        self.stream = KVEventStream(target_id, index.ensure(target_id, EVENTS, max_blocks))
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.topic = topic.encode()
        self._task: asyncio.Task[None] | None = None
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        if "*" in endpoint:
            self.sub.bind(endpoint)
        else:
            self.sub.connect(endpoint)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"kv-events {self.stream.target_id}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sub.close(0)

    async def _run(self) -> None:
        while True:
            frames = await self.sub.recv_multipart()
            action = self.stream.on_message(frames)
            if isinstance(action, Resync):
                await self._resync(action.start)

    async def _resync(self, start: int) -> None:
        if not self.replay_endpoint:
            self.stream.resync_failed()
            return
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            dealer.connect(self.replay_endpoint)
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            while True:
                if not await dealer.poll(REPLAY_TIMEOUT_S * 1000):
                    log.warning("kv events from %s: replay did not answer; going on", self.stream.target_id)
                    self.stream.resync_failed()
                    return
                frames = await dealer.recv_multipart()
                if len(frames) == 4:  # vLLM 0.3x: [b"", topic, seq, payload]
                    _, _, seq_bytes, payload = frames
                elif len(frames) == 3:  # earlier vLLM: [b"", seq, payload]
                    _, seq_bytes, payload = frames
                else:
                    self.stream.counters.malformed += 1
                    continue
                seq = int.from_bytes(seq_bytes, "big", signed=True)
                self.stream.on_replay(seq, payload)
                if seq < 0 or not payload:
                    return
        finally:
            dealer.close(0)
        # messages that arrived meanwhile wait in the SUB socket's queue and are applied next
