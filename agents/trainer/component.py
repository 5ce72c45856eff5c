"""Trainer agents (`trainer:` section of `infermesh agent`): publish the node's training inventory to the store,
launch the local workers of every committed plan with a real `torchrun` (c10d rendezvous, world size, master address
and the plan's topology hint), stream their CommStats into the agent, and report steps and status per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from pydantic import BaseModel, ConfigDict, Field

from agents.collective.records import CommStats
from agents.datadir import data_dir
from agents.scheduler import storekeys as K
from agents.scheduler.model import GpuInfo, NodeState, Plan, gpu_type_of

if TYPE_CHECKING:
    from agents.meshd.component import AgentContext

log = logging.getLogger("meshd.trainer")


class TrainerSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str = ""
    region: str = ""
    host: str = ""
    cpu_slots: int = Field(default=2, ge=0, le=1024)
    interval_s: float = Field(default=0.5, gt=0, le=60)
    publish_s: float = Field(default=2.0, gt=0, le=60)
    workdir: str = ""  # default: $INFERMESH_DATA_DIR/trainer/<node>
    rdzv_timeout_s: int = Field(default=60, ge=5)


@dataclass
class _Run:
    plan: Plan
    proc: subprocess.Popen[bytes]
    report_dir: Path
    ranks: int
    offsets: dict[str, int] = field(default_factory=dict)
    step: int = -1
    step_s: float = 0.0
    step_sum: float = 0.0
    steps: int = 0
    ar_count: int = 0
    ar_time: float = 0.0
    ar_bytes: int = 0
    comm: list[dict[str, Any]] = field(default_factory=list)
    ckpt_saves: int = 0
    ckpt_save_sum: float = 0.0
    ckpt_save_last: float | None = None
    ckpt_restore: float | None = None
    ckpt_bytes: int = 0
    status: str = "running"
    exit_code: int | None = None
    last_report: str = ""


def torchrun_command(plan: Plan, node: str, job: Mapping[str, Any], rdzv_timeout_s: int) -> list[str]:
    """The torchrun invocation of this node's share of a plan."""
    local = [w for w in plan.workers if w.node == node]
    nnodes = len(plan.nodes)
    master = plan.env.get("INFERMESH_MASTER_ADDR", "127.0.0.1")
    is_host = 1 if node == plan.master_node else 0
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={nnodes}", f"--nproc-per-node={len(local)}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={master}:{plan.rdzv_port}",
        f"--rdzv-id={plan.job_id}-g{plan.generation}", f"--rdzv-conf=is_host={is_host},join_timeout={rdzv_timeout_s}",
        "--max-restarts=0", "--monitor-interval=0.5",
    ]  # fmt: skip
    spec = job.get("spec") or {}
    entry = list(spec.get("entrypoint") or [])
    args = [str(a) for a in spec.get("args") or []]
    if len(entry) >= 3 and entry[0] in ("python", "python3") and entry[1] == "-m":
        return [*cmd, "-m", entry[2], *entry[3:], *args]
    if entry and entry[0] in ("python", "python3"):
        return [*cmd, *entry[1:], *args]
    return [*cmd, "--no-python", *entry, *args]


