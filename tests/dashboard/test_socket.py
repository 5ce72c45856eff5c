"""The dashboard socket: refused without a session, without dashboard access or from another origin; sends each
viewer only the audit entries and events of tenants it may see."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.test import Client, override_settings

from meshweb.dashboard.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED, DashboardConsumer
from meshweb.dashboard.routing import websocket_urlpatterns
from meshweb.fleet.models import Node
from meshweb.fleet.services import node_cordon
from meshweb.tenancy.rbac import principal_for_user
from meshweb.tenancy.services import SYSTEM, membership_set
from meshweb.training.services import job_cancel
from tests.meshweb.conftest import World

# In-memory layer: these tests talk to one process, and other suites on the shared Redis publish to "dashboard" too
# (the browser tests cover the Redis layer end to end). A long poll: only doorbells may deliver here.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("in_memory_layer"),
]


@pytest.fixture
def in_memory_layer() -> Any:
    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=layers, DASHBOARD_POLL_S=600):
        from channels.layers import channel_layers

        channel_layers.backends.clear()
        yield
        channel_layers.backends.clear()


class Socket(ApplicationCommunicator):  # type: ignore[misc]
    """A WebSocket client speaking ASGI to the app in-process (channels.testing needs daphne; this does not)."""

    def __init__(self, app: Any, user: Any, headers: list[tuple[bytes, bytes]], session: Any = None) -> None:
        scope = {
            "type": "websocket",
            "path": "/ws/dashboard/",
            "query_string": b"",
            "headers": headers,
            "subprotocols": [],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        if user is not None:
            scope["user"] = user
        if session is not None:
            scope["session"] = session
        super().__init__(app, scope)

    async def connect(self, timeout: float = 10) -> tuple[bool, int | None]:
        await self.send_input({"type": "websocket.connect"})
        response = await self.receive_output(timeout)
        if response["type"] == "websocket.close":
            return False, response.get("code")
        assert response["type"] == "websocket.accept", response
        return True, None

    async def receive_json_from(self, timeout: float = 10) -> Any:
        response = await self.receive_output(timeout)
        assert response["type"] == "websocket.send", response
        return json.loads(response["text"])

    async def disconnect(self) -> None:
        await self.send_input({"type": "websocket.disconnect", "code": 1000})
        await self.wait(2)


def communicator(user: Any, origin: str | None = None) -> Socket:
    headers = [(b"origin", origin.encode())] if origin else []
    return Socket(DashboardConsumer.as_asgi(), user, headers)


def make_user(name: str, *, superuser: bool = False, tenant: Any = None, role: str = "") -> Any:
    users = get_user_model().objects
    user = users.create_superuser(name, password="pw-123456789") if superuser else users.create_user(name)
    if tenant is not None:
        membership_set(principal=SYSTEM, tenant=tenant, user=user, role=role)
    return user


async def receive_until(comm: Socket, predicate: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await comm.receive_json_from(timeout=timeout)
            seen.append(message)
            if predicate(message):
                return seen


async def test_anonymous_socket_is_refused() -> None:
    comm = communicator(AnonymousUser())
    connected, code = await comm.connect()
    assert (connected, code) == (False, CLOSE_UNAUTHENTICATED)


async def test_member_without_dashboard_access_is_refused(world: World) -> None:
    user = await database_sync_to_async(make_user)("m1", tenant=world.own.tenant, role="member")
    connected, code = await communicator(user).connect()
    assert (connected, code) == (False, CLOSE_FORBIDDEN)


async def test_socket_from_another_origin_is_refused_before_the_consumer(world: World) -> None:
    """The full route (origin check, cookies, session, auth) with a signed-in platform admin's session cookie."""

    def session_cookie() -> str:
        client = Client()
        client.force_login(make_user("root", superuser=True))
        return str(client.cookies["sessionid"].value)

    cookie = await database_sync_to_async(session_cookie)()
    app = websocket_urlpatterns[0].callback
    for origin, expected in [("http://evil.example", False), ("http://127.0.0.1:8000", True)]:
        headers = [(b"origin", origin.encode()), (b"cookie", f"sessionid={cookie}".encode())]
        comm = Socket(app, None, headers)
        connected, _ = await comm.connect()
        assert connected is expected, origin
        if connected:
            assert (await comm.receive_json_from())["principal"] == "user:root"
        await comm.disconnect()


