"""LoRA adapters end to end: two emulated vLLM runtimes serving different adapters, a real agent that discovers them
(/v1/models, vllm:lora_requests_info) and a real router fed by it. A request for an adapter goes only to the runtime
that serves it; an unknown adapter is a 404 model_not_found, counted and logged once, and reaches no runtime."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agents.emulator.testing import EmulatorProcess, start_emulator
from tests.router.agentproc import router_agent
from tests.router.procs import RouterProc, router_config, running_router

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": "Bearer demo-key"}


@pytest.fixture
def ems() -> Iterator[list[EmulatorProcess]]:
    started: list[EmulatorProcess] = []
    try:
        for i, adapter in enumerate(("sql", "chat")):
            started.append(start_emulator("--model", "demo-llm", "--seed", str(i), "--max-loras", "1",
                                          "--lora-modules", f"{adapter}=/adapters/{adapter}"))  # fmt: skip
        yield started
    finally:
        for em in started:
            em.stop()


def _wait(pred: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def _chat(rp: RouterProc, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "select the rows"}], "max_tokens": 3}
    return httpx.post(rp.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)


def _metric(rp: RouterProc, name: str) -> float:
    for line in httpx.get(rp.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing")


def test_adapter_requests_go_where_the_adapter_is_and_an_unknown_one_is_refused(
    ems: list[EmulatorProcess], tmp_path: Path
) -> None:
    agent = router_agent([e.url for e in ems], tmp_path).start()
    try:
        cfg = router_config([], agent={"address": agent.address}, default_policy={"strategy": "hybrid_mesh"})
        with running_router(cfg, tmp_path) as rp:
            # demo-llm on both runtimes, sql on the first, chat on the second
            assert _wait(lambda: httpx.get(rp.url + "/healthz", timeout=5).json()["targets"].get("agent") == 4)
            cards = httpx.get(rp.url + "/v1/models", headers=AUTH, timeout=5).json()["data"]
            parents = {c["id"]: c.get("parent") for c in cards}
            assert parents == {"demo-llm": None, "sql": "demo-llm", "chat": "demo-llm"}
            for _ in range(3):
                for model in ("sql", "chat", "demo-llm"):
                    r = _chat(rp, model)
                    assert r.status_code == 200, r.text
                    assert r.json()["model"] == model
            served: dict[str, set[str]] = {}
            for e in rp.logs():
                if e.get("msg") == "access" and e.get("model") in ("sql", "chat"):
                    served.setdefault(str(e["model"]), set()).add(str(e["target"]))
            port = lambda em: f":{em.port}"  # noqa: E731
            assert len(served["sql"]) == 1 and port(ems[0]) in next(iter(served["sql"]))
            assert len(served["chat"]) == 1 and port(ems[1]) in next(iter(served["chat"]))
            # each runtime loaded its own adapter once and served no other
            for em, adapter in zip(ems, ("sql", "chat"), strict=True):
                lora = httpx.get(em.url + "/emulator/stats", timeout=5).json()["lora"]
                assert lora["loads"] == 1 and lora["resident"] == [adapter], lora
            # an unknown adapter: 404 model_not_found at the router, counted each time, logged once, never forwarded
            for _ in range(3):
                r = _chat(rp, "sql-v2")
                assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
            assert _metric(rp, "infermesh_router_unknown_model_total") == 3.0
            assert sum("unknown model or LoRA adapter 'sql-v2'" in str(e.get("msg")) for e in rp.logs()) == 1
            for em in ems:
                assert httpx.get(em.url + "/emulator/stats", timeout=5).json()["rejected"] == 0
    finally:
        agent.kill()
