"""The IO adapter's sans-IO core: probe results of dataset and checkpoint stores in, rolling throughput, latency and
error figures per store out, with a "slow store" rule that trips and clears with hysteresis.

No clocks and no I/O here: the driver (agents/io/component.py) times real probes and feeds them in; `observe` returns
the transitions (slow / recovered) it must announce.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

ROLES = frozenset({"checkpoint", "dataset", "any"})


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe of a store: write, read back and delete `nbytes`; the seconds of each operation (None: not
    reached), or the error that stopped it."""

    store: str
    at: float
    nbytes: int
    write_s: float | None = None
    read_s: float | None = None
    delete_s: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.write_s is not None and self.read_s is not None


@dataclass(frozen=True, slots=True)
class SlowRule:
    """When a store counts as slow. A probe is bad when it failed, when writing or reading took longer than
    `write_latency_s` / `read_latency_s`, or when its write throughput fell under `min_write_mbps` (MB/s, 0 = no
    floor). `trip_after` bad probes in a row make the store slow; `clear_after` good ones in a row clear it."""

    write_latency_s: float = 1.0
    read_latency_s: float = 1.0
    min_write_mbps: float = 0.0
    trip_after: int = 3
    clear_after: int = 3

    def __post_init__(self) -> None:
        if self.write_latency_s <= 0 or self.read_latency_s <= 0:
            raise ValueError("slow thresholds: write_latency_s and read_latency_s must be > 0")
        if self.min_write_mbps < 0:
            raise ValueError(f"slow thresholds: min_write_mbps must be >= 0, got {self.min_write_mbps}")
        if self.trip_after < 1 or self.clear_after < 1:
            raise ValueError("slow thresholds: trip_after and clear_after must be >= 1")

    def why_bad(self, r: ProbeResult) -> str:
        """Why the probe counts against the store ('' when it is good)."""
        if not r.ok:
            return f"probe failed: {r.error or 'incomplete'}"
        assert r.write_s is not None and r.read_s is not None
        if r.write_s > self.write_latency_s:
            return f"write took {r.write_s:.3f}s (limit {self.write_latency_s:g}s)"
        if r.read_s > self.read_latency_s:
            return f"read took {r.read_s:.3f}s (limit {self.read_latency_s:g}s)"
        if self.min_write_mbps > 0 and r.nbytes / max(r.write_s, 1e-9) / 1e6 < self.min_write_mbps:
            mbps = r.nbytes / max(r.write_s, 1e-9) / 1e6
            return f"write throughput {mbps:.2f} MB/s (floor {self.min_write_mbps:g} MB/s)"
        return ""


@dataclass(frozen=True, slots=True)
class Transition:
    """The store became slow (`slow=True`) or recovered; `reason` is the last bad probe's reason on tripping."""

    store: str
    role: str
    slow: bool
    reason: str


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(slots=True)
class StoreStats:
    """The rolling window of one store's probes and its slow state."""

    name: str
    kind: str
    uri: str
    role: str = "any"
    window: int = 20
    results: deque[ProbeResult] = field(default_factory=deque)
    slow: bool = False
    reason: str = ""
    bad_run: int = 0
    good_run: int = 0
    probes: int = 0
    errors: int = 0

    def add(self, r: ProbeResult, rule: SlowRule) -> Transition | None:
        self.results.append(r)
        while len(self.results) > self.window:
            self.results.popleft()
        self.probes += 1
        if not r.ok:
            self.errors += 1
        why = rule.why_bad(r)
        if why:
            self.bad_run, self.good_run = self.bad_run + 1, 0
            if not self.slow and self.bad_run >= rule.trip_after:
                self.slow, self.reason = True, why
                return Transition(self.name, self.role, True, why)
            if self.slow:
                self.reason = why
        else:
            self.good_run, self.bad_run = self.good_run + 1, 0
            if self.slow and self.good_run >= rule.clear_after:
                self.slow, self.reason = False, ""
                return Transition(self.name, self.role, False, f"{rule.clear_after} good probes in a row")
        return None

    def summary(self) -> dict[str, Any]:
        """The store's figures over its window (JSON-ready): throughput in MB/s (median of the probes), latency in
        seconds (p50 / p95 of write and read), the window's error ratio and the slow flag."""
        ok = [r for r in self.results if r.ok]
        out: dict[str, Any] = {
            "kind": self.kind,
            "uri": self.uri,
            "role": self.role,
            "probes": len(self.results),
            "error_ratio": round(1.0 - len(ok) / len(self.results), 4) if self.results else 0.0,
            "errors_total": self.errors,
            "slow": self.slow,
            "reason": self.reason,
            "last_error": next((r.error for r in reversed(self.results) if r.error), ""),
        }
        if ok:
            writes = [r.write_s or 0.0 for r in ok]  # an ok probe has both times
            reads = [r.read_s or 0.0 for r in ok]
            out |= {
                "write_mbps": round(
                    _quantile([r.nbytes / max(w, 1e-9) / 1e6 for r, w in zip(ok, writes, strict=True)], 0.5), 3
                ),
                "read_mbps": round(
                    _quantile([r.nbytes / max(x, 1e-9) / 1e6 for r, x in zip(ok, reads, strict=True)], 0.5), 3
                ),
                "write_p50_s": round(_quantile(writes, 0.5), 6),
                "write_p95_s": round(_quantile(writes, 0.95), 6),
                "read_p50_s": round(_quantile(reads, 0.5), 6),
                "read_p95_s": round(_quantile(reads, 0.95), 6),
            }
        return out


class IoState:
    """Every probed store of one node."""

    def __init__(self, rule: SlowRule | None = None, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.rule = rule or SlowRule()
        self.window = window
        self.stores: dict[str, StoreStats] = {}

    def add_store(self, name: str, kind: str, uri: str, role: str = "any") -> StoreStats:
        if role not in ROLES:
            raise ValueError(f"store {name}: unknown role {role!r}; use one of {', '.join(sorted(ROLES))}")
        if name in self.stores:
            raise ValueError(f"store {name}: named twice")
        st = StoreStats(name, kind, uri, role, self.window)
        self.stores[name] = st
        return st

    def observe(self, r: ProbeResult) -> Transition | None:
        st = self.stores.get(r.store)
        if st is None:
            raise KeyError(f"probe of unknown store {r.store!r}")
        return st.add(r, self.rule)

    def snapshot(self, node: str, at: float) -> dict[str, Any]:
        """What the node publishes (`kv/io/stores/<node>`): its stores' summaries, keyed by name."""
        return {"node": node, "at": at, "stores": {n: s.summary() for n, s in sorted(self.stores.items())}}
