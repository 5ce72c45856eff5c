"""Deterministic discrete-event simulation of a SWIM mesh: seeded loss, delay, reordering, partitions, crashes.

The same `Swim` core as in production runs here; only the network is simulated. A seed replays a run exactly.
"""

from __future__ import annotations

import heapq
import math
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

    def restart(self, i: int, seeds: list[int]) -> None:
        """Bring a crashed node back as a fresh process (incarnation 0, empty view) joining through `seeds`."""
        self.crashed.discard(i)
        cfg = SwimConfig(**{k: getattr(self.config, k) for k in self.config.__slots__})
        self.nodes[i] = Swim(
            self.names[i], self.addrs[i], config=cfg, rng=random.Random(self.rng.random()), now=self.now
        )
        self._wake[i] = float("inf")
        self._apply(i, self.nodes[i].start(self.now))
        self._apply(i, self.nodes[i].join(self.now, [self.addrs[s] for s in seeds]))

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


# ---------------------------------------------------------------------- randomized fault schedules


@dataclass(slots=True)
class ChaosReport:
    seed: int
    n: int
    steps: int
    crashes: int = 0
    restarts: int = 0
    partitions: int = 0
    loss_changes: int = 0
    violations: list[str] = field(default_factory=list)


def detection_bound(cfg: SwimConfig, n: int, awareness: int = 0) -> float:
    """How long a crashed node may stay undeclared at a live observer: the observer's own round-robin reaches it
    within n probe intervals, then the maximum suspicion timeout, plus dissemination. Lifeguard stretches an
    observer's probe interval by its local health score (`awareness`, raised by its own missed acks and nacks, e.g.
    while it is cut off), so the bound stretches with the highest score the observer had meanwhile."""
    t_min = cfg.suspicion_mult * max(1.0, math.log10(n)) * cfg.probe_interval
    return (n * (awareness + 1) * cfg.probe_interval + cfg.suspicion_max_timeout_mult * t_min
            + 4 * cfg.probe_interval + 2.0)  # fmt: skip


def chaos(seed: int, *, steps: int = 40, step_s: float = 1.0, quiet_steps: int = 20) -> ChaosReport:
    """One seeded run: `steps` steps of random crashes, restarts, partitions, heals and loss changes (up to 10%),
    then `quiet_steps` without faults. After every step the invariants are checked:

    - every live node sees itself alive;
    - no observer's view of a member goes back to an older incarnation (a restarted observer starts afresh);
    - completeness: a node crashed for longer than `detection_bound` is dead (or gone) at every live observer;
    - accuracy: once the mesh has been whole (healed, no loss, everyone up) for `detection_bound`, every live node
      is alive at every live observer, and nobody is degraded.
    """
    rng = random.Random(seed)
    n = rng.choice([4, 5, 6, 8])
    cfg = SwimConfig(probe_interval=0.5, probe_timeout=0.25, push_pull_interval=10.0, reconnect_interval=2.0)
    sim = Simulation(n, seed, config=cfg, net=NetConfig(loss=0.0, delay_min=0.001, delay_max=0.02))
    report = ChaosReport(seed, n, steps + quiet_steps)
    bound = detection_bound(cfg, n)
    crashed_at: dict[int, float] = {}
    started_at = [0.0] * n
    views: dict[tuple[int, str], int] = {}
    whole_since = 0.0
    awareness: list[list[tuple[float, int]]] = [[] for _ in range(n)]  # per node: (time, local health score)

    def watch(i: int, ev: object) -> None:
        if isinstance(ev, MemberEvent):
            key = (i, ev.member.name)
            if ev.member.incarnation < views.get(key, 0):
                report.violations.append(
                    f"t={sim.now:.1f}: {sim.names[i]} saw {ev.member.name} go back to incarnation "
                    f"{ev.member.incarnation} from {views[key]}"
                )
            views[key] = ev.member.incarnation

    sim.on_event = watch
    for step in range(report.steps):
        faulty = step < steps
        if faulty and rng.random() < 0.5:
            live, down = sim.live(), sorted(sim.crashed)
            r = rng.random()
            if r < 0.25 and len(live) > n // 2 + 1:
                victim = rng.choice(live)
                sim.crash(victim)
                crashed_at[victim] = sim.now
                report.crashes += 1
            elif r < 0.5 and down:
                back = rng.choice(down)
                sim.restart(back, [rng.choice(sim.live())])
                crashed_at.pop(back, None)
                started_at[back] = sim.now
                for key in [k for k in views if k[0] == back or k[1] == sim.names[back]]:
                    del views[key]  # a fresh process: its own view and its incarnation start over
                report.restarts += 1
            elif r < 0.7:
                members = list(range(n))
                rng.shuffle(members)
                cut = rng.randrange(1, n)
                sim.partition([members[:cut], members[cut:]])
                report.partitions += 1
            elif r < 0.85:
                sim.heal()
            else:
                sim.net.loss = rng.choice([0.0, 0.02, 0.05, 0.1])
                report.loss_changes += 1
        if not faulty and step == steps:
            sim.heal()
            sim.net.loss = 0.0
            for back in sorted(sim.crashed):
                sim.restart(back, [rng.choice(sim.live())])
                crashed_at.pop(back, None)
                started_at[back] = sim.now
                for key in [k for k in views if k[0] == back or k[1] == sim.names[back]]:
                    del views[key]
                report.restarts += 1
            whole_since = sim.now
        sim.run_until(sim.now + step_s)
        live = sim.live()
        for i in live:
            me = sim.nodes[i].members[sim.names[i]]
            if me.state != MemberState.ALIVE:
                report.violations.append(f"t={sim.now:.1f}: {sim.names[i]} does not see itself alive")
        for i in live:
            awareness[i].append((sim.now, sim.nodes[i].awareness))
        for c, t in crashed_at.items():
            for i in live:
                since = max(t, started_at[i])
                peak = max((a for when, a in awareness[i] if when >= since), default=0)
                if sim.now - since <= detection_bound(cfg, n, peak):
                    continue
                state = sim.state_of(i, c)
                if state is not None and state not in (MemberState.DEAD, MemberState.LEFT):
                    report.violations.append(
                        f"t={sim.now:.1f}: {sim.names[c]} crashed at {t:.1f} is still {state.name} at {sim.names[i]}"
                    )
        if not faulty and sim.now - whole_since > bound:
            for i in live:
                if sim.nodes[i].degraded:
                    report.violations.append(f"t={sim.now:.1f}: {sim.names[i]} still degraded after healing")
                for j in live:
                    state = sim.state_of(i, j)
                    if state != MemberState.ALIVE:
                        report.violations.append(
                            f"t={sim.now:.1f}: {sim.names[j]} is {state.name if state else 'unknown'} at "
                            f"{sim.names[i]} {sim.now - whole_since:.0f}s after the mesh became whole"
                        )
        if report.violations:
            break
    return report
