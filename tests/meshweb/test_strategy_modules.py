"""WebAssembly strategies as portal policy artifacts: uploaded over REST (checked as a router would load them, the
checksum pinned), named by a model's routing policy as module:<sha256>, carried by the portal's store keys to a real
agent, and routing real requests through a real router that verified the bytes against the checksum."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime

from agents.store.schema import check_value
from meshweb.meshlink.changes import snapshot_entries
from meshweb.meshlink.models import OutboxEntry
from meshweb.policy.models import MAX_MODULE_BYTES, StrategyModule
from meshweb.tenancy.models import Tenant
from tests.agents.test_strategy_operations import EXAMPLE, _chat, _put, _wait, delayed_upstream, store_agent
from tests.meshweb.conftest import World, make_client
from tests.router.procs import router_config, running_router

pytestmark = pytest.mark.django_db

EXAMPLE_WASM = wasmtime.wat2wasm(EXAMPLE.read_text())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def operator(world: World, token_for: Callable[[Tenant, str], str]) -> Any:
    return make_client(token_for(world.own.tenant, "operator"))


def test_uploads_that_a_router_would_refuse_are_refused_by_name(world: World, operator: Any) -> None:
    no_exports = wasmtime.wat2wasm('(module (memory (export "memory") 1))')
    wrong_abi = wasmtime.wat2wasm(
        EXAMPLE.read_text().replace("(result i32) (i32.const 1))", "(result i32) (i32.const 7))")
    )
    wasi = wasmtime.wat2wasm(
        '(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))'
    )
    cases = {
        "lacks the export(s) infermesh_abi_version, alloc, rank": {"wasm": _b64(no_exports)},
        "speaks ABI version 7; this host speaks 1": {"wasm": _b64(wrong_abi)},
        "imports wasi_snapshot_preview1.fd_write": {"wasm": _b64(wasi)},
        "Checksum mismatch": {"wasm": _b64(EXAMPLE_WASM), "sha256": "0" * 64},
        f"over the {MAX_MODULE_BYTES} limit": {
            "wasm": _b64(EXAMPLE_WASM + b"\0" * (MAX_MODULE_BYTES - len(EXAMPLE_WASM) + 1))
        },
        "Give the module in base64": {"wasm": "not base64!"},
    }
    before = OutboxEntry.objects.count()
    for message, body in cases.items():
        resp = operator.post("/api/v1/strategy-modules/", {"tenant": "acme", "name": "lq", **body}, format="json")
        assert resp.status_code == 422 and message in resp.content.decode(), (message, resp.content[:300])
    assert not StrategyModule.objects.exists() and OutboxEntry.objects.count() == before
    # a policy naming a module nobody uploaded is refused
    pid = world.own.objects["routing_policy"].pk
    resp = operator.patch(f"/api/v1/routing-policies/{pid}/", {"strategy": f"module:{'1' * 64}"}, format="json")
    assert resp.status_code == 422 and "No uploaded strategy module" in resp.content.decode()


@pytest.mark.e2e
def test_a_module_pushed_by_the_portal_routes_real_requests(world: World, operator: Any, tmp_path: Path) -> None:
    digest = hashlib.sha256(EXAMPLE_WASM).hexdigest()
    resp = operator.post(
        "/api/v1/strategy-modules/",
        {"tenant": "acme", "name": "least-queue", "wasm": _b64(EXAMPLE_WASM), "sha256": digest},
        format="json",
    )
    assert resp.status_code == 201, resp.content
    assert resp.json()["strategy"] == f"module:{digest}" and resp.json()["size"] == len(EXAMPLE_WASM)
    pid = world.own.objects["routing_policy"].pk
    resp = operator.patch(f"/api/v1/routing-policies/{pid}/", {"strategy": f"module:{digest}"}, format="json")
    assert resp.status_code == 200, resp.content
    module_key = f"kv/portal/strategy-modules/{digest}"
    row = OutboxEntry.objects.filter(key=module_key).latest("version")
    assert row.value["sha256"] == digest and base64.b64decode(row.value["wasm_b64"]) == EXAMPLE_WASM
    # What routers read of the portal's keys, as the agents' stores hold them (the store accepts each value).
    keys = {
        p.key: p.value
        for p in snapshot_entries()
        if p.value is not None and p.key.startswith(("kv/portal/", "routing/"))
    }
    for key, value in keys.items():
        check_value(key, json.dumps(value))
    assert keys[f"routing/policy-{pid}"]["strategy"] == f"module:{digest}"
    with store_agent(tmp_path) as agent, delayed_upstream(0.0) as a, delayed_upstream(0.0) as b:
        _put(agent, keys)
        cfg = router_config([], agent={"address": agent.address}, tenants=[{"name": "acme", "api_keys": ["demo-key"]}])
        cfg["targets"] = [
            {"model": "acme-llm", "url": u, "runtime": "vllm", "node": f"n{i}"} for i, u in enumerate((a, b))
        ]
        with running_router(cfg, tmp_path) as r:

            def deciding() -> str | None:
                doc = httpx.get(r.url + "/infermesh/strategies", params={"model": "acme-llm"}).json()
                return str(doc["models"][0]["deciding"] or "") or None

            spec_prefix = "wasm:"
            _wait("the module's policy at the router", lambda: (_chat(r.url, "acme-llm", 0) == 200) and (
                (deciding() or "").startswith(spec_prefix)))  # fmt: skip
            codes = [_chat(r.url, "acme-llm", i) for i in range(1, 9)]
            doc = httpx.get(r.url + "/infermesh/strategies", params={"model": "acme-llm"}).json()
    assert codes == [200] * 8
    live = doc["models"][0]["live"]
    assert live.startswith("wasm:") and live.endswith(f".wasm#sha256={digest}"), live
    held = {s["name"]: s for s in doc["strategies"]}
    assert held[live]["kind"] == "wasm" and held[live]["decisions"] >= 8
