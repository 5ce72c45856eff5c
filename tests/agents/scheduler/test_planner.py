"""The sans-IO planner: gang admission, quota, priority and preemption, placement by topology and GPU type, MIG,
never-fits reasons, elastic scale, and re-planning when a node of a running job fails."""

from __future__ import annotations

import random

import pytest

from agents.collective.costmodel import Fabric
from agents.scheduler.model import (
    GpuInfo,
    JobRequest,
    NodeState,
    Placed,
    Plan,
    Preempted,
    Queued,
    Replanned,
    SpecError,
    TenantQuota,
)
from agents.scheduler.planner import Planner, PlannerConfig


def node(name: str, zone: str, n: int, gpu: str = "H100", region: str = "r1", status: str = "active") -> NodeState:
    return NodeState(
        name, zone=zone, region=region, status=status, gpus=[GpuInfo(f"{name}-g{i}", gpu, i) for i in range(n)]
    )


def fleet(planner: Planner, zones: int = 2, per_zone: int = 4, gpus: int = 8) -> None:
    for z in range(zones):
        for i in range(per_zone):
            planner.upsert_node(node(f"z{z}n{i}", f"z{z}", gpus))


def placed(actions: list) -> dict[str, Plan]:
    return {a.plan.job_id: a.plan for a in actions if isinstance(a, (Placed, Replanned))}


def test_gang_places_all_workers_or_none_and_never_on_bad_nodes() -> None:
    p = Planner()
    p.upsert_node(node("ok1", "z", 2))
    p.upsert_node(node("ok2", "z", 2))
    for status in ("cordoned", "draining", "quarantined", "offline"):
        p.upsert_node(node(f"bad-{status}", "z", 8, status=status))
    p.submit(JobRequest("big", workers_min=5, workers_max=5, gpus_per_worker=1))
    p.submit(JobRequest("fits", workers_min=4, workers_max=4, gpus_per_worker=1))
    actions = p.schedule()
    plans = placed(actions)
    assert set(plans) == {"fits"}
    assert {w.node for w in plans["fits"].workers} == {"ok1", "ok2"}
    q = [a for a in actions if isinstance(a, Queued)]
    assert [a.job_id for a in q] == ["big"] and q[0].never_fits
    assert "can host at most 4" in q[0].reason
    # the queued reason is told once, not at every pass
    assert p.schedule() == []


def test_placement_keeps_a_job_inside_one_zone_and_groups_ranks_by_node() -> None:
    p = Planner(fabric=Fabric(default_uplink_gbps=5.0))
    fleet(p)
    # half-fill one node per zone so a topology-blind fill would straddle zones
    p.submit(JobRequest("j", workers_min=16, workers_max=16, gpus_per_worker=1, grad_bytes=1 << 30))
    plan = placed(p.schedule())["j"]
    assert len({w.zone for w in plan.workers}) == 1
    nodes = [w.node for w in plan.workers]
    # ranks of one node are consecutive: the ring leaves each node once
    assert nodes == sorted(nodes, key=nodes.index)
    assert plan.env["INFERMESH_RANK_NODES"] == ",".join(nodes)
    assert plan.env["NCCL_ALGO"] in {"Ring", "Tree", "Tree,Ring"}
    assert plan.predicted_step_s > 0 and plan.predicted_busbw_gbps > 0


def test_first_fit_baseline_straddles_zones_where_the_planner_does_not() -> None:
    fabric = Fabric(default_uplink_gbps=5.0)
    smart, blind = Planner(fabric=fabric), Planner(fabric=fabric, config=PlannerConfig(topology_aware=False))
    for p in (smart, blind):
        p.upsert_node(node("a-z0", "z0", 4))
        p.upsert_node(node("b-z1", "z1", 8))
        p.upsert_node(node("c-z0", "z0", 4))
        p.submit(JobRequest("j", workers_min=8, workers_max=8, gpus_per_worker=1, grad_bytes=1 << 30))
    s, b = placed(smart.schedule())["j"], placed(blind.schedule())["j"]
    assert {w.node for w in s.workers} == {"b-z1"}
    assert {w.node for w in b.workers} == {"a-z0", "b-z1"}
    assert s.predicted_step_s < b.predicted_step_s


def test_one_gpu_family_per_job_when_types_are_mixed() -> None:
    p = Planner()
    p.upsert_node(node("h", "z", 4, "H100"))
    p.upsert_node(node("t", "z", 4, "T4"))
    p.upsert_node(node("h2", "z", 4, "H100"))
    p.submit(JobRequest("j", workers_min=8, workers_max=8, gpus_per_worker=1))
    plan = placed(p.schedule())["j"]
    assert {w.gpu_type for w in plan.workers} == {"H100"}


