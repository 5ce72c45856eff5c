"""Python strategies from installed packages, and the deadline that isolates them.

A package registers a `Strategy` subclass under the entry-point group `infermesh.strategies`; the entry point's name
is the name a routing policy uses. The class declares the strategy API it was built for as `api_version =
"MAJOR.MINOR"`; the host loads it when the major versions match and the plugin's minor is not newer than the host's,
and refuses it otherwise with a message naming both versions.

Python cannot pre-empt a running function, so plugins run in their own daemon thread (`Isolated`): the decision waits
at most the host's budget and falls back on time with reason `deadline`; while an abandoned call is still running,
later decisions fall back at once with reason `busy` instead of queueing behind it.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from agents.strategies.base import RouteRequest, Scored, Strategy, TargetIndex, TargetView

if TYPE_CHECKING:
    from agents.strategies.placement import PlacementStrategy

STRATEGY_API_VERSION = "1.0"
ENTRY_POINT_GROUP = "infermesh.strategies"
DEFAULT_DEADLINE_S = 0.001


class PluginLoadError(ValueError):
    """A packaged strategy that cannot be used; the message names the plugin and the problem."""


class StrategyOverrun(RuntimeError):
    """An isolated strategy missed its deadline (or is still stuck in an earlier call)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.fallback_reason = reason


def _parse_version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def check_api_version(plugin: str, declared: object) -> None:
    if not isinstance(declared, str):
        raise PluginLoadError(
            f"strategy plugin {plugin!r} declares no api_version; "
            f"this host provides strategy API {STRATEGY_API_VERSION}"
        )
    try:
        want = _parse_version(declared)
    except ValueError as exc:
        raise PluginLoadError(f"strategy plugin {plugin!r} has api_version {declared!r}, not MAJOR.MINOR") from exc
    have = _parse_version(STRATEGY_API_VERSION)
    if want[0] != have[0] or want[1] > have[1]:
        raise PluginLoadError(
            f"strategy plugin {plugin!r} was built for strategy API {declared}; this host provides strategy API "
            f"{STRATEGY_API_VERSION}"
        )


def discover() -> dict[str, EntryPoint]:
    """The installed packaged strategies by name (nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _plugin_class(name: str, base: type[Any], base_path: str) -> type[Any] | None:
    """The class the installed entry point `name` names, checked to subclass `base` and for its API version; None
    when no installed package provides it."""
    ep = discover().get(name)
    if ep is None:
        return None
    try:
        cls = ep.load()
    except Exception as exc:  # an import error inside a third-party package
        raise PluginLoadError(f"strategy plugin {name!r} ({ep.value}) cannot be imported: {exc!r}") from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginLoadError(f"strategy plugin {name!r} ({ep.value}) is not a subclass of {base_path}")
    check_api_version(name, getattr(cls, "api_version", None))
    return cls


def load_plugin(name: str, **options: Any) -> Strategy | None:
    """The packaged strategy `name`, isolated behind a deadline; None when no installed package provides it."""
    cls = _plugin_class(name, Strategy, "agents.strategies.Strategy")
    return None if cls is None else Isolated(cls(**options))


def load_placement_plugin(name: str) -> PlacementStrategy | None:
    """The packaged training (placement) strategy `name` from the same entry-point group; None when no installed
    package provides it. It runs in the scheduler's pass under the host's placement budget (checked after it answers,
    as the built-ins: a placement decision is made once per job, not per request)."""
    from agents.strategies.placement import PlacementStrategy

    cls = _plugin_class(name, PlacementStrategy, "agents.strategies.placement.PlacementStrategy")
    return None if cls is None else cls()


class _Worker:
    """One daemon thread running one strategy's calls in order; a call stuck forever never blocks process exit."""

    def __init__(self, label: str) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], Any], _Job]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=f"strategy-{label}", daemon=True).start()

    def _run(self) -> None:
        while True:
            fn, job = self.jobs.get()
            try:
                job.result = fn()
            except BaseException as exc:  # handed to the waiting decision
                job.error = exc
            job.done.set()


class _Job:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Isolated(Strategy):
    """Runs a Python strategy's `rank` in its own thread under a deadline (the host sets it to its budget)."""

    def __init__(self, inner: Strategy, deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # the instance answers for the wrapped class
        self.reads_prompt = inner.reads_prompt  # type: ignore[misc]
        self.deadline_s = deadline_s
        self._worker = _Worker(inner.name or type(inner).__name__)
        self._stuck: _Job | None = None

    def __getattr__(self, attr: str) -> Any:  # optional hooks such as set_rtt reach the wrapped strategy
        return getattr(self.inner, attr)

    def on_upsert(self, view: TargetView, previous: TargetView | None) -> None:
        self.inner.on_upsert(view, previous)

    def on_remove(self, view: TargetView) -> None:
        self.inner.on_remove(view)

    def refresh(self, index: TargetIndex) -> None:
        self.inner.refresh(index)

    def on_routed(self, view: TargetView, request: RouteRequest) -> None:
        self.inner.on_routed(view, request)

    def on_withdrawn(self, view: TargetView, request: RouteRequest) -> None:
        self.inner.on_withdrawn(view, request)

    def explain(self, view: TargetView, request: RouteRequest) -> dict[str, float]:
        return self.inner.explain(view, request)

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        stuck = self._stuck
        if stuck is not None:
            if not stuck.done.is_set():
                raise StrategyOverrun("busy", f"{self.name} is still running a call abandoned at its deadline")
            self._stuck = None
        job = _Job()
        own_rng = random.Random(rng.random())  # an abandoned call may go on drawing; it must not share the host's
        inner_rank = self.inner.rank
        self._worker.jobs.put((lambda: inner_rank(index, request, k, own_rng), job))
        if not job.done.wait(self.deadline_s):
            self._stuck = job
            raise StrategyOverrun("deadline", f"{self.name} did not answer within {self.deadline_s * 1e3:.3f} ms")
        if job.error is not None:
            raise job.error
        result: list[Scored] = job.result
        return result


def isolate(strategy: Strategy) -> Strategy:
    """Wrap a user's Python strategy (not a built-in, not a sandboxed WebAssembly one) behind a deadline."""
    from agents.strategies import BUILTINS

    if isinstance(strategy, Isolated) or type(strategy) in BUILTINS.values():
        return strategy
    if type(strategy).__module__ == "agents.strategies.wasm":
        return strategy
    return Isolated(strategy)
