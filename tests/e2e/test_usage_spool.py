"""The router's usage spool as real processes: the portal under uvicorn on PostgreSQL, a router with
`usage.spool_dir`, an emulated runtime. Usage counted while the portal is down survives a `kill -9` of the router and
reaches the portal after the restart; batches the portal already took, found again in the spool (the router died
before removing them), are sent again and not counted twice."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.emulator.testing import start_emulator
from tests.e2e.mesh import Mesh, wait_for
from tests.router.procs import RouterProc, router_config, start_router

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("spool"), agents=1, runtime=False, celery=False)  # one node: its credential
    try:
        m.start()
        yield m
    finally:
        m.close()


def _spooled(spool: Path) -> tuple[int, int]:
    """(requests, completion tokens) the spool holds."""
    requests = tokens = 0
    for f in spool.glob("*.json"):
        rows = json.loads(f.read_text())["rows"]
        requests += sum(r["requests"] for r in rows)
        tokens += sum(r["completion_tokens"] for r in rows)
    return requests, tokens


def _usage(mesh: Mesh) -> tuple[int, int]:
    totals = mesh.api("GET", "usage/?tenant=ops&granularity=day")["totals"]
    return int(totals["requests"]), int(totals["completion_tokens"])


def test_usage_survives_kill_9_and_is_counted_once(mesh: Mesh, tmp_path: Path) -> None:
    em = start_emulator("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm", "--instant")
    spool = tmp_path / "spool"
    cfg: dict[str, Any] = router_config(
        [em.url],
        tenants=[{"name": "ops", "api_keys": ["ops-key"]}],  # the portal's seeded tenant
        usage={"portal_url": mesh.base, "credential": mesh.credentials["node-1"], "flush_s": 0.5,
               "spool_dir": str(spool), "spool_s": 0.1},
    )  # fmt: skip
    router: RouterProc | None = None
    try:
        mesh.stop_process("portal")  # usage cannot be delivered: it stays in the spool
        router = start_router(cfg, tmp_path, "router-1")
        served = 0
        for i in range(6):
            body = {"model": "demo-llm", "prompt": f"count me {i}", "max_tokens": 3 + i}
            r = httpx.post(router.url + "/v1/completions", json=body, headers={"Authorization": "Bearer ops-key"},
                           timeout=10)  # fmt: skip
            assert r.status_code == 200, r.text
            served += r.json()["usage"]["completion_tokens"]
        wait_for("all six requests in the spool", lambda: _spooled(spool) == (6, served), timeout=10, every=0.05)
        router.proc.send_signal(signal.SIGKILL)
        router.proc.wait(10)
        saved = tmp_path / "saved"
        shutil.copytree(spool, saved)

        mesh.spawn("portal", "portal", "--bind", f"127.0.0.1:{mesh.port}", "--no-migrate")
        wait_for("the portal", lambda: httpx.get(f"{mesh.base}/healthz", timeout=2).status_code == 200, timeout=60)
        router = start_router(cfg, tmp_path, "router-2")
        wait_for("the spooled usage at the portal", lambda: _usage(mesh) == (6, served), timeout=20)
        wait_for("the spool emptied once the portal had it", lambda: not list(spool.glob("*.json")), timeout=10)

        # The router dies again before removing what the portal took: the same batches are found and resent.
        router.proc.send_signal(signal.SIGKILL)
        router.proc.wait(10)
        for f in saved.glob("*.json"):
            shutil.copy(f, spool / f.name)
        router = start_router(cfg, tmp_path, "router-3")
        wait_for("the resent batches acknowledged", lambda: not list(spool.glob("*.json")), timeout=20)
        assert _usage(mesh) == (6, served)  # applied once, by batch id
        assert any(e.get("msg") == "usage left by the previous run will be sent" for e in router.logs())
    finally:
        if router is not None:
            router.stop()
        em.stop()


def test_a_spool_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    from router.config import ConfigError, parse_config

    bad = tmp_path / "spool"
    bad.write_text("")
    usage = {"portal_url": "http://127.0.0.1:1", "credential": "imn_x", "spool_dir": str(bad)}
    with pytest.raises(ConfigError, match=r"usage\.spool_dir .* is not a directory"):
        parse_config({"usage": usage}, source="router.yaml", env={})
