"""The WAN tier's exchange between gateways, sans-IO: datagrams in, datagrams out, a clock passed in.

Every `interval_s` (`tick`) a gateway sends each peer gateway one `WanPacket` with its cell's summary and a probe
(`ping_t`, its clock); a peer echoes the probe at once (`pong_t`), which gives the RTT to the peer's cell, smoothed
by a moving average. A cell whose summary is older than `expire_s` is not alive: routers stop spilling to it. The
WAN tier has its own timers, far slower than gossip's, and carries only the summaries across cells.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from agents.proto.infermesh.v1 import wan_pb2

Addr = tuple[str, int]
MAX_PACKET = 16_384  # a summary of MAX_MODELS models fits with room; anything larger is refused unread


@dataclass(slots=True)
class _Cell:
    summary: wan_pb2.CellSummary
    heard: float  # clock of its last summary


class WanCore:
    def __init__(self, cell: str, *, expire_s: float = 5.0, rtt_alpha: float = 0.3) -> None:
        self.cell = cell
        self.expire_s = expire_s
        self.rtt_alpha = rtt_alpha
        self._cells: dict[str, _Cell] = {}
        self._rtt: dict[str, float] = {}  # cell -> smoothed RTT, kept from the first echo on
        self.refused = 0  # datagrams that were not a WanPacket, too large, or from this very cell

    def tick(self, now: float, summary: wan_pb2.CellSummary, peers: list[Addr]) -> list[tuple[Addr, bytes]]:
        """This cell's summary and a probe, for every peer gateway."""
        data = wan_pb2.WanPacket(cell=self.cell, summary=summary, ping_t=now).SerializeToString()
        return [(p, data) for p in peers]

    def receive(self, data: bytes, src: Addr, now: float) -> list[tuple[Addr, bytes]]:
        """Take in one datagram; answers what must go back (the probe's echo)."""
        if len(data) > MAX_PACKET:
            self.refused += 1
            return []
        pkt = wan_pb2.WanPacket()
        try:
            pkt.ParseFromString(data)
        except DecodeError:
            self.refused += 1
            return []
        if not pkt.cell or pkt.cell == self.cell:
            self.refused += 1  # a gateway of this cell listed as a peer: a config slip, not a remote cell
            return []
        out: list[tuple[Addr, bytes]] = []
        if pkt.pong_t > 0 and pkt.pong_t <= now:
            sample = now - pkt.pong_t
            old = self._rtt.get(pkt.cell)
            self._rtt[pkt.cell] = sample if old is None else old + self.rtt_alpha * (sample - old)
        if pkt.HasField("summary") and pkt.summary.cell == pkt.cell:
            known = self._cells.get(pkt.cell)
            if known is None:
                self._cells[pkt.cell] = _Cell(pkt.summary, now)
            else:
                known.summary, known.heard = pkt.summary, now
        if pkt.ping_t > 0:
            out.append((src, wan_pb2.WanPacket(cell=self.cell, pong_t=pkt.ping_t).SerializeToString()))
        return out

    def cells(self, now: float) -> list[wan_pb2.RemoteCell]:
        """What this gateway knows of every other cell, nearest first."""
        out = [
            wan_pb2.RemoteCell(
                summary=c.summary,
                rtt_s=self._rtt.get(name, 0.0),
                age_s=max(0.0, now - c.heard),
                alive=now - c.heard <= self.expire_s,
            )
            for name, c in self._cells.items()
        ]
        out.sort(key=lambda r: (r.rtt_s, r.summary.cell))
        return out
