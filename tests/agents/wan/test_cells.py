"""The spill-over rule and the cell summary (agents/wan/cells.py) and the WAN exchange (agents/wan/core.py)."""

from __future__ import annotations

import math

from agents.proto.infermesh.v1 import wan_pb2
from agents.strategies.base import HEALTHY, UNHEALTHY, TargetView
from agents.wan.cells import MAX_MODELS, CellOption, Speed, choose, load, model_load, summarize
from agents.wan.core import WanCore


def view(model: str, running: float, waiting: float, slots: int = 4, healthy: bool = True) -> TargetView:
    return TargetView(
        target_id=f"{model}-{running}-{waiting}",
        model=model,
        node="n",
        endpoint="",
        health=HEALTHY if healthy else UNHEALTHY,
        routable=healthy,
        requests_running=running,
        requests_waiting=waiting,
        max_concurrency=slots,
        ttft_p95_s=0.2,
    )


def test_summary_counts_only_healthy_targets_and_is_bounded() -> None:
    s = summarize("a", "eu", "http://a", [view("m", 4, 2), view("m", 1, 0), view("m", 9, 9, healthy=False)])
    (m,) = s.models
    assert (m.targets, m.healthy, m.capacity, m.running, m.waiting) == (3, 2, 8, 5.0, 2.0)
    assert load(m) == 7 / 8
    many = summarize("a", "eu", "", [view(f"m{i}", i, 0) for i in range(MAX_MODELS + 10)])
    assert len(many.models) == MAX_MODELS
    assert model_load(many, "m0") is None  # the idlest models are left out first
    assert load(model_load(s, "gone")) == math.inf


def opt(cell: str, region: str, rtt: float, ld: float) -> CellOption:
    return CellOption(cell, region, rtt, ld)


HOME = opt("a1", "eu", 0.0, 0.5)
REMOTES = [opt("a2", "eu", 0.030, 0.2), opt("b1", "us", 0.001, 0.1), opt("b2", "us", 0.080, 2.0)]


def test_home_while_it_has_headroom() -> None:
    c = choose(HOME, REMOTES, None)
    assert [o.cell for o in c.order] == ["a1"] and not c.spilled


def test_saturated_spills_to_the_nearest_cell_with_headroom_then_home() -> None:
    home = opt("a1", "eu", 0.0, 1.5)
    c = choose(home, REMOTES, None)
    assert c.reason == "saturated" and [o.cell for o in c.order] == ["b1", "a1"]
    # residency: only eu cells, so the farther a2
    c = choose(home, REMOTES, frozenset({"eu"}))
    assert [o.cell for o in c.order] == ["a2", "a1"]
    # nowhere with headroom: queue at home
    assert choose(home, [opt("a2", "eu", 0.03, 3.0)], None).order == (home,)


def test_failed_home_goes_to_the_next_cell_and_residency_may_leave_none() -> None:
    dead = opt("a1", "eu", 0.0, math.inf)
    c = choose(dead, REMOTES, None)
    assert c.reason == "failed" and [o.cell for o in c.order] == ["b1", "a2", "b2"]
    assert [o.cell for o in choose(dead, REMOTES, frozenset({"eu"})).order] == ["a2"]
    assert choose(dead, [opt("b1", "us", 0.001, 0.1)], frozenset({"eu"})).order == ()


def test_home_outside_the_tenants_regions_is_never_used() -> None:
    c = choose(opt("b1", "us", 0.0, 0.0), [opt("a1", "eu", 0.08, 0.5)], frozenset({"eu"}))
    assert c.reason == "residency" and [o.cell for o in c.order] == ["a1"]


def test_exchange_carries_summaries_and_measures_rtt() -> None:
    a, b = WanCore("a", expire_s=3.0), WanCore("b", expire_s=3.0)
    sa = wan_pb2.CellSummary(cell="a", region="eu", ingress="http://a")
    ((_, data),) = a.tick(10.0, sa, [("b", 1)])
    echoes = b.receive(data, ("a", 1), 10.02)
    assert [c.summary.ingress for c in b.cells(10.02)] == ["http://a"]
    for _, pong in echoes:
        assert a.receive(pong, ("b", 1), 10.04) == []  # an echo is not echoed
    assert a.cells(10.04) == []  # b sent no summary yet
    ((_, data_b),) = b.tick(11.0, wan_pb2.CellSummary(cell="b", region="us"), [("a", 1)])
    a.receive(data_b, ("b", 1), 11.0)
    (rb,) = a.cells(11.0)
    assert rb.alive and rb.summary.region == "us"
    assert math.isclose(rb.rtt_s, 0.04)
    assert not a.cells(14.5)[0].alive  # silent longer than expire_s


def test_exchange_refuses_garbage_and_its_own_cell() -> None:
    a = WanCore("a")
    assert a.receive(b"\xff\xff\xff", ("x", 1), 1.0) == []
    own = wan_pb2.WanPacket(cell="a", ping_t=1.0).SerializeToString()
    assert a.receive(own, ("x", 1), 1.0) == []
    assert a.receive(b"x" * 20_000, ("x", 1), 1.0) == []
    assert a.refused == 3


