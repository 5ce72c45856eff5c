"""`make demo` on a fresh `git clone` of the repository, watched in Debian's chromium: the clone alone (its code, its
trace slice, its templates and static files) runs the mesh; the replay goes through the router with the key the demo
made in the portal; the overview's GPU figures per node move with the replay; the routing page of `demo-llm`, reached
from the overview, moves its ranking away from a runtime that load is put on; Ctrl-C stops everything. Screenshots go
to test-artifacts/browser/.

The clone runs on the dependencies installed in the tests' environment (no network in the tests): its `.venv` links
to it and `make -o .venv/.installed` keeps make from reinstalling; PYTHONPATH puts the clone's packages first, which
the test checks before it starts the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import free_port

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(420)]
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "demo-clone-pw-1"


def _clone(tmp: Path) -> tuple[Path, dict[str, str]]:
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    assert not (clone / ".venv").exists() and not (clone / "test-artifacts").exists()
    venv = Path(sys.prefix)  # the environment running these tests (make install's .venv in CI)
    assert (venv / "bin" / "infermesh").exists(), f"{venv} has no infermesh entry point: make install first"
    (clone / ".venv").symlink_to(venv)
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    env.update(PYTHONPATH=str(clone), INFERMESH_ADMIN_PASSWORD=PASSWORD, PYTHONUNBUFFERED="1")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    where = subprocess.run(
        [str(clone / ".venv" / "bin" / "python"), "-c",
         "import agents, meshweb, router; print(agents.__file__, meshweb.__file__, router.__file__)"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    for path in where.stdout.split():
        assert Path(path).is_relative_to(clone), f"{path} is not the clone's"
    return clone, env


def _node_gpus(page: Any) -> dict[str, tuple[str, str, str]]:
    """The overview's 'GPUs per node' rows: node -> (util %, memory %, temp °C) as shown."""
    rows = page.eval_on_selector_all(
        "#node-gpus tbody tr",
        "rows => rows.map(r => [r.dataset.nodeGpus, ...Array.from(r.children).slice(1, 4).map(c => c.textContent)])",
    )
    return {r[0]: (r[1].strip(), r[2].strip(), r[3].strip()) for r in rows}


def _load(url: str, n: int, stop: threading.Event) -> list[threading.Thread]:
    """Keep `n` long requests in flight at one runtime directly (not through the router) until `stop`."""

    def one() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                client.post(f"{url}/v1/completions", json={"model": "demo-llm", "prompt": "load " * 200,
                                                           "max_tokens": 256})  # fmt: skip

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_make_demo_on_a_fresh_clone_shows_moving_gpus_and_ranking(
    browser: Any, tmp_path: Path, artifacts: Path
) -> None:
    clone, env = _clone(tmp_path)
    portal_port, router_port = free_port(), free_port()
    data = tmp_path / "data"
    args = (f"--portal-port {portal_port} --router-port {router_port} --base-port 0 --runtimes 3 --data-dir {data} "
            "--replay-requests 3000 --replay-rate 6 --replay-max-tokens 96")  # fmt: skip
    out_path = tmp_path / "demo.out"
    out = out_path.open("w")
    started = time.monotonic()
    # Its own session, as a terminal's foreground job: Ctrl-C goes to make and the demo alike.
    proc = subprocess.Popen(
        ["make", "-o", ".venv/.installed", "demo", f"ARGS={args}"],
        cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    manifest_path = data / "demo" / "services.json"
    context = None
    try:
        deadline = time.monotonic() + 180
        while "replaying" not in out_path.read_text():
            assert proc.poll() is None, out_path.read_text()[-4000:]
            assert time.monotonic() < deadline, f"the demo did not start its replay:\n{out_path.read_text()[-4000:]}"
            time.sleep(0.5)
        print(f"make demo on the clone: replay started {time.monotonic() - started:.1f}s after `make demo`")
        manifest = json.loads(manifest_path.read_text())
        banner = out_path.read_text()
        assert manifest["api_key"] in banner and f"{manifest['dashboard']}keys/" in banner

        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        page.goto(f"{manifest['portal']}/dashboard/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_url(f"{manifest['portal']}/dashboard/")

        # -- the overview's GPU figures per node move with the replay -------------------------------------------------
        page.wait_for_selector("#node-gpus tbody tr", timeout=60_000)
        seen: dict[str, list[tuple[str, str, str]]] = {}
        deadline = time.monotonic() + 90
        moving: set[str] = set()
        while time.monotonic() < deadline:
            for node, reading in _node_gpus(page).items():
                seen.setdefault(node, [])
                if reading not in seen[node]:
                    seen[node].append(reading)
            # a node moves when its utilization and its temperature each showed two values, one utilization busy
            moving = {
                n for n, rs in seen.items()
                if len({r[0] for r in rs}) >= 2 and len({r[2] for r in rs}) >= 2
                and any(r[0] not in ("–", "0", "0.0") for r in rs)
            }  # fmt: skip
            if moving:
                break
            time.sleep(1.0)
        assert moving, f"no node's GPU utilization and temperature moved in 90 s: {seen}"
        assert all(r[1] not in ("–", "0", "0.0") for n in moving for r in seen[n]), seen  # weights + KV in memory
        print(f"GPU figures seen per node: {json.dumps(seen)}")
        page.screenshot(path=str(artifacts / "demo-clone-overview.png"), full_page=True)

        # -- the routing page of demo-llm, from the overview: its ranking moves away from a loaded runtime -----------
        page.locator("#overview-routing a[href$='/route/']").first.click()
        page.wait_for_function("() => parseInt(document.getElementById('route').dataset.updates || '0') >= 2",
                               timeout=30_000)  # fmt: skip
        assert page.locator("#route-targets tbody tr").count() == 3
        assert "hybrid_mesh" in page.inner_text("#route-policy")
        page.wait_for_function(  # the demo's router passes its node: the network term is counted from there
            "() => document.getElementById('route-mesh').textContent.startsWith('router on node gpu-a1')",
            timeout=30_000,
        )
        before = str(page.get_attribute("#route", "data-best") or "")
        loaded = next(u for u in manifest["runtimes"] if u.removeprefix("http://") in before)
        stop = threading.Event()
        threads = _load(loaded, 24, stop)
        try:
            t0 = time.monotonic()
            page.wait_for_function(
                "(busy) => { const b = document.getElementById('route').dataset.best || '';"
                " return b && !b.includes(busy); }",
                arg=loaded.removeprefix("http://"),
                timeout=45_000,
            )  # fmt: skip
            after = str(page.get_attribute("#route", "data-best"))
            print(f"ranking: best {before} -> {after} {time.monotonic() - t0:.1f}s after load on {loaded}")
            page.screenshot(path=str(artifacts / "demo-clone-route.png"), full_page=True)
        finally:
            stop.set()
            for t in threads:
                t.join(130)
    finally:
        if context is not None:
            context.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at the terminal
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
    text = out_path.read_text()
    assert "nothing left running" in text, text[-4000:]
    progress = [line for line in text.splitlines() if line.startswith("replay: ")]
    assert progress, text[-4000:]
    print(f"at Ctrl-C: {progress[-1]}")
    ok, failed = (int(progress[-1].split(", ")[i].split()[0]) for i in (1, 2))
    assert ok >= 20 and failed == 0, progress[-1]  # every request of the replay, with the portal's key, answered
