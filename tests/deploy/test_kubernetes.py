"""The Kubernetes manifests: `kubectl kustomize` renders the base and each overlay, every rendered object validates
against the Kubernetes OpenAPI schemas (kubernetes-validate, pinned release), and the objects keep the invariants the
deployment relies on: one beat, probes and resources on every container, no floating image tags, NetworkPolicies
admitting every port a pod listens on, and references (Services, PDBs, HPA, ServiceMonitors, Secrets, ConfigMaps)
that resolve."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.promql import ROOT

K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.32.0"  # the schemas validated against (kubectl on the CI machine is 1.32)
TREES = ["base", "overlays/small", "overlays/production"]
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


@cache
def render(tree: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed (it renders kustomizations: kubectl kustomize)"
    done = subprocess.run([kubectl, "kustomize", str(K8S / tree)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {tree}: {done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def name(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = obj["spec"]["template"]["metadata"].get("labels", {})
    return labels


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
        if e["operator"] == "NotIn" and labels.get(e["key"]) in e["values"]:
            return False
        if e["operator"] == "Exists" and e["key"] not in labels:
            return False
    return True


@pytest.mark.parametrize("tree", TREES)
def test_every_rendered_object_validates_against_the_openapi_schemas(tree: str) -> None:
    objs = render(tree)
    assert len(objs) > 30
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus operator's CRD: checked structurally below
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{tree}: {name(obj)}: {err.message} at {list(err.path)}") from None


def test_the_validator_refuses_a_bad_object() -> None:
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "three", "selector": {}, "template": {}}}  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("tree", TREES)
def test_invariants(tree: str) -> None:
    objs = render(tree)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
    workloads = [o for o in objs if o["kind"] in WORKLOADS]
    names = {name(o) for o in objs}

    # Exactly one beat, never two during a rollout.
    beats = [o for o in workloads if "beat" in o["spec"]["template"]["spec"]["containers"][0].get("args", [])]
    assert [name(b) for b in beats] == ["Deployment/infermesh-beat"]
    assert beats[0]["spec"]["replicas"] == 1 and beats[0]["spec"]["strategy"]["type"] == "Recreate"

    for w in workloads:
        spec = pod_spec(w)
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{tree}: {name(w)} container {c['name']}"
            image = c["image"]
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            assert tag and tag != "latest", f"{where}: image {image!r} has no fixed tag"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{where}: resources.{part} cpu and memory"
        if w["kind"] != "Job":  # a Job's container runs to completion: nothing to probe
            for c in spec["containers"]:
                assert c.get("livenessProbe") or c.get("readinessProbe"), f"{tree}: {name(w)}/{c['name']}: no probe"
                if c.get("ports"):
                    assert c.get("readinessProbe"), f"{tree}: {name(w)}/{c['name']}: listens, no readinessProbe"
        # Every Secret and ConfigMap a pod reads exists in the rendering (kustomize's hashed names included).
        refs = set()
        for v in spec.get("volumes", []):
            if "secret" in v:
                refs.add(f"Secret/{v['secret']['secretName']}")
            if "configMap" in v:
                refs.add(f"ConfigMap/{v['configMap']['name']}")
            if "persistentVolumeClaim" in v:
                refs.add(f"PersistentVolumeClaim/{v['persistentVolumeClaim']['claimName']}")
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("envFrom", []):
                if "secretRef" in e:
                    refs.add(f"Secret/{e['secretRef']['name']}")
                if "configMapRef" in e:
                    refs.add(f"ConfigMap/{e['configMapRef']['name']}")
        assert refs <= names, f"{tree}: {name(w)} refers to missing {sorted(refs - names)}"

    # NetworkPolicies: ingress denied by default, and every port a pod listens on admitted by a policy of that pod.
    policies = by_kind["NetworkPolicy"]
    assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies), "no default deny"
    for w in workloads:
        labels = pod_labels(w)
        admitted = set()
        for p in policies:
            if p["spec"]["podSelector"] and matches(p["spec"]["podSelector"], labels):
                for rule in p["spec"].get("ingress", []):
                    for port in rule.get("ports", []):
                        admitted.add((port["port"], port.get("protocol", "TCP")))
        for c in pod_spec(w)["containers"]:
            for port in c.get("ports", []):
                key = (port["containerPort"], port.get("protocol", "TCP"))
                assert key in admitted, f"{tree}: {name(w)} listens on {key} but no NetworkPolicy admits it"

    # Services, PodDisruptionBudgets and the HPA select or name something that exists.
    for svc in by_kind["Service"]:
        sel = svc["spec"].get("selector")
        if sel:
            assert any(matches({"matchLabels": sel}, pod_labels(w)) for w in workloads), f"{tree}: {name(svc)}"
    for pdb in by_kind["PodDisruptionBudget"]:
        assert any(matches(pdb["spec"]["selector"], pod_labels(w)) for w in workloads), f"{tree}: {name(pdb)}"
    for hpa in by_kind["HorizontalPodAutoscaler"]:
        ref = hpa["spec"]["scaleTargetRef"]
        assert f"{ref['kind']}/{ref['name']}" in names
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "infermesh_router_inflight"

    # ServiceMonitors select a Service that has the named port.
    for sm in by_kind["ServiceMonitor"]:
        services = [s for s in by_kind["Service"] if matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        assert services, f"{tree}: {name(sm)} selects no Service"
        for ep in sm["spec"]["endpoints"]:
            assert any(ep["port"] in {p.get("name") for p in s["spec"]["ports"]} for s in services), (
                f"{tree}: {name(sm)}: no Service port named {ep['port']}"
            )

    # The Raft group's configured peers are exactly the coordinator pods.
    (sts,) = [o for o in by_kind["StatefulSet"] if o["metadata"]["name"] == "infermesh-coordinator"]
    (cm,) = [c for c in by_kind["ConfigMap"] if c["metadata"]["name"].startswith("infermesh-coordinator")]
    peers = yaml.safe_load(cm["data"]["coordinator.yaml"])["raft"]["peers"]
    assert sorted(peers) == list(range(1, sts["spec"]["replicas"] + 1))
    for i, addr in peers.items():
        assert addr.startswith(f"infermesh-coordinator-{i - 1}.infermesh-coordinator:"), addr


def test_the_base_puts_agents_on_gpu_nodes_with_nvml_and_the_host_network() -> None:
    (ds,) = [o for o in render("base") if o["kind"] == "DaemonSet"]
    spec = pod_spec(ds)
    assert spec["hostNetwork"] is True and spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["MESHD__NODE__ID"] == "$(NODE_NAME)"
    cms = [c for c in render("base") if c["kind"] == "ConfigMap"]
    (cfg,) = [c for c in cms if c["metadata"]["name"].startswith("infermesh-agent")]
    assert yaml.safe_load(cfg["data"]["agent.yaml"])["gpu"]["source"] == "nvml"


@pytest.mark.parametrize("tree", TREES)
def test_rendered_configs_load_through_the_real_config_models(tree: str, tmp_path: Path) -> None:
    """Each ConfigMap'd agent and router config, with the environment its pod sets, validates as the process would
    at start (files that exist only in the pod, such as credentials, stand in as temporary files)."""
    from agents.gossip.component import GossipSection
    from agents.meshd.config import parse_config as parse_agent
    from agents.portal_link.component import PortalSection
    from agents.raft.component import RaftSection
    from router.config import parse_config as parse_router

    objs = render(tree)
    cms = {c["metadata"]["name"]: c for c in objs if c["kind"] == "ConfigMap"}
    stand_in = tmp_path / "secret"
    stand_in.write_text("imn_0123456789abcdef.0123456789abcdef0123456789abcdef\n")
    checked = set()
    for w in (o for o in objs if o["kind"] in WORKLOADS):
        spec = pod_spec(w)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            args = " ".join(c.get("command", []) + c.get("args", []))
            for mount in c.get("volumeMounts", []):
                cm = volumes.get(mount["name"], {}).get("configMap")
                if cm is None:
                    continue
                for fname, text in cms[cm["name"]]["data"].items():
                    if f"{mount['mountPath']}/{fname}" not in args:
                        continue
                    raw = yaml.safe_load(text)
                    where = f"{tree}: {name(w)} {fname}"
                    if " router " in f" {args} ":
                        listen = raw.get("listen", {})
                        if listen.get("metrics_token_file"):
                            listen["metrics_token_file"] = str(stand_in)
                        cfg = parse_router(raw, source=where, env={})
                        assert cfg.listen.port in {p["containerPort"] for p in c["ports"]}, where
                    else:
                        env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
                        env = {k: v for k, v in env.items() if k.startswith("MESHD__")}
                        env["MESHD__PORTAL__CREDENTIAL_FILE"] = str(stand_in)
                        env["MESHD__GOSSIP__ADVERTISE"] = "10.0.0.1:7946"  # the pod/host IP, set by Kubernetes
                        env["MESHD__NODE__ID"] = "node-1"
                        if "raft" in raw:
                            env["MESHD__RAFT__NODE_ID"] = "1"  # the pod ordinal + 1, set by the command
                        cfg_a = parse_agent(raw, env, source=where)
                        GossipSection.model_validate(cfg_a.components["gossip"])
                        PortalSection.model_validate(cfg_a.components["portal"])
                        if "raft" in cfg_a.components:
                            RaftSection.model_validate(cfg_a.components["raft"])
                        ports = {p["containerPort"] for p in c["ports"]}
                        assert {int(cfg_a.listen.grpc.rsplit(":", 1)[1]), 9464} <= ports, where
                    checked.add(name(w))
    assert checked >= {"Deployment/infermesh-router", "DaemonSet/infermesh-agent", "StatefulSet/infermesh-coordinator"}
