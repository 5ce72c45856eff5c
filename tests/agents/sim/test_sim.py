"""The mesh simulator: determinism, an M/M/1 case against its closed form, the same ranking as the router on the same
snapshot, arrivals, faults, outputs and refused configs."""

from __future__ import annotations

import copy
import gc
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.emulator.profiles import get_profile
from agents.sim.cli import main as sim_main
from agents.sim.config import SimConfigError, load_config, parse_config
from agents.sim.core import Simulation
from agents.sim.network import Topology
from agents.sim.report import summarize, write_outputs
from agents.sim.workload import Generator
from agents.strategies import load_strategy
from agents.strategies.base import RouteRequest

EXAMPLES = Path(__file__).resolve().parents[3] / "docs" / "examples" / "sim"


def tiny(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 7,
        "duration_s": 20,
        "drain_s": 30,
        "topology": {
            "regions": 2,
            "cells": 2,
            "nodes_per_cell": 8,
            "max_num_seqs": 4,
            "gpus": [{"type": "h100", "share": 0.5}, {"type": "l40s", "share": 0.5}],
            "prices_per_hour": {"h100": 4.0, "l40s": 1.5},
        },
        "workload": {"arrival": {"kind": "poisson", "rate_rps": 20}},
        "routing": {"strategies": ["baseline_rr", "hybrid_mesh"], "hedging": {"enabled": True}},
    }
    for key, value in over.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def run(cfg: dict[str, Any], strategy: str = "hybrid_mesh") -> Any:
    return Simulation(parse_config(cfg), strategy).run()


def test_same_seed_same_result_other_seed_other_result() -> None:
    a, b = run(tiny()), run(tiny())
    assert a.completed > 300
    assert summarize(a) | {"wall_s": 0} == summarize(b) | {"wall_s": 0}
    assert list(a.rec.e2e) == list(b.rec.e2e)
    c = run(tiny(seed=8))
    assert list(c.rec.e2e) != list(a.rec.e2e)


def test_a_run_leaves_the_garbage_collector_as_it_found_it() -> None:
    """The run freezes the fleet out of the collector and collects less often while it runs; the process (a test
    session, the CLI running several strategies) gets its own settings back, even when the run fails."""
    before = gc.get_threshold()
    run(tiny(duration_s=2))
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    sim = Simulation(parse_config(tiny(duration_s=2)), "hybrid_mesh")
    sim.routers[0].host = None  # type: ignore[assignment]  # its first decision or refresh raises
    with pytest.raises(AttributeError):
        sim.run()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_every_answer_teaches_the_router_that_ranked_it() -> None:
    """As the router does (Ranker.learn), each completed request's outcome reaches the predictor of the router that
    ranked it, for the target that answered, and is learned from: hybrid_mesh's decisions rest on fitted rates."""
    sim = Simulation(parse_config(tiny()), "hybrid_mesh")
    r = sim.run()
    learned = [rt.host.strategies["hybrid_mesh"].predictor.fleet_outcomes for rt in sim.routers]  # type: ignore[attr-defined]
    assert r.completed > 300
    assert sum(learned) == r.completed
    assert all(n > 0 for n in learned)  # both routers learn, each from its own answers
    fit = sim.routers[0].host.strategies["hybrid_mesh"].predictor.fleet_ttft.theta  # type: ignore[attr-defined]
    assert fit != [0.03, 1000.0 / 12_000.0, 0.01, 1.0]  # moved off the priors


def test_mm1_mean_wait_matches_closed_form() -> None:
    """One node with one batch slot, 1-token prompts and geometric outputs (mean 100): service is ~exponential, so
    the mean queueing time is rho / (mu - lambda) (M/M/1); P-K with the geometric's second moment is within 0.5%."""
    h100 = get_profile("h100")
    mean_out = 100
    step = h100.decode_step_s(1, 50)
    service = mean_out * step + 1 / h100.prefill_tok_s
    rho = 0.6
    lam = rho / service
    cfg = tiny(
        duration_s=12_000,
        drain_s=600,
        **{
            "topology": {"cells": 1, "nodes_per_cell": 1, "max_num_seqs": 1, "gpus": [{"type": "h100", "share": 1}]},
            "network": {"intra_cell_rtt": {"mean_ms": 0, "std_ms": 0}},
            "workload": {
                "arrival": {"kind": "poisson", "rate_rps": lam},
                "llm": {
                    "prompt_tokens": {"kind": "constant", "value": 1},
                    "output_tokens": {"kind": "exponential", "mean": mean_out},
                },
                "max_output_tokens": 4096,
            },
            "routing": {"strategies": ["baseline_rr"], "refresh_ms": 10_000},
        },
    )
    r = run(cfg, "baseline_rr")
    assert r.completed > 10_000 and r.failed == 0
    waits = list(r.rec.wait)
    measured = sum(waits) / len(waits)
    expected = rho / (1 / service - lam)
    assert measured == pytest.approx(expected, rel=0.08), (measured, expected)
    # and the busy fraction is rho
    assert summarize(r)["utilization"]["h100"]["busy"] == pytest.approx(rho, rel=0.05)


