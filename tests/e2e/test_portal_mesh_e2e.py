"""The portal and three agents as real processes: the portal under uvicorn on PostgreSQL with a Redis channel layer of
its own, a Celery worker and the one beat, agents forming a Raft group. Changes made through the REST API reach every
agent's Raft store, survive a Redis outage and an agent crash, and an emulated GPU fault quarantines its node within
a beat period, makes its targets unroutable, and is released after the cool-down."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.e2e.mesh import Mesh, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("mesh"))
    try:
        m.start()
        yield m
    finally:
        m.close()


def quota_everywhere(mesh: Mesh, tenant_id: int, requests_per_s: float, timeout: float = 20.0) -> None:
    def seen() -> bool:
        for name in mesh.names:
            value = mesh.store_value(name, f"tenants/tenant-{tenant_id}")  # the access record routers enforce
            if value is None or value["limits"].get("requests_per_s") != requests_per_s:
                return False
        return True

    wait_for(f"quota {requests_per_s} on every agent", seen, timeout=timeout)


def test_a_rest_change_reaches_every_agents_raft_store(mesh: Mesh) -> None:
    tenant = mesh.api("POST", "tenants/", {"slug": "globex", "name": "Globex"})
    quota = mesh.api("GET", "quotas/?tenant__slug=globex")["results"][0]
    started = time.monotonic()
    mesh.api("PATCH", f"quotas/{quota['id']}/", {"requests_per_s": 42.0})
    quota_everywhere(mesh, tenant["id"], 42.0)
    assert time.monotonic() - started < 20
    for name in mesh.names:
        assert mesh.store_value(name, f"kv/portal/tenants/{tenant['id']}") == {
            "id": tenant["id"], "slug": "globex", "name": "Globex", "active": True
        }  # fmt: skip
    # Every agent acknowledged the head version.
    head = mesh.head()
    wait_for("acks", lambda: {r[0] for r in mesh.db.query("SELECT acked_version FROM meshlink_nodelink")} == {head})


def test_changes_made_while_redis_is_down_arrive_once(mesh: Mesh) -> None:
    tenant = mesh.api("POST", "tenants/", {"slug": "initech", "name": "Initech"})
    quota = mesh.api("GET", "quotas/?tenant__slug=initech")["results"][0]
    quota_everywhere(mesh, tenant["id"], 100.0)
    key = f"tenants/tenant-{tenant['id']}"
    before = {name: mesh.store_get(name, key)[0].version for name in mesh.names}

    mesh.redis.stop()
    try:
        for rps in (1.0, 2.0, 3.0, 4.0, 5.0):
            mesh.api("PATCH", f"quotas/{quota['id']}/", {"requests_per_s": rps})
        # The doorbell cannot ring; the consumers' polling still delivers (later, never lost).
        quota_everywhere(mesh, tenant["id"], 5.0, timeout=30)
    finally:
        mesh.redis.start()
    mesh.api("PATCH", f"quotas/{quota['id']}/", {"requests_per_s": 6.0})
    quota_everywhere(mesh, tenant["id"], 6.0)
    # Six writes, each applied exactly once through Raft (the key's version counts its puts) on every member.
    for name in mesh.names:
        kv = mesh.store_get(name, key)[0]
        assert kv.version == before[name] + 6, (name, kv)
    assert "outbox doorbell" in mesh.log("portal")


def test_a_killed_agent_catches_up_after_restart(mesh: Mesh) -> None:
    tenant = mesh.api("POST", "tenants/", {"slug": "umbrella", "name": "Umbrella"})
    quota = mesh.api("GET", "quotas/?tenant__slug=umbrella")["results"][0]
    quota_everywhere(mesh, tenant["id"], 100.0)
    mesh.kill_agent("node-2")
    connections = mesh.db.query("SELECT l.connections FROM meshlink_nodelink l JOIN fleet_node n ON n.id = l.node_id "
                                "WHERE n.name = 'node-2'")[0][0]  # fmt: skip
    mesh.api("PATCH", f"quotas/{quota['id']}/", {"requests_per_s": 7.0})
    mesh.api("POST", "tenants/", {"slug": "cyberdyne", "name": "Cyberdyne"})
    head = mesh.head()
    mesh.start_agent("node-2")
    quota_everywhere(mesh, tenant["id"], 7.0)
    wait_for("node-2 applied the head", lambda: mesh.applied_version("node-2") >= head)
    wait_for(
        "node-2 reconnected and acked the head",
        lambda: mesh.db.query(
            "SELECT l.connections, l.acked_version, l.connected FROM meshlink_nodelink l "
            "JOIN fleet_node n ON n.id = l.node_id WHERE n.name = 'node-2'"
        )[0]
        >= (connections + 1, head, True),
    )
    assert mesh.store_get("node-2", "kv/portal/tenants/", prefix=True)


def _routable(mesh: Mesh, name: str) -> list[bool]:
    return [t.routable for t in mesh.targets(name)]


def test_a_gpu_fault_quarantines_the_node_and_the_cooldown_releases_it(mesh: Mesh) -> None:
    name = "node-3"
    wait_for("node-3's runtime target is routable", lambda: _routable(mesh, name) == [True])
    period = float(mesh.env["INFERMESH_QUARANTINE_PERIOD_S"])
    mesh.kill_agent(name, signal.SIGTERM)
    mesh.start_agent(name, faults=["ecc@0"])  # an uncorrectable ECC error on GPU 0, as NVML would report it
    faulted = time.monotonic()

    def status() -> str:
        return str(mesh.db.query("SELECT status FROM fleet_node WHERE name = %s", name)[0][0])

    wait_for("node-3 quarantined", lambda: status() == "quarantined", timeout=30)
    # Within a beat period of the first faulty report (plus the time the agent takes to report it).
    assert time.monotonic() - faulted < period + 15
    reason, evidence = mesh.db.query(
        "SELECT q.reason, q.evidence FROM fleet_nodequarantine q JOIN fleet_node n ON n.id = q.node_id "
        "WHERE n.name = %s AND q.released_at IS NULL", name
    )[0]  # fmt: skip
    assert "uncorrectable ECC errors" in reason and evidence[0]["rule"] == "ecc"

    # Pushed to every agent's store; the node's own agent makes its targets unroutable (routers skip it).
    def node_status_in(member: str) -> str:
        return str((mesh.store_value(member, f"nodes/{name}") or {}).get("status"))

    for member in mesh.names:
        wait_for(f"quarantine in {member}'s store", lambda m=member: node_status_in(m) == "quarantine")  # type: ignore[misc]
    wait_for("node-3's targets unroutable", lambda: _routable(mesh, name) == [False])

    # The driver is reloaded (agent restart without the fault): healthy again, released after the cool-down.
    last_fault = time.monotonic()  # the faulty agent reports until it stops
    mesh.kill_agent(name, signal.SIGTERM)
    mesh.start_agent(name)
    wait_for("node-3 released", lambda: status() == "active", timeout=45)
    assert time.monotonic() - last_fault >= float(mesh.env["INFERMESH_QUARANTINE_COOLDOWN_S"])
    wait_for("release in the store", lambda: node_status_in("node-1") == "active")
    wait_for("node-3's targets routable again", lambda: _routable(mesh, name) == [True])
    events = [r[0] for r in mesh.db.query(
        "SELECT e.kind FROM fleet_nodeevent e JOIN fleet_node n ON n.id = e.node_id WHERE n.name = %s ORDER BY e.id",
        name)]  # fmt: skip
    assert events[-2:] == ["quarantined", "released"]


def test_bad_agents_are_refused_and_logged(mesh: Mesh) -> None:
    url = f"ws://127.0.0.1:{mesh.port}/ws/agent/"
    for headers in ({}, {"Authorization": "Bearer imn_000000000000_forged"}, {"Authorization": "Basic eDp5"}):
        with pytest.raises(InvalidStatus) as err:
            connect(url, additional_headers=headers, open_timeout=10).close()
        assert err.value.response.status_code == 403
    head = mesh.head()
    with connect(url, additional_headers={"Authorization": f"Bearer {mesh.credentials['node-1']}"}) as ws:
        ws.send(json.dumps({"type": "hello", "seq": 1, "node": "node-1", "applied_version": head, "store": "file"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        ws.send(json.dumps({"type": "ack", "seq": 1, "version": head}))  # replayed sequence number
        assert json.loads(ws.recv(timeout=10))["code"] == "replayed"
        ws.send(json.dumps({"type": "job_status", "seq": 2, "job_id": 1, "status": "exploded"}))
        err = json.loads(ws.recv(timeout=10))
        assert err["code"] == "malformed" and "job_status.status" in err["message"]
    log = mesh.log("portal")
    assert "agent refused from 127.0.0.1" in log and "unknown node credential 000000000000" in log
    assert "frame refused (replayed)" in log and "frame refused (malformed)" in log
    # Nothing was applied: the outbox did not move and the real agent of node-1 is still linked.
    assert mesh.head() == head


def test_exactly_one_beat(mesh: Mesh, tmp_path: Path) -> None:
    second = mesh.run("beat", timeout=60)
    assert second.returncode == 2  # like a taken port
    assert "another beat holds the lock" in second.stderr
    assert "fleet.quarantine_checks" in mesh.log("beat") or "Scheduler: Sending" in mesh.log("beat")
