"""Vivaldi network coordinates as in Serf's `coordinate` package: Euclidean part + height + adjustment term,
a latency median filter, gravity toward the origin. Sans-IO: RTT samples in, coordinates out; randomness injected.
"""

from __future__ import annotations

import math
import random
import struct
from collections import deque
from dataclasses import dataclass, field

ZERO_THRESHOLD = 1.0e-6


@dataclass(slots=True)
class VivaldiConfig:
    dimensionality: int = 8
    error_max: float = 1.5
    ce: float = 0.25  # error-estimate damping
    cc: float = 0.25  # coordinate-update damping
    adjustment_window: int = 20
    height_min: float = 10.0e-6
    latency_filter_size: int = 3
    gravity_rho: float = 150.0


@dataclass(slots=True)
class Coordinate:
    vec: list[float]
    error: float
    adjustment: float = 0.0
    height: float = 10.0e-6

    @classmethod
    def origin(cls, config: VivaldiConfig) -> Coordinate:
        return cls([0.0] * config.dimensionality, config.error_max, 0.0, config.height_min)

    def is_valid(self) -> bool:
        return all(math.isfinite(x) for x in (*self.vec, self.error, self.adjustment, self.height))

    def raw_distance(self, other: Coordinate) -> float:
        return _magnitude(_diff(self.vec, other.vec)) + self.height + other.height

    def distance(self, other: Coordinate) -> float:
        """Estimated RTT in seconds; the adjustment terms are used only when they keep the estimate positive."""
        dist = self.raw_distance(other)
        adjusted = dist + self.adjustment + other.adjustment
        return adjusted if adjusted > 0.0 else dist

    def encode(self) -> bytes:
        """Compact wire form (rides on probe acks): dims, vec, error, adjustment, height as float32."""
        return struct.pack(
            f"!B{len(self.vec) + 3}f", len(self.vec), *self.vec, self.error, self.adjustment, self.height
        )

    @classmethod
    def decode(cls, data: bytes) -> Coordinate:
        if not data:
            raise ValueError("empty coordinate")
        dims = data[0]
        if dims == 0 or dims > 32 or len(data) != 1 + 4 * (dims + 3):
            raise ValueError(f"coordinate of {len(data)} bytes does not match {dims} dimensions")
        vals = struct.unpack(f"!{dims + 3}f", data[1:])
        c = cls(list(vals[:dims]), vals[dims], vals[dims + 1], vals[dims + 2])
        if not c.is_valid():
            raise ValueError("coordinate holds non-finite values")
        return c


