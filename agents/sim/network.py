"""Network model: cells grouped in regions on a plane, a true RTT per cell pair, and the Vivaldi estimate of it.

Messages experience the true RTT (plus jitter); strategies see the estimate the project's Vivaldi code
(`agents.topology.vivaldi`) converges to from noisy samples, as a router attached to the topology service would.
"""

from __future__ import annotations

import math
import random

from agents.sim.config import Network
from agents.topology.vivaldi import LatencyMatrix, simulate


class Topology:
    def __init__(self, cfg: Network, cells: int, regions: int, rng: random.Random) -> None:
        self.cfg = cfg
        self.cells = cells
        self.region_of = [c % regions for c in range(cells)]
        spread = cfg.region_spread_ms / 1000.0
        local = cfg.inter_cell_base_rtt_ms / 1000.0
        jitter = local if cfg.cell_spread_ms is None else cfg.cell_spread_ms / 1000.0
        centres = [(rng.uniform(0, spread), rng.uniform(0, spread)) for _ in range(regions)]
        pos = []
        for c in range(cells):
            cx, cy = centres[self.region_of[c]]
            pos.append((cx + rng.gauss(0, jitter / 2), cy + rng.gauss(0, jitter / 2)))
        self.intra_mean_s = cfg.intra_cell_rtt.mean_ms / 1000.0
        self.intra_std_s = cfg.intra_cell_rtt.std_ms / 1000.0
        # true RTT between cells (seconds); the diagonal is the intra-cell mean
        rtt = [[0.0] * cells for _ in range(cells)]
        for i in range(cells):
            rtt[i][i] = self.intra_mean_s
            for j in range(i + 1, cells):
                base = math.dist(pos[i], pos[j]) + local
                rtt[i][j] = rtt[j][i] = base * (1.0 + rng.uniform(-cfg.noise, cfg.noise))
        self.rtt_true = rtt
        self.rtt_est = self._vivaldi(rng)

    def _vivaldi(self, rng: random.Random) -> list[list[float]]:
        n = self.cells
        if self.cfg.vivaldi_rounds == 0 or n == 1:
            return [row[:] for row in self.rtt_true]
        matrix = LatencyMatrix([f"cell{c}" for c in range(n)], self.rtt_true)
        clients = simulate(matrix, self.cfg.vivaldi_rounds, random.Random(rng.random()))
        est = [[0.0] * n for _ in range(n)]
        for i in range(n):
            est[i][i] = self.intra_mean_s
            for j in range(i + 1, n):
                est[i][j] = est[j][i] = clients[i].coord.distance(clients[j].coord)
        return est

    def sample_rtt(self, src_cell: int, dst_cell: int, rng: random.Random) -> float:
        """One message's round trip (seconds): intra-cell ~ Normal(mean, std), between cells the true RTT +-2%."""
        if src_cell == dst_cell:
            return max(1e-5, rng.gauss(self.intra_mean_s, self.intra_std_s))
        return self.rtt_true[src_cell][dst_cell] * (1.0 + rng.uniform(-0.02, 0.02))

    def median_estimate_error(self) -> float:
        errs = sorted(
            abs(self.rtt_est[i][j] - self.rtt_true[i][j]) / self.rtt_true[i][j]
            for i in range(self.cells)
            for j in range(i + 1, self.cells)
        )
        return errs[len(errs) // 2] if errs else 0.0
