"""MIG and MPS through the scheduler: portal job records that ask for a MIG profile or an MPS share, placed by a
`reconcile` pass on inventories built from emulated GPUs (the emulator's MIG slices, read as the trainer publishes
them); fragmentation reported per node; a profile the fleet does not expose queued as never fitting, with the
layout in its reason."""

from __future__ import annotations

from typing import Any

import pytest

from agents.scheduler import storekeys as K
from agents.scheduler.lifecycle import LifecycleConfig, Snapshot, job_from_portal, reconcile
from agents.scheduler.model import GpuInfo, JobRequest, NodeState, SpecError, gpu_type_of
from agents.scheduler.planner import Planner, mig_fragmentation
from agents.signals.gpu.emulated import EmulatedGpuSource

NOW = 1_000.0


def inventory(node: str, profiles: list[str]) -> dict[str, Any]:
    """A node's inventory as its trainer publishes it, from the emulated GPU source's readings."""
    gpus = [
        GpuInfo(g.uuid, gpu_type_of(g.name) or "H100", g.index, g.mig_profile, g.parent_uuid)
        for g in EmulatedGpuSource(profiles, node=node).read()
    ]
    return {**NodeState(node, zone="zone-a", gpus=gpus).to_dict(), "at": NOW}


def portal_job(jid: int, workers: int, **gpu: Any) -> dict[str, Any]:
    spec = {"workers": {"min": workers, "max": workers}, "gpus_per_worker": 1, "entrypoint": ["torchrun"], **gpu}
    return {"id": jid, "tenant": 1, "name": f"job-{jid}", "status": "pending", "priority": 50, "workers": workers,
            "spec": spec}  # fmt: skip


FLEET = {
    "mig-a": ["h100:mig-3g.40gb", "h100:mig-3g.40gb", "h100:mig-1g.10gb"],
    "mig-b": ["h100:mig-1g.10gb", "h100:mig-1g.10gb", "h100:mig-2g.20gb"],
    "whole": ["h100", "h100"],
}


def store(*jobs: dict[str, Any]) -> dict[str, Any]:
    kv: dict[str, Any] = {f"{K.INVENTORY}{n}": inventory(n, p) for n, p in FLEET.items()}
    kv |= {f"{K.PORTAL_JOBS}{j['id']}": j for j in jobs}
    return kv


def run(kv: dict[str, Any]) -> dict[str, Any]:
    out = reconcile(Snapshot.from_store(kv), NOW, LifecycleConfig())
    for key in out.deletes:
        kv.pop(key, None)
    kv.update(out.writes)
    return kv


def test_a_mig_job_is_placed_on_slices_of_its_profile_and_fragmentation_is_reported() -> None:
    kv = run(store(portal_job(1, 2, mig_profile="3g.40gb")))
    plan = kv[f"{K.PLANS}1"]
    slices = {g["uuid"]: g for g in kv[f"{K.INVENTORY}mig-a"]["gpus"]}
    assert [w["node"] for w in plan["workers"]] == ["mig-a", "mig-a"]
    for w in plan["workers"]:
        (uuid,) = w["gpu_uuids"]
        assert uuid.startswith("MIG-") and slices[uuid]["mig_profile"] == "3g.40gb" and slices[uuid]["parent_uuid"]
        assert w["mig_profile"] == "3g.40gb"
    placed = next(e for e in kv[f"{K.JOBS}1"]["events"] if e["kind"] == "placed")
    assert {w["mig_profile"] for w in placed["data"]["workers"]} == {"3g.40gb"}
    # mig-a keeps one 1g.10gb slice free: all its free compute is one slice, nothing scattered
    assert placed["data"]["mig_fragmentation"] == {"mig-a": 0.0}
    mig = kv[K.MIG]
    assert mig["mig-a"]["slices"] == {"1g.10gb": {"free": 1, "total": 1}, "3g.40gb": {"free": 0, "total": 2}}
    # mig-b: 1 + 1 + 2 sevenths free, the largest slice 2 of them -> half of its free compute is unusable for 2g
    assert mig["mig-b"]["free_compute_7ths"] == 4 and mig["mig-b"]["largest_free"] == "2g.20gb"
    assert mig["mig-b"]["fragmentation"] == 0.5
    assert "whole" not in mig  # no slices, nothing to fragment
    # a second pass with nothing new writes no MIG report again
    out = reconcile(Snapshot.from_store(kv), NOW, LifecycleConfig())
    assert K.MIG not in out.writes


def test_a_profile_no_node_exposes_is_queued_as_never_fitting_with_the_layout() -> None:
    kv = run(store(portal_job(2, 1, mig_profile="7g.80gb"), portal_job(3, 3, mig_profile="1g.10gb")))
    never = kv[f"{K.JOBS}2"]
    assert never["status"] == "queued" and never["never_fits"] is True
    assert "MIG 7g.80gb slice" in never["reason"]
    assert "3g.40gb x2, 2g.20gb x1, 1g.10gb x3" in never["reason"]
    assert f"{K.PLANS}2" not in kv
    # three 1g.10gb slices exist (one on mig-a, two on mig-b): the job spans both nodes
    plan = kv[f"{K.PLANS}3"]
    assert sorted(w["node"] for w in plan["workers"]) == ["mig-a", "mig-b", "mig-b"]


