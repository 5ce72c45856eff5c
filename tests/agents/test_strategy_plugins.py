"""Python strategies as packages: the template package pip-installed and chosen by name by a router's routing
policy, an incompatible strategy API refused naming both versions, and a strategy that sleeps forever abandoned at
the budget without stalling other decisions or requests."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agents.strategies import RouteRequest, TargetView, load_strategy
from agents.strategies.host import StrategyHost
from agents.strategies.plugins import ENTRY_POINT_GROUP, STRATEGY_API_VERSION, Isolated, PluginLoadError, discover
from tests.agents.sleepy_strategy import SleepForever
from tests.router.procs import router_config, running_router, scripted_upstream

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "examples/strategies/python"


def _metric(text: str, prefix: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))


@pytest.fixture(scope="module")
def installed_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template package installed the way a user would, into its own directory put on the path."""
    target = tmp_path_factory.mktemp("site")
    src = tmp_path_factory.mktemp("src") / "template"
    shutil.copytree(TEMPLATE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # setuptools builds in-tree
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(src)],
        check=True, cwd=src,
    )  # fmt: skip
    return target


def test_template_package_is_discovered_and_chosen_by_a_router_policy(
    installed_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(installed_template))
    importlib.invalidate_caches()
    assert discover()["example_least_queue"].value == "infermesh_example_strategy:ExampleLeastQueue"
    strategy = load_strategy("example_least_queue")
    assert isinstance(strategy, Isolated) and strategy.name == "example_least_queue"

    monkeypatch.setenv("PYTHONPATH", str(installed_template))
    # the template's own tests, as a user runs them after installing it
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEMPLATE / "tests")],
        check=True, cwd=TEMPLATE, capture_output=True,
    )  # fmt: skip
    with scripted_upstream() as up_a, scripted_upstream() as up_b:
        cfg = router_config([up_a, up_b], default_policy={"strategy": "example_least_queue"})
        with running_router(cfg, tmp_path) as r:
            body = {"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}], "mode": "fixed"}
            for _ in range(5):
                resp = httpx.post(
                    r.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer demo-key"}, timeout=10
                )
                assert resp.status_code == 200, resp.text
            metrics = httpx.get(r.url + "/metrics").text
    decided = _metric(metrics, 'infermesh_router_decision_seconds_count{strategy="example_least_queue"}')
    fell_back = _metric(metrics, 'infermesh_router_strategy_fallbacks_total{strategy="example_least_queue"}')
    assert decided + fell_back >= 5 and decided >= 1  # decisions ran through the package (a loaded box may miss some)


def test_template_placement_strategy_is_chosen_by_name_and_a_routing_one_is_refused_there(
    installed_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A packaged training strategy is loaded by the host the first time a placement names it (a job's topology)
    and scores with the collective cost model; a routing strategy named as one is refused by name."""
    from agents.collective.costmodel import Fabric, RankSlot
    from agents.strategies.host import UnknownStrategyError
    from agents.strategies.placement import PlacementCandidate

    monkeypatch.syspath_prepend(str(installed_template))
    importlib.invalidate_caches()
    ranks = [RankSlot(node=n, zone="z", gpu_type="A100-80GB") for n in ("n2", "n1", "n2", "n1")]
    cand = PlacementCandidate("job-1", ranks, compute_s=0.2, grad_bytes=200 << 20)
    host = StrategyHost()
    decision = host.score_placements([cand], Fabric(), strategies=["example_node_local_ring", "ring"])
    by = {s.strategy: s for s in decision.ranked}
    assert set(by) == {"example_node_local_ring", "ring"} and not decision.fallback
    assert [r.node for r in by["example_node_local_ring"].ordered_ranks] == ["n1", "n1", "n2", "n2"]
    assert by["example_node_local_ring"].score == pytest.approx(by["ring"].score)  # same ring, same grouping here
    assert host.stats["placement:example_node_local_ring"].decisions == 1
    with pytest.raises(PluginLoadError, match=r"example_least_queue.*not a subclass of .*PlacementStrategy"):
        host.score_placements([cand], Fabric(), strategies=["example_least_queue"])
    with pytest.raises(UnknownStrategyError, match="'nowhere'"):
        host.score_placements([cand], Fabric(), strategies=["nowhere"])


def test_incompatible_strategy_api_is_refused_naming_both_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "future_strategy.py").write_text(
        "from agents.strategies.builtins import LeastQueue\n"
        "class Future(LeastQueue):\n    name = 'future'\n    api_version = '2.0'\n"
    )
    dist = tmp_path / "future_strategy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: future-strategy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nfuture = future_strategy:Future\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(PluginLoadError) as err:
        load_strategy("future")
    assert "strategy API 2.0" in str(err.value) and f"strategy API {STRATEGY_API_VERSION}" in str(err.value)
    with pytest.raises(PluginLoadError, match=r"strategy API 2\.0"):
        load_strategy("future_strategy:Future")  # the same check for a plugin named by module path


def test_a_strategy_sleeping_forever_is_abandoned_at_the_budget() -> None:
    budget_s = 0.02
    sleepy = Isolated(SleepForever())
    host = StrategyHost({"sleep_forever": sleepy}, default="sleep_forever", budget_us=budget_s * 1e6, trip_after=1000)
    for i in range(4):
        host.upsert(TargetView(f"t{i}", "m", f"n{i}", "e"))

    async def main() -> tuple[list[float], float]:
        ticks: list[float] = []

        async def ticker() -> None:  # the event loop keeps turning while decisions are made
            while True:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        took = []
        for i in range(20):
            t0 = time.perf_counter()
            d = host.decide(RouteRequest("m", request_id=str(i)), k=1)
            took.append(time.perf_counter() - t0)
            assert d.fallback and d.best is not None  # every request still gets a target
            await asyncio.sleep(0)
        tick_task.cancel()
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        return took, max(gaps, default=0.0)

    took, worst_gap = asyncio.run(main())
    stats = host.stats["sleep_forever"].fallbacks
    assert stats["deadline"] == 1 and stats["busy"] == 19  # abandoned once, then skipped while it is still stuck
    assert took[0] < budget_s + 0.2  # the first waits its budget (plus scheduling slack on a loaded box), no more
    assert max(took[1:]) < budget_s  # later ones do not wait at all
    assert worst_gap < budget_s + 0.2


@pytest.mark.e2e
def test_router_serves_every_request_while_a_policy_strategy_sleeps_forever(tmp_path: Path) -> None:
    with scripted_upstream() as up:
        cfg = router_config([up], default_policy={"strategy": "tests.agents.sleepy_strategy:SleepForever"})
        with running_router(cfg, tmp_path) as r:
            body = {"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}], "mode": "fixed"}
            for _ in range(4):
                resp = httpx.post(
                    r.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer demo-key"}, timeout=10
                )
                assert resp.status_code == 200, resp.text
            metrics = httpx.get(r.url + "/metrics").text
    label = "tests.agents.sleepy_strategy:SleepForever"
    assert _metric(metrics, f'infermesh_router_strategy_fallbacks_total{{strategy="{label}"}}') >= 4
