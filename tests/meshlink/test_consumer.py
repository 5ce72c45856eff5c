"""The agents' WebSocket in-process (real PostgreSQL and Redis channel layer): authentication, hello -> snapshot or
replay -> live changes -> acks, reports, and refusal of unknown agents, malformed and replayed frames."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from meshweb.asgi import application
from meshweb.fleet.models import NodeTelemetry
from meshweb.meshlink.models import NodeLink, OutboxEntry
from meshweb.meshlink.outbox import head
from meshweb.tenancy.services import SYSTEM, tenant_create
from meshweb.training.models import JobEvent, TrainingJob
from meshweb.training.services import job_submit
from tests.meshlink.asgi_ws import WebsocketCommunicator
from tests.meshlink.conftest import Fleet, build_fleet
from tests.meshweb.conftest import EXAMPLE_JOB

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    yield await sync_to_async(build_fleet)()
    # The consumer's database work ran on the thread-sensitive worker thread: give its connection back to the pool
    # so that the test database can be dropped at the end.
    await sync_to_async(connections.close_all)()


def communicator(credential: str | None) -> WebsocketCommunicator:
    headers = [(b"authorization", f"Bearer {credential}".encode())] if credential is not None else []
    return WebsocketCommunicator(application, "/ws/agent/", headers=headers)


async def recv(comm: WebsocketCommunicator, timeout: float = 10.0) -> dict[str, Any]:
    return json.loads(await comm.receive_from(timeout=timeout))


async def hello(comm: WebsocketCommunicator, node: str, applied: int, seq: int = 1) -> dict[str, Any]:
    await comm.send_to(json.dumps({"type": "hello", "seq": seq, "node": node, "applied_version": applied,
                                   "store": "file"}))  # fmt: skip
    return await recv(comm)


async def link(node: str) -> NodeLink:
    return await sync_to_async(NodeLink.objects.get)(node__name=node)


async def test_snapshot_then_live_changes_then_acks(fleet: Fleet) -> None:
    comm = communicator(fleet.credentials["node-1"])
    assert (await comm.connect())[0]
    welcome = await hello(comm, "node-1", 0)
    assert welcome["type"] == "welcome" and welcome["mode"] == "snapshot" and welcome["node"] == "node-1"
    snap = await recv(comm)
    assert snap["type"] == "snapshot" and snap["version"] == welcome["head"]
    keys = {e["key"] for e in snap["entries"]}
    assert {"nodes/node-1", "nodes/node-2", f"tenants/tenant-{fleet.tenant.pk}"} <= keys
    await comm.send_to(json.dumps({"type": "ack", "seq": 2, "version": snap["version"]}))

    tenant = await sync_to_async(tenant_create)(principal=SYSTEM, slug="globex")
    frame = await recv(comm)
    assert frame["type"] == "changes"
    assert [c["key"] for c in frame["changes"]] == [
        f"kv/portal/tenants/{tenant.pk}", f"kv/portal/quotas/{tenant.pk}", f"tenants/tenant-{tenant.pk}"
    ]  # fmt: skip
    assert [c["version"] for c in frame["changes"]] == [snap["version"] + 1, snap["version"] + 2, snap["version"] + 3]
    await comm.send_to(json.dumps({"type": "ack", "seq": 3, "version": frame["changes"][-1]["version"]}))
    await comm.send_to(json.dumps({"type": "heartbeat", "seq": 4, "sent_unix_ms": 1}))
    await comm.receive_nothing(timeout=0.5)
    row = await link("node-1")
    assert row.connected and row.acked_version == snap["version"] + 3 and row.store == "file"
    await comm.disconnect()
    assert not (await link("node-1")).connected


async def test_reconnecting_agent_gets_what_it_missed(fleet: Fleet) -> None:
    mark = (await sync_to_async(head)()).version
    await sync_to_async(tenant_create)(principal=SYSTEM, slug="initech")
    comm = communicator(fleet.credentials["node-2"])
    assert (await comm.connect())[0]
    welcome = await hello(comm, "node-2", mark)
    assert welcome["mode"] == "replay" and welcome["head"] == mark + 3
    frame = await recv(comm)
    assert [c["version"] for c in frame["changes"]] == [mark + 1, mark + 2, mark + 3]
    await comm.disconnect()

    comm = communicator(fleet.credentials["node-2"])
    assert (await comm.connect())[0]
    assert (await hello(comm, "node-2", mark + 3))["mode"] == "current"
    await comm.receive_nothing(timeout=0.5)
    await comm.disconnect()


@pytest.mark.parametrize("credential", [None, "", "im_abc", "imn_000000000000_nope"])
async def test_unauthenticated_or_unknown_agents_are_refused(fleet: Fleet, credential: str | None) -> None:
    comm = communicator(credential)
    connected, code = await comm.connect()
    assert not connected and code == 4401
    assert not await sync_to_async(NodeLink.objects.filter(connections__gt=0).exists)()


async def test_a_wrong_secret_or_a_revoked_credential_is_refused(fleet: Fleet) -> None:
    good = fleet.credentials["node-1"]
    comm = communicator(good[:-4] + "AAAA")
    assert (await comm.connect()) == (False, 4401)
    from meshweb.identity.credentials import node_credential_issue

    await sync_to_async(node_credential_issue)(principal=SYSTEM, node=fleet.nodes[0])  # rotates: the old one is revoked
    comm = communicator(good)
    assert (await comm.connect()) == (False, 4401)


async def test_hello_for_another_node_is_refused(fleet: Fleet) -> None:
    comm = communicator(fleet.credentials["node-1"])
    assert (await comm.connect())[0]
    err = await hello(comm, "node-2", 0)
    assert err == {"type": "error", "code": "wrong_node", "fatal": True,
                   "message": "node: credential is for 'node-1', hello names 'node-2'"}  # fmt: skip
    assert (await comm.receive_output(timeout=5))["code"] == 4403
    assert (await link("node-1")).connections == 0


async def test_malformed_frames_close_the_link_and_apply_nothing(fleet: Fleet) -> None:
    for frame, problem in [
        ("{not json", "frame is not JSON"),
        ('{"type": "ack", "seq": 1, "version": "many"}', "ack.version"),
        ('{"type": "telemetry", "seq": 1, "at_unix_ms": 1, "gpus": [{"uuid": "g", "index": 0, "temperature_c": 900}]}',
         "telemetry.gpus.0.temperature_c"),
    ]:  # fmt: skip
        comm = communicator(fleet.credentials["node-1"])
        assert (await comm.connect())[0]
        await comm.send_to(frame)
        err = await recv(comm)
        assert err["type"] == "error" and err["code"] == "malformed" and err["fatal"]
        assert problem in err["message"]
        assert (await comm.receive_output(timeout=5))["code"] == 4400
    assert not await sync_to_async(NodeTelemetry.objects.exists)()


async def test_frames_before_hello_are_refused(fleet: Fleet) -> None:
    comm = communicator(fleet.credentials["node-3"])
    assert (await comm.connect())[0]
    await comm.send_to(json.dumps({"type": "heartbeat", "seq": 1, "sent_unix_ms": 1}))
    err = await recv(comm)
    assert err["code"] == "no_hello" and err["message"] == "heartbeat before hello"


async def test_replayed_frames_and_bad_acks_are_refused(fleet: Fleet) -> None:
    comm = communicator(fleet.credentials["node-1"])
    assert (await comm.connect())[0]
    current = (await sync_to_async(head)()).version
    assert (await hello(comm, "node-1", current))["mode"] == "current"
    await comm.send_to(json.dumps({"type": "ack", "seq": 2, "version": current}))
    await comm.send_to(json.dumps({"type": "ack", "seq": 2, "version": current}))  # the same frame again
    err = await recv(comm)
    assert err["code"] == "replayed" and "seq 2 is not after 2" in err["message"] and not err["fatal"]
    await comm.send_to(json.dumps({"type": "hello", "seq": 3, "node": "node-1", "applied_version": 0,
                                   "store": "file"}))  # fmt: skip
    assert (await recv(comm))["message"] == "hello was already received on this connection"
    await comm.send_to(json.dumps({"type": "ack", "seq": 4, "version": current + 100}))
    err = await recv(comm)
    assert err["code"] == "bad_ack" and f"v{current + 100} was never sent" in err["message"]
    await comm.send_to(json.dumps({"type": "ack", "seq": 5, "version": current - 1}))
    assert (await recv(comm))["code"] == "replayed"
    row = await link("node-1")
    assert row.acked_version == current and row.refused == 4
    await comm.disconnect()


async def test_job_reports_from_agents(fleet: Fleet) -> None:
    job = (
        await sync_to_async(job_submit)(principal=SYSTEM, tenant=fleet.tenant, name="train", spec=EXAMPLE_JOB["spec"])
    ).job
    comm = communicator(fleet.credentials["node-2"])
    assert (await comm.connect())[0]
    current = (await sync_to_async(head)()).version
    await hello(comm, "node-2", current)
    await comm.send_to(json.dumps({"type": "job_status", "seq": 2, "job_id": job.pk, "status": "queued"}))
    await comm.send_to(json.dumps({"type": "job_event", "seq": 3, "job_id": job.pk, "kind": "placed",
                                   "message": "rank 0 on node-2", "data": {"rank": 0}}))  # fmt: skip
    frame = await recv(comm)  # the status change is itself pushed back to agents
    assert frame["type"] == "changes" and frame["changes"][0]["value"]["status"] == "queued"
    # A report further along is walked through the legal steps in between (queued -> placing -> running -> ...);
    # one that no legal step leads to is refused.
    await comm.send_to(json.dumps({"type": "job_status", "seq": 4, "job_id": job.pk, "status": "succeeded"}))
    await comm.send_to(json.dumps({"type": "job_status", "seq": 5, "job_id": job.pk, "status": "running"}))

    async def next_error() -> dict[str, Any]:
        while (frame := await recv(comm))["type"] != "error":
            assert frame["type"] == "changes"
        return frame

    err = await next_error()
    assert err["code"] == "job_report" and "cannot go from succeeded to running" in err["message"]
    await comm.send_to(json.dumps({"type": "job_status", "seq": 6, "job_id": 999999, "status": "running"}))
    assert (await next_error())["message"] == "job_id: no job 999999"
    await comm.disconnect()
    fresh = await sync_to_async(TrainingJob.objects.get)(pk=job.pk)
    assert fresh.status == "succeeded" and fresh.started_at is not None
    event = await sync_to_async(JobEvent.objects.filter(job=job, kind="agent.placed").get)()
    assert event.data == {"rank": 0, "node": "node-2"}
    # submitted, then queued, placing, running, succeeded: each pushed once
    assert await sync_to_async(OutboxEntry.objects.filter(key=f"kv/portal/jobs/{job.pk}").count)() == 5


async def test_a_hello_at_the_head_counts_as_delivered(fleet: Fleet) -> None:
    """An agent whose store got the changes through its Raft peers while its own link was down says so in its hello:
    the portal counts them as delivered (its outbox lag is 0, not the gap), never more than the outbox's head."""
    current = (await sync_to_async(head)()).version
    comm = communicator(fleet.credentials["node-2"])
    assert (await comm.connect())[0]
    welcome = await hello(comm, "node-2", current)
    assert welcome["mode"] == "current"
    await comm.receive_nothing(timeout=0.3)
    assert (await link("node-2")).acked_version == current
    await comm.disconnect()
    # ahead of the portal (a restored database): a snapshot, and nothing counted beyond what the portal holds
    comm = communicator(fleet.credentials["node-2"])
    assert (await comm.connect())[0]
    assert (await hello(comm, "node-2", current + 50))["mode"] == "snapshot"
    await recv(comm)
    assert (await link("node-2")).acked_version == current
    await comm.disconnect()
