"""Records of the training scheduler: the fleet as the planner sees it, job requests, quotas, plans and the
decisions the planner emits. Plans and job records travel through the Raft store as JSON (`to_json`/`from_json`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from agents.proto import vocab
from agents.proto.vocab import gpu_type_of

__all__ = ["gpu_type_of"]  # the GPU family of a product name, from the shared vocabulary

ACTIVE = "active"
CORDONED = "cordoned"
DRAINING = "draining"
QUARANTINED = "quarantined"
OFFLINE = "offline"
NODE_STATUSES = frozenset({ACTIVE, CORDONED, DRAINING, QUARANTINED, OFFLINE})
# Running workers on these nodes must move: the node is unhealthy, gone, or being emptied.
EVICTING = frozenset({DRAINING, QUARANTINED, OFFLINE})

GPU_TYPES = frozenset(vocab.GPU_TYPES)  # shared with the portal
MIG_PROFILES = vocab.MIG_PROFILES  # profile -> (compute slices of 7, GB), shared with the portal
TOPOLOGIES = frozenset({"auto", "ring", "tree", "hierarchical"})


class SpecError(ValueError):
    """A job request or fleet record the scheduler refuses; the message names the field."""


@dataclass(slots=True)
class GpuInfo:
    """One whole GPU or MIG slice of a node. `busy`: used by something the scheduler did not place (inference)."""

    uuid: str
    gpu_type: str
    index: int = 0
    mig_profile: str = ""
    parent_uuid: str = ""
    healthy: bool = True
    busy: bool = False


@dataclass(slots=True)
class NodeState:
    name: str
    zone: str = ""
    region: str = ""
    host: str = ""
    status: str = ACTIVE
    gpus: list[GpuInfo] = field(default_factory=list)
    cpu_slots: int = 4  # workers with gpus_per_worker = 0 a node may run
    address: str = ""  # the node's agent (gRPC); where the master of a job lives
    reason: str = ""

    @property
    def schedulable(self) -> bool:
        return self.status == ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeState:
        gpus = [GpuInfo(**g) for g in d.get("gpus", [])]
        rest = {k: v for k, v in d.items() if k != "gpus" and k in cls.__dataclass_fields__}
        node = cls(gpus=gpus, **rest)
        if node.status not in NODE_STATUSES:
            raise SpecError(f"node {node.name}: unknown status {node.status!r}")
        return node


@dataclass(slots=True)
class TenantQuota:
    gpus_max: int | None = None
    concurrent_jobs_max: int | None = None


@dataclass(slots=True)
class JobRequest:
    """A training job as the scheduler sees it (a portal job's spec, flattened)."""

    job_id: str
    tenant: str = ""
    priority: int = 50
    workers_min: int = 1
    workers_max: int = 1
    workers: int = 0  # target within min..max; 0 = workers_min
    gpus_per_worker: int = 1
    gpu_types: tuple[str, ...] = ()  # empty = any
    mig_profile: str = ""  # workers run on MIG slices of this profile (gpus_per_worker must be 1)
    mps_percent: int = 0  # workers share whole GPUs through MPS, each with this % of the SMs (0 = exclusive GPUs)
    topology: str = "auto"
    preemptible: bool = True
    compute_s: float = 0.1  # step compute on one reference GPU worker (cost model input)
    grad_bytes: int = 100 << 20  # gradient bytes all-reduced per step
    submitted_at: float = 0.0
    checkpoint_uri: str = ""
    entrypoint: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    max_runtime_s: int = 24 * 3600

    def __post_init__(self) -> None:
        if not self.workers:
            self.workers = self.workers_min
        self.gpu_types = tuple(self.gpu_types)

    def validate(self) -> JobRequest:
        """Refuse what can never make sense, naming the field (the portal checks most of this already)."""
        if not self.job_id:
            raise SpecError("job_id: required")
        if self.workers_min < 1:
            raise SpecError(f"workers.min: must be at least 1, got {self.workers_min}")
        if self.workers_min > self.workers_max:
            raise SpecError(f"workers.min ({self.workers_min}) must not exceed workers.max ({self.workers_max})")
        if not self.workers_min <= self.workers <= self.workers_max:
            raise SpecError(f"workers: {self.workers} is outside {self.workers_min}..{self.workers_max}")
        if self.gpus_per_worker < 0:
            raise SpecError(f"gpus_per_worker: must be >= 0, got {self.gpus_per_worker}")
        unknown = [t for t in self.gpu_types if t not in GPU_TYPES]
        if unknown:
            raise SpecError(f"gpu_types: unknown GPU type {unknown[0]!r}; known: {', '.join(sorted(GPU_TYPES))}")
        if self.gpu_types and self.gpus_per_worker == 0:
            raise SpecError("gpu_types: needs gpus_per_worker >= 1")
        if self.mig_profile and self.gpus_per_worker != 1:
            raise SpecError("mig_profile: a MIG worker uses exactly one slice (gpus_per_worker must be 1)")
        if self.mig_profile and self.mig_profile not in MIG_PROFILES:
            raise SpecError(f"mig_profile: unknown MIG profile {self.mig_profile!r}; known: {', '.join(MIG_PROFILES)}")
        if not 0 <= self.mps_percent <= vocab.MPS_PERCENT_MAX:
            raise SpecError(f"mps_percent: must be within 1..{vocab.MPS_PERCENT_MAX}, got {self.mps_percent}")
        if self.mps_percent and (self.mig_profile or self.gpus_per_worker != 1):
            raise SpecError("mps_percent: an MPS worker shares one whole GPU (gpus_per_worker 1, no mig_profile)")
        if self.topology not in TOPOLOGIES:
            raise SpecError(f"topology: unknown {self.topology!r}; use one of {', '.join(sorted(TOPOLOGIES))}")
        if self.compute_s < 0 or self.grad_bytes < 0:
            raise SpecError("compute_s and grad_bytes must not be negative")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gpu_types"] = list(self.gpu_types)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobRequest:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(slots=True)
class WorkerSlot:
    rank: int
    node: str
    gpu_uuids: list[str]
    gpu_type: str = ""
    zone: str = ""
    region: str = ""
    mig_profile: str = ""
    mps_percent: int = 0  # share of the GPU's SMs this worker has through MPS (0 = the GPU or slice is its own)


@dataclass(slots=True)
class Plan:
    """A committed placement: who runs each rank, the collective algorithm and the environment the trainers set.

    `generation` grows with every re-plan of the job, so trainers restart their workers (from the last checkpoint)
    exactly when the plan they run changed.
    """

    job_id: str
    tenant: str
    generation: int
    workers: list[WorkerSlot]
    strategy: str
    nccl_algo: str
    predicted_step_s: float
    predicted_comm_s: float
    predicted_busbw_gbps: float
    master_node: str
    rdzv_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    resume: bool = False  # restarted after a re-plan: workers resume from the job's last checkpoint

    @property
    def nodes(self) -> list[str]:
        seen: list[str] = []
        for w in self.workers:
            if w.node not in seen:
                seen.append(w.node)
        return seen

    @property
    def gpus(self) -> int:
        return sum(len(w.gpu_uuids) for w in self.workers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["workers"] = [WorkerSlot(**w) for w in d["workers"]]
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


# -- decisions the planner emits ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Placed:
    plan: Plan


@dataclass(slots=True)
class Replanned:
    plan: Plan
    previous_nodes: list[str]
    reason: str


@dataclass(slots=True)
class Preempted:
    job_id: str
    reason: str
    by: str = ""


@dataclass(slots=True)
class Queued:
    """The job waits; `never_fits` says it cannot run on the schedulable fleet even when it is empty."""

    job_id: str
    reason: str
    never_fits: bool = False


Action = Placed | Replanned | Preempted | Queued
