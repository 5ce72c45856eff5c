"""gRPC servicers of the agent: the state plane, scoring and control. Thin: validation and state live in fusion,
the scoring service and the stores; these translate, count, log and never let bad input crash the agent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc

from agents.meshd.events import WARNING
from agents.meshd.logs import RateLimitedLog, correlation_id
from agents.meshd.policies import PolicyError, PolicyUnavailable
from agents.proto.infermesh.v1 import (
    control_pb2,
    control_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
    state_pb2,
    state_pb2_grpc,
)
from agents.signals.fusion import IngestResult
from agents.strategies.host import UnknownStrategyError

if TYPE_CHECKING:
    from agents.meshd.host import AgentHost

log = logging.getLogger("meshd.api")
_MAX_ACK_ERRORS = 10


def _trace(context: grpc.aio.ServicerContext) -> None:
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            correlation_id.set(str(value))


class _Recorder:
    """Counts and logs what fusion accepted or refused, shared by the three delta streams and outcomes."""

    def __init__(self, agent: AgentHost) -> None:
        self.agent = agent
        self.limited = RateLimitedLog(log)

    def record(self, kind: str, result: IngestResult, ack: Any) -> None:
        m = self.agent.metrics
        m.deltas.labels(kind, "accepted" if result.accepted else "rejected").inc()
        if result.accepted:
            ack.accepted += 1
        else:
            ack.rejected += 1
        for rej in result.rejections:
            m.rejections.labels(rej.kind, rej.field, rej.reason).inc()
            self.limited.warning(
                f"{rej.kind}.{rej.field}.{rej.reason}",
                f"refused {rej}",
                kind=rej.kind,
                field=rej.field,
                reason=rej.reason,
            )
            if len(ack.errors) < _MAX_ACK_ERRORS:
                ack.errors.append(str(rej))


class StatePlaneService(state_pb2_grpc.StatePlaneServicer):
    def __init__(self, agent: AgentHost) -> None:
        self.agent = agent
        self.recorder = _Recorder(agent)
        self._closing = asyncio.Event()
        self._wakeups: set[asyncio.Event] = set()

    async def _consume(
        self,
        kind: str,
        requests: AsyncIterator[Any],
        ingest: Callable[[Any], IngestResult],
        context: grpc.aio.ServicerContext,
    ) -> state_pb2.StateAck:
        _trace(context)
        ack = state_pb2.StateAck()
        async for delta in requests:
            try:
                result = ingest(delta)
            except Exception:  # a bug in fusion must cost one delta, not the stream or the agent
                log.exception("%s delta crashed fusion; dropped", kind)
                result = IngestResult(False)
            self.recorder.record(kind, result, ack)
        return ack

    async def PushModelState(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> state_pb2.StateAck:
        return await self._consume("model", request_iterator, self.agent.fusion.ingest_model, context)

    async def PushGpuState(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> state_pb2.StateAck:
        return await self._consume("gpu", request_iterator, self.agent.fusion.ingest_gpu, context)

    async def PushCommStats(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> state_pb2.StateAck:
        return await self._consume("comm", request_iterator, self.agent.fusion.ingest_comm, context)

    async def ListTargets(
        self, request: state_pb2.ListTargetsRequest, context: grpc.aio.ServicerContext
    ) -> state_pb2.ListTargetsResponse:
        f = self.agent.fusion
        now = f.clock()
        out = []
        for rec in sorted(f.targets.values(), key=lambda r: r.target_id):
            if request.model and rec.model != request.model:
                continue
            msg = f.to_proto(rec, now)
            if request.routable_only and not msg.routable:
                continue
            out.append(msg)
        return state_pb2.ListTargetsResponse(targets=out, version=f.version)

    async def GetTarget(
        self, request: state_pb2.GetTargetRequest, context: grpc.aio.ServicerContext
    ) -> state_pb2.TargetState:
        rec = self.agent.fusion.targets.get(request.target_id)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"target_id: no target {request.target_id!r}")
            raise AssertionError("abort returns by raising")
        return self.agent.fusion.to_proto(rec)

    async def ListGpus(
        self, request: state_pb2.ListGpusRequest, context: grpc.aio.ServicerContext
    ) -> state_pb2.ListGpusResponse:
        f = self.agent.fusion
        now = f.clock()
        return state_pb2.ListGpusResponse(gpus=[f.fused_gpu(uuid, now) for uuid in sorted(f.gpus)])

    async def ListCommStats(
        self, request: state_pb2.ListCommStatsRequest, context: grpc.aio.ServicerContext
    ) -> state_pb2.ListCommStatsResponse:
        summaries = [
            c.summary
            for key, c in sorted(self.agent.fusion.comm.items())
            if not request.job_id or key[0] == request.job_id
        ]
        return state_pb2.ListCommStatsResponse(summaries=summaries)

    async def WatchTargets(
        self, request: state_pb2.WatchTargetsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[state_pb2.TargetEvent]:
        f = self.agent.fusion
        prefix = f"{request.model}@" if request.model else ""
        changed: set[str] = set()
        removed: set[str] = set()
        wake = asyncio.Event()

        def listener(ch: list[str], rm: list[str]) -> None:
            for tid in ch:
                if tid.startswith(prefix):
                    changed.add(tid)
                    removed.discard(tid)
            for tid in rm:
                if tid.startswith(prefix):
                    removed.add(tid)
                    changed.discard(tid)
            wake.set()

        unsubscribe = f.subscribe(listener)
        self._wakeups.add(wake)
        self.agent.metrics.watchers.inc()
        try:
            now = f.clock()
            snapshot = [f.to_proto(r, now) for r in f.targets.values() if r.target_id.startswith(prefix)]
            yield state_pb2.TargetEvent(kind=state_pb2.TargetEvent.SNAPSHOT, targets=snapshot, version=f.version)
            while not self._closing.is_set():
                await wake.wait()
                wake.clear()
                if self._closing.is_set():
                    break
                ups, rms = sorted(changed), sorted(removed)
                changed.clear()
                removed.clear()
                now = f.clock()
                targets = [f.to_proto(f.targets[t], now) for t in ups if t in f.targets]
                if targets:
                    yield state_pb2.TargetEvent(kind=state_pb2.TargetEvent.UPSERT, targets=targets, version=f.version)
                gone = [t for t in rms if t not in f.targets]
                if gone:
                    yield state_pb2.TargetEvent(kind=state_pb2.TargetEvent.REMOVE, removed_ids=gone, version=f.version)
        finally:
            unsubscribe()
            self._wakeups.discard(wake)
            self.agent.metrics.watchers.dec()

    def close_streams(self) -> None:
        """End every watch stream (shutdown) so the server's grace period is not spent waiting on them."""
        self._closing.set()
        for wake in list(self._wakeups):
            wake.set()


