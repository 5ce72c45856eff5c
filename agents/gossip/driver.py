"""Thin asyncio driver for the SWIM core: UDP for probes and gossip, TCP for push/pull, optional AES-GCM keyring.

Bad input (truncated, oversized, malformed, unauthenticated or replayed packets) is dropped and counted by reason;
it never reaches the core, so it can neither crash the node nor change membership.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from agents.gossip.codec import CodecError, decode_packet, decode_push_pull, encode_packet, encode_push_pull
from agents.gossip.keyring import OVERHEAD, Keyring, Replayed, Unauthenticated
from agents.gossip.messages import Addr, MemberState, PushPull
from agents.gossip.metrics import GossipMetrics
from agents.gossip.swim import (
    DegradedChanged,
    Event,
    Member,
    MemberEvent,
    Output,
    ProbeRtt,
    StreamRequest,
    SummaryEvent,
    Swim,
    SwimConfig,
)
from agents.topology.service import Topology

log = logging.getLogger("meshd.gossip")

MAX_STREAM_BYTES = 16 * 1024 * 1024 + OVERHEAD
_LEN = struct.Struct("!I")


@dataclass(slots=True)
class NodeMeta:
    """What a node says about itself on gossip (bounded to the codec's metadata limit)."""

    roles: list[str] = field(default_factory=list)
    zone: str = ""
    region: str = ""
    host: str = ""
    grpc: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        doc = {"r": self.roles, "z": self.zone, "g": self.region, "h": self.host, "a": self.grpc, "l": self.labels}
        return json.dumps({k: v for k, v in doc.items() if v}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> NodeMeta:
        """Lenient: metadata from another version that does not parse yields empty fields, not an error."""
        try:
            doc = json.loads(data) if data else {}
        except ValueError:
            return cls()
        if not isinstance(doc, dict):
            return cls()
        labels = doc.get("l") if isinstance(doc.get("l"), dict) else {}
        return cls(
            roles=[str(r) for r in doc.get("r", []) if isinstance(r, str)] if isinstance(doc.get("r"), list) else [],
            zone=str(doc.get("z", "")),
            region=str(doc.get("g", "")),
            host=str(doc.get("h", "")),
            grpc=str(doc.get("a", "")),
            labels={str(k): str(v) for k, v in (labels or {}).items()},
        )

    def topology_labels(self) -> dict[str, str]:
        return {k: v for k, v in (("zone", self.zone), ("region", self.region), ("host", self.host)) if v}


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, node: GossipNode) -> None:
        self.node = node

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.node._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a dead peer on loopback: expected while it is being detected.
        log.debug("gossip UDP error: %s", exc)


class GossipNode:
    def __init__(
        self,
        name: str,
        bind: Addr,
        *,
        advertise: Addr | None = None,
        config: SwimConfig | None = None,
        keyring: Keyring | None = None,
        meta: NodeMeta | None = None,
        metrics: GossipMetrics | None = None,
        topology: Topology | None = None,
        on_event: Callable[[Event], None] | None = None,
        seed: int | None = None,
        stream_timeout_s: float = 3.0,
    ) -> None:
        self.name = name
        self.bind = bind
        self.advertise = advertise
        self.config = config or SwimConfig()
        self.config.validate()
        self.keyring = keyring
        self.meta = meta or NodeMeta()
        self.metrics = metrics
        self.topology = topology
        self.on_event = on_event
        self.rng = random.Random(seed)
        self.stream_timeout_s = stream_timeout_s
        self.core: Swim | None = None
        self.dropped: Counter[str] = Counter()
        self.bytes_out = 0
        self.bytes_in = 0
        self.summary_listeners: list[Callable[[str, int, bytes], None]] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_packet = self.config.udp_budget + (OVERHEAD if keyring else 0)

    # ------------------------------------------------------------------ lifecycle

    @property
    def addr(self) -> Addr:
        assert self.core is not None, "gossip node not started"
        return self.core.addr

    async def start(self, seeds: list[Addr] | None = None) -> None:
        loop = self._loop = asyncio.get_running_loop()
        for attempt in range(20):
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=self.bind)
            port = transport.get_extra_info("sockname")[1]
            try:
                self._server = await asyncio.start_server(self._serve_stream, self.bind[0], port)
                break
            except OSError:
                transport.close()
                # With port 0 the kernel picked a UDP port whose TCP twin is taken: pick again.
                if self.bind[1] != 0 or attempt == 19:
                    raise
        self._transport = transport
        adv = self.advertise or (self.bind[0], port)
        if adv[1] == 0:
            adv = (adv[0], port)
        self.core = Swim(self.name, adv, config=self.config, rng=self.rng, now=loop.time(), meta=self.meta.encode())
        if self.topology is not None:
            self.core.ack_payload = self.topology.coordinate.encode()
        self._handle(self.core.start(loop.time()))
        if seeds:
            self._handle(self.core.join(loop.time(), seeds))
        self._update_gauges()

    async def stop(self, *, leave: bool = True, leave_wait_s: float = 0.6) -> None:
        if self.core is None or self._loop is None:
            return
        if leave and not self.core.leaving:
            self._handle(self.core.leave(self._loop.time()))
            # Let gossip carry the leave for a few rounds before the socket goes away.
            await asyncio.sleep(leave_wait_s)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self._transport is not None:
            self._transport.close()
        self.core = None

    # ------------------------------------------------------------------ API for the agent

    def members(self) -> list[Member]:
        return self.core.member_list() if self.core else []

    @property
    def degraded(self) -> bool:
        return bool(self.core and self.core.degraded)

    def set_summary(self, payload: bytes) -> None:
        if self.core is not None and self._loop is not None:
            self._handle(self.core.set_summary(self._loop.time(), payload))

    def set_meta(self, meta: NodeMeta) -> None:
        self.meta = meta
        if self.core is not None and self._loop is not None:
            self._handle(self.core.set_meta(self._loop.time(), meta.encode()))

    def summaries(self) -> dict[str, tuple[int, bytes]]:
        return dict(self.core.summaries) if self.core else {}

    def join(self, seeds: list[Addr]) -> None:
        if self.core is not None and self._loop is not None:
            self._handle(self.core.join(self._loop.time(), seeds))

    # ------------------------------------------------------------------ core plumbing

    def _handle(self, out: Output) -> None:
        for p in out.packets:
            self._send(p.addr, encode_packet(p.msgs), len(p.msgs))
        for s in out.streams:
            self._spawn(self._push_pull(s))
        for ev in out.events:
            self._on_core_event(ev)
        self._arm(out.next_timer)

    def _arm(self, when: float | None) -> None:
        if when is None or self._loop is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.core is None or self._loop is None:
            return
        self._handle(self.core.tick(self._loop.time()))
        self._arm(self.core.next_deadline())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, addr: Addr, data: bytes, n_msgs: int) -> None:
        if self._transport is None:
            return
        if self.keyring is not None:
            data = self.keyring.seal(data)
        if len(data) > self._max_packet:
            # The core budgets piggyback by size; a single oversized primary message is a bug upstream.
            log.warning("gossip: not sending a %d-byte packet to %s (limit %d)", len(data), addr, self._max_packet)
            return
        self._transport.sendto(data, addr)
        self.bytes_out += len(data)
        if self.metrics is not None:
            self.metrics.packets.labels("out").inc()
            self.metrics.messages.labels("out").inc(n_msgs)
            self.metrics.bytes.labels("out").inc(len(data))

    def _drop(self, reason: str, src: Addr, detail: str) -> None:
        self.dropped[reason] += 1
        if self.metrics is not None:
            self.metrics.dropped.labels(reason).inc()
        log.debug("gossip: dropped packet from %s:%s (%s): %s", src[0], src[1], reason, detail)

    def _on_datagram(self, data: bytes, src: Addr) -> None:
        if self.core is None or self._loop is None:
            return
        self.bytes_in += len(data)
        if self.metrics is not None:
            self.metrics.packets.labels("in").inc()
            self.metrics.bytes.labels("in").inc(len(data))
        if len(data) > self._max_packet:
            self._drop("oversized", src, f"{len(data)} bytes > {self._max_packet}")
            return
        if self.keyring is not None:
            try:
                data = self.keyring.open(data)
            except Unauthenticated as exc:
                self._drop("unauthenticated", src, str(exc))
                return
            except Replayed as exc:
                self._drop("replayed", src, str(exc))
                return
        try:
            msgs = decode_packet(data, limit=self._max_packet)
        except CodecError as exc:
            self._drop("truncated" if "truncated" in str(exc) else "malformed", src, str(exc))
            return
        if self.metrics is not None:
            self.metrics.messages.labels("in").inc(len(msgs))
        self._handle(self.core.receive(self._loop.time(), src, msgs))

    def _on_core_event(self, ev: Event) -> None:
        if isinstance(ev, ProbeRtt):
            if self.metrics is not None:
                self.metrics.probe_rtt.observe(ev.rtt)
            if self.topology is not None and self.topology.observe(ev.node, ev.rtt, ev.payload) and self.core:
                self.core.ack_payload = self.topology.coordinate.encode()
        elif isinstance(ev, MemberEvent):
            if self.topology is not None and ev.kind in ("join", "update"):
                self.topology.set_labels(ev.member.name, NodeMeta.decode(ev.member.meta).topology_labels())
            self._update_gauges()
        elif isinstance(ev, DegradedChanged):
            log.warning(
                "gossip: %s local-only mode (%d of %d members reachable)",
                "entering" if ev.degraded else "leaving",
                ev.reachable,
                ev.total,
            )
            if self.metrics is not None:
                self.metrics.degraded.set(1 if ev.degraded else 0)
        elif isinstance(ev, SummaryEvent):
            for listener in self.summary_listeners:
                listener(ev.node, ev.version, ev.payload)
        if self.on_event is not None:
            self.on_event(ev)

    def _update_gauges(self) -> None:
        if self.metrics is None or self.core is None:
            return
        counts = Counter(m.state for m in self.core.members.values())
        for s in MemberState:
            self.metrics.members.labels(s.name.lower()).set(counts.get(s, 0))
        st = self.core.stats
        self.metrics.health.set(self.core.awareness)
        # Counters mirror the core's monotonic stats.
        for counter, value in (
            (self.metrics.suspicions.labels("raised"), st.suspicions_raised),
            (self.metrics.suspicions.labels("refuted"), st.suspicions_refuted),
            (self.metrics.false_positives, st.false_positives),
            (self.metrics.self_refutes, st.self_refutes),
        ):
            delta = value - counter._value.get()
            if delta > 0:
                counter.inc(delta)

    # ------------------------------------------------------------------ TCP push/pull

    def _frame(self, pp: PushPull) -> bytes:
        data = encode_push_pull(pp)
        if self.keyring is not None:
            data = self.keyring.seal(data)
        return _LEN.pack(len(data)) + data

    async def _read_frame(self, reader: asyncio.StreamReader) -> PushPull:
        (length,) = _LEN.unpack(await reader.readexactly(_LEN.size))
        if length > MAX_STREAM_BYTES:
            raise CodecError(f"push/pull frame of {length} bytes exceeds {MAX_STREAM_BYTES}")
        data = await reader.readexactly(length)
        self.bytes_in += length + _LEN.size
        if self.keyring is not None:
            data = self.keyring.open(data)
        return decode_push_pull(data)

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        src = (str(peer[0]), int(peer[1]))
        try:
            remote = await asyncio.wait_for(self._read_frame(reader), self.stream_timeout_s)
            if self.core is None or self._loop is None:
                return
            reply, out = self.core.handle_push_pull(self._loop.time(), remote)
            self._handle(out)
            frame = self._frame(reply)
            writer.write(frame)
            self.bytes_out += len(frame)
            await asyncio.wait_for(writer.drain(), self.stream_timeout_s)
            self._update_gauges()
        except Unauthenticated as exc:
            self._drop("unauthenticated", src, f"push/pull: {exc}")
        except Replayed as exc:
            self._drop("replayed", src, f"push/pull: {exc}")
        except CodecError as exc:
            self._drop("malformed", src, f"push/pull: {exc}")
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError) as exc:
            self._drop("truncated", src, f"push/pull: {exc!r}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _push_pull(self, req: StreamRequest) -> None:
        result = "ok"
        writer: asyncio.StreamWriter | None = None
        try:
            # Dial from the gossip interface, so a peer (or a firewall) sees the same source address as for UDP.
            local = (self.bind[0], 0) if self.bind[0] not in ("", "0.0.0.0", "::") else None
            connect = asyncio.open_connection(*req.addr, local_addr=local)
            reader, w = await asyncio.wait_for(connect, self.stream_timeout_s)
            writer = w
            frame = self._frame(req.push_pull)
            w.write(frame)
            self.bytes_out += len(frame)
            await w.drain()
            remote = await asyncio.wait_for(self._read_frame(reader), self.stream_timeout_s)
            if self.core is not None and self._loop is not None:
                self._handle(self.core.push_pull_done(self._loop.time(), req, remote))
                self._update_gauges()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, CodecError, Unauthenticated, Replayed) as exc:
            result = "failed"
            level = logging.WARNING if req.purpose == "join" else logging.DEBUG
            log.log(level, "gossip: %s push/pull with %s:%s failed: %r", req.purpose, *req.addr, exc)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        if self.metrics is not None:
            self.metrics.push_pulls.labels(req.purpose, result).inc()