def test_a_mig_job_waiting_for_slices_names_the_free_slices_of_other_profiles() -> None:
    kv = run(store(portal_job(1, 2, mig_profile="3g.40gb")))
    kv[f"{K.PORTAL_JOBS}4"] = portal_job(4, 1, mig_profile="3g.40gb")
    kv = run(kv)
    st = kv[f"{K.JOBS}4"]
    assert st["status"] == "queued" and not st["never_fits"]
    assert st["reason"].startswith("waiting for capacity: 0 of 1 workers free right now")
    assert "mig-a has 1g.10gb x1 free (fragmentation 0.0)" in st["reason"]
    assert "mig-b has 1g.10gb x2, 2g.20gb x1 free (fragmentation 0.5)" in st["reason"]


def test_whole_gpu_jobs_never_take_slices() -> None:
    kv = run(store(portal_job(5, 3)))
    assert f"{K.PLANS}5" not in kv and kv[f"{K.JOBS}5"]["never_fits"] is True  # only "whole" has 2 whole GPUs
    kv = run(store(portal_job(6, 2)))
    assert {w["node"] for w in kv[f"{K.PLANS}6"]["workers"]} == {"whole"}


def test_mps_workers_share_a_whole_gpu_up_to_its_sms() -> None:
    kv = run(store(portal_job(7, 4, mps_percent=50)))
    plan = kv[f"{K.PLANS}7"]
    uuids = [w["gpu_uuids"][0] for w in plan["workers"]]
    assert {w["node"] for w in plan["workers"]} == {"whole"} and len(set(uuids)) == 2  # two workers per GPU
    assert all(w["mps_percent"] == 50 and not u.startswith("MIG-") for w, u in zip(plan["workers"], uuids, strict=True))
    # the GPUs are full: another 50% worker waits, a whole-GPU job too; a 30% worker does not fit either
    for jid, gpu in ((8, {"mps_percent": 50}), (9, {}), (10, {"mps_percent": 30})):
        kv[f"{K.PORTAL_JOBS}{jid}"] = portal_job(jid, 1, **gpu)
    kv = run(kv)
    for jid in (8, 9, 10):
        assert kv[f"{K.JOBS}{jid}"]["status"] == "queued" and not kv[f"{K.JOBS}{jid}"]["never_fits"], jid


def test_mps_shares_pack_onto_a_partly_used_gpu_and_whole_gpu_jobs_take_the_free_one() -> None:
    p = Planner()
    p.upsert_node(NodeState("n", zone="z", gpus=[GpuInfo("g0", "H100", 0), GpuInfo("g1", "H100", 1)]))
    p.submit(JobRequest("a", workers_min=3, workers_max=3, mps_percent=30))
    p.schedule()
    assert sorted(u for w in p.plans["a"].workers for u in w.gpu_uuids) == ["g0", "g0", "g0"]  # 90% of g0
    p.submit(JobRequest("b", workers_min=1, workers_max=1))
    p.submit(JobRequest("c", workers_min=1, workers_max=1, mps_percent=10))
    p.schedule()
    assert p.plans["b"].workers[0].gpu_uuids == ["g1"] and p.plans["c"].workers[0].gpu_uuids == ["g0"]


@pytest.mark.parametrize(
    ("gpu", "message"),
    [
        ({"mig_profile": "9g.90gb"}, "unknown MIG profile '9g.90gb'"),
        ({"mps_percent": 120}, "mps_percent: must be within 1..100"),
        ({"mps_percent": 50, "mig_profile": "1g.10gb"}, "an MPS worker shares one whole GPU"),
        ({"mps_percent": 50, "gpus_per_worker": 2}, "an MPS worker shares one whole GPU"),
    ],
)
def test_bad_mig_or_mps_requests_are_refused_naming_the_field(gpu: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        job_from_portal(portal_job(11, 1, **gpu))


def test_fragmentation_of_a_node_counts_held_unhealthy_and_busy_slices_as_not_free() -> None:
    slices = [GpuInfo(f"s{i}", "A100", i, p, f"p{i}") for i, p in enumerate(["3g.40gb", "2g.20gb", "1g.10gb"])]
    slices.append(GpuInfo("s3", "A100", 3, "1g.10gb", "p3", healthy=False))
    node = NodeState("a", gpus=slices)
    assert mig_fragmentation([node], set())["a"]["fragmentation"] == pytest.approx(1 - 3 / 6, abs=1e-3)
    rep = mig_fragmentation([node], {"s0"})["a"]
    assert rep["largest_free"] == "2g.20gb" and rep["fragmentation"] == pytest.approx(1 - 2 / 3, abs=1e-3)
    node.status = "cordoned"
    assert mig_fragmentation([node], set())["a"]["free_compute_7ths"] == 0
