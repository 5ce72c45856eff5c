"""Sans-IO SWIM membership core with Lifeguard (local health, dynamic suspicion, buddy system).

Every entry point takes `now` (seconds, any monotonic origin) plus an input and returns an `Output`: packets to
send, push/pull exchanges to run over TCP, events, and the time of the next timer. Randomness comes from an
injected `random.Random`, so a seed replays a run exactly.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agents.gossip.broadcast import BroadcastQueue
from agents.gossip.codec import MAX_SUMMARY_BYTES, PACKET_OVERHEAD, encode_message
from agents.gossip.messages import (
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    MemberRecord,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    Summary,
    Suspect,
)

U32 = 0xFFFFFFFF


@dataclass(slots=True)
class SwimConfig:
    probe_interval: float = 0.5
    probe_timeout: float = 0.25
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 5
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_dead: float = 10.0  # keep gossiping to a freshly dead node so that it can learn it and refute
    push_pull_interval: float = 30.0
    reconnect_interval: float = 10.0  # push/pull with a dead (not left) member: how partitions heal
    dead_reap_after: float = 3600.0
    awareness_max: int = 8
    lifeguard: bool = True  # off: fixed timeouts, no nacks, suspicion timeout fixed at its minimum
    udp_budget: int = 1400
    inline_summary_limit: int = 512  # larger summaries spread as digests and are fetched over TCP
    degraded_fraction: float = 0.5  # local-only when at least this share of the mesh is unreachable

    def validate(self) -> None:
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("probe_timeout must be shorter than probe_interval")
        for name in ("probe_interval", "probe_timeout", "gossip_interval", "push_pull_interval", "reconnect_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 < self.degraded_fraction <= 1:
            raise ValueError("degraded_fraction must be in (0, 1]")
        if self.udp_budget < 256:
            raise ValueError("udp_budget must be at least 256 bytes")


@dataclass(slots=True)
class Member:
    name: str
    addr: Addr
    incarnation: int
    state: MemberState
    meta: bytes = b""
    state_change: float = 0.0

    def record(self) -> MemberRecord:
        return MemberRecord(self.name, self.addr, self.incarnation, self.state, self.meta)


@dataclass(frozen=True, slots=True)
class Packet:
    addr: Addr
    msgs: list[Message]
    size: int  # encoded size without encryption overhead


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A push/pull the driver must run over TCP; `purpose` is join | sync | reconnect | fetch."""

    addr: Addr
    push_pull: PushPull
    purpose: str


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: str  # join | update | suspect | alive | dead | left
    member: MemberRecord
    at: float


@dataclass(frozen=True, slots=True)
class ProbeRtt:
    node: str
    rtt: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class SummaryEvent:
    node: str
    version: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DegradedChanged:
    degraded: bool
    reachable: int
    total: int


Event = MemberEvent | ProbeRtt | SummaryEvent | DegradedChanged


@dataclass(slots=True)
class Output:
    packets: list[Packet] = field(default_factory=list)
    streams: list[StreamRequest] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    next_timer: float | None = None


@dataclass(slots=True)
class Stats:
    probes: int = 0
    probe_failures: int = 0
    indirect_probes: int = 0
    suspicions_raised: int = 0  # suspicions this node started from its own failed probes
    suspicions_refuted: int = 0  # members we suspected that came back alive with a newer incarnation
    self_refutes: int = 0  # times this node was suspected or declared dead and refuted it
    false_positives: int = 0  # times this live node learnt that it had been declared dead
    packets_out: int = 0
    bytes_out: int = 0
    messages_in: int = 0


