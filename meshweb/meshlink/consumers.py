"""The agents' WebSocket (/ws/agent/): authenticate the node (credential, and the client certificate on the mesh
listener), hello -> replay or snapshot -> live changes -> acks, and take heartbeats, telemetry, job reports and
refused-call reports. Parsing and sequencing only; services.py holds the rules."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from agents.proto.portal_link import (
    Ack,
    CallRefusals,
    Changes,
    Error,
    Heartbeat,
    Hello,
    JobEvent,
    JobStatus,
    JobTelemetry,
    ProtocolError,
    Snapshot,
    Telemetry,
    Welcome,
    dump,
    parse_agent_message,
)
from meshweb.audit.refusals import bearer_refused
from meshweb.fleet.models import Node
from meshweb.identity.credentials import node_authenticate
from meshweb.meshlink import services
from meshweb.meshlink.outbox import AGENTS_GROUP

log = logging.getLogger("meshweb.meshlink")

# Close codes (4000-4999 are the application's): the agent logs them and, except for auth, reconnects.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_WRONG_NODE = 4403
CLOSE_MALFORMED = 4400
CLOSE_CERTIFICATE = {services.CERTIFICATE_REFUSED: 4495, services.CERTIFICATE_REQUIRED: 4496}


def _close_reason(text: str) -> str:
    # A close frame carries at most 123 bytes of reason; the error frame before it has the whole message.
    return text.encode()[:123].decode(errors="ignore")


def client_cert_chain(scope: dict[str, Any]) -> list[str]:
    """PEM certificates the peer presented, from the ASGI TLS extension (meshweb/meshlink/listener.py puts it there
    on the mesh listener; there is none on the plain one)."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    return [str(pem) for pem in tls.get("client_cert_chain") or []]


def _bearer(scope: dict[str, Any]) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, cred = value.decode("latin-1").partition(" ")
            return cred.strip() if scheme.lower() == "bearer" else ""
    return ""


