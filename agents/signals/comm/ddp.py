"""CommStats from PyTorch DDP: a comm hook that times each gradient bucket's all-reduce.

torch is imported only inside the hook, so the recorder (the part that turns launches and completions into
CommStats) works and is tested without it. Times run from launch to the completion of the collective's future.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.signals.types import CommStats


@dataclass(slots=True)
class _Inflight:
    bucket_id: int
    nbytes: int
    step: int
    started: float


@dataclass
class CommHookRecorder:
    """Turns (launch, completion) pairs into CommStats. Thread-safe: futures may complete on other threads.

    The step number advances when a bucket index repeats (DDP reduces every bucket once per backward pass), or
    explicitly through `set_step`.
    """

    job_id: str
    rank: int
    n_ranks: int
    collective: str = "allreduce"
    algorithm: str = ""
    clock: Callable[[], float] = time.perf_counter
    sink: Callable[[CommStats], None] | None = None
    keep: int = 10_000
    records: list[CommStats] = field(default_factory=list)
    _step: int = 0
    _seen: set[int] = field(default_factory=set)
    _inflight: dict[int, _Inflight] = field(default_factory=dict)
    _next_token: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.n_ranks < 1 or not 0 <= self.rank < self.n_ranks:
            raise ValueError(f"rank {self.rank} is not within a world of {self.n_ranks}")

    def set_step(self, step: int) -> None:
        with self._lock:
            self._step = step
            self._seen.clear()

    def start(self, bucket_id: int, nbytes: int) -> int:
        """A bucket's collective was launched; returns a token for `finish`."""
        if nbytes < 0:
            raise ValueError(f"a bucket cannot hold {nbytes} bytes")
        with self._lock:
            if bucket_id in self._seen:
                self._step += 1
                self._seen.clear()
            self._seen.add(bucket_id)
            token = self._next_token
            self._next_token += 1
            self._inflight[token] = _Inflight(bucket_id, nbytes, self._step, self.clock())
        return token

    def finish(self, token: int) -> CommStats:
        """The collective completed; records and returns its CommStats."""
        now = self.clock()
        with self._lock:
            fl = self._inflight.pop(token, None)
            if fl is None:
                raise KeyError(f"unknown or already finished collective token {token}")
            stats = CommStats(
                job_id=self.job_id, rank=self.rank, collective=self.collective, bytes=fl.nbytes,
                time_s=max(now - fl.started, 0.0), n_ranks=self.n_ranks, algorithm=self.algorithm,
                bucket_id=fl.bucket_id, step=fl.step,
            )  # fmt: skip
            self.records.append(stats)
            if len(self.records) > self.keep:
                del self.records[: len(self.records) - self.keep]
        if self.sink is not None:
            self.sink(stats)
        return stats

    def drain(self) -> list[CommStats]:
        """Records since the previous drain."""
        with self._lock:
            out, self.records = self.records, []
        return out


def summarize(stats: list[CommStats]) -> dict[tuple[str, int | None], dict[str, float]]:
    """Per (collective, step): count, bytes, time and the resulting algbw/busbw in GB/s."""
    acc: dict[tuple[str, int | None], dict[str, float]] = {}
    n_ranks: dict[tuple[str, int | None], int] = {}
    for s in stats:
        key = (s.collective, s.step)
        a = acc.setdefault(key, {"count": 0.0, "bytes": 0.0, "time_s": 0.0})
        a["count"] += 1
        a["bytes"] += s.bytes
        a["time_s"] += s.time_s
        n_ranks[key] = s.n_ranks
    for key, a in acc.items():
        rolled = CommStats(job_id="", rank=0, collective=key[0], bytes=int(a["bytes"]), time_s=a["time_s"],
                           n_ranks=n_ranks[key])  # fmt: skip
        a["algbw_gbps"] = rolled.algbw_gbps
        a["busbw_gbps"] = rolled.busbw_gbps
    return acc


def make_allreduce_hook(recorder: CommHookRecorder) -> Callable[[Any, Any], Any]:
    """A DDP comm hook equivalent to the default (average by all-reduce) that records each bucket."""

    def hook(process_group: Any, bucket: Any) -> Any:
        import torch.distributed as dist  # lazily: importing this module must not need torch

        group = process_group if process_group is not None else dist.group.WORLD
        world = dist.get_world_size(group)
        tensor = bucket.buffer()
        token = recorder.start(int(bucket.index()), int(tensor.numel() * tensor.element_size()))
        tensor.div_(world)
        fut = dist.all_reduce(tensor, group=group, async_op=True).get_future()

        def done(f: Any) -> Any:
            recorder.finish(token)
            return f.value()[0]

        return fut.then(done)

    # DDP checks a hook's annotations and refuses any that is not dist.GradBucket; with postponed annotations
    # they would be the string "Any", so the hook carries none.
    hook.__annotations__ = {}
    return hook


def register_comm_hook(ddp_model: Any, recorder: CommHookRecorder, process_group: Any = None) -> None:
    """Install the recording hook on a torch.nn.parallel.DistributedDataParallel model."""
    ddp_model.register_comm_hook(process_group, make_allreduce_hook(recorder))
