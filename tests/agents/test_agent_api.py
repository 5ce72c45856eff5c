"""The agent's APIs against a real process: bad input never crashes it or poisons other targets, ctl verbs,
health checking and reflection, events, a config error at start, and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agents.emulator.testing import EmulatorProcess, start_emulator
from agents.proto.infermesh.v1 import (
    control_pb2,
    control_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
    state_pb2,
    state_pb2_grpc,
)
from tests.agents.harness import AgentProcess, run_agent_cli, start_agent
from tests.support import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def garbage_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 'runtime' whose /metrics is not Prometheus exposition."""
    root = tmp_path_factory.mktemp("garbage")
    (root / "metrics").write_text("<html><body>certainly not metrics {{{</body></html>\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def runtime() -> Iterator[EmulatorProcess]:
    em = start_emulator("--profile", "l40s", "--flavor", "vllm", "--model", "demo-llm", "--instant")
    try:
        yield em
    finally:
        em.stop()


@pytest.fixture(scope="module")
def agent(
    runtime: EmulatorProcess, garbage_runtime: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    proc = start_agent(
        {
            "node": {"id": "node-api", "roles": ["gpu"], "zone": "z1"},
            "scrape": {"interval_s": 0.3, "timeout_s": 0.5},
            "shutdown": {"drain_s": 0.1, "grace_s": 1.0},
            # a loaded test machine can overrun the default budget; these tests are about state, not speed
            "scoring": {"budget_us": 1_000_000},
            "runtimes": [{"url": runtime.url, "flavor": "vllm"}, {"url": garbage_runtime, "flavor": "vllm"}],
        },
        tmp_path_factory.mktemp("agent"),
    )
    try:
        yield proc
    finally:
        assert proc.stop() == 0


async def _wait_target(ch: grpc.aio.Channel, model: str) -> state_pb2.TargetState:
    stub = state_pb2_grpc.StatePlaneStub(ch)
    for _ in range(200):
        resp = await stub.ListTargets(state_pb2.ListTargetsRequest(model=model))
        if resp.targets and resp.targets[0].routable:
            return resp.targets[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no routable target for {model}")


async def _metrics(agent: AgentProcess) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://{agent.http}/metrics") as r:
        assert r.status == 200
        return await r.text()


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_bad_deltas_are_refused_counted_and_logged_without_poisoning(agent: AgentProcess) -> None:
    async with grpc.aio.insecure_channel(agent.grpc) as ch:
        emulated = await _wait_target(ch, "demo-llm")
        stub = state_pb2_grpc.StatePlaneStub(ch)
        ep = "http://127.0.0.1:1"

        async def model_deltas():  # type: ignore[no-untyped-def]
            yield state_pb2.ModelStateDelta(model="pushed", endpoint=ep, runtime="tgi", requests_waiting=2)
            yield state_pb2.ModelStateDelta(model="pushed", endpoint=ep, requests_waiting=math.nan, requests_running=1)
            yield state_pb2.ModelStateDelta(model="pushed", endpoint=ep, kv_cache_usage=-3, requests_waiting=2)
            yield state_pb2.ModelStateDelta(model="", endpoint=ep)
            yield state_pb2.ModelStateDelta(model="other", endpoint=ep, node="someone-else")
            yield state_pb2.ModelStateDelta(model="pushed", endpoint=ep, observed_unix_ms=1)

        ack = await stub.PushModelState(model_deltas())
        assert (ack.accepted, ack.rejected) == (3, 3)
        text = " | ".join(ack.errors)
        for needle in ("requests_waiting: NaN", "kv_cache_usage", "model.model: required", "model.node", "stale"):
            assert needle in text

        async def gpu_deltas():  # type: ignore[no-untyped-def]
            yield state_pb2.GpuStateDelta(uuid="GPU-x", utilization_gpu=math.inf, memory_total_bytes=-1)
            yield state_pb2.GpuStateDelta(uuid="")

        gack = await stub.PushGpuState(gpu_deltas())
        assert (gack.accepted, gack.rejected) == (1, 1)

        async def comm_deltas():  # type: ignore[no-untyped-def]
            yield state_pb2.CommStatsDelta(job_id="j", collective="allreduce", rank=0, n_ranks=2, bytes=8, time_s=0.1)
            yield state_pb2.CommStatsDelta(job_id="j", collective="allreduce", rank=0, n_ranks=2, time_s=-1)

        cack = await stub.PushCommStats(comm_deltas())
        assert (cack.accepted, cack.rejected) == (1, 1)
        comm = await stub.ListCommStats(state_pb2.ListCommStatsRequest(job_id="j"))
        assert [s.count for s in comm.summaries] == [1]

        pushed = (await stub.ListTargets(state_pb2.ListTargetsRequest(model="pushed"))).targets
        assert len(pushed) == 1 and pushed[0].requests_waiting == 2 and not pushed[0].HasField("kv_cache_usage")
        # the scraped target is untouched by all of this
        after = await stub.GetTarget(state_pb2.GetTargetRequest(target_id=emulated.target_id))
        assert after.routable and after.health == state_pb2.TARGET_HEALTH_HEALTHY

        scoring = scoring_pb2_grpc.ScoringStub(ch)
        out = await scoring.ReportOutcome(scoring_pb2.OutcomeReport(target_id="nope", ok=True))
        assert out.rejected == 1 and "unknown target" in out.errors[0]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await scoring.ScoreTargets(scoring_pb2.ScoreRequest(model="demo-llm", strategy="fastest"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "fastest" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetTarget(state_pb2.GetTargetRequest(target_id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        health = health_pb2_grpc.HealthStub(ch)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING

    text = await _metrics(agent)
    assert _sample(text, "meshd_rejections_total", kind="model", field="requests_waiting", reason="nan") >= 1
    assert _sample(text, "meshd_rejections_total", kind="model", field="node", reason="identity") >= 1
    assert _sample(text, "meshd_rejections_total", kind="gpu", field="utilization_gpu", reason="nan") >= 1
    # the garbage runtime's /metrics is counted as a parse error on every scrape, and logged (rate-limited)
    assert _sample(text, "meshd_scrapes_total", result="parse_error") >= 1
    assert _sample(text, "meshd_rejections_total", kind="model", field="metrics", reason="parse") >= 1
    logs = agent.log_records()
    assert any("unparseable /metrics" in r["msg"] for r in logs)
    assert any(r.get("field") == "requests_waiting" and r.get("reason") == "nan" for r in logs)
    assert agent.proc.poll() is None


async def test_health_reflection_and_healthz(agent: AgentProcess) -> None:
    async with grpc.aio.insecure_channel(agent.grpc) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("infermesh.v1.StatePlane", "infermesh.v1.Scoring", "infermesh.v1.Control"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = set()
        async for resp in call:
            names = {s.name for s in resp.list_services_response.service}
            break
        assert {"infermesh.v1.StatePlane", "infermesh.v1.Scoring", "grpc.health.v1.Health"} <= names
    async with aiohttp.ClientSession() as s, s.get(f"http://{agent.http}/healthz") as r:
        doc = await r.json()
        assert r.status == 200 and doc["status"] == "ok" and doc["node"] == "node-api"


def _ctl(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_agent_cli("ctl", *args, "--agent", agent.grpc)


async def test_ctl_verbs(agent: AgentProcess) -> None:
    async with grpc.aio.insecure_channel(agent.grpc) as ch:
        await _wait_target(ch, "demo-llm")
    nodes = _ctl(agent, "nodes", "--json")
    assert nodes.returncode == 0, nodes.stderr
    (node,) = json.loads(nodes.stdout)
    assert node["node_id"] == "node-api" and node["local"] and node["state"] == "NODE_STATE_ACTIVE"
    targets = json.loads(_ctl(agent, "targets", "--json", "--model", "demo-llm").stdout)
    assert [t["model"] for t in targets] == ["demo-llm"] and targets[0]["routable"]
    score = _ctl(agent, "score", "--model", "demo-llm", "--json")
    assert score.returncode == 0, score.stderr
    doc = json.loads(score.stdout)
    assert doc["strategy"] == "hybrid_mesh" and doc["ranked"][0]["target_id"] == targets[0]["target_id"]
    table = _ctl(agent, "targets")
    assert table.returncode == 0 and "demo-llm@default/node-api/" in table.stdout and "HEALTH" in table.stdout
    assert _ctl(agent, "gpus", "--json").returncode == 0
    models = json.loads(_ctl(agent, "models", "--json").stdout)
    assert {m["model"] for m in models} >= {"demo-llm"}
    missing = _ctl(agent, "score", "--model", "no-such-model")
    assert missing.returncode == 3 and "no routable target" in missing.stdout
    down = run_agent_cli("ctl", "nodes", "--agent", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert down.returncode == 1 and "cannot reach the agent" in down.stderr


async def test_cordon_events_and_admission(agent: AgentProcess) -> None:
    async with grpc.aio.insecure_channel(agent.grpc) as ch:
        target = await _wait_target(ch, "demo-llm")
        control = control_pb2_grpc.ControlStub(ch)
        scoring = scoring_pb2_grpc.ScoringStub(ch)
        events = control.SubscribeEvents(control_pb2.SubscribeEventsRequest(kinds=["node."]))
        # the replayed start event also proves the subscription is in place before the cordon
        assert (await asyncio.wait_for(events.read(), 10)).kind == "node.started"
        info = await control.Cordon(control_pb2.NodeActionRequest(reason="maintenance"))
        assert info.state == control_pb2.NODE_STATE_CORDONED
        event = await asyncio.wait_for(events.read(), 10)
        assert event.kind == "node.cordoned" and event.message == "maintenance"
        refused = await scoring.Admit(scoring_pb2.AdmitRequest(model="demo-llm"))
        assert not refused.admitted and "no routable target" in refused.reason and refused.retry_after_s > 0
        empty = await scoring.ScoreTargets(scoring_pb2.ScoreRequest(model="demo-llm"))
        assert list(empty.ranked) == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await control.Cordon(control_pb2.NodeActionRequest(node_id="node-zzz"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = await control.Uncordon(control_pb2.NodeActionRequest())
        assert info.state == control_pb2.NODE_STATE_ACTIVE
        assert (await asyncio.wait_for(events.read(), 10)).kind == "node.active"
        events.cancel()
        admitted = await scoring.Admit(scoring_pb2.AdmitRequest(model="demo-llm"))
        assert admitted.admitted and admitted.routable_targets == 1
        ranked = await scoring.ScoreTargets(scoring_pb2.ScoreRequest(model="demo-llm"))
        assert [s.target_id for s in ranked.ranked] == [target.target_id]
        # replayed history holds the target turning healthy
        replay = control.SubscribeEvents(control_pb2.SubscribeEventsRequest(kinds=["target."]))
        first = await asyncio.wait_for(replay.read(), 10)
        assert first.kind == "target.healthy"
        replay.cancel()
        bad = control_pb2.Policy(name="p1", kind="quota", spec_json="{not json")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await control.PutPolicy(control_pb2.PutPolicyRequest(policy=bad))
        assert "policy.spec_json" in (err.value.details() or "")
        stored = await control.PutPolicy(
            control_pb2.PutPolicyRequest(policy=control_pb2.Policy(name="p1", kind="quota", spec_json='{"rps": 5}'))
        )
        assert stored.version == 1
        listed = await control.ListPolicies(control_pb2.ListPoliciesRequest(kind="quota"))
        assert [p.name for p in listed.policies] == ["p1"]


def test_a_wrong_config_field_stops_the_agent_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("node: {id: x, roles: [gpu]}\nscrape: {intervall_s: 1}\n")
    result = run_agent_cli("agent", "--config", str(path))
    assert result.returncode == 2
    assert "scrape.intervall_s: unknown field" in result.stderr
    ok = run_agent_cli("agent", "--config", "docs/examples/agent.yaml", "--check")
    assert ok.returncode == 0, ok.stderr


async def test_graceful_shutdown_drains_then_stops(tmp_path: Path) -> None:
    proc = start_agent({"node": {"id": "node-stop", "roles": ["router"]}, "shutdown": {"drain_s": 2.0}}, tmp_path)
    try:
        async with grpc.aio.insecure_channel(proc.grpc) as ch:
            stub = state_pb2_grpc.StatePlaneStub(ch)

            async def push():  # type: ignore[no-untyped-def]
                yield state_pb2.ModelStateDelta(model="m", endpoint="http://127.0.0.1:1", requests_waiting=0)

            assert (await stub.PushModelState(push())).accepted == 1
            watch = stub.WatchTargets(state_pb2.WatchTargetsRequest())
            assert (await watch.read()).kind == state_pb2.TargetEvent.SNAPSHOT
            proc.proc.terminate()
            event = await asyncio.wait_for(watch.read(), 10)
            assert event.kind == state_pb2.TargetEvent.UPSERT and not event.targets[0].routable
            assert event.targets[0].health_reason == "shutting down"
            async with aiohttp.ClientSession() as s, s.get(f"http://{proc.http}/healthz") as r:
                assert r.status == 503 and (await r.json())["status"] == "draining"
            health = health_pb2_grpc.HealthStub(ch)
            resp = await health.Check(health_pb2.HealthCheckRequest())
            assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await asyncio.wait_for(watch.read(), 15) is grpc.aio.EOF  # streams end, not cut
        assert proc.proc.wait(20) == 0
        assert any("stopped" in r["msg"] for r in proc.log_records())
    finally:
        proc.stop()


async def test_emulated_gpus_map_onto_runtimes_and_a_gpu_fault_condemns_its_target(
    runtime: EmulatorProcess, tmp_path: Path
) -> None:
    proc = start_agent(
        {
            "node": {"id": "node-gpu", "roles": ["gpu"]},
            "scrape": {"interval_s": 0.3},
            "shutdown": {"drain_s": 0.1, "grace_s": 1.0},
            "gpu": {
                "source": "emulated",
                "options": {"profiles": ["h100", "a100-80gb"], "faults": ["xid 79@1"]},
                "poll_interval_s": 0.3,
            },
            "runtimes": [{"url": runtime.url, "flavor": "vllm", "gpus": [1], "cost_per_mtok": 0.5}],
        },
        tmp_path,
    )
    try:
        async with grpc.aio.insecure_channel(proc.grpc) as ch:
            stub = state_pb2_grpc.StatePlaneStub(ch)
            gpus = (await stub.ListGpus(state_pb2.ListGpusRequest())).gpus
            assert len(gpus) == 2
            by_index = {g.gpu.index: g for g in gpus}
            assert by_index[0].healthy and not by_index[1].healthy and "xid 79" in by_index[1].health_reason
            for _ in range(100):
                listed = (await stub.ListTargets(state_pb2.ListTargetsRequest())).targets
                if listed:
                    break
                await asyncio.sleep(0.1)
            (target,) = listed
            assert list(target.gpu_uuids) == [by_index[1].gpu.uuid] and target.cost_per_mtok == 0.5
            assert target.health == state_pb2.TARGET_HEALTH_UNHEALTHY and "xid 79" in target.health_reason
            assert target.HasField("vram_used_frac")

            async def unknown():  # type: ignore[no-untyped-def]
                yield state_pb2.GpuStateDelta(uuid="GPU-not-here", utilization_gpu=1)

            ack = await stub.PushGpuState(unknown())
            assert ack.rejected == 1 and "unknown GPU" in ack.errors[0]
        table = run_agent_cli("ctl", "gpus", "--agent", proc.grpc)
        assert table.returncode == 0 and "FAIL: xid 79" in table.stdout
    finally:
        assert proc.stop() == 0
