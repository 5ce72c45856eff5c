"""Decision time of each built-in strategy, in-process and over gRPC (ScoreTargets on a real agent), for fleets of
10, 100, 1,000 and 10,000 targets of one model.

In-process: a StrategyHost as the router runs it, with a target update every 10 decisions and the elite refresh
every 200 (as the agent's loops would). Over gRPC: a real `infermesh agent` process fed the same fleet through
PushModelState, timed from the client (round trip) and by the agent itself (decision_us).

    .venv/bin/python bench/scoring.py [--decisions 5000] [--rpcs 300] [--sizes 10,100,1000,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from agents.proto.infermesh.v1 import scoring_pb2, scoring_pb2_grpc, state_pb2, state_pb2_grpc
from agents.strategies import RouteRequest, TargetView
from agents.strategies.host import StrategyHost
from tests.agents.harness import AgentProcess, start_agent

STRATEGIES = ("baseline_rr", "least_queue", "hybrid_mesh")
MODEL = "demo-llm"


def fleet_state(i: int, rnd: random.Random) -> dict[str, float | int]:
    return {
        "requests_waiting": float(rnd.randint(0, 20)),
        "requests_running": float(rnd.randint(0, 16)),
        "max_concurrency": 16,
        "kv_cache_usage": rnd.random(),
        "ttft_p95_s": rnd.uniform(0.05, 1.5),
        "latency_p95_s": rnd.uniform(1.0, 10.0),
    }


def make_view(i: int, n_nodes: int, rnd: random.Random) -> TargetView:
    node = f"node-{i % n_nodes}"
    return TargetView(
        target_id=f"{MODEL}@default/{node}/10.0.{i // 250}.{i % 250}:8000",
        model=MODEL,
        node=node,
        endpoint=f"http://10.0.{i // 250}.{i % 250}:8000",
        zone=f"zone-{i % 4}",
        health="healthy",
        freshness=1.0,
        cost_per_mtok=rnd.choice([0.2, 0.4, 0.6]),
        mig_profile=rnd.choice(["", "", "", "3g.40gb"]),
        **fleet_state(i, rnd),  # type: ignore[arg-type]
    )


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_inprocess(n: int, decisions: int) -> dict[str, tuple[float, float]]:
    rnd = random.Random(n)
    n_nodes = max(1, n // 10)
    host = StrategyHost(rng=random.Random(1), budget_us=1e6)  # measure the strategies, not the fallback
    for i in range(n):
        host.upsert(make_view(i, n_nodes, rnd))
    host.refresh()
    gc.collect()
    gc.freeze()  # a long-lived router does the same after loading its view: the fleet is not garbage
    out = {}
    req = RouteRequest(MODEL, client_node="node-0", prompt_tokens=1000, max_tokens=200)
    for name in STRATEGIES:
        times: list[float] = []
        for d in range(decisions + 200):
            if d % 10 == 0:
                host.upsert(make_view(rnd.randrange(n), n_nodes, rnd))
            if d % 200 == 0:
                host.refresh()
            t0 = time.perf_counter_ns()
            decision = host.decide(req, strategy=name, k=3)
            t1 = time.perf_counter_ns()
            if d >= 200:  # warm-up excluded
                times.append((t1 - t0) / 1e3)
            assert decision.ranked and not decision.fallback, (name, decision.fallback_reason)
        out[name] = (pct(times, 0.5), pct(times, 0.99))
    gc.unfreeze()
    return out


def scoring_agent(workdir: Path) -> AgentProcess:
    """The agent whose ScoreTargets is measured: generous freshness and budget, so the strategies are what is timed."""
    cfg = {
        "node": {"id": "node-0", "roles": ["router"]},
        "listen": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
        "fusion": {"fresh_s": 3600, "stale_s": 7200, "expire_s": 7200},
        "scoring": {"budget_us": 100000},  # measure the strategies, not the fallback
        "shutdown": {"drain_s": 0, "grace_s": 1},
        "log": {"level": "info", "json": True},  # info: the line naming the address it serves on
    }
    return start_agent(cfg, workdir)


async def bench_grpc(address: str, n: int, rpcs: int, pushed: int) -> dict[str, tuple[float, float, float]]:
    """Grow the agent's fleet from `pushed` to `n` targets, then time ScoreTargets per strategy."""
    rnd = random.Random(n)
    n_nodes = max(1, n // 10)
    async with grpc.aio.insecure_channel(address) as ch:
        state = state_pb2_grpc.StatePlaneStub(ch)

        async def deltas():  # type: ignore[no-untyped-def]
            for i in range(pushed, n):
                v = make_view(i, n_nodes, rnd)
                d = state_pb2.ModelStateDelta(
                    model=MODEL,
                    endpoint=v.endpoint.replace("10.0.", f"10.{i % 7}."),
                    runtime="vllm",
                    cost_per_mtok=v.cost_per_mtok,
                    mig_profile=v.mig_profile,
                    **fleet_state(i, rnd),  # type: ignore[arg-type]
                )
                yield d

        ack = await state.PushModelState(deltas())
        assert ack.rejected == 0, list(ack.errors)
        listed = await state.ListTargets(state_pb2.ListTargetsRequest(model=MODEL))
        assert len(listed.targets) == n, (len(listed.targets), n)
        scoring = scoring_pb2_grpc.ScoringStub(ch)
        out = {}
        for name in STRATEGIES:
            req = scoring_pb2.ScoreRequest(model=MODEL, strategy=name, top_k=3, prompt_tokens=1000, max_tokens=200)
            for _ in range(30):
                await scoring.ScoreTargets(req)
            rtt: list[float] = []
            server: list[float] = []
            for _ in range(rpcs):
                t0 = time.perf_counter_ns()
                resp = await scoring.ScoreTargets(req)
                rtt.append((time.perf_counter_ns() - t0) / 1e3)
                server.append(resp.decision_us)
                assert resp.ranked and not resp.fallback, (name, resp.fallback_reason)
            out[name] = (pct(rtt, 0.5), pct(rtt, 0.99), statistics.median(server))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=5000, help="in-process decisions per strategy and size")
    ap.add_argument("--rpcs", type=int, default=300, help="ScoreTargets calls per strategy and size")
    ap.add_argument("--sizes", default="10,100,1000,10000")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    inproc = {n: bench_inprocess(n, args.decisions) for n in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        agent = scoring_agent(Path(tmp))
        try:
            over_grpc = {}
            pushed = 0
            for n in sizes:
                over_grpc[n] = asyncio.run(bench_grpc(agent.grpc, n, args.rpcs, pushed))
                pushed = n
        finally:
            agent.stop()

    print(f"{'strategy':<12} {'targets':>8} {'inproc p50 us':>14} {'inproc p99 us':>14} "
          f"{'grpc p50 us':>12} {'grpc p99 us':>12} {'agent decide p50 us':>20}")  # fmt: skip
    for name in STRATEGIES:
        for n in sizes:
            p50, p99 = inproc[n][name]
            g50, g99, srv = over_grpc[n][name]
            print(f"{name:<12} {n:>8} {p50:>14.1f} {p99:>14.1f} {g50:>12.0f} {g99:>12.0f} {srv:>20.1f}")
    big = sizes[-1]
    label = f"{big // 1000}k" if big >= 1000 else str(big)
    parts = [f"{name}_p99_us_{label}={inproc[big][name][1]:.1f}" for name in reversed(STRATEGIES)]
    parts.append(f"hybrid_mesh_grpc_p99_us_{label}={over_grpc[big]['hybrid_mesh'][1]:.0f}")
    print("summary: " + " ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
