"""Agent config: YAML + environment overrides; a wrong field stops start with a message naming it."""

from __future__ import annotations

import pytest

from agents.meshd.component import COMPONENT_FACTORIES, ComponentConfigError, build_component
from agents.meshd.config import ConfigError, load_config, parse_config


def test_defaults_match_the_contract() -> None:
    c = parse_config({}, {})
    assert c.listen.grpc == "127.0.0.1:7070" and c.listen.http == "127.0.0.1:9464"
    assert c.node.roles == ["gpu"] and c.scoring.strategy == "hybrid_mesh"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"node": {"rolez": ["gpu"]}}, "node.rolez: unknown field"),
        ({"node": {"roles": ["gpu", "chef"]}}, "node.roles.1: Input should be"),
        ({"listen": {"grpc": "7070"}}, "listen.grpc: '7070' is not HOST:PORT"),
        ({"runtimes": [{"url": "127.0.0.1:9001"}]}, "runtimes.0.url: '127.0.0.1:9001' must start with http://"),
        ({"runtimes": [{"url": "http://x:1", "flavor": "vlm"}]}, "runtimes.0.flavor: Input should be"),
        ({"fusion": {"fresh_s": 20, "stale_s": 10}}, "fusion: need fresh_s < stale_s <= expire_s"),
        ({"node": {"roles": ["router"]}, "runtimes": [{"url": "http://x:1"}]}, "node.roles: runtimes and gpu need"),
        ({"scoring": {"top_k": 0}}, "scoring.top_k: Input should be greater than or equal to 1"),
        ({"gossip": [1, 2]}, "gossip: must be a mapping"),
    ],
)
def test_wrong_fields_are_named(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, {})
    assert message in str(err.value)


def test_environment_overrides_the_file(tmp_path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("node: {id: from-file, roles: [gpu]}\nscrape: {interval_s: 2}\n")
    env = {"MESHD__NODE__ID": "from-env", "MESHD__NODE__ROLES": "[gpu, router]", "MESHD__SCRAPE__INTERVAL_S": "0.5"}
    c = load_config(path, env)
    assert (c.node.id, c.node.roles, c.scrape.interval_s) == ("from-env", ["gpu", "router"], 0.5)
    with pytest.raises(ConfigError, match=r"scrape\.intervall_s: unknown field"):
        load_config(path, {"MESHD__SCRAPE__INTERVALL_S": "1"})


def test_unreadable_or_non_mapping_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad, {})


def test_component_sections_are_kept_for_their_component() -> None:
    c = parse_config({"raft": {"peers": []}}, {})
    assert c.components == {"raft": {"peers": []}}
    assert set(COMPONENT_FACTORIES) >= {"gossip", "raft"}
    with pytest.raises(ComponentConfigError, match="no component is registered"):
        build_component("nonsense", {})


def test_example_config_is_valid() -> None:
    c = load_config("docs/examples/agent.yaml", {})
    assert c.listen.grpc == "127.0.0.1:7070"
    assert [r.url for r in c.runtimes] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert c.gpu is not None and c.gpu.source == "emulated"
