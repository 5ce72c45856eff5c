"""Admission control: refuse early (429 + Retry-After) when every candidate target's queue is over the threshold.

The threshold scales with the request's SLO class, so batch traffic is shed before standard, and critical last.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(slots=True)
class TargetLoad:
    """What the router knows of one target's queue: the agent's view plus requests this router has in flight."""

    waiting: float  # requests queued at the runtime (agent-reported, or estimated locally)
    service_rate: float | None = None  # completed requests/s when known, for Retry-After


@dataclass(slots=True)
class AdmissionDecision:
    admitted: bool
    reason: str = ""
    retry_after_s: int = 0


class AdmissionController:
    """Pure function of (targets' load, priority, inflight) with its thresholds."""

    def __init__(
        self,
        max_queue_per_target: float,
        priority_factor: Mapping[str, float],
        max_inflight: int,
        max_retry_after_s: int = 30,
    ) -> None:
        self.max_queue = max_queue_per_target
        self.factor = dict(priority_factor)
        self.max_inflight = max_inflight
        self.max_retry_after_s = max_retry_after_s

    def decide(self, loads: Iterable[TargetLoad], priority: str, inflight: int) -> AdmissionDecision:
        factor = self.factor.get(priority, 1.0)
        # The per-worker hard cap bounds memory under any overload; lower classes hit a lower cap.
        if inflight >= self.max_inflight * min(1.0, factor):
            return AdmissionDecision(False, "router_inflight", 1)
        threshold = self.max_queue * factor
        best_wait: float | None = None
        any_target = False
        for load in loads:
            any_target = True
            if load.waiting < threshold:
                return AdmissionDecision(True)
            if load.service_rate and load.service_rate > 0:
                wait = (load.waiting - threshold + 1) / load.service_rate
                best_wait = wait if best_wait is None else min(best_wait, wait)
        if not any_target:
            return AdmissionDecision(False, "no_target", 1)
        retry = 1 if best_wait is None else max(1, math.ceil(best_wait))
        return AdmissionDecision(False, "queue_full", min(retry, self.max_retry_after_s))
