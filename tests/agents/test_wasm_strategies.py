"""WebAssembly strategies (agents/strategies/wasm.py): the example least_queue module ranks like the built-in; an
infinite loop, a memory bomb, a trap and a malformed answer each fall back to the host's default within the budget
with the reason counted; bad modules are refused at load naming the problem; a router process whose routing policy
names a module routes real requests through it."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import wasmtime

from agents.strategies import LeastQueue, RouteRequest, TargetIndex, TargetView, load_strategy
from agents.strategies.host import StrategyHost
from agents.strategies.wasm import ABI_VERSION, WasmLoadError, WasmStrategy, wasm_spec_name
from router.config import RoutingPolicy, StaticTarget
from router.ranking import Ranker
from router.view import TargetView as RouterView
from tests.router.procs import router_config, running_router, scripted_upstream

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/strategies/wasm/least_queue.wat"

# Guests that misbehave in one way each; `alloc` is sound so that only `rank` goes wrong.
_PRELUDE = """
  (memory (export "memory") 2)
  (func (export "infermesh_abi_version") (result i32) (i32.const %d))
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
"""
BAD_RANK = {
    "fuel": '(func (export "rank") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 0))',
    "memory": """(func (export "rank") (param i32 i32) (result i32)
        (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable)""",
    "trap": '(func (export "rank") (param i32 i32) (result i32) unreachable)',
    # count 1 naming candidate 99 of the few it was given
    "malformed": """(func (export "rank") (param i32 i32) (result i32)
        (i32.store (i32.const 1024) (i32.const 1)) (i32.store (i32.const 1032) (i32.const 99)) (i32.const 1024))""",
}


def _module(tmp: Path, name: str, wat: str) -> Path:
    path = tmp / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def _guest(rank: str, version: int = ABI_VERSION) -> str:
    return "(module " + _PRELUDE % version + rank + ")"


def _example(tmp: Path) -> Path:
    return _module(tmp, "least_queue", EXAMPLE.read_text())


def _index(n: int) -> TargetIndex:
    idx = TargetIndex()
    for i in range(n):
        idx.upsert(
            TargetView(
                f"t{i}", "m", f"n{i}", "e", requests_waiting=float(i % 7), requests_running=1.0, max_concurrency=4
            )
        )
    return idx


def test_example_least_queue_ranks_like_the_builtin(tmp_path: Path) -> None:
    wasm = WasmStrategy(wasm_spec_name(_example(tmp_path)))
    idx = _index(20)  # below exact_below: both see every target
    req = RouteRequest("m")
    got = wasm.rank(idx, req, 3, random.Random(1))
    want = LeastQueue().rank(idx, req, 3, random.Random(1))
    assert [s.score for s in got] == [s.score for s in want] == [0.25, 0.25, 0.25]
    assert {s.target.target_id for s in got} <= {"t0", "t7", "t14"}
    # admission is the host's: excluded targets never reach the guest
    req2 = RouteRequest("m", exclude=frozenset({"t0", "t7"}))
    assert [s.target.target_id for s in wasm.rank(idx, req2, 1, random.Random(1))] == ["t14"]


def test_rust_example_builds_and_ranks_like_the_builtin(tmp_path: Path) -> None:
    """The Rust example built by its script with Debian's rustc (CI installs it: .ci/run ensure_rust_wasm)."""
    script = ROOT / "examples/strategies/wasm/rust/build.sh"
    out = subprocess.run(
        [str(script)], env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    spec = out.stdout.strip().splitlines()[-1]
    assert spec.startswith(f"wasm:{tmp_path}/least_queue_rs.wasm#sha256=")
    wasm = load_strategy(spec)
    idx = _index(20)
    got = wasm.rank(idx, RouteRequest("m"), 3, random.Random(1))
    assert [s.score for s in got] == [0.25, 0.25, 0.25]
    assert {s.target.target_id for s in got} == {"t0", "t7", "t14"}


@pytest.mark.parametrize("reason", sorted(BAD_RANK))
def test_misbehaving_guest_falls_back_within_budget_with_reason(tmp_path: Path, reason: str) -> None:
    spec = wasm_spec_name(_module(tmp_path, reason, _guest(BAD_RANK[reason])), fuel=200_000, memory_mb=4)
    host = StrategyHost({spec: load_strategy(spec)}, default=spec, budget_us=50_000, trip_after=100)
    for v in _index(12):
        host.upsert(v)
    for _ in range(3):
        t0 = time.perf_counter()
        d = host.decide(RouteRequest("m"), k=2)
        elapsed = time.perf_counter() - t0
        assert d.fallback and d.strategy == "baseline_rr" and len(d.ranked) == 2  # the request is still served
        assert d.fallback_reason == f"{spec}: {reason}"
        assert elapsed < 0.05, f"{reason}: the guest ran {elapsed:.3f}s, past the budget"
    assert host.stats[spec].fallbacks == {reason: 3}


def test_bad_modules_are_refused_at_load_naming_the_problem(tmp_path: Path) -> None:
    good = _example(tmp_path)
    cases = {
        "lacks the export(s) rank": wasm_spec_name(
            _module(tmp_path, "norank", "(module " + _PRELUDE % ABI_VERSION + ")")
        ),
        "speaks ABI version 7; this host speaks 1": wasm_spec_name(
            _module(tmp_path, "abi7", _guest(BAD_RANK["trap"], version=7))
        ),
        "checksum mismatch": f"wasm:{good}#sha256={'0' * 64}",
        "a pinned checksum": f"wasm:{good}",
        "imports wasi_snapshot_preview1.fd_write": wasm_spec_name(
            _module(
                tmp_path,
                "wasi",
                '(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))',
            )
        ),
    }
    for problem, spec in cases.items():
        with pytest.raises(WasmLoadError, match=re.escape(problem)):
            load_strategy(spec)
    with pytest.raises(WasmLoadError, match="over the 64 limit"):
        WasmStrategy(wasm_spec_name(good), max_module_bytes=64)
    # the router keeps what it had when a policy names a bad module at runtime
    view = RouterView([StaticTarget(model="m", url=f"http://127.0.0.1:{9000 + i}", node=f"n{i}") for i in range(2)])
    spec = wasm_spec_name(good)
    ranker = Ranker(view, [RoutingPolicy(strategy=spec)])
    before = dict(ranker.host.strategies)
    assert ranker.ensure([cases["checksum mismatch"]]) == [cases["checksum mismatch"]]
    assert ranker.host.strategies == before


@pytest.mark.e2e
def test_router_policy_names_a_wasm_strategy_and_routes_through_it(tmp_path: Path) -> None:
    spec = wasm_spec_name(_example(tmp_path))
    with scripted_upstream() as up_a, scripted_upstream() as up_b:
        cfg = router_config([up_a, up_b], default_policy={"strategy": spec})
        with running_router(cfg, tmp_path) as r:
            headers = {"Authorization": "Bearer demo-key"}
            body = {"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}], "mode": "fixed"}
            for _ in range(6):
                resp = httpx.post(r.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
                assert resp.status_code == 200, resp.text
            metrics = httpx.get(r.url + "/metrics").text
    label = spec.replace("\\", "\\\\").replace('"', '\\"')
    prefix = f'infermesh_router_decision_seconds_count{{strategy="{label}"}}'
    line = next(ln for ln in metrics.splitlines() if ln.startswith(prefix))
    decided = float(line.rsplit(" ", 1)[1])
    fell_back = sum(
        float(ln.rsplit(" ", 1)[1])
        for ln in metrics.splitlines()
        if ln.startswith(f'infermesh_router_strategy_fallbacks_total{{strategy="{label}"}}')
    )
    # decided by the module; the router's fixed 1 ms budget may let a stalled, loaded box fall back now and then
    assert decided + fell_back >= 6 and decided >= 3


def test_portal_policy_naming_a_module_is_loaded_and_decides(tmp_path: Path) -> None:
    """The portal's per-model policy (the store keys it writes) names a module; the router's ranker loads it at
    runtime and decides with it."""
    import json

    from router.portal_routing import PortalRouting

    spec = wasm_spec_name(_example(tmp_path))
    kv = {
        "kv/portal/tenants/1": {"id": 1, "slug": "acme", "name": "Acme", "active": True},
        "kv/portal/models/10": {"id": 10, "tenant": 1, "name": "llm", "aliases": []},
        "kv/portal/revisions/100": {"id": 100, "model": 10, "revision": "v1"},
        "kv/portal/deployments/1": {"id": 1, "revision": 100, "zone": None, "zone_name": ""},
        "routing/policy-1": {"strategy": spec, "params": {"tenant": 1, "model": 10}},
    }
    portal = PortalRouting()
    portal.replace((k, json.dumps(v)) for k, v in kv.items())
    view = RouterView([StaticTarget(model="llm", url=f"http://127.0.0.1:{9200 + i}", node=f"n{i}") for i in range(3)])
    # a generous budget: this test is about which strategy decides, not how fast (a loaded CI box may stall)
    ranker = Ranker(view, [RoutingPolicy(strategy="baseline_rr")], decision_budget_us=1e6)
    assert spec in portal.strategies() and ranker.ensure(portal.strategies()) == []
    llm = portal.resolve("acme", "llm")
    assert llm is not None
    policy = portal.policy_for(llm, RoutingPolicy(strategy="baseline_rr"))
    for i in range(6):
        ranked, used = ranker.rank("llm", view.all("llm"), policy, f"req-{i}")
        assert used == spec and len(ranked) == 3
    assert ranker.host.stats[spec].decisions == 6 and not ranker.host.stats[spec].fallbacks
