"""An emulated runtime and its emulated GPU are one device, end to end with real processes: one agent with two
emulated H100s (poor cooling), each serving an emulated runtime. Saturating one runtime raises its GPU's
utilisation, memory and temperature in `ctl gpus`, the ranking (`ctl score`) moves to the other, and the readings
the portal would receive make its thermal and throttling rules quarantine the node, from load alone."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from agents.ctl.common import to_dict
from agents.emulator.testing import EmulatorProcess, start_emulator
from agents.proto.infermesh.v1 import state_pb2, state_pb2_grpc
from meshweb.fleet import quarantine as q
from tests.agents.harness import AgentProcess, run_agent_cli, start_agent

pytestmark = pytest.mark.e2e

# four sequences at most and a tenfold slowdown: a few streams saturate the runtime and keep it saturated
_RUNTIME = (
    *("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm"),
    *("--max-num-seqs", "4", "--kv-tokens", "8192"),
)


@pytest.fixture
def runtimes() -> Iterator[list[EmulatorProcess]]:
    ems = [start_emulator(*_RUNTIME), start_emulator(*_RUNTIME)]
    try:
        httpx.post(f"{ems[0].url}/emulator/faults", json={"slowdown": 10.0}, timeout=5).raise_for_status()
        yield ems
    finally:
        for em in ems:
            em.stop()


@pytest.fixture
def agent(runtimes: list[EmulatorProcess], tmp_path: Path) -> Iterator[AgentProcess]:
    proc = start_agent(
        {
            "node": {"id": "node-hot", "roles": ["gpu"]},
            "scrape": {"interval_s": 0.2},
            "shutdown": {"drain_s": 0.1, "grace_s": 1.0},
            "scoring": {"budget_us": 1_000_000},  # these tests are about state, not speed
            "gpu": {
                "source": "emulated",
                "options": {"profiles": ["h100", "h100"], "cooling": "hot", "thermal_tau_s": 1.5},
                "poll_interval_s": 0.25,
            },
            "runtimes": [{"url": em.url, "flavor": "vllm", "gpus": [i]} for i, em in enumerate(runtimes)],
        },
        tmp_path,
    )
    try:
        yield proc
    finally:
        assert proc.stop() == 0


def _ctl_json(agent: AgentProcess, *args: str) -> Any:
    done = run_agent_cli("ctl", *args, "--agent", agent.grpc, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _gpus(agent: AgentProcess, *, ctl: bool = False) -> dict[int, dict[str, Any]]:
    """The agent's GPUs as `ctl gpus --json` prints them (read over gRPC while polling: no process per reading)."""
    if ctl:
        listed = _ctl_json(agent, "gpus")
    else:
        with grpc.insecure_channel(agent.grpc) as ch:
            listed = [to_dict(g) for g in state_pb2_grpc.StatePlaneStub(ch).ListGpus(state_pb2.ListGpusRequest()).gpus]
    return {int(g["gpu"]["index"]): g["gpu"] for g in listed}


def _flood(url: str, stop: threading.Event) -> None:
    # long prompts: four of them fill most of the 8192-token KV cache at once
    body = {"model": "demo-llm", "prompt": "hello " * 1200, "max_tokens": 3000, "stream": True}
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            try:
                with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
                    for _ in resp.iter_lines():
                        if stop.is_set():
                            return  # closing the stream aborts the sequence in the runtime
            except httpx.HTTPError:
                time.sleep(0.1)


def test_saturating_a_runtime_heats_its_gpu_moves_the_ranking_and_quarantines_by_heat(
    runtimes: list[EmulatorProcess], agent: AgentProcess
) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with grpc.insecure_channel(agent.grpc) as ch:
            listed = state_pb2_grpc.StatePlaneStub(ch).ListTargets(state_pb2.ListTargetsRequest()).targets
        targets = [to_dict(t) for t in listed]
        if len(targets) == 2 and all(t["routable"] for t in targets):
            break
        time.sleep(0.2)
    by_endpoint = {t["endpoint"]: t["target_id"] for t in targets}
    busy_target, idle_target = by_endpoint[runtimes[0].url], by_endpoint[runtimes[1].url]
    before = _gpus(agent)
    assert float(before[0]["utilization_gpu"]) < 5 and float(before[0]["temperature_c"]) < 40
    stop = threading.Event()
    load = [threading.Thread(target=_flood, args=(runtimes[0].url, stop), daemon=True) for _ in range(10)]
    for t in load:
        t.start()
    samples: list[q.Sample] = []
    hot_in_a_row = 0
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            gpus = _gpus(agent)
            # the GpuRollup fields the portal's rules read
            keys = ("uuid", "temperature_c", "slowdown_temp_c", "throttle_reasons")
            rollups = [{k: g[k] for k in keys if k in g} for g in gpus.values()]
            samples.append(q.sample_from_telemetry(time.time(), {"gpus": rollups}))
            throttled = "sw_thermal_slowdown" in gpus[0].get("throttle_reasons", [])
            hot_in_a_row = hot_in_a_row + 1 if throttled else 0
            if hot_in_a_row >= 4:
                break
            time.sleep(0.25)
        shown = _gpus(agent, ctl=True)
        hot, cool = shown[0], shown[1]
        ranked = _ctl_json(agent, "score", "--model", "demo-llm")["ranked"]
    finally:
        stop.set()
        for t in load:
            t.join(10)
    # the saturated runtime's GPU: busy, its KV cache filled, hot and throttled
    assert float(hot["utilization_gpu"]) > 90, hot
    assert int(hot["memory_used_bytes"]) > int(before[0]["memory_used_bytes"]) + 20e9, (hot, before[0])
    assert float(hot["temperature_c"]) > float(hot["slowdown_temp_c"]), hot
    assert float(hot["sm_clock_mhz"]) < 1980 and float(hot["power_w"]) > 400, hot
    # the idle runtime's GPU: still idle and cool
    assert float(cool["utilization_gpu"]) < 5 and float(cool["temperature_c"]) < 40, cool
    order = [r["target_id"] for r in ranked]
    assert order[0] == idle_target and busy_target in order, ranked
    # the portal's rules on these readings: the node is quarantined for heat, from load alone
    decision = q.decide(q.State(status="active"), samples, time.time(), q.Rules(throttle_samples=3))
    assert decision.action == "quarantine", decision
    rules = {f.rule for f in decision.findings}
    assert "thermal" in rules and "throttle" in rules, decision.findings
    assert all(f.evidence["gpu"] == hot["uuid"] for f in decision.findings)
