"""Vivaldi coordinates (Serf-style, with height and adjustment) on a synthetic latency matrix, and link classes."""

from __future__ import annotations

import math
import random

import pytest

from agents.topology.service import LinkClass, Topology, link_class
from agents.topology.vivaldi import (
    Coordinate,
    VivaldiClient,
    VivaldiConfig,
    median_relative_error,
    simulate,
    synthetic_matrix,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_median_relative_error_on_synthetic_matrix(seed: int) -> None:
    rng = random.Random(seed)
    matrix = synthetic_matrix(48, rng)
    before = median_relative_error(matrix, simulate(matrix, 0, random.Random(seed)))
    clients = simulate(matrix, 150, rng)
    err = median_relative_error(matrix, clients)
    assert before > 0.9  # every node starts at the origin: estimates are meaningless
    assert err <= 0.15, f"median relative error {err:.3f} (seed {seed})"


def test_height_and_adjustment_are_learnt() -> None:
    rng = random.Random(4)
    matrix = synthetic_matrix(32, rng)
    clients = simulate(matrix, 150, rng)
    # Access delays are per node and positive: they show up in the height and the adjustment terms.
    assert any(c.coord.height > 2 * VivaldiConfig().height_min for c in clients)
    assert sum(c.coord.adjustment for c in clients) / len(clients) > 0.0
    assert all(c.coord.error < 0.5 for c in clients)


def test_two_nodes_converge_to_their_rtt() -> None:
    a, b = VivaldiClient(rng=random.Random(1)), VivaldiClient(rng=random.Random(2))
    for _ in range(200):
        a.update("b", b.coord, 0.010)
        b.update("a", a.coord, 0.010)
    assert math.isclose(a.distance_to(b.coord), 0.010, rel_tol=0.1)


def test_bad_samples_are_rejected() -> None:
    c = VivaldiClient()
    with pytest.raises(ValueError, match="out of range"):
        c.update("x", Coordinate.origin(c.config), -1.0)
    with pytest.raises(ValueError, match="dimensionality"):
        c.update("x", Coordinate([0.0, 0.0], 1.0), 0.01)
    t = Topology("a", {})
    assert not t.observe("b", 0.01, b"\x08garbage")
    assert not t.observe("b", 0.01, Coordinate([math.nan] * 8, 1.0).encode())
    assert t.rejected_samples == 2
    assert t.client.updates == 0


def test_coordinate_wire_roundtrip() -> None:
    c = Coordinate([0.001 * i for i in range(8)], 0.3, -0.0001, 0.0002)
    d = Coordinate.decode(c.encode())
    assert len(c.encode()) == 1 + 11 * 4
    assert math.isclose(d.distance(c), c.raw_distance(c) + 2 * c.adjustment, abs_tol=1e-6) or d.distance(c) >= 0


def test_link_classes_from_labels() -> None:
    assert link_class({"host": "h1", "zone": "z"}, {"host": "h1", "zone": "z"}) == LinkClass.HOST
    assert link_class({"host": "h1", "zone": "z"}, {"host": "h2", "zone": "z"}) == LinkClass.ZONE
    assert link_class({"zone": "a", "region": "r"}, {"zone": "b", "region": "r"}) == LinkClass.REGION
    assert link_class({"zone": "a"}, {"zone": "b"}) == LinkClass.WAN
    assert link_class({}, {}) == LinkClass.WAN  # missing labels never match


def test_topology_rtt_uses_coordinates_then_falls_back_to_link_class() -> None:
    t = Topology("a", {"zone": "z1", "region": "r1"})
    t.set_labels("b", {"zone": "z1", "region": "r1"})
    t.set_labels("c", {"zone": "z9", "region": "r1"})
    assert t.rtt("a", "b") == 0.0005  # same zone, no coordinate yet
    assert t.rtt("a", "c") == 0.002
    peer = Coordinate([0.01] + [0.0] * 7, 0.2, 0.0, 1e-5)
    for _ in range(30):
        assert t.observe("b", 0.004, peer.encode())
    assert 0.002 < t.rtt("a", "b") < 0.006
    assert t.rtt("a", "a") == 0.0
