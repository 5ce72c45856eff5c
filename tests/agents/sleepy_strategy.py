"""A Python strategy that never answers: the host must abandon it at the budget (tests/agents/test_strategy_plugins)."""

from __future__ import annotations

import random
import time

from agents.strategies.base import RouteRequest, Scored, Strategy, TargetIndex


class SleepForever(Strategy):
    name = "sleep_forever"

    def rank(self, index: TargetIndex, request: RouteRequest, k: int, rng: random.Random) -> list[Scored]:
        while True:
            time.sleep(3600)
