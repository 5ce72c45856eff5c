"""Operating strategies through a real router process: an A/B arm's and a shadow's win rate against the live
strategy from real outcomes (metrics, /infermesh/strategies, the routing report the dashboard reads, and
`infermesh ctl strategies --json`); `infermesh strategy test --snapshot` offline."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from django.test import override_settings

from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc
from meshweb.dashboard import route_feed
from tests.agents.harness import AgentProc
from tests.router.agentproc import router_agent
from tests.router.procs import ROOT, free_port, router_config, running_router

EXAMPLE = ROOT / "examples/strategies/wasm/least_queue.wat"
# The example least_queue with another score: the target with the most capacity (max_concurrency) first.
LOAD_SCORE = """        (f64.store (local.get $rec)
          (f64.div
            (f64.add
              (f64.add (call $known (f64.load (local.get $rec))) (call $known (f64.load offset=8 (local.get $rec))))
              (f64.load offset=24 (local.get $rec)))
            (local.get $cap)))"""
CAPACITY_SCORE = "        (f64.store (local.get $rec) (f64.neg (local.get $cap)))"


def capacity_module(tmp: Path) -> str:
    """A WebAssembly strategy that always prefers the bigger target (a deterministic challenger)."""
    import wasmtime

    from agents.strategies.wasm import wasm_spec_name

    wat = EXAMPLE.read_text()
    assert LOAD_SCORE in wat
    path = tmp / "prefer_capacity.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat.replace(LOAD_SCORE, CAPACITY_SCORE)))
    return wasm_spec_name(path)


# An upstream that answers every chat completion after a delay (argv: port, delay in seconds) plus up to 20 ms of
# jitter, so that between two answers of the same upstream chance, not the router's decision time, picks the faster.
_UPSTREAM = r"""
import asyncio, random, sys
from aiohttp import web

async def chat(request):
    await request.read()
    await asyncio.sleep(float(sys.argv[2]) + random.uniform(0.0, 0.02))
    return web.json_response({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
print("listening", flush=True)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@contextlib.contextmanager
def delayed_upstream(delay_s: float) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _UPSTREAM, str(port), str(delay_s)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert proc.stdout is not None
        assert b"listening" in proc.stdout.readline()
        for _ in range(100):  # the print comes just before the bind
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={}, timeout=5)
                break
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def _chat(url: str, model: str, i: int) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]}
    headers = {"Authorization": "Bearer demo-key", "X-Request-Id": f"{model}-{i}"}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=20).status_code


