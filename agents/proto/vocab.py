"""Vocabularies the portal and the agents exchange, defined once: the GPU families a job or a deployment may ask
for, and the states of a training job. The agents use them directly; the portal's Django choices are checked
against them when its models load (`meshweb/fleet/models.py`, `meshweb/training/models.py`), so the two sides
cannot drift apart."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

GpuTypeName = Literal["H200", "H100", "A100", "L40S", "L40", "L4", "A10G", "T4"]
GPU_TYPES: tuple[str, ...] = get_args(GpuTypeName)

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
