"""The command line as an operator meets it: every option has help text and shows its default, every command has
examples, `--version`, `help CMD`, "did you mean", and completion scripts that a real bash sources."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from agents.argparsing import shows_default, walk
from meshweb.cli import COMMANDS, command_parsers, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    return command_parsers()


def test_every_command_has_a_parser(parsers: dict[str, argparse.ArgumentParser]) -> None:
    assert set(parsers) == set(COMMANDS) - {"manage"}  # manage is Django's own command line


def test_every_option_has_help_and_shows_its_default(parsers: dict[str, argparse.ArgumentParser]) -> None:
    missing, hidden = [], []
    for name, root in parsers.items():
        for path, parser in walk(root, [name]):
            formatter = parser._get_formatter()
            for action in parser._actions:
                if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                    continue
                where = f"infermesh {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
                if not action.help or action.help == argparse.SUPPRESS:
                    missing.append(where)
                    continue
                shown = formatter._expand_help(action) if hasattr(formatter, "_expand_help") else action.help
                if not shows_default(action) and "default" not in shown.lower():
                    hidden.append(f"{where} (default {action.default!r})")
    assert not missing, "options without help text:\n" + "\n".join(missing)
    assert not hidden, "defaults the help does not show:\n" + "\n".join(hidden)


def test_every_command_has_examples(parsers: dict[str, argparse.ArgumentParser]) -> None:
    without = [name for name, p in parsers.items() if "examples:" not in (p.epilog or "")]
    assert not without, f"commands without an Examples section: {without}"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    for argv in (["--version"], ["version"]):
        assert main(argv) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith("infermesh 0.") and "mesh API infermesh.v1" in line
        assert f"(git {git.stdout.strip()})" in line


def test_help_cmd_and_did_you_mean() -> None:
    run = [sys.executable, "-m", "meshweb.cli"]
    agent = subprocess.run([*run, "help", "agent"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert agent.returncode == 0 and agent.stdout.startswith("usage: infermesh agent"), agent.stdout
    assert "examples:" in agent.stdout
    typo = subprocess.run([*run, "agnet"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert typo.returncode == 2 and "did you mean 'agent'?" in typo.stderr
    verb = subprocess.run([*run, "ctl", "nodse"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert verb.returncode == 2 and "did you mean 'nodes'?" in verb.stderr, verb.stderr
    flag = subprocess.run(
        [*run, "ctl", "nodes", "--agnet", "x:1"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert flag.returncode == 2 and "did you mean '--agent'?" in flag.stderr, flag.stderr


def test_bash_sources_the_completion_and_completes(tmp_path: Path) -> None:
    script = tmp_path / "infermesh.bash"
    out = subprocess.run([sys.executable, "-m", "meshweb.cli", "completion", "bash"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, check=True).stdout  # fmt: skip
    script.write_text(out)
    probe = (
        f"set -e; source {script}; "
        'COMP_WORDS=(infermesh ctl sto); COMP_CWORD=2; _infermesh; echo "${COMPREPLY[*]}"; '
        'COMP_WORDS=(infermesh ctl store g); COMP_CWORD=3; _infermesh; echo "${COMPREPLY[*]}"; '
        'COMP_WORDS=(infermesh router --p); COMP_CWORD=2; _infermesh; echo "${COMPREPLY[*]}"'
    )
    r = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["store", "get"], r.stdout
    assert "--port" in lines[2].split(), r.stdout
