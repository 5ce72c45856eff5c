"""Placement benchmark: our training scheduler vs a topology-blind first-fit baseline on emulated fleets.

The fleet mixes GPU types over several zones of two regions, with oversubscribed inter-zone uplinks and some GPUs
busy with inference. A seeded stream of data-parallel jobs (125M..7B parameters, 1-8 GPUs per worker, elastic
ranges, four tenants with quotas, priorities) arrives over time; two nodes are quarantined mid-run. Each scheduler
runs the same stream in a discrete-event simulation: placements come from the planner, step times from the mock
job model (agents.scheduler.jobmodel) on the *true* fabric (slower inter-zone links than the data sheets claim, which
our scheduler learns by calibration from the mock CommStats). A job holds its GPUs for steps x step time, so a bad
placement also delays everyone queued behind it.

Reported per scheduler: mean step time (steps-weighted per job, then averaged over jobs), GPU allocation (share of
the fleet's GPU-time held by jobs), compute share (share of the held GPU-time spent computing rather than waiting
on communication), queueing delay (mean, p95), makespan, re-plans, preemptions, jobs never placed, the error of the
planner's predicted step time against the mock job's, and quota/GPU invariant violations, checked after every
planning pass.

    .venv/bin/python bench/placement.py [--jobs 150] [--seed 1] [--uplink-gbps 12.5]
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.collective.costmodel import REGION, WAN, Calibration, Fabric, RankSlot, default_links
from agents.scheduler.jobmodel import JobModel
from agents.scheduler.model import (
    GpuInfo,
    JobRequest,
    NodeState,
    Placed,
    Plan,
    Preempted,
    Replanned,
    TenantQuota,
)
from agents.scheduler.planner import Planner, PlannerConfig

MODEL_PARAMS = [125e6, 350e6, 1.3e9, 2.7e9, 7e9]
TOKENS_PER_GPU_STEP = 65536  # e.g. 8 sequences of 2048 tokens, 4 micro-batches accumulated
MFU = 0.4
TENANTS = {
    "acme": TenantQuota(96, 10),
    "blue": TenantQuota(64, 8),
    "cern": TenantQuota(48, 8),
    "dune": TenantQuota(32, 6),
}


def build_fleet(rng: random.Random, zone_names: bool = False) -> list[NodeState]:
    """Nodes are named `node-NNN` in enrollment order, which interleaves zones (racks are enrolled as they arrive);
    with `zone_names` they are named after their zone, so that name order happens to follow topology."""
    layout = [  # (zone, region, nodes, gpus per node, type)
        ("r1-a", "r1", 8, 8, "H100"),
        ("r1-b", "r1", 8, 8, "A100"),
        ("r1-c", "r1", 6, 4, "L40S"),
        ("r1-c", "r1", 4, 8, "H100"),
        ("r2-a", "r2", 4, 8, "H200"),
    ]
    specs = [(zone, region, gpus, gtype, i) for zone, region, count, gpus, gtype in layout for i in range(count)]
    order = list(range(len(specs)))
    rng.shuffle(order)
    nodes = []
    for k, idx in enumerate(order):
        zone, region, gpus, gtype, i = specs[idx]
        name = f"{zone}-{gtype.lower()}-{i}" if zone_names else f"node-{k:03d}"
        gs = [GpuInfo(f"{name}-gpu{j}", gtype, j, busy=rng.random() < 0.08) for j in range(gpus)]
        nodes.append(NodeState(name, zone=zone, region=region, host=name, gpus=gs))
    return nodes


def job_stream(rng: random.Random, n: int, interarrival_s: float) -> list[JobRequest]:
    jobs = []
    t = 0.0
    for i in range(n):
        t += rng.expovariate(1 / interarrival_s)
        params = rng.choice(MODEL_PARAMS)
        gpw = rng.choice([1, 1, 2, 4, 8])
        lo = rng.choice([1, 2, 2, 4, 4, 8])
        hi = lo * rng.choice([1, 1, 2])
        compute = 6 * params * TOKENS_PER_GPU_STEP / (989e12 * MFU)  # per GPU: each GPU of a worker takes a shard
        jobs.append(
            JobRequest(
                f"job-{i:04d}",
                rng.choice(list(TENANTS)),
                priority=rng.choice([10, 50, 50, 90]),
                workers_min=lo,
                workers_max=hi,
                workers=hi,
                gpus_per_worker=gpw,
                gpu_types=(rng.choice(["H100", "A100", "H200"]),) if rng.random() < 0.15 else (),
                compute_s=compute,
                grad_bytes=int(params * 2),
                submitted_at=t,
                max_runtime_s=rng.randint(200, 1000),  # here: training steps to run
            )
        )  # fmt: skip
    return jobs


def true_fabric(believed: Fabric) -> Fabric:
    """What the links really deliver: inter-zone and WAN paths at 60% of their nominal figures."""
    links = dict(believed.links)
    for cls in (REGION, WAN):
        p = links[cls]
        links[cls] = type(p)(p.alpha_s * 1.5, p.beta_gbps * 0.6)
    uplinks = {z: g * 0.6 for z, g in believed.zone_uplink_gbps.items()}
    up = believed.default_uplink_gbps * 0.6 if believed.default_uplink_gbps else None
    return Fabric(links=links, zone_uplink_gbps=uplinks, default_uplink_gbps=up)


@dataclass
class Running:
    plan: Plan
    step_s: float
    compute_s: float
    started: float
    steps_left: float
    end: float


@dataclass
class Result:
    name: str
    step_s: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # job -> [(step_s, steps)]
    queue_delay: dict[str, float] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    compute_gpu_seconds: float = 0.0  # the part of gpu_seconds spent computing, not waiting on communication
    makespan: float = 0.0
    replans: int = 0
    preemptions: int = 0
    violations: int = 0
    never_placed: int = 0
    predict_err: list[float] = field(default_factory=list)
    decide_ms: list[float] = field(default_factory=list)


def check_invariants(p: Planner) -> int:
    bad = 0
    seen: set[str] = set()
    for plan in p.plans.values():
        for w in plan.workers:
            if p.nodes[w.node].status not in ("active", "cordoned"):
                bad += 1
            for u in w.gpu_uuids:
                bad += u in seen
                seen.add(u)
    for tenant, q in p.quotas.items():
        gpus, jobs = p.tenant_usage(tenant)
        bad += int(q.gpus_max is not None and gpus > q.gpus_max)
        bad += int(q.concurrent_jobs_max is not None and jobs > q.concurrent_jobs_max)
    return bad


def simulate(
    name: str, aware: bool, jobs: list[JobRequest], seed: int, uplink: float, zone_names: bool = False
) -> Result:
    rng = random.Random(seed)
    believed = Fabric(default_uplink_gbps=uplink)
    truth = true_fabric(believed)
    planner = Planner(fabric=believed, config=PlannerConfig(topology_aware=aware))
    fleet = build_fleet(random.Random(seed), zone_names)
    for node in fleet:
        planner.upsert_node(node)
    for t, q in TENANTS.items():
        planner.set_quota(t, TenantQuota(q.gpus_max, q.concurrent_jobs_max))
    cal = Calibration()
    by_id = {j.job_id: j for j in jobs}
    steps_left = {j.job_id: float(j.max_runtime_s) for j in jobs}
    res = Result(name)
    running: dict[str, Running] = {}
    events: list[tuple[float, int, str, str]] = []
    seq = 0
    for j in jobs:
        heapq.heappush(events, (j.submitted_at, seq, "arrive", j.job_id))
        seq += 1
    horizon = jobs[-1].submitted_at
    for frac, node in ((0.3, fleet[2].name), (0.55, fleet[11].name)):
        heapq.heappush(events, (horizon * frac, seq, "quarantine", node))
        seq += 1

    def stop(jid: str, now: float) -> None:
        r = running.pop(jid)
        done = min(r.steps_left, (now - r.started) / r.step_s) if r.step_s > 0 else r.steps_left
        steps_left[jid] = max(0.0, r.steps_left - done)
        res.step_s.setdefault(jid, []).append((r.step_s, done))
        res.gpu_seconds += r.plan.gpus * (now - r.started)
        res.compute_gpu_seconds += r.plan.gpus * done * r.compute_s

    def start(plan: Plan, now: float) -> None:
        nonlocal seq
        job = by_id[plan.job_id]
        ranks = [RankSlot(w.node, w.zone, w.region, w.node, w.gpu_type, len(w.gpu_uuids)) for w in plan.workers]
        algo = {"ring_unordered": "ring"}.get(plan.strategy, plan.strategy)
        model = JobModel(job.job_id, ranks, truth, job.compute_s, job.grad_bytes, algorithm=algo,
                         rng=random.Random(rng.random()))  # fmt: skip
        samples = [model.step() for _ in range(8)]
        step_s = statistics.fmean(s.step_s for s in samples)
        compute_s = statistics.fmean(s.compute_s for s in samples)
        res.predict_err.append(abs(plan.predicted_step_s - step_s) / step_s)
        if aware:  # the scheduler learns the real fabric from the comm telemetry its jobs report
            cal.observe(ranks, [b for s in samples for b in s.buckets], believed, algo)
            cal.apply(believed)
        res.queue_delay.setdefault(plan.job_id, now - job.submitted_at)
        left = steps_left[plan.job_id]
        running[plan.job_id] = Running(plan, step_s, compute_s, now, left, now + left * step_s)
        heapq.heappush(events, (now + left * step_s, seq, "finish", f"{plan.job_id}@{plan.generation}"))
        seq += 1

    now = 0.0
    while events:
        now, _, kind, what = heapq.heappop(events)
        if kind == "arrive":
            planner.submit(by_id[what])
        elif kind == "quarantine":
            planner.set_node_status(what, "quarantined", "emulated xid 79")
        else:
            jid, gen = what.split("@")
            r = running.get(jid)
            if r is None or r.plan.generation != int(gen):
                continue  # superseded by a re-plan or preemption
            stop(jid, now)
            planner.finish(jid)
        t0 = time.perf_counter()
        actions = planner.schedule()
        res.decide_ms.append((time.perf_counter() - t0) * 1e3)
        for a in actions:
            if isinstance(a, Placed):
                start(a.plan, now)
            elif isinstance(a, Replanned):
                res.replans += 1
                if a.plan.job_id in running:
                    stop(a.plan.job_id, now)
                start(a.plan, now)
            elif isinstance(a, Preempted):
                res.preemptions += 1
                if a.job_id in running:
                    stop(a.job_id, now)
        res.violations += check_invariants(planner)
    res.makespan = now
    res.never_placed = sum(1 for j in jobs if j.job_id not in res.queue_delay)
    return res


def job_step(res: Result, jid: str) -> float:
    parts = res.step_s.get(jid, [])
    steps = sum(n for _, n in parts)
    return sum(s * n for s, n in parts) / steps if steps > 0 else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--uplink-gbps", type=float, default=12.5, help="nominal inter-zone uplink per zone (GB/s)")
    ap.add_argument("--interarrival-s", type=float, default=90.0, help="mean time between job arrivals")
    ap.add_argument("--zone-names", action="store_true", help="name nodes after their zone (first-fit then follows it)")
    args = ap.parse_args(argv)
    jobs = job_stream(random.Random(args.seed), args.jobs, args.interarrival_s)
    fleet = build_fleet(random.Random(args.seed), args.zone_names)
    gpus = sum(len(n.gpus) for n in fleet)
    nic = default_links()["zone"].beta_gbps
    print(
        f"fleet: {len(fleet)} nodes, {gpus} GPUs (H100/A100/L40S/H200), 4 zones in 2 regions; inter-zone uplink "
        f"{args.uplink_gbps} GB/s per zone vs {nic:.0f} GB/s per node NIC (oversubscribed "
        f"{8 * nic / args.uplink_gbps:.0f}:1); {args.jobs} jobs, seed {args.seed}"
    )
    t0 = time.perf_counter()
    ours, ff = (
        simulate(name, aware, [JobRequest.from_dict(j.to_dict()) for j in jobs], args.seed, args.uplink_gbps,
                 args.zone_names)
        for name, aware in (("infermesh", True), ("first-fit", False))
    )  # fmt: skip
    both = [j.job_id for j in jobs if j.job_id in ours.step_s and j.job_id in ff.step_s]
    rows = []
    for r in (ours, ff):
        steps = [job_step(r, j) for j in both]
        delays = sorted(r.queue_delay.values())
        util = r.gpu_seconds / (gpus * r.makespan) if r.makespan else 0.0
        rows.append((
            r.name, statistics.fmean(steps), statistics.fmean(delays), delays[int(0.95 * (len(delays) - 1))],
            util, r.compute_gpu_seconds / max(r.gpu_seconds, 1e-9), r.makespan, r.replans, r.preemptions,
            r.violations, r.never_placed,
            statistics.fmean(r.predict_err), statistics.quantiles(r.decide_ms, n=100)[98],
        ))  # fmt: skip
    head = ("scheduler", "mean step s", "mean queue s", "p95 queue s", "GPU alloc", "compute share", "makespan s",
            "re-plans", "preempted", "violations", "unplaced", "pred err", "p99 decide ms")  # fmt: skip
    print(" | ".join(f"{h:>13}" for h in head))
    for row in rows:
        cells = [row[0], *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row[1:])]
        print(" | ".join(f"{c:>13}" for c in cells))
    per_job = [job_step(ff, j) / job_step(ours, j) for j in both]
    speedup = rows[1][1] / rows[0][1]
    geo = math.exp(statistics.fmean(math.log(x) for x in per_job))
    print(
        f"jobs compared: {len(both)}; per-job speedup geomean {geo:.2f}x, "
        f"{sum(x > 1.01 for x in per_job)} faster / {sum(x < 0.99 for x in per_job)} slower; "
        f"simulated in {time.perf_counter() - t0:.1f}s"
    )
    print(
        f"summary: step_time_speedup_vs_firstfit={speedup:.2f} quota_violations={ours.violations + ff.violations} "
        f"per_job_speedup_geomean={geo:.2f} queue_delay_ratio={rows[0][2] / max(rows[1][2], 1e-9):.2f} "
        f"compute_share={rows[0][5]:.3f} compute_share_firstfit={rows[1][5]:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
