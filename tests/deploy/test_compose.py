"""docker/compose.yaml: Debian's docker-compose (a compose implementation from the allowed registries) accepts and
resolves it (`config`), and the resolved file is wired as the stack needs: the broker and database on the stack's
own services, one image for every InferMesh process, three agents whose effective configs (file + MESHD__ overrides)
validate and form one gossip mesh and one Raft group linked to the portal with their own credentials, health checks
on every long-running service, start order, and Prometheus/Grafana loaded with the shipped rules and dashboards."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from agents.gossip.component import GossipSection
from agents.meshd.config import parse_config
from agents.portal_link.component import PortalSection
from agents.raft.component import RaftSection
from tests.deploy.promql import ROOT

COMPOSE = ROOT / "docker" / "compose.yaml"
AGENTS = ["agent-1", "agent-2", "agent-3"]
ONE_SHOT = {"migrate", "enroll"}


def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed (apt-get install docker-compose; .ci/run does)"
    return subprocess.run([exe, "-f", str(path), "config"], capture_output=True, text=True, timeout=120)


@cache
def resolved() -> dict[str, Any]:
    done = compose_config(COMPOSE)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = yaml.safe_load(done.stdout)
    return doc


def infermesh_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in resolved()["services"].items() if s.get("image") == "infermesh:dev"}


def test_compose_config_accepts_the_file_and_refuses_a_broken_one(tmp_path: Path) -> None:
    assert resolved()["services"]
    ok = "agent-1: {condition: service_healthy}"
    broken = COMPOSE.read_text().replace(ok, ok.replace("agent-1", "agent-9"))
    bad = tmp_path / "docker" / "compose.yaml"
    bad.parent.mkdir()
    bad.write_text(broken)
    (tmp_path / ".env.example").write_text((ROOT / ".env.example").read_text())
    done = compose_config(bad)
    assert done.returncode != 0 and "agent-9" in done.stderr


def test_one_image_and_the_stacks_own_broker_and_database() -> None:
    services = infermesh_services()
    assert set(services) >= {"migrate", "enroll", "portal", "worker", "beat", "router", "runtime-1", "runtime-2",
                             *AGENTS}  # fmt: skip
    for name, svc in services.items():
        assert svc["build"]["dockerfile"] == "docker/Dockerfile", name
        env = svc["environment"]
        assert urlsplit(env["CELERY_BROKER_URL"]).hostname == "redis", (name, env["CELERY_BROKER_URL"])
        assert urlsplit(env["REDIS_URL"]).hostname == "redis", name
        assert urlsplit(env["DATABASE_URL"]).hostname == "postgres", name
    others = {s.get("image") for n, s in resolved()["services"].items() if n not in services}
    assert all(i and ":" in i and not i.endswith(":latest") for i in others), others


def test_three_agents_form_one_mesh_and_raft_group_linked_to_the_portal(tmp_path: Path) -> None:
    services = infermesh_services()
    enroll = " ".join(services["enroll"]["command"]).replace("$$", "$")  # config keeps compose escapes
    raft_ids = set()
    for name in AGENTS:
        svc = services[name]
        assert svc["command"][:2] == ["agent", "--config"]
        mounts = {v.split(":")[1] if isinstance(v, str) else v["target"]: v for v in svc["volumes"]}
        raw = yaml.safe_load((ROOT / "docker" / "agent.yaml").read_text())
        assert "/etc/infermesh/agent.yaml" in mounts
        env = {k: str(v) for k, v in svc["environment"].items()}
        cfg = parse_config(raw, env, source=f"{name}: docker/agent.yaml")
        assert cfg.node.id == name
        # Every component section validates with its own model, as the agent does at start.
        assert set(cfg.components) == {"gossip", "raft", "portal"}
        gossip = GossipSection.model_validate(cfg.components["gossip"])
        raft = RaftSection.model_validate(cfg.components["raft"])
        # The credential file exists once the enroll service ran: a stand-in of the same shape here.
        stand_in = tmp_path / name
        stand_in.write_text("imn_0123456789abcdef.0123456789abcdef0123456789abcdef\n")
        cred = Path(cfg.components["portal"]["credential_file"])
        portal = PortalSection.model_validate({**cfg.components["portal"], "credential_file": str(stand_in)})
        assert sorted(s.split(":")[0] for s in gossip.seeds) == AGENTS
        assert gossip.advertise == f"{name}:7946"
        raft_ids.add(raft.node_id)
        assert {i: a.split(":")[0] for i, a in raft.peers.items()} == {1: "agent-1", 2: "agent-2", 3: "agent-3"}
        assert raft.peers[raft.node_id] == f"{name}:7070"
        assert urlsplit(portal.url).hostname == "portal" and urlsplit(portal.url).port == 8000
        assert any(str(cred).startswith(t) for t in mounts), f"{name}: {cred} is not on a mounted volume"
        deps = svc["depends_on"]
        assert deps["portal"]["condition"] == "service_healthy"
        assert deps["enroll"]["condition"] == "service_completed_successfully"
    assert raft_ids == {1, 2, 3}
    # The one-shot enroll service issues exactly these agents' credentials, into the volume they mount.
    assert "for i in 1 2 3" in enroll and "node enroll agent-$i --create" in enroll


def test_health_checks_and_start_order() -> None:
    services = resolved()["services"]
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc["restart"] == "no", name
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in ("portal", "worker", "beat", "enroll"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    router_cfg = yaml.safe_load((ROOT / "docker" / "router.yaml").read_text())
    agent = router_cfg["agent"]["address"].split(":")[0]
    assert services["router"]["depends_on"][agent]["condition"] == "service_healthy"


def test_prometheus_and_grafana_load_the_shipped_rules_and_dashboards() -> None:
    services = resolved()["services"]
    prom_cfg = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    listens = {"portal": 8000, "router": 8080, "runtime-1": 9001, "runtime-2": 9002} | {a: 9464 for a in AGENTS}
    scraped = set()
    for job in prom_cfg["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert listens.get(host) == int(port), f"{job['job_name']}: {target} is not a service's metrics port"
            scraped.add(host)
    assert scraped == set(listens)

    def mounts(name: str) -> dict[str, str]:
        out = {}
        for v in services[name]["volumes"]:
            src, target = v.split(":")[:2] if isinstance(v, str) else (v["source"], v["target"])
            out[target] = src
        return out

    pm = mounts("prometheus")
    assert Path(pm["/etc/prometheus/rules"]) == ROOT / "deploy" / "prometheus" / "rules"
    assert Path(pm["/etc/prometheus/prometheus.yml"]) == ROOT / "deploy" / "prometheus" / "prometheus.yml"
    assert prom_cfg["rule_files"] == ["/etc/prometheus/rules/*.yaml"]
    gm = mounts("grafana")
    assert Path(gm["/var/lib/grafana/dashboards"]) == ROOT / "deploy" / "grafana" / "dashboards"
    assert Path(gm["/etc/grafana/provisioning"]) == ROOT / "deploy" / "grafana" / "provisioning"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/infermesh.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert urlsplit(ds["datasources"][0]["url"]).hostname == "prometheus"
