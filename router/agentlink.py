"""The router's link to its local agent: the WatchTargets stream feeding the view, and batched outcome reports.

With `agent.tls` the router dials the agent over mTLS with its SVID; each reconnect after the certificate files
changed (rotation) opens a fresh channel that presents the new certificate.

When the agent cannot be reached the router keeps serving from its last view plus static targets (local-only mode),
says so once in the log and in the `infermesh_router_local_only` gauge, and keeps reconnecting with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from agents.proto.infermesh.v1 import scoring_pb2, scoring_pb2_grpc, state_pb2, state_pb2_grpc
from agents.security.tls import ClientIdentity, Dialer
from router.config import AgentConfig
from router.metrics import AGENT_REPORTS, LOCAL_ONLY, TARGETS
from router.obs import agent_call_interceptors, log_event
from router.storewatch import reconnecting
from router.view import Target, TargetView


def _opt(msg: object, name: str) -> float | None:
    return getattr(msg, name) if msg.HasField(name) else None  # type: ignore[attr-defined]


def target_from_state(st: state_pb2.TargetState) -> Target:
    mc = _opt(st, "max_concurrency")
    return Target(
        id=st.target_id,
        model=st.model,
        url=st.endpoint.rstrip("/"),
        runtime=st.runtime or "vllm",
        api="openai",
        node=st.node,
        gpu_uuid=st.gpu_uuids[0] if st.gpu_uuids else "",
        mig_profile=st.mig_profile,
        gpu_type=st.gpu_type,
        zone=st.zone,
        revision=st.revision,
        quant=st.quant,
        upstream_model=st.model,
        source="agent",
        healthy=bool(st.routable),
        waiting=_opt(st, "requests_waiting"),
        running=_opt(st, "requests_running"),
        kv_cache_usage=_opt(st, "kv_cache_usage"),
        ttft_p95_s=_opt(st, "ttft_p95_s"),
        tokens_per_s=_opt(st, "tokens_per_s"),
        max_concurrency=int(mc) if mc is not None else None,
        service_rate_rps=st.service_rate_rps or None,
        work_left_s=st.work_left_s,
        cost_per_mtok=st.cost_per_mtok or None,
        freshness=st.freshness,
        state=st,
        updated=time.monotonic(),
    )


@dataclass(slots=True)
class Outcome:
    target_id: str
    request_id: str
    ok: bool
    ttft_s: float
    latency_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""
    hedged: bool = False
    cancelled: bool = False


class AgentLink:
    def __init__(self, view: TargetView, cfg: AgentConfig) -> None:
        self.view = view
        self.cfg = cfg
        self._tasks: list[asyncio.Task[None]] = []
        self._outcomes: asyncio.Queue[Outcome] = asyncio.Queue(maxsize=10_000)
        self._dialer: Dialer | None = None
        self._channel: grpc.aio.Channel | None = None
        self.connected = asyncio.Event()
        self._announced_local = False

    def _set_local_only(self, on: bool, reason: str = "") -> None:
        if on == self.view.local_only and self._announced_local == on:
            return
        self.view.local_only = on
        LOCAL_ONLY.set(1 if on else 0)
        counts = self.view.counts()
        if on and not self._announced_local:
            self._announced_local = True
            log_event(
                "agent unreachable: local-only mode, serving the last view and static targets",
                logging.WARNING,
                agent=self.cfg.address,
                reason=reason,
                agent_targets=counts["agent"],
                static_targets=counts["static"],
            )
        elif not on and self._announced_local:
            self._announced_local = False
            log_event(
                "agent reachable again: leaving local-only mode",
                agent=self.cfg.address,
                agent_targets=counts["agent"],
                static_targets=counts["static"],
            )

    async def start(self) -> None:
        if not self.cfg.address:
            self._set_local_only(True, "no agent configured")
            return
        # check_s=0: the watch loop asks for the channel only when it (re)connects, and then always looks at the files.
        self._dialer = Dialer(
            self.cfg.address, ClientIdentity.of(self.cfg.tls), check_s=0.0, interceptors=agent_call_interceptors()
        )
        self._channel = self._dialer.channel()
        self._tasks.append(asyncio.create_task(self._watch_loop()))
        if self.cfg.report_outcomes:
            self._tasks.append(asyncio.create_task(self._report_loop()))

    def channel(self) -> grpc.aio.Channel:
        """The channel to the agent (a fresh one after the SVID files changed), for other readers of the agent."""
        assert self._dialer is not None, "no agent configured"
        return self._dialer.channel()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        if self._dialer is not None:
            await self._dialer.close()

    def report(self, outcome: Outcome) -> None:
        if not self.cfg.address or not self.cfg.report_outcomes:
            return
        try:
            self._outcomes.put_nowait(outcome)
        except asyncio.QueueFull:
            AGENT_REPORTS.labels("dropped").inc()

    def _update_gauges(self) -> None:
        for src, n in self.view.counts().items():
            TARGETS.labels(src).set(n)

    async def _watch_loop(self) -> None:
        await reconnecting(
            self._watch, min_s=self.cfg.reconnect_min_s, max_s=self.cfg.reconnect_max_s, on_break=self._broken
        )

    async def _watch(self, healthy: Callable[[], None]) -> None:
        assert self._dialer is not None
        self._channel = self._dialer.channel()
        stub = state_pb2_grpc.StatePlaneStub(self._channel)
        call = stub.WatchTargets(state_pb2.WatchTargetsRequest())
        async for ev in call:
            if ev.kind == state_pb2.TargetEvent.SNAPSHOT:
                self.view.replace_agent(target_from_state(s) for s in ev.targets)
                self._set_local_only(False)
                self.connected.set()
                healthy()
            elif ev.kind == state_pb2.TargetEvent.UPSERT:
                for s in ev.targets:
                    self.view.upsert_agent(target_from_state(s))
            elif ev.kind == state_pb2.TargetEvent.REMOVE:
                for tid in ev.removed_ids:
                    self.view.remove_agent(tid)
            self._update_gauges()

    def _broken(self, reason: str) -> None:
        self.connected.clear()
        self._set_local_only(True, reason)

    async def _report_loop(self) -> None:
        while True:
            first = await self._outcomes.get()
            batch = [first]
            await asyncio.sleep(0.25)  # batch: one client stream per quarter second, not one RPC per request
            while not self._outcomes.empty() and len(batch) < 2000:
                batch.append(self._outcomes.get_nowait())
            if not self.connected.is_set():
                AGENT_REPORTS.labels("dropped").inc(len(batch))
                continue
            msgs = [
                scoring_pb2.OutcomeReport(
                    target_id=o.target_id,
                    request_id=o.request_id,
                    ok=o.ok,
                    ttft_s=o.ttft_s,
                    latency_s=o.latency_s,
                    prompt_tokens=o.prompt_tokens,
                    completion_tokens=o.completion_tokens,
                    error=o.error,
                    hedged=o.hedged,
                    cancelled=o.cancelled,
                )
                for o in batch
            ]
            try:
                assert self._channel is not None
                stub = scoring_pb2_grpc.ScoringStub(self._channel)  # the channel the watch loop opened last
                ack = await stub.ReportOutcomes(iter(msgs), timeout=5.0)
                AGENT_REPORTS.labels("accepted").inc(ack.accepted)
                if ack.rejected:
                    AGENT_REPORTS.labels("rejected").inc(ack.rejected)
            except asyncio.CancelledError:
                raise
            except Exception:
                AGENT_REPORTS.labels("failed").inc(len(batch))