def test_gpu_type_and_mig_constraints() -> None:
    p = Planner()
    p.upsert_node(node("a100", "z", 2, "A100"))
    sliced = NodeState("mig", zone="z", gpus=[GpuInfo("parent", "H100", 0)])
    sliced.gpus += [GpuInfo(f"mig-{i}", "H100", 0, mig_profile="3g.40gb", parent_uuid="parent") for i in range(2)]
    p.upsert_node(sliced)
    p.submit(JobRequest("typed", workers_min=2, workers_max=2, gpus_per_worker=1, gpu_types=("A100",)))
    p.submit(JobRequest("slices", workers_min=2, workers_max=2, gpus_per_worker=1, mig_profile="3g.40gb"))
    p.submit(JobRequest("whole-h100", workers_min=1, workers_max=1, gpus_per_worker=1, gpu_types=("H100",)))
    actions = p.schedule()
    plans = placed(actions)
    assert {u for w in plans["typed"].workers for u in w.gpu_uuids} == {"a100-g0", "a100-g1"}
    assert {u for w in plans["slices"].workers for u in w.gpu_uuids} == {"mig-0", "mig-1"}
    # a GPU carved into MIG slices is never handed out whole
    queued = {a.job_id: a for a in actions if isinstance(a, Queued)}
    assert queued["whole-h100"].never_fits


def test_quota_is_never_exceeded_and_the_reason_names_it() -> None:
    p = Planner()
    fleet(p)
    p.set_quota("t", TenantQuota(gpus_max=10, concurrent_jobs_max=5))
    p.submit(JobRequest("a", "t", workers_min=8, workers_max=8, gpus_per_worker=1, submitted_at=1))
    p.submit(JobRequest("b", "t", workers_min=4, workers_max=4, gpus_per_worker=1, submitted_at=2))
    p.submit(JobRequest("c", "t", workers_min=1, workers_max=6, workers=6, gpus_per_worker=1, submitted_at=3))
    actions = p.schedule()
    plans = placed(actions)
    assert set(plans) == {"a", "c"}
    assert len(plans["c"].workers) == 2  # elastic job shrunk to what the quota leaves
    assert sum(pl.gpus for pl in p.plans.values()) == 10
    reason = next(a.reason for a in actions if isinstance(a, Queued) and a.job_id == "b")
    assert reason.startswith("waiting for quota: quota gpus_max")
    p.set_quota("u", TenantQuota(concurrent_jobs_max=0))
    p.submit(JobRequest("d", "u", workers_min=1, workers_max=1))
    assert "concurrent_jobs_max" in next(a.reason for a in p.schedule() if isinstance(a, Queued))


def test_priority_order_and_preemption_only_where_allowed() -> None:
    p = Planner()
    p.upsert_node(node("n", "z", 4))
    p.submit(JobRequest("low", workers_min=4, workers_max=4, priority=10, submitted_at=1))
    p.submit(JobRequest("pinned", workers_min=1, workers_max=1, priority=5, preemptible=False, submitted_at=0))
    acts = p.schedule()
    assert set(placed(acts)) == {"low"}  # priority first: the lower-priority job waits
    p.submit(JobRequest("close", workers_min=2, workers_max=2, priority=15, submitted_at=2))
    assert not placed(p.schedule())  # within the minimum gap: no preemption
    p.submit(JobRequest("high", workers_min=2, workers_max=2, priority=90, submitted_at=3))
    acts = p.schedule()
    pre = [a for a in acts if isinstance(a, Preempted)]
    assert [a.job_id for a in pre] == ["low"] and pre[0].by == "high"
    assert "high" in placed(acts)
    # the victim waits in the queue and resumes from checkpoint when capacity returns
    p.finish("high")
    p.finish("close")
    again = placed(p.schedule())
    assert again["low"].resume and again["low"].generation == 2


def test_no_preemption_when_policy_forbids_it() -> None:
    p = Planner(config=PlannerConfig(preemption=False))
    p.upsert_node(node("n", "z", 2))
    p.submit(JobRequest("low", workers_min=2, workers_max=2, priority=1))
    p.schedule()
    p.submit(JobRequest("high", workers_min=2, workers_max=2, priority=99))
    acts = p.schedule()
    assert not any(isinstance(a, Preempted) for a in acts)
    assert any(isinstance(a, Queued) and a.job_id == "high" for a in acts)


def test_quarantined_node_is_replaced_then_shrunk_then_requeued() -> None:
    p = Planner()
    for i in range(3):
        p.upsert_node(node(f"n{i}", "z", 2))
    p.submit(JobRequest("j", workers_min=2, workers_max=4, workers=4, gpus_per_worker=1))
    first = placed(p.schedule())["j"]
    used = sorted({w.node for w in first.workers})
    assert len(first.workers) == 4 and len(used) == 2
    # quarantine one used node: the spare node takes its place, full size, resuming from checkpoint
    p.set_node_status(used[0], "quarantined", "xid 79")
    acts = p.schedule()
    r = next(a for a in acts if isinstance(a, Replanned))
    assert len(r.plan.workers) == 4 and used[0] not in {w.node for w in r.plan.workers}
    assert r.plan.resume and r.plan.generation == 2 and "quarantined" in r.reason
    # lose another node: only 2 GPUs left, the job shrinks within its range
    other = next(n for n in {w.node for w in r.plan.workers})
    p.set_node_status(other, "offline")
    r2 = next(a for a in p.schedule() if isinstance(a, Replanned))
    assert len(r2.plan.workers) == 2 and "shrunk 4→2" in r2.reason
    # and the last: nothing left, the job goes back to the queue
    p.remove_node(r2.plan.workers[0].node)
    acts = p.schedule()
    assert any(isinstance(a, Preempted) and a.job_id == "j" for a in acts)
    assert "j" not in p.plans
    # capacity returns: it grows back to its target
    for i in range(3):
        p.upsert_node(node(f"m{i}", "z", 2))
    back = placed(p.schedule())["j"]
    assert len(back.workers) == 4 and back.resume


