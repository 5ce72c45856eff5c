"""Operating strategies through a real router process: an A/B arm's and a shadow's win rate against the live
strategy from real outcomes (metrics, /infermesh/strategies, the routing report the dashboard reads, and
`infermesh ctl strategies --json`); `infermesh strategy test --snapshot` offline."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

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


# An upstream that answers every chat completion after a fixed delay (argv: port, delay in seconds).
_UPSTREAM = r"""
import asyncio, sys
from aiohttp import web

async def chat(request):
    await request.read()
    await asyncio.sleep(float(sys.argv[2]))
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
    with delayed_upstream(0.0) as fast, delayed_upstream(0.12) as slow:
        targets = [
            {"model": model, "url": url, "runtime": "vllm", "node": node, "max_concurrency": cap}
            for model in ("ab-llm", "shadow-llm")
            for url, node, cap in ((fast, "n0", 64), (slow, "n1", 32))
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
            jobs = [(m, i) for i in range(48) for m in ("ab-llm", "shadow-llm")]
            with ThreadPoolExecutor(6) as pool:
                codes = list(pool.map(lambda job: _chat(r.url, *job), jobs))
            assert codes == [200] * len(jobs)
            doc = httpx.get(r.url + "/infermesh/strategies").json()
            routing = httpx.get(r.url + "/infermesh/routing", params={"model": "ab-llm"}).json()
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
    # live (round robin) sends half its requests to the slow upstream, the arm none: it wins ~3 in 4
    assert ab["compared"] >= 10 and ab["win_rates"]["ttft"] > 0.6 and ab["win_rates"]["latency"] > 0.6, json.dumps(doc)
    assert ab["win_rates"]["errors"] == 0.5  # nobody failed
    (sh,) = models["shadow-llm"]["challengers"]
    assert (sh["strategy"], sh["mode"]) == (pin, "shadow")
    # where live served the slow upstream the shadow's pick (the fast one) would have answered sooner
    assert sh["compared"] >= 10 and sh["win_rate"] > 0.9, json.dumps(doc)
    assert sh["agreed"] >= 10 and 0.2 < sh["agree_rate"] < 0.8, sh
    held = {s["name"]: s for s in doc["strategies"]}
    assert held[pin]["kind"] == "wasm" and held[pin]["decisions"] > 0 and held[pin]["decision_us_p50"] is not None
    # the same figures: in the routing report the dashboard shows, as metrics, and through ctl
    assert routing["models"][0]["strategies"][0]["strategy"] == pin
    line = next(
        ln
        for ln in metrics.splitlines()
        if ln.startswith("infermesh_router_strategy_win_rate{")
        and 'model="ab-llm"' in ln and 'mode="ab"' in ln and 'metric="ttft"' in ln
    )  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) > 0.6
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
