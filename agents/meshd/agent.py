"""The agent process: builds fusion, scoring, stores and components from the config, serves gRPC and HTTP, runs
the adapter loops, and shuts down gracefully (drain, then stop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents import tracing
from agents.binding import BindError, probe_reason, reason_of, split_host_port
from agents.meshd.adapters import GpuPoller, RuntimeLoop, make_gpu_source
from agents.meshd.component import AgentContext, Component, build_component
from agents.meshd.config import AgentConfig
from agents.meshd.events import ERROR, INFO, WARNING, EventBus
from agents.meshd.kvindex import AgentPrefixIndex
from agents.meshd.metrics import AgentMetrics
from agents.meshd.nodes import NodeDirectory
from agents.meshd.policies import LocalPolicyStore, PolicyStore
from agents.meshd.servicers import ControlServicer, ScoringServicer, StatePlaneService, _Recorder
from agents.proto.infermesh.v1 import (
    control_pb2,
    control_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
    state_pb2,
    state_pb2_grpc,
)
from agents.security.tls import ClientIdentity, ServerSecurity
from agents.signals.fusion import Fusion, FusionConfig, IngestResult
from agents.signals.scoring import ScoringService
from agents.strategies.base import HEALTHY, UNHEALTHY

log = logging.getLogger("meshd")
VERSION = "0.1.0"
CORE_SERVICES = (
    state_pb2.DESCRIPTOR.services_by_name["StatePlane"].full_name,
    scoring_pb2.DESCRIPTOR.services_by_name["Scoring"].full_name,
    control_pb2.DESCRIPTOR.services_by_name["Control"].full_name,
)

# What an operator changes when a listening address is taken.
GRPC_CHANGE = "listen.grpc (MESHD__LISTEN__GRPC)"
HTTP_CHANGE = "listen.http (MESHD__LISTEN__HTTP)"


class Agent:
    def __init__(self, config: AgentConfig, origin: Mapping[str, str] | None = None) -> None:
        """`origin`: the environment variable that set each dotted config field, named in config errors."""
        self.config = config
        self.node_id = config.node.id
        fc = config.fusion
        self.fusion = Fusion(
            self.node_id,
            zone=config.node.zone,
            config=FusionConfig(fresh_s=fc.fresh_s, stale_s=fc.stale_s, expire_s=fc.expire_s, ewma_alpha=fc.ewma_alpha),
        )
        self.metrics = AgentMetrics(self.fusion)
        self.events = EventBus(self.node_id)
        self.started_unix_ms = int(time.time() * 1000)
        self.nodes = NodeDirectory(
            control_pb2.NodeInfo(
                node_id=self.node_id,
                roles=list(config.node.roles),
                zone=config.node.zone,
                state=control_pb2.NODE_STATE_ACTIVE,
                version=VERSION,
                started_unix_ms=self.started_unix_ms,
                labels={
                    **config.node.labels,
                    **{k: v for k, v in (("cell", config.node.cell), ("region", config.node.region)) if v},
                },
            )
        )
        self.node_state: int = control_pb2.NODE_STATE_ACTIVE
        self.policies: PolicyStore = LocalPolicyStore()
        sc = config.scoring
        self.scoring = ScoringService(
            self.fusion,
            default_strategy=sc.strategy,
            plugins=sc.plugins,
            budget_us=sc.budget_us,
            top_k=sc.top_k,
            max_queue_per_target=sc.admission.max_queue_per_target,
            retry_after_s=sc.admission.retry_after_s,
        )
        # Components are built now so that a bad section stops the agent before it binds any port.
        self.components: list[Component] = [build_component(n, raw, origin) for n, raw in config.components.items()]
        self.gpu_poller: GpuPoller | None = None
        self.draining = False
        self.grpc_address = ""
        self.http_address = ""
        self.ctx: AgentContext | None = None
        self._recorder = _Recorder(self)
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._services: list[str] = [*CORE_SERVICES]
        self._state_service = StatePlaneService(self)
        self._http: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started_components: list[Component] = []
        self._last_health: dict[str, str] = {}
        self._stopped = asyncio.Event()
        self.fusion.subscribe(self._on_fusion_change)

    # -- state ---------------------------------------------------------------------------------------------------
    def record_ingest(self, kind: str, result: IngestResult) -> None:
        """Count and log an in-process adapter's record like a pushed delta."""
        self._recorder.record(kind, result, state_pb2.StateAck())

    def _on_fusion_change(self, changed: list[str], removed: list[str]) -> None:
        for tid in changed:
            rec = self.fusion.targets.get(tid)
            if rec is None:
                continue
            before = self._last_health.get(tid)
            if before != rec.health:
                self._last_health[tid] = rec.health
                if rec.health == UNHEALTHY:
                    self.events.emit(
                        "target.unhealthy", rec.health_reason, severity=ERROR, target_id=tid, attrs={"model": rec.model}
                    )
                elif rec.health == HEALTHY:
                    self.events.emit("target.healthy", "target is healthy", target_id=tid, attrs={"model": rec.model})
                else:
                    self.events.emit("target.unknown", rec.health_reason, severity=WARNING, target_id=tid)
        for tid in removed:
            self._last_health.pop(tid, None)
            self.events.emit("target.removed", "target left the runtime", target_id=tid)

    def set_node_state(self, state: int, reason: str) -> None:
        if state == self.node_state:
            return
        self.node_state = state
        routable = state == control_pb2.NODE_STATE_ACTIVE
        self.metrics.draining.set(0 if routable else 1)
        self.fusion.set_node_routable(routable, "" if routable else reason)
        name = control_pb2.NodeState.Name(state).removeprefix("NODE_STATE_").lower()  # type: ignore[arg-type]
        self.events.emit(f"node.{name}", reason, severity=INFO if routable else WARNING)
        log.info("node %s is now %s: %s", self.node_id, name, reason)

    def _use_policy_store(self, store: PolicyStore) -> None:
        self.policies = store
        if self.ctx is not None:
            self.ctx.policies = store

    def refresh_local_node(self) -> control_pb2.NodeInfo:
        info = self.nodes.local
        info.state = self.node_state  # type: ignore[assignment]
        info.grpc_address = self.grpc_address
        info.gpus = len(self.fusion.gpus)
        info.targets = len(self.fusion.targets)
        info.updated_unix_ms = int(time.time() * 1000)
        return info

    # -- lifecycle -----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        gpu_source = make_gpu_source(cfg.gpu) if cfg.gpu is not None else None
        if gpu_source is not None and cfg.gpu is not None:
            self.gpu_poller = GpuPoller(self, cfg.gpu, gpu_source)
        # With `tls:`, https:// runtimes are scraped with the node's SVID and checked against the mesh CA.
        identity = ClientIdentity.of(cfg.tls)
        connector = aiohttp.TCPConnector(ssl=identity.live_ssl_context()) if identity is not None else None
        self._session = aiohttp.ClientSession(connector=connector)
        if identity is not None:
            self._spawn(identity.keep_current())
        scrapers = [RuntimeLoop(self, rt, self._session) for rt in cfg.runtimes]
        self.prefix_index = AgentPrefixIndex(cfg.runtimes)
        self.metrics.registry.register(self.prefix_index)

        security = (
            ServerSecurity(cfg.tls, node=self.node_id, registry=self.metrics.registry) if cfg.tls is not None else None
        )
        self.security = security
        interceptors = [security.interceptor] if security else []
        if tracing.configured():  # a SERVER span per traced call (authorisation runs first)
            interceptors.append(tracing.ServerTracing())
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], interceptors=interceptors or None)
        state_pb2_grpc.add_StatePlaneServicer_to_server(self._state_service, server)
        scoring_pb2_grpc.add_ScoringServicer_to_server(ScoringServicer(self), server)
        control_pb2_grpc.add_ControlServicer_to_server(ControlServicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for component in self.components:
            self._services.extend(component.add_to_server(server))
        reflection.enable_server_reflection([*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        host = cfg.listen.grpc.rpartition(":")[0]
        try:
            if security is not None:
                bound = server.add_secure_port(cfg.listen.grpc, security.credentials())
            else:
                bound = server.add_insecure_port(cfg.listen.grpc)
        except RuntimeError:  # grpc's word for a port it cannot bind
            bound = 0
        if bound == 0:
            gh, gp = split_host_port(cfg.listen.grpc)
            raise BindError(cfg.listen.grpc, probe_reason(gh, gp) or "could not bind", GRPC_CHANGE)
        if security is not None:
            self._spawn(security.run())
        self.grpc_address = f"{host}:{bound}"
        await server.start()
        self._server = server
        await self._start_http()

        self.ctx = AgentContext(
            node_id=self.node_id,
            roles=frozenset(cfg.node.roles),
            zone=cfg.node.zone,
            grpc_address=self.grpc_address,
            fusion=self.fusion,
            strategies=self.scoring.host,
            events=self.events,
            nodes=self.nodes,
            policies=self.policies,
            registry=self.metrics.registry,
            config=cfg,
            set_node_state=self.set_node_state,
            set_policy_store=self._use_policy_store,
            security=security,
        )
        self.ctx.on_rtt_provider(self.scoring.set_rtt)
        for component in self.components:
            await component.start(self.ctx)
            self._started_components.append(component)

        if self.gpu_poller is not None:
            await self.gpu_poller.poll_once()  # know the GPUs before the first scrape maps runtimes onto them
            self._spawn(self.gpu_poller.run())
        for scraper in scrapers:
            self._spawn(scraper.run())
        self.prefix_index.start()
        self._spawn(self._tick_loop())
        self._spawn(self._refresh_loop())
        for name in ["", *self._services]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.refresh_local_node()
        self.events.emit("node.started", f"agent {VERSION} serving on {self.grpc_address}")
        log.info(
            "meshd %s serving grpc=%s http=%s roles=%s runtimes=%d",
            self.node_id,
            self.grpc_address,
            self.http_address,
            ",".join(cfg.node.roles),
            len(scrapers),
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.fusion.tick_s)
            self.fusion.tick()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.scoring.refresh_s)
            self.scoring.host.refresh()

    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/healthz", self._healthz_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, _, port = self.config.listen.http.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]"), int(port))
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise BindError(self.config.listen.http, reason_of(exc), HTTP_CHANGE) from None
        self._http = runner
        sockets = [s for srv in (site._server,) if srv is not None for s in getattr(srv, "sockets", [])]
        bound = sockets[0].getsockname()[1] if sockets else int(port)
        self.http_address = f"{host}:{bound}"

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz_handler(self, request: web.Request) -> web.Response:
        routable = sum(1 for rec in self.fusion.targets.values() if self.fusion.routable(rec))
        doc = {
            "status": "draining" if self.draining else "ok",
            "node": self.node_id,
            "state": control_pb2.NodeState.Name(self.node_state).removeprefix("NODE_STATE_").lower(),  # type: ignore[arg-type]
            "targets": len(self.fusion.targets),
            "routable_targets": routable,
            "gpus": len(self.fusion.gpus),
        }
        return web.json_response(doc, status=503 if self.draining else 200)

    async def stop(self) -> None:
        """Graceful shutdown: mark draining (routers move away), wait, then stop serving and release everything."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.draining = True
        self.set_node_state(control_pb2.NODE_STATE_DRAINING, "shutting down")
        for name in ["", *self._services]:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.ctx is not None:  # nobody routes to an agent that never finished starting: no drain
            log.info("draining for %.1fs before stopping", self.config.shutdown.drain_s)
            await asyncio.sleep(self.config.shutdown.drain_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._state_service.close_streams()
        self.events.close()
        for component in reversed(self._started_components):
            try:
                await component.stop()
            except Exception:
                log.exception("component %s failed to stop", component.name)
        if self._server is not None:
            await self._server.stop(self.config.shutdown.grace_s)
        if self._http is not None:
            await self._http.cleanup()
        if self._session is not None:
            await self._session.close()
        if self.gpu_poller is not None:
            self.gpu_poller.close()
        if getattr(self, "prefix_index", None) is not None:
            await self.prefix_index.close()
        self.scoring.close()
        log.info("meshd %s stopped", self.node_id)

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.stop()
