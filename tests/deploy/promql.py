"""What the shipped dashboards and rules ask Prometheus: every PromQL expression, named by where it comes from."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"

# Grafana's variables as a query with every value selected reads them: a regex matching anything, a short window.
_VARIABLES = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m"}
_VAR = re.compile(r"\$(\w+)")
# Names in a PromQL expression that are not metrics: functions, aggregations, keywords, label names in clauses.
_WORD = re.compile(r"(?<![\w\"'{=~!,.])([a-zA-Z_:][\w:]*)(?![\w\"'])")
_KEYWORDS = {
    "sum", "avg", "max", "min", "count", "by", "without", "and", "or", "unless", "on", "ignoring", "group_left",
    "group_right", "rate", "irate", "increase", "histogram_quantile", "time", "vector", "bool", "offset",
    "abs", "clamp_min", "clamp_max", "delta", "deriv", "absent", "topk", "bottomk", "quantile", "label_values",
}  # fmt: skip


@dataclass(frozen=True)
class Query:
    where: str  # "dashboard fleet.json / panel 'GPU temperature' / A" or "rule infermesh:..."
    expr: str


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise AssertionError(f"{name} is not installed: apt-get install prometheus (.ci/run does)")
    return path


def expand(expr: str) -> str:
    for k, v in _VARIABLES.items():
        expr = expr.replace(k, v)
    return _VAR.sub(".*", expr)


def dashboard_queries(directory: Path = DASHBOARDS) -> list[Query]:
    out: list[Query] = []
    for path in sorted(directory.glob("*.json")):
        d: dict[str, Any] = json.loads(path.read_text())
        for p in d["panels"]:
            for t in p.get("targets", []):
                out.append(Query(f"dashboard {path.name} / panel {p['title']!r} / {t['refId']}", expand(t["expr"])))
        for v in d.get("templating", {}).get("list", []):
            q = v.get("query")
            if v.get("type") == "query" and isinstance(q, dict):
                m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q["query"])
                assert m, f"dashboard {path.name}: variable {v['name']}: unsupported query {q['query']!r}"
                out.append(Query(f"dashboard {path.name} / variable {v['name']}", m.group(1)))
    return out


def rule_queries(directory: Path = RULES) -> list[Query]:
    out: list[Query] = []
    for path in sorted(directory.glob("*.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    out.append(Query(f"recording rule {rule['record']}", rule["expr"]))
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (best effort, enough for PromQL as these files write it)."""
    stripped = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # windows
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\"[^\"]*\"", "", stripped)
    names = set()
    for m in _WORD.finditer(stripped):
        word = m.group(1)
        rest = stripped[m.end() :].lstrip()
        if word in _KEYWORDS or rest.startswith("("):
            continue
        if re.fullmatch(r"[\d.e+-]+", word):
            continue
        names.add(word)
    return names
