"""The routing page in Debian's chromium, over real processes: two emulated runtimes behind one agent, a router fed by
it, and a portal whose dashboard reads that router. Load put on one runtime moves the ranking to the other, live over
the dashboard socket (no reload), and back when the load moves; screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.emulator.testing import EmulatorProcess, start_emulator
from tests.browser.conftest import ADMIN_PASSWORD, Portal, free_port, served_portal, sign_in
from tests.router.agentproc import router_agent
from tests.router.procs import RouterProc, router_config, running_router

pytestmark = pytest.mark.browser

CATALOG = """
from meshweb.catalog.models import Model
from meshweb.tenancy.scoped.writes import object_create
from meshweb.tenancy.models import Tenant
from meshweb.tenancy.services import SYSTEM
model = Model.objects.filter(name="demo-llm").first() or object_create(
    principal=SYSTEM, model=Model, data={"tenant": Tenant.objects.get(slug="demo"), "name": "demo-llm"})
print(model.pk)
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[EmulatorProcess], RouterProc]]:
    tmp = tmp_path_factory.mktemp("route-mesh")
    # Few batch slots, so a handful of requests queue and the agent's fused state shows it.
    args = ("--profile", "h100", "--flavor", "vllm", "--model", "demo-llm", "--max-num-seqs", "2")
    ems = [start_emulator(*args, "--seed", "1"), start_emulator(*args, "--seed", "2")]
    agent = router_agent([e.url for e in ems], tmp)
    # Two emulated GPUs, one under each runtime, so the page has GPU figures per target.
    agent.cfg["gpu"] = {"source": "emulated", "options": {"profiles": ["h100", "h100"], "node": "node-a"},
                        "poll_interval_s": 0.3}  # fmt: skip
    for i, runtime in enumerate(agent.cfg["runtimes"]):
        runtime["gpus"] = [i]
    agent.start()
    try:
        policy = {"strategy": "least_queue", "shadow_strategy": "baseline_rr"}  # a shadow: the win-rate panel
        cfg = router_config([], agent={"address": agent.address}, default_policy=policy)
        with running_router(cfg, tmp) as router:
            yield ems, router
    finally:
        agent.kill()
        for em in ems:
            em.stop()


@pytest.fixture(scope="module")
def route_portal(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, mesh: tuple[list[EmulatorProcess], RouterProc]
) -> Iterator[Portal]:
    """A portal of this module's own: its dashboard reads the router above (INFERMESH_ROUTER_METRICS_URL)."""
    tmp = tmp_path_factory.mktemp("route-portal")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
    env.update(
        INFERMESH_DATA_DIR=str(tmp / "data"),
        INFERMESH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        REDIS_URL=redis_url,
        INFERMESH_ROUTER_METRICS_URL=f"{mesh[1].url}/metrics",
        DJANGO_SETTINGS_MODULE="meshweb.settings",
        PYTHONUNBUFFERED="1",
    )
    with served_portal(tmp, port, env) as served:
        yield served


def _load(em: EmulatorProcess, n: int, stop: threading.Event) -> threading.Thread:
    """Keep `n` long requests in flight at one runtime directly (not through the router) until `stop`."""

    def one() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                client.post(f"{em.url}/v1/completions", json={"model": "demo-llm", "prompt": "load", "max_tokens": 64})

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    joiner = threading.Thread(target=lambda: [t.join() for t in threads], daemon=True)
    joiner.start()
    return joiner


def _best(page: Any) -> str:
    return str(page.get_attribute("#route", "data-best") or "")