class ScoringServicer(scoring_pb2_grpc.ScoringServicer):
    def __init__(self, agent: AgentHost) -> None:
        self.agent = agent
        self.recorder = _Recorder(agent)

    async def ScoreTargets(
        self, request: scoring_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.ScoreResponse:
        _trace(context)
        if not request.model:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model: required")
        try:
            response = self.agent.scoring.score(request)
        except UnknownStrategyError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"strategy: {exc}")
            raise AssertionError("abort returns by raising") from exc
        m = self.agent.metrics
        m.decisions.labels(response.strategy).observe(response.decision_us / 1e6)
        if response.fallback:
            m.fallbacks.labels(response.fallback_reason.rpartition(": ")[2]).inc()
        return response

    async def Admit(
        self, request: scoring_pb2.AdmitRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.AdmitResponse:
        if not request.model:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model: required")
        if self.agent.draining:
            self.agent.metrics.admissions.labels("draining").inc()
            return scoring_pb2.AdmitResponse(admitted=False, reason="node is draining", retry_after_s=1.0)
        response = self.agent.scoring.admit(request)
        self.agent.metrics.admissions.labels("admitted" if response.admitted else "refused").inc()
        return response

    def _outcome(self, report: scoring_pb2.OutcomeReport, ack: scoring_pb2.OutcomeAck) -> None:
        result = self.agent.scoring.report(report)
        self.recorder.record("outcome", result, ack)
        if result.accepted:
            label = "cancelled" if report.cancelled else ("ok" if report.ok else "error")
            self.agent.metrics.outcomes.labels(label).inc()

    async def ReportOutcome(
        self, request: scoring_pb2.OutcomeReport, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.OutcomeAck:
        _trace(context)
        ack = scoring_pb2.OutcomeAck()
        self._outcome(request, ack)
        return ack

    async def ReportOutcomes(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> scoring_pb2.OutcomeAck:
        ack = scoring_pb2.OutcomeAck()
        async for report in request_iterator:
            self._outcome(report, ack)
        return ack


async def _policy_abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    code = grpc.StatusCode.UNAVAILABLE if isinstance(exc, PolicyUnavailable) else grpc.StatusCode.INVALID_ARGUMENT
    await context.abort(code, str(exc))


class ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(self, agent: AgentHost) -> None:
        self.agent = agent

    async def ListNodes(
        self, request: control_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListNodesResponse:
        self.agent.refresh_local_node()
        return control_pb2.ListNodesResponse(nodes=self.agent.nodes.all())

    async def GetNode(
        self, request: control_pb2.GetNodeRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.NodeInfo:
        self.agent.refresh_local_node()
        info = self.agent.nodes.get(request.node_id)
        if info is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node_id: no node {request.node_id!r}")
            raise AssertionError("abort returns by raising")
        return info

    async def _local_only(self, request: control_pb2.NodeActionRequest, context: grpc.aio.ServicerContext) -> None:
        if request.node_id and request.node_id != self.agent.node_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node_id: {request.node_id!r} is not this agent's node ({self.agent.node_id!r}); ask its agent",
            )

    async def Cordon(
        self, request: control_pb2.NodeActionRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.NodeInfo:
        await self._local_only(request, context)
        self.agent.set_node_state(control_pb2.NODE_STATE_CORDONED, request.reason or "cordoned")
        return self.agent.refresh_local_node()

    async def Uncordon(
        self, request: control_pb2.NodeActionRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.NodeInfo:
        await self._local_only(request, context)
        self.agent.set_node_state(control_pb2.NODE_STATE_ACTIVE, request.reason or "uncordoned")
        return self.agent.refresh_local_node()

    async def Drain(
        self, request: control_pb2.NodeActionRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.NodeInfo:
        await self._local_only(request, context)
        self.agent.set_node_state(control_pb2.NODE_STATE_DRAINING, request.reason or "draining")
        return self.agent.refresh_local_node()

    async def ListModels(
        self, request: control_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListModelsResponse:
        f = self.agent.fusion
        models: dict[str, control_pb2.ModelInfo] = {}
        for rec in f.targets.values():
            info = models.setdefault(rec.model, control_pb2.ModelInfo(model=rec.model))
            info.targets += 1
            if f.routable(rec):
                info.routable_targets += 1
            if rec.revision and rec.revision not in info.revisions:
                info.revisions.append(rec.revision)
            if rec.runtime and rec.runtime not in info.runtimes:
                info.runtimes.append(rec.runtime)
        return control_pb2.ListModelsResponse(models=[models[k] for k in sorted(models)])

    async def ListPolicies(
        self, request: control_pb2.ListPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListPoliciesResponse:
        return control_pb2.ListPoliciesResponse(policies=self.agent.policies.list(request.kind))

    async def PutPolicy(
        self, request: control_pb2.PutPolicyRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.Policy:
        try:
            stored = await self.agent.policies.put(request.policy)
        except (PolicyError, PolicyUnavailable) as exc:
            await _policy_abort(context, exc)
            raise
        self.agent.events.emit("policy.put", f"policy {stored.name} v{stored.version}", attrs={"kind": stored.kind})
        return stored

    async def DeletePolicy(
        self, request: control_pb2.DeletePolicyRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.DeletePolicyResponse:
        try:
            deleted = await self.agent.policies.delete(request.name)
        except (PolicyError, PolicyUnavailable) as exc:
            await _policy_abort(context, exc)
            raise
        if deleted:
            self.agent.events.emit("policy.deleted", f"policy {request.name} deleted", severity=WARNING)
        return control_pb2.DeletePolicyResponse(deleted=deleted)

    async def SubscribeEvents(
        self, request: control_pb2.SubscribeEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.Event]:
        sub = self.agent.events.subscribe(request.kinds, request.since_seq, replay=not request.live_only)
        try:
            while True:
                event = await sub.queue.get()
                if event is None:
                    return
                yield event
        finally:
            self.agent.events.unsubscribe(sub)