def test_unhealthy_gpu_moves_the_worker() -> None:
    p = Planner()
    p.upsert_node(node("a", "z", 1))
    p.upsert_node(node("b", "z", 1))
    p.submit(JobRequest("j", workers_min=1, workers_max=1))
    first = placed(p.schedule())["j"]
    gone = first.workers[0].node
    p.nodes[gone].gpus[0].healthy = False
    r = next(a for a in p.schedule() if isinstance(a, Replanned))
    assert r.plan.workers[0].node != gone


def test_elastic_scale_up_and_down() -> None:
    p = Planner()
    fleet(p, zones=1, per_zone=2, gpus=4)
    p.submit(JobRequest("j", workers_min=1, workers_max=8, workers=2))
    assert len(placed(p.schedule())["j"].workers) == 2
    p.scale("j", 6)
    assert len(placed(p.schedule())["j"].workers) == 6
    p.scale("j", 3)
    r = placed(p.schedule())["j"]
    assert len(r.workers) == 3 and "scaled 6→3" in r.reason
    with pytest.raises(SpecError, match=r"outside the elastic range 1\.\.8"):
        p.scale("j", 9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers_min": 3, "workers_max": 2}, "workers.min \\(3\\) must not exceed workers.max \\(2\\)"),
        ({"gpu_types": ("B200",)}, "unknown GPU type 'B200'"),
        ({"mig_profile": "3g.40gb", "gpus_per_worker": 2}, "exactly one slice"),
        ({"topology": "mesh"}, "topology: unknown 'mesh'"),
        ({"gpus_per_worker": 0, "gpu_types": ("H100",)}, "needs gpus_per_worker"),
    ],
)
def test_invalid_specs_are_refused_with_the_field(kwargs: dict, message: str) -> None:
    p = Planner()
    with pytest.raises(SpecError, match=message):
        p.submit(JobRequest("bad", **kwargs))
    assert "bad" not in p.jobs


def test_quota_larger_than_the_job_can_ever_get_is_a_never_fits_reason() -> None:
    p = Planner()
    fleet(p)
    p.set_quota("t", TenantQuota(gpus_max=4))
    p.submit(JobRequest("j", "t", workers_min=8, workers_max=8))
    q = next(a for a in p.schedule() if isinstance(a, Queued))
    assert q.never_fits and "quota of 4" in q.reason


def test_random_streams_never_oversubscribe_gpus_or_quotas() -> None:
    """Invariants over seeded random streams of submissions, finishes, node failures and recoveries."""
    for seed in range(20):
        rng = random.Random(seed)
        p = Planner(fabric=Fabric(default_uplink_gbps=10.0))
        fleet(p, zones=3, per_zone=3, gpus=4)
        for t in ("a", "b", "c"):
            p.set_quota(t, TenantQuota(gpus_max=rng.randint(4, 20), concurrent_jobs_max=rng.randint(1, 4)))
        for step in range(60):
            r = rng.random()
            if r < 0.45:
                lo = rng.randint(1, 4)
                p.submit(JobRequest(
                    f"j{step}", rng.choice("abc"), priority=rng.choice([10, 50, 90]), workers_min=lo,
                    workers_max=lo + rng.randint(0, 3), gpus_per_worker=rng.choice([1, 2, 4]),
                    submitted_at=step, preemptible=rng.random() < 0.8,
                ))  # fmt: skip
            elif r < 0.65 and p.plans:
                p.finish(rng.choice(sorted(p.plans)))
            elif r < 0.8:
                name = rng.choice(sorted(p.nodes))
                p.set_node_status(name, rng.choice(["quarantined", "offline", "draining", "cordoned", "active"]))
            p.schedule()
            seen: set[str] = set()
            for plan in p.plans.values():
                job = p.jobs[plan.job_id]
                assert job.workers_min <= len(plan.workers) <= job.workers_max, seed
                for w in plan.workers:
                    assert p.nodes[w.node].status in ("active", "cordoned"), seed
                    assert len(w.gpu_uuids) == job.gpus_per_worker
                    for u in w.gpu_uuids:
                        assert u not in seen, f"seed {seed}: GPU {u} given twice"
                        seen.add(u)
            for t, q in p.quotas.items():
                gpus, jobs = p.tenant_usage(t)
                assert q.gpus_max is None or gpus <= q.gpus_max, f"seed {seed}: tenant {t} over its GPU quota"
                assert q.concurrent_jobs_max is None or jobs <= q.concurrent_jobs_max, seed
