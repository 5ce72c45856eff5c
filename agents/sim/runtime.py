"""An event-level model of one runtime (a GPU or MIG slice running the emulator's continuous-batching engine).

The emulator's `EngineCore` runs one iteration per decode step (milliseconds), far too many events for a fleet. The
model here keeps the engine's timing rules but advances only at arrivals and completions:

- a decode step for `b` sequences holding `ctx` KV tokens takes `profile.decode_step_s(b, ctx)` (the engine's own
  formula and the `gpu_profiles.md` calibration in `agents.emulator.profiles`), divided by the thermal speed factor;
- every running sequence gains one token per step, so a shared counter `v` (tokens per sequence so far) finishes
  each sequence when `v` reaches its start + its output length: one heap entry per first token and per completion;
- a newly admitted prompt is prefilled at `profile.prefill_tok_s` and stalls the batch meanwhile (chunked prefill
  shares the step's token budget, so decodes wait for it); as the engine schedules at iteration boundaries, a prompt
  reaching a decoding batch starts after the step in progress, and one reaching an empty batch gets its first token
  after its prefill plus `profile.ttft_fixed_s` (the engine's first iteration), not after a decode step;
- admission is FCFS while batch slots (`max_num_seqs`) and KV blocks for prompt + output allow; the KV for the
  whole request is reserved at admission, so there is no preemption (the engine preempts; the model queues instead).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

from agents.emulator.profiles import GpuProfile

FIRST, DONE = 0, 1
_EPS = 1e-6  # tokens: float slack when the counter reaches a threshold at the predicted time


class Copy:
    """One copy of a request sent to one node (a hedge or a retry is another copy)."""

    __slots__ = (
        "admitted_at",
        "arrived_at",
        "cancelled",
        "failed",
        "finished_at",
        "first_at",
        "node",
        "noted",
        "owd",
        "req",
        "reserve",
        "seq",
        "v0",
    )

    def __init__(self, req: object, node: Node, owd: float, seq: int) -> None:
        self.req = req
        self.node = node
        self.owd = owd  # one-way delay router <-> node (seconds)
        self.seq = seq
        self.arrived_at = -1.0
        self.admitted_at = -1.0
        self.first_at = -1.0
        self.finished_at = -1.0  # node time of the last token
        self.v0 = 0.0
        self.reserve = 0
        self.cancelled = False
        self.failed = False
        self.noted = False  # the router has released it from its in-flight count


@dataclass(slots=True)
class GpuClass:
    """Nodes of one GPU type (or MIG slice) share a profile, a price and the accounting of their busy time."""

    index: int
    name: str  # "h100" or "h100-mig-3g.40gb"
    gpu_type: str
    profile: GpuProfile
    max_num_seqs: int
    price_per_hour: float
    cost_per_mtok: float
    nodes: int = 0
    busy_s: float = 0.0
    occupancy_s: float = 0.0  # integral of running / max_num_seqs
    bins: list[float] | None = None  # busy seconds per output bin
    bin_s: float = 10.0


class Node:
    __slots__ = (
        "alive",
        "busy_since",
        "cell",
        "cls",
        "ewma_lat",
        "ewma_ttft",
        "gen",
        "heap",
        "idx",
        "kv_cap",
        "kv_used",
        "last_pub",
        "last_t",
        "node_id",
        "period",
        "prefill_rate",
        "profile",
        "pub_pending",
        "running",
        "speed",
        "stall_until",
        "subs",
        "subs_local",
        "subs_remote",
        "sum_prompt",
        "sum_v0",
        "v",
        "version",
        "waiting",
        "waiting_n",
        "zone",
    )

    def __init__(self, idx: int, node_id: str, cell: int, cls: GpuClass, period: float) -> None:
        self.idx = idx
        self.node_id = node_id
        self.cell = cell
        self.cls = cls
        self.profile = cls.profile
        self.prefill_rate = cls.profile.prefill_tok_s
        self.kv_cap = cls.profile.kv_tokens
        self.alive = True
        self.speed = 1.0
        self.v = 0.0
        self.last_t = 0.0
        self.stall_until = 0.0
        self.running = 0
        self.kv_used = 0
        self.sum_prompt = 0
        self.sum_v0 = 0.0
        self.heap: list[tuple[float, int, int, Copy]] = []
        self.waiting: deque[Copy] = deque()
        self.waiting_n = 0
        self.gen = 0
        self.ewma_lat = 0.0
        self.ewma_ttft = 0.0
        self.version = 0
        self.pub_pending = False
        self.last_pub = -1e9
        self.period = period
        self.subs: tuple[int, ...] = ()  # indices of the routers that track it
        self.subs_local: tuple[object, ...] = ()  # those routers, its own cell's ...
        self.subs_remote: tuple[object, ...] = ()  # ... and the other cells'
        self.busy_since = -1.0
        self.zone = f"cell-{cell}"

    # -- time ------------------------------------------------------------------------------------------------------
    def step_s(self) -> float:
        b = self.running
        ctx = self.sum_prompt + b * self.v - self.sum_v0
        return self.profile.decode_step_s(b, int(ctx)) / self.speed

    def advance(self, t: float) -> None:
        last = self.last_t
        if t <= last:
            return
        if self.running:
            start = self.stall_until if self.stall_until > last else last
            if t > start:
                self.v += (t - start) / self.step_s()
            self.cls.occupancy_s += (t - last) * self.running / self.cls.max_num_seqs
        self.last_t = t

    def next_wake(self) -> float:
        heap = self.heap
        while heap and heap[0][3].cancelled:
            heapq.heappop(heap)
        if not heap:
            return float("inf")
        base = self.stall_until if self.stall_until > self.last_t else self.last_t
        left = heap[0][0] - self.v
        return base + (left * self.step_s() if left > 0 else 0.0)

    # -- requests ----------------------------------------------------------------------------------------------------
    def arrive(self, c: Copy, t: float) -> None:
        """A copy reached this (alive) node at `t`; the caller advanced the node to `t`."""
        c.arrived_at = t
        c.reserve = c.req.prompt + c.req.out  # type: ignore[attr-defined]
        if not self.waiting_n and self._fits(c):
            self._admit(c, t)
        else:
            self.waiting.append(c)
            self.waiting_n += 1

    def _fits(self, c: Copy) -> bool:
        return self.running < self.cls.max_num_seqs and self.kv_used + c.reserve <= self.kv_cap

    def _admit(self, c: Copy, t: float) -> None:
        prompt: int = c.req.prompt  # type: ignore[attr-defined]
        prefill = prompt / (self.prefill_rate * self.speed)
        if self.stall_until > t:
            start = self.stall_until  # a prefill iteration is under way: this one's prefill follows it
        elif self.running:
            # The engine schedules at iteration boundaries: a request reaching a decoding batch waits for the step
            # in progress (the counter's fractional part is how far into it the batch is).
            frac = self.v - math.floor(self.v)
            start = t + ((1.0 - frac) * self.step_s() if frac > _EPS else 0.0)
        else:
            # An empty batch: the engine's first iteration is the prefill plus its fixed cost and yields the first
            # token; the counter charges one decode step after the stall, so the stall carries the difference.
            start = t
            prefill += (self.profile.ttft_fixed_s - self.profile.decode_step_s(1, prompt)) / self.speed
            if prefill < 0.0:
                prefill = 0.0
        if self.running == 0:
            self.busy_since = t
        self.running += 1
        self.kv_used += c.reserve
        self.stall_until = start + prefill
        v = self.v
        c.v0 = v
        c.admitted_at = t
        self.sum_prompt += prompt
        self.sum_v0 += v
        heapq.heappush(self.heap, (v + 1.0, FIRST, c.seq, c))
        heapq.heappush(self.heap, (v + c.req.out, DONE, c.seq, c))  # type: ignore[attr-defined]

    def admit_waiting(self, t: float) -> None:
        w = self.waiting
        while w:
            c = w[0]
            if c.cancelled:
                w.popleft()
                continue
            if not self._fits(c):
                break
            w.popleft()
            self.waiting_n -= 1
            self._admit(c, t)

    def due(self, t: float) -> list[tuple[int, Copy]]:
        """Pop the first tokens and completions reached by `t` (the caller advanced to `t`)."""
        out: list[tuple[int, Copy]] = []
        heap = self.heap
        limit = self.v + _EPS
        while heap and heap[0][0] <= limit:
            _, kind, _, c = heapq.heappop(heap)
            if c.cancelled:
                continue
            if kind == DONE:
                self._release(c, t)
            out.append((kind, c))
        return out

    def _release(self, c: Copy, t: float) -> None:
        self.running -= 1
        self.kv_used -= c.reserve
        self.sum_prompt -= c.req.prompt  # type: ignore[attr-defined]
        self.sum_v0 -= c.v0
        if self.running == 0:
            self._idle(t)

    def _idle(self, t: float) -> None:
        cls = self.cls
        start = self.busy_since
        cls.busy_s += t - start
        bins = cls.bins
        if bins is not None:
            _add_interval(bins, cls.bin_s, start, t)
        self.busy_since = -1.0
        if not self.heap:  # nothing pending: restart the counter so it never grows large
            self.v = 0.0
            self.sum_v0 = 0.0

    def cancel(self, c: Copy, t: float) -> None:
        """Drop a copy wherever it is (an abort from the router); the caller advanced the node to `t`."""
        if c.cancelled or c.failed:
            return
        c.cancelled = True
        if c.admitted_at >= 0:
            self._release(c, t)
        else:
            self.waiting_n -= 1

    def fail(self, t: float) -> list[Copy]:
        """The node stops: every copy on it is lost. Returns them."""
        running = {c.seq: c for *_, c in self.heap if not c.cancelled}  # two entries per copy
        lost = [*running.values(), *(c for c in self.waiting if not c.cancelled)]
        if self.running:
            self._idle(t)
        for c in lost:
            c.failed = True
        self.heap.clear()
        self.waiting.clear()
        self.waiting_n = 0
        self.running = 0
        self.kv_used = 0
        self.sum_prompt = 0
        self.sum_v0 = 0.0
        self.v = 0.0
        self.stall_until = t
        self.alive = False
        return lost

    def close(self, t: float) -> None:
        """End of the run: account the busy time still open."""
        self.advance(t)
        if self.running:
            self._idle(t)


def _add_interval(bins: list[float], width: float, start: float, end: float) -> None:
    i = int(start / width)
    n = len(bins)
    while start < end and i < n:
        edge = (i + 1) * width
        stop = edge if edge < end else end
        bins[i] += stop - start
        start = stop
        i += 1
