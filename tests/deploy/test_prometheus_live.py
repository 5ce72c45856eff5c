"""Debian's prometheus scrapes a running mesh (portal, three agents with gossip and Raft linked to the portal, a
router fed by an agent, an emulated vLLM runtime) while traffic flows; then every PromQL expression of every shipped
dashboard panel and recording rule is evaluated through Prometheus' HTTP API and must return data. A query over a
metric we no longer export fails by name. `promtool check metrics` passes on every /metrics endpoint we serve."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.promql import Query, dashboard_queries, metric_names, rule_queries, tool
from tests.deploy.promserver import PromServer
from tests.e2e.mesh import Agent, Mesh, free_port, wait_for
from tests.router.procs import RouterProc, router_config, start_router

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
DEMO = {"Authorization": "Bearer demo-key"}
TIGHT = {"Authorization": "Bearer tight-key"}


class Stack:
    def __init__(self, mesh: Mesh, router: RouterProc, prom: PromServer) -> None:
        self.mesh, self.router, self.prom = mesh, router, prom

    def endpoints(self) -> dict[str, str]:
        out = {"portal": f"{self.mesh.base}/metrics", "router": f"{self.router.url}/metrics",
               "runtime": f"http://127.0.0.1:{self.mesh.runtime_port}/metrics"}  # fmt: skip
        for a in self.mesh.agents.values():
            out[f"agent {a.name}"] = f"http://127.0.0.1:{a.http_port}/metrics"
        return out


def _traffic(router: RouterProc, stop: threading.Event) -> None:
    """Chat completions, streamed and not, from two tenants, until told to stop (bounded: at most 60 s)."""
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=router.url, timeout=30) as c:
        while not stop.is_set() and time.monotonic() < deadline:
            body = {"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            c.post("/v1/chat/completions", json=body, headers=DEMO)
            with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=DEMO) as r:
                for _ in r.iter_bytes():
                    pass
            c.post("/v1/completions", json={"model": "demo-llm", "prompt": "x", "max_tokens": 2}, headers=TIGHT)
            time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("prom")
    gossip: dict[str, int] = {}

    def sections(agent: Agent) -> dict[str, Any]:
        port = gossip.setdefault(agent.name, free_port())
        seeds = [f"127.0.0.1:{gossip.setdefault(n, free_port())}" for n in mesh.names if n != agent.name]
        return {"gossip": {"bind": f"127.0.0.1:{port}", "seeds": seeds, "probe_interval_s": 0.3}}

    mesh = Mesh(work / "mesh", agents=3, celery=False, agent_sections=sections)
    router: RouterProc | None = None
    prom: PromServer | None = None
    try:
        mesh.start()
        last = mesh.agents[mesh.names[-1]]
        cfg = router_config(
            [],
            agent={"address": last.address},
            tenants=[
                {"name": "demo", "api_keys": ["demo-key"]},
                {"name": "tight", "api_keys": ["tight-key"], "quotas": {"requests_per_s": 1, "burst_requests": 1}},
            ],
            default_policy={"strategy": "least_queue", "shadow_strategy": "baseline_rr"},
        )
        router = start_router(cfg, work)
        wait_for("the agent's target in the router's view",
                 lambda: httpx.get(router.url + "/healthz", timeout=2).json()["targets"].get("agent"), timeout=30)  # type: ignore[union-attr]  # fmt: skip
        prom = PromServer(
            work / "prometheus",
            {
                "infermesh-portal": [mesh.base.removeprefix("http://")],
                "infermesh-agent": [f"127.0.0.1:{a.http_port}" for a in mesh.agents.values()],
                "infermesh-router": [router.url.removeprefix("http://")],
                "infermesh-runtime": [f"127.0.0.1:{mesh.runtime_port}"],
            },
        )
        prom.start()
        yield Stack(mesh, router, prom)
    finally:
        if prom is not None:
            prom.stop()
        if router is not None:
            router.stop()
        mesh.close()


def _evaluate(prom: PromServer, queries: list[Query]) -> list[str]:
    """Names what returned nothing: with the metrics it reads that Prometheus has never seen, if any."""
    known = set(prom.api("label/__name__/values"))
    problems = []
    for q in queries:
        if prom.query(q.expr):
            continue
        missing = sorted(metric_names(q.expr) - known)
        problems.append(f"{q.where}: no data" + (f" (not exported: {', '.join(missing)})" if missing else "")
                        + f"\n    {q.expr}")  # fmt: skip
    return problems


def test_every_dashboard_and_recording_rule_query_returns_data(stack: Stack) -> None:
    mesh, router, prom = stack.mesh, stack.router, stack.prom
    # A configuration change (outbox -> agents -> Raft) and a training job.
    tenant = mesh.api("POST", "tenants/", {"slug": "acme", "name": "Acme"})
    assert tenant["slug"] == "acme"
    spec = {"image": "local", "entrypoint": ["python", "-c", "pass"], "workers": {"min": 1, "max": 1},
            "gpus_per_worker": 1, "max_runtime_s": 60}  # fmt: skip
    mesh.api("POST", "jobs/", {"tenant": "ops", "name": "prom-job", "spec": spec})
    stop = threading.Event()
    worker = threading.Thread(target=_traffic, args=(router, stop), daemon=True)
    worker.start()
    try:
        # Two answers the runtime fails (500): counted by cause, and in the SLO's error ratio.
        faults = f"http://127.0.0.1:{mesh.runtime_port}/emulator/faults"
        httpx.post(faults, json={"error_rate": 1.0}, timeout=10).raise_for_status()
        body = {"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        codes = [httpx.post(router.url + "/v1/chat/completions", json=body, headers=DEMO, timeout=30).status_code
                 for _ in range(2)]  # fmt: skip
        httpx.post(faults, json={"reset": True}, timeout=10).raise_for_status()
        assert all(c >= 500 for c in codes), codes
        wait_for("every target scraped", lambda: set(prom.targets_up().values()) == {"up"}, timeout=30)
        queries = dashboard_queries() + rule_queries()
        assert len(queries) > 60
        # Give slow series (rates over 30 s windows, recorded rules) a few rounds, then name what stays empty.
        pending = queries
        problems: list[str] = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            problems = _evaluate(prom, pending)
            if not problems:
                break
            failed = {p.split(": no data")[0] for p in problems}
            pending = [q for q in pending if q.where in failed]
            time.sleep(2)
        assert not problems, "queries without data:\n" + "\n".join(problems)
        _check_label_schema(stack)
    finally:
        stop.set()
        worker.join(30)


def test_a_query_over_a_metric_we_do_not_export_fails_by_name(stack: Stack) -> None:
    gone = Query("dashboard x.json / panel 'Old' / A", "sum(rate(infermesh_router_requests_removed_total[30s]))")
    control = rule_queries()[:1]  # a query over a metric we export: it has data once Prometheus scraped the router
    body = {"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for _ in range(2):  # the router counts requests (the test may run without the one before it)
        httpx.post(stack.router.url + "/v1/chat/completions", json=body, headers=DEMO, timeout=30)
    deadline = time.monotonic() + 40
    while _evaluate(stack.prom, control) and time.monotonic() < deadline:
        time.sleep(2)
    problems = _evaluate(stack.prom, [gone, *control])
    assert len(problems) == 1, problems
    assert problems[0].startswith("dashboard x.json / panel 'Old' / A: no data (not exported: "
                                  "infermesh_router_requests_removed_total)")  # fmt: skip


def test_promtool_check_metrics_passes_on_every_endpoint(stack: Stack) -> None:
    """Ours must be clean. The emulated runtime reproduces vLLM's exposition byte for byte, whose names contain ':'
    (and one histogram ends in _total): those lint findings are vLLM's and stay; anything else fails it too."""
    promtool = tool("promtool")
    failures = []
    for name, url in stack.endpoints().items():
        text = httpx.get(url, timeout=10).text
        done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            continue
        findings = (done.stdout + done.stderr).strip().splitlines()
        if name == "runtime" and done.returncode == 3:
            findings = [f for f in findings if not f.startswith("vllm:")]
            if not findings:
                continue
        failures.append(f"{name} ({url}), exit {done.returncode}:\n  " + "\n  ".join(findings))
    assert not failures, "\n".join(failures)


