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


def test_the_layers_name_no_exception() -> None:
    """Every climb was removed: the layer contract carries no ignored import that would let one back in."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["id"] == "meshweb-layers")
    assert "ignore_imports" not in layers, layers["ignore_imports"]


def test_a_climb_breaks_the_layers(tmp_path: Path) -> None:
    """With identity and the fleet swapped, identity's imports of the fleet climb, and the linter names them
    importer -> imported."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    order = next(c for c in config["contracts"] if c["id"] == "meshweb-layers")["layers"]
    i, j = order.index("meshweb.identity"), order.index("meshweb.fleet")
    assert j == i + 1, order  # identity sits right above the fleet
    order[i], order[j] = order[j], order[i]
    lines = [
        "[importlinter]",
        "root_packages =\n    meshweb",
        "",
        "[importlinter:contract:layers]",
        "name = layers with identity below the fleet",
        "type = layers",
        "layers =\n" + "\n".join(f"    {layer}" for layer in order),
    ]
    ini = tmp_path / "contracts.ini"
    ini.write_text("\n".join(lines) + "\n")
    done = _lint(ini)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "meshweb.identity.api -> meshweb.fleet.api.views" in done.stdout, done.stdout


def test_the_graph_script_finds_no_climb_and_no_circle() -> None:
    done = subprocess.run(
        [sys.executable, "tools/import_graph.py", "--list"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "climbing imports: 0 " in done.stdout, done.stdout
    assert "circles among apps: 0 " in done.stdout, done.stdout
    assert not [line for line in done.stdout.splitlines() if line.startswith("  ")], done.stdout
