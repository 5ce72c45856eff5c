"""The shipped Prometheus rules and Grafana dashboards, checked with Prometheus' own tools (no server needed):
`promtool check rules`, `promtool test rules` with a firing case for every alert, `promtool check config` on the
compose stack's Prometheus configuration, and the dashboard JSON current with deploy/grafana/build.py."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.deploy.promql import DASHBOARDS, ROOT, RULES, dashboard_queries, metric_names, rule_queries, tool

TESTS = ROOT / "deploy" / "prometheus" / "tests"


def test_promtool_checks_every_rule_file() -> None:
    files = sorted(str(p) for p in RULES.glob("*.yaml"))
    assert len(files) == 2
    done = subprocess.run([tool("promtool"), "check", "rules", *files], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass_and_cover_every_alert() -> None:
    done = subprocess.run(
        [tool("promtool"), "test", "rules", "alerts.test.yaml"], cwd=TESTS, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {
        r["alert"]
        for p in RULES.glob("*.yaml")
        for g in yaml.safe_load(p.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    fired = {
        case["alertname"]
        for t in yaml.safe_load((TESTS / "alerts.test.yaml").read_text())["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - fired == set(), f"alerts without a unit test that fires them: {sorted(alerts - fired)}"


def test_a_broken_expectation_fails_promtool(tmp_path: object) -> None:
    from pathlib import Path

    work = Path(str(tmp_path))
    text = (TESTS / "alerts.test.yaml").read_text().replace("../rules/", f"{RULES}/")
    (work / "bad.test.yaml").write_text(text.replace("Node gpu-1 (z1) is quarantined", "Node gpu-9 is quarantined"))
    done = subprocess.run(
        [tool("promtool"), "test", "rules", "bad.test.yaml"], cwd=work, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "InferMeshNodeQuarantined" in done.stdout + done.stderr


def test_compose_prometheus_config_is_valid() -> None:
    cfg = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    done = subprocess.run(
        [tool("promtool"), "check", "config", "--syntax-only", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboards_are_current_with_their_builder() -> None:
    sys.path.insert(0, str(ROOT / "deploy" / "grafana"))
    try:
        import build  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    names = {p.name for p in DASHBOARDS.glob("*.json")}
    assert names == set(build.DASHBOARDS), "run python deploy/grafana/build.py"
    for name, d in build.DASHBOARDS.items():
        assert (DASHBOARDS / name).read_text() == build.render(d), f"{name} is stale: rebuild it"
        uids = {json.loads((DASHBOARDS / n).read_text())["uid"] for n in names}
        assert len(uids) == len(names)


def test_every_query_names_metrics_and_recording_rules_are_used() -> None:
    queries = dashboard_queries() + rule_queries()
    assert len(queries) > 60
    for q in queries:
        assert metric_names(q.expr), f"{q.where}: no metric found in {q.expr!r}"
    assert metric_names('sum by (model) (rate(infermesh_router_requests_total{code="429"}[5m])) / 0.001') == {
        "infermesh_router_requests_total"
    }
    recorded = {q.where.removeprefix("recording rule ") for q in rule_queries()}
    read = set().union(*(metric_names(q.expr) for q in dashboard_queries()))
    alerts_text = "".join(p.read_text() for p in RULES.glob("*.alerts.yaml"))
    unused = {r for r in recorded if r not in read and r not in alerts_text}
    assert unused == set(), f"recording rules nothing reads: {sorted(unused)}"
