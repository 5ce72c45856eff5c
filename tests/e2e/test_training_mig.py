"""MIG through the REST API, run by the mesh: the portal (uvicorn, PostgreSQL, Redis) and three agents in a Raft
group (scheduler on the leader, a trainer on each); two have emulated H100 MIG slices, reported to the portal in
their telemetry, the third a whole H100. A job asking for two 3g.40gb slices is placed on the slices of the node
that has them and succeeds (real torchrun, CPU, gloo); one asking for 7g.80gb, which no node exposes, is refused at
submission with the fleet's layout; the fleet's MIG fragmentation is in the store, the placement event and the
leader's metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.mesh import Agent, Mesh, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

LAYOUT = {
    "node-1": ["h100:mig-3g.40gb", "h100:mig-3g.40gb", "h100:mig-1g.10gb"],
    "node-2": ["h100:mig-1g.10gb", "h100:mig-1g.10gb", "h100:mig-2g.20gb"],
    "node-3": ["h100"],  # a whole GPU: no slices, never a MIG job's
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    workdir = tmp_path_factory.mktemp("mig")
    rdzv = free_port()

    def sections(agent: Agent) -> dict[str, Any]:
        return {
            "node": {"id": agent.name, "roles": ["coordinator", "trainer"], "zone": "zone-a"},
            "gpu": {"source": "emulated", "poll_interval_s": 0.3,
                    "options": {"profiles": LAYOUT[agent.name], "node": agent.name, "faults": agent.faults}},
            "scheduler": {"interval_s": 0.5, "offline_after_s": 10, "rdzv_port_base": rdzv, "rdzv_port_span": 1},
            "trainer": {"interval_s": 0.3, "publish_s": 1.0, "workdir": str(workdir / f"work-{agent.name}")},
            "portal": {"job_report_s": 0.3, "job_telemetry_s": 0.5},
        }  # fmt: skip

    m = Mesh(workdir, agent_sections=sections, runtime=False, celery=False)
    try:
        m.start()
        yield m
    finally:
        m.close()


def spec(mesh: Mesh, name: str, profile: str) -> dict[str, Any]:
    return {
        "image": "local", "entrypoint": ["python", "-m", "agents.trainer.worker"],
        "args": ["--steps", "10", "--hidden", "256"], "workers": {"min": 2, "max": 2}, "gpus_per_worker": 1,
        "mig_profile": profile, "checkpoint_uri": f"file://{mesh.workdir}/ckpt-{name}", "max_runtime_s": 600,
    }  # fmt: skip


def post_job(mesh: Mesh, name: str, profile: str) -> httpx.Response:
    body = {"tenant": "ops", "name": name, "spec": spec(mesh, name, profile)}
    return httpx.post(f"{mesh.base}/api/v1/jobs/", json=body, headers={"Authorization": f"Bearer {mesh.token}"},
                      timeout=30)  # fmt: skip


def reported_slices(mesh: Mesh) -> dict[str, tuple[str, str]]:
    """Slice UUID -> (node, profile) as the portal has them from the agents' telemetry."""
    rows = mesh.db.query(
        "SELECT t.uuid, n.name, t.data->>'mig_profile' FROM fleet_gputelemetry t "
        "JOIN fleet_node n ON n.id = t.node_id WHERE coalesce(t.data->>'mig_profile', '') <> ''"
    )
    return {uuid: (node, profile) for uuid, node, profile in rows}


def test_a_mig_job_runs_on_slices_and_an_impossible_one_is_refused_at_submission(mesh: Mesh) -> None:
    slices = wait_for("the portal to know every node's slices", lambda: (s := reported_slices(mesh)) and len(s) == 6
                      and s, timeout=60)  # fmt: skip

    refused = post_job(mesh, "mig-too-big", "7g.80gb")
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "never_fits", error
    assert "needs 2 workers on MIG 7g.80gb slices, the enrolled fleet exposes 0" in error["message"], error
    assert "node-1 has H100 3g.40gb x2, H100 1g.10gb x1" in error["message"], error
    assert "node-2 has H100 2g.20gb x1, H100 1g.10gb x2" in error["message"], error
    assert not mesh.api("GET", "jobs/?name=mig-too-big")["results"]

    created = post_job(mesh, "mig-ok", "3g.40gb")
    assert created.status_code == 201, created.text
    jid = created.json()["id"]

    def finished() -> dict[str, Any] | None:
        job = mesh.api("GET", f"jobs/{jid}/")
        assert job["status"] not in ("failed", "cancelled"), job
        return job if job["status"] == "succeeded" else None

    try:
        done = wait_for("the MIG job to succeed", finished, timeout=180, every=0.5)
    except AssertionError as exc:  # say where it stuck: the scheduler's job state and the trainers' reports
        state = mesh.store_value("node-1", f"kv/training/jobs/{jid}")
        state = {k: state.get(k) for k in ("status", "reason")} if state else state
        reports = {n: mesh.store_value("node-1", f"kv/training/reports/{jid}/{n}") for n in LAYOUT}
        raise AssertionError(f"{exc}; scheduler state {state}; reports {reports}") from exc
    placed_on = [slices[u] for p in done["placements"] for u in p["gpu_uuids"]]
    assert placed_on == [("node-1", "3g.40gb"), ("node-1", "3g.40gb")], (done["placements"], slices)
    assert all(u.startswith("MIG-") for p in done["placements"] for u in p["gpu_uuids"])

    evs = mesh.api("GET", f"jobs/{jid}/events/?limit=200")["results"]
    placed = next(e for e in evs if e["kind"] == "agent.placed")
    assert {w["mig_profile"] for w in placed["data"]["workers"]} == {"3g.40gb"}
    assert placed["data"]["mig_fragmentation"] == {"node-1": 0.0}  # its one free slice is all its free compute

    # the fleet's fragmentation as the scheduler keeps it, and on the leader's metrics page
    mig = wait_for("the MIG report", lambda: mesh.store_value("node-1", "kv/training/mig"), timeout=10)
    assert mig["node-2"]["fragmentation"] == 0.5 and mig["node-2"]["largest_free"] == "2g.20gb", mig
    assert mig["node-2"]["slices"]["1g.10gb"] == {"free": 2, "total": 2} and "node-3" not in mig, mig
    pages = [httpx.get(f"http://127.0.0.1:{a.http_port}/metrics", timeout=5).text for a in mesh.agents.values()]
    leader = [p for p in pages if "infermesh_scheduler_mig_fragmentation{" in p]
    assert leader, "no agent exports the MIG gauges"
    assert 'infermesh_scheduler_mig_fragmentation{node="node-2"} 0.5' in leader[0]
    assert 'infermesh_scheduler_mig_slices{node="node-1",profile="3g.40gb",state="total"} 2.0' in leader[0]
