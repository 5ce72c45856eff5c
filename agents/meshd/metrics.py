"""Prometheus metrics of the agent, on a registry of its own (several agents can live in one test process).

Per-target and per-GPU gauges are produced at scrape time from fused state, with the seed's label schema, so a
removed target never leaves a stale series behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agents.signals.fusion import Fusion

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

TARGET_LABELS = ["model", "revision", "quant", "runtime", "node", "gpu_uuid", "mig_profile", "zone"]
GPU_LABELS = ["node", "gpu_uuid", "mig_profile", "zone"]


class FusionCollector(Collector):
    def __init__(self, fusion: Fusion) -> None:
        self.fusion = fusion

    def collect(self) -> Iterator[Metric]:
        f = self.fusion
        now = f.clock()
        families = {
            name: GaugeMetricFamily(f"meshd_target_{name}", help_, labels=[*TARGET_LABELS, "target_id"])
            for name, help_ in (
                ("requests_waiting", "Requests waiting in the runtime's queue"),
                ("requests_running", "Requests being served"),
                ("kv_cache_usage", "KV-cache use, fraction 0..1"),
                ("freshness", "Trust in the latest runtime signal, 1 fresh .. 0 stale"),
                ("healthy", "1 healthy, 0 unknown, -1 unhealthy"),
                ("routable", "1 when the target takes new work"),
                ("work_left_seconds", "Estimated time to drain the target's queue and running requests"),
                ("ewma_latency_seconds", "EWMA of reported request latency"),
            )
        }
        for rec in list(f.targets.values()):
            msg = f.to_proto(rec, now)
            labels = [
                rec.model,
                rec.revision,
                rec.quant,
                rec.runtime,
                rec.node,
                ",".join(rec.gpu_uuids),
                rec.mig_profile,
                rec.zone,
                rec.target_id,
            ]
            if msg.HasField("requests_waiting"):
                families["requests_waiting"].add_metric(labels, msg.requests_waiting)
            if msg.HasField("requests_running"):
                families["requests_running"].add_metric(labels, msg.requests_running)
            if msg.HasField("kv_cache_usage"):
                families["kv_cache_usage"].add_metric(labels, msg.kv_cache_usage)
            families["freshness"].add_metric(labels, msg.freshness)
            families["healthy"].add_metric(labels, {1: 1.0, 2: -1.0}.get(int(msg.health), 0.0))
            families["routable"].add_metric(labels, 1.0 if msg.routable else 0.0)
            families["work_left_seconds"].add_metric(labels, msg.work_left_s)
            families["ewma_latency_seconds"].add_metric(labels, msg.ewma_latency_s)
        yield from families.values()
        gpu_util = GaugeMetricFamily("meshd_gpu_utilization_percent", "GPU utilization", labels=GPU_LABELS)
        gpu_mem = GaugeMetricFamily("meshd_gpu_memory_used_bytes", "GPU memory in use", labels=GPU_LABELS)
        gpu_temp = GaugeMetricFamily("meshd_gpu_temperature_celsius", "GPU temperature", labels=GPU_LABELS)
        gpu_ok = GaugeMetricFamily("meshd_gpu_healthy", "1 when the GPU may take work", labels=GPU_LABELS)
        for uuid, gpu in list(f.gpus.items()):
            g = gpu.delta
            labels = [g.node or f.node_id, uuid, g.mig_profile, f.zone]
            if g.HasField("utilization_gpu"):
                gpu_util.add_metric(labels, g.utilization_gpu)
            if g.HasField("memory_used_bytes"):
                gpu_mem.add_metric(labels, float(g.memory_used_bytes))
            if g.HasField("temperature_c"):
                gpu_temp.add_metric(labels, g.temperature_c)
            gpu_ok.add_metric(labels, 1.0 if gpu.healthy else 0.0)
        yield from (gpu_util, gpu_mem, gpu_temp, gpu_ok)


class AgentMetrics:
    def __init__(self, fusion: Fusion, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.deltas = Counter("meshd_deltas", "Deltas received", ["kind", "result"], registry=r)
        self.rejections = Counter(
            "meshd_rejections", "Deltas or fields refused, by field and reason", ["kind", "field", "reason"], registry=r
        )
        self.scrapes = Counter("meshd_scrapes", "Runtime scrapes", ["endpoint", "result"], registry=r)
        self.scrape_seconds = Histogram(
            "meshd_scrape_duration_seconds",
            "Time to scrape and parse a runtime's /metrics",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.gpu_polls = Counter("meshd_gpu_polls", "GPU source reads", ["result"], registry=r)
        self.decisions = Histogram(
            "meshd_decision_seconds",
            "Strategy decision time",
            ["strategy"],
            buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.01),
            registry=r,
        )
        self.fallbacks = Counter(
            "meshd_strategy_fallbacks", "Decisions answered by baseline_rr instead", ["reason"], registry=r
        )
        self.outcomes = Counter("meshd_outcomes", "Reported request outcomes", ["result"], registry=r)
        self.admissions = Counter("meshd_admissions", "Admit answers", ["result"], registry=r)
        self.draining = Gauge("meshd_node_draining", "1 while the node is draining or cordoned", registry=r)
        self.watchers = Gauge("meshd_target_watchers", "Open WatchTargets streams", registry=r)
        r.register(FusionCollector(fusion))
