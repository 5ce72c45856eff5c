"""The admin dashboard in Debian's chromium: login, a node quarantined live (no reload) through the Redis channel
layer, a job submitted and cancelled, and dashboard sockets refused from another origin or without a session."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.browser.conftest import Portal

pytestmark = pytest.mark.browser

QUARANTINE = """
from meshweb.fleet.models import Node
from meshweb.fleet.services import QUARANTINE_CHECKS, node_quarantine_open
node_quarantine_open(
    principal=QUARANTINE_CHECKS,
    node=Node.objects.get(name="gpu-b2"),
    reason="Xid 79: GPU has fallen off the bus",
    evidence=[{"gpu": "GPU-gpu-b2-0", "xid": 79}],
)
"""


def test_wrong_password_is_refused(browser: Any, portal: Portal) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{portal.url}/dashboard/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "not-the-password")
    page.click("#login-submit")
    assert page.inner_text("#login-error") == "Wrong user name or password."
    assert "/dashboard/login/" in page.url
    context.close()


def test_node_goes_quarantined_live(admin: Any, portal: Portal, artifacts: Path) -> None:
    page = admin.new_page()
    page.goto(f"{portal.url}/dashboard/nodes/")
    status = page.locator('[data-node-status="gpu-b2"]')
    assert status.inner_text() == "active"
    page.wait_for_function("document.getElementById('ws-state').textContent === 'live'", timeout=20_000)
    page.evaluate("window.__notReloaded = 'still the same page'")
    page.screenshot(path=str(artifacts / "nodes-before-quarantine.png"), full_page=True)

    # The quarantine service, as the Celery check calls it, in another process: only Redis can tell the page.
    portal.run_python(QUARANTINE)

    page.wait_for_function(
        "document.querySelector('[data-node-status=\"gpu-b2\"]').textContent === 'quarantined'", timeout=20_000
    )
    assert page.evaluate("window.__notReloaded") == "still the same page"
    # The socket carried it (not the fragments' periodic refresh): the page's socket handler recorded the change.
    last = page.evaluate("window.imLastNodeUpdate")
    assert last["node"] == "gpu-b2" and last["status"] == "quarantined" and last["via"] in {"node.status", "audit"}
    assert "quarantined" in (status.get_attribute("class") or "")
    page.wait_for_function(
        "document.querySelector('[data-node-reason=\"gpu-b2\"]').textContent.includes('Xid 79')", timeout=10_000
    )
    page.screenshot(path=str(artifacts / "nodes-quarantined-live.png"), full_page=True)

    # The overview counts it, and the quarantine history shows the reason and evidence.
    page.goto(f"{portal.url}/dashboard/")
    assert page.inner_text("#nodes-quarantined") == "1"
    page.goto(f"{portal.url}/dashboard/quarantine/")
    body = page.inner_text("main")
    assert "Xid 79: GPU has fallen off the bus" in body and '"xid": 79' in body
    assert "active → quarantined" in body
    page.screenshot(path=str(artifacts / "quarantine-history.png"), full_page=True)
    page.close()


def test_submit_and_cancel_a_job(admin: Any, portal: Portal, artifacts: Path) -> None:
    page = admin.new_page()
    page.goto(f"{portal.url}/dashboard/jobs/")
    page.fill("#id_name", "browser-job")
    page.click("#job-submit")
    page.wait_for_url(f"{portal.url}/dashboard/jobs/*/")
    job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    assert page.inner_text("#job-status") == "pending"
    assert f"Job {job_id} (browser-job) submitted." in page.inner_text("#messages")
    page.screenshot(path=str(artifacts / "job-submitted.png"), full_page=True)

    # The job is in the REST API too, submitted by the admin through the same service.
    listed = json.loads(portal.run_python(
        "import json\nfrom meshweb.training.models import TrainingJob\n"
        f"j = TrainingJob.objects.get(pk={job_id})\n"
        "print(json.dumps({'name': j.name, 'status': j.status, 'by': j.submitted_by, 'workers': j.workers}))"
    ))  # fmt: skip
    assert listed == {"name": "browser-job", "status": "pending", "by": "user:admin", "workers": 2}

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#job-cancel")
    page.wait_for_function("document.getElementById('job-status').textContent === 'cancelled'", timeout=15_000)
    assert f"Job {job_id} cancelled." in page.inner_text("#messages")
    events = page.inner_text("#job-events")
    assert "submitted" in events and "status.cancelled" in events
    page.screenshot(path=str(artifacts / "job-cancelled.png"), full_page=True)

    # A finished job offers no actions any more.
    page.goto(f"{portal.url}/dashboard/jobs/{job_id}/")
    assert page.locator("#job-cancel").count() == 0 and page.locator("#job-scale").count() == 0
    page.close()


class _EvilPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!DOCTYPE html><title>elsewhere</title><p>another site</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def other_site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EvilPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # Chromium resolves *.localhost to loopback: a different host, so a different origin, with no DNS needed.
        yield f"http://evil.localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


OPEN_SOCKET = """url => new Promise(resolve => {
    const ws = new WebSocket(url);
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onmessage = ev => { resolve({opened, first: ev.data}); ws.close(); };
    ws.onclose = ev => resolve({opened, code: ev.code});
    setTimeout(() => resolve({opened, timeout: true}), 10000);
})"""


def test_socket_from_another_origin_is_refused(admin: Any, portal: Portal, other_site: str, artifacts: Path) -> None:
    ws_url = f"ws://127.0.0.1:{portal.port}/ws/dashboard/"
    page = admin.new_page()
    # From the portal's own pages the signed-in admin's socket opens and says hello.
    page.goto(f"{portal.url}/dashboard/events/")
    same = page.evaluate(OPEN_SOCKET, ws_url)
    assert same["opened"] is True and json.loads(same["first"])["kind"] == "hello"

    # Another site open in the same browser (the admin's cookies would travel with the socket) is refused.
    page.goto(other_site)
    cross = page.evaluate(OPEN_SOCKET, ws_url)
    assert cross["opened"] is False and "first" not in cross
    page.screenshot(path=str(artifacts / "cross-origin-refused.png"))
    page.close()
    logs = [json.loads(line) for line in portal.log.read_text().splitlines() if line.startswith("{")]
    refusals = [entry for entry in logs if entry.get("msg") == "dashboard socket refused"]
    assert any(entry.get("origin", "").startswith("http://evil.localhost:") for entry in refusals), refusals


def test_socket_without_a_session_is_refused(browser: Any, portal: Portal) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{portal.url}/dashboard/login/")
    result = page.evaluate(OPEN_SOCKET, f"ws://127.0.0.1:{portal.port}/ws/dashboard/")
    assert result["opened"] is False and "first" not in result
    context.close()


def test_forged_origin_header_is_refused_even_with_a_session(admin: Any, portal: Portal) -> None:
    """Outside a browser: the admin's session cookie with a foreign Origin header is refused at the handshake."""
    cookies = {c["name"]: c["value"] for c in admin.cookies() if c["name"] == "sessionid"}
    assert cookies, "the admin context has no session cookie"
    headers = {"Cookie": f"sessionid={cookies['sessionid']}"}
    url = f"ws://127.0.0.1:{portal.port}/ws/dashboard/"

    async def attempt(origin: str) -> Any:
        async with websockets.connect(url, origin=origin, additional_headers=headers, open_timeout=10) as ws:  # type: ignore[arg-type]
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

    def run(origin: str) -> Any:
        # Playwright's sync API owns this thread's event loop; the client gets a thread of its own.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, attempt(origin)).result()

    with pytest.raises(InvalidStatus) as refused:
        run("http://evil.example")
    assert refused.value.response.status_code == 403
    hello = run(portal.url)
    assert hello["kind"] == "hello" and hello["principal"] == "user:admin"


