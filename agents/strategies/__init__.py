"""Routing strategies: the interface (`base`), the built-ins, and the host that runs them under a time budget.

Plugins are classes implementing `Strategy`, named as "package.module:Class" wherever a strategy name is accepted.
"""

from __future__ import annotations

import importlib
from typing import Any

from agents.strategies.base import (
    Decision,
    RouteRequest,
    RttFn,
    SampleParams,
    Scored,
    Strategy,
    TargetIndex,
    TargetView,
)
from agents.strategies.builtins import BUILTINS, BaselineRR, HybridMesh, HybridWeights, LeastQueue, ZoneRtt
from agents.strategies.cache import CacheAware, SessionAffinity

BUILTINS.setdefault(CacheAware.name, CacheAware)
BUILTINS.setdefault(SessionAffinity.name, SessionAffinity)


def load_strategy(spec: str, **options: Any) -> Strategy:
    """A built-in by name, or a plugin given as "package.module:Class" (constructed with `options`)."""
    if spec in BUILTINS:
        return BUILTINS[spec](**options)
    if spec.startswith("module:"):
        raise ValueError(
            f"strategy module {spec[7:]!r} is not in the policy store, or its bytes do not match its checksum"
        )
    if spec.startswith("wasm:"):
        from agents.strategies.wasm import WasmStrategy  # wasmtime is loaded only where a policy names a module

        return WasmStrategy(spec, **options)
    if ":" not in spec:
        from agents.strategies.plugins import load_plugin  # a package's entry point in `infermesh.strategies`

        plugin = load_plugin(spec, **options)
        if plugin is not None:
            return plugin
        raise ValueError(
            f"unknown strategy {spec!r}: use one of {sorted(BUILTINS)}, an installed package's strategy, "
            "'wasm:PATH#sha256=HEX' or 'package.module:Class'"
        )
    module_name, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"strategy plugin {spec!r} cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"strategy plugin {spec!r} is not a subclass of agents.strategies.Strategy")
    if hasattr(cls, "api_version"):
        from agents.strategies.plugins import check_api_version

        check_api_version(spec, cls.api_version)
    strategy = cls(**options)
    if not strategy.name:
        raise ValueError(f"strategy plugin {spec!r} has no name")
    return strategy


def make_builtin_strategies(rtt: RttFn | None = None) -> dict[str, Strategy]:
    """Fresh instances of every built-in (strategies keep per-host state, so hosts never share them)."""
    return {
        BaselineRR.name: BaselineRR(),
        LeastQueue.name: LeastQueue(),
        HybridMesh.name: HybridMesh(rtt=rtt),
    }


__all__ = [
    "BUILTINS",
    "BaselineRR",
    "CacheAware",
    "Decision",
    "HybridMesh",
    "HybridWeights",
    "LeastQueue",
    "RouteRequest",
    "RttFn",
    "SampleParams",
    "Scored",
    "SessionAffinity",
    "Strategy",
    "TargetIndex",
    "TargetView",
    "ZoneRtt",
    "load_strategy",
    "make_builtin_strategies",
]