class _Suspicion:
    """Lifeguard dynamic suspicion: timeout falls from max to min as k independent confirmations arrive."""

    __slots__ = ("confirmers", "k", "last_chance", "n", "start", "t_max", "t_min", "token")

    def __init__(self, source: str, k: int, t_min: float, t_max: float, start: float, token: int) -> None:
        self.confirmers = {source}
        self.k = k
        self.n = 0
        self.t_min = t_min
        self.t_max = t_max
        self.start = start
        self.token = token
        self.last_chance = False

    def timeout(self) -> float:
        if self.k < 1:
            return self.t_min
        frac = math.log(self.n + 1) / math.log(self.k + 1)
        return max(self.t_min, self.t_max - frac * (self.t_max - self.t_min))

    def confirm(self, source: str) -> bool:
        if self.n >= self.k or source in self.confirmers:
            return False
        self.confirmers.add(source)
        self.n += 1
        return True


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    sent: float
    acked: bool = False
    direct: bool = False  # answered by the target itself (not through a relay)
    relayed: bool = False  # indirect probes went out: an ack may come through a relay from now on
    expected_nacks: int = 0
    nacks: int = 0


LINK_WINDOW = 20  # direct probes per peer that loss is measured over
LINK_RTT_ALPHA = 0.3


@dataclass(slots=True)
class LinkStats:
    """This node's measured link to one peer: the outcome of its last direct probes (answered directly before the
    probe period ended, or not) and a moving average of their round-trip times."""

    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=LINK_WINDOW))
    rtt: float | None = None  # seconds, EWMA of direct acks

    @property
    def loss(self) -> float | None:
        if not self.outcomes:
            return None
        return 1.0 - sum(self.outcomes) / len(self.outcomes)


@dataclass(slots=True)
class _Relay:
    orig_seq: int
    requester: Addr
    want_nack: bool
    done: bool = False


