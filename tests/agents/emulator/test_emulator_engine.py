"""The sans-IO continuous-batching core: admission, chunked prefill, decode timing, KV blocks, preemption, abort."""

from __future__ import annotations

import pytest

from agents.emulator.engine import EngineConfig, EngineCore, Sequence
from agents.emulator.profiles import get_profile, profile_names


def _core(**kw: object) -> EngineCore:
    return EngineCore(EngineConfig(profile=get_profile("h100"), **kw))  # type: ignore[arg-type]


def _seq(rid: str, prompt: int, out: int, t: float = 0.0) -> Sequence:
    return Sequence(req_id=rid, prompt_tokens=prompt, max_tokens=out, target_tokens=out, arrival=t)


def _run(core: EngineCore, t: float = 0.0, max_steps: int = 100_000) -> float:
    for _ in range(max_steps):
        step = core.schedule()
        if step is None:
            return t
        t += step.duration_s
        core.complete(step, t)
    raise AssertionError("engine did not drain")


def test_single_request_ttft_is_prefill_and_itl_is_decode_step() -> None:
    core = _core()
    p = core.config.profile
    seq = _seq("a", 2048, 4)
    core.add(seq)
    step = core.schedule()
    assert step is not None and step.prefill_tokens == 2048 and step.decode_seqs == 0
    assert step.duration_s == pytest.approx(p.ttft_fixed_s + 2048 / p.prefill_tok_s)
    core.complete(step, step.duration_s)
    assert seq.output_tokens == 1 and seq.first_token_at == pytest.approx(step.duration_s)
    step2 = core.schedule()
    assert step2 is not None and step2.decode_seqs == 1 and step2.prefill_tokens == 0
    assert step2.duration_s == pytest.approx(p.decode_step_s(1, 2048))
    end = _run(core, step.duration_s)
    assert seq.finish_reason == "length" and seq.output_tokens == 4
    assert end == pytest.approx(step.duration_s + 3 * step2.duration_s, rel=0.01)
    assert core.free_blocks == core.config.num_blocks


def test_decode_step_grows_with_batch_and_context() -> None:
    p = get_profile("h100")
    assert p.decode_step_s(64, 0) == pytest.approx(p.itl_b1_s * 1.64)
    assert p.decode_step_s(8, 100_000) > p.decode_step_s(8, 1_000) > p.decode_step_s(1, 1_000)


def test_long_prompt_is_chunked_by_token_budget() -> None:
    core = _core(max_num_batched_tokens=1000)
    seq = _seq("a", 2500, 2)
    core.add(seq)
    chunks = []
    t = 0.0
    while seq.output_tokens == 0:
        step = core.schedule()
        assert step is not None
        chunks.append(step.prefill_tokens)
        t += step.duration_s
        core.complete(step, t)
    assert chunks == [1000, 1000, 500]


def test_max_num_seqs_limits_running_and_queue_is_fcfs() -> None:
    core = _core(max_num_seqs=2)
    seqs = [_seq(str(i), 10, 5) for i in range(4)]
    for s in seqs:
        core.add(s)
    step = core.schedule()
    assert step is not None
    assert [s.req_id for s in core.running] == ["0", "1"]
    assert [s.req_id for s in core.waiting] == ["2", "3"]
    _run(core)
    assert all(s.finish_reason == "length" for s in seqs)
    assert seqs[2].first_scheduled is not None and seqs[0].finished_at is not None
    assert seqs[2].first_scheduled >= seqs[0].finished_at - 1e-9


def test_kv_capacity_blocks_admission() -> None:
    core = _core(kv_tokens=1024)  # 64 blocks of 16
    big = _seq("big", 900, 10)
    other = _seq("other", 300, 10)
    core.add(big)
    core.add(other)
    core.schedule()
    assert [s.req_id for s in core.running] == ["big"]
    assert [s.req_id for s in core.waiting] == ["other"]
    _run(core)
    assert other.finish_reason == "length"


def test_preemption_by_recompute_when_kv_runs_out() -> None:
    core = _core(kv_tokens=320)  # 20 blocks
    a, b = _seq("a", 100, 200), _seq("b", 100, 200)
    core.add(a)
    core.add(b)
    _run(core)
    assert core.counters.preemptions >= 1
    assert b.preemptions >= 1 and a.preemptions == 0
    assert a.output_tokens == 200 and b.output_tokens == 200
    # recomputation re-prefills b's prompt and its outputs so far
    assert core.counters.prompt_tokens > 200
    assert core.free_blocks == core.config.num_blocks


def test_abort_frees_blocks_and_is_counted() -> None:
    core = _core()
    a, b = _seq("a", 100, 50), _seq("b", 100, 50)
    core.add(a)
    core.add(b)
    step = core.schedule()
    assert step is not None
    core.complete(step, step.duration_s)
    assert core.abort("a", 1.0) is True
    assert a.finish_reason == "abort" and core.counters.aborted == 1
    assert core.abort("a", 1.0) is False
    _run(core, 1.0)
    assert b.finish_reason == "length"
    assert core.free_blocks == core.config.num_blocks


def test_bad_requests_are_refused() -> None:
    core = _core(kv_tokens=160)
    with pytest.raises(ValueError, match="exceed the KV capacity"):
        core.add(_seq("x", 150, 20))
    core.add(_seq("y", 10, 1))
    with pytest.raises(ValueError, match="duplicate"):
        core.add(_seq("y", 10, 1))
    with pytest.raises(ValueError, match="at least one"):
        core.add(_seq("z", 0, 1))


def test_profiles_resolve_and_mig_scales() -> None:
    h = get_profile("h100")
    mig = get_profile("h100:mig-3g.40gb")
    assert mig.mig_profile == "3g.40gb"
    assert mig.prefill_tok_s == pytest.approx(h.prefill_tok_s * 3 / 7)
    assert mig.itl_b1_s == pytest.approx(h.itl_b1_s * 2)
    assert 150_000 < mig.kv_tokens < 165_000  # gpu_profiles.md: ~157k
    assert 9_000 < get_profile("h100-mig-2g.20gb").kv_tokens < 10_500
    with pytest.raises(ValueError, match="does not fit"):
        get_profile("h100-mig-1g.10gb")
    with pytest.raises(ValueError, match="unknown GPU profile"):
        get_profile("tpu-v5")
    for name in profile_names():
        assert get_profile(name).kv_tokens > 0
