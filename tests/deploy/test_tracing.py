"""Traces end to end over OTLP/gRPC into a real receiver (opentelemetry-proto's TraceService): a streamed chat
completion sent with the client's `traceparent` arrives as one connected trace, client span -> router's SERVER span ->
the runtime's SERVER span; a config change made over the portal's REST API arrives as one connected trace, portal
REST -> outbox -> the agent's apply -> the Store call -> Raft's commit. With tracing's exporter off the router never
loads the exporter."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agents.emulator.testing import start_emulator
from tests.deploy.otlp import HttpReceiver, ReceivedSpan, Receiver
from tests.e2e.mesh import Mesh, wait_for
from tests.router.procs import router_config, running_router

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # SpanKind in OTLP's enum


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export each batch within 0.1 s (the SDK's own setting)
    with Receiver() as r:
        yield r


def test_a_streamed_chat_completion_is_one_connected_trace(receiver: Receiver, tmp_path: Path) -> None:
    em = start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm", "--instant",
                        "--otlp-endpoint", receiver.endpoint)  # fmt: skip
    try:
        cfg = router_config([em.url], tracing={"exporter": "otlp", "endpoint": receiver.endpoint})
        with running_router(cfg, tmp_path) as rp:
            trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
            body = {"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                    "stream": True}  # fmt: skip
            headers = {"Authorization": "Bearer demo-key", "traceparent": f"00-{trace_id}-{client_span}-01"}
            with httpx.stream("POST", rp.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
                assert r.status_code == 200
                chunks = b"".join(r.iter_bytes())
            assert chunks.rstrip().endswith(b"data: [DONE]")

            def both() -> list[ReceivedSpan] | None:
                spans = receiver.trace(trace_id)
                services = {s.service for s in spans}
                return spans if services >= {"infermesh-router", "infermesh-runtime-emulator"} else None

            spans = wait_for("spans of the router and the runtime", both, timeout=20)
    finally:
        em.stop()
    (router,) = [s for s in spans if s.service == "infermesh-router"]
    (runtime,) = [s for s in spans if s.service == "infermesh-runtime-emulator"]
    assert router.name == "POST /v1/chat/completions" and router.kind == SERVER
    assert router.parent_span_id == client_span  # the client's traceparent is the router span's parent
    assert runtime.kind == SERVER and runtime.name == "POST /v1/chat/completions"
    assert runtime.parent_span_id == router.span_id  # the router's span travelled to the runtime
    assert router.span_id != client_span


def test_a_config_change_is_one_connected_trace(receiver: Receiver, tmp_path: Path) -> None:
    """Portal and agent export over OTLP from OpenTelemetry's own environment variables; the trace context travels
    in the outbox entry and the portal link's `changes` frame, then in the Store call's gRPC metadata."""
    mesh = Mesh(tmp_path / "mesh", agents=1, runtime=False, celery=False,
                env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint})  # fmt: skip
    try:
        mesh.start()
        mesh.api("POST", "tenants/", {"slug": "traced", "name": "Traced"})
        quota = mesh.api("GET", "quotas/?tenant__slug=traced")["results"][0]
        trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
        mesh.api("PATCH", f"quotas/{quota['id']}/", {"requests_per_s": 17.0},
                 headers={"traceparent": f"00-{trace_id}-{client_span}-01"})  # fmt: skip

        def committed() -> list[ReceivedSpan] | None:
            spans = receiver.trace(trace_id)
            return spans if any(s.name == "raft.commit" for s in spans) else None

        spans = wait_for("the agent's Raft commit in the change's trace", committed, timeout=30)

        # The router's calls to its agent (here the mirror of the portal's tenants and keys reading the store):
        # a CLIENT span each, continued by a SERVER span in the agent.
        cfg = router_config(["http://127.0.0.1:9"], agent={"address": mesh.agents["node-1"].address},
                            tracing={"exporter": "otlp", "endpoint": receiver.endpoint})  # fmt: skip
        with running_router(cfg, tmp_path):

            def agent_call() -> tuple[ReceivedSpan, ReceivedSpan] | None:
                with receiver._lock:
                    got = list(receiver.spans)
                calls = {s.span_id: s for s in got if s.service == "infermesh-router" and s.kind == CLIENT}
                served = [s for s in got if s.service == "infermesh-agent" and s.parent_span_id in calls]
                return (calls[served[0].parent_span_id], served[0]) if served else None

            call, served = wait_for("a router -> agent call in one trace", agent_call, timeout=30)
    finally:
        mesh.close()
    assert call.name == served.name == "infermesh.v1.Store/Get" and served.kind == SERVER
    assert call.trace_id == served.trace_id
    by_id = {s.span_id: s for s in spans}
    (rest,) = [s for s in spans if s.service == "infermesh-portal" and s.kind == SERVER]
    assert rest.name == "PATCH /api/v1/quotas/<pk>/" and rest.parent_span_id == client_span
    publishes = [s for s in spans if s.name == "outbox.publish"]
    assert publishes and all(p.kind == PRODUCER and p.parent_span_id == rest.span_id for p in publishes)
    applies = [s for s in spans if s.name == "portal.apply"]
    assert applies, [s.name for s in spans]
    for apply in applies:  # each change the write made, applied by the agent under the write's span
        assert apply.service == "infermesh-agent" and apply.kind == CONSUMER
        assert by_id[apply.parent_span_id].name == "outbox.publish"
    commits = [s for s in spans if s.name == "raft.commit"]
    for commit in commits:  # Raft's commit under the Store call the agent's applier made to its own Store service
        store = by_id[commit.parent_span_id]
        assert store.name == "infermesh.v1.Store/Put" and store.kind == SERVER
        assert by_id[store.parent_span_id].name == "portal.apply"
    assert len(commits) == len(applies)
    # One connected trace: every span's parent is in it, except the portal's (the client's span).
    assert all(s.parent_span_id in by_id for s in spans if s is not rest)


def test_otlp_over_http_protobuf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    em = start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm", "--instant")
    try:
        with HttpReceiver() as receiver:
            tracing = {"exporter": "otlp", "protocol": "http/protobuf", "endpoint": receiver.endpoint}
            with running_router(router_config([em.url], tracing=tracing), tmp_path) as rp:
                trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
                headers = {"Authorization": "Bearer demo-key", "traceparent": f"00-{trace_id}-{client_span}-01"}
                body = {"model": "demo-llm", "prompt": "hi", "max_tokens": 2}
                assert httpx.post(rp.url + "/v1/completions", json=body, headers=headers, timeout=30).status_code == 200
                (span,) = wait_for("the router's span over HTTP", lambda: receiver.sink.trace(trace_id), timeout=20)
    finally:
        em.stop()
    assert span.service == "infermesh-router" and span.parent_span_id == client_span


def test_no_exporter_is_loaded_when_tracing_exports_nothing() -> None:
    code = (
        "import sys\n"
        "from router.config import TracingConfig\n"
        "from router.obs import setup_tracing, tracer\n"
        "for cfg in (TracingConfig(), TracingConfig(enabled=False)):\n"
        "    setup_tracing(cfg)\n"
        "    assert not tracer().start_span('x').is_recording()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.exporter')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2], env=os.environ.copy())  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_otlp_without_an_endpoint_is_refused() -> None:
    from pydantic import ValidationError

    from router.config import TracingConfig

    with pytest.raises(ValidationError, match=r"tracing\.endpoint is required"):
        TracingConfig(exporter="otlp")
    with pytest.raises(ValidationError):
        TracingConfig(exporter="otlp", endpoint="127.0.0.1:4317", sample_ratio=1.5)


def test_training_steps_and_all_reduce_buckets_are_spans(receiver: Receiver, tmp_path: Path) -> None:
    """Two DDP ranks (CPU, gloo, real torchrun) with OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set, as a trainer agent's
    environment passes it on: each rank's run is a trace of `train.step` spans holding its buckets' all-reduces."""
    root = str(Path(__file__).resolve().parents[2])
    env = os.environ | {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint, "INFERMESH_JOB_ID": "7",
                        "INFERMESH_REPORT_DIR": str(tmp_path), "PYTHONPATH": root}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "agents.trainer.worker", "--steps", "3", "--hidden", "64", "--checkpoint-every", "100"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with receiver._lock:  # the workers flushed before they exited
        spans = list(receiver.spans)
    runs = [s for s in spans if s.name == "train.run"]
    assert len(runs) == 2 and {s.service for s in spans} == {"infermesh-trainer"}
    for run in runs:
        steps = [s for s in spans if s.name == "train.step" and s.parent_span_id == run.span_id]
        assert len(steps) == 3 and all(s.trace_id == run.trace_id for s in steps)
        for step in steps:
            buckets = [s for s in spans if s.name == "allreduce.bucket" and s.parent_span_id == step.span_id]
            assert buckets, f"no all-reduce bucket under step span {step.span_id}"