def _check_label_schema(stack: Stack) -> None:
    """The seed's labels on the series that need them, as exposed (Prometheus drops a label whose value is empty,
    e.g. `quant` of an unquantized model, so the exposition is read directly). Bounds: docs/parts/deploy.md."""
    want = {
        "meshd_target_routable": {"model", "revision", "quant", "runtime", "node", "gpu_uuid", "mig_profile", "zone"},
        "meshd_gpu_healthy": {"node", "gpu_uuid", "mig_profile", "zone"},
        "infermesh_router_ttft_seconds": {"model", "revision", "runtime", "node", "gpu_uuid", "mig_profile", "zone"},
        "infermesh_router_requests": {"model", "tenant"},
        "infermesh_node_status": {"node", "zone", "status"},
        "infermesh_training_job_gpus": {"tenant", "job_id"},
        "infermesh_raft_leader": {"cluster", "group"},
    }
    seen: dict[str, set[str]] = {}
    for url in stack.endpoints().values():
        for fam in text_string_to_metric_families(httpx.get(url, timeout=10).text):
            for sample in fam.samples:
                seen.setdefault(fam.name, set()).update(sample.labels)
    for name, labels in want.items():
        assert name in seen, f"{name} is not exposed"
        assert labels <= seen[name], f"{name} lacks {sorted(labels - seen[name])}"
