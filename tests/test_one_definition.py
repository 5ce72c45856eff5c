"""Helpers every test package and benchmark needs are defined once: a free port (agents/binding.py) and a
restartable agent process (tests/agents/harness.py). A second copy would drift, as the nine earlier ones did."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = {
    r"def _?free_ports?\(": "agents/binding.py",
    r"class AgentProc\b": "tests/agents/harness.py",
}


def test_each_helper_has_one_definition() -> None:
    sources = [p for d in ("agents", "router", "meshweb", "tests", "bench", "tools") for p in (ROOT / d).rglob("*.py")]
    for pattern, home in DEFINITIONS.items():
        rule = re.compile(rf"^\s*{pattern}", re.M)
        found = sorted(str(p.relative_to(ROOT)) for p in sources if rule.search(p.read_text()))
        assert found == [home], (pattern, found)
