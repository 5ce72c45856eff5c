"""The sans-IO training planner: gang admission by tenant quota and priority, placement from live GPU state and
topology scored by the training strategies, preemption, elastic scale and re-planning after node failures.

Fleet, quota and job changes go in through methods; `schedule()` returns the decisions (`Placed`, `Replanned`,
`Preempted`, `Queued`). No clocks, no I/O: the driver on the Raft leader commits what it returns.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from agents.collective.costmodel import Fabric, RankSlot
from agents.scheduler.model import (
    EVICTING,
    MIG_PROFILES,
    Action,
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
    WorkerSlot,
)
from agents.strategies.host import StrategyHost
from agents.strategies.placement import PlacementCandidate, PlacementScore


@dataclass(slots=True)
class PlannerConfig:
    topology_aware: bool = True  # False: the topology-blind first-fit baseline (benchmarks)
    preemption: bool = True  # policy: may a job preempt lower-priority ones at all
    preempt_min_gap: int = 10  # only jobs at least this many priority points lower are preempted
    max_single_node: int = 3  # single-node candidates kept (best fits)
    rdzv_port_base: int = 29500
    rdzv_port_span: int = 400


@dataclass(slots=True)
class _Pool:
    """Free capacity of one node for one job: GPUs it may take (grouped per worker) or CPU slots."""

    node: NodeState
    gpus: list[GpuInfo] = field(default_factory=list)
    units: int = 0  # workers this node can host


class _Held(set[str]):
    """GPUs (and MIG slices) placed jobs hold exclusively; `mps`: per shared GPU, the % of its SMs MPS workers hold."""

    def __init__(self) -> None:
        super().__init__()
        self.mps: dict[str, int] = {}


def mig_compute(profile: str) -> int:
    """Compute slices (sevenths of a GPU) of a MIG profile; 0 for a whole GPU or a name the vocabulary lacks."""
    return MIG_PROFILES.get(profile, (0, 0))[0]


def mig_fragmentation(nodes: Iterable[NodeState], held: set[str]) -> dict[str, dict[str, object]]:
    """Per node with MIG slices: each profile's free and total slices, the free compute (sevenths of a GPU), the
    largest free slice and the fragmentation ratio `1 - largest free slice / free compute` (0: what is free is one
    slice; near 1: free compute scattered over slices too small for a bigger profile). Slices are fixed by the
    node's MIG layout, so a freed small slice never merges into a larger one."""
    out: dict[str, dict[str, object]] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        slices = [g for g in node.gpus if g.mig_profile]
        if not slices:
            continue
        per: dict[str, list[int]] = {}
        free_c, largest, largest_name = 0, 0, ""
        for g in sorted(slices, key=lambda g: (-mig_compute(g.mig_profile), g.mig_profile)):
            counts = per.setdefault(g.mig_profile, [0, 0])
            counts[1] += 1
            if g.healthy and not g.busy and g.uuid not in held and node.schedulable:
                counts[0] += 1
                c = mig_compute(g.mig_profile)
                free_c += c
                if c > largest:
                    largest, largest_name = c, g.mig_profile
        out[node.name] = {
            "slices": {p: {"free": f, "total": t} for p, (f, t) in sorted(per.items())},
            "free_compute_7ths": free_c,
            "largest_free": largest_name,
            "fragmentation": round(1.0 - largest / free_c, 3) if free_c else 0.0,
        }
    return out


# Data and checkpoint locality (agents/io/locality.py): seconds a worker of the job on the node adds to a step.
LocalityFn = Callable[[JobRequest, str], float]


