"""What the architecture pages name exists: every dotted module of the three packages (with the attribute it names,
if any) and every path in the repository quoted in `backticks` in docs/ARCHITECTURE.md and docs/parts/*.md.

Read statically (the files and their top-level names), so a page cannot name a module that was moved or never
written. Names with a placeholder (`*`, `<...>`, `{a,b}`) are patterns, not names, and are left out.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "docs" / "ARCHITECTURE.md", *sorted((ROOT / "docs" / "parts").glob("*.md"))]
PACKAGES = ("meshweb", "agents", "router")
TOP_DIRS = (*PACKAGES, "tests", "bench", "tools", "docs", "deploy", "docker", "templates", "static")
FILE_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".json", ".toml", ".proto", ".html", ".js", ".css", ".txt")
DOTTED = re.compile(rf"(?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(rf"(?:{'|'.join(TOP_DIRS)})/[\w./-]*")


def quoted_names(text: str) -> set[str]:
    names = set()
    for quoted in re.findall(r"`([^`\n]+)`", text):
        for phrase in quoted.split():
            if any(c in phrase for c in "*<>{}[]$"):
                continue
            for word in re.split(r"[,;()=]+", phrase):
                word = word.rstrip(".:")
                if word:
                    names.add(word.split(":")[0] if DOTTED.fullmatch(word.split(":")[0]) else word)
    return names


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _top_level(path: Path) -> frozenset[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def missing(name: str) -> str | None:
    """Why `name` names nothing in the repository, or None when it does."""
    if DOTTED.fullmatch(name) and not name.endswith(FILE_SUFFIXES):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            found = _module_file(parts[:i])
            if found is not None:
                rest = parts[i:]
                if rest and rest[0] not in _top_level(found):
                    return f"{'.'.join(parts[:i])} has no {rest[0]}"
                return None
        return "no such module"
    if PATH.fullmatch(name) and not (ROOT / name).exists():
        return "no such file or directory"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_module_and_path_a_page_names_exists(page: Path) -> None:
    wrong = {name: why for name in sorted(quoted_names(page.read_text())) if (why := missing(name))}
    assert not wrong, wrong


def test_the_check_sees_a_wrong_name() -> None:
    assert missing("router.watch") == "router has no watch"
    assert missing("agents.nowhere.at_all") == "agents has no nowhere"
    assert missing("tools.nowhere") is None  # not one of the three packages: not checked
    assert missing("agents.datadir.nothing_here") == "agents.datadir has no nothing_here"
    assert missing("meshweb/nowhere.py") == "no such file or directory"
    assert missing("agents.datadir.data_dir") is None
    assert missing("agents/meshd/servicers.py") is None
    assert quoted_names("`tests/agents/test_*.py`, `docs/examples/raft-3node/node{1,2,3}.yaml`") == set()
