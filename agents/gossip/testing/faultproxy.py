"""Fault-injecting UDP + TCP proxy for loopback meshes (no `tc netem` here): packet loss, partitions and one-way
delay of the UDP packets from or to a node (a far node, as Vivaldi should see it).

Each node advertises a proxy address; the proxy forwards to the node's real address. Senders are told apart by
source IP (give each node its own 127.0.0.x), so a partition drops UDP and refuses TCP between groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.gossip.messages import Addr


@dataclass(slots=True)
class ProxyStats:
    forwarded: int = 0
    lost: int = 0
    partitioned: int = 0
    tcp_refused: int = 0
    udp_bytes: int = 0  # bytes offered by senders (before loss), what a sender's gossip costs
    tcp_bytes: int = 0


class _UdpRoute(asyncio.DatagramProtocol):
    def __init__(self, proxy: FaultProxy, target: Addr) -> None:
        self.proxy = proxy
        self.target = target
        self.out: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.proxy.stats.udp_bytes += len(data)
        if self.out is None or not self.proxy._allowed(addr[0], self.target[0], udp=True):
            return
        self.proxy.stats.forwarded += 1
        delay = self.proxy.delay_s.get(addr[0], 0.0) + self.proxy.delay_s.get(self.target[0], 0.0)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send_late, data)
        else:
            self.out.sendto(data, self.target)

    def _send_late(self, data: bytes) -> None:
        if self.out is not None and not self.out.is_closing():  # the proxy may have stopped meanwhile
            self.out.sendto(data, self.target)


@dataclass(slots=True)
class _Route:
    listen: Addr
    target: Addr
    udp_in: asyncio.DatagramTransport | None = None
    udp_out: asyncio.DatagramTransport | None = None
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class FaultProxy:
    def __init__(self, routes: dict[Addr, Addr], *, loss: float = 0.0, seed: int = 0) -> None:
        """`routes`: proxy listen address -> the node's real address."""
        self.loss = loss
        self.rng = random.Random(seed)
        self.stats = ProxyStats()
        self._routes = [_Route(listen, target) for listen, target in routes.items()]
        self._group: dict[str, int] = {}
        self.delay_s: dict[str, float] = {}  # node IP -> one-way delay added to UDP packets from or to it

    def partition(self, groups: list[list[str]]) -> None:
        """Split by source/target IP: traffic flows only within a group."""
        self._group = {ip: gid for gid, ips in enumerate(groups) for ip in ips}

    def heal(self) -> None:
        self._group = {}

    def _allowed(self, src_ip: str, dst_ip: str, *, udp: bool) -> bool:
        if self._group and self._group.get(src_ip, -1) != self._group.get(dst_ip, -2):
            self.stats.partitioned += 1
            return False
        if udp and self.loss and self.rng.random() < self.loss:
            self.stats.lost += 1
            return False
        return True

    async def start(self) -> None:
        for r in self._routes:
            await self._open(r)

    async def add_route(self, listen: Addr, target: Addr) -> Addr:
        """Starts forwarding `listen` (port 0: any free port) to `target`; returns the address actually bound."""
        r = _Route(listen, target)
        self._routes.append(r)
        await self._open(r)
        return r.listen

    def listen_addresses(self) -> list[Addr]:
        return [r.listen for r in self._routes]

    async def _open(self, r: _Route) -> None:
        loop = asyncio.get_running_loop()
        proto = _UdpRoute(self, r.target)
        factory: Callable[[], _UdpRoute] = functools.partial(lambda p: p, proto)
        for attempt in range(20):
            # Port 0: take a kernel-chosen UDP port and the same TCP port; retry if another process holds the TCP one.
            r.udp_in, _ = await loop.create_datagram_endpoint(factory, local_addr=r.listen)
            port = r.udp_in.get_extra_info("sockname")[1]
            try:
                r.server = await asyncio.start_server(functools.partial(self._tcp, r), r.listen[0], port)
                break
            except OSError:
                r.udp_in.close()
                if r.listen[1] != 0 or attempt == 19:
                    raise
        r.listen = (r.listen[0], port)
        # Forwarded packets leave from the proxy's address; SWIM replies to addresses inside messages anyway.
        r.udp_out, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(r.listen[0], 0))
        proto.out = r.udp_out

    async def _tcp(self, r: _Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        src_ip = writer.get_extra_info("peername")[0]
        if not self._allowed(src_ip, r.target[0], udp=False):
            self.stats.tcp_refused += 1
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*r.target)
        except OSError:
            writer.close()
            return

        async def pipe(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await a.read(65536):
                    self.stats.tcp_bytes += len(data)
                    b.write(data)
                    await b.drain()
            with contextlib.suppress(Exception):
                b.write_eof()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)
        for w in (writer, up_w):
            w.close()

    async def stop(self) -> None:
        for r in self._routes:
            for t in (r.udp_in, r.udp_out):
                if t is not None:
                    t.close()
            if r.server is not None:
                r.server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(r.server.wait_closed(), 1.0)