@pytest.mark.e2e
def test_ab_arm_and_shadow_win_rates_from_real_outcomes(tmp_path: Path) -> None:
    pin = capacity_module(tmp_path)  # a WebAssembly challenger: no thread handoff, well within the 1 ms budget
    # The slow upstream's delay dwarfs what a loaded machine adds to the fast one's answers.
    # Two slow upstreams to one fast: live (round robin) is slow two times in three, the arm never.
    with delayed_upstream(0.0) as fast, delayed_upstream(0.3) as slow, delayed_upstream(0.3) as slow2:
        targets = [
            {"model": model, "url": url, "runtime": "vllm", "node": node, "max_concurrency": cap}
            for model in ("ab-llm", "shadow-llm")
            for url, node, cap in ((fast, "n0", 64), (slow, "n1", 32), (slow2, "n2", 32))
        ]
        cfg = router_config(
            [],
            default_policy={"strategy": "baseline_rr"},
            policies={
                "ab-llm": {"strategy": "baseline_rr", "ab_split": {"baseline_rr": 50, pin: 50}},
                "shadow-llm": {"strategy": "baseline_rr", "shadow_strategy": pin},
            },
        )
        cfg["targets"] = targets
        with running_router(cfg, tmp_path) as r:
            # Each model's requests one after another (the two models side by side): an arm's outcome is judged
            # against live's outcomes so far, so live's slow answers must be in before the arm's later ones, which
            # concurrent senders do not promise (fast answers overtake slow ones).
            def send(model: str) -> list[int]:
                return [_chat(r.url, model, i) for i in range(32)]

            with ThreadPoolExecutor(2) as pool:
                codes = [c for cs in pool.map(send, ("ab-llm", "shadow-llm")) for c in cs]
            assert codes == [200] * 64
            doc = httpx.get(r.url + "/infermesh/strategies").json()
            with override_settings(DASHBOARD_ROUTER_METRICS_URL=r.url + "/metrics"):
                routing = route_feed.fetch("ab-llm")  # what the dashboard's routing page of the model draws
            metrics = httpx.get(r.url + "/metrics").text
            ctl = subprocess.run(
                [sys.executable, "-m", "meshweb.cli", "ctl", "strategies", "--router", r.url, "--json"],
                capture_output=True, text=True, cwd=ROOT, timeout=60,
            )  # fmt: skip
            table = subprocess.run(
                [sys.executable, "-m", "meshweb.cli", "ctl", "strategies", "--router", r.url, "-o", "wide"],
                capture_output=True, text=True, cwd=ROOT, timeout=60,
            )  # fmt: skip
    models = {m["model"]: m for m in doc["models"]}
    (ab,) = models["ab-llm"]["challengers"]
    assert (ab["strategy"], ab["mode"], ab["live"]) == (pin, "ab", "baseline_rr")
    # live (round robin) sends two requests in three to a slow upstream, the arm none: it wins ~5 in 6
    assert ab["compared"] >= 10 and ab["win_rates"]["ttft"] > 0.7 and ab["win_rates"]["latency"] > 0.7, json.dumps(doc)
    assert ab["win_rates"]["errors"] == 0.5  # nobody failed
    (sh,) = models["shadow-llm"]["challengers"]
    assert (sh["strategy"], sh["mode"]) == (pin, "shadow")
    # where live served the slow upstream the shadow's pick (the fast one) would have answered sooner
    assert sh["compared"] >= 10 and sh["win_rate"] > 0.9, json.dumps(doc)
    assert sh["agreed"] >= 6 and 0.2 < sh["agree_rate"] < 0.5, sh  # live agrees with it one time in three
    held = {s["name"]: s for s in doc["strategies"]}
    assert held[pin]["kind"] == "wasm" and held[pin]["decisions"] > 0 and held[pin]["decision_us_p50"] is not None
    # the same figures: in the routing report the dashboard shows, as metrics, and through ctl
    assert [(c["strategy"], c["mode"]) for c in routing["strategies"]] == [(pin, "ab")]
    line = next(
        ln
        for ln in metrics.splitlines()
        if ln.startswith("infermesh_router_strategy_win_rate{")
        and 'model="ab-llm"' in ln and 'mode="ab"' in ln and 'metric="ttft"' in ln
    )  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) > 0.7
    assert ctl.returncode == 0, ctl.stderr
    assert {m["model"]: m["challengers"][0]["mode"] for m in json.loads(ctl.stdout)["models"]} == {
        "ab-llm": "ab",
        "shadow-llm": "shadow",
    }
    assert table.returncode == 0 and "CHALLENGER" in table.stdout and "shadow" in table.stdout, table.stdout


