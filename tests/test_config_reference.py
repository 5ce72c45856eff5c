"""docs/reference/config.md is generated from the agent's and the router's config models and must be current; both
processes load their config the same way (one error format, "did you mean", the same logging names) and print
what is in force with --print-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agents.configdoc import PAGE, render
from agents.meshd.config import ConfigError as AgentConfigError
from agents.meshd.config import parse_config as agent_config
from router.config import ConfigError as RouterConfigError
from router.config import parse_config as router_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_reference_page_is_current() -> None:
    assert PAGE.read_text() == render(), "docs/reference/config.md is stale: run python -m agents.configdoc"


def test_one_error_format_for_agent_and_router() -> None:
    assert AgentConfigError is RouterConfigError
    with pytest.raises(AgentConfigError) as agent:
        agent_config({"listen": {"grcp": "x"}}, {}, source="agent.yaml")
    assert str(agent.value) == "agent.yaml: listen.grcp: unknown field; did you mean 'listen.grpc'?"
    with pytest.raises(RouterConfigError) as router:
        router_config({}, source="router.yaml", env={"INFERMESH_ROUTER__LISTEN__PROT": "1"})
    assert str(router.value) == (
        "INFERMESH_ROUTER__LISTEN__PROT: listen.prot: unknown field; did you mean 'listen.port'?"
    )
    with pytest.raises(AgentConfigError, match=r"^MESHD__LISTEN__GRPC: listen\.grpc: "):  # blamed on the variable
        agent_config({}, {"MESHD__LISTEN__GRPC": "nonsense"}, source="agent.yaml")


def test_the_same_logging_names_in_both() -> None:
    for level in ("info", "INFO", "Warning"):
        assert agent_config({"logging": {"level": level}}, {}).logging.level == level.lower()
        assert router_config({"logging": {"level": level}}, env={}).logging.level == level.lower()
    assert agent_config({"log": {"level": "debug"}}, {}).logging.level == "debug"  # the former name still reads


def test_print_config_marks_values_from_the_environment() -> None:
    env = {"MESHD__LISTEN__GRPC": "127.0.0.1:7999", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "meshweb.cli", "agent", "--config", "docs/examples/agent.yaml", "--print-config"],
        capture_output=True, text=True, timeout=60, env=env, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    assert "  grpc: 127.0.0.1:7999  # from MESHD__LISTEN__GRPC" in out.splitlines()
    assert "  http: 127.0.0.1:9464" in out.splitlines()
    env = {"INFERMESH_ROUTER__LISTEN__PORT": "8999", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "meshweb.cli", "router", "--config", "docs/examples/router.yaml", "--print-config"],
        capture_output=True, text=True, timeout=60, env=env, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    assert "  port: 8999  # from INFERMESH_ROUTER__LISTEN__PORT" in out.splitlines()
