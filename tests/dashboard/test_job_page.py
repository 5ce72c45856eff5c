"""A training job's dashboard page: status, placements, recent events and telemetry as the agents report them
(through the agent link's services), visible only to who may see the job, with a query count that does not grow
with the job's nodes, ranks, events or other jobs."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from agents.proto.portal_link import JobEvent, JobTelemetry
from meshweb.dashboard.job_telemetry import MAX_NODES, telemetry_view
from meshweb.dashboard.selectors import JOB_EVENT_LIMIT
from meshweb.fleet.models import Node
from meshweb.meshlink.services import job_event_record, job_telemetry_report
from meshweb.training.models import JobPlacement, TrainingJob
from tests.meshweb.conftest import World

pytestmark = pytest.mark.django_db
Login = Callable[..., Client]


def node_report(step: int, step_s: float, ranks: int = 1) -> dict[str, Any]:
    """One node's share of a scheduler roll-up, as agents/scheduler/component.py `rollup` writes it."""
    return {"status": "running", "step": step, "step_s": step_s, "mean_step_s": step_s, "allreduce_count": step * 4,
            "allreduce_s": step_s / 4, "allreduce_bytes": 25_000_000, "busbw_gbps": 42.5, "ranks": ranks}  # fmt: skip


def rollup(nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"generation": 1, "strategy": "ring", "nccl_algo": "Ring", "predicted_step_s": 0.25,
            "predicted_busbw_gbps": 40.0, "nodes": nodes}  # fmt: skip


def place(job: TrainingJob, workers: list[tuple[int, str]], at: float = 10.0) -> None:
    data = {"at": at, "generation": 1, "workers": [{"rank": r, "node": n, "gpu_uuids": [f"GPU-{n}-{r}"]}
                                                   for r, n in workers]}  # fmt: skip
    event = JobEvent.model_validate({"seq": 1, "job_id": job.pk, "kind": "placed", "message": "placed", "data": data})
    job_event_record(node=Node.objects.get(name=workers[0][1]), event=event)


def report(job: TrainingJob, nodes: dict[str, dict[str, Any]]) -> None:
    frame = JobTelemetry.model_validate({"seq": 1, "job_id": job.pk, "generation": 1, "data": rollup(nodes)})
    job_telemetry_report(node=Node.objects.get(name="node-1"), report=frame)


def page_telemetry(body: str) -> dict[str, Any]:
    found = re.search(r'<script id="job-telemetry-data" type="application/json">(.*?)</script>', body, re.S)
    assert found, "the page carries no telemetry data"
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def text(response: Any) -> str:
    return response.content.decode()


def test_page_shows_placements_events_and_the_latest_telemetry(login: Login, world: World) -> None:
    job = world.own.objects["job"]
    place(job, [(0, "node-1"), (1, "node-1"), (2, "node-acme")])
    report(job, {"node-1": node_report(10, 0.31, ranks=2), "node-acme": node_report(9, 0.29)})
    report(job, {"node-1": node_report(20, 0.30, ranks=2), "node-acme": node_report(19, 0.28)})

    response = login(tenant=world.own.tenant, role="tenant_admin").get(f"/dashboard/jobs/{job.pk}/")
    assert response.status_code == 200
    body = text(response)
    placements = body.split('id="job-placements"')[1].split("</table>")[0]
    assert re.findall(r'<tr data-rank="(\d+)"><td>\d+</td><td><a href="/dashboard/nodes/([\w-]+)/">', placements) == [
        ("0", "node-1"), ("1", "node-1"), ("2", "node-acme")
    ]  # fmt: skip
    assert "GPU-node-acme-2" in placements
    latest = body.split('id="job-telemetry-latest"')[1].split("</table>")[0]
    assert ('<tr data-node="node-1"><td>node-1</td><td>0, 1</td><td>running</td><td>20</td><td>0.3</td><td>0.3</td>'
            "<td>80</td><td>0.075</td><td>25000000</td><td>42.5</td></tr>") in latest  # fmt: skip
    assert "report 2 at" in body and "predicted step 0.2500 s, bus bandwidth 40.00 GB/s" in body
    assert 'id="job-telemetry-empty"' not in body
    assert "<td>agent.placed</td><td>placed</td>" in body.split('id="job-events"')[1]

    data = page_telemetry(body)
    assert (data["job"], data["reports"], data["generation"], data["strategy"]) == (job.pk, 2, 1, "ring")
    assert [(n["node"], n["placed_ranks"], n["step"], n["step_s"]) for n in data["nodes"]] == [
        ("node-1", [0, 1], 20, 0.30), ("node-acme", [2], 19, 0.28)
    ]  # fmt: skip
    # The live refresh re-renders the same state from the fragment.
    fragment = text(login(superuser=True).get(f"/dashboard/fragments/jobs/{job.pk}/"))
    assert page_telemetry(fragment) == data and 'id="job-charts"' in fragment and "hx-preserve" in fragment


def test_page_without_telemetry_says_so(login: Login, world: World) -> None:
    job = world.own.objects["job"]
    body = text(login(superuser=True).get(f"/dashboard/jobs/{job.pk}/"))
    assert 'id="job-telemetry-empty"' in body and 'id="job-telemetry-latest"' not in body
    data = page_telemetry(body)
    assert (data["reports"], data["at"], data["nodes"]) == (0, None, [])
    # The placement the world made by hand is listed all the same.
    row = '<tr data-rank="0"><td>0</td><td><a href="/dashboard/nodes/node-acme/">node-acme</a></td><td>GPU-x</td>'
    assert row in body