def test_strategy_ranks_the_same_in_simulator_and_router() -> None:
    """After a run, the sim's view of every target goes through the agent's wire form (TargetState) into the router's
    Ranker; the same strategy with the same random stream ranks identically to a host fed the sim's own views."""
    from agents.proto.infermesh.v1 import state_pb2
    from agents.strategies.host import StrategyHost
    from router.config import RoutingPolicy
    from router.ranking import Ranker
    from router.view import Target
    from router.view import TargetView as RouterView

    sim = Simulation(parse_config(tiny(duration_s=5, drain_s=0)), "hybrid_mesh")
    sim.run()
    views = [sim._view(n) for n in sim.nodes]  # the state each node would publish now
    assert any(v.requests_running for v in views)

    sim_host = StrategyHost(
        {"hybrid_mesh": load_strategy("hybrid_mesh")}, default="hybrid_mesh", rng=random.Random(3), budget_us=1e12
    )
    for v in views:
        sim_host.upsert(copy.copy(v))
    sim_host.refresh()

    rview = RouterView()
    for v in views:
        msg = state_pb2.TargetState(
            target_id=v.target_id, model=v.model, node=v.node, zone=v.zone, mig_profile=v.mig_profile,
            health=state_pb2.TARGET_HEALTH_HEALTHY if v.routable else state_pb2.TARGET_HEALTH_UNHEALTHY,
            routable=v.routable, loaded=True, requests_waiting=v.requests_waiting,
            requests_running=v.requests_running, kv_cache_usage=v.kv_cache_usage,
            max_concurrency=v.max_concurrency, freshness=v.freshness, service_rate_rps=v.service_rate_rps,
            work_left_s=v.work_left_s, ewma_latency_s=v.ewma_latency_s, ewma_ttft_s=v.ewma_ttft_s,
            cost_per_mtok=v.cost_per_mtok, version=v.version,
        )  # fmt: skip
        rview.upsert_agent(
            Target(id=v.target_id, model=v.model, url=f"http://{v.node}", node=v.node, source="agent", state=msg)
        )
    ranker = Ranker(rview, [RoutingPolicy(strategy="hybrid_mesh")])
    ranker.host.rng = random.Random(3)
    ranker.host.budget_us = 1e12  # a loaded test machine must not trip the wall-clock budget into the fallback
    policy = RoutingPolicy(strategy="hybrid_mesh")
    model = sim.model
    k = min(len(views), policy.retry.max_attempts + 1)
    for i in range(40):
        prompt_chars = 400 * (i % 5 + 1)
        routed, arm = ranker.rank(model, rview.all(model), policy, f"req-{i}", prompt_chars=prompt_chars)
        assert arm == "hybrid_mesh"
        req = RouteRequest(model=model, prompt_tokens=prompt_chars // 4, request_id=f"req-{i}")
        decision = sim_host.decide(req, k=k)
        assert not decision.fallback
        assert [t.id for t in routed[:k]] == [s.target.target_id for s in decision.ranked]
        sim_host.routed(decision, req, decision.ranked[0].target.target_id)


def test_arrival_processes_have_their_mean_rate(tmp_path: Path) -> None:
    def rate(arrival: dict[str, Any], horizon: float) -> float:
        w = parse_config(tiny(**{"workload": {"arrival": arrival}})).workload
        g = Generator(w, random.Random(1))
        n = 0
        while g.next().t < horizon:
            n += 1
        return n / horizon

    assert rate({"kind": "poisson", "rate_rps": 50}, 200) == pytest.approx(50, rel=0.05)
    # MMPP: time-average of the rates weighted by mean dwell
    mmpp = {"kind": "mmpp", "rates_rps": [10, 100], "dwell_s": [30, 10]}
    assert rate(mmpp, 2000) == pytest.approx((10 * 30 + 100 * 10) / 40, rel=0.12)
    diurnal = {"kind": "diurnal", "mean_rps": 40, "amplitude": 0.8, "period_s": 100}
    assert rate(diurnal, 500) == pytest.approx(40, rel=0.05)
    trace = tmp_path / "azure.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:47.1805900,396,109\n2023-11-16 18:15:48.6805900,879,5\n"
    )
    w = parse_config(tiny(**{"workload": {"arrival": {"kind": "trace", "path": str(trace)}}})).workload
    g = Generator(w, random.Random(1))
    got = [g.next() for _ in range(4)]
    assert [round(a.t, 3) for a in got] == [0.0, 0.5, 2.0, 3.0]  # the replay loops after the trace's span
    assert [(a.prompt_tokens, a.output_tokens) for a in got[:3]] == [(374, 44), (396, 109), (879, 5)]