def timed(running: float, waiting: float, ttft: float, rate: float, slots: int = 4) -> TargetView:
    v = view("m", running, waiting, slots)
    v.target_id = f"t-{running}-{waiting}-{ttft}"
    v.ewma_ttft_s, v.service_rate_rps, v.ttft_p95_s = ttft, rate, None
    return v


def test_summary_carries_the_cells_expected_ttft() -> None:
    # a free slot: the best such target's measured TTFT, however fast a full one is
    (m,) = summarize("a", "eu", "", [timed(2, 0, 0.05, 10.0), timed(4, 2, 0.01, 10.0)]).models
    assert math.isclose(m.ttft_s, 0.05)
    # every slot taken: the fastest's TTFT + the wait for a slot in the cell (2 queued + itself at 10 + 10 req/s)
    (m,) = summarize("a", "eu", "", [timed(4, 0, 0.05, 10.0), timed(4, 2, 0.01, 10.0)]).models
    assert math.isclose(m.ttft_s, 0.01 + 3 / 20.0)
    # what this router sent since the runtime's last figures takes the last slot
    busy = timed(3, 0, 0.05, 10.0)
    busy.inflight = 1
    (m,) = summarize("a", "eu", "", [busy]).models
    assert math.isclose(m.ttft_s, 0.05 + 1 / 10.0)
    # nothing measured, or a queue at an unknown rate: not known
    unmeasured = view("m", 0, 0)
    unmeasured.ttft_p95_s = None
    (m,) = summarize("a", "eu", "", [unmeasured, timed(4, 2, 0.05, 0.0)]).models
    assert m.ttft_s == 0.0


def fast(cell: str, region: str, rtt: float, ld: float, ttft: float) -> CellOption:
    return CellOption(cell, region, rtt, ld, f"http://{cell}", ttft)


SLOW_HOME = fast("a1", "eu", 0.0, 0.5, 0.100)  # headroom, but slow (throttled)


def test_speed_rule_moves_a_share_to_a_faster_cell_beyond_the_margin() -> None:
    speed = Speed(margin=0.2, max_share=0.5)
    near = fast("a2", "eu", 0.030, 0.4, 0.020)  # cost 50 ms: excess beyond 60 ms is 40 ms = 0.8 of it, capped 0.5
    assert math.isclose(speed.share(0.100, near.cost_s), 0.5)
    c = choose(SLOW_HOME, [near], None, speed=speed, draw=0.49)
    assert c.reason == "slow" and [o.cell for o in c.order] == ["a2", "a1"]  # home as the retry
    assert choose(SLOW_HOME, [near], None, speed=speed, draw=0.5).order == (SLOW_HOME,)
    # within the margin: nothing moves, whatever the draw
    close = fast("a2", "eu", 0.060, 0.4, 0.025)  # cost 85 ms: 100 ms is under 85 x 1.2
    assert speed.share(0.100, close.cost_s) == 0.0
    assert not choose(SLOW_HOME, [close], None, speed=speed, draw=0.0).spilled
    # just beyond it: a small share
    assert 0 < speed.share(0.100, 0.082) < 0.03
    # off, no draw, or no speed rule: home
    assert not choose(SLOW_HOME, [near], None, speed=Speed(0.2, 0.0), draw=0.0).spilled
    assert not choose(SLOW_HOME, [near], None, speed=speed).spilled
    assert not choose(SLOW_HOME, [near], None, draw=0.0).spilled


def test_speed_rule_spreads_over_the_faster_cells_and_keeps_residency() -> None:
    speed = Speed(margin=0.2, max_share=0.5)
    remotes = [
        fast("a2", "eu", 0.030, 0.4, 0.020),
        fast("a3", "eu", 0.020, 0.4, 0.020),
        fast("b1", "us", 0.001, 0.1, 0.010),  # the fastest, outside an eu tenant's regions
        fast("a4", "eu", 0.001, 1.0, 0.001),  # no headroom
        fast("a5", "eu", 0.001, 0.1, 0.0),  # TTFT not known: not a speed target
    ]
    eu = frozenset({"eu"})
    picks = {choose(SLOW_HOME, remotes, eu, speed=speed, draw=d / 100).order[0].cell for d in range(50)}
    assert picks == {"a3", "a2"}  # the draw spreads the moved share over both, never all onto the best
    assert choose(SLOW_HOME, remotes, eu, speed=speed, draw=0.0).order[0].cell == "a3"  # the cheaper first
    assert choose(SLOW_HOME, remotes, None, speed=speed, draw=0.0).order[0].cell == "b1"


def test_saturated_and_failed_rank_by_rtt_plus_expected_ttft() -> None:
    home = fast("a1", "eu", 0.0, 1.5, 0.2)
    remotes = [fast("a2", "eu", 0.010, 0.5, 0.300), fast("a3", "eu", 0.030, 0.5, 0.020)]
    assert [o.cell for o in choose(home, remotes, None).order] == ["a3", "a1"]  # 50 ms beats 310 ms
    dead = fast("a1", "eu", 0.0, math.inf, 0.0)
    assert [o.cell for o in choose(dead, remotes, None).order] == ["a3", "a2"]
