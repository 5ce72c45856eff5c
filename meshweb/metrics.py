"""The portal's /metrics: django_prometheus' request and database series plus the mesh's state as the database holds
it (outbox head and each node's acknowledged version, node status and heartbeat age, portal links, training jobs).

The state series are read from PostgreSQL at scrape time, so every worker process answers the same and nothing is kept
in step. Their labels are bounded by the fleet and the tenants: node and zone (one series per registered node),
status (the closed sets of NodeStatus and JobStatus), tenant (one per tenant), job_id (active jobs only)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import prometheus_client
from django.db.models import Count, Sum
from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


class MeshStateCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        from meshweb.fleet.models import Node, NodeStatus
        from meshweb.meshlink.models import OutboxCounter
        from meshweb.training.models import ACTIVE, JobStatus, TrainingJob

        now = time.time()
        head_row = OutboxCounter.objects.filter(id=1).values_list("version", flat=True).first()
        head = float(head_row or 0)
        g_head = GaugeMetricFamily("infermesh_outbox_head_version", "Last version appended to the outbox")
        g_head.add_metric([], head)
        yield g_head

        nodes = list(
            Node.objects.select_related("zone", "link").values_list(
                "name", "zone__name", "status", "last_heartbeat_at", "link__connected", "link__acked_version"
            )
        )
        acked = GaugeMetricFamily(
            "infermesh_outbox_acked_version", "Outbox version the node's agent acknowledged", labels=["node", "zone"]
        )
        lag = GaugeMetricFamily(
            "infermesh_outbox_lag_versions", "Outbox versions not yet acknowledged by the node", labels=["node", "zone"]
        )
        linked = GaugeMetricFamily(
            "infermesh_portal_link_connected", "1 while the node's agent holds its portal link", labels=["node", "zone"]
        )
        status = GaugeMetricFamily(
            "infermesh_node_status", "1 for the node's current status", labels=["node", "zone", "status"]
        )
        age = GaugeMetricFamily(
            "infermesh_node_heartbeat_age_seconds",
            "Seconds since the node's agent last reported (absent before its first report)",
            labels=["node", "zone"],
        )
        for name, zone, st, beat, connected, acked_v in nodes:
            acked.add_metric([name, zone], float(acked_v or 0))
            lag.add_metric([name, zone], max(0.0, head - float(acked_v or 0)))
            linked.add_metric([name, zone], 1.0 if connected else 0.0)
            for s in NodeStatus.values:
                status.add_metric([name, zone, s], 1.0 if st == s else 0.0)
            if beat is not None:
                age.add_metric([name, zone], max(0.0, now - beat.timestamp()))
        yield from (acked, lag, linked, status, age)

        jobs = GaugeMetricFamily("infermesh_training_jobs", "Training jobs by status", labels=["tenant", "status"])
        counts = {
            (t, s): n
            for t, s, n in TrainingJob.objects.values_list("tenant__slug", "status")
            .annotate(n=Count("id"))
            .values_list("tenant__slug", "status", "n")
        }
        for tenant in sorted({t for t, _ in counts}):
            for s in JobStatus.values:
                jobs.add_metric([tenant, s], float(counts.get((tenant, s), 0)))
        yield jobs
        charged = CounterMetricFamily(
            "infermesh_training_gpu_seconds_charged",
            "GPU-seconds charged to the tenant by its finished jobs",
            labels=["tenant"],
        )
        for tenant, total in (
            TrainingJob.objects.values_list("tenant__slug")
            .annotate(s=Sum("gpu_seconds_charged"))
            .values_list("tenant__slug", "s")
        ):
            charged.add_metric([tenant], float(total or 0.0))
        yield charged
        gpus = GaugeMetricFamily(
            "infermesh_training_job_gpus", "GPUs an active job holds or asks for", labels=["tenant", "job_id", "status"]
        )
        for job_id, tenant, st, workers, per in TrainingJob.objects.filter(status__in=ACTIVE).values_list(
            "id", "tenant__slug", "status", "workers", "gpus_per_worker"
        ):
            gpus.add_metric([tenant, str(job_id), st], float(workers * per))
        yield gpus


_STATE = MeshStateCollector()


def metrics_view(request: HttpRequest) -> HttpResponse:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = prometheus_client.generate_latest(registry)
    else:
        text = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    state = CollectorRegistry()
    state.register(_STATE)
    text += prometheus_client.generate_latest(state)
    return HttpResponse(text, content_type=prometheus_client.CONTENT_TYPE_LATEST)
