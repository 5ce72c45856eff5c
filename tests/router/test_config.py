"""Router config: YAML plus environment overrides; a wrong field stops start naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from router.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_loads() -> None:
    cfg = load_config(ROOT / "docs/examples/router.yaml", env={})
    assert cfg.listen.port == 8080
    assert [t.url for t in cfg.targets] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert cfg.tenants[0].name == "demo" and cfg.tenants[0].api_keys == ["demo-key"]


def test_env_overrides_nested_fields() -> None:
    cfg = parse_config(
        {"listen": {"port": 1}},
        env={"INFERMESH_ROUTER__LISTEN__PORT": "9090", "INFERMESH_ROUTER__REDIS__URL": "redis://h:1/0"},
    )
    assert cfg.listen.port == 9090
    assert cfg.redis.url == "redis://h:1/0"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"listen": {"prot": 1}}, "listen.prot"),
        ({"listen": {"port": "x"}}, "listen.port"),
        ({"targets": [{"model": "m", "url": "ftp://x"}]}, "targets.0.url"),
        ({"default_policy": {"strategy": "nope"}}, "default_policy.strategy"),
        ({"default_policy": {"hedging": {"budget_ratio": 2}}}, "default_policy.hedging.budget_ratio"),
        ({"tenants": [{"name": "a", "api_keys": ["k"]}, {"name": "b", "api_keys": ["k"]}]}, "reuses an API key"),
    ],
)
def test_bad_config_names_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(data, source="t.yaml", env={})
    assert field in str(e.value)


def test_cli_refuses_bad_config(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("listen:\n  port: 8080\n  wrokers: 2\n")
    r = subprocess.run(
        [sys.executable, "-m", "router", "--config", str(p)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert r.returncode == 2
    assert "listen.wrokers" in r.stderr


def test_generated_kserve_modules_are_current() -> None:
    from router.proto import build

    assert build.stale() == []
