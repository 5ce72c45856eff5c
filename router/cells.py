"""Which cell serves a request: the router's side of cells and regions.

`CellWatcher` reads the WAN tier's view from the router's agent (`Wan.ListCells`: this cell and region, the other
cells' summaries and measured RTTs) every `cells.refresh_s`. `CellRouter.route` applies the spill-over rule of
`agents/wan/cells.py` to one request: the home cell's load and expected TTFT come from this router's own view of its
targets (fresher than any summary), the others' from their summaries; the speed rule's split (`cells.speed_margin`,
`cells.speed_max_share`) draws once per request. A request goes to another cell through that cell's ingress (a
router there), with `x-infermesh-spilled-from` naming the cell it left: a router never spills a request that was
already spilled to it, so a request crosses at most one WAN hop. With a mesh secret (`cells.mesh_secret_file`) the
spill carries a signed proof that this router charged the tenant's quotas (router/core/spill_proof.py), and the
receiving router does not charge them again. The tenant's residency (`regions`, set in the
portal) is applied on both sides: no cell outside the tenant's regions serves it, and when no allowed cell can, the
router answers 503 `residency_unavailable` naming the regions. An agent without `wan:` leaves the router cell-local.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import grpc

from agents.proto.infermesh.v1 import wan_pb2, wan_pb2_grpc
from agents.strategies.base import TargetView
from agents.wan.cells import CellOption, Choice, Speed, choose, load, model_load, summarize
from router.agentpoll import AgentPoller
from router.core import spill_proof
from router.metrics import RESIDENCY_REFUSED, SPILLOVER
from router.obs import log_event
from router.view import Target

SPILLED_FROM = "x-infermesh-spilled-from"
_CLIENT_AUTH = ("Authorization", "x-api-key")
_CELL_ONLY = frozenset(h.lower() for h in (*_CLIENT_AUTH, SPILLED_FROM, spill_proof.HEADER))


def spill_headers(client: Mapping[str, str], cell: str, proof: str | None = None) -> dict[str, str]:
    """What a request sent to another cell's router carries besides the usual: the client's credentials (that
    router authenticates and meters it), the cell it left and, with a mesh secret, the proof that this router has
    charged it to its tenant's quotas (router/core/spill_proof.py: that router does not charge it again)."""
    out = {h: v for h in _CLIENT_AUTH if (v := _get(client, h)) is not None}
    out[SPILLED_FROM] = cell
    if proof is not None:
        out[spill_proof.HEADER] = proof
    return out


def _get(headers: Mapping[str, str], name: str) -> str | None:
    """A header whatever its case (HTTP headers are case-insensitive already; gRPC metadata is lower case)."""
    v = headers.get(name)
    return v if v is not None else headers.get(name.lower())


def for_target(target: Target, headers: Mapping[str, str]) -> Mapping[str, str]:
    """The headers one attempt sends: the client's credentials go to another cell's router, never to a runtime."""
    if target.source == "cell" or not any(k.lower() in _CELL_ONLY for k in headers):
        return headers
    return {k: v for k, v in headers.items() if k.lower() not in _CELL_ONLY}


@dataclass(slots=True)
class CellView:
    """This router's cell and region and what its gateway agent knows of the other cells."""

    cell: str = ""
    region: str = ""
    remotes: list[wan_pb2.RemoteCell] = field(default_factory=list)
    known: bool = False  # the agent answered ListCells at least once


@dataclass(frozen=True, slots=True)
class CellRoute:
    """A request's cells: `targets` best first (a remote cell's ingress as one target; the home cell's targets
    where home is in the order), `home_first` whether the home targets lead, and the choice itself."""

    choice: Choice
    remote: tuple[Target, ...]  # remote cells' ingress targets, in the choice's order
    home_at: int | None  # where the home cell's targets go in the order (None: not at all)


