"""The portal governs routing, end to end with real processes: the portal on PostgreSQL, three agents in a Raft group
linked to it, two emulated runtimes (on node-1 and node-2) and two routers fed by node-1's and node-3's agents. The
catalog decides what a tenant's /v1/models lists and which names (aliases) reach a model; a routing policy set over
REST changes every router's strategy, A/B split and node pinning within 5 s, without a restart; a policy that cannot
be applied is refused whole and changes nothing at the routers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from agents.emulator.testing import start_emulator
from tests.e2e.mesh import Agent, Mesh, free_port, wait_for
from tests.router.procs import RouterProc, running_router

pytestmark = pytest.mark.e2e
APPLY_S = 5.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, RouterProc, RouterProc]]:
    tmp = tmp_path_factory.mktemp("portal-routing")
    ems = [
        start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm", "--instant", "--seed", "1"),
        start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm", "--instant", "--seed", "2"),
    ]
    by_node = {"node-1": ems[0].url, "node-2": ems[1].url}
    gossip = {f"node-{i}": free_port() for i in (1, 2, 3)}

    def sections(agent: Agent) -> dict[str, Any]:
        # Gossip carries node-2's target to node-1's agent, hence to the router.
        out: dict[str, Any] = {
            "gossip": {
                "bind": f"127.0.0.1:{gossip[agent.name]}",
                "host": agent.name,
                "seeds": [f"127.0.0.1:{p}" for p in gossip.values()],
            }
        }
        url = by_node.get(agent.name)
        if url:
            out.update(runtimes=[{"url": url, "flavor": "vllm", "gpus": [0]}], scrape={"interval_s": 0.3})
        return out

    mesh = Mesh(tmp, agents=3, runtime=False, celery=False, agent_sections=sections)
    try:
        mesh.start()
        with contextlib.ExitStack() as stack:
            routers = []
            for node in ("node-1", "node-3"):
                cfg = {
                    "listen": {"host": "127.0.0.1", "port": 0, "grpc_port": None},
                    "agent": {"address": mesh.agents[node].address, "node": node},
                    "tenants": [],
                    "default_policy": {"strategy": "hybrid_mesh"},
                }
                routers.append(stack.enter_context(running_router(cfg, tmp, name=f"router-{node}")))
            # The tenant's inference key, made in the portal (routers learn it from their agents).
            key = mesh.api("POST", "inference-keys/", {"tenant": "ops", "name": "routing"})["key"]
            for router in routers:
                router.key = key  # type: ignore[attr-defined]
                wait_for("both targets at the router", lambda r=router: len(_report(r, "demo-llm")["targets"]) == 2)
                wait_for("the portal's key at the router", lambda r=router: _models(r) is not None)
            yield mesh, routers[0], routers[1]
    finally:
        mesh.close()
        for em in ems:
            em.stop()


def _report(router: RouterProc, model: str) -> dict[str, Any]:
    body = httpx.get(f"{router.url}/infermesh/routing", params={"model": model}, timeout=5).json()
    return body["models"][0]  # type: ignore[no-any-return]


def _models(router: RouterProc) -> set[str] | None:
    resp = httpx.get(f"{router.url}/v1/models", headers={"Authorization": f"Bearer {router.key}"}, timeout=5)  # type: ignore[attr-defined]
    return {m["id"] for m in resp.json()["data"]} if resp.status_code == 200 else None


def _applied(what: str, check: Any) -> float:
    """Seconds until `check()` holds; fails past APPLY_S."""
    t0 = time.monotonic()
    wait_for(what, check, timeout=APPLY_S, every=0.1)
    return time.monotonic() - t0


def _counts(router: RouterProc) -> dict[str, int]:
    return {t["node"]: t["requests"] for t in _report(router, "demo-llm")["targets"]}


def _send(router: RouterProc, n: int, model: str = "demo-llm") -> None:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=router.key, max_retries=0)  # type: ignore[attr-defined]
    for i in range(n):
        out = client.completions.create(
            model=model, prompt=f"hello {i}", max_tokens=4, extra_headers={"x-request-id": f"req-{time.time_ns()}-{i}"}
        )
        assert out.choices[0].text


def test_catalog_policy_and_pins_reach_the_router_at_runtime(
    world: tuple[Mesh, RouterProc, RouterProc],
) -> None:
    mesh, router, other = world
    # Before the portal knows any model of the tenant, the router's own view decides.
    assert _models(router) == {"demo-llm"}
    assert _report(router, "demo-llm")["policy"]["source"] == "config"

    # The catalog: a model with an alias, a revision and a deployment; a second model without a deployment.
    model = mesh.api("POST", "models/", {"tenant": "ops", "name": "demo-llm", "aliases": ["chat"]})
    rev = mesh.api("POST", "revisions/", {"model": model["id"], "revision": "v1", "artifact_uri": "hf://demo/llm"})
    mesh.api("POST", "models/", {"tenant": "ops", "name": "draft-llm"})
    mesh.api("POST", "deployments/", {"revision": rev["id"], "zone": "zone-a", "min_replicas": 1, "max_replicas": 2})
    for r in (router, other):
        took = _applied("/v1/models to follow the catalog", lambda r=r: _models(r) == {"demo-llm", "chat"})
        print(f"catalog applied at {r.port} in {took:.2f}s")
    _send(router, 2, model="chat")  # the alias reaches the model's targets

    # A policy: least_queue, pinned to node-2.
    before = _counts(router)
    policy = mesh.api(
        "POST", "routing-policies/", {"tenant": "ops", "model": model["id"], "strategy": "least_queue",
                                      "pin_nodes": ["node-2"]},
    )  # fmt: skip

    def pinned(r: RouterProc) -> bool:
        p = _report(r, "demo-llm")["policy"]
        return p["source"] == "portal" and p["strategy"] == "least_queue" and p["pin_nodes"] == ["node-2"]

    for r in (router, other):
        took = _applied("the pinned policy at the router", lambda r=r: pinned(r))
        print(f"policy applied at {r.port} in {took:.2f}s")
    _send(router, 8)
    after = _counts(router)
    assert after["node-2"] - before.get("node-2", 0) == 8 and after["node-1"] == before.get("node-1", 0), after
    ranking = _report(router, "demo-llm")["ranking"]
    assert [r["target"].split("/")[1] for r in ranking] == ["node-2"] and ranking[0]["terms"], ranking

    # A bad change is refused whole: the router keeps what it had.
    bad = httpx.patch(
        f"{mesh.base}/api/v1/routing-policies/{policy['id']}/",
        json={"strategy": "baseline_rr", "ab_split": {"hybrid_mesh": 70, "least_queue": 20}},
        headers={"Authorization": f"Bearer {mesh.token}"},
        timeout=10,
    )
    assert bad.status_code == 422 and "ab_split" in bad.json()["error"]["fields"], bad.text

    # An A/B split, unpinned: both arms decide requests, both nodes serve.
    mesh.api(
        "PATCH", f"routing-policies/{policy['id']}/",
        {"ab_split": {"hybrid_mesh": 50, "least_queue": 50}, "pin_nodes": []},
    )  # fmt: skip

    def split(r: RouterProc) -> bool:
        p = _report(r, "demo-llm")["policy"]
        return p["ab_split"] == {"hybrid_mesh": 50.0, "least_queue": 50.0} and p["pin_nodes"] == []

    for r in (router, other):
        took = _applied("the A/B split at the router", lambda r=r: split(r))
        print(f"split applied at {r.port} in {took:.2f}s")
    assert _report(router, "demo-llm")["policy"]["strategy"] == "least_queue"  # the refused change left no trace
    decisions_before = _decisions(router)
    _send(router, 30)
    decisions = {k: v - decisions_before.get(k, 0) for k, v in _decisions(router).items()}
    assert decisions.get("hybrid_mesh", 0) >= 5 and decisions.get("least_queue", 0) >= 5, decisions

    # Deleting the model's deployment takes it (and its alias) off the tenant's list.
    deployments = mesh.api("GET", f"deployments/?revision={rev['id']}")["results"]
    for d in deployments:
        mesh.api("DELETE", f"deployments/{d['id']}/")
    for r in (router, other):
        _applied("the undeployed model to leave /v1/models", lambda r=r: _models(r) == set())


def _decisions(router: RouterProc) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{router.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("infermesh_router_decision_seconds_count{"):
            name = line.split('strategy="', 1)[1].split('"', 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out
