"""`infermesh ctl` as an operator uses it against a real agent: the agent from INFERMESH_AGENT, `-o
table|wide|json|yaml`, `--no-headers`, events with their time and one JSON object per line, and a component the
agent does not run named as such instead of gRPC's UNIMPLEMENTED."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from tests.agents.harness import AgentProcess, start_agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    proc = start_agent({"node": {"id": "node-ctl", "roles": ["gpu"]}}, tmp_path_factory.mktemp("ctl"))
    try:
        yield proc
    finally:
        proc.stop()


def ctl(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERMESH_AGENT": agent.grpc}  # no --agent: the environment names the agent
    return subprocess.run(
        [sys.executable, "-m", "meshweb.cli", "ctl", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_outputs_from_the_agent_in_the_environment(agent: AgentProcess) -> None:
    as_json = ctl(agent, "nodes", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    (node,) = json.loads(as_json.stdout)
    assert node["node_id"] == "node-ctl"
    (as_yaml,) = yaml.safe_load(ctl(agent, "-o", "yaml", "nodes").stdout)  # -o before the verb works too
    assert as_yaml["node_id"] == "node-ctl" and as_yaml.keys() == node.keys()
    table, wide = ctl(agent, "nodes").stdout.splitlines(), ctl(agent, "nodes", "-o", "wide").stdout.splitlines()
    assert table[0].split() == ["NODE", "STATE", "ROLES", "ZONE", "GPUS", "TARGETS"]
    assert wide[0].split()[-1] == "ADDRESS" and agent.grpc in wide[1]
    bare = ctl(agent, "nodes", "--no-headers").stdout.splitlines()
    assert len(bare) == 1 and bare[0].startswith("node-ctl *")


def test_events_carry_their_time_and_stream_one_object_per_line(agent: AgentProcess) -> None:
    lines = ctl(agent, "events", "--count", "1", "-o", "json").stdout.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["kind"] == "node.started" and event["time"].endswith("Z") and event["time"][:2] == "20"
    text = ctl(agent, "events", "--count", "1").stdout
    assert text.startswith(event["time"]) and "node.started" in text


def test_a_component_the_agent_does_not_run(agent: AgentProcess) -> None:
    for args, component in ((["members"], "gossip"), (["store", "get", "kv/x"], "raft")):
        r = ctl(agent, *args)
        assert r.returncode == 1
        assert r.stderr.strip() == f"ctl: {args[0]}: {component} not enabled on the agent at {agent.grpc}", r.stderr
