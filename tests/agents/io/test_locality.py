"""Data and checkpoint locality as the scheduler's cost term: the IO records nodes publish steer placement."""

from __future__ import annotations

from typing import Any

from agents.io.locality import DATASET_ENV, KEY_PREFIX, Locality, LocalityConfig
from agents.scheduler import storekeys as K
from agents.scheduler.component import io_locality
from agents.scheduler.lifecycle import LifecycleConfig, Snapshot, reconcile

NOW = 1_000.0


def store(uri: str, write_p50_s: float = 0.01, read_p50_s: float = 0.005, slow: bool = False) -> dict[str, Any]:
    return {"kind": "s3" if uri.startswith("s3") else "local", "uri": uri, "role": "any", "slow": slow,
            "write_p50_s": write_p50_s, "read_p50_s": read_p50_s}  # fmt: skip


def record(node: str, *stores: dict[str, Any], at: float = NOW) -> dict[str, Any]:
    return {"node": node, "at": at, "stores": {f"s{i}": s for i, s in enumerate(stores)}}


def test_costs_follow_what_each_node_measures() -> None:
    loc = Locality(
        {
            "near": record("near", store("file:///mnt/ckpt", 0.01, 0.01), store("s3://data/sets", 0.02, 0.03)),
            "slow": record("slow", store("file:///mnt/ckpt", 0.01, 0.01, slow=True)),
            "far": record("far", store("file:///scratch")),
            "stale": record("stale", store("file:///mnt/ckpt"), at=NOW - 500),
        },
        NOW,
        LocalityConfig(unmeasured_s=0.05, slow_s=0.5, stale_after_s=120),
    )
    assert loc.uri_cost("near", "file:///mnt/ckpt/job-7") == 0.02
    assert loc.uri_cost("slow", "file:///mnt/ckpt/job-7") == 0.52
    assert loc.uri_cost("far", "file:///mnt/ckpt/job-7") == 0.05  # the data is elsewhere
    assert loc.uri_cost("stale", "file:///mnt/ckpt") == 0.05  # its record is too old to count
    assert loc.uri_cost("near", "file:///mnt/ckpt2") == 0.0  # a prefix of the name is not the store
    assert loc.uri_cost("far", "s3://other/x") == 0.0  # nobody measures it: no bias
    assert abs(loc.cost("near", ["file:///mnt/ckpt/a", "s3://data/sets/imagenet"]) - 0.07) < 1e-9


def inventory(name: str, zone: str) -> dict[str, Any]:
    return {"name": name, "zone": zone, "status": "active", "at": NOW,
            "gpus": [{"uuid": f"GPU-{name}-{i}", "gpu_type": "H100", "index": i} for i in range(2)]}  # fmt: skip


def job(checkpoint_uri: str, dataset_uri: str = "") -> dict[str, Any]:
    env = {DATASET_ENV: dataset_uri} if dataset_uri else {}
    return {"id": 1, "tenant": 1, "name": "job-1", "status": "pending", "priority": 50, "workers": 1,
            "spec": {"workers": {"min": 1, "max": 1}, "gpus_per_worker": 2, "entrypoint": ["torchrun"],
                     "checkpoint_uri": checkpoint_uri, "env": env}}  # fmt: skip


def place(kv: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One scheduler pass as the driver runs it (locality from the kv/io/ records); the node job 1 lands on."""
    out = reconcile(Snapshot.from_store(kv), NOW, LifecycleConfig(locality=io_locality(kv, NOW)))
    plan = out.writes[f"{K.PLANS}1"]
    return plan["workers"][0]["node"], plan


def fleet() -> dict[str, Any]:
    # "a-node" sorts first, so without the cost term the planner takes it (equal nodes, tie broken by name)
    return {f"{K.INVENTORY}{n}": inventory(n, z) for n, z in (("a-node", "z1"), ("b-node", "z2"))}


def test_the_scheduler_places_the_job_next_to_its_checkpoints_and_data() -> None:
    kv = {**fleet(), f"{K.PORTAL_JOBS}1": job("file:///mnt/ckpt", "s3://data/sets/a")}
    assert place(dict(kv))[0] == "a-node"  # no IO records: no locality term, the name breaks the tie
    kv[f"{KEY_PREFIX}b-node"] = record("b-node", store("file:///mnt/ckpt"), store("s3://data/sets"))
    kv[f"{KEY_PREFIX}a-node"] = record("a-node", store("s3://data/sets"))  # reaches the data, not the checkpoints
    node, plan = place(dict(kv))
    assert node == "b-node"
    # the predicted step holds the IO term of the chosen node (its latencies to both stores)
    assert plan["predicted_step_s"] > 0.03


def test_a_slow_checkpoint_store_moves_the_job_away() -> None:
    kv = {**fleet(), f"{K.PORTAL_JOBS}1": job("file:///mnt/ckpt")}
    kv[f"{KEY_PREFIX}a-node"] = record("a-node", store("file:///mnt/ckpt", slow=True))
    kv[f"{KEY_PREFIX}b-node"] = record("b-node", store("file:///mnt/ckpt"))
    assert place(kv)[0] == "b-node"
    kv[f"{KEY_PREFIX}a-node"] = record("a-node", store("file:///mnt/ckpt"))  # recovered: the tie again
    assert place(kv)[0] == "a-node"


def test_no_records_means_no_term() -> None:
    assert io_locality({f"{K.INVENTORY}x": {}}, NOW) is None
    assert io_locality({f"{KEY_PREFIX}x": record("x", store("file:///a"), at=0.0)}, NOW) is None  # all stale
    assert io_locality({f"{KEY_PREFIX}x": "garbage"}, NOW) is None