def test_failures_are_retried_and_throttling_slows() -> None:
    base = tiny(duration_s=30, **{"routing": {"strategies": ["least_queue"], "retries": 3}})
    faulty = tiny(
        duration_s=30,
        **{
            "routing": {"strategies": ["least_queue"], "retries": 3},
            "faults": [
                {"kind": "fail", "at_s": 5, "duration_s": 10, "cell": 0, "fraction": 0.5},
                {"kind": "throttle", "at_s": 0, "duration_s": 100, "fraction": 1.0, "factor": 0.25},
            ],
        },
    )
    a, b = run(base, "least_queue"), run(faulty, "least_queue")
    assert a.retries == 0 and b.retries > 0
    assert b.failed <= b.retries  # every loss was retried once at least
    assert summarize(b)["e2e_p50_ms"] > 2.5 * summarize(a)["e2e_p50_ms"]  # a quarter of the speed


def test_outputs_and_cli(tmp_path: Path) -> None:
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny(duration_s=5, drain_s=5)))
    out = tmp_path / "out"
    assert sim_main(["--config", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"summary.csv", "utilization.csv", "utilization_over_time.csv", "latency_cdf.png",
            "utilization_over_time.png", "strategy_comparison.png", "requests_hybrid_mesh.csv"} <= names  # fmt: skip
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("strategy,") and len(rows) == 3
    r = run(tiny(duration_s=5, drain_s=5, **{"output": {"plots": False}}))
    s = summarize(r)
    assert s["cost_per_request"] > 0 and set(s["utilization"]) == {"h100", "l40s"}
    assert not any(p.suffix == ".png" for p in write_outputs([r], tmp_path / "again"))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"topology": {"cells": 1, "nodes_per_cell": 4, "gpus": [{"type": "b300", "share": 1}]}},
            "topology.gpus.0.type",
        ),
        ({"workload": {"arrival": {"kind": "poisson", "rate_rps": -5}}}, "workload.arrival.poisson.rate_rps"),
        (
            {"topology": {"cells": 1, "nodes_per_cell": 4, "gpus": [{"type": "h100", "mig": "1g.10gb", "share": 1}]}},
            "topology.gpus.0.type",
        ),
        ({"topology": {"cells": 1, "nodes_per_cell": 4, "gpus": [{"type": "h100", "share": 0.5}]}}, "gpus"),
        ({"topology": {"cells": 0, "nodes_per_cell": 4, "gpus": [{"type": "h100", "share": 1}]}}, "topology.cells"),
        ({"faults": [{"kind": "fail", "at_s": 1, "duration_s": 1, "cell": 9, "count": 1}]}, "faults.0.cell"),
        ({"routing": {"strategies": ["baseline_rr"], "k": 0}}, "routing.k"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(SimConfigError, match=field.replace(".", r"\.")):
        parse_config(tiny(**change))


def test_cli_refuses_a_bad_config_and_an_unknown_strategy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny(**{"workload": {"arrival": {"kind": "poisson", "rate_rps": -1}}})))
    assert sim_main(["--config", str(bad)]) == 2
    assert "workload.arrival.poisson.rate_rps" in capsys.readouterr().err
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(tiny(duration_s=1, drain_s=1)))
    assert sim_main(["--config", str(ok), "--strategy", "no_such_strategy", "--no-progress"]) == 2
    assert "no_such_strategy" in capsys.readouterr().err
    from meshweb.cli import main as infermesh

    assert infermesh(["sim", "--config", str(ok), "--validate"]) == 0
    assert infermesh(["sim", "--config", str(bad), "--validate"]) == 2


def test_a_plugin_strategy_runs_in_the_simulator() -> None:
    r = run(tiny(duration_s=5, drain_s=5), "tests.agents.sim.plugin_strategy:FlatServiceHybrid")
    assert r.strategy == "flat_service_hybrid" and r.completed > 50


def test_example_configs_are_valid() -> None:
    for name in ("small", "medium", "large"):
        cfg = load_config(EXAMPLES / f"{name}.yaml")
        assert cfg.topology.nodes == {"small": 512, "medium": 4096, "large": 131_072}[name]


