"""Vocabularies the portal and the agents exchange, defined once: the GPU families a job or a deployment may ask
for, the MIG profiles and MPS shares a job may ask for, and the states of a training job. The agents use them
directly; the portal's Django choices are checked against them when its models load (`meshweb/fleet/models.py`,
`meshweb/training/models.py`), so the two sides cannot drift apart."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

GpuTypeName = Literal["H200", "H100", "A100", "L40S", "L40", "L4", "A10G", "T4"]
GPU_TYPES: tuple[str, ...] = get_args(GpuTypeName)

# MIG profiles (NVIDIA MIG user guide): name -> (compute slices out of 7, memory in GB). A100 40GB, A100/H100 80GB
# and H200 141GB layouts; a worker asking for one runs on a slice of exactly that profile.
MIG_PROFILES: dict[str, tuple[int, int]] = {
    "1g.5gb": (1, 5), "2g.10gb": (2, 10), "3g.20gb": (3, 20), "4g.20gb": (4, 20), "7g.40gb": (7, 40),
    "1g.10gb": (1, 10), "1g.20gb": (1, 20), "2g.20gb": (2, 20), "3g.40gb": (3, 40), "4g.40gb": (4, 40),
    "7g.80gb": (7, 80),
    "1g.18gb": (1, 18), "1g.35gb": (1, 35), "2g.35gb": (2, 35), "3g.71gb": (3, 71), "4g.71gb": (4, 71),
    "7g.141gb": (7, 141),
}  # fmt: skip
MPS_PERCENT_MAX = 100  # an MPS worker's share of one GPU's SMs (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE)

# product name word -> GPU family
_PRODUCT_TYPES = (("H200", "H200"), ("H100", "H100"), ("A100", "A100"), ("L40S", "L40S"), ("L40", "L40"),
                  ("L4", "L4"), ("A10G", "A10G"), ("T4", "T4"))  # fmt: skip


def gpu_type_of(product: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100'; '' when the family is not one the scheduler knows."""
    up = product.upper().replace("-", " ")
    for needle, family in _PRODUCT_TYPES:
        if needle in up.split() or f" {needle}" in f" {up}":
            return family
    return ""


JobStatusName = Literal["pending", "queued", "placing", "running", "succeeded", "failed", "cancelled", "preempted"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatusName)


def check_choices(name: str, values: Iterable[str], vocabulary: tuple[str, ...]) -> None:
    """Raise naming the difference when a side's choices are not exactly the shared vocabulary."""
    mine, shared = set(values), set(vocabulary)
    if mine != shared:
        raise ValueError(
            f"{name} differs from agents/proto/vocab.py: only here {sorted(mine - shared)}, "
            f"only there {sorted(shared - mine)}"
        )
