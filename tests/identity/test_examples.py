"""The secure examples work as documented: the commands in docs/examples/secure/agent.yaml produce a config the
agent accepts, and the claim mapping example parses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from agents.meshd.config import parse_config
from meshweb.identity.mapping import parse_mapping, roles_for
from tests.identity.conftest import ROOT

EXAMPLES = ROOT / "docs" / "examples" / "secure"


def test_secure_agent_example_as_documented(tmp_path: Path) -> None:
    text = (EXAMPLES / "agent.yaml").read_text().replace("/tmp/infermesh-secure", str(tmp_path))
    commands: list[str] = []
    pending = ""
    for line in text.splitlines():
        body = line.lstrip("#").strip()
        if pending:
            pending += " " + body
        elif body.startswith("infermesh ca "):
            pending = body
        if pending and not pending.endswith("\\"):
            commands.append(pending)
            pending = ""
        pending = pending.removesuffix("\\").rstrip() if pending else ""
    assert len(commands) == 3
    for command in commands:
        args = command.split()[1:]
        result = subprocess.run([sys.executable, "-m", "meshweb.cli", *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    raw = yaml.safe_load(text)
    raw["tls"]["jwt"]["jwks_url"] = ""
    raw["tls"]["jwt"]["jwks_file"] = str(tmp_path / "jwks.json")
    config = parse_config(raw, env={})
    assert config.tls is not None and config.tls.trust_domain == "mesh.example"


def test_claim_mapping_example() -> None:
    rules = parse_mapping((EXAMPLES / "claim-mapping.yaml").read_text())
    assert roles_for({"groups": ["acme-engineers"], "email": "x@globex.example"}, rules) == {
        "acme": "member",
        "globex": "viewer",
    }
