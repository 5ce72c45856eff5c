"""The gossip simulation at the Raft simulation's depth: 200 seeded runs of the production SWIM core through random
crashes, restarts (a fresh process joining through a live member), partitions, heals and loss of up to 10%, with
completeness and accuracy checked after every simulated second (agents/gossip/testing/sim.py `chaos`).

INFERMESH_GOSSIP_CHAOS_SEEDS=N runs N seeds (default 200); INFERMESH_GOSSIP_CHAOS_SEED=S replays one seed."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor

from agents.gossip.testing.sim import ChaosReport, chaos


def test_gossip_chaos_seeds() -> None:
    one = os.environ.get("INFERMESH_GOSSIP_CHAOS_SEED")
    seeds = [int(one)] if one else list(range(int(os.environ.get("INFERMESH_GOSSIP_CHAOS_SEEDS", "200"))))
    workers = max(1, min(2, os.cpu_count() or 1, len(seeds)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        reports: list[ChaosReport] = list(pool.map(chaos, seeds, chunksize=10))
    failures = [r for r in reports if r.violations]
    assert not failures, "failing seeds (replay with INFERMESH_GOSSIP_CHAOS_SEED=<seed>):\n" + "\n".join(
        f"  seed {r.seed} (n={r.n}): {'; '.join(r.violations[:3])}" for r in failures[:10]
    )
    # the schedules must have exercised every kind of fault, across the seeds and in most single runs
    assert sum(r.crashes for r in reports) >= len(reports)
    assert sum(r.restarts for r in reports) >= len(reports)
    assert sum(r.partitions for r in reports) >= len(reports)
    assert sum(r.loss_changes for r in reports) >= len(reports) // 2
    if len(reports) >= 100:
        assert sum(1 for r in reports if r.crashes and r.partitions) >= len(reports) // 2
    print(
        "scenario:", json.dumps({"scenario": "gossip simulation", "seeds": len(reports),
        "nodes": [min(r.n for r in reports), max(r.n for r in reports)], "crashes": sum(r.crashes for r in reports),
        "restarts": sum(r.restarts for r in reports), "partitions": sum(r.partitions for r in reports),
        "loss_changes": sum(r.loss_changes for r in reports), "violations": 0})
    )  # fmt: skip