class CellRouter:
    def __init__(
        self,
        spill_at: float = 1.0,
        signed: bool = False,
        speed: Speed | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.view = CellView()
        self.spill_at = spill_at
        self.speed = speed if speed is not None else Speed()  # the speed rule (max_share 0: off)
        self.draw = draw  # uniform in [0, 1), once per request: the speed rule's split
        self.signed = signed  # a mesh secret signs what is spilled: charged to the tenant here only
        self._ingress: dict[tuple[str, str], Target] = {}  # (cell, model) -> its ingress as a target

    def home_load(self, targets: Iterable[Target], to_view: Callable[[Target], TargetView]) -> wan_pb2.ModelLoad | None:
        """The model in this cell as a summary has it (`agents.wan.cells.summarize`: its load, its expected TTFT)
        from this router's view of its targets, what the router itself has in flight at a target counting when the
        runtime's last figures trail it; None: no target."""
        views = []
        for t in targets:
            v = to_view(t)
            v.max_concurrency = t.slots  # what the runtime says, or what this router learnt from its queueing
            if t.inflight > (v.requests_running or 0.0) + (v.requests_waiting or 0.0):
                v.requests_running, v.requests_waiting = float(t.inflight), 0.0
            views.append(v)
        s = summarize(self.view.cell, self.view.region, "", views)
        return s.models[0] if s.models else None

    def route(
        self, model: str, regions: frozenset[str] | None, home_load: wan_pb2.ModelLoad | None, spilled_from: str | None
    ) -> CellRoute | None:
        """None: serve in this cell as without cells. Otherwise where to send the request (possibly nowhere)."""
        v = self.view
        if not v.known:
            return None
        home = CellOption(v.cell, v.region, 0.0, load(home_load), "", home_load.ttft_s if home_load else 0.0)
        if spilled_from:  # already crossed once: this cell serves it or nobody does (residency still applies)
            remotes: list[CellOption] = []
        else:
            remotes = [
                CellOption(r.summary.cell, r.summary.region, r.rtt_s, load(m), r.summary.ingress,
                           m.ttft_s if m is not None else 0.0)
                for r in v.remotes
                if r.alive and r.summary.ingress
                for m in (model_load(r.summary, model),)
            ]  # fmt: skip
        choice = choose(home, remotes, regions, self.spill_at, self.speed, self.draw())
        if not choice.spilled:
            return None
        if not choice.order:
            RESIDENCY_REFUSED.labels(model).inc()
            return CellRoute(choice, (), None)
        remote = tuple(self._target(o, model) for o in choice.order if o.cell != v.cell)
        home_at = next((i for i, o in enumerate(choice.order) if o.cell == v.cell), None)
        first = choice.order[0]
        if first.cell != v.cell:
            SPILLOVER.labels(v.cell, first.cell, choice.reason).inc()
        return CellRoute(choice, remote, home_at)

    def _target(self, o: CellOption, model: str) -> Target:
        t = self._ingress.get((o.cell, model))
        if t is None or t.url != o.ingress:
            t = Target(
                id=f"cell:{o.cell}",
                model=model,
                url=o.ingress,
                node=f"cell:{o.cell}",
                zone=o.region,
                upstream_model=model,
                source="cell",
            )
            self._ingress[(o.cell, model)] = t
        return t


class CellWatcher(AgentPoller):
    """Polls the agent's `Wan.ListCells`; an agent without a WAN tier leaves the router cell-local (said once)."""

    name, what = "cell-watcher", "cell view"

    def __init__(self, channel: Callable[[], grpc.aio.Channel], router: CellRouter, *, refresh_s: float) -> None:
        super().__init__(refresh_s)
        self.channel = channel
        self.router = router
        self._said: str = ""

    def rpc_failed(self, exc: grpc.aio.AioRpcError) -> None:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            self._say("agent runs no WAN tier (no wan: section): routing stays in this cell")

    def _say(self, msg: str) -> None:
        if self._said != msg:
            self._said = msg
            log_event(msg)

    async def poll_once(self) -> None:
        stub = wan_pb2_grpc.WanStub(self.channel())
        resp = await stub.ListCells(wan_pb2.ListCellsRequest(), timeout=5.0)
        v = self.router.view
        if not v.known and not self.router.signed:
            log_event(
                "cells.mesh_secret_file is not set: a request spilled to or from another cell is charged to its "
                "tenant's quotas at both routers",
                logging.WARNING,
            )
        if not v.known or (v.cell, v.region) != (resp.cell, resp.region):
            self._say(f"cell {resp.cell} in region {resp.region or '-'}: {len(resp.cells)} other cells known")
        v.cell, v.region, v.remotes, v.known = resp.cell, resp.region, list(resp.cells), True
