"""Disaggregated serving in the emulator: a decode engine pulls a remote prefill's KV over the modelled link
instead of computing it, and kv_transfer_params are read and written as vLLM's NixlConnector does."""

from __future__ import annotations

import pytest

from agents.emulator import kvtransfer
from agents.emulator.engine import EngineConfig, EngineCore, Sequence
from agents.emulator.profiles import KV_BYTES_PER_TOKEN_8B, get_profile


def run(core: EngineCore, now: float = 0.0) -> float:
    """Drive the core to idle the way the server's driver does; returns the time it ended."""
    while core.has_work:
        step = core.schedule(now)
        if step is None:
            nxt = core.next_arrival()
            assert nxt is not None, "idle with work but nothing in flight"
            now = nxt
            continue
        now += step.duration_s
        core.complete(step, now)
    return now


def test_decode_pulls_remote_kv_instead_of_prefilling() -> None:
    cfg = EngineConfig(profile=get_profile("h100"), kv_link_bytes_s=12.5e9)
    local, remote = EngineCore(cfg), EngineCore(cfg)
    local.add(Sequence("a", 8000, 4, 4, 0.0))
    remote.add(Sequence("b", 8000, 4, 4, 0.0, remote_tokens=8000))
    run(local)
    run(remote)
    a, b = local.counters, remote.counters
    assert a.prompt_tokens == 8000 and b.prompt_tokens == 0  # the decode engine computed no prompt token
    assert b.kv_transfers == 1 and b.kv_transfer_bytes == 8000 * KV_BYTES_PER_TOKEN_8B
    assert b.kv_transfer_s == pytest.approx(8000 * KV_BYTES_PER_TOKEN_8B / 12.5e9)
    assert b.generation_tokens == 4 and b.finished == 1


def test_pulls_share_one_link_and_skip_locally_cached_blocks() -> None:
    core = EngineCore(EngineConfig(profile=get_profile("h100"), block_size=16, kv_link_bytes_s=1e9))
    ids = list(range(1000, 1000 + 4096))
    core.add(Sequence("warm", 4096, 1, 1, 0.0, token_ids=ids))
    t = run(core)
    # the same prompt again from a remote prefill: every block but the recomputed last one is cached here
    core.add(Sequence("x", 4096, 2, 2, t, token_ids=ids, remote_tokens=4096))
    core.add(Sequence("y", 2048, 2, 2, t, remote_tokens=2048))
    core.schedule(t)
    (_, x), (_, y) = core.transferring
    assert x.cached_tokens == 4096 - 16 and x.transfer_s == pytest.approx(16 * KV_BYTES_PER_TOKEN_8B / 1e9)
    # y queues behind x on the link
    assert y.transfer_s == pytest.approx((16 + 2048) * KV_BYTES_PER_TOKEN_8B / 1e9)
    run(core, t)
    assert core.counters.finished == 3


def test_abort_while_pulling_frees_its_blocks() -> None:
    core = EngineCore(EngineConfig(profile=get_profile("h100"), kv_link_bytes_s=1e9))
    free = core.free_blocks
    core.add(Sequence("z", 1024, 8, 8, 0.0, remote_tokens=1024))
    core.schedule(0.0)
    assert core.transferring and core.free_blocks < free
    assert core.abort("z", 0.01)
    assert not core.has_work and core.free_blocks == free


def test_kv_transfer_params_round_trip() -> None:
    assert kvtransfer.parse(None) == (False, None)
    assert kvtransfer.parse(kvtransfer.PREFILL_REQUEST) == (True, None)
    answer = kvtransfer.prefill_answer("eng", [5, 6, 7], "10.0.0.1", 9001, "r1", prompt_tokens=40, block_size=16)
    assert answer["remote_block_ids"] == [5, 6]  # full blocks only
    decode, remote = kvtransfer.parse(answer)
    assert not decode and remote == kvtransfer.RemotePrefill("eng", [5, 6], "10.0.0.1", 9001, "r1")
    for bad, field in (("x", "must be an object"), ({**answer, "remote_port": "9"}, "remote_port"),
                       ({**answer, "remote_block_ids": [1, -2]}, "remote_block_ids"),
                       ({**answer, "do_remote_decode": True}, "exclude")):  # fmt: skip
        with pytest.raises(kvtransfer.KvTransferError, match=field):
            kvtransfer.parse(bad)