def test_ctl_strategies_names_an_unreachable_router() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = subprocess.run(
        [sys.executable, "-m", "meshweb.cli", "ctl", "strategies", "--router", url, "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and f"router {url} unreachable" in r.stdout + r.stderr


def _portal_keys(strategy: str) -> dict[str, dict[str, object]]:
    """What the portal writes for tenant `demo` with one deployed model whose policy names `strategy`."""
    return {
        "kv/portal/tenants/1": {"id": 1, "slug": "demo", "name": "Demo", "active": True},
        "kv/portal/models/10": {"id": 10, "tenant": 1, "name": "demo-llm", "aliases": []},
        "kv/portal/revisions/100": {"id": 100, "model": 10, "revision": "v1"},
        "kv/portal/deployments/1": {"id": 1, "revision": 100, "zone": None, "zone_name": ""},
        "routing/policy-1": {"strategy": strategy, "params": {"tenant": 1, "model": 10}},
    }


@contextlib.contextmanager
def store_agent(tmp: Path) -> Iterator[AgentProc]:
    """A real agent with a one-member policy store (what the portal writes into, what routers watch)."""
    agent = router_agent([], tmp)
    agent.cfg["raft"] = {"node_id": 1, "cluster_id": "strategies", "peers": {1: agent.address}, "tick_ms": 50,
                         "data_dir": str(tmp / "raft")}  # fmt: skip
    agent.start()
    try:
        yield agent
    finally:
        agent.kill()


def _put(agent: AgentProc, items: dict[str, dict[str, object]]) -> None:
    with grpc.insecure_channel(agent.address) as ch:
        stub = store_pb2_grpc.StoreStub(ch)
        for key, value in items.items():
            for _ in range(100):  # the one-member group elects itself first
                try:
                    stub.Put(store_pb2.StorePutRequest(key=key, value=json.dumps(value)), timeout=5)
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    time.sleep(0.1)
            else:
                raise AssertionError(f"the store took no write of {key}")


def _deciding(url: str) -> tuple[str | None, dict[str, dict[str, object]]]:
    doc = httpx.get(url + "/infermesh/strategies", params={"model": "demo-llm"}).json()
    return doc["models"][0]["deciding"], {s["name"]: s for s in doc["strategies"]}


def _wait(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.e2e
def test_new_module_version_pushed_by_policy_swaps_in_without_failing_a_request(tmp_path: Path) -> None:
    """The portal's policy for a model names a WebAssembly module; a new version (another checksum) swaps in under
    load without a failed request; a version refused at load (checksum mismatch) leaves the previous one deciding."""
    import wasmtime

    from agents.strategies.wasm import wasm_spec_name

    one = tmp_path / "least_queue.wasm"
    one.write_bytes(wasmtime.wat2wasm(EXAMPLE.read_text()))
    v1 = wasm_spec_name(one)
    v2 = capacity_module(tmp_path)
    broken = f"wasm:{one}#sha256={'0' * 64}"
    with store_agent(tmp_path) as agent, delayed_upstream(0.0) as a, delayed_upstream(0.0) as b:
        _put(agent, _portal_keys(v1))
        cfg = router_config([], agent={"address": agent.address})
        cfg["targets"] = [
            {"model": "demo-llm", "url": u, "runtime": "vllm", "node": f"n{i}", "max_concurrency": 8 * (i + 1)}
            for i, u in enumerate((a, b))
        ]
        with running_router(cfg, tmp_path) as r:
            _wait("the portal's policy at the router", lambda: _deciding(r.url)[1].get(v1, {}).get("loaded") is True)
            stop = threading.Event()
            codes: list[int] = []

            def load(worker: int) -> None:
                i = 0
                while not stop.is_set():
                    codes.append(_chat(r.url, "demo-llm", worker * 100_000 + i))
                    i += 1

            threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
            for t in threads:
                t.start()
            try:
                _wait("traffic under v1", lambda: len(codes) >= 10 and _deciding(r.url)[0] == v1)
                _put(agent, _portal_keys(v2))  # a new version of the module
                _wait("v2 deciding", lambda: _deciding(r.url)[0] == v2)
                at_swap = len(codes)
                _wait("traffic under v2", lambda: len(codes) >= at_swap + 10)
                _put(agent, _portal_keys(broken))  # refused at load: v2 keeps deciding
                _wait("the refusal", lambda: _deciding(r.url)[1].get(broken, {}).get("loaded") is False)
                at_refusal = len(codes)
                _wait("traffic after the refusal", lambda: len(codes) >= at_refusal + 10)
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
            deciding, held = _deciding(r.url)
            metrics = httpx.get(r.url + "/metrics").text
    assert codes and set(codes) == {200}, sorted(set(codes))
    assert deciding == v2 and held[v2]["decisions"] >= 10
    assert v1 not in held  # let go once no policy names it
    assert "checksum mismatch" in str(held[broken]["error"])
    assert any(
        ln.startswith("infermesh_router_strategy_not_loaded_total{") and float(ln.rsplit(" ", 1)[1]) > 0
        for ln in metrics.splitlines()
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshweb.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


@pytest.mark.e2e
def test_snapshot_recorded_from_an_agent_and_a_strategy_tested_offline(tmp_path: Path) -> None:
    from agents.emulator.testing import start_emulator

    snap = tmp_path / "targets.json"
    ems = [
        start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm", "--seed", str(i)) for i in (1, 2)
    ]
    agent = router_agent([e.url for e in ems], tmp_path)
    try:
        agent.start()
        _wait("the agent's targets", lambda: _cli("ctl", "targets", "--agent", agent.address, "--json").stdout.count(
            '"target_id"') == 2)  # fmt: skip
        rec = _cli("ctl", "snapshot", "--agent", agent.address, "--out", str(snap))
        empty = _cli("ctl", "snapshot", "--agent", agent.address, "--model", "nope", "--out", str(tmp_path / "x"))
    finally:
        agent.kill()
        for e in ems:
            e.stop()
    assert rec.returncode == 0 and "2 targets of 1 model(s) (demo-llm)" in rec.stdout, rec.stderr
    assert empty.returncode == 3 and "knows no target of model 'nope'" in empty.stderr
    doc = json.loads(snap.read_text())
    assert doc["format"] == "infermesh-targets" and len(doc["targets"]) == 2
    # the WebAssembly example, its text compiled on the fly, and the built-in it mirrors rank the same
    # (a generous budget: this is about the ranking; a loaded box may stall a decision past the router's 1 ms)
    wat = _cli(
        "strategy", "test", str(EXAMPLE), "--snapshot", str(snap), "--runs", "300", "--budget-us", "1e6", "--json"
    )
    assert wat.returncode == 0, wat.stderr
    got = json.loads(wat.stdout)
    builtin = json.loads(_cli("strategy", "test", "least_queue", "--snapshot", str(snap), "--json").stdout)
    assert got["model"] == "demo-llm" and got["targets"] == 2 and got["decided_by"] == str(EXAMPLE)
    assert [r["target"] for r in got["ranking"]] == [r["target"] for r in builtin["ranking"]]
    assert got["decisions"] == 300 and 0 < got["decision_us"]["p50"] <= got["decision_us"]["p99"]
    assert got["fallbacks"] == {}
    text = _cli("strategy", "test", str(EXAMPLE), "--snapshot", str(snap), "--runs", "50")
    assert text.returncode == 0 and "decision time over 50 decisions: p50" in text.stdout
    assert str(doc["targets"][0]["target_id"]) in text.stdout


def test_strategy_test_refuses_bad_input_by_name(tmp_path: Path) -> None:
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps({"format": "infermesh-targets", "version": 1, "targets": [
        {"target_id": "a", "model": "m", "node": "n1", "endpoint": "http://a", "routable": True, "requests_waiting": 3},
        {"target_id": "b", "model": "m", "node": "n2", "endpoint": "http://b", "routable": True, "requests_waiting": 1},
    ]}))  # fmt: skip
    ok = _cli("strategy", "test", "least_queue", "--snapshot", str(snap), "--runs", "10", "--json")
    assert ok.returncode == 0 and [r["target"] for r in json.loads(ok.stdout)["ranking"]] == ["b", "a"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": "infermesh-targets", "version": 9, "targets": []}))
    no_exports = tmp_path / "empty.wat"
    no_exports.write_text('(module (memory (export "memory") 1))')
    two = tmp_path / "two.py"
    two.write_text(
        "from agents.strategies.builtins import LeastQueue\n"
        "class A(LeastQueue):\n    name = 'a'\n"
        "class B(LeastQueue):\n    name = 'b'\n"
    )
    cases = {
        (2, "cannot read it"): ("least_queue", str(tmp_path / "missing.json")),
        (2, "snapshot version 9; this build reads version 1"): ("least_queue", str(old)),
        (2, "no such file"): (str(tmp_path / "nope.wasm"), str(snap)),
        (1, "lacks the export(s) infermesh_abi_version, alloc, rank"): (str(no_exports), str(snap)),
        (2, "defines 2 (A, B) Strategy subclasses; name one with --class"): (str(two), str(snap)),
    }
    for (rc, message), (strategy, snapshot) in cases.items():
        r = _cli("strategy", "test", strategy, "--snapshot", snapshot)
        assert r.returncode == rc and message in r.stderr, (message, r.returncode, r.stderr)
    picked = _cli("strategy", "test", str(two), "--class", "B", "--snapshot", str(snap), "--json")
    assert picked.returncode == 0 and json.loads(picked.stdout)["strategy"] == "b"
    absent = _cli("strategy", "test", "least_queue", "--snapshot", str(snap), "--model", "other")
    assert absent.returncode == 3 and "no target of model 'other'; it has: m (2)" in absent.stderr