def test_the_ranking_follows_the_load(
    browser: Any, route_portal: Portal, mesh: tuple[list[EmulatorProcess], RouterProc], artifacts: Path
) -> None:
    ems, router = mesh
    model_id = int(route_portal.run_python(CATALOG).strip().splitlines()[-1])
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    try:
        sign_in(page, route_portal.url)
        link = page.locator(f"#overview-routing a[href='/dashboard/models/{model_id}/route/']")
        link.click()  # the overview links to the page
        page.wait_for_function("() => parseInt(document.getElementById('route').dataset.updates || '0') >= 2")
        assert page.locator("#route-targets tbody tr").count() == 2
        page.wait_for_function(  # the GPU under each target reports (utilization, memory)
            "() => Array.from(document.querySelectorAll('#route-targets tbody tr'))"
            ".every(r => r.children[6].textContent.endsWith('%') && r.children[7].textContent.endsWith('%'))",
            timeout=15_000,
        )
        assert "least_queue" in page.inner_text("#route-policy")
        a, b = (em.url.removeprefix("http://") for em in ems)
        for busy, idle, shot in ((0, b, "route-load-on-a.png"), (1, a, "route-load-on-b.png")):
            stop = threading.Event()
            joiner = _load(ems[busy], 8, stop)
            try:
                page.wait_for_function(
                    "(idle) => (document.getElementById('route').dataset.best || '').includes(idle)",
                    arg=idle,
                    timeout=30_000,
                )
                row = f"#route-targets tr[data-target*='{ems[busy].url.removeprefix('http://')}']"
                page.wait_for_function(
                    "(sel) => { const r = document.querySelector(sel); return r && +r.children[3].textContent > 0; }",
                    arg=row,
                    timeout=15_000,
                )  # the busy runtime's queue shows in its row
                assert page.locator("#route-ranking tbody tr.best").get_attribute("data-target").find(idle) >= 0
                page.screenshot(path=str(artifacts / shot), full_page=True)
            finally:
                stop.set()
                joiner.join(60)
        # Requests through the router show up per target on the page.
        for i in range(6):
            httpx.post(
                f"{router.url}/v1/completions",
                json={"model": "demo-llm", "prompt": f"hi {i}", "max_tokens": 4},
                headers={"Authorization": "Bearer demo-key"},
                timeout=30,
            ).raise_for_status()
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('#route-targets tbody tr'))"
            ".some(r => parseFloat(r.children[10].textContent) > 0)",
            timeout=15_000,
        )
        page.wait_for_selector("#route-charts .chart", timeout=15_000)
        # the shadow's row in the win-rate panel, with the requests it was judged on (agreed, compared or unscored)
        shadow_row = "#route-winrates tbody tr[data-mode='shadow'][data-strategy='baseline_rr']"
        page.wait_for_selector(shadow_row, timeout=15_000)
        assert page.locator(shadow_row).locator("td").nth(2).inner_text() == "least_queue"
        page.screenshot(path=str(artifacts / "route-page.png"), full_page=True)
    finally:
        context.close()


def test_the_page_says_when_the_router_is_local_only(
    browser: Any, route_portal: Portal, mesh: tuple[list[EmulatorProcess], RouterProc]
) -> None:
    """The router's own place (its node, the network term's source) is shown from its live report; while gossip
    reports the mesh degraded the page says, in red, that the router ranks only local targets. The degraded report
    is handed to the page's own event (a real partition is tests/router/test_router_mesh.py's)."""
    model_id = int(route_portal.run_python(CATALOG).strip().splitlines()[-1])
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    try:
        sign_in(page, route_portal.url)
        page.goto(f"{route_portal.url}/dashboard/models/{model_id}/route/")
        page.wait_for_function("() => parseInt(document.getElementById('route').dataset.updates || '0') >= 1")
        live = page.locator("#route-mesh")
        assert live.get_attribute("data-degraded") == "false" and live.get_attribute("class") == "muted"
        report = httpx.get(f"{mesh[1].url}/infermesh/routing", params={"model": "demo-llm"}, timeout=10).json()
        node = report["mesh"]["node"]  # agent.node unset: the agent's node, once the router asked it
        want = f"router on node {node}" if node else "router's node not set"
        deadline = time.monotonic() + 20
        while not live.inner_text().startswith(want) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert live.inner_text().startswith(want), (live.inner_text(), report["mesh"])
        shown = page.evaluate(
            """(id) => {
                const send = (mesh) => document.body.dispatchEvent(new CustomEvent("im-route", {detail: {model_id: id,
                    data: {policy: {strategy: "hybrid_mesh", source: "portal"}, ranked_by: "hybrid_mesh", ranking: [],
                           targets: [], mesh: mesh}}}));
                const box = document.getElementById("route-mesh");
                send({node: "node-r", zone: "zone-a", degraded: true});
                const degraded = [box.textContent, box.className, box.dataset.degraded];
                send({node: "node-r", zone: "zone-a", degraded: false});
                return [degraded, [box.textContent, box.className, box.dataset.degraded]];
            }""",
            model_id,
        )
        (text, cls, flag), (text2, cls2, flag2) = shown
        assert text.startswith("LOCAL-ONLY: gossip reports the mesh degraded") and cls == "error" and flag == "true"
        assert "router on node node-r (zone zone-a)" in text
        assert text2 == "router on node node-r (zone zone-a): network cost counted from there"
        assert (cls2, flag2) == ("muted", "false")
    finally:
        context.close()
