"""What is cached where: a bounded per-target index of KV blocks, by chained block hash (sans-IO).

Two kinds of target:
- `events`: the runtime publishes vLLM-format KV events (`agents.emulator.kvevents` documents the wire format).
  `KVEventStream` turns its messages into index updates, watches the sequence numbers (a gap asks for a replay from
  the first missing one; a sequence number that goes back means the runtime restarted, so the target's blocks are
  dropped), and counts malformed frames instead of failing. The index is then exact up to the replay window.
- `approx`: no events; the blocks of the requests routed there are recorded (what smg's and vllm-router's
  approximate trees do), LRU-bounded by an estimate of the runtime's cache, so old prefixes age out.

Each target's set is bounded (`max_blocks`, oldest first out), so memory is at most about 100 bytes per block held
(`bytes_estimate`). A request's prefix match is the count of its leading block hashes a target holds.

An event-fed target also tells how far behind it is, in tokens: the blocks routed there that its events have not yet
reported stored are prefill still to do (`pending_tokens`), and the time from routing a request to the event that
stores its last block is a prefill observed, from which the target's prefill rate is learnt (`prefill_tok_s`:
tokens over the time beyond the target's fixed per-request delay, itself learnt from requests with little to
prefill). Times come from the index's `clock`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any

import msgpack

log = logging.getLogger("infermesh.prefixindex")

EVENTS = "events"
APPROX = "approx"
BYTES_PER_BLOCK = 100  # an OrderedDict entry holding a 64-bit int key, measured with tracemalloc


MIN_RATE_SAMPLE_TOKENS = 512  # a prefill shorter than this teaches the fixed delay, not the rate
MAX_WATCHED = 256  # requests per target whose prefill is being timed


def _monotonic() -> float:
    return time.monotonic()


class BlockSet:
    """The block hashes one target holds, LRU-ordered and bounded."""

    __slots__ = ("blocks", "capacity", "clock", "fixed_s", "kind", "max_blocks", "max_recent", "pending",
                 "prefill_tok_s", "rate_samples", "recent", "watched")  # fmt: skip

    def __init__(
        self, kind: str, max_blocks: int, max_recent: int = 4096, clock: Callable[[], float] = _monotonic
    ) -> None:
        self.kind = kind
        self.max_blocks = max_blocks
        self.blocks: OrderedDict[int, None] = OrderedDict()
        # Blocks of requests just routed here, before the runtime's events can say they are stored (an event-fed
        # index lags by a prefill): without them a burst sharing a new prefix would scatter. Small and LRU.
        self.max_recent = max_recent
        self.recent: OrderedDict[int, None] = OrderedDict()
        # Routed blocks not yet reported stored: the target's prefill backlog (event-fed targets only).
        self.pending: OrderedDict[int, None] = OrderedDict()
        # last block of a routed request -> (routed at, tokens it had to prefill, backlog ahead of it in tokens)
        self.watched: OrderedDict[int, tuple[float, int, int]] = OrderedDict()
        self.clock = clock
        self.prefill_tok_s: float | None = None  # learnt prefill rate; None until a long prefill was timed
        self.fixed_s: float | None = None  # learnt delay of a request with almost nothing to prefill
        self.rate_samples = 0
        # blocks held when the runtime last had to evict: about what its cache holds (0 = never seen it evict)
        self.capacity = 0

    def __len__(self) -> int:
        return len(self.blocks)

    def add(self, hashes: Iterable[int]) -> None:
        blocks = self.blocks
        pending, watched = self.pending, self.watched
        if not pending and not watched:
            # nothing routed here awaits its events (an approximate target always): the recency moves alone, the
            # loop the per-request cost of a long prompt is made of (an OrderedDict move per block beats every bulk
            # form tried: dict.fromkeys + map(move_to_end), a plain dict's pop + update)
            move = blocks.move_to_end
            for h in hashes:
                if h in blocks:
                    move(h)
                else:
                    blocks[h] = None
        else:
            for h in hashes:
                if h in blocks:
                    blocks.move_to_end(h)
                else:
                    blocks[h] = None
                if pending:
                    pending.pop(h, None)
                if watched:
                    w = watched.pop(h, None)
                    if w is not None:
                        self._timed(*w)
        while len(blocks) > self.max_blocks:
            blocks.popitem(last=False)

    def _timed(self, at: float, tokens: int, ahead: int) -> None:
        """A routed request's last block was stored: its prefill (and the backlog ahead of it) took this long."""
        took = self.clock() - at
        if took <= 0:
            return
        work = tokens + ahead
        if work < MIN_RATE_SAMPLE_TOKENS:
            self.fixed_s = took if self.fixed_s is None else 0.8 * self.fixed_s + 0.2 * took
            return
        rate = work / max(took - (self.fixed_s or 0.0), 0.25 * took)
        self.prefill_tok_s = rate if self.prefill_tok_s is None else 0.7 * self.prefill_tok_s + 0.3 * rate
        self.rate_samples += 1

    def remove(self, hashes: Iterable[int]) -> None:
        blocks = self.blocks
        self.capacity = max(self.capacity, len(blocks))  # the runtime evicts only when its cache is full
        recent = self.recent
        for h in hashes:
            blocks.pop(h, None)
            # an evicted block is gone, whoever routed it: left in `recent`, it would still be matched, and requests
            # would keep going to a target that must prefill their prefix again (misses that look like hits)
            recent.pop(h, None)

    def clear(self) -> None:
        self.blocks.clear()
        self.recent.clear()
        self.pending.clear()
        self.watched.clear()

    def routed(self, hashes: Sequence[int], uncached_tokens: int = 0, block_size: int = 16) -> None:
        recent = self.recent
        for h in hashes:
            if h in recent:
                recent.move_to_end(h)
            else:
                recent[h] = None
        while len(recent) > self.max_recent:
            recent.popitem(last=False)
        if self.kind != EVENTS or not hashes:
            return
        # what this request adds to the target's backlog: its blocks the target does not hold and that are not
        # already on their way there
        ahead = len(self.pending) * block_size
        pending, blocks = self.pending, self.blocks
        for h in hashes:
            if h not in blocks and h not in pending:
                pending[h] = None
        while len(pending) > self.max_recent:
            pending.popitem(last=False)
        last = hashes[-1]
        if last not in blocks and uncached_tokens > 0 and ahead == 0:
            # timed only with nothing pending ahead: a backlog partly done already would make the target look faster
            self.watched[last] = (self.clock(), uncached_tokens, ahead)
            while len(self.watched) > MAX_WATCHED:
                self.watched.popitem(last=False)

    def settle(self) -> None:
        """Nothing is in flight there any more: whatever is still pending was never stored (an aborted, preempted
        or too-short request, or a lost event); forget it, so the backlog does not grow stale."""
        self.pending.clear()
        self.watched.clear()

    def backlog_tokens(self, block_size: int) -> int:
        return len(self.pending) * block_size

    def match(self, hashes: Sequence[int]) -> int:
        """How many of `hashes` (a request's chained block hashes, in order) this target holds as a prefix."""
        blocks, recent = self.blocks, self.recent
        if not recent:  # nothing just routed here (an approximate target never has): the leading run, counted in C
            return len(list(takewhile(blocks.__contains__, hashes)))
        n = 0
        for h in hashes:
            if h not in blocks and h not in recent:
                break
            n += 1
        return n


