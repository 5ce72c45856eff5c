"""A small PyTorch DDP training worker (CPU, gloo) launched by torchrun: records each gradient bucket's all-reduce
with the comm-hook recorder, writes step times and CommStats as JSON lines for its trainer agent, and checkpoints so
that a re-placed job resumes where it stopped.

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
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
    ddp = DistributedDataParallel(model)
    job = os.environ.get("INFERMESH_JOB_ID", "local")
    recorder = CommHookRecorder(job, rank, world, algorithm=os.environ.get("INFERMESH_COLLECTIVE", ""))
    register_comm_hook(ddp, recorder)
    out_dir = Path(os.environ.get("INFERMESH_REPORT_DIR", "."))
    out_dir.mkdir(parents=True, exist_ok=True)
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(rank)
    with open(out_dir / f"rank-{rank}.jsonl", "a", buffering=1) as out:

        def emit(obj: dict[str, Any]) -> None:
            out.write(json.dumps(obj, separators=(",", ":")) + "\n")

        emit({"type": "start", "rank": rank, "world": world, "params": params, "resume_step": start})
        for step in range(start, args.steps):
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
            if ckpt is not None and rank == 0 and (step + 1) % args.checkpoint_every == 0:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}, tmp)
                tmp.replace(ckpt)  # atomic: a worker killed mid-save never leaves a torn checkpoint
            if args.step_sleep:
                time.sleep(args.step_sleep)
        emit({"type": "done", "rank": rank, "steps": args.steps})
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
