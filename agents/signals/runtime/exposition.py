"""Prometheus text exposition parsed into an index of samples, with histogram and summary quantiles.

Parsing is delegated to prometheus_client's text parser; anything it refuses becomes a `MetricsParseError` that
names the problem. Histogram quantiles follow PromQL's `histogram_quantile` (linear interpolation inside a bucket).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

MAX_TEXT_BYTES = 32 * 1024 * 1024


class MetricsParseError(ValueError):
    """The text is not Prometheus exposition format."""


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


# A cumulative histogram: (upper bound, cumulative count) sorted by bound, +Inf included when published.
Buckets = list[tuple[float, float]]


class MetricIndex:
    """All samples of one scrape, looked up by sample name."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.by_name: dict[str, list[Sample]] = defaultdict(list)
        for s in samples:
            self.by_name[s.name].append(s)

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def get(self, name: str) -> list[Sample]:
        return self.by_name.get(name, [])

    def names(self) -> set[str]:
        return set(self.by_name)

    def histogram(self, base: str, group_by: str) -> dict[str, tuple[Buckets, float | None, float | None]]:
        """Buckets, _count and _sum per value of the `group_by` label, summed over all other labels.

        Accepts both `<base>_bucket{le=...}` and the bare `<base>{le=...}` that some published docs show.
        """
        acc: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for s in [*self.get(f"{base}_bucket"), *(x for x in self.get(base) if "le" in x.labels)]:
            try:
                le = float(s.labels["le"])
            except (KeyError, ValueError):
                continue
            acc[s.labels.get(group_by, "")][le] += s.value
        out: dict[str, tuple[Buckets, float | None, float | None]] = {}
        for key, by_le in acc.items():
            out[key] = (sorted(by_le.items()), self._total(f"{base}_count", group_by, key),
                        self._total(f"{base}_sum", group_by, key))  # fmt: skip
        return out

    def _total(self, name: str, group_by: str, key: str) -> float | None:
        vals = [s.value for s in self.get(name) if s.labels.get(group_by, "") == key]
        return sum(vals) if vals else None


def parse_exposition(text: str) -> MetricIndex:
    """Parse exposition text; raises MetricsParseError on anything that is not Prometheus text format."""
    if not isinstance(text, str):
        raise MetricsParseError(f"metrics text must be str, not {type(text).__name__}")
    if len(text) > MAX_TEXT_BYTES:
        raise MetricsParseError(f"metrics text too large ({len(text)} bytes > {MAX_TEXT_BYTES})")
    samples: list[Sample] = []
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.append(Sample(s.name, dict(s.labels), float(s.value)))
                if family.type == "counter" and s.name.endswith("_total"):
                    # the parser appends _total to every counter sample; runtimes that do not (TGI, Triton,
                    # DCGM) are looked up by the name they published
                    samples.append(Sample(s.name[: -len("_total")], dict(s.labels), float(s.value)))
    except (ValueError, TypeError, IndexError, KeyError) as e:
        first = next((ln for ln in text.splitlines() if ln.strip()), "")[:80]
        raise MetricsParseError(f"not Prometheus exposition text ({e}); first line: {first!r}") from e
    return MetricIndex(samples)


def histogram_quantile(q: float, buckets: Buckets, count: float | None = None) -> float | None:
    """PromQL histogram_quantile over cumulative buckets; None when empty.

    A published fragment may lack its +Inf bucket: then `count` (the _count series) stands in for it, and a rank
    beyond the last finite bucket yields that bucket's bound, a lower estimate (as PromQL does for +Inf).
    """
    finite = [(b, c) for b, c in buckets if not math.isinf(b) and not math.isnan(c)]
    inf = [c for b, c in buckets if math.isinf(b) and b > 0]
    total = inf[0] if inf else (count if count is not None else (finite[-1][1] if finite else None))
    if total is None or total <= 0 or not finite:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, cum in finite:
        if cum >= rank:
            if cum == prev_count:
                return bound
            if bound <= 0:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (cum - prev_count)
        prev_bound, prev_count = bound, cum
    return finite[-1][0]


def bucket_delta(cur: Buckets, prev: Buckets) -> Buckets | None:
    """Buckets observed between two scrapes; None after a counter reset or a change of bucket layout."""
    prev_map = dict(prev)
    if set(prev_map) != {b for b, _ in cur}:
        return None
    out = [(b, c - prev_map[b]) for b, c in cur]
    if any(c < 0 for _, c in out):
        return None
    return out