@pytest.mark.parametrize("path", ["/dashboard/jobs/{}/", "/dashboard/fragments/jobs/{}/"])
def test_another_tenants_job_is_a_404(login: Login, world: World, path: str) -> None:
    own, other = world.own.objects["job"], world.other.objects["job"]
    report(other, {"node-1": node_report(5, 0.5)})
    admin = login(tenant=world.own.tenant, role="tenant_admin")
    assert admin.get(path.format(own.pk)).status_code == 200
    refused = admin.get(path.format(other.pk))
    assert refused.status_code == 404 and "globex" not in text(refused) and "job-telemetry-data" not in text(refused)
    # A platform admin sees every tenant's job.
    assert page_telemetry(text(login(superuser=True).get(path.format(other.pk))))["reports"] == 1
    # Members and viewers have no dashboard at all, even for their own tenant's job.
    for role in ("member", "viewer"):
        assert login(tenant=world.own.tenant, role=role).get(path.format(own.pk)).status_code == 403
    anonymous = Client().get(path.format(own.pk))
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/dashboard/login/?next=")


@pytest.mark.parametrize(
    "path", ["/dashboard/jobs/0/", "/dashboard/jobs/abc/", "/dashboard/jobs/-1/", "/dashboard/jobs/1.5/",
             "/dashboard/jobs/99999999999999999999/", "/dashboard/fragments/jobs/0/",
             "/dashboard/fragments/jobs/99999999999999999999/"],
)  # fmt: skip
def test_bad_job_ids_are_404(login: Login, world: World, path: str) -> None:
    assert login(superuser=True).get(path).status_code == 404


def test_unknown_job_id_is_404(login: Login, world: World) -> None:
    missing = max(TrainingJob.objects.values_list("pk", flat=True)) + 1000
    response = login(superuser=True).get(f"/dashboard/jobs/{missing}/")
    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/dashboard/jobs/{}/", "/dashboard/fragments/jobs/{}/"])
def test_queries_do_not_grow_with_nodes_ranks_events_or_other_jobs(
    login: Login, world: World, path: str, django_assert_max_num_queries: Any
) -> None:
    job = world.own.objects["job"]
    place(job, [(0, "node-1")])
    report(job, {"node-1": node_report(1, 0.3)})
    client = login(superuser=True)
    url = path.format(job.pk)
    client.get(url)  # warm the session and the user
    with CaptureQueriesContext(connection) as small:
        assert client.get(url).status_code == 200

    # 64 nodes with 4 ranks each, a roll-up naming all of them, many more events, other jobs with telemetry.
    names = [f"gpu-{i:02d}" for i in range(64)]
    Node.objects.bulk_create([Node(name=n, address="10.1.0.1:7070", zone=world.zone, roles=["gpu"]) for n in names])
    place(job, [(rank, names[rank // 4]) for rank in range(256)], at=20.0)
    for i in range(JOB_EVENT_LIMIT + 30):
        event = JobEvent.model_validate({"seq": 1, "job_id": job.pk, "kind": "checkpoint", "message": f"ckpt {i}",
                                         "data": {"at": 100.0 + i}})  # fmt: skip
        job_event_record(node=world.node, event=event)
    for _ in range(3):
        report(job, {n: node_report(50, 0.3, ranks=4) for n in names})
    report(world.other.objects["job"], {n: node_report(7, 0.4) for n in names})
    assert JobPlacement.objects.filter(job=job).count() == 256

    with django_assert_max_num_queries(len(small)):
        response = client.get(url)
    body = text(response)
    assert len(page_telemetry(body)["nodes"]) == 64 and body.count('<tr data-rank="') == 256
    # Only the latest events, oldest of them first.
    events = body.split('id="job-events"')[1]
    assert events.count("<tr><td>") == JOB_EVENT_LIMIT and f"(latest {JOB_EVENT_LIMIT})" in body
    assert events.index(f"ckpt {JOB_EVENT_LIMIT + 29}") > events.index("ckpt 30") and "ckpt 29<" not in events


def test_damaged_rollups_are_reduced_to_checked_fields() -> None:
    nodes: dict[Any, Any] = {f"n{i:03d}": {"step": i} for i in range(MAX_NODES + 3)}
    nodes["n000"] = {"step": "7", "step_s": math.nan, "busbw_gbps": True, "ranks": 2.0, "status": "x" * 100,
                     "allreduce_s": -0.5, "extra": {"ignored": 1}}  # fmt: skip
    nodes["broken"] = ["not", "a", "node"]
    view = telemetry_view(job_id=3, at=None, reports=1, data={"generation": "1", "predicted_step_s": math.inf,
                                                             "strategy": 5, "nodes": nodes})  # fmt: skip
    assert (view["generation"], view["predicted_step_s"], view["strategy"]) == (None, None, "")
    assert len(view["nodes"]) == MAX_NODES and view["nodes_left_out"] == 3
    first = view["nodes"][0]
    assert first == {"node": "n000", "status": "x" * 32, "placed_ranks": [], "step": None, "ranks": 2,
                     "allreduce_count": None, "allreduce_bytes": None, "step_s": None, "mean_step_s": None,
                     "allreduce_s": -0.5, "busbw_gbps": None}  # fmt: skip
    assert telemetry_view(job_id=3, at=None, reports=0, data="not an object")["nodes"] == []
    # Figures are shown (and charted) to six significant digits; counts stay exact.
    exact = {"nodes": {"a": {"step_s": 0.10333333333333333, "busbw_gbps": 123.4567891, "allreduce_bytes": 102760448}}}
    entry = telemetry_view(job_id=3, at=None, reports=1, data=exact)["nodes"][0]
    assert (entry["step_s"], entry["busbw_gbps"], entry["allreduce_bytes"]) == (0.103333, 123.457, 102760448)