class Planner:
    def __init__(
        self,
        *,
        fabric: Fabric | None = None,
        host: StrategyHost | None = None,
        config: PlannerConfig | None = None,
        locality: LocalityFn | None = None,
    ) -> None:
        self.fabric = fabric or Fabric()
        self.host = host or StrategyHost()
        self.config = config or PlannerConfig()
        self.locality = locality
        self.nodes: dict[str, NodeState] = {}
        self.quotas: dict[str, TenantQuota] = {}
        self.jobs: dict[str, JobRequest] = {}
        self.plans: dict[str, Plan] = {}
        self.generation: dict[str, int] = {}
        self.reasons: dict[str, str] = {}  # last reason told for a queued job (Queued is emitted on change)
        self.was_placed: set[str] = set()  # jobs that ran before: a new plan resumes from checkpoint
        # candidate -> the (pool, GPUs) behind each of its ranks, for the decision being made
        self._taken: dict[int, list[tuple[_Pool, list[GpuInfo]]]] = {}

    # -- inputs --------------------------------------------------------------------------------------------------
    def upsert_node(self, node: NodeState) -> None:
        self.nodes[node.name] = node

    def remove_node(self, name: str) -> None:
        self.nodes.pop(name, None)

    def set_node_status(self, name: str, status: str, reason: str = "") -> None:
        node = self.nodes.get(name)
        if node is not None:
            node.status, node.reason = status, reason

    def set_quota(self, tenant: str, quota: TenantQuota) -> None:
        self.quotas[tenant] = quota

    def submit(self, job: JobRequest) -> None:
        """Add or update a job. Raises SpecError naming the field for a spec that can never be valid."""
        job.validate()
        old = self.jobs.get(job.job_id)
        if old is not None and job.submitted_at == 0.0:
            job.submitted_at = old.submitted_at
        self.jobs[job.job_id] = job

    def scale(self, job_id: str, workers: int) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            raise SpecError(f"job {job_id}: unknown")
        if not job.workers_min <= workers <= job.workers_max:
            raise SpecError(f"workers: {workers} is outside the elastic range {job.workers_min}..{job.workers_max}")
        job.workers = workers

    def finish(self, job_id: str) -> None:
        """The job ended (succeeded, failed or cancelled): forget it and free its resources."""
        self.jobs.pop(job_id, None)
        self.plans.pop(job_id, None)
        self.reasons.pop(job_id, None)
        self.was_placed.discard(job_id)

    def adopt(self, plan: Plan) -> None:
        """A plan committed earlier (by this or a previous leader): count its resources as held."""
        self.plans[plan.job_id] = plan
        self.generation[plan.job_id] = max(self.generation.get(plan.job_id, 0), plan.generation)
        self.was_placed.add(plan.job_id)

    # -- accounting ----------------------------------------------------------------------------------------------
    def _held(self, exclude: Iterable[str] = ()) -> tuple[set[str], dict[str, int]]:
        skip = set(exclude)
        uuids = _Held()
        cpu: dict[str, int] = {}
        for jid, plan in self.plans.items():
            if jid in skip:
                continue
            for w in plan.workers:
                if w.mps_percent:
                    for u in w.gpu_uuids:
                        uuids.mps[u] = uuids.mps.get(u, 0) + w.mps_percent
                else:
                    uuids.update(w.gpu_uuids)
                if not w.gpu_uuids:
                    cpu[w.node] = cpu.get(w.node, 0) + 1
        return uuids, cpu

    def tenant_usage(self, tenant: str, exclude: Iterable[str] = ()) -> tuple[int, int]:
        """(GPUs held, jobs running) by the tenant's placed jobs."""
        skip = set(exclude)
        gpus = jobs = 0
        for jid, plan in self.plans.items():
            if plan.tenant == tenant and jid not in skip:
                gpus += plan.gpus
                jobs += 1
        return gpus, jobs

    def _quota_workers(self, job: JobRequest, exclude: Iterable[str] = ()) -> tuple[int, str]:
        """Most workers the tenant's quota allows this job (0 = none), and why when limited."""
        q = self.quotas.get(job.tenant)
        if q is None:
            return job.workers_max, ""
        excl = {job.job_id, *exclude}
        gpus, running = self.tenant_usage(job.tenant, excl)
        if q.concurrent_jobs_max is not None and running + 1 > q.concurrent_jobs_max:
            return 0, f"quota concurrent_jobs_max: tenant {job.tenant} runs {running} of {q.concurrent_jobs_max} jobs"
        if q.gpus_max is None or job.gpus_per_worker == 0:
            return job.workers_max, ""
        allowed = max(0, (q.gpus_max - gpus) // job.gpus_per_worker)
        if allowed < job.workers_min:
            return 0, (
                f"quota gpus_max: tenant {job.tenant} holds {gpus} of {q.gpus_max} GPUs, the job needs "
                f"{job.workers_min * job.gpus_per_worker}"
            )
        return min(allowed, job.workers_max), ""

    def _pools(self, job: JobRequest, held: set[str], cpu_held: dict[str, int], *, empty: bool = False) -> list[_Pool]:
        """Per schedulable node, what this job could use. `empty`: as if nothing else ran (never-fits check)."""
        pools = []
        for node in self.nodes.values():
            if not node.schedulable:
                continue
            pool = _Pool(node)
            if job.gpus_per_worker == 0:
                pool.units = max(0, node.cpu_slots - (0 if empty else cpu_held.get(node.name, 0)))
            else:
                sliced = {g.parent_uuid for g in node.gpus if g.mig_profile}
                shared = {} if empty else getattr(held, "mps", {})
                for g in sorted(node.gpus, key=lambda g: (g.index, g.uuid)):
                    if not g.healthy or (not empty and (g.busy or g.uuid in held)):
                        continue
                    if job.gpu_types and g.gpu_type not in job.gpu_types:
                        continue
                    if job.mig_profile:
                        if g.mig_profile != job.mig_profile:
                            continue
                    elif g.mig_profile or g.uuid in sliced:
                        continue  # whole-GPU jobs never take a slice nor a GPU carved into slices
                    if job.mps_percent:
                        # MPS: as many workers as the GPU's unclaimed share holds, each a listing of the same GPU
                        pool.gpus += [g] * ((100 - shared.get(g.uuid, 0)) // job.mps_percent)
                    elif g.uuid not in shared:  # a GPU MPS workers share is nobody's exclusive GPU
                        pool.gpus.append(g)
                pool.units = len(pool.gpus) // job.gpus_per_worker
            if pool.units > 0:
                pools.append(pool)
        return pools

    # -- candidates ----------------------------------------------------------------------------------------------
    def _fill(self, job: JobRequest, pools: list[_Pool], n: int) -> list[tuple[_Pool, list[GpuInfo]]] | None:
        """Take `n` workers from `pools` in the given order; None when they do not hold enough."""
        out: list[tuple[_Pool, list[GpuInfo]]] = []
        for pool in pools:
            g = job.gpus_per_worker
            for u in range(pool.units):
                if len(out) == n:
                    return out
                out.append((pool, pool.gpus[u * g : (u + 1) * g] if g else []))
        return out if len(out) == n else None

    def _candidate(self, job: JobRequest, taken: list[tuple[_Pool, list[GpuInfo]]], label: str) -> PlacementCandidate:
        ranks = []
        for pool, gpus in taken:
            node = pool.node
            gtype = gpus[0].gpu_type if gpus else ("" if job.gpus_per_worker else "CPU")
            ranks.append(
                RankSlot(node.name, node.zone, node.region, node.host, gtype or "CPU", len(gpus), job.mig_profile)
            )
        cand = PlacementCandidate(job.job_id, ranks, job.compute_s, job.grad_bytes, label)
        self._taken[id(cand)] = taken
        return cand

    def _candidates(self, job: JobRequest, pools: list[_Pool], n: int) -> list[PlacementCandidate]:
        if not self.config.topology_aware:
            taken = self._fill(job, sorted(pools, key=lambda p: p.node.name), n)
            return [self._candidate(job, taken, "first-fit")] if taken else []
        out: list[PlacementCandidate] = []
        types = sorted({g.gpu_type for p in pools for g in p.gpus}) or [""]
        groups: list[tuple[str, list[_Pool]]] = []
        if len(types) > 1:
            for t in types:  # one GPU family per candidate: a synchronous job runs at its slowest worker's pace
                groups.append((t, [self._only_type(p, t, job) for p in pools if any(g.gpu_type == t for g in p.gpus)]))
        groups.append(("any", pools))
        for tname, group in groups:
            group = [p for p in group if p.units > 0]
            # one node, best fit first (leave big holes for big jobs)
            singles = sorted((p for p in group if p.units >= n), key=lambda p: (p.units, p.node.name))
            for p in singles[: self.config.max_single_node]:
                taken = self._fill(job, [p], n)
                if taken:
                    out.append(self._candidate(job, taken, f"node {p.node.name} {tname}"))
            # one zone / one region / anywhere: fewest nodes first
            for scope, key in (("zone", lambda p: p.node.zone), ("region", lambda p: p.node.region)):
                scopes: dict[str, list[_Pool]] = {}
                for p in group:
                    scopes.setdefault(key(p), []).append(p)
                for name, members in sorted(scopes.items()):
                    if sum(p.units for p in members) < n or len(members) < 2:
                        continue
                    ordered = sorted(members, key=lambda p: (-p.units, p.node.name))
                    taken = self._fill(job, ordered, n)
                    if taken:
                        out.append(self._candidate(job, taken, f"{scope} {name} {tname}"))
            ordered = sorted(group, key=lambda p: (p.node.region, p.node.zone, -p.units, p.node.name))
            taken = self._fill(job, ordered, n)
            if taken:
                out.append(self._candidate(job, taken, f"anywhere {tname}"))
            # anywhere, biggest zones first: fewest zone crossings
            zone_units: dict[str, int] = {}
            for p in group:
                zone_units[p.node.zone] = zone_units.get(p.node.zone, 0) + p.units
            ordered = sorted(group, key=lambda p: (-zone_units[p.node.zone], p.node.zone, -p.units, p.node.name))
            taken = self._fill(job, ordered, n)
            if taken:
                out.append(self._candidate(job, taken, f"fewest-zones {tname}"))
        return out

    @staticmethod
    def _only_type(pool: _Pool, gpu_type: str, job: JobRequest) -> _Pool:
        gpus = [g for g in pool.gpus if g.gpu_type == gpu_type]
        return _Pool(pool.node, gpus, len(gpus) // max(job.gpus_per_worker, 1))

    def _best(self, job: JobRequest, pools: list[_Pool], n: int) -> PlacementScore | None:
        self._taken = {}
        cands = self._candidates(job, pools, n)
        if not cands:
            return None
        if not self.config.topology_aware:
            names = ["ring_unordered"]
        else:
            names = ["ring", "tree", "hierarchical"] if job.topology == "auto" else [job.topology]
        decision = self.host.score_placements(cands, self.fabric, strategies=names)
        best = decision.best
        if best is None:
            return None
        ranked = decision.ranked
        if self.locality is not None and self.config.topology_aware:
            ranked = [self._with_locality(job, s) for s in ranked]
            best = min(ranked, key=lambda s: s.score)
        # Among near-equal predictions prefer the tighter fit: fewer nodes, then fewer units left on them.
        near = [s for s in ranked if s.score <= best.score * 1.001 + 1e-12]
        return min(near, key=lambda s: (len({r.node for r in s.candidate.ranks}), self._leftover(s)))

    def _with_locality(self, job: JobRequest, s: PlacementScore) -> PlacementScore:
        """The score with the locality cost term added: the job waits on its farthest worker from its data."""
        assert self.locality is not None
        io_s = max((self.locality(job, n) for n in {r.node for r in s.candidate.ranks}), default=0.0)
        if io_s <= 0.0:
            return s
        return replace(s, score=s.score + io_s, terms={**s.terms, "io_locality_s": io_s})

    def _leftover(self, s: PlacementScore) -> int:
        """Workers' worth of capacity left on the nodes the candidate uses (smaller = tighter fit)."""
        used: dict[int, tuple[_Pool, int]] = {}
        for pool, _ in self._taken[id(s.candidate)]:
            used[id(pool)] = (pool, used.get(id(pool), (pool, 0))[1] + 1)
        return sum(pool.units - n for pool, n in used.values())

    def _plan(self, job: JobRequest, s: PlacementScore, reason: str) -> Plan:
        taken = self._taken[id(s.candidate)]
        workers = []
        for rank, idx in enumerate(s.rank_order):
            pool, gpus = taken[idx]
            workers.append(
                WorkerSlot(rank, pool.node.name, [g.uuid for g in gpus], gpus[0].gpu_type if gpus else "",
                           pool.node.zone, pool.node.region, job.mig_profile, job.mps_percent)
            )  # fmt: skip
        gen = self.generation.get(job.job_id, 0) + 1
        self.generation[job.job_id] = gen
        span = max(self.config.rdzv_port_span, 1)
        port = self.config.rdzv_port_base + zlib.crc32(f"{job.job_id}/{gen}".encode()) % span
        resume = job.job_id in self.was_placed
        order = ",".join(w.node for w in workers)
        master = self.nodes.get(workers[0].node)
        master_addr = (master.address.rpartition(":")[0] if master and master.address else "") or workers[0].node
        env = {
            "INFERMESH_MASTER_ADDR": master_addr,
            "NCCL_ALGO": s.nccl_algo,
            "INFERMESH_COLLECTIVE": s.strategy,
            "INFERMESH_RANK_NODES": order,
            "INFERMESH_JOB_ID": job.job_id,
            "INFERMESH_PLAN_GENERATION": str(gen),
            "INFERMESH_RESUME": "1" if resume else "0",
        }
        return Plan(
            job_id=job.job_id, tenant=job.tenant, generation=gen, workers=workers, strategy=s.strategy,
            nccl_algo=s.nccl_algo, predicted_step_s=s.score, predicted_comm_s=s.cost.comm.time_s,
            predicted_busbw_gbps=s.cost.comm.busbw_gbps, master_node=workers[0].node, rdzv_port=port, env=env,
            reason=reason, resume=resume,
        )  # fmt: skip

    def _try_place(
        self, job: JobRequest, held: set[str], cpu: dict[str, int], hi: int, lo: int
    ) -> PlacementScore | None:
        pools = self._pools(job, held, cpu)
        free = sum(p.units for p in pools)
        for n in range(min(hi, free), lo - 1, -1):
            best = self._best(job, pools, n)
            if best is not None:
                return best
        return None

    def never_fits(self, job: JobRequest) -> str:
        """Why the job cannot run on the schedulable fleet even with nothing else on it ('' when it can)."""
        pools = self._pools(job, set(), {}, empty=True)
        units = sum(p.units for p in pools)
        q = self.quotas.get(job.tenant)
        if q is not None and q.gpus_max is not None and job.gpus_per_worker * job.workers_min > q.gpus_max:
            return (
                f"can never fit: needs {job.gpus_per_worker * job.workers_min} GPUs, above tenant {job.tenant}'s "
                f"quota of {q.gpus_max}"
            )
        if units >= job.workers_min:
            return ""
        what = f"{job.gpus_per_worker} GPU(s)" if job.gpus_per_worker else "a CPU slot"
        if job.mig_profile:
            what = f"a MIG {job.mig_profile} slice"
        elif job.mps_percent:
            what = f"an MPS share of {job.mps_percent}% of a whole GPU"
        kinds = f" of type {'/'.join(job.gpu_types)}" if job.gpu_types else ""
        why = (
            f"can never fit: needs {job.workers_min} workers with {what}{kinds} each; the schedulable fleet "
            f"({sum(1 for n in self.nodes.values() if n.schedulable)} nodes) can host at most {units}"
        )
        if job.mig_profile:
            layout = self.mig_layout()
            why += f"; MIG slices in the fleet: {layout}" if layout else "; no node exposes MIG slices"
        return why

    def mig_layout(self) -> str:
        """The schedulable fleet's MIG slices per profile, e.g. '3g.40gb x2, 1g.10gb x4' (largest first)."""
        counts: dict[str, int] = {}
        for node in self.nodes.values():
            if node.schedulable:
                for g in node.gpus:
                    if g.mig_profile and g.healthy:
                        counts[g.mig_profile] = counts.get(g.mig_profile, 0) + 1
        order = sorted(counts, key=lambda p: (-mig_compute(p), p))
        return ", ".join(f"{p} x{counts[p]}" for p in order)

    def fragmentation(self) -> dict[str, dict[str, object]]:
        """MIG fragmentation of every node with slices, counting what placed jobs hold (`mig_fragmentation`)."""
        held, _ = self._held()
        return mig_fragmentation(self.nodes.values(), held)

    # -- the pass ------------------------------------------------------------------------------------------------
    def schedule(self) -> list[Action]:
        """One planning pass: re-plan evicted jobs, apply scale changes, then admit queued jobs by priority."""
        actions: list[Action] = []
        self._replan_running(actions)
        self._admit_queued(actions)
        return actions

    def _evicted(self, plan: Plan) -> list[str]:
        bad = []
        for w in plan.workers:
            node = self.nodes.get(w.node)
            if node is None or node.status in EVICTING:
                bad.append(w.node)
                continue
            healthy = {g.uuid for g in node.gpus if g.healthy}
            if any(u not in healthy for u in w.gpu_uuids):
                bad.append(w.node)
        return sorted(set(bad))

    def _replan_running(self, actions: list[Action]) -> None:
        for jid in sorted(self.plans, key=lambda j: (-self.jobs[j].priority if j in self.jobs else 0, j)):
            plan = self.plans[jid]
            job = self.jobs.get(jid)
            if job is None:
                continue
            lost = self._evicted(plan)
            size = len(plan.workers)
            if not lost and size == job.workers:
                continue
            held, cpu = self._held(exclude=[jid])
            quota_max, _ = self._quota_workers(job)
            hi = min(job.workers, quota_max) if quota_max else job.workers_min
            if lost:
                statuses = ", ".join(f"{n} {self.nodes[n].status if n in self.nodes else 'gone'}" for n in lost)
                best = self._try_place(job, held, cpu, hi, job.workers_min)
                if best is None:
                    del self.plans[jid]
                    reason = f"workers lost ({statuses}) and no capacity for {job.workers_min} workers"
                    actions.append(Preempted(jid, reason))
                    self.reasons[jid] = reason
                    continue
                n = len(best.candidate.ranks)
                verb = "re-placed" if n >= size else f"shrunk {size}→{n}"
                new = self._plan(job, best, f"{verb} after {statuses}; resuming from checkpoint")
                new.resume = True
                new.env["INFERMESH_RESUME"] = "1"
                self.plans[jid] = new
                actions.append(Replanned(new, plan.nodes, new.reason))
            else:
                # elastic: grow toward the target when capacity allows, shrink at once
                lo = min(job.workers, size + 1) if job.workers > size else job.workers
                best = self._try_place(job, held, cpu, hi, lo)
                if best is None:
                    continue
                n = len(best.candidate.ranks)
                new = self._plan(job, best, f"scaled {size}→{n} workers")
                new.resume = True
                new.env["INFERMESH_RESUME"] = "1"
                self.plans[jid] = new
                actions.append(Replanned(new, plan.nodes, new.reason))

    def _admit_queued(self, actions: list[Action]) -> None:
        queued = [j for j in self.jobs.values() if j.job_id not in self.plans]
        queued.sort(key=lambda j: (-j.priority, j.submitted_at, j.job_id))
        for job in queued:
            never = self.never_fits(job)
            if never:
                self._queue(actions, job, never, never_fits=True)
                continue
            quota_max, why = self._quota_workers(job)
            if quota_max == 0:
                self._queue(actions, job, f"waiting for quota: {why}")
                continue
            hi = min(job.workers, quota_max)
            held, cpu = self._held()
            best = self._try_place(job, held, cpu, hi, job.workers_min)
            victims: list[str] = []
            if best is None and self.config.preemption and self.config.topology_aware:
                victims, best = self._preempt_for(job, hi)
            if best is None:
                free = sum(p.units for p in self._pools(job, held, cpu))
                why = f"waiting for capacity: {free} of {job.workers_min} workers free right now"
                if job.mig_profile:
                    why += self._mig_waiting(job, held)
                self._queue(actions, job, why)
                continue
            for v in victims:
                del self.plans[v]
                reason = f"preempted by job {job.job_id} (priority {job.priority})"
                self.reasons[v] = reason
                actions.append(Preempted(v, reason, by=job.job_id))
            n = len(best.candidate.ranks)
            verb = "resumed" if job.job_id in self.was_placed else "placed"
            plan = self._plan(job, best, f"{verb} {n} workers ({best.candidate.label}) with {best.strategy}")
            self.plans[job.job_id] = plan
            self.was_placed.add(job.job_id)
            self.reasons.pop(job.job_id, None)
            actions.append(Placed(plan))

    def _mig_waiting(self, job: JobRequest, held: set[str]) -> str:
        """What a MIG job waits on: free slices of other profiles it cannot use, per node (fragmentation)."""
        parts = []
        for name, rep in mig_fragmentation(self.nodes.values(), held).items():
            slices: dict[str, dict[str, int]] = rep["slices"]  # type: ignore[assignment]
            other = [f"{p} x{c['free']}" for p, c in slices.items() if p != job.mig_profile and c["free"]]
            if other:
                parts.append(f"{name} has {', '.join(other)} free (fragmentation {rep['fragmentation']})")
        return f"; free slices of other profiles: {'; '.join(parts)}" if parts else ""

    def _preempt_for(self, job: JobRequest, hi: int) -> tuple[list[str], PlacementScore | None]:
        """Lowest-priority preemptible jobs first, newest first among equals, until the job fits."""
        cands = [
            p for jid, p in self.plans.items()
            if jid in self.jobs and self.jobs[jid].preemptible
            and self.jobs[jid].priority <= job.priority - self.config.preempt_min_gap
        ]  # fmt: skip
        cands.sort(key=lambda p: (self.jobs[p.job_id].priority, -self.jobs[p.job_id].submitted_at, p.job_id))
        victims: list[str] = []
        for plan in cands:
            victims.append(plan.job_id)
            held, cpu = self._held(exclude=victims)
            best = self._try_place(job, held, cpu, hi, job.workers_min)
            if best is not None:
                return victims, best
        return [], None

    def _queue(self, actions: list[Action], job: JobRequest, reason: str, *, never_fits: bool = False) -> None:
        if self.reasons.get(job.job_id) != reason:
            self.reasons[job.job_id] = reason
            actions.append(Queued(job.job_id, reason, never_fits))