def _diff(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _magnitude(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


class VivaldiClient:
    """One node's coordinate, updated from (peer, peer coordinate, RTT) observations."""

    def __init__(self, config: VivaldiConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config or VivaldiConfig()
        self.rng = rng or random.Random(0)
        self.coord = Coordinate.origin(self.config)
        self.origin = Coordinate.origin(self.config)
        self._adjust_samples = [0.0] * max(1, self.config.adjustment_window)
        self._adjust_index = 0
        self._latency: dict[str, deque[float]] = {}
        self.updates = 0
        self.resets = 0

    def forget(self, node: str) -> None:
        self._latency.pop(node, None)

    def update(self, node: str, other: Coordinate, rtt_s: float) -> Coordinate:
        if not other.is_valid() or len(other.vec) != self.config.dimensionality:
            raise ValueError(f"coordinate from {node!r} is invalid or has the wrong dimensionality")
        if not math.isfinite(rtt_s) or rtt_s < 0 or rtt_s > 10.0:
            raise ValueError(f"RTT {rtt_s!r}s from {node!r} is out of range")
        rtt = self._filtered(node, rtt_s)
        self._update_vivaldi(other, rtt)
        self._update_adjustment(other, rtt)
        self._update_gravity()
        if not self.coord.is_valid():
            # Serf does the same: a numerically broken coordinate is worse than starting over.
            self.resets += 1
            self.coord = Coordinate.origin(self.config)
        self.updates += 1
        return self.coord

    def distance_to(self, other: Coordinate) -> float:
        return self.coord.distance(other)

    def _filtered(self, node: str, rtt: float) -> float:
        window = self._latency.setdefault(node, deque(maxlen=self.config.latency_filter_size))
        window.append(rtt)
        return sorted(window)[len(window) // 2]

    def _apply_force(self, c: Coordinate, force: float, other: Coordinate) -> Coordinate:
        unit, mag = self._unit_vector_at(c.vec, other.vec)
        vec = [x + u * force for x, u in zip(c.vec, unit, strict=True)]
        height = c.height
        if mag > ZERO_THRESHOLD:
            height = max((c.height + other.height) * force / mag + c.height, self.config.height_min)
        return Coordinate(vec, c.error, c.adjustment, height)

    def _unit_vector_at(self, a: list[float], b: list[float]) -> tuple[list[float], float]:
        d = _diff(a, b)
        mag = _magnitude(d)
        if mag > ZERO_THRESHOLD:
            return [x / mag for x in d], mag
        # Coincident points: push in a random direction so that nodes starting at the origin separate.
        r = [self.rng.random() - 0.5 for _ in a]
        rm = _magnitude(r)
        if rm > ZERO_THRESHOLD:
            return [x / rm for x in r], 0.0
        return [0.0] * len(a), 0.0

    def _update_vivaldi(self, other: Coordinate, rtt: float) -> None:
        cfg = self.config
        rtt = max(rtt, ZERO_THRESHOLD)
        dist = self.coord.distance(other)
        wrongness = abs(dist - rtt) / rtt
        total_error = max(self.coord.error + other.error, ZERO_THRESHOLD)
        weight = self.coord.error / total_error
        error = cfg.ce * weight * wrongness + self.coord.error * (1.0 - cfg.ce * weight)
        self.coord.error = min(error, cfg.error_max)
        force = cfg.cc * weight * (rtt - dist)
        self.coord = self._apply_force(self.coord, force, other)

    def _update_adjustment(self, other: Coordinate, rtt: float) -> None:
        if self.config.adjustment_window <= 0:
            return
        self._adjust_samples[self._adjust_index] = rtt - self.coord.raw_distance(other)
        self._adjust_index = (self._adjust_index + 1) % self.config.adjustment_window
        self.coord.adjustment = sum(self._adjust_samples) / (2.0 * self.config.adjustment_window)

    def _update_gravity(self) -> None:
        dist = self.origin.distance(self.coord)
        force = -1.0 * (dist / self.config.gravity_rho) ** 2
        self.coord = self._apply_force(self.coord, force, self.origin)


@dataclass(slots=True)
class LatencyMatrix:
    """A synthetic RTT matrix: nodes in regions/zones on a plane plus per-node access delay (the 'height')."""

    names: list[str]
    rtt: list[list[float]]
    labels: list[dict[str, str]] = field(default_factory=list)


def synthetic_matrix(
    n: int, rng: random.Random, regions: int = 3, zones_per_region: int = 2, pair_noise: float = 0.1
) -> LatencyMatrix:
    """`pair_noise` perturbs each pair independently (symmetric), so the matrix is not exactly embeddable."""
    centers = [(rng.uniform(0, 0.08), rng.uniform(0, 0.08)) for _ in range(regions)]  # up to ~110 ms apart
    pos: list[tuple[float, float]] = []
    access: list[float] = []
    labels: list[dict[str, str]] = []
    for i in range(n):
        r = i % regions
        z = (i // regions) % zones_per_region
        cx, cy = centers[r]
        zx, zy = cx + 0.004 * z, cy + 0.003 * z
        pos.append((zx + rng.gauss(0, 0.0008), zy + rng.gauss(0, 0.0008)))
        access.append(rng.uniform(0.0002, 0.002))
        labels.append({"region": f"r{r}", "zone": f"r{r}-z{z}"})
    rtt = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            base = math.dist(pos[i], pos[j]) + access[i] + access[j]
            rtt[i][j] = rtt[j][i] = base * (1.0 + rng.uniform(-pair_noise, pair_noise))
    return LatencyMatrix([f"v{i}" for i in range(n)], rtt, labels)


def simulate(matrix: LatencyMatrix, rounds: int, rng: random.Random, jitter: float = 0.02) -> list[VivaldiClient]:
    """Each round every node samples one random peer's RTT (with multiplicative jitter), as probes would."""
    n = len(matrix.names)
    clients = [VivaldiClient(rng=random.Random(rng.random())) for _ in range(n)]
    for _ in range(rounds):
        for i in range(n):
            j = rng.randrange(n - 1)
            j = j + 1 if j >= i else j
            sample = matrix.rtt[i][j] * (1.0 + rng.uniform(0, jitter))
            clients[i].update(matrix.names[j], clients[j].coord, sample)
    return clients


def median_relative_error(matrix: LatencyMatrix, clients: list[VivaldiClient]) -> float:
    n = len(clients)
    errs = sorted(
        abs(clients[i].coord.distance(clients[j].coord) - matrix.rtt[i][j]) / matrix.rtt[i][j]
        for i in range(n)
        for j in range(i + 1, n)
    )
    return errs[len(errs) // 2]
