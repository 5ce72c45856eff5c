"""Data and checkpoint locality as a cost term of the training scheduler (sans-IO).

Each node's IO adapter publishes what it measured of the stores it reaches (`kv/io/stores/<node>`, see
agents/io/core.py). For a job, the stores that matter are the one its `checkpoint_uri` names and the one its
`INFERMESH_DATASET_URI` environment variable names; a store matches a URI when the URI starts with the store's URI.
The cost of running a worker on a node is, summed over the job's stores, the node's p50 write + read latency of
the store when it measures it healthy, `slow_s` more when it reports it slow or failing, and `unmeasured_s` when the
node does not reach the store at all while other nodes do (the data is elsewhere). A URI no node measures costs
nothing anywhere (no information, no bias). A synchronous job waits on its slowest worker, so the planner adds the
highest cost among a candidate's nodes to the candidate's predicted step time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DATASET_ENV = "INFERMESH_DATASET_URI"
KEY_PREFIX = "kv/io/stores/"


@dataclass(frozen=True, slots=True)
class LocalityConfig:
    unmeasured_s: float = 0.05  # the node does not reach a store other nodes reach
    slow_s: float = 0.5  # the node reports the store slow or failing
    stale_after_s: float = 120.0  # a node's record older than this is ignored


def _matches(uri: str, store_uri: str) -> bool:
    base = store_uri.rstrip("/")
    return bool(base) and (uri == base or uri.startswith(base + "/"))


def job_uris(checkpoint_uri: str, env: Mapping[str, str]) -> list[str]:
    return [u for u in (checkpoint_uri, str(env.get(DATASET_ENV, ""))) if u]


class Locality:
    """Costs from the nodes' published IO records (node -> record as `IoState.snapshot` writes it)."""

    def __init__(self, records: Mapping[str, Any], now: float, config: LocalityConfig | None = None) -> None:
        self.config = config or LocalityConfig()
        self.by_node: dict[str, list[Mapping[str, Any]]] = {}
        for node, rec in records.items():
            if not isinstance(rec, Mapping) or not isinstance(rec.get("stores"), Mapping):
                continue
            try:
                at = float(rec.get("at", 0.0))
            except (TypeError, ValueError):
                continue
            if now - at > self.config.stale_after_s:
                continue
            self.by_node[str(node)] = [s for s in rec["stores"].values() if isinstance(s, Mapping)]

    def _store(self, node: str, uri: str) -> Mapping[str, Any] | None:
        """The node's measured store that holds `uri` (the longest matching store URI)."""
        best: Mapping[str, Any] | None = None
        for s in self.by_node.get(node, []):
            su = str(s.get("uri", ""))
            if _matches(uri, su) and (best is None or len(su) > len(str(best.get("uri", "")))):
                best = s
        return best

    def uri_cost(self, node: str, uri: str) -> float:
        if not any(self._store(n, uri) is not None for n in self.by_node):
            return 0.0
        s = self._store(node, uri)
        if s is None:
            return self.config.unmeasured_s
        latency = float(s.get("write_p50_s", 0.0) or 0.0) + float(s.get("read_p50_s", 0.0) or 0.0)
        bad = bool(s.get("slow")) or "write_p50_s" not in s  # slow, or not one probe succeeded in the window
        return latency + (self.config.slow_s if bad else 0.0)

    def cost(self, node: str, uris: list[str]) -> float:
        return sum(self.uri_cost(node, u) for u in uris)


def locality_fn(
    records: Mapping[str, Any], now: float, config: LocalityConfig | None = None
) -> Callable[[str, Mapping[str, str], str], float] | None:
    """`fn(checkpoint_uri, env, node) -> seconds` for the planner, or None when no node published IO records."""
    loc = Locality(records, now, config)
    if not loc.by_node:
        return None

    def fn(checkpoint_uri: str, env: Mapping[str, str], node: str) -> float:
        return loc.cost(node, job_uris(checkpoint_uri, env))

    return fn
