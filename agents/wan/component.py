"""The `wan:` component of meshd: this agent is a gateway of its cell on the WAN tier.

Every `interval_s` it summarises its cell from the fused state (gossip gives every agent of a cell every target of
the cell) and sends it, with an RTT probe, to the gateways of the other cells (`peers`, UDP); it answers their probes
and keeps their summaries (`agents/wan/core.py`). Routers read the result with `Wan.ListCells` from their agent, so a
cell's routers run on (or next to) a gateway agent. `ingress` is the base URL other cells' routers spill requests to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import Gauge
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.binding import BindError, reason_of
from agents.proto.infermesh.v1 import wan_pb2, wan_pb2_grpc
from agents.wan.cells import DEFAULT_CELL, summarize
from agents.wan.core import Addr, WanCore

if TYPE_CHECKING:
    import grpc

    from agents.meshd.component import AgentContext

log = logging.getLogger("meshd.wan")


def parse_addr(text: str) -> Addr:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return (host.strip("[]"), int(port))


class WanSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bind: str = Field(default="127.0.0.1:7950", description="UDP HOST:PORT this gateway listens on")
    peers: list[str] = Field(default_factory=list, description="UDP HOST:PORT of the other cells' gateways")
    ingress: str = Field(default="", description="base URL of this cell's router(s); empty: takes no spill-over")
    interval_s: float = Field(default=1.0, gt=0, le=60, description="seconds between two summaries to each peer")
    expire_s: float = Field(default=5.0, gt=0, le=600, description="a cell not heard from for this long is down")

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        parse_addr(v)
        return v

    @field_validator("peers")
    @classmethod
    def _peers(cls, v: list[str]) -> list[str]:
        for p in v:
            parse_addr(p)
        if len(set(v)) != len(v):
            raise ValueError("the same peer is listed twice")
        return v

    @field_validator("ingress")
    @classmethod
    def _ingress(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _timers(self) -> WanSection:
        if self.expire_s <= self.interval_s:
            raise ValueError("expire_s must exceed interval_s (a cell would expire between two summaries)")
        return self


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, component: WanComponent) -> None:
        self.component = component

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.component._received(data, (str(addr[0]), int(addr[1])))


class WanServicer(wan_pb2_grpc.WanServicer):
    def __init__(self, component: WanComponent) -> None:
        self.component = component

    async def ListCells(self, request: wan_pb2.ListCellsRequest, context: Any) -> wan_pb2.ListCellsResponse:
        c = self.component
        return wan_pb2.ListCellsResponse(
            cell=c.cell, region=c.region, local=c.summary(), cells=c.core.cells(time.monotonic())
        )


class WanComponent:
    name = "wan"

    def __init__(self, section: WanSection) -> None:
        self.section = section
        self.peers = [parse_addr(p) for p in section.peers]
        self.cell, self.region = DEFAULT_CELL, ""
        self.core = WanCore(self.cell, expire_s=section.expire_s)
        self._ctx: AgentContext | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._seq = 0
        self._rtt: Gauge | None = None
        self._alive: Gauge | None = None

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        wan_pb2_grpc.add_WanServicer_to_server(WanServicer(self), server)
        return ["infermesh.v1.Wan"]

    def summary(self) -> wan_pb2.CellSummary:
        ctx = self._ctx
        if ctx is None:
            return wan_pb2.CellSummary(cell=self.cell, region=self.region, ingress=self.section.ingress)
        fusion = ctx.fusion
        views = [fusion.to_view(rec) for rec in fusion.targets.values()]
        return summarize(self.cell, self.region, self.section.ingress, views, self._seq)

    async def start(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        node = ctx.config.node
        self.cell, self.region = node.cell or DEFAULT_CELL, node.region
        self.core = WanCore(self.cell, expire_s=self.section.expire_s)
        self._rtt = Gauge(
            "infermesh_wan_cell_rtt_seconds", "measured RTT to another cell's gateway", ["cell"], registry=ctx.registry
        )
        self._alive = Gauge(
            "infermesh_wan_cell_alive", "1 while another cell's summaries arrive", ["cell"], registry=ctx.registry
        )
        host, port = parse_addr(self.section.bind)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, port))
        except OSError as exc:
            raise BindError(self.section.bind, reason_of(exc), "wan.bind (MESHD__WAN__BIND)") from None
        self._transport = transport
        self._task = asyncio.create_task(self._loop(), name="wan-gateway")
        log.info("wan gateway of cell %s (region %s) on %s, %d peers", self.cell, self.region or "-", self.section.bind,
                 len(self.peers))  # fmt: skip

    async def _loop(self) -> None:
        while True:
            try:
                self._seq += 1
                now = time.monotonic()
                for addr, data in self.core.tick(now, self.summary(), self.peers):
                    self._send(addr, data)
                self._export(now)
            except Exception:  # one bad round must not stop the gateway; it is logged
                log.exception("wan round failed")
            await asyncio.sleep(self.section.interval_s)

    def _export(self, now: float) -> None:
        if self._rtt is None or self._alive is None:
            return
        for rc in self.core.cells(now):
            self._alive.labels(rc.summary.cell).set(1 if rc.alive else 0)
            if rc.rtt_s > 0:
                self._rtt.labels(rc.summary.cell).set(rc.rtt_s)

    def _send(self, addr: Addr, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    def _received(self, data: bytes, src: Addr) -> None:
        for addr, out in self.core.receive(data, src, time.monotonic()):
            self._send(addr, out)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()


def make_component(section: Mapping[str, Any]) -> WanComponent:
    return WanComponent(WanSection.model_validate(dict(section)))
