"""Checkpoint save and restore times of a real job in its telemetry: the DDP worker (one rank, gloo, real
torch.save / torch.load to a file:// checkpoint store) times them, the trainer agent reads them from the worker's
report, and the scheduler's roll-up carries them per node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from agents.meshd.events import EventBus
from agents.raft.testing.cluster import ROOT, free_port
from agents.scheduler.lifecycle import rollup
from agents.scheduler.model import Plan, WorkerSlot
from agents.signals.fusion import Fusion
from agents.trainer.component import TrainerComponent, TrainerSection, _Run


def run_worker(store: Path, reports: Path, steps: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "INFERMESH_CHECKPOINT_URI": f"file://{store}", "INFERMESH_JOB_ID": "7",
           "INFERMESH_REPORT_DIR": str(reports), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.trainer.worker", "--steps", str(steps), "--hidden", "64",
         "--checkpoint-every", "2"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    return proc


def test_checkpoint_save_and_restore_times_reach_the_job_telemetry(tmp_path: Path) -> None:
    store, reports = tmp_path / "ckpt", tmp_path / "reports"
    plan = Plan("7", "t", 1, [WorkerSlot(0, "n1", [])], "ring", "Ring", 0.1, 0.0, 0.0, "n1")
    trainer = TrainerComponent(TrainerSection())
    trainer.ctx = SimpleNamespace(fusion=Fusion("n1"), events=EventBus("n1"))

    first = _Run(plan, run_worker(store, reports / "g1", steps=4), reports / "g1", ranks=1)
    trainer._collect(first)
    rep = trainer._report(first)
    assert rep["status"] == "succeeded" and rep["step"] == 3
    assert rep["checkpoint_saves"] == 2  # after steps 2 and 4
    assert 0 < rep["checkpoint_save_s"] < 30 and 0 < rep["checkpoint_save_last_s"] < 30
    assert rep["checkpoint_restore_s"] is None  # a fresh start restores nothing
    assert rep["checkpoint_bytes"] == (store / "job-7.pt").stat().st_size > 4 * 64 * 64 * 4

    # the next generation resumes from the checkpoint: its load is timed
    second = _Run(plan, run_worker(store, reports / "g2", steps=6), reports / "g2", ranks=1)
    trainer._collect(second)
    rep2 = trainer._report(second)
    assert rep2["step"] == 5 and rep2["checkpoint_saves"] == 1  # saved after step 6
    assert 0 < rep2["checkpoint_restore_s"] < 30
    telemetry = rollup(plan, {"n1": rep2})
    node = telemetry["nodes"]["n1"]
    assert node["checkpoint_restore_s"] == rep2["checkpoint_restore_s"]
    assert node["checkpoint_saves"] == 1 and node["checkpoint_save_s"] == rep2["checkpoint_save_s"]
