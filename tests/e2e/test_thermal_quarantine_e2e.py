"""Thermal quarantine from heat alone, through the whole control path as real processes: an emulated runtime on an
emulated H100 with poor cooling is driven to saturation; its agent reports the readings to the portal (PostgreSQL,
its own Redis); Celery beat schedules the quarantine checks and the worker runs them; the node is quarantined for
temperature, with no fault injected, and released after the cool-down once the load stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.emulator.testing import EmulatorProcess, start_emulator
from tests.e2e.mesh import Agent, Mesh, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def hot_runtime() -> Iterator[EmulatorProcess]:
    em = start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm",
                        "--max-num-seqs", "4", "--kv-tokens", "8192")  # fmt: skip
    try:
        # a tenfold slowdown: a few streams keep its four sequences running
        httpx.post(f"{em.url}/emulator/faults", json={"slowdown": 10.0}, timeout=5).raise_for_status()
        yield em
    finally:
        em.stop()


def _flood(url: str, stop: threading.Event) -> None:
    body = {"model": "demo-llm", "prompt": "hello " * 1200, "max_tokens": 3000, "stream": True}
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            try:
                with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
                    for _ in resp.iter_lines():
                        if stop.is_set():
                            return  # closing the stream aborts the sequence in the runtime
            except httpx.HTTPError:
                time.sleep(0.1)


def test_a_saturated_hot_gpu_is_quarantined_by_beat_and_released(hot_runtime: EmulatorProcess, tmp_path: Path) -> None:
    def sections(agent: Agent) -> dict[str, Any]:
        return {
            "gpu": {
                "source": "emulated",
                "options": {"profiles": ["h100"], "node": agent.name, "cooling": "hot", "thermal_tau_s": 1.5},
                "poll_interval_s": 0.25,
            },
            "runtimes": [{"url": hot_runtime.url, "flavor": "vllm", "gpus": [0]}],
            "scrape": {"interval_s": 0.2},
        }

    mesh = Mesh(tmp_path / "mesh", agents=1, runtime=False, agent_sections=sections)
    stop = threading.Event()
    load = [threading.Thread(target=_flood, args=(hot_runtime.url, stop), daemon=True) for _ in range(8)]
    try:
        mesh.start()

        def status() -> str:
            return str(mesh.db.query("SELECT status FROM fleet_node WHERE name = 'node-1'")[0][0])

        assert status() == "active"
        for t in load:
            t.start()
        wait_for("node-1 quarantined by beat's checks", lambda: status() == "quarantined", timeout=60, every=0.5)
        reason, evidence = mesh.db.query(
            "SELECT q.reason, q.evidence FROM fleet_nodequarantine q JOIN fleet_node n ON n.id = q.node_id "
            "WHERE n.name = 'node-1' AND q.released_at IS NULL"
        )[0]  # fmt: skip
        rules = {e["rule"] for e in evidence}
        assert "thermal" in rules and not rules & {"ecc", "xid", "remap"}, (reason, evidence)
        assert "fleet.quarantine_checks" in mesh.log("worker")  # the real worker ran the check beat sent

        stop.set()  # load gone: the GPU cools with its thermal time constant; released after the cool-down
        cooled = time.monotonic()
        wait_for("node-1 released", lambda: status() == "active", timeout=60, every=0.5)
        assert time.monotonic() - cooled >= float(mesh.env["INFERMESH_QUARANTINE_COOLDOWN_S"]) - 1
        events = [r[0] for r in mesh.db.query(
            "SELECT e.kind FROM fleet_nodeevent e JOIN fleet_node n ON n.id = e.node_id WHERE n.name = 'node-1' "
            "ORDER BY e.id")]  # fmt: skip
        assert events[-2:] == ["quarantined", "released"]
    finally:
        stop.set()
        for t in load:
            if t.is_alive():
                t.join(10)
        mesh.close()
