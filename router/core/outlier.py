"""Outlier ejection: a target with N consecutive failures is skipped for a backoff that doubles on each ejection."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _TargetHealth:
    consecutive: int = 0
    ejections: int = 0
    ejected_until: float = 0.0


class OutlierDetector:
    def __init__(
        self, consecutive_failures: int, base_ejection_s: float, max_ejection_s: float, max_ejected_fraction: float
    ) -> None:
        self.threshold = consecutive_failures
        self.base = base_ejection_s
        self.max = max_ejection_s
        self.max_fraction = max_ejected_fraction
        self._health: dict[str, _TargetHealth] = {}

    def on_success(self, target: str) -> None:
        h = self._health.get(target)
        if h is not None:
            h.consecutive = 0
            # A target that served well after its ejection earns its backoff back step by step.
            if h.ejections and h.ejected_until == 0.0:
                h.ejections -= 1

    def on_failure(self, target: str, now: float) -> bool:
        """Record a failure; True when this failure ejects the target."""
        h = self._health.setdefault(target, _TargetHealth())
        h.consecutive += 1
        if h.consecutive >= self.threshold and h.ejected_until <= now:
            h.ejected_until = now + min(self.max, self.base * (2**h.ejections))
            h.ejections += 1
            h.consecutive = 0
            return True
        return False

    def is_ejected(self, target: str, now: float) -> bool:
        h = self._health.get(target)
        if h is None or h.ejected_until == 0.0:
            return False
        if h.ejected_until <= now:
            h.ejected_until = 0.0
            return False
        return True

    def filter(self, targets: list[str], now: float) -> list[str]:
        """Targets not ejected; never eject more than `max_ejected_fraction` (a fleet-wide blip must not empty it)."""
        alive = [t for t in targets if not self.is_ejected(t, now)]
        if not targets:
            return alive
        min_alive = max(1, len(targets) - int(len(targets) * self.max_fraction))
        if len(alive) >= min_alive:
            return alive
        ejected = sorted((t for t in targets if t not in alive), key=lambda t: self._health[t].ejected_until)
        return alive + ejected[: min_alive - len(alive)]

    def ejected_count(self, now: float) -> int:
        return sum(1 for t in list(self._health) if self.is_ejected(t, now))
