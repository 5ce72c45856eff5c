"""A training job through the REST API, run by the mesh: the portal (uvicorn, its own PostgreSQL database and Redis)
and three agents in a Raft group (scheduler on the leader, a trainer and one emulated H100 each, linked to the portal).
A small DDP job (2 workers, CPU, gloo, real torchrun) is placed on two agents and succeeds with its placements, events
and telemetry in the API; one worker's node quarantined through the API mid-run moves the job to the spare node, where
it resumes from its checkpoint; scale and cancel from the API reach the scheduler."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.mesh import Agent, Mesh, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    workdir = tmp_path_factory.mktemp("train")
    rdzv = free_port()

    def sections(agent: Agent) -> dict[str, Any]:
        return {
            "node": {"id": agent.name, "roles": ["coordinator", "trainer"], "zone": "zone-a"},
            "scheduler": {"interval_s": 0.5, "offline_after_s": 10, "rdzv_port_base": rdzv, "rdzv_port_span": 1},
            "trainer": {"interval_s": 0.3, "publish_s": 1.0, "workdir": str(workdir / f"work-{agent.name}")},
            "portal": {"job_report_s": 0.3, "job_telemetry_s": 0.5},
        }

    m = Mesh(workdir, agent_sections=sections, runtime=False, celery=False)
    try:
        m.start()
        yield m
    finally:
        m.close()


def submit(mesh: Mesh, name: str, *, steps: int, sleep: float, workers: tuple[int, int] = (2, 2)) -> dict[str, Any]:
    spec = {
        "image": "local", "entrypoint": ["python", "-m", "agents.trainer.worker"],
        "args": ["--steps", str(steps), "--hidden", "512", "--step-sleep", str(sleep)],
        "workers": {"min": workers[0], "max": workers[1]}, "gpus_per_worker": 1,
        "checkpoint_uri": f"file://{mesh.workdir}/ckpt-{name}", "max_runtime_s": 600,
    }  # fmt: skip
    job: dict[str, Any] = mesh.api("POST", "jobs/", {"tenant": "ops", "name": name, "spec": spec})
    assert job["status"] == "pending"
    return job


def job_state(mesh: Mesh, job_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return mesh.api("GET", f"jobs/{job_id}/"), mesh.api("GET", f"jobs/{job_id}/telemetry/")


def events(mesh: Mesh, job_id: int) -> list[dict[str, Any]]:
    return list(mesh.api("GET", f"jobs/{job_id}/events/?limit=500")["results"])


def wait_status(mesh: Mesh, job_id: int, status: str, timeout: float) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = mesh.api("GET", f"jobs/{job_id}/")
        assert job["status"] not in {"failed", "cancelled"} - {status}, (job, events(mesh, job_id))
        return job if job["status"] == status else None

    return wait_for(f"job {job_id} {status}", reached, timeout=timeout, every=0.5)


def status_story(evs: list[dict[str, Any]]) -> list[str]:
    return [e["kind"].removeprefix("status.") for e in evs if e["kind"].startswith("status.")]


def test_a_ddp_job_submitted_through_the_api_succeeds_with_placements_events_and_telemetry(mesh: Mesh) -> None:
    job = submit(mesh, "ddp-ok", steps=20, sleep=0.0)
    done = wait_status(mesh, job["id"], "succeeded", timeout=120)
    placements = done["placements"]
    assert [p["rank"] for p in placements] == [0, 1]
    assert len({p["node"] for p in placements}) == 2 and all(p["gpu_uuids"] for p in placements)
    assert done["started_at"] and done["finished_at"]

    evs = events(mesh, job["id"])
    assert status_story(evs) == ["queued", "placing", "running", "succeeded"], evs
    placed = [e for e in evs if e["kind"] == "agent.placed"]
    assert len(placed) == 1 and sorted(placed[0]["data"]["nodes"]) == sorted(p["node"] for p in placements)

    tel = mesh.api("GET", f"jobs/{job['id']}/telemetry/")
    assert tel["reports"] >= 1 and tel["generation"] == 1
    nodes = tel["data"]["nodes"]
    assert sorted(nodes) == sorted(p["node"] for p in placements)
    for node, t in nodes.items():
        assert t["status"] == "succeeded" and t["step"] == 19, (node, t)
        assert t["mean_step_s"] > 0 and t["allreduce_count"] > 0 and t["allreduce_bytes"] > 0, (node, t)
        assert t["allreduce_s"] > 0 and t["busbw_gbps"] > 0, (node, t)
    assert tel["data"]["predicted_step_s"] > 0 and tel["data"]["strategy"] in ("ring", "tree", "hierarchical")
    # Each status step was applied once and audited, by the node that reported it.
    audit = mesh.db.query("SELECT action, actor FROM audit_auditentry WHERE object_type = 'training.trainingjob' "
                          "AND object_id = %s AND action LIKE 'job.%%' ORDER BY id", str(job["id"]))  # fmt: skip
    steps = [a for a, _ in audit if a not in ("job.submit", "job.place")]
    assert steps == ["job.queued", "job.placing", "job.running", "job.succeeded"], audit
    assert all(actor.startswith("node:") for a, actor in audit if a in steps)


def test_a_quarantined_worker_node_moves_the_job_which_resumes_and_finishes(mesh: Mesh) -> None:
    job = submit(mesh, "ddp-move", steps=60, sleep=0.1)

    def running_past_step_8() -> dict[str, Any] | None:
        detail, tel = job_state(mesh, job["id"])
        steps = [t.get("step") or -1 for t in tel["data"].get("nodes", {}).values()]
        ok = detail["status"] == "running" and len(detail["placements"]) == 2 and max(steps, default=-1) >= 8
        return detail if ok else None

    detail = wait_for("the job running past step 8", running_past_step_8, timeout=90, every=0.5)
    victim = sorted(p["node"] for p in detail["placements"])[0]
    node = mesh.api("GET", f"nodes/?name={victim}")["results"][0]
    mesh.api("POST", f"nodes/{node['id']}/status/", {"status": "quarantined", "reason": "emulated xid 79"})

    done = wait_status(mesh, job["id"], "succeeded", timeout=150)
    assert victim not in {p["node"] for p in done["placements"]} and len(done["placements"]) == 2
    evs = events(mesh, job["id"])
    story = status_story(evs)
    assert story[:3] == ["queued", "placing", "running"] and story[-1] == "succeeded", story
    assert story[3:5] == ["placing", "running"], story  # re-placed, then running again
    replans = [e for e in evs if e["kind"] == "agent.replanned"]
    assert replans and victim not in replans[-1]["data"]["nodes"], evs
    assert "quarantined" in replans[-1]["message"]
    tel = mesh.api("GET", f"jobs/{job['id']}/telemetry/")
    assert tel["generation"] >= 2 and victim not in tel["data"]["nodes"]
    assert all(t["step"] == 59 and t["allreduce_count"] > 0 for t in tel["data"]["nodes"].values())
    # resumed from the checkpoint: the workers of the new generation started past step 0
    started = [
        json.loads(line)
        for p in Path(mesh.workdir).glob(f"work-*/job-{job['id']}/gen-*/rank-*.jsonl")
        if "gen-1" not in str(p)
        for line in p.read_text().splitlines()
        if '"start"' in line
    ]
    assert started and all(s["resume_step"] > 0 for s in started), started


def test_scale_and_cancel_through_the_api_reach_the_scheduler(mesh: Mesh) -> None:
    job = submit(mesh, "ddp-elastic", steps=400, sleep=0.1, workers=(1, 2))
    jid = job["id"]
    wait_for("one worker running", lambda: job_state(mesh, jid)[0]["status"] == "running", timeout=90, every=0.5)
    assert len(mesh.api("GET", f"jobs/{jid}/")["placements"]) == 1
    mesh.api("POST", f"jobs/{jid}/scale/", {"workers": 2})

    def two_running() -> bool:
        detail, tel = job_state(mesh, jid)
        nodes = tel["data"].get("nodes", {})
        return detail["status"] == "running" and len(detail["placements"]) == 2 and len(nodes) == 2

    wait_for("the job running on two workers", two_running, timeout=90, every=0.5)
    assert any(e["kind"] == "agent.replanned" and "scaled 1→2" in e["message"] for e in events(mesh, jid))

    mesh.api("POST", f"jobs/{jid}/cancel/", {"reason": "enough"})
    assert mesh.api("GET", f"jobs/{jid}/")["status"] == "cancelled"

    def scheduler_cancelled() -> bool:
        state = mesh.store_value("node-1", f"kv/training/jobs/{jid}") or {}
        return state.get("status") == "cancelled" and mesh.store_value("node-1", f"kv/training/plans/{jid}") is None

    wait_for("the scheduler to cancel the job and drop its plan", scheduler_cancelled, timeout=30)
    # The portal stays where the user put it; the scheduler's own "cancelled" changes nothing there.
    assert status_story(events(mesh, jid))[-1] == "cancelled"
