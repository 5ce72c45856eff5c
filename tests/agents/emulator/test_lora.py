"""The emulator's LoRA adapters: slots with LRU eviction and a load time, their own prefix-cache chain, vLLM's API
and metric."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.emulator.engine import EngineConfig, EngineCore, Sequence
from agents.emulator.kvcache import BlockStored
from agents.emulator.profiles import get_profile
from agents.emulator.server import Emulator, EmulatorConfig, parse_args
from agents.emulator.testing import running_emulator
from agents.emulator.tokenizer import block_hashes, root_hash

LOAD_S = 0.1


def _core(max_loras: int = 2) -> EngineCore:
    return EngineCore(EngineConfig(profile=get_profile("h100"), block_size=4, kv_tokens=256, max_loras=max_loras,
                                   lora_load_s=LOAD_S))  # fmt: skip


def _seq(rid: str, lora: str | None, out: int = 3, ids: list[int] | None = None) -> Sequence:
    ids = ids or list(range(1, 9))
    return Sequence(req_id=rid, prompt_tokens=len(ids), max_tokens=out, target_tokens=out, arrival=0.0,
                    token_ids=ids, lora=lora, lora_id=None if lora is None else ord(lora[0]))  # fmt: skip


def _run(core: EngineCore) -> float:
    t = 0.0
    while (step := core.schedule()) is not None:
        t += step.duration_s
        core.complete(step, t)
    return t


def test_slots_load_time_lru_eviction_and_skipping() -> None:
    core = _core(max_loras=2)
    a, b, c, base = _seq("a", "a", out=5), _seq("b", "b", out=5), _seq("c", "c", out=1), _seq("base", None, out=1)
    for s in (a, b, c, base):
        core.add(s)
    step = core.schedule()
    assert step is not None
    # a and b load into the two slots (their load time is in the step); c waits for a slot; the base model's
    # request goes ahead of it
    assert [s.req_id for s, _ in step.work] == ["a", "b", "base"]
    plain = get_profile("h100")
    assert step.duration_s == pytest.approx(step.prefill_tokens / plain.prefill_tok_s + plain.ttft_fixed_s + 2 * LOAD_S)
    assert list(core.loras) == ["a", "b"] and [s.req_id for s in core.waiting] == ["c"]
    assert core.lora_adapters() == (["a", "b"], ["c"])
    t = step.duration_s
    core.complete(step, t)
    _run(core)
    # when a and b were done, c took the least recently used slot (a's)
    assert c.finish_reason == "length" and list(core.loras) == ["b", "c"]
    assert (core.counters.lora_loads, core.counters.lora_evictions) == (3, 1)
    # a resident adapter costs no load time
    again = _seq("c2", "c", out=1)
    core.add(again)
    step = core.schedule()
    assert step is not None and step.duration_s < LOAD_S


def test_an_adapter_has_its_own_prefix_cache_chain() -> None:
    core = _core()
    ids = list(range(1, 9))
    base = _seq("base", None, out=1, ids=ids)
    core.add(base)
    _run(core)
    core.kv.drain_events()
    a = _seq("a", "a", out=1, ids=ids)
    core.add(a)
    _run(core)
    assert a.cached_tokens == 0  # the base model's blocks are not the adapter's
    hashes = block_hashes(ids, 4, root=root_hash("a"))
    assert core.kv.drain_events() == [BlockStored(hashes, None, ids, 4, ord("a"), "GPU")]
    a2 = _seq("a2", "a", out=1, ids=ids)
    core.add(a2)
    _run(core)
    assert a2.cached_tokens == 4  # the adapter's own prefix is reused (never the whole prompt)


def test_engine_without_lora_refuses_an_adapter_request() -> None:
    core = _core(max_loras=0)
    with pytest.raises(ValueError, match="LoRA is not enabled"):
        core.add(_seq("a", "a"))


def test_bad_lora_flags_are_named() -> None:
    for argv, message in (
        (["--lora-modules", "noequals"], "is not NAME=PATH"),
        (["--lora-modules", "demo-llm=/x"], "is the model's or given twice"),
        (["--lora-modules", "a=/x", "a=/y"], "is the model's or given twice"),
        (["--max-loras", "0"], "--max-loras must be >= 1"),
    ):
        with pytest.raises(SystemExit) as e:
            parse_args(argv)
        assert e.value.code == 2, message
    cfg = parse_args(["--lora-modules", "sql=/adapters/sql", "chat=/adapters/chat", "--max-loras", "2"])
    assert cfg.enable_lora and cfg.lora_modules == {"sql": "/adapters/sql", "chat": "/adapters/chat"}
    with pytest.raises(ValueError, match="not enabled"):
        Emulator(EmulatorConfig()).add_lora("x", "/x")


def _lora_info(text: str) -> dict[str, str]:
    for fam in text_string_to_metric_families(text):
        if fam.name == "vllm:lora_requests_info":
            (sample,) = fam.samples
            return dict(sample.labels)
    raise AssertionError("no vllm:lora_requests_info")


def test_server_serves_adapters_and_reports_them() -> None:
    with running_emulator("--lora-modules", "sql=/adapters/sql", "--max-loras", "1", "--max-num-seqs", "4") as emu:
        base = f"http://127.0.0.1:{emu.port}"
        ids = [m["id"] for m in httpx.get(base + "/v1/models").json()["data"]]
        assert ids == ["demo-llm", "sql"]
        body = {"model": "sql", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3}
        r = httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "sql"
        info = _lora_info(httpx.get(base + "/metrics").text)
        assert info == {"max_lora": "1", "running_lora_adapters": "", "waiting_lora_adapters": ""}
        # unknown adapter: a clear 404, never served by the base model
        for _ in range(2):
            bad = httpx.post(base + "/v1/chat/completions", json={**body, "model": "nope"}, timeout=30)
            assert bad.status_code == 404 and "`nope` does not exist" in bad.json()["error"]["message"]
        # adapters loaded and unloaded at runtime (vLLM's endpoints)
        r = httpx.post(base + "/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": "/adapters/chat"})
        assert r.status_code == 200 and "added successfully" in r.text
        assert httpx.post(base + "/v1/load_lora_adapter", json={"lora_name": "chat"}).status_code == 400
        r = httpx.post(base + "/v1/chat/completions", json={**body, "model": "chat"}, timeout=30)
        assert r.status_code == 200
        stats = httpx.get(base + "/emulator/stats").json()["lora"]
        assert stats["adapters"] == ["chat", "sql"] and stats["resident"] == ["chat"]
        assert (stats["loads"], stats["evictions"]) == (2, 1)  # one slot: chat evicted sql
        assert httpx.post(base + "/v1/unload_lora_adapter", json={"lora_name": "sql"}).status_code == 200
        assert httpx.post(base + "/v1/unload_lora_adapter", json={"lora_name": "sql"}).status_code == 404
        assert httpx.post(base + "/v1/unload_lora_adapter", content=b"{").status_code == 400
        r = httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 404
        rejected = httpx.get(base + "/emulator/stats").json()["rejected"]
        assert rejected == 3
    assert "".join(emu.output).count("does not serve") == 1  # logged once, then counted
