"""Records of collective operations as training workers measure them (the signal plane carries them; the cost model
calibrates from them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CommStats:
    """One collective operation (or a roll-up of a bucket) seen by a training worker."""

    job_id: str
    rank: int
    collective: str  # allreduce | allgather | reducescatter | broadcast | ...
    bytes: int
    time_s: float
    n_ranks: int
    algorithm: str = ""  # ring | tree | ... when the library says
    bucket_id: int | None = None
    step: int | None = None

    @property
    def algbw_gbps(self) -> float:
        return self.bytes / self.time_s / 1e9 if self.time_s > 0 else 0.0

    @property
    def busbw_gbps(self) -> float:
        """Bus bandwidth as nccl-tests defines it (all-reduce: algbw * 2(n-1)/n)."""
        n = max(self.n_ranks, 1)
        factor = {
            "allreduce": 2 * (n - 1) / n,
            "allgather": (n - 1) / n,
            "reducescatter": (n - 1) / n,
            "alltoall": (n - 1) / n,
        }.get(self.collective, 1.0)
        return self.algbw_gbps * factor
