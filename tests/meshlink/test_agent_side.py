"""The agent side of the link without a portal: the applied-state file applies each version once and survives a
restart, snapshots replace the portal's keys, and the `portal:` config section refuses bad settings by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.meshd.component import ComponentConfigError, build_component
from agents.portal_link.applier import FileApplier
from agents.proto.portal_link import Change, Snapshot


def change(version: int, key: str, value: dict[str, object] | None = None) -> Change:
    return Change(version=version, key=key, op="delete" if value is None else "put", value=value)


async def test_file_store_applies_each_version_once_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "portal" / "node-1.json"
    store = FileApplier(path)
    assert await store.applied_version() == 0
    batch = [change(1, "slos/model-1", {"gpus": 4}), change(2, "nodes/node-1", {"status": "active"})]
    assert await store.apply_changes(batch) == 2
    assert await store.apply_changes(batch) == 2  # replayed after a reconnect: nothing applied twice
    assert await store.apply_changes([*batch, change(3, "slos/model-1", {"gpus": 8})]) == 3

    again = FileApplier(path)  # the agent restarts
    assert await again.applied_version() == 3
    assert await again.get("slos/model-1") == {"gpus": 8}
    state = json.loads(path.read_text())
    assert state["data"]["slos/model-1"]["version"] == 2 and state["data"]["nodes/node-1"]["version"] == 1
    assert await again.apply_changes([change(4, "slos/model-1")]) == 4
    assert await again.get("slos/model-1") is None


async def test_a_snapshot_replaces_the_portal_keys_and_keeps_the_others(tmp_path: Path) -> None:
    store = FileApplier(tmp_path / "state.json")
    await store.apply_changes([change(1, "slos/model-1", {"gpus": 4}), change(2, "kv/operator/note", {"x": 1}),
                               change(3, "nodes/gone", {"status": "active"})])  # fmt: skip
    snap = Snapshot.model_validate(
        {"version": 9, "entries": [{"key": "slos/model-1", "value": {"gpus": 4}},
                                   {"key": "nodes/node-1", "value": {"status": "quarantine"}}]}
    )  # fmt: skip
    assert await store.apply_snapshot(snap) == 9
    assert await store.get("nodes/gone") is None  # deleted in the portal while this node was away
    assert await store.get("kv/operator/note") == {"x": 1}  # not a portal key
    assert store.state["data"]["slos/model-1"]["version"] == 1  # unchanged value: not rewritten
    assert await store.get("nodes/node-1") == {"status": "quarantine"}


def test_a_corrupt_state_file_stops_the_agent_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{half")
    with pytest.raises(ValueError, match=r"state\.json: not JSON"):
        FileApplier(path)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (
            {"url": "http://portal/ws/agent/", "credential": "imn_x"},
            "portal.url: 'http://portal/ws/agent/' must start with ws:// or wss://",
        ),
        ({"url": "ws://portal/ws/agent/"}, "give exactly one of credential or credential_file"),
        ({"url": "ws://p/ws/agent/", "credential": "a", "credential_file": "/x"}, "exactly one of credential"),
        ({"url": "ws://p/ws/agent/", "credential": "a", "store": "etcd"}, "portal.store"),
        ({"url": "ws://p/ws/agent/", "credential": "a", "reconect_max_s": 1}, "portal.reconect_max_s"),
        ({"url": "ws://p/ws/agent/", "credential_file": "/nonexistent/cred"}, "credential_file /nonexistent/cred"),
    ],
)
def test_bad_portal_sections_name_the_field(section: dict[str, object], problem: str) -> None:
    with pytest.raises(ComponentConfigError, match=problem.replace("(", r"\(")):
        build_component("portal", section)


def test_credential_from_a_file(tmp_path: Path) -> None:
    cred = tmp_path / "node.cred"
    cred.write_text("imn_0123456789ab_secret\n")
    component = build_component("portal", {"url": "ws://p/ws/agent/", "credential_file": str(cred)})
    assert component.name == "portal" and component.secret == "imn_0123456789ab_secret"  # type: ignore[attr-defined]


def test_the_example_agent_config_is_valid(tmp_path: Path) -> None:
    import yaml

    from agents.meshd.config import parse_config

    raw = yaml.safe_load(Path("docs/examples/portal-link/agent.yaml").read_text())
    cred = tmp_path / "node-a.cred"
    cred.write_text("imn_0123456789ab_secret")
    raw["portal"]["credential_file"] = str(cred)
    config = parse_config(raw)
    component = build_component("portal", config.components["portal"])
    assert component.name == "portal"


def test_the_mtls_example_agent_config_is_valid(tmp_path: Path) -> None:
    import yaml

    from agents.meshd.config import parse_config
    from agents.security.ca import CertificateAuthority, cert_pem, key_pem, new_key

    ca = CertificateAuthority.init(tmp_path / "ca", "infermesh.local")
    key = new_key()
    svid = tmp_path / "svid"
    svid.mkdir()
    (svid / "cert.pem").write_bytes(cert_pem(ca.issue(public_key=key.public_key(), node="node-a", roles=["gpu"])))
    (svid / "key.pem").write_bytes(key_pem(key))
    (svid / "ca.pem").write_bytes(cert_pem(ca.cert))
    (tmp_path / "node-a.cred").write_text("imn_0123456789ab_secret")
    text = Path("docs/examples/portal-link/agent-mtls.yaml").read_text()
    raw = yaml.safe_load(
        text.replace("/tmp/node-a-svid", str(svid)).replace("/tmp/node-a.cred", str(tmp_path / "node-a.cred"))
    )
    config = parse_config(raw)
    assert config.tls is not None and config.components["portal"]["url"].startswith("wss://")
    component = build_component("portal", config.components["portal"])
    assert component.cfg.refusal_report_s == 2  # type: ignore[attr-defined]
