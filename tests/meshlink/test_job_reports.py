"""Job reports from the scheduler to the portal: the agent's reporter (what it sends, once) and the portal's services
(status along legal transitions, events once, placements, telemetry in the REST API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agents.portal_link.jobs import JobReporter
from agents.proto.portal_link import JobEvent, JobStatus, JobTelemetry
from meshweb.audit.models import AuditEntry
from meshweb.core.exceptions import Conflict
from meshweb.meshlink.services import (
    JobReportError,
    job_event_record,
    job_status_report,
    job_telemetry_report,
)
from meshweb.tenancy.services import SYSTEM, token_create
from meshweb.training.models import JobEvent as JobEventRow
from meshweb.training.models import JobPlacement, TrainingJob
from meshweb.training.services import job_cancel, job_submit, transition_path
from tests.meshlink.conftest import Fleet
from tests.meshweb.conftest import make_client

SPEC = json.loads(Path("docs/examples/job.json").read_text())["spec"]
TELEMETRY = {"generation": 1, "strategy": "ring", "nodes": {"node-1": {"step": 3, "busbw_gbps": 1.5}}}


def state(status: str, *events: dict[str, Any], telemetry: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": status, "reason": f"now {status}", "events": list(events), "telemetry": telemetry or {}}


WORKERS = [{"rank": 0, "node": "node-1", "gpu_uuids": ["GPU-a"]}, {"rank": 1, "node": "node-2", "gpu_uuids": ["GPU-b"]}]
PLACED = {"at": 10.0, "kind": "placed", "message": "placed 2 workers", "data": {"generation": 1, "workers": WORKERS}}


# -- the agent side ----------------------------------------------------------------------------------------------
def test_reporter_sends_events_telemetry_then_status_once() -> None:
    rep = JobReporter(telemetry_every_s=5.0)
    st = state("placing", PLACED, {"at": 10.0, "kind": "status.placing", "message": "x", "data": {}})
    frames = rep.step({"7": st}, {"7": {"status": "pending"}}, now=100.0)
    assert [type(f) for f in frames] == [JobEvent, JobStatus]
    event, status = frames
    assert isinstance(event, JobEvent) and event.kind == "placed" and event.data["at"] == 10.0
    assert isinstance(status, JobStatus) and status.status == "placing" and status.job_id == 7
    # nothing new: nothing sent, even though the portal has not caught up yet
    assert rep.step({"7": st}, {"7": {"status": "pending"}}, now=100.5) == []
    # telemetry appears: sent, then rate limited until the job's final status
    running = state("running", PLACED, telemetry=TELEMETRY)
    frames = rep.step({"7": running}, {"7": {"status": "placing"}}, now=101.0)
    assert [type(f) for f in frames] == [JobTelemetry, JobStatus]
    newer = {**TELEMETRY, "nodes": {"node-1": {"step": 9}}}
    assert rep.step({"7": state("running", PLACED, telemetry=newer)}, {"7": {"status": "running"}}, now=102.0) == []
    frames = rep.step({"7": state("succeeded", PLACED, telemetry=newer)}, {"7": {"status": "running"}}, now=102.5)
    assert [type(f) for f in frames] == [JobTelemetry, JobStatus]
    # the portal finished the job: nothing more, and the reporter forgets it
    assert rep.step({"7": state("succeeded", PLACED)}, {"7": {"status": "succeeded"}}, now=103.0) == []
    assert "7" not in rep.sent_status


def test_reporter_skips_jobs_the_portal_does_not_know_or_has_finished() -> None:
    rep = JobReporter()
    jobs = {"1": state("running", PLACED), "x": state("running"), "2": state("cancelled")}
    assert rep.step(jobs, {"2": {"status": "cancelled"}}, now=1.0) == []


# -- the portal side ---------------------------------------------------------------------------------------------
def test_transition_path_walks_legal_steps_only() -> None:
    assert transition_path("pending", "running") == ["queued", "placing", "running"]
    assert transition_path("running", "placing") == ["placing"]
    assert transition_path("placing", "succeeded") == ["running", "succeeded"]
    assert transition_path("running", "running") == []
    with pytest.raises(Conflict):
        transition_path("succeeded", "running")


@pytest.fixture
def job(fleet: Fleet) -> TrainingJob:
    return job_submit(principal=SYSTEM, tenant=fleet.tenant, name="ddp", spec=SPEC).job


def frame(cls: Any, **kw: Any) -> Any:
    return cls.model_validate({"seq": 1, **kw})


def test_status_reports_walk_the_transitions_once_each_audited(fleet: Fleet, job: TrainingJob) -> None:
    node = fleet.nodes[0]
    job_status_report(node=node, report=frame(JobStatus, job_id=job.pk, status="running", reason="2 workers"))
    job_status_report(node=node, report=frame(JobStatus, job_id=job.pk, status="running", reason="again"))
    job.refresh_from_db()
    assert job.status == "running" and job.status_reason == "2 workers" and job.started_at is not None
    kinds = list(JobEventRow.objects.filter(job=job).values_list("kind", flat=True))
    assert kinds == ["submitted", "status.queued", "status.placing", "status.running"]
    audit = AuditEntry.objects.filter(object_type="training.trainingjob", object_id=str(job.pk)).order_by("id")
    actions = list(audit.values_list("action", flat=True))
    assert actions[-3:] == ["job.queued", "job.placing", "job.running"]
    job_status_report(node=node, report=frame(JobStatus, job_id=job.pk, status="succeeded"))
    with pytest.raises(JobReportError, match="cannot go from succeeded to running"):
        job_status_report(node=node, report=frame(JobStatus, job_id=job.pk, status="running"))
    with pytest.raises(JobReportError, match="no job 999999"):
        job_status_report(node=node, report=frame(JobStatus, job_id=999999, status="running"))


def test_a_cancelled_job_refuses_a_late_running_report(fleet: Fleet, job: TrainingJob) -> None:
    job_cancel(principal=SYSTEM, job=job)
    with pytest.raises(JobReportError):
        job_status_report(node=fleet.nodes[0], report=frame(JobStatus, job_id=job.pk, status="running"))


def test_placement_events_record_placements_and_events_once(fleet: Fleet, job: TrainingJob) -> None:
    node = fleet.nodes[0]
    event = frame(JobEvent, job_id=job.pk, kind="placed", message="placed", data={**PLACED["data"], "at": 10.0})
    assert job_event_record(node=node, event=event) is not None
    assert job_event_record(node=node, event=event) is None  # a new leader repeating it
    rows = [(p.rank, p.node.name, p.gpu_uuids) for p in JobPlacement.objects.filter(job=job).select_related("node")]
    assert rows == [(0, "node-1", ["GPU-a"]), (1, "node-2", ["GPU-b"])]
    workers = [WORKERS[0], {"rank": 1, "node": "node-3", "gpu_uuids": ["GPU-c"]}]
    moved = {"generation": 2, "at": 20.0, "workers": workers}
    job_event_record(node=node, event=frame(JobEvent, job_id=job.pk, kind="replanned", message="node-2 quarantined",
                                            data=moved))  # fmt: skip
    assert sorted(JobPlacement.objects.filter(job=job).values_list("node__name", flat=True)) == ["node-1", "node-3"]
    assert JobEventRow.objects.filter(job=job, kind__startswith="agent.").count() == 2
    assert AuditEntry.objects.filter(action="job.place", object_id=str(job.pk)).count() == 2
    bad = {"at": 30.0, "workers": [{"rank": 0, "node": "node-9", "gpu_uuids": []}]}
    with pytest.raises(JobReportError, match="node-9"):
        job_event_record(node=node, event=frame(JobEvent, job_id=job.pk, kind="placed", data=bad))


def test_telemetry_reaches_the_rest_api(fleet: Fleet, job: TrainingJob) -> None:
    client = make_client(token_create(principal=SYSTEM, tenant=fleet.tenant, role="viewer", name="t")[1])
    empty = client.get(f"/api/v1/jobs/{job.pk}/telemetry/").json()
    assert empty["reports"] == 0 and empty["data"] == {}
    for _ in range(2):
        job_telemetry_report(node=fleet.nodes[0], report=frame(JobTelemetry, job_id=job.pk, generation=1,
                                                               data=TELEMETRY))  # fmt: skip
    body = client.get(f"/api/v1/jobs/{job.pk}/telemetry/").json()
    assert body["reports"] == 2 and body["generation"] == 1 and body["data"] == TELEMETRY
