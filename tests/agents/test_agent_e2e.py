"""End to end with real processes on loopback: an agent scraping two emulated runtimes of different GPU profiles.

Load on one runtime must show in the agent's fused state and ScoreTargets ranking within a scrape interval (with
generous margins for a loaded machine); killing a runtime marks its targets unhealthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from agents.emulator.testing import EmulatorProcess, start_emulator
from agents.proto.infermesh.v1 import scoring_pb2, scoring_pb2_grpc, state_pb2, state_pb2_grpc
from tests.agents.harness import AgentProcess, start_agent

pytestmark = pytest.mark.e2e
SCRAPE_S = 0.5
# "within one scrape interval", plus slack for a shared 2-core machine: the assertion is that state follows,
# not how fast.
FOLLOW_DEADLINE_S = SCRAPE_S + 10.0


@pytest.fixture
def runtimes() -> Iterator[tuple[EmulatorProcess, EmulatorProcess]]:
    # Few batch slots so that a handful of long requests builds a visible queue.
    a = start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm", "--max-num-seqs", "2")
    try:
        b = start_emulator("--profile", "a100-80gb", "--flavor", "vllm", "--model", "demo-llm", "--max-num-seqs", "2")
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def agent(runtimes: tuple[EmulatorProcess, EmulatorProcess], tmp_path: Path) -> Iterator[AgentProcess]:
    a, b = runtimes
    proc = start_agent(
        {
            "node": {"id": "node-e2e", "roles": ["gpu", "router"]},
            "scrape": {"interval_s": SCRAPE_S, "timeout_s": 0.4},
            "shutdown": {"drain_s": 0.1, "grace_s": 1.0},
            # a loaded test machine can overrun the default budget; these tests are about state, not speed
            "scoring": {"budget_us": 1_000_000},
            "runtimes": [{"url": a.url, "flavor": "vllm"}, {"url": b.url, "flavor": "vllm"}],
        },
        tmp_path,
    )
    try:
        yield proc
    finally:
        assert proc.stop() == 0


async def eventually(check: Callable[[], object], deadline_s: float, what: str) -> object:
    """Poll an async or sync check until it returns something truthy."""
    end = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < end:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {deadline_s}s (last: {last!r})")


@contextlib.asynccontextmanager
async def load(url: str, n: int) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Keep `n` long streaming completions open against one runtime."""
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            body = {"model": "demo-llm", "prompt": "tell me a long story " * 50, "max_tokens": 4000, "stream": True}
            async with session.post(f"{url}/v1/completions", json=body) as resp:
                async for _ in resp.content:
                    pass

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        try:
            yield tasks
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def target_id(url: str) -> str:
    return f"demo-llm@default/node-e2e/{url.removeprefix('http://')}"


async def test_load_moves_fused_state_and_ranking_then_a_dead_runtime_is_unhealthy(
    runtimes: tuple[EmulatorProcess, EmulatorProcess], agent: AgentProcess
) -> None:
    a, b = runtimes
    ta, tb = target_id(a.url), target_id(b.url)
    async with grpc.aio.insecure_channel(agent.grpc) as ch:
        state = state_pb2_grpc.StatePlaneStub(ch)
        scoring = scoring_pb2_grpc.ScoringStub(ch)

        async def targets() -> dict[str, state_pb2.TargetState]:
            resp = await state.ListTargets(state_pb2.ListTargetsRequest(model="demo-llm"))
            return {t.target_id: t for t in resp.targets}

        async def both_healthy() -> bool:
            ts = await targets()
            return set(ts) == {ta, tb} and all(t.routable for t in ts.values())

        await eventually(both_healthy, 20, "both runtimes scraped")

        # A watcher sees the full set first, then changes.
        watch = state.WatchTargets(state_pb2.WatchTargetsRequest(model="demo-llm"))
        first = await watch.read()
        assert first.kind == state_pb2.TargetEvent.SNAPSHOT
        assert {t.target_id for t in first.targets} == {ta, tb}
        upserts: list[state_pb2.TargetEvent] = []

        async def collect() -> None:
            while True:
                event = await watch.read()
                if event is grpc.aio.EOF:
                    return
                upserts.append(event)

        collector = asyncio.create_task(collect())

        async with load(a.url, 8):

            async def emulator_busy() -> bool:
                async with aiohttp.ClientSession() as s, s.get(f"{a.url}/emulator/stats") as r:
                    stats = await r.json()
                return stats["waiting"] >= 2

            await eventually(emulator_busy, 20, "load reaching runtime A")
            loaded_at = time.monotonic()

            async def fused_follows() -> bool:
                ts = await targets()
                return ts[ta].requests_waiting >= 2 and ts[ta].requests_running >= 1 and ts[tb].requests_waiting == 0

            await eventually(fused_follows, FOLLOW_DEADLINE_S, "fused state following the load")

            for strategy in ("hybrid_mesh", "least_queue"):
                resp = await scoring.ScoreTargets(
                    scoring_pb2.ScoreRequest(model="demo-llm", strategy=strategy, top_k=2, max_tokens=200)
                )
                assert [s.target_id for s in resp.ranked] == [tb, ta], strategy
                assert not resp.fallback
            hybrid = await scoring.ScoreTargets(scoring_pb2.ScoreRequest(model="demo-llm", top_k=2))
            assert hybrid.ranked[1].terms["wait"] > hybrid.ranked[0].terms["wait"]
            followed_in = time.monotonic() - loaded_at
            assert followed_in < FOLLOW_DEADLINE_S

            def watcher_saw_queue() -> bool:
                return any(
                    t.target_id == ta and t.requests_waiting >= 2
                    for e in upserts
                    if e.kind == state_pb2.TargetEvent.UPSERT
                    for t in e.targets
                )

            await eventually(watcher_saw_queue, FOLLOW_DEADLINE_S, "WatchTargets carrying the change")

        # Kill runtime A: its target turns unhealthy and leaves the ranking; B is untouched.
        a.proc.kill()
        a.proc.wait()

        async def a_unhealthy() -> bool:
            ts = await targets()
            return ts[ta].health == state_pb2.TARGET_HEALTH_UNHEALTHY and not ts[ta].routable

        await eventually(a_unhealthy, FOLLOW_DEADLINE_S, "killed runtime marked unhealthy")
        ts = await targets()
        assert "scrape failed" in ts[ta].health_reason
        assert ts[tb].routable and ts[tb].health == state_pb2.TARGET_HEALTH_HEALTHY
        resp = await scoring.ScoreTargets(scoring_pb2.ScoreRequest(model="demo-llm", top_k=3))
        assert [s.target_id for s in resp.ranked] == [tb]
        admit = await scoring.Admit(scoring_pb2.AdmitRequest(model="demo-llm"))
        assert admit.admitted and admit.routable_targets == 1

        await eventually(
            lambda: any(not t.routable for e in upserts for t in e.targets if t.target_id == ta),
            FOLLOW_DEADLINE_S,
            "WatchTargets reporting the dead runtime",
        )
        watch.cancel()
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await collector
