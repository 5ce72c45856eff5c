"""The data directory is resolved in one place (agents/datadir.py) for the agent, the portal and the demo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agents.datadir import DATA_DIR_ENV, data_dir

ROOT = Path(__file__).resolve().parents[2]


def test_the_variable_names_the_directory_and_its_absence_the_home_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert data_dir({DATA_DIR_ENV: str(tmp_path)}) == tmp_path.resolve()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir({}) == (tmp_path / "home" / ".local" / "share" / "infermesh").resolve()
    assert data_dir({DATA_DIR_ENV: ""}) == data_dir({})  # set but empty: the default, as before
    assert data_dir({DATA_DIR_ENV: "~/d"}) == (tmp_path / "home" / "d").resolve()
    monkeypatch.chdir(tmp_path)
    assert data_dir({DATA_DIR_ENV: "rel"}) == tmp_path / "rel"  # absolute: a component may change directory later
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "from-env"))
    assert data_dir() == tmp_path / "from-env"


def test_no_other_module_computes_it() -> None:
    """Reading the variable or spelling the default anywhere else would let two processes disagree."""
    rule = re.compile(
        r"""(environ(\.get)?[\[(]|getenv\()\s*["']INFERMESH_DATA_DIR"""  # reading the variable
        r"""|"share" / "infermesh["']"""  # spelling the default
    )
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in ("agents", "router", "meshweb")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "agents" / "datadir.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if rule.search(line)
    ]
    assert not found, found