async def test_platform_admin_gets_node_changes_by_doorbell(world: World) -> None:
    user = await database_sync_to_async(make_user)("root", superuser=True)
    comm = communicator(user)
    connected, _ = await comm.connect()
    assert connected
    hello = await comm.receive_json_from()
    assert hello["kind"] == "hello" and hello["principal"] == "user:root"

    await database_sync_to_async(node_cordon)(principal=SYSTEM, node=world.node, reason="firmware update")
    seen = await receive_until(comm, lambda m: m.get("kind") == "audit")
    item = seen[-1]
    assert {k: item[k] for k in ("action", "object_type", "node", "status", "reason", "actor", "tenant")} == {
        "action": "node.cordoned",
        "object_type": "fleet.node",
        "node": "node-1",
        "status": "cordoned",
        "reason": "firmware update",
        "actor": "system",
        "tenant": None,
    }
    assert item["summary"] == "node node-1: active → cordoned (firmware update)"
    await comm.disconnect()


async def test_tenant_admin_sees_only_its_tenant(world: World) -> None:
    user = await database_sync_to_async(make_user)("ta", tenant=world.own.tenant, role="tenant_admin")
    principal = await database_sync_to_async(principal_for_user)(user)
    comm = communicator(user)
    connected, _ = await comm.connect()
    assert connected
    await comm.receive_json_from()  # hello

    # Another tenant's change and event come first; the viewer's own tenant's change after them.
    other_job, own_job = world.other.objects["job"], world.own.objects["job"]
    await database_sync_to_async(job_cancel)(principal=SYSTEM, job=other_job, reason="theirs")
    layer = get_channel_layer()
    other_event = {"kind": "job.event", "data": {"job": other_job.pk}, "tenant_id": world.other.tenant.pk}
    await layer.group_send("dashboard", {"type": "dashboard.event", "payload": other_event})
    own_event = {"kind": "job.event", "data": {"job": own_job.pk, "message": "mine"}, "tenant_id": world.own.tenant.pk}
    await layer.group_send("dashboard", {"type": "dashboard.event", "payload": own_event})
    await database_sync_to_async(job_cancel)(principal=SYSTEM, job=own_job, reason="ours")
    seen: list[dict[str, Any]] = []

    def both_arrived(message: dict[str, Any]) -> bool:
        # Messages are handled in order, so once the own event is in, the other tenant's event was already handled.
        seen.append(message)
        own_audit = any(m.get("kind") == "audit" and m.get("job") == str(own_job.pk) for m in seen)
        return own_audit and own_event in seen

    await receive_until(comm, both_arrived)

    assert own_event in seen and other_event not in seen
    audit = [m for m in seen if m["kind"] == "audit"]
    assert {m["tenant"] for m in audit} == {"acme"}, audit
    assert audit[-1]["status"] == "cancelled" and audit[-1]["action"] == "job.cancelled"
    assert principal.tenants_with("viewer") == [world.own.tenant.pk]
    await comm.disconnect()


async def test_poll_delivers_when_no_doorbell_rang(world: World) -> None:
    """A change written where no doorbell reaches this socket (another process on the in-memory layer)."""
    user = await database_sync_to_async(make_user)("root", superuser=True)
    with override_settings(DASHBOARD_POLL_S=0.2):
        comm = communicator(user)
        connected, _ = await comm.connect()
        assert connected
        await comm.receive_json_from()  # hello
        await database_sync_to_async(Node.objects.filter(pk=world.node.pk).update)(status_reason="ignored")

        def write_without_doorbell() -> None:
            from unittest import mock

            with mock.patch("meshweb.core.doorbell._send_now"):
                node_cordon(principal=SYSTEM, node=world.node, reason="quiet change")

        await database_sync_to_async(write_without_doorbell)()
        seen = await receive_until(comm, lambda m: m.get("kind") == "audit")
        assert seen[-1]["reason"] == "quiet change"
        await comm.disconnect()