class TrainerComponent:
    name = "trainer"

    def __init__(self, cfg: TrainerSection) -> None:
        self.cfg = cfg
        self.runs: dict[str, _Run] = {}
        self._task: asyncio.Task[None] | None = None
        self._client: K.StoreClient | None = None
        self._last_publish = 0.0

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        return []

    async def start(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.node = str(ctx.node_id)
        self.workdir = Path(self.cfg.workdir or data_dir() / "trainer" / self.node)
        self._client = K.StoreClient.of_agent(ctx, self.cfg.group)
        self._task = asyncio.create_task(self._loop(), name="trainer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for jid in list(self.runs):
            self._kill(jid)
        if self._client is not None:
            await self._client.close()

    def inventory(self, now: float) -> dict[str, Any]:
        gpus = []
        for uuid, g in sorted(self.ctx.fusion.gpus.items()):
            d = g.delta
            gpus.append(GpuInfo(uuid, gpu_type_of(d.name) or "H100", int(d.index), d.mig_profile, d.parent_uuid,
                                healthy=bool(g.healthy)))  # fmt: skip
        node = NodeState(self.node, zone=str(self.ctx.zone), region=self.cfg.region, host=self.cfg.host,
                         gpus=gpus, cpu_slots=self.cfg.cpu_slots, address=str(self.ctx.grpc_address))  # fmt: skip
        return {**node.to_dict(), "at": now}

    async def _loop(self) -> None:
        assert self._client is not None
        while True:
            try:
                await self.run_once(self._client, time.time())
            except grpc.aio.AioRpcError as exc:
                log.info("trainer pass skipped: %s", exc.details())
            except Exception:
                log.exception("trainer pass failed")
            await asyncio.sleep(self.cfg.interval_s)

    async def run_once(self, client: K.StoreClient, now: float) -> None:
        if now - self._last_publish >= self.cfg.publish_s:
            await client.put(f"{K.INVENTORY}{self.node}", self.inventory(now))
            self._last_publish = now
        plans = await client.get_prefix(K.PLANS, serializable=True)
        jobs = await client.get_prefix(K.PORTAL_JOBS, serializable=True)
        wanted: dict[str, Plan] = {}
        for key, value in plans.items():
            try:
                plan = Plan.from_dict(value)
            except (KeyError, TypeError) as exc:
                log.warning("plan %s ignored: %s", key, exc)
                continue
            if any(w.node == self.node for w in plan.workers):
                wanted[plan.job_id] = plan
        for jid in list(self.runs):
            run = self.runs[jid]
            want = wanted.get(jid)
            if want is None or want.generation != run.plan.generation:
                if run.status == "running":
                    self.ctx.events.emit("training", f"job {jid} generation {run.plan.generation} stopped here")
                self._kill(jid)
                await client.delete(f"{K.REPORTS}{jid}/{self.node}")
                del self.runs[jid]
        for jid, plan in wanted.items():
            if jid not in self.runs:
                self._launch(plan, jobs.get(f"{K.PORTAL_JOBS}{jid}", {}))
        for jid, run in self.runs.items():
            self._collect(run)
            report = json.dumps(self._report(run), sort_keys=True)
            if report != run.last_report:
                await client.put(f"{K.REPORTS}{jid}/{self.node}", json.loads(report))
                run.last_report = report

    def _launch(self, plan: Plan, job: Mapping[str, Any]) -> None:
        report_dir = self.workdir / f"job-{plan.job_id}" / f"gen-{plan.generation}"
        report_dir.mkdir(parents=True, exist_ok=True)
        local = [w for w in plan.workers if w.node == self.node]
        spec = job.get("spec") or {}
        env = {**os.environ, **{str(k): str(v) for k, v in (spec.get("env") or {}).items()}, **plan.env}
        gpu_idx = list(dict.fromkeys(u for w in local for u in w.gpu_uuids))  # MPS workers may share one GPU
        env.update(
            INFERMESH_REPORT_DIR=str(report_dir),
            INFERMESH_NODE=self.node,
            INFERMESH_AGENT=str(self.ctx.grpc_address),
            INFERMESH_CHECKPOINT_URI=str(spec.get("checkpoint_uri", "")),
            INFERMESH_GPU_UUIDS=",".join(gpu_idx),
            PYTHONUNBUFFERED="1",
        )
        if gpu_idx:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_idx)  # MIG slices by their MIG- UUIDs, as CUDA takes them
        mps = max((w.mps_percent for w in local), default=0)
        if mps:
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(mps)  # each worker's share of the GPU's SMs under MPS
        cmd = torchrun_command(plan, self.node, job, self.cfg.rdzv_timeout_s)
        log_file = open(report_dir / "torchrun.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
        self.runs[plan.job_id] = _Run(plan, proc, report_dir, len(local))
        self.ctx.events.emit(
            "training", f"job {plan.job_id} generation {plan.generation}: {len(local)} workers started",
            attrs={"job_id": plan.job_id, "strategy": plan.strategy, "nccl_algo": plan.nccl_algo},
        )  # fmt: skip
        log.info("launched job %s gen %d: %s", plan.job_id, plan.generation, " ".join(cmd))

    def _kill(self, jid: str) -> None:
        run = self.runs.get(jid)
        if run is None or run.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGTERM)
        try:
            run.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait(5)

    def _collect(self, run: _Run) -> None:
        """Read new lines of the workers' JSON reports; CommStats go into the agent's fusion."""
        for path in sorted(run.report_dir.glob("rank-*.jsonl")):
            off = run.offsets.get(path.name, 0)
            with open(path, "rb") as fh:
                fh.seek(off)
                data = fh.read()
            cut = data.rfind(b"\n") + 1  # leave a half-written line for the next read
            run.offsets[path.name] = off + cut
            for line in data[:cut].splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("type") == "step":
                    run.step = max(run.step, int(rec["step"]))
                    run.step_s = float(rec["step_s"])
                    run.step_sum += run.step_s
                    run.steps += 1
                elif rec.get("type") == "comm":
                    stats = CommStats(
                        run.plan.job_id, int(rec["rank"]), str(rec["collective"]), int(rec["bytes"]),
                        max(float(rec["time_s"]), 1e-9), int(rec["n_ranks"]), str(rec.get("algorithm", "")),
                        rec.get("bucket_id"), rec.get("step"),
                    )  # fmt: skip
                    self.ctx.fusion.ingest_comm_stats(stats)
                    run.ar_count += 1
                    run.ar_time += stats.time_s
                    run.ar_bytes += stats.bytes
                    run.comm = [*run.comm, rec][-8:]
                elif rec.get("type") == "checkpoint":
                    seconds = float(rec["seconds"])
                    run.ckpt_bytes = int(rec.get("bytes") or run.ckpt_bytes)
                    if rec.get("op") == "save":
                        run.ckpt_saves += 1
                        run.ckpt_save_sum += seconds
                        run.ckpt_save_last = seconds
                    elif rec.get("op") == "restore":
                        run.ckpt_restore = seconds
        code = run.proc.poll()
        if code is not None and run.status == "running":
            run.exit_code = code
            run.status = "succeeded" if code == 0 else "failed"
            self.ctx.events.emit("training", f"job {run.plan.job_id} workers exited with {code} ({run.status})")

    def _report(self, run: _Run) -> dict[str, Any]:
        busbw = 0.0
        if run.ar_count and run.ar_time > 0:
            n = run.plan.workers and len(run.plan.workers)
            busbw = run.ar_bytes / run.ar_time / 1e9 * (2 * (n - 1) / n if n else 1.0)
        return {
            "generation": run.plan.generation,
            "status": run.status,
            "exit_code": run.exit_code,
            "ranks": run.ranks,
            "step": run.step,
            "step_s": round(run.step_s, 6),
            "mean_step_s": round(run.step_sum / run.steps, 6) if run.steps else None,
            "allreduce_count": run.ar_count,
            "allreduce_s": round(run.ar_time / run.ar_count, 6) if run.ar_count else None,
            "allreduce_bytes": run.ar_bytes // run.ar_count if run.ar_count else None,
            "busbw_gbps": round(busbw, 6),
            "comm": run.comm,
            # checkpoints of this generation: saves, their mean and last time, the restore it started from, size
            "checkpoint_saves": run.ckpt_saves,
            "checkpoint_save_s": round(run.ckpt_save_sum / run.ckpt_saves, 6) if run.ckpt_saves else None,
            "checkpoint_save_last_s": None if run.ckpt_save_last is None else round(run.ckpt_save_last, 6),
            "checkpoint_restore_s": None if run.ckpt_restore is None else round(run.ckpt_restore, 6),
            "checkpoint_bytes": run.ckpt_bytes or None,
        }


def make_component(section: Mapping[str, Any]) -> TrainerComponent:
    return TrainerComponent(TrainerSection.model_validate(dict(section)))
