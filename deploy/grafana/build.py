"""Writes the Grafana dashboards under deploy/grafana/dashboards/ from the panel lists below (run it after an edit:
`python deploy/grafana/build.py`; tests/deploy checks the JSON is current and that every query returns data from a
running mesh). Every query reads only series InferMesh exports, or the recording rules of deploy/prometheus/rules/."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"


def panel(title: str, *exprs: str | tuple[str, str], unit: str = "short", kind: str = "timeseries") -> dict[str, Any]:
    targets = []
    for i, e in enumerate(exprs):
        expr, legend = e if isinstance(e, tuple) else (e, "")
        targets.append({"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend})
    return {"type": kind, "title": title, "datasource": DS, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}  # fmt: skip


def var(name: str, query: str, *, multi: bool = True) -> dict[str, Any]:
    return {"name": name, "type": "query", "datasource": DS, "query": {"query": query, "refId": name},
            "definition": query, "refresh": 2, "includeAll": True, "multi": multi, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}}  # fmt: skip


def dashboard(uid: str, title: str, rows: list[tuple[str, list[dict[str, Any]]]], variables: list[dict[str, Any]]
              ) -> dict[str, Any]:  # fmt: skip
    panels: list[dict[str, Any]] = []
    y = 0
    pid = 1
    for row_title, row in rows:
        panels.append({"type": "row", "title": row_title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})  # fmt: skip
        pid += 1
        y += 1
        for i, p in enumerate(row):
            p = {**p, "id": pid, "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8}}
            panels.append(p)
            pid += 1
        y += 8 * ((len(row) + 2) // 3)
    ds_var = {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus",
              "current": {}, "hide": 0}  # fmt: skip
    return {
        "uid": uid, "title": title, "tags": ["infermesh"], "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "timezone": "utc",
        "templating": {"list": [ds_var, *variables]}, "annotations": {"list": []}, "panels": panels,
    }  # fmt: skip


# fmt: off
NODE = 'node=~"$node"'
MODEL = 'model=~"$model"'
TENANT = 'tenant=~"$tenant"'

FLEET = dashboard(
    "infermesh-fleet",
    "InferMesh / Fleet and GPUs",
    [
        ("Nodes", [
            panel("Nodes by status", ('sum by (status) (max by (node, status) (infermesh_node_status))', "{{status}}"),
                  kind="stat"),
            panel("Quarantined nodes", ('max by (node, zone) (infermesh_node_status{status="quarantined"})',
                                        "{{node}} ({{zone}})")),
            panel("Seconds since each agent reported", ("max by (node) (infermesh_node_heartbeat_age_seconds{"
                                                        + NODE + "})", "{{node}}"), unit="s"),
            panel("Agents up", ('up{job="infermesh-agent"}', "{{instance}}")),
            panel("Draining or cordoned (agent view)", ("meshd_node_draining", "{{instance}}")),
            panel("Routable targets per node", ("sum by (node) (meshd_target_routable{" + NODE + "})", "{{node}}")),
        ]),
        ("GPUs", [
            panel("GPU utilization", ("avg by (node, gpu_uuid) (meshd_gpu_utilization_percent{" + NODE + "})",
                                      "{{node}} {{gpu_uuid}}"), unit="percent"),
            panel("GPU memory in use", ("sum by (node) (meshd_gpu_memory_used_bytes{" + NODE + "})", "{{node}}"),
                  unit="bytes"),
            panel("GPU temperature", ("max by (node, gpu_uuid) (meshd_gpu_temperature_celsius{" + NODE + "})",
                                      "{{node}} {{gpu_uuid}}"), unit="celsius"),
            panel("Unhealthy GPUs", ("count by (node) (meshd_gpu_healthy{" + NODE + "} == 0) or "
                                     "count by (node) (meshd_gpu_healthy{" + NODE + "}) * 0", "{{node}}")),
            panel("Mean GPU utilization per node", ("infermesh:gpu_utilization_percent:avg_node", "{{node}}"),
                  unit="percent"),
            panel("GPU source reads", ("sum by (instance, result) (rate(meshd_gpu_polls_total[" + RI + "]))",
                                       "{{instance}} {{result}}"), unit="ops"),
        ]),
        ("Runtimes", [
            panel("Requests waiting per target", ("sum by (node, model) (meshd_target_requests_waiting{" + NODE
                                                  + "})", "{{node}} {{model}}")),
            panel("Requests running per target", ("sum by (node, model) (meshd_target_requests_running{" + NODE
                                                  + "})", "{{node}} {{model}}")),
            panel("KV-cache use", ("max by (node, model) (meshd_target_kv_cache_usage{" + NODE + "})",
                                   "{{node}} {{model}}"), unit="percentunit"),
            panel("Signal freshness", ("min by (node, model) (meshd_target_freshness{" + NODE + "})",
                                       "{{node}} {{model}}"), unit="percentunit"),
            panel("Runtime scrapes", ("sum by (result) (rate(meshd_scrapes_total[" + RI + "]))", "{{result}}"),
                  unit="ops"),
            panel("vLLM batch (runtime's own metrics)", ('sum by (model_name) (vllm:num_requests_running)',
                                                          "{{model_name}} running"),
                  ('sum by (model_name) (vllm:num_requests_waiting)', "{{model_name}} waiting")),
        ]),
    ],
    [var("node", "label_values(meshd_gpu_healthy, node)")],
)

ROUTING = dashboard(
    "infermesh-routing",
    "InferMesh / Routing and SLOs",
    [
        ("Traffic", [
            panel("Requests by model and tenant", ("sum by (model, tenant) (rate(infermesh_router_requests_total{"
                                                   + MODEL + "," + TENANT + "}[" + RI + "]))", "{{model}} {{tenant}}"),
                  unit="reqps"),
            panel("Answers by status code", ("sum by (code) (rate(infermesh_router_requests_total{" + MODEL + ","
                                             + TENANT + "}[" + RI + "]))", "{{code}}"), unit="reqps"),
            panel("Tokens by tenant", ("sum by (tenant, kind) (rate(infermesh_router_tokens_total{" + MODEL + ","
                                       + TENANT + "}[" + RI + "]))", "{{tenant}} {{kind}}")),
            panel("429 share (5m)", ("infermesh:router_429:ratio_rate5m", "{{model}} {{tenant}}"),
                  unit="percentunit"),
            panel("Refused by admission and quota", ("sum by (tenant, reason) (rate("
                                                     "infermesh_router_admissions_refused_total{" + TENANT + "}["
                                                     + RI + "]))", "{{tenant}} {{reason}}"), unit="reqps"),
            panel("Failed requests by cause", ("sum by (cause) (rate(infermesh_router_errors_total{" + MODEL + "}["
                                               + RI + "]))", "{{cause}}"), unit="reqps"),
        ]),
        ("Latency", [
            panel("Request latency p50 / p99", ("histogram_quantile(0.5, sum by (model, le) (rate("
                                                "infermesh_router_request_duration_seconds_bucket{" + MODEL + ","
                                                + TENANT + "}[" + RI + "])))", "p50 {{model}}"),
                  ("histogram_quantile(0.99, sum by (model, le) (rate("
                   "infermesh_router_request_duration_seconds_bucket{" + MODEL + "," + TENANT + "}[" + RI + "])))",
                   "p99 {{model}}"), unit="s"),
            panel("TTFT p99 per model (5m)", ("infermesh:router_ttft_seconds:p99_5m", "{{model}}"), unit="s"),
            panel("TTFT p99 per node", ("histogram_quantile(0.99, sum by (node, le) (rate("
                                        "infermesh_router_ttft_seconds_bucket{" + MODEL + "}[" + RI + "])))",
                                        "{{node}}"), unit="s"),
            panel("Latency p99 per tenant", ("histogram_quantile(0.99, sum by (tenant, le) (rate("
                                             "infermesh_router_request_duration_seconds_bucket{" + TENANT + "}["
                                             + RI + "])))", "{{tenant}}"), unit="s"),
            panel("Decision time p99", ("histogram_quantile(0.99, sum by (strategy, le) (rate("
                                        "infermesh_router_decision_seconds_bucket[" + RI + "])))", "{{strategy}}"),
                  unit="s"),
            panel("Shadow strategy agreement", ("sum by (strategy, shadow, agree) (rate("
                                                "infermesh_router_shadow_decisions_total[" + RI + "]))",
                                                "{{strategy}} vs {{shadow}}: {{agree}}"), unit="ops"),
        ]),
        ("SLOs", [
            panel("Request rate (5m)", ("infermesh:router_requests:rate5m", "{{model}} {{tenant}}"), unit="reqps"),
            panel("Availability (5m)", ("1 - infermesh:router_errors:ratio_rate5m", "{{model}} {{tenant}}"),
                  unit="percentunit"),
            panel("Error-budget burn rate (1h)", ("infermesh:router_errors:ratio_rate1h / 0.001",
                                                  "{{model}} {{tenant}}")),
            panel("Error-budget burn rate (5m)", ("infermesh:router_errors:ratio_rate5m / 0.001",
                                                  "{{model}} {{tenant}}")),
            panel("TTFT within 1s (5m)", ("infermesh:router_ttft_within_1s:ratio_rate5m", "{{model}}"),
                  unit="percentunit"),
        ]),
        ("Capacity", [
            panel("In flight / limit", ("infermesh:router_saturation:ratio", "{{instance}}"), unit="percentunit"),
            panel("Requests in flight", ("sum by (instance) (infermesh_router_inflight)", "{{instance}}")),
            panel("Held for a batch slot", ("sum by (instance) (infermesh_router_held)", "{{instance}}")),
            panel("Targets in each router's view", ("sum by (source) (infermesh_router_targets)", "{{source}}")),
            panel("Routers in local-only mode", ("sum(infermesh_router_local_only)", "local-only")),
            panel("Outcomes reported to the agent", ("sum by (result) (rate(infermesh_router_outcome_reports_total["
                                                     + RI + "]))", "{{result}}"), unit="ops"),
        ]),
    ],
    [var("model", "label_values(infermesh_router_requests_total, model)"),
     var("tenant", "label_values(infermesh_router_requests_total, tenant)")],
)

MESH = dashboard(
    "infermesh-mesh",
    "InferMesh / Mesh health",
    [
        ("Gossip", [
            panel("Members by state", ("max by (state) (infermesh_gossip_members)", "{{state}}")),
            panel("Probe RTT p99", ("histogram_quantile(0.99, sum by (instance, le) (rate("
                                    "infermesh_gossip_probe_rtt_seconds_bucket[" + RI + "])))", "{{instance}}"),
                  unit="s"),
            panel("Suspicions", ("sum by (outcome) (rate(infermesh_gossip_suspicions_total[" + RI + "]))",
                                 "{{outcome}}"), unit="ops"),
            panel("Degraded (local-only) and local health", ("max by (instance) (infermesh_gossip_degraded)",
                                                             "degraded {{instance}}"),
                  ("max by (instance) (infermesh_gossip_health_score)", "health {{instance}}")),
            panel("Gossip traffic", ("sum by (direction) (rate(infermesh_gossip_bytes_total[" + RI + "]))",
                                     "{{direction}}"), unit="Bps"),
            panel("Packets dropped as bad input", ("sum by (reason) (rate(infermesh_gossip_dropped_packets_total["
                                                   + RI + "]))", "{{reason}}"), unit="pps"),
        ]),
        ("Raft", [
            panel("Leaders per group", ("infermesh:raft_leaders:sum", "{{cluster}}/{{group}}"), kind="stat"),
            panel("Members without a leader", ("sum by (cluster, group) (1 - infermesh_raft_has_leader)",
                                               "{{cluster}}/{{group}}")),
            panel("Term", ("max by (cluster, group) (infermesh_raft_term)", "{{cluster}}/{{group}}")),
            panel("Commit index", ("max by (cluster, group) (infermesh_raft_commit_index)",
                                   "{{cluster}}/{{group}}")),
            panel("Entries committed but not applied", ("max by (instance, group) (infermesh_raft_commit_index - "
                                                        "infermesh_raft_applied_index)", "{{instance}} {{group}}")),
            panel("Voters", ("max by (cluster, group) (infermesh_raft_voters)", "{{cluster}}/{{group}}")),
        ]),
        ("Portal link and outbox", [
            panel("Outbox lag per node (versions)", ("infermesh:outbox_lag_versions:max", "{{node}}")),
            panel("Portal links up", ("max by (node) (infermesh_portal_link_connected)", "{{node}}")),
            panel("Outbox head and applied versions", ("max(infermesh_outbox_head_version)", "head"),
                  ("max by (instance) (meshd_portal_applied_version)", "applied {{instance}}")),
            panel("Portal changes applied by agents", ("sum by (result) (rate(meshd_portal_changes_total[" + RI
                                                       + "]))", "{{result}}"), unit="ops"),
            panel("Portal HTTP requests", ("sum by (method) (rate("
                                           "django_http_requests_total_by_method_total[" + RI + "]))", "{{method}}"),
                  unit="reqps"),
            panel("Portal HTTP latency p99", ("histogram_quantile(0.99, sum by (le) (rate("
                                              "django_http_requests_latency_including_middlewares_seconds_bucket["
                                              + RI + "])))", "p99"), unit="s"),
        ]),
        ("Agents", [
            panel("Gossip messages", ("sum by (instance, direction) (rate(infermesh_gossip_messages_total[" + RI
                                      + "]))", "{{instance}} {{direction}}"), unit="ops"),
            panel("WatchTargets streams", ("sum by (instance) (meshd_target_watchers)", "{{instance}}")),
            panel("Outcomes reported by routers", ("sum by (result) (rate(meshd_outcomes_total[" + RI + "]))",
                                                   "{{result}}"), unit="ops"),
            panel("Deltas received", ("sum by (kind, result) (rate(meshd_deltas_total[" + RI + "]))",
                                      "{{kind}} {{result}}"), unit="ops"),
            panel("Scrape time p99", ("histogram_quantile(0.99, sum by (le) (rate("
                                      "meshd_scrape_duration_seconds_bucket[" + RI + "])))", "p99"), unit="s"),
            panel("Scrape targets up", ("sum by (job) (up)", "{{job}}")),
        ]),
    ],
    [],
)

TRAINING = dashboard(
    "infermesh-training",
    "InferMesh / Training jobs",
    [
        ("Jobs", [
            panel("Jobs by status", ("sum by (status) (infermesh_training_jobs{" + TENANT + "})", "{{status}}"),
                  kind="stat"),
            panel("Active jobs per tenant", ('sum by (tenant) (infermesh_training_jobs{status=~"pending|queued|'
                                             'placing|running|preempted",' + TENANT + "})", "{{tenant}}")),
            panel("GPUs held or asked for, per job", ("max by (tenant, job_id, status) (infermesh_training_job_gpus{"
                                                      + TENANT + "})", "{{tenant}} job {{job_id}} ({{status}})")),
            panel("GPUs per tenant", ("sum by (tenant) (max by (tenant, job_id) (infermesh_training_job_gpus{"
                                      + TENANT + "}))", "{{tenant}}")),
            panel("GPU-hours charged", ("max by (tenant) (infermesh_training_gpu_seconds_charged_total{" + TENANT
                                        + "}) / 3600", "{{tenant}}")),
            panel("Failed and preempted jobs", ('sum by (tenant, status) (infermesh_training_jobs{status=~"failed|'
                                                'preempted",' + TENANT + "})", "{{tenant}} {{status}}")),
        ]),
    ],
    [var("tenant", "label_values(infermesh_training_jobs, tenant)")],
)
# fmt: on

DASHBOARDS = {"fleet.json": FLEET, "routing.json": ROUTING, "mesh.json": MESH, "training.json": TRAINING}


def render(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, d in DASHBOARDS.items():
        (OUT / name).write_text(render(d))
    print(f"wrote {len(DASHBOARDS)} dashboards to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
