"""Cache-aware routing end to end: real emulators publishing KV events, a real router subscribed to them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agents.emulator.testing import EmulatorProcess, start_emulator
from tests.router.procs import router_config, running_router
from tests.support import free_port

HEAD = {"Authorization": "Bearer demo-key"}


@pytest.fixture(scope="module")
def fleet() -> Iterator[list[tuple[EmulatorProcess, str, str]]]:
    out = []
    try:
        for i in range(3):
            pub, rep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
            bind = [x.replace("127.0.0.1", "*") for x in (pub, rep)]
            em = start_emulator("--seed", str(i), "--block-size", "16", "--kv-events-endpoint", bind[0],
                                "--kv-events-replay-endpoint", bind[1])  # fmt: skip
            out.append((em, pub, rep))
        yield out
    finally:
        for em, _, _ in out:
            em.stop()


def _hits(fleet: list[tuple[EmulatorProcess, str, str]]) -> list[tuple[int, int]]:
    out = []
    for em, _, _ in fleet:
        st = httpx.get(f"{em.url}/emulator/stats").json()["prefix_cache"]
        out.append((st["requests"], st["hits"]))
    return out


def _chat(url: str, system: str, question: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"model": "demo-llm", "max_tokens": 2,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}  # fmt: skip
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={**HEAD, **(headers or {})}, timeout=20)


def test_cache_aware_sends_a_shared_prefix_where_it_is_cached(
    fleet: list[tuple[EmulatorProcess, str, str]], tmp_path: Path
) -> None:
    urls = [em.url for em, _, _ in fleet]
    cfg = router_config(
        urls,
        default_policy={"strategy": "cache_aware", "hold_when_full": False},
        cache={"kv_events": [{"url": em.url, "endpoint": pub, "replay": rep} for em, pub, rep in fleet]},
    )
    before = _hits(fleet)
    with running_router(cfg, tmp_path) as rp:
        time.sleep(0.5)  # subscriptions reach the publishers
        systems = [f"group {g}: " + " ".join(f"rule{g}x{i}" for i in range(300)) for g in range(3)]
        for q in range(4):
            for g, system in enumerate(systems):
                r = _chat(rp.url, system, f"question {q} of group {g}?", {"x-request-id": f"q{q}-g{g}"})
                assert r.status_code == 200, r.text
            time.sleep(0.05)  # KV events of the first turn arrive
        text = httpx.get(rp.url + "/metrics").text
        # a decision over the budget on a loaded machine falls back to baseline_rr: not a cache-aware decision
        decided = {str(ln.get("corr_id", "")) for ln in rp.logs() if ln.get("strategy") == "cache_aware"}
    after = _hits(fleet)
    hits = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    prompt_blocks = (len(systems[0]) // 4 + 2) // 16  # about 75 tokens a hundred characters ... in 16-token blocks
    followups = sum(1 for q in range(1, 4) for g in range(3) if any(c.startswith(f"q{q}-g{g}") for c in decided))
    assert followups >= 6, decided  # most follow-ups were the strategy's own decisions
    # every follow-up it decided (of 3 per group) found its group's system prompt cached: most of its prompt hit
    assert hits >= followups * (prompt_blocks - 2) * 16
    assert "infermesh_router_requests_total" in text


def test_session_affinity_and_a_too_long_key(fleet: list[tuple[EmulatorProcess, str, str]], tmp_path: Path) -> None:
    urls = [em.url for em, _, _ in fleet]
    cfg = router_config(urls, default_policy={"strategy": "session_affinity", "hold_when_full": False},
                        cache={"max_session_key_len": 64})  # fmt: skip
    with running_router(cfg, tmp_path, name="affinity") as rp:
        sessions = ("alice", "bob", "carol", "dave", "erin", "frank")
        for s in sessions:
            for i in range(3):
                headers = {"x-session-id": s, "x-request-id": f"{s}-{i}"}
                assert _chat(rp.url, "short", f"q{i}", headers).status_code == 200
        homes: dict[str, set[str]] = {s: set() for s in sessions}
        decided = 0
        for line in rp.logs():
            corr = str(line.get("corr_id", ""))
            # a decision over the budget on this loaded machine falls back to baseline_rr: not an affinity decision
            if line.get("strategy") == "session_affinity" and corr.split("-")[0] in homes:
                homes[corr.split("-")[0]].add(str(line["target"]))
                decided += 1
        assert decided >= len(sessions) * 2
        assert all(len(t) <= 1 for t in homes.values()), homes  # one home per session
        assert len(set().union(*homes.values())) >= 2  # sessions spread over the fleet
        r = _chat(rp.url, "short", "q", {"x-session-id": "k" * 1000})
        assert r.status_code == 200  # ignored, never refused nor misrouted
        metrics = httpx.get(rp.url + "/metrics").text
        assert 'infermesh_router_session_keys_ignored_total{reason="too_long"} 1.0' in metrics
        assert sum("session key of 1000 characters" in str(line) for line in rp.logs()) == 1
