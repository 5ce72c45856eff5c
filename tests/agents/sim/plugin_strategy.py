"""A strategy plugin for the simulator tests: hybrid_mesh scored with one fleet-wide service time."""

from __future__ import annotations

from agents.strategies.base import TargetView
from agents.strategies.builtins import HybridMesh


class FlatServiceHybrid(HybridMesh):
    name = "flat_service_hybrid"

    def base_terms(self, v: TargetView) -> dict[str, float]:
        saved = (v.work_left_s, v.ewma_latency_s)
        v.work_left_s, v.ewma_latency_s = 0.0, 0.8
        try:
            return super().base_terms(v)
        finally:
            v.work_left_s, v.ewma_latency_s = saved