def test_small_network_keeps_every_pair_of_cells_apart_as_the_reference() -> None:
    """The reference's small network has no regions: any two cells are 25 ms + a coordinate distance apart (+-10%)."""
    cfg = load_config(EXAMPLES / "small.yaml")
    topo = Topology(cfg.network, cfg.topology.cells, cfg.topology.regions, random.Random(7))
    pairs = [topo.rtt_true[i][j] for i in range(cfg.topology.cells) for j in range(cfg.topology.cells) if i != j]
    assert min(pairs) >= 0.025 * 0.9 and max(pairs) <= (0.025 + 0.025 * 2**0.5) * 1.1
    # cell_spread_ms 0: cells sit on their region's centre, so two cells of one region are the base RTT apart
    same = parse_config(tiny(**{"network": {"inter_cell_base_rtt_ms": 25, "cell_spread_ms": 0}, "topology.regions": 1}))
    for seed in range(5):
        rtt = Topology(same.network, 2, 1, random.Random(seed)).rtt_true[0][1]
        assert 0.025 * 0.9 <= rtt <= 0.025 * 1.1


def _one_node(tmp_path: Path, rows: list[tuple[float, int, int]], gpu: str, slots: int, **over: Any) -> dict[str, Any]:
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{a},{p},{o}\n" for a, p, o in rows))
    return tiny(
        duration_s=rows[-1][0] + 0.001,
        drain_s=60,
        **{
            "topology": {"cells": 1, "nodes_per_cell": 1, "max_num_seqs": slots, "gpus": [{"type": gpu, "share": 1}]},
            "network": {"intra_cell_rtt": {"mean_ms": 0, "std_ms": 0}},
            "workload": {"arrival": {"kind": "trace", "path": str(trace), "loop": False}},
            "routing": {"strategies": ["baseline_rr"], "hedging": {"enabled": False}},
            **over,
        },
    )


def test_runtime_times_the_first_token_as_the_engine_iterates(tmp_path: Path) -> None:
    """An empty batch: the first token comes after the prefill plus the engine's fixed first-iteration cost (not a
    decode step); a prompt reaching a decoding batch starts after the step in progress, then its prefill and a step."""
    l40s = get_profile("l40s")
    r = run(_one_node(tmp_path, [(0.0, 1000, 400), (0.2031, 100, 5)], "l40s", 4), "baseline_rr")
    assert r.completed == 2
    first = 1000 / l40s.prefill_tok_s + l40s.ttft_fixed_s
    ttft = dict(zip(r.rec.t0, r.rec.ttft, strict=True))  # answers are recorded as they complete
    assert ttft[0.0] == pytest.approx(first, abs=1e-4)  # (plus the network floor, 10 us)
    # the second arrives mid-step (the first request decodes alone): it waits for that step to end
    step = l40s.decode_step_s(1, 1000 + 1)  # about 24 ms at batch 1
    steps_done = (0.2031 - first) / step
    in_progress = (1 - (steps_done % 1)) * step
    assert 0 < in_progress < step
    ttft_b = ttft[0.2031]
    after = 100 / l40s.prefill_tok_s + l40s.decode_step_s(2, 1000 + 100 + int(steps_done) + 1)
    assert ttft_b == pytest.approx(in_progress + after, rel=0.02)


def test_router_holds_requests_while_every_slot_is_taken(tmp_path: Path) -> None:
    """hold_when_full (the router's default): with the only batch slot busy, the second request waits at the router,
    not in the runtime's queue, and its wait counts from its arrival; turned off, it queues at the runtime."""
    rows = [(0.0, 100, 50), (0.05, 100, 50)]
    held = Simulation(parse_config(_one_node(tmp_path, rows, "h100", 1)), "baseline_rr")
    a = held.run()
    off = {"strategies": ["baseline_rr"], "hold_when_full": False}
    blind = Simulation(parse_config(_one_node(tmp_path, rows, "h100", 1, routing=off)), "baseline_rr")
    b = blind.run()
    assert a.completed == b.completed == 2
    assert held.held_total == 1 and blind.held_total == 0
    # either way the second waits for the first to finish: the same wait, at the router or at the runtime
    assert max(a.rec.wait) > 0.2 and max(a.rec.wait) == pytest.approx(max(b.rec.wait), rel=0.05)


def test_router_learns_batch_slots_a_runtime_does_not_report(tmp_path: Path) -> None:
    """A runtime that does not say its slots (vLLM's metrics): the router sends blind until it has seen the runtime
    queue while running, then holds as with known slots."""
    rows = [(0.0, 100, 200), (0.05, 100, 200), (0.6, 100, 200)]
    cfg = _one_node(tmp_path, rows, "h100", 1, signals={"report_max_concurrency": False})
    sim = Simulation(parse_config(cfg), "baseline_rr")
    r = sim.run()
    assert r.completed == 3
    assert sim.held_total == 1  # the second queued at the runtime (slots unknown), the third was held
    assert sim.routers[0].slots == {0: 1}
    assert all(v.max_concurrency is None for v in sim.routers[0].host.index)
