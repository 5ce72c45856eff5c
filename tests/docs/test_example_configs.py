"""The agent and router configs shipped in docs/examples/ and docker/ load through the real config models, and
their component sections build. (The secure/ and portal-link/ examples need credentials and are exercised by
tests/identity and tests/meshlink.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.meshd.component import build_component
from agents.meshd.config import load_config as load_agent_config
from router.config import load_config as load_router_config

ROOT = Path(__file__).resolve().parents[2]
AGENT_CONFIGS = [
    ROOT / "docs/examples/agent.yaml",
    ROOT / "docker/agent.yaml",
    *sorted(ROOT.glob("docs/examples/raft-3node/*.yaml")),
    *sorted(ROOT.glob("docs/examples/mesh-5node/*.yaml")),
    *sorted(ROOT.glob("docs/examples/cells/agent-*.yaml")),
]
ROUTER_CONFIGS = [
    ROOT / "docs/examples/router.yaml",
    ROOT / "docs/examples/router-pd.yaml",
    ROOT / "docs/examples/cells/router-eu-1.yaml",
    ROOT / "docker/router.yaml",
]


@pytest.mark.parametrize("path", AGENT_CONFIGS, ids=[str(p.relative_to(ROOT)) for p in AGENT_CONFIGS])
def test_agent_configs_load(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERMESH_DATA_DIR", str(tmp_path))
    config = load_agent_config(path, env={})
    assert config.node.id
    for section, raw in config.components.items():
        assert build_component(section, raw).name


@pytest.mark.parametrize("path", ROUTER_CONFIGS, ids=[str(p.relative_to(ROOT)) for p in ROUTER_CONFIGS])
def test_router_configs_load(path: Path) -> None:
    config = load_router_config(path, env={})
    assert any(t.api_keys for t in config.tenants)
