"""The checks a routing policy passes before it is written: every rule names the field it refuses, and a policy
that fails any of them is refused whole (422), so routers never see half of a change."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from meshweb.fleet.models import Node, Zone
from meshweb.policy.models import MODULE_PREFIX, Strategy, StrategyModule

MAX_PINS = 256


def known_strategies() -> list[str]:
    return list(Strategy.values)


def _strategy_problem(name: str) -> str | None:
    if name in Strategy.values:
        return None
    if name.startswith(MODULE_PREFIX):
        digest = name[len(MODULE_PREFIX) :]
        if StrategyModule.objects.filter(sha256=digest).exists():
            return None
        return f"No uploaded strategy module has the checksum {digest!r} (upload it to /api/v1/strategy-modules/)."
    return (
        f"Unknown strategy {name!r}; use one of {', '.join(known_strategies())} or an uploaded module "
        f"({MODULE_PREFIX}<sha256>)."
    )


def check_routing_policy(attrs: Mapping[str, Any]) -> dict[str, list[str]]:
    """Problems by field name (empty when the policy can be applied)."""
    problems: dict[str, list[str]] = {}

    def refuse(field: str, message: str) -> None:
        problems.setdefault(field, []).append(message)

    for field in ("strategy", "shadow_strategy"):
        value = attrs.get(field)
        if value:
            problem = _strategy_problem(str(value))
            if problem:
                refuse(field, problem)
    split = attrs.get("ab_split") or {}
    if not isinstance(split, Mapping):
        refuse("ab_split", "Give a map of strategy name to percent of requests.")
    elif split:
        total = 0.0
        for name, share in split.items():
            problem = _strategy_problem(str(name))
            if problem:
                refuse("ab_split", problem)
            if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share):
                refuse("ab_split", f"The share of {name!r} must be a number of percent, got {share!r}.")
                continue
            if share < 0:
                refuse("ab_split", f"The share of {name!r} is negative ({share:g}).")
            total += float(share)
        if "ab_split" not in problems and abs(total - 100.0) > 1e-6:
            refuse("ab_split", f"The shares must add up to 100 (percent of requests); they add up to {total:g}.")
    params = attrs.get("params") or {}
    load = params.get("lora_load_s") if isinstance(params, Mapping) else None
    if load is not None and (
        isinstance(load, bool) or not isinstance(load, int | float) or not math.isfinite(load) or not 0 <= load <= 600
    ):
        refuse("params", f"lora_load_s is the seconds a runtime takes to load an adapter, 0..600; got {load!r}.")
    for field, model, what in (("pin_nodes", Node, "node"), ("pin_zones", Zone, "zone")):
        names = attrs.get(field) or []
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            refuse(field, f"Give a list of {what} names.")
            continue
        if len(names) > MAX_PINS:
            refuse(field, f"At most {MAX_PINS} {what}s.")
            continue
        if not names:
            continue
        known = set(model.objects.filter(name__in=names).values_list("name", flat=True))
        unknown = sorted(set(names) - known)
        if unknown:
            refuse(field, f"Unknown {what}{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}.")
    return problems
