"""Against a real vLLM (the CPU build of the release we pin, on a tiny local model; one server per test session):
the vLLM adapter reads names that exist in its live /metrics, and a client that disconnects mid-stream through the
router ends the request inside vLLM."""

from __future__ import annotations

import inspect
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from agents.signals.runtime import flavors
from agents.signals.runtime.exposition import parse_exposition
from tests.router.procs import RouterProc, router_config, start_router

# The first test to use the session's real vLLM waits for it to start (minutes on two busy cores).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# Fallbacks the adapter keeps for older vLLM releases (each beside its current name); the release we pin lacks them.
LEGACY = {
    "vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
    "vllm:avg_generation_throughput_toks_per_s": "vllm:generation_tokens_total",
    "vllm:avg_prompt_throughput_toks_per_s": "vllm:prompt_tokens_total",
}


def adapter_metric_names() -> set[str]:
    """Every metric name the vLLM adapter reads, taken from its own source so that a new read is checked too."""
    return set(re.findall(r'"(vllm:[a-z0-9_]+)"', inspect.getsource(flavors._read_vllm)))


def _metrics(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=10).text


def _gauge(text: str, name: str) -> float:
    idx = parse_exposition(text)
    return sum(s.value for s in idx.get(name))


def test_every_metric_the_vllm_adapter_reads_is_served(real_vllm: Any) -> None:
    # Some series only appear after a first request (histograms, token counters).
    r = httpx.post(real_vllm.url + "/v1/completions", json={"model": real_vllm.model, "prompt": "warm up the mesh",
                   "max_tokens": 4}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    text = _metrics(real_vllm.url)
    idx = parse_exposition(text)
    names = adapter_metric_names()
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"} <= names
    missing = []
    for name in sorted(names):
        present = bool(idx.get(name)) or bool(idx.get(name + "_bucket"))
        if name in LEGACY:
            assert LEGACY[name] in names, f"{name} is a fallback for {LEGACY[name]}, which the adapter no longer reads"
            continue
        if not present:
            missing.append(name)
    assert not missing, f"the vLLM adapter reads {missing}, which vLLM's live /metrics does not serve"
    # And the adapter makes a reading of it with the figures routing needs.
    (reading,) = flavors.read_runtime("vllm", text)
    assert reading.model == real_vllm.model and reading.runtime == "vllm"
    assert reading.requests_running == 0 and reading.requests_waiting == 0
    assert reading.kv_cache_usage is not None and reading.generation_tokens_total >= 4
    assert reading.ttft is not None and reading.latency is not None


@pytest.fixture(scope="module")
def router(real_vllm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    cfg = router_config([])
    cfg["targets"] = [{"model": real_vllm.model, "url": real_vllm.url, "runtime": "vllm", "node": "cpu0"}]
    # vLLM's CPU engine threads spin on both cores while it decodes: the router, starved beside it, can take seconds
    # to see a connection through, which the default 2 s connect timeout would call a dead runtime (a 504).
    cfg["upstream_connect_timeout_s"] = 20.0
    rp = start_router(cfg, tmp_path_factory.mktemp("router"))
    yield rp
    rp.stop()


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_client_disconnect_mid_stream_aborts_inside_vllm(real_vllm: Any, router: RouterProc) -> None:
    body = {"model": real_vllm.model, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1900,
            "ignore_eos": True, "stream": True}  # fmt: skip
    running = lambda: _gauge(_metrics(real_vllm.url), "vllm:num_requests_running")  # noqa: E731
    generated = lambda: _gauge(_metrics(real_vllm.url), "vllm:generation_tokens_total")  # noqa: E731
    streams = 4  # decoded in one batch, each sequence is slower: the hang-ups land long before 1900 tokens
    before = generated()

    def hang_up_at_first_token(_: int) -> tuple[int, bool]:
        with (
            httpx.Client(timeout=60) as client,
            client.stream(
                "POST", router.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer demo-key"}
            ) as resp,
        ):
            assert resp.status_code == 200
            # The client hangs up with the first read that brings a token (a busy client reads many events at once).
            events, done = 0, False
            for raw in resp.iter_raw():
                events += raw.count(b"data: ")
                done = done or b"[DONE]" in raw
                if events:
                    break
            return events, done

    with ThreadPoolExecutor(streams) as pool:
        ends = list(pool.map(hang_up_at_first_token, range(streams)))
    assert all(events and not done for events, done in ends), f"streams ended: {ends}"
    # The clients are gone (leaving the block closed each connection): the router closes its upstream requests and
    # vLLM aborts the sequences instead of generating their 1900 tokens each.
    _wait(lambda: running() == 0, 10, "vLLM's running count to drop after the clients disconnected")
    # vLLM's running gauge is refreshed by its stats logger, not per token: the verdict is the token counter.
    # vLLM's counters trail its engine by a logging step: wait for the count to settle, then it must stay short of
    # the 1900 tokens a sequence that was not aborted produces (it keeps rising to that otherwise)
    seen = [generated()]

    def settled() -> bool:
        time.sleep(1.0)
        seen.append(generated())
        return seen[-1] == seen[-2]

    _wait(settled, 20, "vLLM's generated-token count to stop rising after the abort")
    assert seen[-1] - before < streams * 1900 * 0.75, (before, seen)


def test_kv_events_reach_a_subscriber(real_vllm: Any) -> None:
    """vLLM publishes its KV-cache events over ZeroMQ (the fixture binds the publisher): a prompt that fills blocks
    is announced as BlockStored with its token ids, the form the cache-aware routing reads."""
    import msgpack
    import zmq

    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(real_vllm.kv_events_endpoint)
    try:
        time.sleep(0.3)  # the subscription reaches the publisher
        # A prompt never seen before: cached blocks are not stored (nor announced) again.
        prompt = uuid.uuid4().hex + " ".join(f"block{i} of the mesh" for i in range(40))
        r = httpx.post(real_vllm.url + "/v1/completions", json={"model": real_vllm.model, "prompt": prompt,
                       "max_tokens": 2}, timeout=60)  # fmt: skip
        assert r.status_code == 200
        stored = []
        deadline = time.monotonic() + 15
        while not stored and time.monotonic() < deadline:
            if not sub.poll(500):
                continue
            _topic, seq, payload = sub.recv_multipart()
            assert len(seq) == 8
            _ts, events = msgpack.unpackb(payload, raw=False, strict_map_key=False)[:2]
            stored += [e for e in events if isinstance(e, dict) and e.get("type") == "BlockStored"]
        assert stored, "no BlockStored event from vLLM"
        assert stored[0]["block_hashes"] and stored[0]["token_ids"] and stored[0]["block_size"] > 0
    finally:
        sub.close(linger=0)
