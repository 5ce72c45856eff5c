"""The speed rule in the router (router/cells.py over agents/wan/cells.py): a slow home cell's expected TTFT from this
router's own view, the other cells' from their summaries, the split drawn per request, and its config fields."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from agents.proto.infermesh.v1 import wan_pb2
from agents.strategies.base import HEALTHY, TargetView
from agents.wan.cells import Speed
from router import cells
from router.config import ConfigError, RouterConfig, parse_config
from router.metrics import SPILLOVER
from router.service import RouterService
from router.upstream import UpstreamPool
from router.view import Target


def _home(ttft: float) -> tuple[list[Target], object]:
    targets = [Target(id=f"m@http://n{i}", model="m", url=f"http://n{i}", max_concurrency=4) for i in range(2)]

    def to_view(t: Target) -> TargetView:
        return TargetView(
            target_id=t.id, model="m", node=t.node, endpoint=t.url, health=HEALTHY, routable=True,
            requests_running=1.0, requests_waiting=0.0, max_concurrency=4, ewma_ttft_s=ttft, service_rate_rps=5.0,
        )  # fmt: skip

    return targets, to_view


def _router(draw: float, speed: Speed | None = None) -> cells.CellRouter:
    r = cells.CellRouter(speed=speed, draw=lambda: draw)
    r.view.cell, r.view.region, r.view.known = "a1", "eu", True
    fast = wan_pb2.ModelLoad(model="m", targets=2, healthy=2, capacity=8, running=2, waiting=0, ttft_s=0.020)
    r.view.remotes = [
        wan_pb2.RemoteCell(
            summary=wan_pb2.CellSummary(cell="a2", region="eu", ingress="http://a2", models=[fast]),
            rtt_s=0.030,
            alive=True,
        )
    ]
    return r


def test_a_slow_home_cell_sends_the_drawn_share_to_the_faster_cell() -> None:
    before = SPILLOVER.labels("a1", "a2", "slow")._value.get()
    targets, to_view = _home(0.100)
    r = _router(draw=0.1)
    home = r.home_load(targets, to_view)  # type: ignore[arg-type]
    assert home is not None and abs(home.ttft_s - 0.100) < 1e-9
    route = r.route("m", None, home, None)
    assert route is not None and route.choice.reason == "slow"
    assert [t.url for t in route.remote] == ["http://a2"] and route.home_at == 1  # home as the retry
    assert SPILLOVER.labels("a1", "a2", "slow")._value.get() == before + 1
    # the rest of the split stays; so does a request already spilled once, and everything with the rule off
    assert _router(draw=0.9).route("m", None, home, None) is None
    assert r.route("m", None, home, "b1") is None
    assert _router(draw=0.0, speed=Speed(0.2, 0.0)).route("m", None, home, None) is None
    # a home cell about as fast as the other cell's RTT plus TTFT keeps its requests
    targets, to_view = _home(0.055)
    assert r.route("m", None, r.home_load(targets, to_view), None) is None  # type: ignore[arg-type]


def _cfg(cells_section: Mapping[str, object]) -> RouterConfig:
    return parse_config(
        {"agent": {"address": None}, "targets": [{"model": "m", "url": "http://127.0.0.1:9"}], "cells": cells_section},
        env={},
    )


def test_the_speed_settings_reach_the_router_and_bad_ones_are_refused() -> None:
    cfg = _cfg({"speed_margin": 0.5, "speed_max_share": 0.25})
    svc = RouterService(cfg, UpstreamPool(limit=2, connect_timeout_s=1.0))
    assert svc.cells.speed == Speed(0.5, 0.25)
    assert RouterService(_cfg({}), UpstreamPool(limit=2, connect_timeout_s=1.0)).cells.speed == Speed()
    for bad in ({"speed_max_share": 1.5}, {"speed_margin": -0.1}, {"speed_share": 0.2}):
        with pytest.raises(ConfigError) as e:
            _cfg(bad)
        assert f"cells.{next(iter(bad))}" in str(e.value)