class AgentConsumer(AsyncWebsocketConsumer):
    # Not the default layer: the doorbell is received by a task of our own (_doorbell_loop) that survives a channel
    # layer outage, where Channels' built-in receive loop would end the connection.
    channel_layer_alias = "meshlink-doorbell-task"

    node: Node | None = None

    async def connect(self) -> None:
        self.node = None
        self.closing = False
        self.last_seq = 0
        self.hello: Hello | None = None
        self.sent_version = 0
        self.acked_version = 0
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.send_lock = asyncio.Lock()
        peer = self.scope.get("client") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        self.credential = _bearer(self.scope)
        self.chain = client_cert_chain(self.scope)
        self.recheck_at = time.monotonic() + settings.INFERMESH_MESH_LINK_RECHECK_S
        node, why = await database_sync_to_async(node_authenticate)(self.credential)
        if node is None:
            log.warning("agent refused from %s: %s", self.peer, why, extra={"peer": self.peer, "reason": why})
            await database_sync_to_async(bearer_refused)(scheme="node_credential", reason=why, peer=self.peer)
            await self.close(code=CLOSE_UNAUTHENTICATED)  # before accept: the handshake is answered 403
            return
        refusal = await database_sync_to_async(services.link_certificate_check)(node=node, chain=self.chain)
        if refusal is not None:
            await database_sync_to_async(services.link_refusal_record)(node=node, refusal=refusal, peer=self.peer)
            log.warning(
                "agent %s refused from %s: %s", node.name, self.peer, refusal.reason,
                extra={"node": node.name, "peer": self.peer, "reason": refusal.reason},
            )  # fmt: skip
            # Accepted only to say why: the agent logs the error frame, and frames it sent meanwhile are dropped.
            await self.accept()
            await self._send(Error(code=refusal.code, message=refusal.reason, fatal=True))
            await self.close(code=CLOSE_CERTIFICATE[refusal.code], reason=_close_reason(refusal.reason))
            return
        self.node = node
        await database_sync_to_async(services.link_opened)(node=node)
        await self.accept()
        log.info("agent %s connected from %s", node.name, self.peer, extra={"node": node.name})

    async def disconnect(self, code: int) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.node is not None and self.hello is not None:
            await database_sync_to_async(services.link_closed)(node=self.node)
            log.info("agent %s disconnected (code %s)", self.node.name, code, extra={"node": self.node.name})

    # -- frames from the agent -----------------------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.node is None or self.closing:
            return  # a refused link, closing
        raw = text_data if text_data is not None else (bytes_data or b"")
        try:
            msg = parse_agent_message(raw)
        except ProtocolError as exc:
            await self._refuse("malformed", str(exc), close=CLOSE_MALFORMED)
            return
        if msg.seq <= self.last_seq:
            await self._refuse("replayed", f"seq {msg.seq} is not after {self.last_seq} (replayed or reordered frame)")
            return
        self.last_seq = msg.seq
        if isinstance(msg, Hello):
            await self._on_hello(msg)
            return
        if self.hello is None:
            await self._refuse("no_hello", f"{msg.type} before hello", close=CLOSE_MALFORMED)
            return
        try:
            if isinstance(msg, Ack):
                await self._on_ack(msg)
            elif isinstance(msg, Heartbeat):
                await database_sync_to_async(services.heartbeat_record)(node=self.node)
                await self._recheck()
            elif isinstance(msg, Telemetry):
                await database_sync_to_async(services.telemetry_record)(node=self.node, telemetry=msg)
            elif isinstance(msg, JobStatus):
                await database_sync_to_async(services.job_status_report)(node=self.node, report=msg)
            elif isinstance(msg, JobEvent):
                await database_sync_to_async(services.job_event_record)(node=self.node, event=msg)
            elif isinstance(msg, JobTelemetry):
                await database_sync_to_async(services.job_telemetry_report)(node=self.node, report=msg)
            elif isinstance(msg, CallRefusals):
                await database_sync_to_async(services.call_refusals_record)(node=self.node, report=msg)
        except services.JobReportError as exc:
            await self._refuse("job_report", str(exc))

    async def _recheck(self) -> None:
        """Every INFERMESH_MESH_LINK_RECHECK_S (on a heartbeat): end the link if its credential or certificate has
        been revoked, or the certificate has expired, since it connected."""
        if self.node is None or time.monotonic() < self.recheck_at:
            return
        self.recheck_at = time.monotonic() + settings.INFERMESH_MESH_LINK_RECHECK_S
        refusal = await database_sync_to_async(services.link_recheck)(
            node=self.node, credential=self.credential, chain=self.chain
        )
        if refusal is None:
            return
        node = self.node
        self.closing = True  # frames still in flight are dropped, and no more changes are pushed
        for task in self.tasks:
            task.cancel()
        await database_sync_to_async(services.link_refusal_record)(node=node, refusal=refusal, peer=self.peer)
        log.warning(
            "agent %s link ended: %s", node.name, refusal.reason,
            extra={"node": node.name, "peer": self.peer, "reason": refusal.reason},
        )  # fmt: skip
        await self._send(Error(code=refusal.code, message=refusal.reason, fatal=True))
        await self.close(code=CLOSE_CERTIFICATE[refusal.code], reason=_close_reason(refusal.reason))

    async def _on_hello(self, hello: Hello) -> None:
        assert self.node is not None
        if self.hello is not None:
            await self._refuse("replayed", "hello was already received on this connection")
            return
        if hello.node != self.node.name:
            await self._refuse(
                "wrong_node", f"node: credential is for {self.node.name!r}, hello names {hello.node!r}",
                close=CLOSE_WRONG_NODE,
            )  # fmt: skip
            return
        self.hello = hello
        plan = await database_sync_to_async(services.link_hello)(node=self.node, hello=hello)
        await self._send(
            Welcome(
                node=self.node.name,
                head=plan.head,
                mode=plan.mode,  # type: ignore[arg-type]
                heartbeat_s=settings.INFERMESH_AGENT_HEARTBEAT_S,
                telemetry_s=settings.INFERMESH_AGENT_TELEMETRY_S,
            )
        )
        log.info(
            "agent %s hello at v%d: %s (head v%d)", self.node.name, hello.applied_version, plan.mode, plan.head,
            extra={"node": self.node.name},
        )  # fmt: skip
        if plan.mode == "snapshot":
            await self._send_snapshot()
        else:
            self.sent_version = hello.applied_version
        self.acked_version = min(hello.applied_version, self.sent_version)
        self.tasks.append(asyncio.create_task(self._pump()))
        self.tasks.append(asyncio.create_task(self._doorbell_loop()))

    async def _on_ack(self, ack: Ack) -> None:
        assert self.node is not None
        if ack.version > self.sent_version:
            await self._refuse("bad_ack", f"version: v{ack.version} was never sent (sent up to v{self.sent_version})")
            return
        if ack.version < self.acked_version:
            await self._refuse("replayed", f"version: ack of v{ack.version} after v{self.acked_version}")
            return
        self.acked_version = ack.version
        await database_sync_to_async(services.link_ack)(node=self.node, version=ack.version)

    async def _refuse(self, code: str, message: str, *, close: int | None = None) -> None:
        assert self.node is not None
        log.warning(
            "agent %s frame refused (%s): %s", self.node.name, code, message,
            extra={"node": self.node.name, "refusal": code},
        )  # fmt: skip
        await database_sync_to_async(services.link_refused)(node=self.node)
        await self._send(Error(code=code, message=message, fatal=close is not None))
        if close is not None:
            await self.close(code=close)

    async def _send(self, message: Welcome | Changes | Snapshot | Error) -> None:
        async with self.send_lock:
            await self.send(text_data=dump(message))

    # -- changes to the agent ------------------------------------------------------------------------------------
    async def _send_snapshot(self) -> None:
        version, entries = await database_sync_to_async(services.snapshot_frame)()
        await self._send(Snapshot.model_validate({"version": version, "entries": entries}))
        self.sent_version = version

    async def _pump(self) -> None:
        """Send what the outbox holds beyond what was sent, on each doorbell and at least every poll interval (a
        lost doorbell only delays delivery)."""
        poll = settings.INFERMESH_OUTBOX_POLL_S
        while True:
            batch = await database_sync_to_async(services.changes_after)(self.sent_version)
            if batch:
                if batch[0]["version"] != self.sent_version + 1:
                    await self._send_snapshot()  # pruned past what this agent has: start it over from a snapshot
                    continue
                await self._send(Changes.model_validate({"changes": batch}))
                self.sent_version = batch[-1]["version"]
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=poll)
            self.wake.clear()

    async def _doorbell_loop(self) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        while True:
            try:
                name = await layer.new_channel()
                await layer.group_add(AGENTS_GROUP, name)
                while True:
                    await layer.receive(name)
                    self.wake.set()
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await layer.group_discard(AGENTS_GROUP, name)
                raise
            except Exception as exc:  # the layer (Redis) is down: polling carries on, try again shortly
                log.warning("doorbell channel lost: %r", exc)
                await asyncio.sleep(1.0)
