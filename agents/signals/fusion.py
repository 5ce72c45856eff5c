"""State fusion: validates incoming deltas and folds them into per-target state with freshness.

A target is (model, revision, node, runtime endpoint) with the GPUs / MIG slice it runs on. Signals age: past
`fresh_s` their trust decays, past `stale_s` they are published as unknown rather than trusted, past `expire_s`
the target is dropped. `ReportOutcome` refines EWMA latency, service rate and work-left estimates. The core is
sans-IO: the caller passes the current time; listeners hear which targets changed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agents.proto.infermesh.v1 import scoring_pb2, state_pb2
from agents.proto.vocab import gpu_type_of
from agents.signals.types import CommStats, GpuState, ModelState
from agents.strategies.base import HEALTHY, UNHEALTHY, UNKNOWN, TargetView

# Xid codes that mean the GPU cannot be trusted with work (NVIDIA's Xid catalogue: bus loss, uncorrectable ECC,
# page retirement / row-remap failure, NVLink fatal, GSP errors).
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95, 119, 120})
_MAX_NAME = 256
_MAX_ERRORS = 10


@dataclass(slots=True, frozen=True)
class Rejection:
    """Why (part of) a delta was refused; `field` names the offending field, `reason` is a short metric label."""

    kind: str  # model | gpu | comm | outcome
    field: str
    reason: str  # identity | nan | negative | range | unknown_gpu | unknown_target | stale | future
    message: str

    def __str__(self) -> str:
        return f"{self.kind}.{self.field}: {self.message}"


@dataclass(slots=True)
class IngestResult:
    accepted: bool
    rejections: list[Rejection] = field(default_factory=list)
    target_id: str = ""


@dataclass(slots=True)
class FusionConfig:
    fresh_s: float = 3.0
    stale_s: float = 15.0
    expire_s: float = 300.0
    ewma_alpha: float = 0.2
    max_future_s: float = 30.0  # clock skew tolerated on observed timestamps
    xid_hold_s: float = 300.0  # a critical Xid is reported once; the GPU stays condemned this long
    default_completion_tokens: float = 256.0


def target_id_for(model: str, revision: str, node: str, endpoint: str) -> str:
    """Readable, stable id: model@revision/node/host:port."""
    parts = urlsplit(endpoint)
    where = parts.netloc or endpoint
    return f"{model}@{revision or 'default'}/{node}/{where}"


@dataclass(slots=True)
class _Runtime:
    """Last accepted runtime signals (raw values, not yet aged)."""

    requests_waiting: float | None = None
    requests_running: float | None = None
    kv_cache_usage: float | None = None
    tokens_per_s: float | None = None
    prompt_tokens_per_s: float | None = None
    ttft_p95_s: float | None = None
    latency_p95_s: float | None = None
    max_concurrency: int | None = None
    loaded: bool = True
    warming: bool = False
    healthy: bool = True
    lora_resident: bool | None = None
    max_loras: int | None = None
    loras_active: int | None = None


@dataclass(slots=True)
class TargetRecord:
    target_id: str
    model: str
    revision: str
    node: str
    endpoint: str
    runtime: str = ""
    quant: str = ""
    zone: str = ""
    mig_profile: str = ""
    gpu_uuids: tuple[str, ...] = ()
    gpu_type: str = ""  # a remote target's GPU family as its node published it (local ones: from the inventory)
    cost_per_mtok: float = 0.0
    parent: str = ""  # a LoRA adapter's base model
    # a remote target's GPU figures (VRAM fraction, utilization %, thermal margin °C) as its own node fused them:
    # its GPUs are not in this node's inventory, so they come with the gossip summary
    remote_gpu: tuple[float | None, float | None, float | None] | None = None
    signals: _Runtime = field(default_factory=_Runtime)
    observed_at: float = 0.0  # wall seconds of the last runtime signal
    down_reason: str = ""  # set while its endpoint cannot be scraped
    # outcome-refined estimates
    ewma_latency_s: float = 0.0
    ewma_ttft_s: float = 0.0
    ewma_completion_tokens: float = 0.0
    service_rate_rps: float = 0.0
    error_rate: float = 0.0
    outcomes_ok: int = 0
    outcomes_error: int = 0
    version: int = 0
    # what the last evaluation published, to detect changes of health and freshness between deltas
    health: str = UNKNOWN
    health_reason: str = ""
    freshness_bucket: int = -1


@dataclass(slots=True)
class _Gpu:
    delta: state_pb2.GpuStateDelta
    observed_at: float
    healthy: bool = True
    reason: str = ""
    held_until: float = 0.0  # a critical Xid keeps the GPU unhealthy until then


@dataclass(slots=True)
class _Comm:
    summary: state_pb2.CommSummary
    observed_at: float


# what a gossip summary carries of a remote target's runtime, and of its GPUs (in _target_gpu_values' order)
_REMOTE_FIELDS = (
    "requests_waiting", "requests_running", "kv_cache_usage", "tokens_per_s", "ttft_p95_s", "latency_p95_s",
    "max_concurrency", "lora_resident", "max_loras", "loras_active",
)  # fmt: skip
_GPU_FIGURES = ("vram_used_frac", "gpu_utilization", "thermal_margin_c")

Listener = Callable[[list[str], list[str]], None]  # (changed ids, removed ids)


class Fusion:
    """Fused state of the local node's targets and GPUs (and, via gossip, remote summaries)."""

    def __init__(
        self,
        node_id: str,
        *,
        zone: str = "",
        config: FusionConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.zone = zone
        self.config = config or FusionConfig()
        self.clock = clock
        self.targets: dict[str, TargetRecord] = {}
        self.gpus: dict[str, _Gpu] = {}
        self.comm: dict[tuple[str, str, str], _Comm] = {}
        self.gpu_inventory: set[str] | None = None  # set when a local GPU source defines what exists
        self.routable_node = True  # False while the node is cordoned or draining
        self.node_state_reason = ""
        self.version = 0
        self._listeners: list[Listener] = []

    # -- listeners -----------------------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self, changed: list[str], removed: list[str]) -> None:
        if not changed and not removed:
            return
        self.version += 1
        for listener in list(self._listeners):
            listener(changed, removed)

    # -- ingest: runtime -----------------------------------------------------------------------------------------
    def ingest_model(
        self,
        d: state_pb2.ModelStateDelta,
        *,
        now: float | None = None,
        remote: bool = False,
        remote_zone: str = "",
        remote_gpu: tuple[float | None, float | None, float | None] | None = None,
        remote_gpu_type: str = "",
    ) -> IngestResult:
        """Fold one runtime report in. Adapters push local state only; `remote=True` is for summaries of other
        nodes' targets learnt through membership (gossip), which must name their node."""
        now = self.clock() if now is None else now
        rej: list[Rejection] = []
        node = d.node or self.node_id
        if remote and not d.node:
            return _refuse("model", "node", "identity", "required for a remote target")
        if not d.model or len(d.model) > _MAX_NAME:
            return _refuse("model", "model", "identity", "required, at most 256 characters")
        if not d.endpoint or len(d.endpoint) > _MAX_NAME:
            return _refuse("model", "endpoint", "identity", "required (the runtime's base URL), at most 256 characters")
        if node != self.node_id and not remote:
            return _refuse("model", "node", "identity", f"{node!r} is not this agent's node {self.node_id!r}")
        observed = self._observed(d.observed_unix_ms, now, "model", rej)
        if observed is None:
            return IngestResult(False, rej)
        fields: dict[str, float] = {}
        for name in ("requests_waiting", "requests_running", "tokens_per_s", "prompt_tokens_per_s"):
            _take(d, name, fields, rej, "model", upper=None)
        _take(d, "kv_cache_usage", fields, rej, "model", upper=1.0)
        _take(d, "ttft_p95_s", fields, rej, "model", upper=3600.0)
        _take(d, "latency_p95_s", fields, rej, "model", upper=86400.0)
        _take(d, "cost_per_mtok", fields, rej, "model", upper=None)
        max_conc: int | None = None
        if d.HasField("max_concurrency"):
            if d.max_concurrency <= 0:
                rej.append(Rejection("model", "max_concurrency", "range", f"{d.max_concurrency} must be > 0"))
            else:
                max_conc = int(d.max_concurrency)
        lora: dict[str, int] = {}
        for name in ("max_loras", "loras_active"):
            if d.HasField(name):
                if getattr(d, name) < 0:
                    rej.append(Rejection("model", name, "range", f"{getattr(d, name)} must be >= 0"))
                else:
                    lora[name] = int(getattr(d, name))
        if len(d.parent) > _MAX_NAME:
            return _refuse("model", "parent", "identity", "at most 256 characters")
        gpus = self._known_gpus(d.gpu_uuids, rej) if not remote else ()

        tid = target_id_for(d.model, d.revision, node, d.endpoint)
        rec = self.targets.get(tid)
        if rec is None:
            rec = self.targets[tid] = TargetRecord(
                tid, d.model, d.revision, node, d.endpoint, zone=self.zone if not remote else ""
            )
        rec.runtime = d.runtime or rec.runtime
        rec.quant = d.quant or rec.quant
        rec.mig_profile = d.mig_profile or rec.mig_profile
        rec.parent = d.parent
        if d.gpu_uuids:
            rec.gpu_uuids = gpus if not remote else tuple(d.gpu_uuids)  # remote GPUs are not in our inventory
        if remote:  # what only the target's own node knows, as it published it (see ingest_remote)
            rec.zone, rec.remote_gpu, rec.gpu_type = remote_zone, remote_gpu, remote_gpu_type
        if "cost_per_mtok" in fields:
            rec.cost_per_mtok = fields.pop("cost_per_mtok")
        # Each delta is a full report from its runtime: a series it does not carry is unknown now, not the old value.
        sig = _Runtime(
            requests_waiting=fields.get("requests_waiting"),
            requests_running=fields.get("requests_running"),
            kv_cache_usage=fields.get("kv_cache_usage"),
            tokens_per_s=fields.get("tokens_per_s"),
            prompt_tokens_per_s=fields.get("prompt_tokens_per_s"),
            ttft_p95_s=fields.get("ttft_p95_s"),
            latency_p95_s=fields.get("latency_p95_s"),
            max_concurrency=max_conc,
            loaded=d.loaded if d.HasField("loaded") else True,
            warming=d.warming if d.HasField("warming") else False,
            healthy=d.healthy if d.HasField("healthy") else True,
            lora_resident=d.lora_resident if d.HasField("lora_resident") else None,
            max_loras=lora.get("max_loras"),
            loras_active=lora.get("loras_active"),
        )
        rec.signals = sig
        rec.observed_at = max(rec.observed_at, observed)
        rec.down_reason = ""
        self._update_service_rate(rec)
        rec.version += 1
        self._evaluate(rec, now)
        self._notify([tid], [])
        return IngestResult(True, rej, tid)

    def ingest_remote(self, t: state_pb2.TargetState, *, now: float | None = None) -> IngestResult:
        """Another node's fused target, from its gossip summary, through the same checks as a pushed delta; its
        zone and its GPUs' figures (which only its own node reads) are kept as that node published them."""
        d = state_pb2.ModelStateDelta(
            node=t.node, endpoint=t.endpoint, runtime=t.runtime, model=t.model, revision=t.revision,
            quant=t.quant, gpu_uuids=list(t.gpu_uuids), mig_profile=t.mig_profile, loaded=t.loaded,
            warming=t.warming, healthy=t.health != state_pb2.TARGET_HEALTH_UNHEALTHY,
            cost_per_mtok=t.cost_per_mtok, parent=t.parent, source="gossip",
        )  # fmt: skip
        for name in _REMOTE_FIELDS:
            if t.HasField(name):
                setattr(d, name, getattr(t, name))
        vram, util, margin = (getattr(t, name) if t.HasField(name) else None for name in _GPU_FIGURES)
        return self.ingest_model(
            d, now=now, remote=True, remote_zone=t.zone, remote_gpu=(vram, util, margin), remote_gpu_type=t.gpu_type
        )

    def ingest_model_state(
        self,
        state: ModelState,
        *,
        gpu_uuids: Iterable[str] = (),
        mig_profile: str = "",
        cost_per_mtok: float | None = None,
        now: float | None = None,
    ) -> IngestResult:
        """Fold a record from an in-process adapter through the same validation as a pushed delta."""
        return self.ingest_model(
            model_delta_from_state(
                state, gpu_uuids=gpu_uuids, mig_profile=mig_profile, cost_per_mtok=cost_per_mtok, source="scrape"
            ),
            now=now,
        )

    def mark_endpoint_down(self, endpoint: str, reason: str, *, now: float | None = None) -> list[str]:
        """The runtime at `endpoint` cannot be reached: its targets become unhealthy at once."""
        now = self.clock() if now is None else now
        changed = []
        for rec in self.targets.values():
            if rec.endpoint == endpoint and rec.down_reason != reason:
                rec.down_reason = reason
                rec.version += 1
                self._evaluate(rec, now)
                changed.append(rec.target_id)
        self._notify(changed, [])
        return changed

    def retain_endpoint(self, endpoint: str, present: set[str]) -> list[str]:
        """After a full scrape: drop the endpoint's targets the runtime no longer serves."""
        gone = [t for t, rec in self.targets.items() if rec.endpoint == endpoint and t not in present]
        for tid in gone:
            del self.targets[tid]
        self._notify([], gone)
        return gone

    # -- ingest: GPU ---------------------------------------------------------------------------------------------
    def set_gpu_inventory(self, uuids: Iterable[str] | None) -> None:
        """Declare the node's GPUs (from the local GPU source); deltas for others are then refused."""
        self.gpu_inventory = set(uuids) if uuids is not None else None

    def ingest_gpu(self, d: state_pb2.GpuStateDelta, *, now: float | None = None) -> IngestResult:
        now = self.clock() if now is None else now
        rej: list[Rejection] = []
        node = d.node or self.node_id
        if not d.uuid or len(d.uuid) > _MAX_NAME:
            return _refuse("gpu", "uuid", "identity", "required, at most 256 characters")
        if node != self.node_id:
            return _refuse("gpu", "node", "identity", f"{node!r} is not this agent's node {self.node_id!r}")
        if self.gpu_inventory is not None and d.uuid not in self.gpu_inventory:
            return _refuse("gpu", "uuid", "unknown_gpu", f"unknown GPU {d.uuid!r} (not in this node's inventory)")
        observed = self._observed(d.observed_unix_ms, now, "gpu", rej)
        if observed is None:
            return IngestResult(False, rej)
        clean = state_pb2.GpuStateDelta()
        clean.CopyFrom(d)
        clean.node = node
        for name, upper in (
            ("utilization_gpu", 100.0),
            ("utilization_memory", 100.0),
            ("temperature_c", 200.0),
            ("slowdown_temp_c", 200.0),
            ("power_w", None),
            ("power_limit_w", None),
            ("sm_clock_mhz", 10_000.0),
        ):
            if clean.HasField(name):
                problem = _bad_number(getattr(clean, name), upper)
                if problem:
                    rej.append(Rejection("gpu", name, problem[0], problem[1]))
                    clean.ClearField(name)
        for name in (
            "memory_total_bytes",
            "memory_used_bytes",
            "ecc_corrected_volatile",
            "ecc_uncorrected_volatile",
            "ecc_corrected_aggregate",
            "ecc_uncorrected_aggregate",
            "retired_pages",
            "remapped_rows_uncorrectable",
            "pcie_replays",
            "nvlink_errors",
        ):
            if clean.HasField(name) and getattr(clean, name) < 0:
                rej.append(Rejection("gpu", name, "negative", f"{getattr(clean, name)} must be >= 0"))
                clean.ClearField(name)
        if (
            clean.HasField("memory_used_bytes")
            and clean.HasField("memory_total_bytes")
            and clean.memory_used_bytes > clean.memory_total_bytes
        ):
            rej.append(Rejection("gpu", "memory_used_bytes", "range", "exceeds memory_total_bytes"))
            clean.ClearField("memory_used_bytes")
        healthy, reason = gpu_health(clean)
        prev = self.gpus.get(d.uuid)
        held_until = prev.held_until if prev is not None else 0.0
        if not healthy and reason.startswith("xid"):
            held_until = now + self.config.xid_hold_s
        elif healthy and prev is not None and now < held_until:
            healthy, reason = False, prev.reason
        self.gpus[d.uuid] = _Gpu(clean, observed, healthy, reason, held_until)
        changed = [rec.target_id for rec in self.targets.values() if d.uuid in rec.gpu_uuids]
        for tid in changed:
            rec = self.targets[tid]
            rec.version += 1
            self._evaluate(rec, now)
        if prev is None or changed:
            self._notify(changed, [])
        return IngestResult(True, rej)

    def ingest_gpu_state(self, state: GpuState, *, now: float | None = None) -> IngestResult:
        return self.ingest_gpu(gpu_delta_from_state(state, source="gpu-source"), now=now)

    # -- ingest: comm --------------------------------------------------------------------------------------------
    def ingest_comm(self, d: state_pb2.CommStatsDelta, *, now: float | None = None) -> IngestResult:
        now = self.clock() if now is None else now
        node = d.node or self.node_id
        if not d.job_id or len(d.job_id) > _MAX_NAME:
            return _refuse("comm", "job_id", "identity", "required, at most 256 characters")
        if not d.collective:
            return _refuse("comm", "collective", "identity", "required")
        if node != self.node_id:
            return _refuse("comm", "node", "identity", f"{node!r} is not this agent's node {self.node_id!r}")
        if d.n_ranks < 1:
            return _refuse("comm", "n_ranks", "range", f"{d.n_ranks} must be >= 1")
        if not 0 <= d.rank < d.n_ranks:
            return _refuse("comm", "rank", "range", f"{d.rank} must be in 0..n_ranks-1 ({d.n_ranks - 1})")
        if d.bytes < 0:
            return _refuse("comm", "bytes", "negative", f"{d.bytes} must be >= 0")
        problem = _bad_number(d.time_s, None)
        if problem or d.time_s <= 0:
            reason, msg = problem or ("range", f"{d.time_s} must be > 0")
            return _refuse("comm", "time_s", reason, msg)
        rej: list[Rejection] = []
        observed = self._observed(d.observed_unix_ms, now, "comm", rej)
        if observed is None:
            return IngestResult(False, rej)
        stats = CommStats(d.job_id, d.rank, d.collective, d.bytes, d.time_s, d.n_ranks, d.algorithm)
        key = (d.job_id, d.collective, d.algorithm)
        entry = self.comm.get(key)
        a = self.config.ewma_alpha
        if entry is None:
            summary = state_pb2.CommSummary(
                job_id=d.job_id,
                collective=d.collective,
                algorithm=d.algorithm,
                count=1,
                ewma_time_s=d.time_s,
                ewma_algbw_gbps=stats.algbw_gbps,
                ewma_busbw_gbps=stats.busbw_gbps,
                last_step=d.step if d.HasField("step") else 0,
                n_ranks=d.n_ranks,
            )
            self.comm[key] = _Comm(summary, observed)
        else:
            s = entry.summary
            s.count += 1
            s.ewma_time_s = _ewma(s.ewma_time_s, d.time_s, a)
            s.ewma_algbw_gbps = _ewma(s.ewma_algbw_gbps, stats.algbw_gbps, a)
            s.ewma_busbw_gbps = _ewma(s.ewma_busbw_gbps, stats.busbw_gbps, a)
            if d.HasField("step"):
                s.last_step = max(s.last_step, d.step)
            s.n_ranks = d.n_ranks
            entry.observed_at = observed
        return IngestResult(True, rej)

    def ingest_comm_stats(self, stats: CommStats, *, now: float | None = None) -> IngestResult:
        return self.ingest_comm(comm_delta_from_stats(stats, source="comm"), now=now)

    # -- outcomes ------------------------------------------------------------------------------------------------
    def record_outcome(self, r: scoring_pb2.OutcomeReport, *, now: float | None = None) -> IngestResult:
        now = self.clock() if now is None else now
        rec = self.targets.get(r.target_id)
        if rec is None:
            return _refuse("outcome", "target_id", "unknown_target", f"unknown target {r.target_id!r}")
        for name in ("ttft_s", "latency_s"):
            problem = _bad_number(getattr(r, name), 86400.0)
            if problem:
                return _refuse("outcome", name, problem[0], problem[1])
        if r.cancelled:
            return IngestResult(True, [], rec.target_id)  # a lost hedge says nothing about the target
        a = self.config.ewma_alpha
        rec.error_rate = _ewma(rec.error_rate, 0.0 if r.ok else 1.0, a)
        if r.ok:
            rec.outcomes_ok += 1
            if r.latency_s > 0:
                rec.ewma_latency_s = _ewma_first(rec.ewma_latency_s, r.latency_s, a)
            if r.ttft_s > 0:
                rec.ewma_ttft_s = _ewma_first(rec.ewma_ttft_s, r.ttft_s, a)
            if r.completion_tokens > 0:
                rec.ewma_completion_tokens = _ewma_first(rec.ewma_completion_tokens, float(r.completion_tokens), a)
        else:
            rec.outcomes_error += 1
        self._update_service_rate(rec)
        rec.version += 1
        self._evaluate(rec, now)
        self._notify([rec.target_id], [])
        return IngestResult(True, [], rec.target_id)

    # -- node state ----------------------------------------------------------------------------------------------
    def set_node_routable(self, routable: bool, reason: str = "", *, now: float | None = None) -> None:
        """Cordon / drain: the node's targets stay known but take no new work."""
        now = self.clock() if now is None else now
        if routable == self.routable_node and reason == self.node_state_reason:
            return
        self.routable_node = routable
        self.node_state_reason = reason
        changed = []
        for rec in self.targets.values():
            rec.version += 1
            self._evaluate(rec, now)
            changed.append(rec.target_id)
        self._notify(changed, [])

    # -- ageing --------------------------------------------------------------------------------------------------
    def tick(self, *, now: float | None = None) -> tuple[list[str], list[str]]:
        """Re-age every target: publish changes of health or freshness, drop expired ones."""
        now = self.clock() if now is None else now
        changed: list[str] = []
        removed: list[str] = []
        for tid, rec in list(self.targets.items()):
            if now - rec.observed_at > self.config.expire_s:
                del self.targets[tid]
                removed.append(tid)
            elif self._evaluate(rec, now):
                rec.version += 1
                changed.append(tid)
        for uuid, gpu in list(self.gpus.items()):
            if now - gpu.observed_at > self.config.expire_s:
                del self.gpus[uuid]
        for key, comm in list(self.comm.items()):
            if now - comm.observed_at > self.config.expire_s:
                del self.comm[key]
        self._notify(changed, removed)
        return changed, removed

    # -- derived values ------------------------------------------------------------------------------------------
    def freshness(self, observed_at: float, now: float) -> float:
        age = max(0.0, now - observed_at)
        c = self.config
        if age <= c.fresh_s:
            return 1.0
        if age >= c.stale_s:
            return 0.0
        return 1.0 - (age - c.fresh_s) / (c.stale_s - c.fresh_s)

    def _evaluate(self, rec: TargetRecord, now: float) -> bool:
        """Recompute health; True when health or the freshness bucket changed (worth telling watchers)."""
        fresh = self.freshness(rec.observed_at, now)
        health, reason = HEALTHY, ""
        if rec.down_reason:
            health, reason = UNHEALTHY, rec.down_reason
        elif not rec.signals.healthy and fresh > 0:
            health, reason = UNHEALTHY, "runtime reports unhealthy"
        else:
            for uuid in rec.gpu_uuids:
                gpu = self.gpus.get(uuid)
                if gpu is not None and not gpu.healthy and self.freshness(gpu.observed_at, now) > 0:
                    health, reason = UNHEALTHY, f"gpu {uuid}: {gpu.reason}"
                    break
            else:
                if fresh == 0.0:
                    health, reason = UNKNOWN, f"no runtime signal for {now - rec.observed_at:.0f}s"
        bucket = int(fresh * 10)
        changed = health != rec.health or reason != rec.health_reason or bucket != rec.freshness_bucket
        rec.health, rec.health_reason, rec.freshness_bucket = health, reason, bucket
        return changed

    def _update_service_rate(self, rec: TargetRecord) -> None:
        sig = rec.signals
        latency = rec.ewma_latency_s or sig.latency_p95_s or 0.0
        rate = 0.0
        if latency > 0:
            # Little's law: completions/s = requests in service / time in service.
            in_service = max(sig.requests_running or 0.0, 1.0)
            rate = in_service / latency
        elif sig.tokens_per_s:
            tokens = rec.ewma_completion_tokens or self.config.default_completion_tokens
            rate = sig.tokens_per_s / tokens
        if rate > 0:
            rec.service_rate_rps = _ewma_first(rec.service_rate_rps, rate, self.config.ewma_alpha)

    def work_left_s(self, rec: TargetRecord) -> float:
        sig = rec.signals
        if rec.service_rate_rps <= 0:
            return 0.0
        return ((sig.requests_waiting or 0.0) + (sig.requests_running or 0.0)) / rec.service_rate_rps

    def _target_gpu_values(self, rec: TargetRecord, now: float) -> tuple[float | None, float | None, float | None]:
        if rec.node != self.node_id:  # a remote target: its node's figures, as fresh as its runtime's signals
            if rec.remote_gpu is None or self.freshness(rec.observed_at, now) == 0.0:
                return None, None, None
            return rec.remote_gpu
        vram: float | None = None
        util: float | None = None
        margin: float | None = None
        for uuid in rec.gpu_uuids:
            gpu = self.gpus.get(uuid)
            if gpu is None or self.freshness(gpu.observed_at, now) == 0.0:
                continue
            g = gpu.delta
            if g.HasField("memory_used_bytes") and g.HasField("memory_total_bytes") and g.memory_total_bytes > 0:
                frac = g.memory_used_bytes / g.memory_total_bytes
                vram = frac if vram is None else max(vram, frac)
            if g.HasField("utilization_gpu"):
                util = g.utilization_gpu if util is None else max(util, g.utilization_gpu)
            if g.HasField("temperature_c") and g.HasField("slowdown_temp_c"):
                m = g.slowdown_temp_c - g.temperature_c
                margin = m if margin is None else min(margin, m)
        return vram, util, margin

    def routable(self, rec: TargetRecord) -> bool:
        # cordon / drain is about this node; remote targets follow their own node's state
        node_ok = self.routable_node or rec.node != self.node_id
        return rec.health != UNHEALTHY and rec.signals.loaded and node_ok

    def gpu_type(self, rec: TargetRecord) -> str:
        """The family of a target's GPUs: a remote target's as its node published it, a local one's from the
        product name of its first GPU in the inventory ('' when unknown)."""
        if rec.remote_gpu is not None:
            return rec.gpu_type
        for uuid in rec.gpu_uuids:
            gpu = self.gpus.get(uuid)
            if gpu is not None and gpu.delta.name:
                return gpu_type_of(gpu.delta.name)
        return ""

    def to_proto(self, rec: TargetRecord, now: float | None = None) -> state_pb2.TargetState:
        now = self.clock() if now is None else now
        fresh = self.freshness(rec.observed_at, now)
        sig = rec.signals
        msg = state_pb2.TargetState(
            target_id=rec.target_id,
            model=rec.model,
            revision=rec.revision,
            quant=rec.quant,
            runtime=rec.runtime,
            node=rec.node,
            zone=rec.zone,
            endpoint=rec.endpoint,
            gpu_uuids=list(rec.gpu_uuids),
            mig_profile=rec.mig_profile,
            gpu_type=self.gpu_type(rec),
            parent=rec.parent,
            health={HEALTHY: 1, UNHEALTHY: 2}.get(rec.health, 0),  # type: ignore[arg-type]
            health_reason=rec.health_reason or (self.node_state_reason if rec.node == self.node_id else ""),
            routable=self.routable(rec),
            loaded=sig.loaded,
            warming=sig.warming,
            freshness=fresh,
            age_s=max(0.0, now - rec.observed_at),
            service_rate_rps=rec.service_rate_rps,
            work_left_s=self.work_left_s(rec) if fresh > 0 else 0.0,
            ewma_latency_s=rec.ewma_latency_s,
            ewma_ttft_s=rec.ewma_ttft_s,
            error_rate=rec.error_rate,
            outcomes_ok=rec.outcomes_ok,
            outcomes_error=rec.outcomes_error,
            cost_per_mtok=rec.cost_per_mtok,
            updated_unix_ms=int(rec.observed_at * 1000),
            version=rec.version,
        )
        if fresh > 0:  # stale values decay to unknown: they are left unset rather than trusted
            for name in (
                "requests_waiting",
                "requests_running",
                "kv_cache_usage",
                "tokens_per_s",
                "ttft_p95_s",
                "latency_p95_s",
                "max_concurrency",
                "lora_resident",
                "max_loras",
                "loras_active",
            ):
                value = getattr(sig, name)
                if value is not None:
                    setattr(msg, name, value)
        vram, util, margin = self._target_gpu_values(rec, now)
        if vram is not None:
            msg.vram_used_frac = vram
        if util is not None:
            msg.gpu_utilization = util
        if margin is not None:
            msg.thermal_margin_c = margin
        return msg

    def to_view(self, rec: TargetRecord, now: float | None = None) -> TargetView:
        return TargetView.from_proto(self.to_proto(rec, now))

    def fused_gpu(self, uuid: str, now: float | None = None) -> state_pb2.FusedGpu:
        now = self.clock() if now is None else now
        gpu = self.gpus[uuid]
        return state_pb2.FusedGpu(
            gpu=gpu.delta,
            healthy=gpu.healthy,
            health_reason=gpu.reason,
            freshness=self.freshness(gpu.observed_at, now),
            age_s=max(0.0, now - gpu.observed_at),
        )

    # -- helpers -------------------------------------------------------------------------------------------------
    def _observed(self, unix_ms: int, now: float, kind: str, rej: list[Rejection]) -> float | None:
        if unix_ms == 0:
            return now
        t = unix_ms / 1000.0
        if t > now + self.config.max_future_s:
            rej.append(Rejection(kind, "observed_unix_ms", "future", f"{t - now:.0f}s in the future"))
            return None
        if t < now - self.config.stale_s:
            rej.append(Rejection(kind, "observed_unix_ms", "stale", f"{now - t:.0f}s old, past the stale horizon"))
            return None
        return min(t, now)

    def _known_gpus(self, uuids: Iterable[str], rej: list[Rejection]) -> tuple[str, ...]:
        out = []
        for uuid in uuids:
            known = uuid in self.gpu_inventory if self.gpu_inventory is not None else True
            if known:
                out.append(uuid)
            else:
                rej.append(Rejection("model", "gpu_uuids", "unknown_gpu", f"unknown GPU {uuid!r} ignored"))
        return tuple(out)


def gpu_health(g: state_pb2.GpuStateDelta) -> tuple[bool, str]:
    """Whether work may run on a GPU, from its latest reading; the reason names the failing signal."""
    if g.HasField("ecc_uncorrected_volatile") and g.ecc_uncorrected_volatile > 0:
        return False, f"{g.ecc_uncorrected_volatile} uncorrectable ECC errors"
    critical = sorted(set(g.xid_events) & CRITICAL_XIDS)
    if critical:
        return False, "xid " + ",".join(str(x) for x in critical)
    if g.HasField("remapped_rows_pending") and g.remapped_rows_pending:
        return False, "row remapping pending (reset needed)"
    return True, ""


def _refuse(kind: str, field_name: str, reason: str, message: str) -> IngestResult:
    return IngestResult(False, [Rejection(kind, field_name, reason, message)])


def _bad_number(value: float, upper: float | None) -> tuple[str, str] | None:
    if math.isnan(value):
        return "nan", "NaN is not a value"
    if math.isinf(value):
        return "nan", "infinity is not a value"
    if value < 0:
        return "negative", f"{value} must be >= 0"
    if upper is not None and value > upper:
        return "range", f"{value} exceeds {upper}"
    return None


def _take(
    d: state_pb2.ModelStateDelta,
    name: str,
    out: dict[str, float],
    rej: list[Rejection],
    kind: str,
    upper: float | None,
) -> None:
    if not d.HasField(name):
        return
    value = float(getattr(d, name))
    problem = _bad_number(value, upper)
    if problem:
        rej.append(Rejection(kind, name, problem[0], problem[1]))
    else:
        out[name] = value


def _ewma(old: float, new: float, alpha: float) -> float:
    return old + alpha * (new - old)


def _ewma_first(old: float, new: float, alpha: float) -> float:
    """EWMA that takes the first sample as is (0 marks 'no estimate yet')."""
    return new if old <= 0 else old + alpha * (new - old)


# -- record <-> protobuf -----------------------------------------------------------------------------------------
def model_delta_from_state(
    s: ModelState,
    *,
    node: str = "",
    gpu_uuids: Iterable[str] = (),
    mig_profile: str = "",
    cost_per_mtok: float | None = None,
    observed_unix_ms: int = 0,
    source: str = "",
) -> state_pb2.ModelStateDelta:
    d = state_pb2.ModelStateDelta(
        node=node,
        endpoint=s.endpoint,
        runtime=s.runtime,
        model=s.model,
        revision=s.revision,
        quant=s.quant,
        gpu_uuids=list(gpu_uuids),
        mig_profile=mig_profile,
        parent=s.parent,
        loaded=s.loaded,
        warming=s.warming,
        healthy=s.healthy,
        observed_unix_ms=observed_unix_ms,
        source=source,
    )
    for name in (
        "requests_waiting",
        "requests_running",
        "kv_cache_usage",
        "tokens_per_s",
        "prompt_tokens_per_s",
        "ttft_p95_s",
        "latency_p95_s",
    ):
        value = getattr(s, name)
        if value is not None:
            setattr(d, name, float(value))
    if s.max_concurrency is not None:
        d.max_concurrency = int(s.max_concurrency)
    if s.lora_resident is not None:
        d.lora_resident = s.lora_resident
    for name in ("max_loras", "loras_active"):
        if getattr(s, name) is not None:
            setattr(d, name, int(getattr(s, name)))
    if cost_per_mtok is not None:
        d.cost_per_mtok = cost_per_mtok
    return d


def gpu_delta_from_state(
    g: GpuState, *, node: str = "", observed_unix_ms: int = 0, source: str = ""
) -> state_pb2.GpuStateDelta:
    d = state_pb2.GpuStateDelta(
        node=node,
        uuid=g.uuid,
        index=g.index,
        name=g.name,
        mig_profile=g.mig_profile,
        parent_uuid=g.parent_uuid,
        throttle_reasons=list(g.throttle_reasons),
        xid_events=list(g.xid_events),
        observed_unix_ms=observed_unix_ms,
        source=source,
    )
    for name in (
        "memory_total_bytes",
        "memory_used_bytes",
        "utilization_gpu",
        "utilization_memory",
        "temperature_c",
        "slowdown_temp_c",
        "power_w",
        "power_limit_w",
        "sm_clock_mhz",
        "ecc_corrected_volatile",
        "ecc_uncorrected_volatile",
        "ecc_corrected_aggregate",
        "ecc_uncorrected_aggregate",
        "retired_pages",
        "remapped_rows_uncorrectable",
        "remapped_rows_pending",
        "pcie_replays",
        "nvlink_errors",
    ):
        value = getattr(g, name)
        if value is not None:
            setattr(d, name, value)
    return d


def comm_delta_from_stats(c: CommStats, *, node: str = "", source: str = "") -> state_pb2.CommStatsDelta:
    d = state_pb2.CommStatsDelta(
        node=node,
        job_id=c.job_id,
        rank=c.rank,
        collective=c.collective,
        bytes=c.bytes,
        time_s=c.time_s,
        n_ranks=c.n_ranks,
        algorithm=c.algorithm,
        source=source,
    )
    if c.bucket_id is not None:
        d.bucket_id = c.bucket_id
    if c.step is not None:
        d.step = c.step
    return d
