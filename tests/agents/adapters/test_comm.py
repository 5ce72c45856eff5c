"""Comm adapters: NCCL Inspector JSON and Prometheus output, the directory tail, and the DDP hook recorder."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agents.signals.comm import (
    CommHookRecorder,
    InspectorFormatError,
    NcclInspectorSource,
    make_allreduce_hook,
    parse_inspector_json,
    parse_inspector_prometheus,
    register_comm_hook,
    summarize,
)

NCCL = Path(__file__).parent / "samples" / "nccl"
ROOT = Path(__file__).parents[3]


def test_inspector_readme_records() -> None:
    a, b = parse_inspector_json((NCCL / "inspector_readme_records.json").read_text(), job_id="job-7")
    assert (a.job_id, a.rank, a.n_ranks, a.collective, a.bytes) == ("job-7", 2, 8, "allreduce", 17179869184)
    assert a.time_s == pytest.approx(0.061974)
    # our algbw/busbw agree with what the Inspector itself printed (nccl-tests definitions)
    assert a.algbw_gbps == pytest.approx(277.210914, rel=1e-6)
    assert a.busbw_gbps == pytest.approx(485.119099, rel=1e-6)
    assert (b.collective, b.rank) == ("reducescatter", 4)
    assert b.bytes == 8 * 2147483648  # per-rank message x ranks, as the Inspector's own algbw counts it
    assert b.algbw_gbps == pytest.approx(418.439467, rel=1e-4)
    assert b.busbw_gbps == pytest.approx(366.134533, rel=1e-4)


def test_inspector_prometheus_mode() -> None:
    (s,) = parse_inspector_prometheus((NCCL / "inspector.prom").read_text(), job_id="job-7")
    assert (s.collective, s.rank, s.n_ranks, s.bytes) == ("allreduce", 4, 8, 2 * 1024**3)
    assert s.time_s == pytest.approx(8589.934592e-6)
    assert s.busbw_gbps == pytest.approx(437.5)


def test_bad_inspector_input_names_the_problem() -> None:
    with pytest.raises(InspectorFormatError, match="'coll_exec_time_us'"):
        parse_inspector_json('{"header": {"rank": 0, "n_ranks": 2}, "coll_perf": {"coll": "AllReduce", '
                             '"coll_msg_size_bytes": 8}}', job_id="j")  # fmt: skip
    with pytest.raises(InspectorFormatError, match="out of range"):
        parse_inspector_json('{"header": {"rank": 5, "n_ranks": 2}, "coll_perf": {"coll": "AllReduce", '
                             '"coll_msg_size_bytes": 8, "coll_exec_time_us": 1}}', job_id="j")  # fmt: skip
    with pytest.raises(InspectorFormatError, match="not NCCL Inspector JSON"):
        parse_inspector_json("{garbage} {}", job_id="j")
    with pytest.raises(ValueError, match="not Prometheus exposition"):
        parse_inspector_prometheus("<html>", job_id="j")


def test_directory_tail_reads_only_new_records(tmp_path: Path) -> None:
    text = (NCCL / "inspector_readme_records.json").read_text()
    first, second = text.split("\n{", 1)
    log = tmp_path / "nccl-inspector-unknown-jobid" / "host-pid1639453.log"
    log.parent.mkdir()
    # the writer is in the middle of the second record
    log.write_text(first + "\n{" + second[: len(second) // 2])
    src = NcclInspectorSource(tmp_path, job_id="j")
    assert [s.collective for s in src.read()] == ["allreduce"]
    log.write_text(first + "\n{" + second)
    assert [s.collective for s in src.read()] == ["reducescatter"]
    assert src.read() == []
    # a Prometheus snapshot rewritten in place counts each collective once
    prom = tmp_path / "GPU4.prom"
    prom.write_text((NCCL / "inspector.prom").read_text())
    assert len(src.read()) == 1
    assert src.read() == []
    prom.write_text((NCCL / "inspector.prom").read_text().replace('coll_sn="228924"', 'coll_sn="228925"'))
    assert len(src.read()) == 1
    # garbage in the directory is counted and skipped, never fatal
    (tmp_path / "junk.json").write_text('{"not": "inspector"}\n')
    assert src.read() == [] and src.bad_records == 1


def test_recorder_steps_buckets_and_rollup() -> None:
    t = [0.0]
    got = []
    rec = CommHookRecorder(job_id="j", rank=1, n_ranks=4, clock=lambda: t[0], sink=got.append)
    for step in range(2):
        tokens = [rec.start(b, 25 * 1024**2) for b in (0, 1, 2)]
        for tok in tokens:
            t[0] += 0.01
            rec.finish(tok)
        assert {s.step for s in rec.records[-3:]} == {step}
    assert [s.bucket_id for s in got] == [0, 1, 2, 0, 1, 2]
    assert got[0].time_s == pytest.approx(0.01) and got[2].time_s == pytest.approx(0.03)
    roll = summarize(rec.drain())
    assert roll[("allreduce", 0)]["count"] == 3 and roll[("allreduce", 0)]["bytes"] == 75 * 1024**2
    assert roll[("allreduce", 1)]["busbw_gbps"] == pytest.approx(roll[("allreduce", 1)]["algbw_gbps"] * 1.5)
    assert rec.drain() == []
    rec.set_step(10)
    rec.finish(rec.start(0, 8))
    assert rec.records[-1].step == 10
    with pytest.raises(KeyError, match="unknown or already finished"):
        rec.finish(12345)
    with pytest.raises(ValueError, match="not within a world"):
        CommHookRecorder(job_id="j", rank=4, n_ranks=4)


def test_recorder_is_thread_safe() -> None:
    rec = CommHookRecorder(job_id="j", rank=0, n_ranks=2)
    tokens = [rec.start(i, 100) for i in range(200)]
    threads = [threading.Thread(target=lambda ts=tokens[i::4]: [rec.finish(x) for x in ts]) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(rec.records) == 200 and len({s.bucket_id for s in rec.records}) == 200


def test_hook_module_imports_torch_lazily() -> None:
    probe = "import sys, agents.signals.comm.ddp as d; d.make_allreduce_hook(d.CommHookRecorder('j', 0, 1)); "
    probe += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    if importlib.util.find_spec("torch") is None:
        hook = make_allreduce_hook(CommHookRecorder(job_id="j", rank=0, n_ranks=2))
        with pytest.raises(ModuleNotFoundError, match="torch"):
            hook(None, object())


def test_hook_records_real_ddp_buckets(tmp_path: Path) -> None:
    # A one-rank gloo group on the CPU build of torch: DDP accepts the hook and every bucket is recorded once a step.
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)))
        recorder = CommHookRecorder(job_id="j1", rank=0, n_ranks=1)
        register_comm_hook(model, recorder)
        for _ in range(3):
            model(torch.randn(4, 64)).sum().backward()
        stats = recorder.records
        assert stats and {s.step for s in stats} == {0, 1, 2}
        n_params = sum(p.numel() for p in model.parameters())
        assert sum(s.bytes for s in stats if s.step == 0) == n_params * 4  # float32 gradients, every bucket
        assert all(s.collective == "allreduce" and s.time_s >= 0 for s in stats)
    finally:
        dist.destroy_process_group()
