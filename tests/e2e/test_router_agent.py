"""Router fed by a real agent's WatchTargets stream: decides locally, reports outcomes, and keeps serving in
local-only mode (last view + static targets, with a metric and a log line) when the agent dies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from agents.emulator.testing import EmulatorProcess, start_emulator
from agents.proto.infermesh.v1 import state_pb2, state_pb2_grpc
from tests.router.agentproc import router_agent
from tests.router.procs import RouterProc, router_config, running_router

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": "Bearer demo-key"}


@pytest.fixture
def ems() -> Iterator[list[EmulatorProcess]]:
    started = [
        start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm", "--seed", "1"),
        start_emulator("--profile", "l40s", "--flavor", "vllm", "--model", "demo-llm", "--seed", "2"),
        start_emulator("--profile", "a100", "--flavor", "vllm", "--model", "demo-llm", "--seed", "3"),
    ]
    yield started
    for em in started:
        em.stop()


def _wait(pred: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def _health(rp: RouterProc) -> dict[str, object]:
    h: dict[str, object] = httpx.get(rp.url + "/healthz", timeout=5).json()
    return h


def _local_only_gauge(rp: RouterProc) -> float:
    for line in httpx.get(rp.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("infermesh_router_local_only "):
            return float(line.split()[1])
    raise AssertionError("infermesh_router_local_only missing")


def _complete(rp: RouterProc) -> httpx.Response:
    body = {"model": "demo-llm", "prompt": "hello", "max_tokens": 3}
    return httpx.post(rp.url + "/v1/completions", json=body, headers=AUTH, timeout=30)


def test_agent_view_outcomes_and_local_only_mode(ems: list[EmulatorProcess], tmp_path: Path) -> None:
    agent = router_agent([e.url for e in ems[:2]], tmp_path).start()
    try:
        # The third runtime is only a static target: it must stay in the view in local-only mode.
        cfg = router_config([ems[2].url], agent={"address": agent.address}, default_policy={"strategy": "baseline_rr"})
        with running_router(cfg, tmp_path) as rp:
            assert _wait(lambda: _health(rp)["targets"] == {"static": 1, "agent": 2} and not _health(rp)["local_only"])
            assert _local_only_gauge(rp) == 0
            for _ in range(9):
                assert _complete(rp).status_code == 200
            served = {e["target"] for e in rp.logs() if e.get("msg") == "access"}
            assert sum(1 for t in served if "node-a" in t) == 2  # the agent's target ids, decided locally
            assert len(served) == 3

            def reported() -> bool:
                with grpc.insecure_channel(agent.address) as ch:
                    resp = state_pb2_grpc.StatePlaneStub(ch).ListTargets(state_pb2.ListTargetsRequest(), timeout=5)
                return sum(t.outcomes_ok for t in resp.targets) >= 6

            assert _wait(reported), "outcomes did not reach the agent"

            agent.kill()
            assert _wait(lambda: _health(rp)["local_only"] is True)
            assert _local_only_gauge(rp) == 1
            msgs = [e for e in rp.logs() if "local-only" in str(e.get("msg"))]
            assert msgs and msgs[0]["agent"] == agent.address
            # Still serving: the last view from the agent plus the static target.
            for _ in range(6):
                assert _complete(rp).status_code == 200
            assert _health(rp)["targets"] == {"static": 1, "agent": 2}

            # The agent comes back on the same address: the router re-syncs and leaves local-only mode.
            agent.start()
            assert _wait(lambda: _health(rp)["local_only"] is False, timeout=30)
            assert _local_only_gauge(rp) == 0
            assert any("reachable again" in str(e.get("msg")) for e in rp.logs())
    finally:
        agent.kill()
