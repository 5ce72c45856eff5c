"""Mock training telemetry: a data-parallel job model that produces step times and per-bucket all-reduce
CommStats from the collective cost model, so placement can be evaluated on large emulated fleets without processes.

Randomness is injected (`rng`); the fabric the job "really" runs on may differ from the one the planner believes,
which is what calibration from the produced CommStats corrects.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from agents.collective.costmodel import ALGORITHMS, Fabric, RankSlot, worker_speed
from agents.collective.records import CommStats

DDP_BUCKET_BYTES = 25 << 20  # PyTorch DDP's default bucket_cap_mb


@dataclass(slots=True)
class StepSample:
    step: int
    step_s: float
    compute_s: float
    comm_s: float
    buckets: list[CommStats] = field(default_factory=list)


@dataclass
class JobModel:
    """One running job: `step()` yields what its workers would measure for the next training step.

    Gradients are all-reduced in DDP-sized buckets as backward produces them; buckets overlap with the rest of
    backward (`overlap` of compute), the tail is exposed. Noise: a few percent of jitter per step and an occasional
    straggler, as on real fleets.
    """

    job_id: str
    ranks: Sequence[RankSlot]
    fabric: Fabric
    compute_s: float
    grad_bytes: int
    algorithm: str = "ring"
    bucket_bytes: int = DDP_BUCKET_BYTES
    overlap: float = 0.5
    jitter: float = 0.03
    straggler_p: float = 0.01
    straggler_factor: float = 1.5
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    step_no: int = 0

    def _buckets(self) -> list[int]:
        full, rest = divmod(self.grad_bytes, self.bucket_bytes)
        return [self.bucket_bytes] * full + ([rest] if rest else [])

    def step(self, *, record_rank: int = 0) -> StepSample:
        n = len(self.ranks)
        slowest = min((worker_speed(r) for r in self.ranks), default=1.0)
        compute = self.compute_s / max(slowest, 1e-9) * self.rng.lognormvariate(0.0, self.jitter)
        if self.rng.random() < self.straggler_p:
            compute *= self.straggler_factor
        fn = ALGORITHMS[self.algorithm]
        comm = 0.0
        records = []
        for i, nbytes in enumerate(self._buckets()):
            t = fn(self.ranks, nbytes, self.fabric).time_s * self.rng.lognormvariate(0.0, self.jitter)
            comm += t
            if n > 1:
                records.append(
                    CommStats(self.job_id, record_rank, "allreduce", nbytes, max(t, 1e-9), n,
                              algorithm=self.algorithm, bucket_id=i, step=self.step_no)
                )  # fmt: skip
        exposed = max(0.0, comm - self.overlap * compute)
        sample = StepSample(self.step_no, compute + exposed, compute, comm, records)
        self.step_no += 1
        return sample

    def mean_step_s(self, steps: int = 20) -> float:
        return sum(self.step().step_s for _ in range(steps)) / steps