@dataclass(slots=True)
class StreamCounters:
    messages: int = 0
    events: int = 0
    gaps: int = 0  # sequence jumps seen (messages lost)
    resyncs: int = 0  # replays asked for
    replayed: int = 0  # messages applied from a replay
    out_of_order: int = 0  # repeated sequence numbers ignored
    restarts: int = 0  # the sequence went back: the runtime was restarted
    malformed: int = 0
    cleared: int = 0


@dataclass(slots=True)
class Resync:
    """Ask the runtime's replay socket for every message from `start` on."""

    start: int


class KVEventStream:
    """Sans-IO consumer of one runtime's KV-event messages into its `BlockSet`."""

    def __init__(self, target_id: str, blocks: BlockSet) -> None:
        self.target_id = target_id
        self.blocks = blocks
        self.last_seq: int | None = None
        self.pending_resync: int | None = None  # start of a replay asked for and not yet answered
        self._live_top: int | None = None  # newest live sequence applied while the replay is pending
        self._hole_end = 0  # first live sequence after the hole
        self.counters = StreamCounters()
        self._warned: set[str] = set()

    def _warn_once(self, kind: str, detail: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("kv events from %s: %s (counted; further ones are not logged)", self.target_id, detail)

    def on_message(self, frames: Sequence[bytes]) -> Resync | None:
        """One PUB message `[topic, seq, payload]`; returns a resync to ask for when messages were lost."""
        self.counters.messages += 1
        if len(frames) != 3 or len(frames[1]) != 8:
            self.counters.malformed += 1
            self._warn_once("frames", f"a message of {len(frames)} frames is not [topic, seq(8 bytes), payload]")
            return None
        seq = int.from_bytes(frames[1], "big")
        ref = self._live_top if self.pending_resync is not None else self.last_seq
        action: Resync | None = None
        if ref is not None:
            if seq == ref:
                self.counters.out_of_order += 1
                self._warn_once("order", f"sequence {seq} repeated; ignored")
                return None
            if seq < ref:
                # One PUB connection never reorders, so the publisher started over: a new process whose cache
                # starts empty. Forget the old blocks; unless this is its very first message, replay its history.
                self.counters.restarts += 1
                self._warn_once("restart", f"sequence went back from {ref} to {seq}: the runtime restarted")
                self.blocks.clear()
                self.last_seq = None
                self.pending_resync = self._live_top = None
                if seq > 0:
                    self.counters.resyncs += 1
                    self.pending_resync, self._hole_end, self._live_top = 0, seq + 1, seq
                    return Resync(0)
            elif seq > ref + 1:
                self.counters.gaps += 1
                if self.pending_resync is None:
                    self.counters.resyncs += 1
                    self.pending_resync = ref + 1
                    self._hole_end = seq
                    action = Resync(ref + 1)
        self._apply(frames[2])
        if self.pending_resync is not None:
            self._live_top = seq  # the replay fills the hole below the live messages
        else:
            self.last_seq = seq
        return action

    def on_replay(self, seq: int, payload: bytes) -> None:
        """One replayed message (`seq`, payload); the end marker (`seq` < 0 or empty payload) ends the resync."""
        if self.pending_resync is None:
            return
        if seq < 0 or not payload:
            self._end_resync()
            return
        last = self.last_seq if self.last_seq is not None else -1
        if last < seq < self._hole_end:
            self.counters.replayed += 1
            self._apply(payload)
            self.last_seq = seq

    def resync_failed(self) -> None:
        """The replay did not answer: accept the hole (the index may miss what it held) and go on."""
        if self.pending_resync is not None:
            self._end_resync()

    def _end_resync(self) -> None:
        if self._live_top is not None:
            self.last_seq = self._live_top
        self.pending_resync = self._live_top = None

    def _apply(self, payload: bytes) -> None:
        try:
            batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception as e:  # msgpack raises several types for bad input
            self.counters.malformed += 1
            self._warn_once("payload", f"payload is not msgpack ({type(e).__name__})")
            return
        if not isinstance(batch, list) or len(batch) < 2 or not isinstance(batch[1], list):
            self.counters.malformed += 1
            self._warn_once("batch", "payload is not an event batch [ts, [events]]")
            return
        for ev in batch[1]:
            self._event(ev)

    def _event(self, ev: Any) -> None:
        # vLLM 0.3x sends maps tagged by "type"; earlier versions tagged arrays ([tag, field, ...])
        hashes: Any
        if isinstance(ev, dict) and isinstance(ev.get("type"), str):
            kind, hashes = ev["type"], ev.get("block_hashes")
        elif isinstance(ev, list) and ev and isinstance(ev[0], str):
            kind, hashes = ev[0], ev[1] if len(ev) >= 2 else None
        else:
            self.counters.malformed += 1
            self._warn_once("event", "an event is neither a tagged map nor a tagged array")
            return
        if kind == "BlockStored" and _hashes(hashes):
            self.blocks.add(_ints(hashes))
        elif kind == "BlockRemoved" and _hashes(hashes):
            self.blocks.remove(_ints(hashes))
        elif kind == "AllBlocksCleared":
            self.counters.cleared += 1
            self.blocks.clear()
        else:
            self.counters.malformed += 1
            self._warn_once("event", f"unknown or malformed event {kind[:40]!r}")
            return
        self.counters.events += 1


def _hashes(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(h, int | bytes) for h in value)


def _ints(value: list[int | bytes]) -> list[int]:
    # vLLM sends 64-bit ints by default, raw digests when VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES is off: keep 8 bytes
    return [h if isinstance(h, int) else int.from_bytes(h[-8:], "big") for h in value]


@dataclass(slots=True)
class PrefixIndex:
    """Every target's `BlockSet`; the one object a router (or agent) consults per request."""

    max_blocks: int = 200_000
    targets: dict[str, BlockSet] = field(default_factory=dict)
    clock: Callable[[], float] = _monotonic  # times the event-fed targets' prefills (a simulator passes its own)

    def ensure(self, target_id: str, kind: str, max_blocks: int | None = None) -> BlockSet:
        bs = self.targets.get(target_id)
        if bs is None or bs.kind != kind:
            bs = self.targets[target_id] = BlockSet(kind, max_blocks or self.max_blocks, clock=self.clock)
        return bs

    def drop(self, target_id: str) -> None:
        self.targets.pop(target_id, None)

    def kind(self, target_id: str) -> str:
        bs = self.targets.get(target_id)
        return bs.kind if bs is not None else ""

    def match(self, target_id: str, hashes: Sequence[int]) -> int:
        bs = self.targets.get(target_id)
        return bs.match(hashes) if bs is not None and hashes else 0

    def note_routed(
        self, target_id: str, hashes: Sequence[int], uncached_tokens: int = 0, block_size: int = 16
    ) -> None:
        """A request went to `target_id`: an approximate target is assumed to hold its blocks from now on; an
        event-fed one counts them pending until its events report them stored (and times that prefill)."""
        bs = self.targets.get(target_id)
        if bs is None:
            bs = self.ensure(target_id, APPROX)
        if bs.kind == APPROX and hashes:
            bs.add(hashes)
        elif hashes:
            bs.routed(hashes, uncached_tokens, block_size)

    @property
    def blocks(self) -> int:
        return sum(len(b) + len(b.recent) + len(b.pending) for b in self.targets.values())

    @property
    def bytes_estimate(self) -> int:
        return self.blocks * BYTES_PER_BLOCK


_DEFAULT_INDEX = PrefixIndex()


def default_index() -> PrefixIndex:
    """The process-wide index: a router's KV-event subscribers feed it and its cache-aware strategies read it."""
    return _DEFAULT_INDEX