TELEMETRY = """
import time
from agents.proto.portal_link import GpuRollup, NodeRollup, Telemetry
from meshweb.fleet.models import Node
from meshweb.meshlink.services import telemetry_record
node = Node.objects.get(name="gpu-a1")
for step in range(3):
    telemetry_record(node=node, telemetry=Telemetry(
        seq=step + 1,
        at_unix_ms=int(time.time() * 1000) - (2 - step) * 5000,
        node=NodeRollup(targets=2, routable_targets=2, requests_running=3.0),
        gpus=[GpuRollup(uuid=f"GPU-gpu-a1-{i}", index=i, name="NVIDIA H100 80GB HBM3", utilization=40.0 + 10 * step + i,
                        memory_used_frac=0.5, temperature_c=60.0 + step, power_w=400.0) for i in range(2)],
    ))
"""


def test_gpu_charts_draw_when_telemetry_arrives(admin: Any, portal: Portal, artifacts: Path) -> None:
    page = admin.new_page()
    page.goto(f"{portal.url}/dashboard/nodes/gpu-a1/")
    page.wait_for_function("document.getElementById('ws-state').textContent === 'live'", timeout=20_000)
    assert page.locator("#charts .chart").count() == 0
    assert page.is_visible("#charts-empty")

    # Telemetry reported through the agent link's service; its live event makes the page fetch and draw the series.
    portal.run_python(TELEMETRY)
    page.wait_for_function("document.querySelectorAll('#charts .chart canvas').length === 4", timeout=20_000)
    metrics = page.eval_on_selector_all("#charts .chart", "els => els.map(e => e.dataset.metric)")
    assert metrics == ["utilization", "memory_used_pct", "temperature_c", "power_w"]
    # The GPU table re-renders with the latest reading (matched to the inventory by UUID).
    page.wait_for_function("document.getElementById('gpu-table').textContent.includes('61.0')", timeout=20_000)
    assert page.is_hidden("#charts-empty")
    series = page.evaluate("fetch(document.getElementById('charts').dataset.telemetryUrl).then(r => r.json())")
    gpu0 = series["gpus"][0]
    assert gpu0["utilization"] == [40.0, 50.0, 60.0] and gpu0["temperature_c"] == [60.0, 61.0, 62.0]
    page.screenshot(path=str(artifacts / "node-gpu-charts.png"), full_page=True)
    page.close()
