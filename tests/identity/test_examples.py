"""The secure examples work as documented: the commands in docs/examples/secure/agent.yaml and router.yaml produce
files the agent, the router, the runtime emulator and ctl accept, and the claim mapping example parses."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from agents.ctl import build_parser
from agents.ctl.common import identity
from agents.emulator.server import parse_args as emulator_args
from agents.meshd.config import parse_config
from agents.security.tls import JwtVerifier
from meshweb.identity.mapping import parse_mapping, roles_for
from router.config import parse_config as parse_router_config
from tests.identity.conftest import ROOT

EXAMPLES = ROOT / "docs" / "examples" / "secure"


def commands(text: str, prefix: str) -> list[list[str]]:
    """The commented command lines starting with `prefix` (continued with a trailing backslash), as argv lists."""
    out: list[list[str]] = []
    pending = ""
    for line in text.splitlines():
        body = line.lstrip("#").strip()
        if pending:
            pending += " " + body
        elif body.startswith(prefix):
            pending = body
        if pending and not pending.endswith("\\"):
            out.append(shlex.split(pending.split(" #")[0].removesuffix("&")))
            pending = ""
        pending = pending.removesuffix("\\").rstrip() if pending else ""
    return out


def run_infermesh(argv: list[str]) -> str:
    """Run a documented `infermesh ...` line (a trailing `> FILE` writes its output there); its output."""
    assert argv[0] == "infermesh"
    out = None
    if ">" in argv:
        argv, out = argv[: argv.index(">")], argv[argv.index(">") + 1]
    result = subprocess.run([sys.executable, "-m", "meshweb.cli", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if out is not None:
        Path(out).write_text(result.stdout)
    return result.stdout


def example(name: str, tmp_path: Path) -> str:
    return (EXAMPLES / name).read_text().replace("/tmp/infermesh-secure", str(tmp_path))


def test_secure_agent_example_as_documented(tmp_path: Path) -> None:
    text = example("agent.yaml", tmp_path)
    issued = commands(text, "infermesh ca ")
    assert len(issued) == 4
    for argv in issued:
        run_infermesh(argv)
    (ctl,) = commands(text, "infermesh ctl ")
    args = build_parser().parse_args(ctl[2:])
    assert args.agent == "127.0.0.1:7443" and identity(args) is not None
    config = parse_config(yaml.safe_load(text), env={})
    assert config.tls is not None and config.tls.trust_domain == "mesh.example" and config.tls.jwt is not None
    # The operator token the example writes is one this agent's tls.jwt accepts for admin calls.
    token = (tmp_path / "admin" / "token").read_text().strip()
    assert JwtVerifier(config.tls.jwt)(token) is None
    assert JwtVerifier(config.tls.jwt)(token[:-4] + "AAAA") == "token signature does not verify"


def test_secure_router_example_as_documented(tmp_path: Path) -> None:
    agent_text, router_text = example("agent.yaml", tmp_path), example("router.yaml", tmp_path)
    issued = commands(agent_text, "infermesh ca ") + commands(router_text, "infermesh ca ")
    assert len(issued) == 6
    for argv in issued:
        run_infermesh(argv)
    config = parse_router_config(yaml.safe_load(router_text), env={})
    assert config.agent.tls is not None and config.runtime_tls() == config.agent.tls
    agent = yaml.safe_load(agent_text)
    assert config.agent.address == agent["listen"]["grpc"]
    # The runtime the agent scrapes is the one the example starts, serving mTLS with the files just issued.
    (runtime,) = commands(router_text, "infermesh emulate-runtime ")
    em = emulator_args(runtime[2:])
    assert em.tls_client_ca and em.ssl_context() is not None
    assert [r["url"] for r in agent["runtimes"]] == [f"https://127.0.0.1:{em.port}"]


def test_claim_mapping_example() -> None:
    rules = parse_mapping((EXAMPLES / "claim-mapping.yaml").read_text())
    assert roles_for({"groups": ["acme-engineers"], "email": "x@globex.example"}, rules) == {
        "acme": "member",
        "globex": "viewer",
    }
