"""The mock training job model: step and per-bucket all-reduce timings from the cost model, seeded."""

from __future__ import annotations

import random

from agents.collective.costmodel import Fabric, RankSlot, ring_allreduce
from agents.scheduler.jobmodel import DDP_BUCKET_BYTES, JobModel


def test_buckets_steps_and_comm_follow_the_cost_model() -> None:
    ranks = [RankSlot("a", zone="z", gpu_type="H100"), RankSlot("b", zone="z", gpu_type="H100")]
    fabric = Fabric()
    model = JobModel("j", ranks, fabric, compute_s=0.2, grad_bytes=2 * DDP_BUCKET_BYTES + 5, jitter=0.0,
                     straggler_p=0.0, rng=random.Random(3))  # fmt: skip
    s = model.step()
    assert [b.bytes for b in s.buckets] == [DDP_BUCKET_BYTES, DDP_BUCKET_BYTES, 5]
    assert [b.bucket_id for b in s.buckets] == [0, 1, 2] and {b.step for b in s.buckets} == {0}
    expected = sum(ring_allreduce(ranks, b.bytes, fabric).time_s for b in s.buckets)
    assert abs(s.comm_s - expected) < 1e-12
    assert s.step_s == max(0.2, 0.2 + s.comm_s - 0.5 * 0.2)
    assert model.step().step == 1


def test_slow_links_and_slow_gpus_make_slower_steps() -> None:
    near = [RankSlot("a", zone="z", region="r", gpu_type="H100"), RankSlot("b", zone="z", region="r", gpu_type="H100")]
    far = [RankSlot("a", zone="z1", region="r", gpu_type="H100"), RankSlot("b", zone="z2", region="r", gpu_type="H100")]
    slow = [RankSlot("a", zone="z", region="r", gpu_type="T4"), RankSlot("b", zone="z", region="r", gpu_type="T4")]
    fabric = Fabric(default_uplink_gbps=2.0)

    def mean(r: list[RankSlot]) -> float:
        return JobModel("j", r, fabric, 0.05, 1 << 30, rng=random.Random(1)).mean_step_s(10)

    assert mean(far) > mean(near) * 2
    assert mean(slow) > mean(near)
