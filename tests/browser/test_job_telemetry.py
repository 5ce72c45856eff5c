"""A training job's dashboard page in Debian's chromium: telemetry reported through the agent link's services (in
another process) draws the uPlot charts, and a later report adds its points without a reload, rung through the Redis
channel layer (the sockets' poll is set far beyond the test's waits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Portal

pytestmark = pytest.mark.browser

SUBMIT = """
import json
from agents.proto.portal_link import JobEvent
from meshweb.fleet.models import Node
from meshweb.meshlink.services import job_event_record
from meshweb.tenancy.models import Tenant
from meshweb.tenancy.services import SYSTEM
from meshweb.training.services import job_submit
spec = json.load(open("docs/examples/job.json"))["spec"]
job = job_submit(principal=SYSTEM, tenant=Tenant.objects.get(slug="demo"), name="ddp-telemetry", spec=spec).job
workers = [{"rank": 0, "node": "gpu-a1", "gpu_uuids": ["GPU-gpu-a1-0"]},
           {"rank": 1, "node": "gpu-a2", "gpu_uuids": ["GPU-gpu-a2-0"]}]
placed = {"at": 1.0, "generation": 1, "workers": workers}
job_event_record(node=Node.objects.get(name="gpu-a1"),
                 event=JobEvent(seq=1, job_id=job.pk, kind="placed", message="placed 2 workers", data=placed))
print(job.pk)
"""

# One scheduler roll-up (agents/scheduler/component.py `rollup`) for both nodes at `step`, reported as the agent
# link's consumer does.
REPORT = """
from agents.proto.portal_link import JobTelemetry
from meshweb.fleet.models import Node
from meshweb.meshlink.services import job_telemetry_report
def node(step, step_s, busbw):
    return {{"status": "running", "step": step, "step_s": step_s, "mean_step_s": step_s, "allreduce_count": 4 * step,
             "allreduce_s": step_s / 3, "allreduce_bytes": 102760448, "busbw_gbps": busbw, "ranks": 1}}
nodes = {{"gpu-a1": node({step}, 0.31, 38.5), "gpu-a2": node({step}, 0.33, 36.0)}}
data = {{"generation": 1, "strategy": "ring", "nccl_algo": "Ring", "predicted_step_s": 0.3,
         "predicted_busbw_gbps": 40.0, "nodes": nodes}}
job_telemetry_report(node=Node.objects.get(name="gpu-a1"),
                     report=JobTelemetry(seq=1, job_id={job}, generation=1, data=data))
"""

# Pixels of the first series' colour (#2f6fde) on a chart's canvas: the line or points uPlot drew from the data.
SERIES_PIXELS = """metric => {
    const canvas = document.querySelector(`#job-charts .chart[data-metric="${metric}"] canvas`);
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 0; i < pixels.length; i += 4) {
        if (Math.abs(pixels[i] - 47) + Math.abs(pixels[i + 1] - 111) + Math.abs(pixels[i + 2] - 222) < 60
            && pixels[i + 3] > 200) { n++; }
    }
    return n;
}"""

# Which event made htmx re-fetch the job's state: the socket's job.telemetry message dispatches "im-job-telemetry"
# for that job only; the 15 s poll none.
RECORD_TRIGGERS = """() => {
    window.__triggers = [];
    document.body.addEventListener("htmx:beforeRequest", ev => {
        const cfg = ev.detail.requestConfig || {};
        window.__triggers.push(cfg.triggeringEvent ? cfg.triggeringEvent.type : "poll");
    });
}"""


def test_job_charts_draw_and_grow_live(admin: Any, portal: Portal, artifacts: Path) -> None:
    job = int(portal.run_python(SUBMIT).strip())
    portal.run_python(REPORT.format(job=job, step=10))

    page = admin.new_page()
    page.goto(f"{portal.url}/dashboard/jobs/")
    page.click(f'tr[data-job="{job}"] a')  # the jobs list links to the page
    page.wait_for_url(f"{portal.url}/dashboard/jobs/{job}/")
    assert page.inner_text("#job-placements tbody") == "0\tgpu-a1\tGPU-gpu-a1-0\n1\tgpu-a2\tGPU-gpu-a2-0"
    assert page.locator("#job-telemetry-empty").count() == 0
    assert "gpu-a2\t1\trunning\t10\t0.33\t" in page.inner_text("#job-telemetry-latest")
    # Three charts, one line per node (labelled with its ranks) and the plan's prediction, from the stored roll-up.
    page.wait_for_function("document.querySelectorAll('#job-charts .chart canvas').length === 3", timeout=10_000)
    charts = page.locator("#job-charts")
    assert (charts.get_attribute("data-steps"), charts.get_attribute("data-reports")) == ("1", "1")
    metrics = page.eval_on_selector_all("#job-charts .chart", "els => els.map(e => e.dataset.metric)")
    assert metrics == ["step_s", "allreduce_s", "busbw_gbps"]
    legend = page.inner_text("#job-charts .chart[data-metric='step_s'] .u-legend")
    assert "gpu-a1 (rank 0)" in legend and "gpu-a2 (rank 1)" in legend and "predicted" in legend
    assert page.evaluate(SERIES_PIXELS, "step_s") > 0
    page.wait_for_function("document.getElementById('ws-state').textContent === 'live'", timeout=10_000)
    page.evaluate("window.__notReloaded = 'same page'")
    page.evaluate(RECORD_TRIGGERS)

    # A later report, from another process: only the Redis doorbell can tell the page before its 15 s poll.
    portal.run_python(REPORT.format(job=job, step=20))
    page.wait_for_function("document.getElementById('job-charts').dataset.steps === '2'", timeout=10_000)
    assert page.evaluate("window.__notReloaded") == "same page"
    assert "im-job-telemetry" in page.evaluate("window.__triggers")
    assert "im-refresh" not in page.evaluate("window.__triggers")  # telemetry does not refresh every fragment
    assert charts.get_attribute("data-reports") == "2"
    assert "gpu-a1\t0\trunning\t20\t0.31\t" in page.inner_text("#job-telemetry-latest")
    assert page.evaluate(SERIES_PIXELS, "busbw_gbps") > 0
    assert page.locator("#job-charts .chart canvas").count() == 3  # the same charts, updated in place
    page.screenshot(path=str(artifacts / "job-telemetry-live.png"), full_page=True)
    page.close()
