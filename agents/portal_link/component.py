"""The agent component for the `portal:` config section: keeps a WebSocket to the portal (wss:// with the agent's
SVID when it has `tls:`), applies the changes it pushes (Raft store or local file, once per version), acks them, and
reports heartbeats, telemetry, job status and the calls its gRPC server refused."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import aiohttp
import grpc
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.datadir import data_dir
from agents.portal_link.applier import Applier, FileApplier, RaftApplier, StoreUnavailable
from agents.portal_link.jobs import JobFrame, JobReporter
from agents.portal_link.refusals import RefusalDigest
from agents.portal_link.telemetry import TelemetrySampler, peers
from agents.proto.infermesh.v1 import control_pb2
from agents.proto.portal_link import (
    MAX_PORTAL_FRAME_BYTES,
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
    parse_portal_message,
)
from agents.scheduler import storekeys as K
from agents.security.authz import Refusal
from agents.security.tls import ClientIdentity

log = logging.getLogger("meshd.portal")

# Policy-store node statuses -> the agent's own node state ("offline" is the portal losing sight of the node: the
# node itself keeps its state).
_NODE_STATE = {
    "active": control_pb2.NODE_STATE_ACTIVE,
    "cordon": control_pb2.NODE_STATE_CORDONED,
    "drain": control_pb2.NODE_STATE_DRAINING,
    "quarantine": control_pb2.NODE_STATE_QUARANTINED,
}


class PortalSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="the portal's agent socket, e.g. ws://portal:8000/ws/agent/")
    credential: str = ""
    credential_file: str = ""
    node: str = ""  # default: the agent's node.id
    store: Literal["auto", "raft", "file"] = "auto"  # auto: raft when the agent has a raft: section
    raft_group: str = ""
    state_file: str = ""  # default: $INFERMESH_DATA_DIR/portal/<node>.json; relative paths are under the data dir
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=10.0, gt=0, le=600)
    sample_s: float = Field(default=0.25, gt=0, le=60)
    # Training jobs: how often the Raft leader reads the scheduler's job state and reports what changed.
    job_report_s: float = Field(default=0.5, gt=0, le=60)
    job_telemetry_s: float = Field(default=1.0, gt=0, le=600)
    # Refused gRPC calls: collected and sent at most this often (a flood becomes counts, not frames).
    refusal_report_s: float = Field(default=2.0, gt=0, le=600)
    # wss:// checks the portal's certificate against this name instead of the URL's host.
    server_name: str = ""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("ws://", "wss://")):
            raise ValueError(f"{v!r} must start with ws:// or wss://")
        return v

    @model_validator(mode="after")
    def _credential(self) -> PortalSection:
        if bool(self.credential) == bool(self.credential_file):
            raise ValueError("give exactly one of credential or credential_file")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self

    def secret(self) -> str:
        if self.credential:
            return self.credential
        path = Path(os.path.expandvars(self.credential_file)).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"credential_file {path}: {exc.strerror}") from exc


class PortalLinkComponent:
    name = "portal"

    def __init__(self, cfg: PortalSection) -> None:
        self.cfg = cfg
        self.secret = cfg.secret()
        self.ctx: Any = None
        self.node = cfg.node
        self.applier: Applier | None = None
        self.sampler: TelemetrySampler | None = None
        self.rtt: Any = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._seq = 0
        self._send_lock = asyncio.Lock()
        self._outbox: asyncio.Queue[JobFrame] = asyncio.Queue(maxsize=10_000)
        self._unsent: JobFrame | None = None
        self.job_reporter = JobReporter(cfg.job_telemetry_s)
        self.applied_version = 0
        self.identity: ClientIdentity | None = None
        self.refusals = RefusalDigest()
        self._unsent_refusals: CallRefusals | None = None

    def add_to_server(self, server: Any) -> Sequence[str]:
        return []

    async def start(self, ctx: Any) -> None:
        self.ctx = ctx
        self.node = self.cfg.node or ctx.node_id
        self.sampler = TelemetrySampler(ctx.fusion)
        ctx.on_rtt_provider(self._set_rtt)
        # The agent's SVID, presented to the portal over wss:// (and by the store clients to the agent's own server).
        self.identity = ClientIdentity.of(getattr(ctx.config, "tls", None))
        security = getattr(ctx, "security", None)
        if security is not None:
            security.on_refusal(self._refused)
        kind = self.cfg.store
        if kind == "auto":
            kind = "raft" if "raft" in getattr(ctx.config, "components", {}) else "file"
        if kind == "raft":
            self.applier = RaftApplier(K.StoreClient.of_agent(ctx, self.cfg.raft_group))
        else:
            path = Path(self.cfg.state_file) if self.cfg.state_file else Path("portal") / f"{self.node}.json"
            self.applier = FileApplier(path if path.is_absolute() else data_dir() / path)
        r = ctx.registry
        self.m_connected = Gauge("meshd_portal_connected", "1 while the portal link is up", registry=r)
        self.m_version = Gauge("meshd_portal_applied_version", "last portal version applied", registry=r)
        self.m_changes = Counter("meshd_portal_changes", "portal changes received", ["result"], registry=r)
        self.m_refused = Counter("meshd_portal_refusals", "frames the portal refused", ["code"], registry=r)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.applier is not None:
            await self.applier.close()

    def _set_rtt(self, rtt: Any) -> None:
        self.rtt = rtt

    def _refused(self, refusal: Refusal) -> None:
        self.refusals.add(refusal, int(time.time() * 1000))

    # -- for other components: job reports ------------------------------------------------------------------------
    def report_job_status(self, job_id: int, status: str, reason: str = "") -> None:
        """Queue a job status for the portal (sent in order once connected)."""
        self._outbox.put_nowait(
            JobStatus.model_validate({"seq": 1, "job_id": job_id, "status": status, "reason": reason})
        )

    def report_job_event(self, job_id: int, kind: str, message: str = "", data: dict[str, Any] | None = None) -> None:
        self._outbox.put_nowait(
            JobEvent.model_validate({"seq": 1, "job_id": job_id, "kind": kind, "message": message, "data": data or {}})
        )

    # -- the connection -------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.cfg.reconnect_min_s
        async with aiohttp.ClientSession() as session:
            while True:
                started = time.monotonic()
                try:
                    await self._session(session)
                except asyncio.CancelledError:
                    raise
                except (aiohttp.ClientError, OSError, TimeoutError, StoreUnavailable, ProtocolError) as exc:
                    log.warning("portal link to %s lost: %s", self.cfg.url, exc or type(exc).__name__)
                except Exception:
                    log.exception("portal link failed")
                finally:
                    self._ws = None
                    self.connected.clear()
                    self.m_connected.set(0)
                if time.monotonic() - started > 30:
                    delay = self.cfg.reconnect_min_s  # a long session: the next failure is a fresh one
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(self.cfg.reconnect_max_s, delay * 2)

    async def _send(
        self, frame: Hello | Ack | Heartbeat | Telemetry | JobStatus | JobEvent | JobTelemetry | CallRefusals
    ) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionResetError("portal link is down")
        async with self._send_lock:
            self._seq += 1
            await ws.send_str(dump(frame.model_copy(update={"seq": self._seq})))

    async def _session(self, session: aiohttp.ClientSession) -> None:
        assert self.applier is not None
        await self._apply_local_status()
        applied = await self.applier.applied_version()
        headers = {"Authorization": f"Bearer {self.secret}"}
        try:
            ws = await session.ws_connect(
                self.cfg.url,
                headers=headers,
                max_msg_size=MAX_PORTAL_FRAME_BYTES,
                heartbeat=30.0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                ssl=self._ssl(),
                server_hostname=self.cfg.server_name or None,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                log.error("portal refused this node's credential (HTTP %s): enroll it again", exc.status)
            raise
        except aiohttp.ClientSSLError as exc:
            log.error("TLS with the portal at %s failed: %s", self.cfg.url, exc)
            raise
        tasks: list[asyncio.Task[None]] = []
        async with ws:
            self._ws = ws
            self._seq = 0
            await self._send(
                Hello.model_validate(
                    {"seq": 1, "node": self.node, "applied_version": applied, "store": self.applier.kind}
                )
            )
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                frame = parse_portal_message(msg.data)
                if isinstance(frame, Welcome):
                    log.info("portal link up: %s from v%d (head v%d)", frame.mode, applied, frame.head)
                    self.connected.set()
                    self.m_connected.set(1)
                    tasks = [
                        asyncio.create_task(self._heartbeats(frame.heartbeat_s)),
                        asyncio.create_task(self._telemetry(frame.telemetry_s)),
                        asyncio.create_task(self._job_reports()),
                    ]
                    tasks.append(asyncio.create_task(self._refusal_reports(self.cfg.refusal_report_s)))
                    if self.applier.kind == "raft":
                        tasks.append(asyncio.create_task(self._job_states()))
                elif isinstance(frame, Changes | Snapshot):
                    await self._apply(frame)
                elif isinstance(frame, Error):
                    self.m_refused.labels(frame.code).inc()
                    level = logging.ERROR if frame.code.startswith("certificate") else logging.WARNING
                    what = "the link" if frame.fatal else "a frame"
                    log.log(level, "portal refused %s (%s): %s", what, frame.code, frame.message)
                    if frame.fatal:
                        break
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        log.warning("portal link closed (code %s)", ws.close_code)

    def _ssl(self) -> ssl.SSLContext | bool:
        """wss:// with a `tls:` section presents the SVID as it is now (a rotated one from the next connection on) and
        trusts the mesh CA; without one, the system's roots."""
        if self.cfg.url.startswith("wss://") and self.identity is not None:
            return self.identity.ssl_context()
        return True

    async def _refusal_reports(self, every_s: float) -> None:
        while True:
            if self._unsent_refusals is None:
                self._unsent_refusals = self.refusals.take()
            if self._unsent_refusals is not None:
                await self._send(self._unsent_refusals)
                self._unsent_refusals = None  # kept until sent, like job reports
            await asyncio.sleep(every_s)

    async def _apply(self, frame: Changes | Snapshot) -> None:
        assert self.applier is not None
        delay = 0.2
        while True:
            try:
                if isinstance(frame, Snapshot):
                    version = await self.applier.apply_snapshot(frame)
                    touched = [e.key for e in frame.entries]
                    self.m_changes.labels("snapshot").inc()
                else:
                    version = await self.applier.apply_changes(frame.changes)
                    touched = [c.key for c in frame.changes]
                    self.m_changes.labels("applied").inc(len(frame.changes))
                break
            except StoreUnavailable as exc:
                # No quorum yet (or a slow leader): keep the changes and try again; the portal waits for the ack.
                log.warning("portal changes wait for the store: %s", exc)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
        self.applied_version = version
        self.m_version.set(version)
        if f"nodes/{self.node}" in touched or isinstance(frame, Snapshot):
            await self._apply_local_status()
        await self._send(Ack(seq=1, version=version))

    async def _apply_local_status(self) -> None:
        """The portal's word on this node (quarantine, cordon, drain) becomes the node's routable state."""
        assert self.applier is not None
        set_state = getattr(self.ctx, "set_node_state", None)
        if set_state is None:
            return
        try:
            value = await self.applier.get(f"nodes/{self.node}")
        except StoreUnavailable:
            return
        if not value:
            return
        state = _NODE_STATE.get(str(value.get("status")))
        if state is not None:
            set_state(state, f"portal: {value.get('status')}: {value.get('reason', '')}".rstrip(": "))

    async def _heartbeats(self, every_s: float) -> None:
        while True:
            await self._send(
                Heartbeat(seq=1, state=self._state_name(), sent_unix_ms=int(time.time() * 1000))  # type: ignore[arg-type]
            )
            await asyncio.sleep(every_s)

    def _state_name(self) -> str:
        state = self.ctx.nodes.local.state if self.ctx is not None else 0
        name = control_pb2.NodeState.Name(state).removeprefix("NODE_STATE_").lower()
        return name if name in {"active", "cordoned", "draining", "quarantined", "down"} else "unspecified"

    async def _telemetry(self, every_s: float) -> None:
        assert self.sampler is not None
        next_report = time.monotonic()
        while True:
            self.sampler.sample()
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + every_s
                others = [n.node_id for n in self.ctx.nodes.all() if n.node_id != self.node]
                await self._send(
                    Telemetry(
                        seq=1,
                        at_unix_ms=int(time.time() * 1000),
                        node=self.sampler.node(self._state_name()),
                        gpus=self.sampler.gpus(),
                        peers=peers(self.node, others, self.rtt, _gossip_links()),
                    )
                )
            await asyncio.sleep(min(self.cfg.sample_s, every_s))

    async def _job_reports(self) -> None:
        while True:
            if self._unsent is None:
                self._unsent = await self._outbox.get()
            await self._send(self._unsent)
            self._unsent = None  # kept until sent: a report taken just before the link broke goes on the next one

    async def _job_states(self) -> None:
        """On the Raft leader only (one reporter for the group): the scheduler's job state, as the portal needs it."""
        client = K.StoreClient.of_agent(self.ctx, self.cfg.raft_group)
        try:
            while True:
                try:
                    if await client.is_leader():
                        jobs = await client.get_prefix(K.JOBS)
                        portal = await client.get_prefix(K.PORTAL_JOBS)
                        frames = self.job_reporter.step(
                            {k[len(K.JOBS) :]: v for k, v in jobs.items()},
                            {k[len(K.PORTAL_JOBS) :]: v for k, v in portal.items()},
                            time.time(),
                        )
                        for frame in frames:
                            await self._outbox.put(frame)
                except grpc.aio.AioRpcError as exc:
                    log.info("job state not read: %s", exc.details())
                await asyncio.sleep(self.cfg.job_report_s)
        finally:
            await client.close()


def make_component(section: Mapping[str, Any]) -> PortalLinkComponent:
    return PortalLinkComponent(PortalSection.model_validate(dict(section)))


def _gossip_links() -> dict[str, tuple[float | None, float | None]]:
    """Loss and RTT to each peer as this agent's gossip measures them (empty without gossip)."""
    from agents.gossip.component import mesh_status

    status = mesh_status()
    return status.links if status.running else {}