class Swim:
    """One node's membership view and protocol state."""

    def __init__(
        self, name: str, addr: Addr, *, config: SwimConfig | None = None, rng: random.Random, now: float,
        meta: bytes = b"",
    ) -> None:  # fmt: skip
        self.config = config or SwimConfig()
        self.config.validate()
        self.name = name
        self.addr = addr
        self.rng = rng
        self.stats = Stats()
        self.ack_payload = b""
        self.awareness = 0
        self.leaving = False
        self.degraded = False
        self.members: dict[str, Member] = {name: Member(name, addr, 0, MemberState.ALIVE, meta, now)}
        self._counts = {s: 0 for s in MemberState}
        self._counts[MemberState.ALIVE] = 1
        self.summaries: dict[str, tuple[int, bytes]] = {}
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._seq = rng.randrange(U32)
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self.links: dict[str, LinkStats] = {}  # measured by direct probes: loss and RTT per peer
        self._suspicions: dict[str, _Suspicion] = {}
        self._timers: list[tuple[float, int, str, Any]] = []
        self._timer_seq = 0
        self._broadcasts = BroadcastQueue(self.config.retransmit_mult)
        self._out = Output()
        self._seeds: list[Addr] = []
        self._pending_fetch: set[str] = set()
        self._joined = True
        self._join_backoff = 0.5
        self._last_eager = -1e9
        self._started = False

    # ------------------------------------------------------------------ public inputs

    def start(self, now: float) -> Output:
        """Arms the periodic timers; call once, before or after `join`."""
        if not self._started:
            self._started = True
            cfg = self.config
            # Random phases keep a cluster started in lockstep (tests, simulation) from probing in lockstep.
            self._at(now + self.rng.uniform(0, cfg.probe_interval), "probe", None)
            self._at(now + self.rng.uniform(0, cfg.gossip_interval), "gossip", None)
            self._at(now + self.rng.uniform(0.5, 1.0) * cfg.push_pull_interval, "pushpull", None)
            self._at(now + self.rng.uniform(0.5, 1.0) * cfg.reconnect_interval, "reconnect", None)
        return self._flush()

    def join(self, now: float, seeds: list[Addr]) -> Output:
        """Push/pull full state with each seed over TCP; a seed that answers makes us known to the mesh."""
        self._seeds = [s for s in seeds if s != self.addr]
        self._joined = not self._seeds
        self._join_backoff = 0.5
        self._t_rejoin(now, None)
        return self._flush()

    def _t_rejoin(self, now: float, _: Any) -> None:
        """Until one seed has answered, keep trying all of them with backoff (seeds may start after us)."""
        if self._joined or self.leaving:
            return
        for s in self._seeds:
            self._out.streams.append(StreamRequest(s, self._local_state(join=True), "join"))
        self._at(now + self._join_backoff, "rejoin", None)
        self._join_backoff = min(self._join_backoff * 2, self.config.reconnect_interval)

    def leave(self, now: float) -> Output:
        """Graceful leave: announce our own death; members mark us `left` and do not wait for a timeout."""
        self.leaving = True
        me = self.members[self.name]
        msg = Dead(me.incarnation, self.name, self.name)
        self._on_dead(now, msg)
        return self._flush()

    def bootstrap(self, now: float, records: list[MemberRecord]) -> None:
        """Installs a known membership without gossiping it (simulations; a restart from a saved view)."""
        for r in records:
            if r.name == self.name or r.name in self.members:
                continue
            self.members[r.name] = Member(r.name, r.addr, r.incarnation, r.state, r.meta, now)
            self._counts[r.state] += 1
            self._probe_order.append(r.name)
        self.rng.shuffle(self._probe_order)
        self._check_degraded()
        self._out.events.clear()

    def set_meta(self, now: float, meta: bytes) -> Output:
        me = self.members[self.name]
        me.meta = meta
        me.incarnation = (me.incarnation + 1) & U32
        self._queue_alive(me)
        return self._flush()

    def set_summary(self, now: float, payload: bytes) -> Output:
        """Publish a new version of this node's state summary."""
        if len(payload) > MAX_SUMMARY_BYTES:
            raise ValueError(f"state summary of {len(payload)} bytes exceeds {MAX_SUMMARY_BYTES}")
        version = self.summaries.get(self.name, (0, b""))[0] + 1
        self.summaries[self.name] = (version, payload)
        self._queue_summary(self.name, version, payload)
        return self._flush()

    def tick(self, now: float) -> Output:
        """Fires every timer due at `now`."""
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, arg = heapq.heappop(self._timers)
            getattr(self, "_t_" + kind)(now, arg)
        return self._flush()

    def receive(self, now: float, src: Addr, msgs: list[Message]) -> Output:
        """A decoded (authenticated) UDP packet from `src`."""
        # Gossip first, requests last: the reply to a ping then carries whatever this packet made us queue
        # (e.g. our refutation of the suspicion that the buddy system delivered next to the ping).
        for m in sorted(msgs, key=lambda m: isinstance(m, (Ping, IndirectPing))):
            self.stats.messages_in += 1
            self._dispatch(now, src, m)
        return self._flush()

    def handle_push_pull(self, now: float, remote: PushPull) -> tuple[PushPull, Output]:
        """Serves an incoming push/pull: merges the remote state, returns ours for the reply."""
        # Merge first: if the remote thought us dead we refute now, and the reply already carries the refutation.
        self._merge(now, remote)
        return self._local_state(join=False), self._flush()

    def push_pull_done(self, now: float, req: StreamRequest, remote: PushPull) -> Output:
        """The reply to a push/pull we initiated."""
        if req.purpose == "join":
            self._joined = True
        self._merge(now, remote)
        return self._flush()

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    # ------------------------------------------------------------------ queries

    def member_list(self) -> list[Member]:
        return list(self.members.values())

    def num_nodes(self) -> int:
        """Estimated cluster size for log N scaling: members not dead or left."""
        return self._counts[MemberState.ALIVE] + self._counts[MemberState.SUSPECT]

    def health_score(self) -> int:
        return self.awareness

    def peer_links(self) -> dict[str, tuple[float | None, float | None]]:
        """(RTT in seconds, loss 0..1) per peer from direct probes; a peer declared dead counts as lost entirely
        (it is no longer probed), one that left is not listed."""
        out: dict[str, tuple[float | None, float | None]] = {}
        for name, m in self.members.items():
            if name == self.name or m.state == MemberState.LEFT:
                continue
            link = self.links.get(name)
            rtt = link.rtt if link is not None else None
            loss = 1.0 if m.state == MemberState.DEAD else (link.loss if link is not None else None)
            out[name] = (rtt, loss)
        return out

    def reachable(self) -> tuple[int, int]:
        total = len(self.members) - self._counts[MemberState.LEFT]
        return total - self._counts[MemberState.DEAD], total

    # ------------------------------------------------------------------ timers and output

    def _at(self, when: float, kind: str, arg: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, arg))

    def _flush(self) -> Output:
        out = self._out
        out.next_timer = self.next_deadline()
        self._out = Output()
        return out

    def _send(self, addr: Addr, primary: Message | None) -> None:
        """Sends `primary` with as much piggybacked gossip as the UDP budget allows."""
        msgs: list[Message] = []
        size = PACKET_OVERHEAD
        if primary is not None:
            msgs.append(primary)
            size += len(encode_message(primary))
        extra, used = self._broadcasts.take(self.config.udp_budget - size, self.num_nodes())
        if not msgs and not extra:
            return
        msgs.extend(extra)
        size += used
        self.stats.packets_out += 1
        self.stats.bytes_out += size
        self._out.packets.append(Packet(addr, msgs, size))

    def _scaled(self, t: float) -> float:
        return t * (self.awareness + 1) if self.config.lifeguard else t

    def _awareness(self, delta: int) -> None:
        if self.config.lifeguard:
            self.awareness = min(self.config.awareness_max - 1, max(0, self.awareness + delta))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & U32
        return self._seq

    # ------------------------------------------------------------------ probing

    def _t_probe(self, now: float, _: Any) -> None:
        self._at(now + self._scaled(self.config.probe_interval), "probe", None)
        if self.leaving:
            return
        target = self._next_probe_target()
        if target is None:
            return
        m = self.members[target]
        seq = self._next_seq()
        self._probe = _Probe(seq, target, now)
        self.stats.probes += 1
        ping = Ping(seq, target, self.name, self.addr)
        if m.state == MemberState.SUSPECT:
            # Buddy system: tell a suspect directly that it is suspected so it can refute at once.
            self._out.packets.append(self._packet_with(m.addr, [Suspect(m.incarnation, target, self.name), ping]))
        else:
            self._send(m.addr, ping)
        self._at(now + self._scaled(self.config.probe_timeout), "probe_timeout", seq)
        self._at(now + self._scaled(self.config.probe_interval) * 0.999, "probe_end", seq)

    def _packet_with(self, addr: Addr, msgs: list[Message]) -> Packet:
        size = PACKET_OVERHEAD + sum(len(encode_message(m)) for m in msgs)
        extra, used = self._broadcasts.take(self.config.udp_budget - size, self.num_nodes())
        self.stats.packets_out += 1
        self.stats.bytes_out += size + used
        return Packet(addr, msgs + extra, size + used)

    def _next_probe_target(self) -> str | None:
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                name = self._probe_order[self._probe_index]
                self._probe_index += 1
                m = self.members.get(name)
                if m is not None and m.state in (MemberState.ALIVE, MemberState.SUSPECT) and name != self.name:
                    return name
            # End of a round: reshuffle, dropping names that are gone (randomized round-robin, SWIM §4.3).
            self._probe_order = [n for n in self.members if n != self.name]
            self.rng.shuffle(self._probe_order)
            self._probe_index = 0
            if not self._probe_order:
                return None
        return None

    def _t_probe_timeout(self, now: float, seq: int) -> None:
        p = self._probe
        if p is None or p.seq != seq or p.acked:
            return
        target = self.members.get(p.target)
        if target is None:
            return
        peers = self._random_members(self.config.indirect_checks, exclude={p.target}, states=(MemberState.ALIVE,))
        want_nack = self.config.lifeguard
        p.expected_nacks = len(peers) if want_nack else 0
        p.relayed = bool(peers)
        for peer in peers:
            self.stats.indirect_probes += 1
            self._send(peer.addr, IndirectPing(seq, p.target, target.addr, want_nack, self.name, self.addr))

    def _t_probe_end(self, now: float, seq: int) -> None:
        p = self._probe
        if p is None or p.seq != seq:
            return
        self._probe = None
        if not p.direct:
            self.links.setdefault(p.target, LinkStats()).outcomes.append(False)  # lost on the direct path
        if p.acked:
            return
        self.stats.probe_failures += 1
        # Lifeguard: missing nacks from peers we asked mean the fault is likely ours, not the target's.
        if p.expected_nacks > 0:
            if p.nacks < p.expected_nacks:
                self._awareness(p.expected_nacks - p.nacks)
        else:
            self._awareness(1)
        m = self.members.get(p.target)
        if m is None or m.state not in (MemberState.ALIVE, MemberState.SUSPECT):
            return
        if m.state == MemberState.ALIVE:
            self.stats.suspicions_raised += 1
        self._on_suspect(now, Suspect(m.incarnation, m.name, self.name))

    def _random_members(self, k: int, exclude: set[str], states: tuple[MemberState, ...]) -> list[Member]:
        """Up to k distinct random members in `states`, skipping self and `exclude`."""
        names = self._probe_order if len(self._probe_order) >= len(self.members) - 1 else list(self.members)
        out: list[Member] = []
        seen: set[str] = set()
        n = len(names)
        if n == 0:
            return out
        # Rejection sampling keeps this O(k) for large meshes; fall back to a scan if it keeps missing.
        for _ in range(4 * k + 8):
            name = names[self.rng.randrange(n)]
            if name in seen or name == self.name or name in exclude:
                continue
            seen.add(name)
            m = self.members.get(name)
            if m is not None and m.state in states:
                out.append(m)
                if len(out) >= k:
                    return out
        rest = [
            m for m in self.members.values() if m.state in states and m.name not in seen and m.name != self.name
            and m.name not in exclude
        ]  # fmt: skip
        self.rng.shuffle(rest)
        return out + rest[: k - len(out)]

    # ------------------------------------------------------------------ message handling

    def _dispatch(self, now: float, src: Addr, m: Message) -> None:
        if isinstance(m, Ping):
            if m.target and m.target != self.name:
                return  # a ping for a previous owner of this address
            self._send(m.source_addr, Ack(m.seq, self.ack_payload))
        elif isinstance(m, Ack):
            self._on_ack(now, m, src)
        elif isinstance(m, IndirectPing):
            seq = self._next_seq()
            self._relays[seq] = _Relay(m.seq, m.source_addr, m.nack)
            self._send(m.target_addr, Ping(seq, m.target, self.name, self.addr))
            if m.nack:
                self._at(now + self.config.probe_timeout * 0.8, "relay_nack", seq)
            self._at(now + self.config.probe_interval, "relay_expire", seq)
        elif isinstance(m, Nack):
            p = self._probe
            if p is not None and p.seq == m.seq:
                p.nacks += 1
        elif isinstance(m, Suspect):
            self._on_suspect(now, m)
        elif isinstance(m, Alive):
            self._on_alive(now, m)
        elif isinstance(m, Dead):
            self._on_dead(now, m)
        elif isinstance(m, Summary):
            self._on_summary(now, m, src)

    def _on_ack(self, now: float, ack: Ack, src: Addr | None = None) -> None:
        relay = self._relays.get(ack.seq)
        if relay is not None:
            if not relay.done:
                relay.done = True
                self._send(relay.requester, Ack(relay.orig_seq, b""))
            return
        p = self._probe
        if p is None or p.seq != ack.seq or p.acked:
            return
        p.acked = True
        self._awareness(-1)
        target = self.members.get(p.target)
        if target is not None and (not p.relayed or src == target.addr):
            p.direct = True
            link = self.links.setdefault(p.target, LinkStats())
            link.outcomes.append(True)
            rtt = now - p.sent
            link.rtt = rtt if link.rtt is None else link.rtt + LINK_RTT_ALPHA * (rtt - link.rtt)
        if ack.payload:
            # Only direct acks carry the responder's coordinate, so the RTT is a true one-hop sample.
            self._out.events.append(ProbeRtt(p.target, now - p.sent, ack.payload))

    def _t_relay_nack(self, now: float, seq: int) -> None:
        relay = self._relays.get(seq)
        if relay is not None and not relay.done:
            self._send(relay.requester, Nack(relay.orig_seq))

    def _t_relay_expire(self, now: float, seq: int) -> None:
        self._relays.pop(seq, None)

    # ------------------------------------------------------------------ state transitions

    def _set_state(self, m: Member, state: MemberState, now: float) -> None:
        if m.state != state:
            self._counts[m.state] -= 1
            self._counts[state] += 1
            m.state = state
            m.state_change = now
            self._check_degraded()

    def _check_degraded(self) -> None:
        reachable, total = self.reachable()
        degraded = total > 1 and (total - reachable) >= self.config.degraded_fraction * total
        if degraded != self.degraded:
            self.degraded = degraded
            self._out.events.append(DegradedChanged(degraded, reachable, total))

    def _event(self, kind: str, m: Member, now: float) -> None:
        self._out.events.append(MemberEvent(kind, m.record(), now))

    def _refute(self, incarnation: int) -> None:
        me = self.members[self.name]
        me.incarnation = (max(me.incarnation, incarnation) + 1) & U32
        self.stats.self_refutes += 1
        self._awareness(1)
        self._queue_alive(me)

    def _about_self(self, incarnation: int, dead: bool) -> None:
        """Someone suspects us or declared us dead: refute with a newer incarnation."""
        if self.leaving:
            return
        me = self.members[self.name]
        if incarnation < me.incarnation:
            # A stale claim (we refuted it already) still circulates: whoever holds it missed our refutation,
            # so announce the current incarnation again instead of letting that view linger.
            self._queue_alive(me)
            return
        if dead:
            self.stats.false_positives += 1
        self._refute(incarnation)

    def _queue_alive(self, m: Member) -> None:
        # A refutation that misses one member costs a false death there: send our own aliveness twice as long.
        boost = self._broadcasts.retransmit_limit(self.num_nodes()) if m.name == self.name else 0
        self._broadcasts.queue((m.name, "m"), Alive(m.incarnation, m.name, m.addr, m.meta), boost)

    def _on_alive(self, now: float, a: Alive) -> None:
        if a.node == self.name:
            me = self.members[self.name]
            if not self.leaving and (
                a.incarnation > me.incarnation or (a.incarnation == me.incarnation and a.meta != me.meta)
            ):
                self._refute(a.incarnation)  # a stale or forged view of us is circulating
            return
        m = self.members.get(a.node)
        if m is None:
            m = Member(a.node, a.addr, a.incarnation, MemberState.ALIVE, a.meta, now)
            self.members[a.node] = m
            self._counts[MemberState.ALIVE] += 1
            # Insert at a random position so a newcomer is probed within the current round.
            pos = self.rng.randint(self._probe_index, len(self._probe_order))
            self._probe_order.insert(pos, a.node)
            self._check_degraded()
            self._queue_alive(m)
            self._event("join", m, now)
            self._eager(now)
            return
        if a.incarnation <= m.incarnation:
            return
        old_state, old_meta = m.state, m.meta
        self._suspicions.pop(a.node, None)
        m.incarnation = a.incarnation
        m.addr = a.addr
        m.meta = a.meta
        self._set_state(m, MemberState.ALIVE, now)
        self._queue_alive(m)
        if old_state == MemberState.SUSPECT:
            self.stats.suspicions_refuted += 1
            self._event("alive", m, now)
        elif old_state in (MemberState.DEAD, MemberState.LEFT):
            self._event("join", m, now)
        elif old_meta != a.meta:
            self._event("update", m, now)

    def _on_suspect(self, now: float, s: Suspect) -> None:
        if s.node == self.name:
            self._about_self(s.incarnation, dead=False)
            return
        m = self.members.get(s.node)
        if m is None or s.incarnation < m.incarnation or m.state in (MemberState.DEAD, MemberState.LEFT):
            return
        susp = self._suspicions.get(s.node)
        if m.state == MemberState.SUSPECT and susp is not None:
            if susp.confirm(s.source):
                self._broadcasts.queue((s.node, "m"), s)
                self._at(susp.start + susp.timeout(), "suspicion", (s.node, susp.token))
            return
        m.incarnation = s.incarnation
        self._set_state(m, MemberState.SUSPECT, now)
        self._broadcasts.queue((s.node, "m"), s)
        self._event("suspect", m, now)
        cfg = self.config
        n = self.num_nodes()
        k = cfg.suspicion_mult - 2 if cfg.lifeguard else 0
        if n - 2 < k:
            k = 0
        t_min = cfg.suspicion_mult * max(1.0, math.log10(max(1, n))) * cfg.probe_interval
        t_max = cfg.suspicion_max_timeout_mult * t_min if cfg.lifeguard else t_min
        self._timer_seq += 1
        susp = _Suspicion(s.source, k, t_min, t_max, now, self._timer_seq)
        self._suspicions[s.node] = susp
        self._at(now + susp.timeout(), "suspicion", (s.node, susp.token))

    def _t_suspicion(self, now: float, arg: tuple[str, int]) -> None:
        node, token = arg
        susp = self._suspicions.get(node)
        if susp is None or susp.token != token:
            return
        if now + 1e-9 < susp.start + susp.timeout():
            return  # superseded by a later deadline after a confirmation arrived
        m = self.members.get(node)
        if m is None or m.state != MemberState.SUSPECT:
            return
        if not susp.last_chance:
            # Last chance before declaring death: tell the suspect directly (twice, against loss). A live one
            # piggybacks its refutation on the ack, so a member that missed the gossiped refutation still learns
            # it; a dead one costs us one probe timeout of extra detection time.
            susp.last_chance = True
            for _ in range(2):
                ping = Ping(self._next_seq(), node, self.name, self.addr)
                self._out.packets.append(self._packet_with(m.addr, [Suspect(m.incarnation, node, self.name), ping]))
            wait = self._scaled(self.config.probe_timeout)
            susp.start = now - susp.timeout() + wait
            self._at(now + wait, "suspicion", (node, token))
            return
        self._on_dead(now, Dead(m.incarnation, node, self.name))

    def _on_dead(self, now: float, d: Dead) -> None:
        if d.node == self.name:
            me = self.members[self.name]
            if self.leaving:
                if me.state != MemberState.LEFT:
                    self._broadcasts.queue((d.node, "m"), d)
                    self._set_state(me, MemberState.LEFT, now)
            else:
                self._about_self(d.incarnation, dead=True)
            return
        m = self.members.get(d.node)
        if m is None or d.incarnation < m.incarnation or m.state in (MemberState.DEAD, MemberState.LEFT):
            return
        self._suspicions.pop(d.node, None)
        m.incarnation = d.incarnation
        left = d.source == d.node
        self._set_state(m, MemberState.LEFT if left else MemberState.DEAD, now)
        self._broadcasts.queue((d.node, "m"), d)
        self._event("left" if left else "dead", m, now)
        self._eager(now)
        self._at(now + self.config.dead_reap_after, "reap", d.node)

    def _t_reap(self, now: float, node: str) -> None:
        m = self.members.get(node)
        if m is None or m.state not in (MemberState.DEAD, MemberState.LEFT):
            return
        if now - m.state_change + 1e-9 < self.config.dead_reap_after:
            return
        self._counts[m.state] -= 1
        del self.members[node]
        self.summaries.pop(node, None)
        self.links.pop(node, None)
        self._check_degraded()

    # ------------------------------------------------------------------ summaries

    def _queue_summary(self, node: str, version: int, payload: bytes) -> None:
        digest = len(payload) > self.config.inline_summary_limit
        self._broadcasts.queue((node, "s"), Summary(node, version, b"" if digest else payload, digest))

    def _on_summary(self, now: float, s: Summary, src: Addr) -> None:
        if s.node == self.name or s.node not in self.members:
            return
        have = self.summaries.get(s.node, (0, b""))[0]
        if s.version <= have:
            return
        if s.digest_only:
            # Too big to piggyback: fetch full state over TCP from the node that owns it, once at a time.
            owner = self.members[s.node]
            if s.node not in self._pending_fetch and owner.state == MemberState.ALIVE:
                self._pending_fetch.add(s.node)
                self._out.streams.append(StreamRequest(owner.addr, self._local_state(join=False), "fetch"))
            self._broadcasts.queue((s.node, "s"), s)
            return
        self._store_summary(s.node, s.version, s.payload)

    def _store_summary(self, node: str, version: int, payload: bytes) -> None:
        self.summaries[node] = (version, payload)
        self._pending_fetch.discard(node)
        self._queue_summary(node, version, payload)
        self._out.events.append(SummaryEvent(node, version, payload))

    # ------------------------------------------------------------------ gossip, push/pull, reconnect

    def _t_gossip(self, now: float, _: Any) -> None:
        self._at(now + self.config.gossip_interval, "gossip", None)
        self._gossip_round(now)

    def _eager(self, now: float) -> None:
        """Membership changes go out at once instead of waiting up to a gossip interval (rate-limited)."""
        if now - self._last_eager >= self.config.gossip_interval / 4:
            self._last_eager = now
            self._gossip_round(now)

    def _gossip_round(self, now: float) -> None:
        if not len(self._broadcasts):
            return
        targets = self._random_members(self.config.gossip_nodes, set(), (MemberState.ALIVE, MemberState.SUSPECT))
        dead_recent = [
            m for m in self._recent_dead(now) if m.name not in {t.name for t in targets}
        ] if len(targets) < self.config.gossip_nodes else []  # fmt: skip
        for m in targets + dead_recent[: self.config.gossip_nodes - len(targets)]:
            self._send(m.addr, None)
            if not len(self._broadcasts):
                break

    def _recent_dead(self, now: float) -> list[Member]:
        if not self._counts[MemberState.DEAD]:
            return []
        return [
            m for m in self.members.values()
            if m.state == MemberState.DEAD and now - m.state_change < self.config.gossip_to_dead
        ]  # fmt: skip

    def _t_pushpull(self, now: float, _: Any) -> None:
        n = self.num_nodes()
        scale = 1 if n <= 32 else math.ceil(math.log2(n) - math.log2(32)) + 1
        self._at(now + self.config.push_pull_interval * scale, "pushpull", None)
        peers = self._random_members(1, set(), (MemberState.ALIVE,))
        if peers:
            self._out.streams.append(StreamRequest(peers[0].addr, self._local_state(join=False), "sync"))

    def _t_reconnect(self, now: float, _: Any) -> None:
        self._at(now + self.config.reconnect_interval, "reconnect", None)
        if self.leaving:
            return
        dead = [m for m in self.members.values() if m.state == MemberState.DEAD]
        if dead:
            target = self.rng.choice(dead)
            self._out.streams.append(StreamRequest(target.addr, self._local_state(join=False), "reconnect"))
        if self.degraded and self._seeds:
            # Cut off from most of the mesh: also knock on the seeds, which may have restarted with new state.
            seed = self.rng.choice(self._seeds)
            self._out.streams.append(StreamRequest(seed, self._local_state(join=True), "reconnect"))

    def _local_state(self, join: bool) -> PushPull:
        members = tuple(m.record() for m in self.members.values())
        sums = tuple(Summary(n, v, p) for n, (v, p) in self.summaries.items() if n in self.members)
        return PushPull(join, members, sums)

    def _merge(self, now: float, remote: PushPull) -> None:
        for r in remote.members:
            if r.state == MemberState.ALIVE:
                self._on_alive(now, Alive(r.incarnation, r.name, r.addr, r.meta))
            elif r.state == MemberState.LEFT:
                self._on_dead(now, Dead(r.incarnation, r.name, r.name))
            else:
                # A remote "dead" only makes us suspect: our own probes (or the node's refutation) decide.
                if r.name not in self.members:
                    continue
                self._on_suspect(now, Suspect(r.incarnation, r.name, self.name))
        for s in remote.summaries:
            if s.node != self.name and s.node in self.members and s.version > self.summaries.get(s.node, (0, b""))[0]:
                self._store_summary(s.node, s.version, s.payload)
