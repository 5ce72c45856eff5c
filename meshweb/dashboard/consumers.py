"""The browser's live socket at /ws/dashboard/: session-authenticated, origin-checked, read-only.

Messages of type "dashboard.event" on the Channels group "dashboard" are doorbells. An audit doorbell makes the
socket read the audit entries it has not sent yet (restricted to the viewer); other kinds are forwarded when the
viewer may see them. A poll does the same read every few seconds, so updates still arrive when a doorbell is lost
or rung in another process on the in-memory layer. Each poll also re-reads who the viewer is from the session: a
socket outlives neither its session (logout) nor the viewer's dashboard rights (membership removed or lowered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from importlib import import_module
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest

from meshweb.core.doorbell import GROUP
from meshweb.dashboard import selectors
from meshweb.dashboard.access import may_use_dashboard, visible_tenant_ids
from meshweb.tenancy.rbac import Principal, principal_for_user

log = logging.getLogger(__name__)

# WebSocket close codes in the application range: the browser shows them, so they say why.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


class DashboardConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    principal: Principal
    last_id: int
    poller: asyncio.Task[None] | None = None
    route_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        principal = await database_sync_to_async(principal_for_user)(self.scope.get("user"))
        if not await self._admit(principal, "dashboard socket refused"):
            return
        self.principal = principal
        self.last_id = await database_sync_to_async(selectors.last_audit_id)(principal)
        self.lock = asyncio.Lock()
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()
        await self.send_json({"kind": "hello", "principal": principal.name, "last_id": self.last_id})
        self.poller = asyncio.create_task(self._poll())

    async def _admit(self, principal: Principal, event: str) -> bool:
        """Whether `principal` may hold the socket; if not, log why and close it with a code that says why."""
        if principal.is_authenticated and may_use_dashboard(principal):
            return True
        reason = "unauthenticated" if not principal.is_authenticated else "forbidden"
        client = str(self.scope.get("client"))
        log.warning(event, extra={"reason": reason, "principal": principal.name, "client": client})
        await self.close(code=CLOSE_UNAUTHENTICATED if not principal.is_authenticated else CLOSE_FORBIDDEN)
        return False

    def _current_principal(self) -> Principal:
        """The viewer as of now: the session read afresh (the scope's copy is cached at connect), its user and
        memberships reloaded. A scope without a session (an in-process client) keeps its user, memberships reloaded."""
        session = self.scope.get("session")
        user = self.scope.get("user")
        if session is not None:
            user = AnonymousUser()
            if session.session_key:
                request = HttpRequest()
                request.session = import_module(settings.SESSION_ENGINE).SessionStore(session.session_key)
                # Django's get_user also checks the session's password hash and that the user is still active.
                user = auth.get_user(request)
        return principal_for_user(user)

    async def disconnect(self, code: int) -> None:
        if self.route_task is not None:
            self.route_task.cancel()
        if self.poller is not None:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller
        if hasattr(self, "principal"):
            await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The socket is read-only: writes go through the forms and the REST API, where they are checked and audited.
        if isinstance(content, dict) and content.get("kind") == "ping":
            await self.send_json({"kind": "pong"})
        elif isinstance(content, dict) and content.get("kind") == "route.watch":
            await self._watch_route(content.get("model_id"))

    async def _watch_route(self, model_id: Any) -> None:
        """Stream the router's report of one model the viewer may see (the routing page), one at a time."""
        from meshweb.dashboard.route_feed import INTERVAL_S, RouteRates, fetch
        from meshweb.dashboard.route_views import visible_model

        if not isinstance(model_id, int) or isinstance(model_id, bool):
            return
        model = await database_sync_to_async(visible_model)(self.principal, model_id)
        if model is None:
            await self.send_json({"kind": "route", "model_id": model_id, "data": {"error": "no such model"}})
            return
        if self.route_task is not None:
            self.route_task.cancel()
        rates = RouteRates()

        async def stream() -> None:
            while True:
                report = rates.enrich(await asyncio.to_thread(fetch, model.name, model.tenant.slug))
                await self.send_json({"kind": "route", "model_id": model_id, "data": report})
                await asyncio.sleep(INTERVAL_S)

        self.route_task = asyncio.create_task(stream())

    async def dashboard_event(self, message: dict[str, Any]) -> None:
        payload = message.get("payload")
        if not isinstance(payload, dict):
            payload = {k: v for k, v in message.items() if k != "type"}
        if payload.get("kind") == "audit":
            await self._catch_up()
            return
        if self._may_see(payload):
            await self.send_json(payload)
        # Any change may also have left audit entries behind.
        await self._catch_up()

    def _may_see(self, payload: dict[str, Any]) -> bool:
        allowed = visible_tenant_ids(self.principal)
        if allowed is None:
            return True
        tenant = payload.get("tenant_id")
        return tenant is None or tenant in allowed

    async def _catch_up(self) -> None:
        async with self.lock:
            entries = await database_sync_to_async(self._unseen)()
            for item in entries:
                await self.send_json(item)

    def _unseen(self) -> list[dict[str, Any]]:
        entries = selectors.audit_after(self.principal, self.last_id)
        if entries:
            self.last_id = entries[-1].pk
        return [selectors.feed_item(e) for e in entries]

    async def _poll(self) -> None:
        interval = float(getattr(settings, "DASHBOARD_POLL_S", 3.0))
        while True:
            await asyncio.sleep(interval)
            try:
                principal = await database_sync_to_async(self._current_principal)()
                if not await self._admit(principal, "dashboard socket closed"):
                    return
                self.principal = principal
                await self._catch_up()
            except Exception:  # a failed read (database restarting) is retried next round
                log.exception("dashboard socket poll failed")
