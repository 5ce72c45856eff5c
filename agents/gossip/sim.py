"""Deterministic discrete-event simulation of a SWIM mesh: seeded loss, delay, reordering, partitions, crashes.

The same `Swim` core as in production runs here; only the network is simulated. A seed replays a run exactly.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from agents.gossip.messages import MemberRecord, MemberState, Message, PushPull
from agents.gossip.swim import (
    DegradedChanged,
    MemberEvent,
    Output,
    StreamRequest,
    SummaryEvent,
    Swim,
    SwimConfig,
)


@dataclass(slots=True)
class NetConfig:
    loss: float = 0.0  # probability that one UDP packet is lost
    delay_min: float = 0.0005
    delay_max: float = 0.005  # uniform jitter between min and max reorders packets
    stream_delay: float = 0.002


@dataclass(slots=True)
class Observed:
    """What the simulation saw, for the property checks."""

    dead_at: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> observer -> time declared dead
    suspect_events: int = 0
    summary_at: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    degraded: dict[str, bool] = field(default_factory=dict)
    bytes_out: dict[str, int] = field(default_factory=dict)
    packets: int = 0
    dropped: int = 0


class Simulation:
    def __init__(
        self,
        n: int,
        seed: int,
        *,
        config: SwimConfig | None = None,
        net: NetConfig | None = None,
        bootstrap: bool = True,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.net = net or NetConfig()
        self.now = 0.0
        self.config = config or SwimConfig()
        self.names = [f"n{i}" for i in range(n)]
        self.addrs = [(f"10.{i >> 8 & 255}.{i & 255}.1", 7946) for i in range(n)]
        self.index = {a: i for i, a in enumerate(self.addrs)}
        self.nodes: list[Swim] = []
        self.crashed: set[int] = set()
        self.group: list[int] = [0] * n  # partition id per node; packets cross only within a group
        self.observed = Observed()
        self._q: list[tuple[float, int, int, int, object]] = []
        self._qseq = 0
        self._wake: list[float] = [float("inf")] * n
        self.on_event: Callable[[int, object], None] | None = None
        for i in range(n):
            cfg = SwimConfig(**{k: getattr(self.config, k) for k in self.config.__slots__})
            rng = random.Random(self.rng.random())
            self.nodes.append(Swim(self.names[i], self.addrs[i], config=cfg, rng=rng, now=0))
        if bootstrap:
            records = [MemberRecord(self.names[i], self.addrs[i], 0, MemberState.ALIVE) for i in range(n)]
            for node in self.nodes:
                node.bootstrap(0.0, records)
        for i, node in enumerate(self.nodes):
            self._apply(i, node.start(0.0))
        if not bootstrap:
            for i in range(1, n):
                self._apply(i, self.nodes[i].join(0.0, [self.addrs[0]]))

    # ------------------------------------------------------------------ fault injection

    def crash(self, i: int) -> None:
        self.crashed.add(i)

    def partition(self, groups: list[list[int]]) -> None:
        for gid, members in enumerate(groups):
            for i in members:
                self.group[i] = gid

    def heal(self) -> None:
        self.group = [0] * len(self.nodes)

    def live(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if i not in self.crashed]

    # ------------------------------------------------------------------ event loop

    def _push(self, t: float, kind: int, dst: int, data: object) -> None:
        self._qseq += 1
        heapq.heappush(self._q, (t, self._qseq, kind, dst, data))

    def _apply(self, i: int, out: Output) -> None:
        name = self.names[i]
        for p in out.packets:
            self.observed.packets += 1
            self.observed.bytes_out[name] = self.observed.bytes_out.get(name, 0) + p.size
            dst = self.index.get(p.addr)
            if dst is None or self.rng.random() < self.net.loss:
                self.observed.dropped += 1
                continue
            delay = self.rng.uniform(self.net.delay_min, self.net.delay_max)
            self._push(self.now + delay, 0, dst, (i, p.msgs))
        for s in out.streams:
            self._push(self.now + self.net.stream_delay, 1, i, s)
        for ev in out.events:
            self._observe(i, ev)
        nt = out.next_timer
        if nt is not None and nt < self._wake[i]:
            self._wake[i] = nt
            self._push(nt, 2, i, None)

    def _observe(self, i: int, ev: object) -> None:
        if isinstance(ev, MemberEvent):
            if ev.kind == "dead":
                self.observed.dead_at.setdefault(ev.member.name, {}).setdefault(self.names[i], self.now)
            elif ev.kind in ("alive", "join"):
                self.observed.dead_at.get(ev.member.name, {}).pop(self.names[i], None)
            elif ev.kind == "suspect":
                self.observed.suspect_events += 1
        elif isinstance(ev, SummaryEvent):
            self.observed.summary_at.setdefault((ev.node, ev.version), {}).setdefault(self.names[i], self.now)
        elif isinstance(ev, DegradedChanged):
            self.observed.degraded[self.names[i]] = ev.degraded
        if self.on_event is not None:
            self.on_event(i, ev)

    def _reachable(self, a: int, b: int) -> bool:
        return b not in self.crashed and self.group[a] == self.group[b]

    def run_until(self, t_end: float) -> None:
        q = self._q
        while q and q[0][0] <= t_end:
            t, _, kind, dst, data = heapq.heappop(q)
            self.now = t
            if kind == 2:  # timer wake-up
                if self._wake[dst] != t:
                    continue
                self._wake[dst] = float("inf")
                if dst in self.crashed:
                    continue
                self._apply(dst, self.nodes[dst].tick(t))
            elif kind == 0:  # UDP delivery
                src, msgs = cast(tuple[int, list[Message]], data)
                if not self._reachable(src, dst):
                    self.observed.dropped += 1
                    continue
                self._apply(dst, self.nodes[dst].receive(t, self.addrs[src], msgs))
            else:  # a push/pull initiated by `dst`
                assert isinstance(data, StreamRequest)
                peer = self.index.get(data.addr)
                if peer is None or dst in self.crashed or not self._reachable(dst, peer):
                    continue
                reply, out = self.nodes[peer].handle_push_pull(t, data.push_pull)
                self._apply(peer, out)
                self._apply(dst, self.nodes[dst].push_pull_done(t, data, reply))
        self.now = t_end

    def inject(self, i: int, fn: Callable[[Swim], Output]) -> None:
        """Runs an input on node i at the current time (e.g. `lambda s: s.set_summary(sim.now, b"x")`)."""
        self._apply(i, fn(self.nodes[i]))

    def deliver(self, i: int, src: int, msgs: list[Message]) -> None:
        self._apply(i, self.nodes[i].receive(self.now, self.addrs[src], msgs))

    # ------------------------------------------------------------------ views

    def state_of(self, observer: int, node: int) -> MemberState | None:
        m = self.nodes[observer].members.get(self.names[node])
        return None if m is None else m.state

    def push_pull_of(self, i: int) -> PushPull:
        return self.nodes[i]._local_state(join=False)
