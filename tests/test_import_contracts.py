"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and the linter does catch a climb."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_contracts_are_kept() -> None:
    done = _lint(ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_climb_breaks_the_layers(tmp_path: Path) -> None:
    """The layers without the named exceptions: the known climbs are reported, importer -> imported."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["id"] == "meshweb-layers")
    lines = [
        "[importlinter]",
        "root_packages =\n    meshweb",
        "",
        "[importlinter:contract:layers]",
        "name = layers without exceptions",
        "type = layers",
        "layers =\n" + "\n".join(f"    {layer}" for layer in layers["layers"]),
    ]
    ini = tmp_path / "contracts.ini"
    ini.write_text("\n".join(lines) + "\n")
    done = _lint(ini)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "meshweb.fleet.services -> meshweb.meshlink.models" in done.stdout, done.stdout


def test_the_graph_script_counts_the_climbs() -> None:
    done = subprocess.run(
        [sys.executable, "tools/import_graph.py", "--list"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    ignored = next(
        c
        for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
        if c["id"] == "meshweb-layers"
    )["ignore_imports"]
    climbs = [line.strip() for line in done.stdout.splitlines() if line.startswith("  meshweb.")]
    # every climb the script finds is one the contract names
    for climb in climbs:
        importer, imported = climb.split(" -> ")
        assert f"{importer.split(':')[0]} -> {imported}" in ignored, climb
