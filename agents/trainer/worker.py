"""A small PyTorch DDP training worker (CPU, gloo) launched by torchrun: records each gradient bucket's all-reduce
with the comm-hook recorder, writes step times and CommStats as JSON lines for its trainer agent, and checkpoints so
that a re-placed job resumes where it stopped. With OpenTelemetry's exporter variables set (they reach it through
its agent's environment) each rank's run is a trace: a `train.step` span per step with an `allreduce.bucket` span per
gradient bucket inside it.

    python -m torch.distributed.run ... -m agents.trainer.worker --steps 40 --hidden 512
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def _checkpoint_path() -> Path | None:
    uri = os.environ.get("INFERMESH_CHECKPOINT_URI", "")
    if uri.startswith("file://"):
        return Path(uri[len("file://") :]) / f"job-{os.environ.get('INFERMESH_JOB_ID', 'local')}.pt"
    return None


class _Spans:
    """Spans of one rank's run; all no-ops without an exporter configured."""

    def __init__(self, job: str, rank: int, world: int) -> None:
        from opentelemetry import trace

        from agents.tracing import setup_from_env, tracer

        self.trace = trace
        self.provider = setup_from_env("infermesh-trainer", instance=f"job-{job}/rank-{rank}")
        self.on = self.provider is not None
        self.tracer = tracer("infermesh.trainer")
        self.attrs: dict[str, str | int] = {"job_id": job, "rank": rank, "world_size": world}
        self.run = self.tracer.start_span("train.run", attributes=self.attrs)
        self.step: Any = None
        self.step_ctx: Any = trace.set_span_in_context(self.run)

    def begin_step(self, step: int) -> None:
        self.step = self.tracer.start_span("train.step", context=self.trace.set_span_in_context(self.run),
                                           attributes={**self.attrs, "step": step})  # fmt: skip
        self.step_ctx = self.trace.set_span_in_context(self.step)

    def end_step(self, loss: float) -> None:
        if self.step is not None:
            self.step.set_attribute("loss", loss)
            self.step.end()
            self.step = None

    def bucket(self, c: Any) -> None:
        """A bucket's all-reduce, from its completion (on the communication thread): timed by the recorder."""
        end = time.time_ns()
        span = self.tracer.start_span(
            "allreduce.bucket",
            context=self.step_ctx,
            start_time=end - int(c.time_s * 1e9),
            attributes={**self.attrs, "step": c.step, "bucket_id": c.bucket_id if c.bucket_id is not None else -1,
                        "bytes": c.bytes, "collective": c.collective},
        )  # fmt: skip
        span.end(end_time=end)

    def close(self) -> None:
        self.end_step(float("nan"))
        self.run.end()
        if self.provider is not None:
            self.provider.force_flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="DDP worker for InferMesh trainer agents")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=512, help="width of the MLP (4 layers: ~hidden^2 * 4 parameters)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--step-sleep", type=float, default=0.0, help="extra seconds per step (to stretch short runs)")
    ap.add_argument("--checkpoint-every", type=int, default=5)
    args = ap.parse_args(argv)

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from agents.signals.comm.ddp import CommHookRecorder, register_comm_hook

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    h = args.hidden
    model = torch.nn.Sequential(
        torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, h), torch.nn.ReLU(),
        torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, h),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start = 0
    ckpt = _checkpoint_path()
    restored: dict[str, Any] | None = None
    if ckpt is not None and ckpt.exists():
        t0 = time.perf_counter()
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        restored = {"seconds": time.perf_counter() - t0, "bytes": ckpt.stat().st_size}
    ddp = DistributedDataParallel(model)
    job = os.environ.get("INFERMESH_JOB_ID", "local")
    spans = _Spans(job, rank, world)
    recorder = CommHookRecorder(
        job, rank, world, algorithm=os.environ.get("INFERMESH_COLLECTIVE", ""), sink=spans.bucket if spans.on else None
    )
    register_comm_hook(ddp, recorder)
    out_dir = Path(os.environ.get("INFERMESH_REPORT_DIR", "."))
    out_dir.mkdir(parents=True, exist_ok=True)
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(rank)
    with open(out_dir / f"rank-{rank}.jsonl", "a", buffering=1) as out:

        def emit(obj: dict[str, Any]) -> None:
            out.write(json.dumps(obj, separators=(",", ":")) + "\n")

        emit({"type": "start", "rank": rank, "world": world, "params": params, "resume_step": start})
        if restored is not None:  # the checkpoint's load time, as the job's telemetry reports it
            emit({"type": "checkpoint", "op": "restore", "rank": rank, "step": start, **restored})
        for step in range(start, args.steps):
            spans.begin_step(step)
            t0 = time.perf_counter()
            recorder.set_step(step)
            x = torch.randn(args.batch, h, generator=gen)
            loss = ddp(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step_s = time.perf_counter() - t0
            for c in recorder.drain():
                emit({"type": "comm", "rank": c.rank, "collective": c.collective, "bytes": c.bytes,
                      "time_s": c.time_s, "n_ranks": c.n_ranks, "bucket_id": c.bucket_id, "step": c.step,
                      "algorithm": c.algorithm})  # fmt: skip
            emit({"type": "step", "rank": rank, "step": step, "step_s": step_s, "loss": float(loss.detach())})
            spans.end_step(float(loss.detach()))
            if ckpt is not None and rank == 0 and (step + 1) % args.checkpoint_every == 0:
                t0 = time.perf_counter()
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}, tmp)
                tmp.replace(ckpt)  # atomic: a worker killed mid-save never leaves a torn checkpoint
                emit({"type": "checkpoint", "op": "save", "rank": rank, "step": step + 1,
                      "seconds": time.perf_counter() - t0, "bytes": ckpt.stat().st_size})  # fmt: skip
            if args.step_sleep:
                time.sleep(args.step_sleep)
        emit({"type": "done", "rank": rank, "steps": args.steps})
    spans.close()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
