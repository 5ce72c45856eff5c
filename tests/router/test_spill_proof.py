"""The signed proof that a request spilled from another cell was charged there (router/core/spill_proof.py), its
config field, and the router's admission honouring it: charged once across the two routers, never zero times."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from router.config import ConfigError, parse_config
from router.core.spill_proof import HEADER, MIN_SECRET_BYTES, ReplayGuard, Verdict, parse, sign, verify
from router.metrics import SPILLED_IN
from router.service import Refusal, RouterService, Tenant, Ticket
from router.upstream import UpstreamPool

SECRET = b"s" * MIN_SECRET_BYTES
NOW = 1_765_000_000.0
AGE = 30.0


def _check(
    value: str | None, rid: str = "req-1", tenant: str = "acme", now: float = NOW, secret: bytes | None = SECRET
):
    return verify(secret, value, rid, tenant, now, AGE)


def test_a_valid_proof_is_verified_within_the_window_either_way() -> None:
    proof = sign(SECRET, "req-1", "acme", NOW)
    assert proof.startswith("v1.") and parse(proof) is not None
    assert _check(proof) is Verdict.VERIFIED
    assert _check(proof, now=NOW + AGE - 0.01) is Verdict.VERIFIED
    assert _check(proof, now=NOW - AGE + 0.01) is Verdict.VERIFIED  # the sender's clock a little ahead


def test_a_tampered_proof_is_invalid() -> None:
    proof = sign(SECRET, "req-1", "acme", NOW)
    version, ts, mac = proof.split(".")
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    assert _check(f"{version}.{ts}.{flipped}") is Verdict.INVALID  # one digit of the MAC
    assert _check(f"{version}.{int(ts) + 1}.{mac}") is Verdict.INVALID  # the time, one millisecond on


def test_the_proof_binds_the_request_and_the_tenant() -> None:
    proof = sign(SECRET, "req-1", "acme", NOW)
    assert _check(proof, rid="req-2") is Verdict.INVALID
    assert _check(proof, tenant="acme2") is Verdict.INVALID
    # lengths are part of the message: shifting a character between the fields is another message
    assert _check(sign(SECRET, "req-1a", "cme", NOW), rid="req-1", tenant="acme") is Verdict.INVALID


def test_a_stale_proof_is_stale() -> None:
    proof = sign(SECRET, "req-1", "acme", NOW)
    assert _check(proof, now=NOW + AGE + 1) is Verdict.STALE
    assert _check(proof, now=NOW - AGE - 1) is Verdict.STALE  # from the future beyond the window


def test_another_secret_is_invalid() -> None:
    proof = sign(b"o" * MIN_SECRET_BYTES, "req-1", "acme", NOW)
    assert _check(proof) is Verdict.INVALID


def test_while_a_secret_is_rotated_either_verifies() -> None:
    old, new = SECRET, b"n" * MIN_SECRET_BYTES
    for signer in (old, new):
        proof = sign(signer, "req-1", "acme", NOW)
        assert verify((new, old), proof, "req-1", "acme", NOW, AGE) is Verdict.VERIFIED
    assert verify((new,), sign(old, "req-1", "acme", NOW), "req-1", "acme", NOW, AGE) is Verdict.INVALID
    assert verify((), sign(old, "req-1", "acme", NOW), "req-1", "acme", NOW, AGE) is Verdict.NO_SECRET


def test_missing_malformed_and_no_secret() -> None:
    assert _check(None) is Verdict.MISSING
    assert _check("") is Verdict.MISSING
    assert _check(sign(SECRET, "req-1", "acme", NOW), secret=None) is Verdict.NO_SECRET
    mac = "a" * 64
    for bad in ("v1", "v1.123", f"v2.123.{mac}", f"v1.x.{mac}", f"v1.123.{mac[:-1]}", f"v1.123.{'g' * 64}",
                f"v1.123.{mac}.x", f"v1.-5.{mac}", f"v1.{'9' * 16}.{mac}"):  # fmt: skip
        assert _check(bad) is Verdict.MALFORMED, bad


def test_the_replay_guard_takes_a_proof_once_while_fresh() -> None:
    guard = ReplayGuard(AGE, capacity=3)
    a, b = sign(SECRET, "a", "t", NOW), sign(SECRET, "b", "t", NOW)
    assert guard.first_use(a, NOW) and guard.first_use(b, NOW)
    assert not guard.first_use(a, NOW + 1) and not guard.first_use(b, NOW + 1)
    assert guard.first_use(a, NOW + AGE + 1)  # forgotten once stale (verify refuses it as stale by then anyway)
    for i in range(5):  # bounded: the oldest go first
        assert guard.first_use(sign(SECRET, f"n{i}", "t", NOW + AGE + 2), NOW + AGE + 2)
    assert len(guard._seen) <= 3
    assert not guard.first_use("not a proof", NOW)


# -- the config field -----------------------------------------------------------------------------------------------
def test_the_secret_file_is_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "mesh.secret"
    good.write_bytes(SECRET + b"\n")
    cfg = parse_config({"cells": {"mesh_secret_file": str(good)}}, env={})
    assert cfg.cells.mesh_secrets() == (SECRET,)
    assert parse_config({}, env={}).cells.mesh_secrets() == ()

    short = tmp_path / "short.secret"
    short.write_text("x" * (MIN_SECRET_BYTES - 1) + "\n")
    empty = tmp_path / "empty.secret"
    empty.write_text("\n \n")
    second_short = tmp_path / "second-short.secret"
    second_short.write_bytes(SECRET + b"\nshort\n")
    for path, says in (
        (short, f"at least {MIN_SECRET_BYTES} bytes"),
        (second_short, "secret 2 must be at least"),
        (empty, "holds no secret"),
        (tmp_path / "absent", "cannot read"),
    ):
        with pytest.raises(ConfigError) as e:
            parse_config({"cells": {"mesh_secret_file": str(path)}}, source="r.yaml", env={})
        assert "cells.mesh_secret_file" in str(e.value) and says in str(e.value), str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({"cells": {"spill_proof_max_age_s": 0}}, source="r.yaml", env={})
    assert "cells.spill_proof_max_age_s" in str(e.value)


# -- the router's admission: charged once across the two routers -----------------------------------------------------
def _router(tmp_path: Path, secret: bytes | None, concurrent: int) -> RouterService:
    cells: dict[str, object] = {}
    if secret is not None:
        f = tmp_path / f"secret-{len(list(tmp_path.iterdir()))}"
        f.write_bytes(secret)
        cells["mesh_secret_file"] = str(f)
    cfg = parse_config(
        {
            "agent": {"address": None},
            "targets": [{"model": "m", "url": "http://127.0.0.1:9"}],
            "tenants": [{"name": "acme", "api_keys": ["k"], "quotas": {"concurrent": concurrent}}],
            "cells": cells,
        },
        env={},
    )
    return RouterService(cfg, UpstreamPool(limit=2, connect_timeout_s=1.0))


async def _admit(svc: RouterService, corr: str, spilled_from: str | None = None, sig: str | None = None) -> Ticket:
    return await svc.admit(
        api="chat", model="m", tenant=Tenant("acme", "standard"), priority="standard", prompt_chars=4, max_tokens=4,
        corr_id=corr, spilled_from=spilled_from, spill_signature=sig,
    )  # fmt: skip


def _verdicts() -> dict[str, float]:
    return {v.value: SPILLED_IN.labels(v.value)._value.get() for v in Verdict}


def test_a_signed_spill_is_charged_only_where_it_entered(tmp_path: Path) -> None:
    home, there = _router(tmp_path, SECRET, 2), _router(tmp_path, SECRET, 2)

    async def run() -> None:
        before = _verdicts()
        # home admits two (its concurrency quota) and spills them: each carries a proof for its request and tenant
        tickets = [await _admit(home, f"r{i}") for i in range(2)]
        proofs = [home.sign_spill(t) for t in tickets]
        assert all(p is not None and verify(SECRET, p, t.corr_id, "acme", time.time(), 5)
                   is Verdict.VERIFIED for p, t in zip(proofs, tickets, strict=True))  # fmt: skip
        with pytest.raises(Refusal) as e:  # a third is over the quota at home
            await _admit(home, "r2")
        assert e.value.code == "quota_exceeded"
        # the other cell's router serves both without charging them: its own two slots stay free
        served = [await _admit(there, t.corr_id, "eu-1", p) for t, p in zip(tickets, proofs, strict=True)]
        assert all(s.lease is None and s.key_lease is None for s in served)
        local = [await _admit(there, f"l{i}") for i in range(2)]  # its own clients get the tenant's full quota
        assert all(t.lease is not None for t in local)
        # a replayed proof, a forged one, one for another request, or none at all: charged as an ordinary request
        for corr, sig in ((tickets[0].corr_id, proofs[0]), ("x", "v1.1.zz"), ("r9", proofs[1]), ("r8", None)):
            with pytest.raises(Refusal) as e:
                await _admit(there, corr, "eu-1", sig)
            assert e.value.code == "quota_exceeded", corr
        after = _verdicts()
        got = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        assert got == {"verified": 2, "replayed": 1, "malformed": 1, "invalid": 1, "missing": 1}, got

    asyncio.run(run())


def test_without_a_secret_a_spill_is_charged_at_both(tmp_path: Path) -> None:
    home, there = _router(tmp_path, None, 1), _router(tmp_path, SECRET, 1)

    async def run() -> None:
        t = await _admit(home, "r0")
        assert home.sign_spill(t) is None and not home.cells.signed
        served = await _admit(there, "r0", "eu-1", None)  # unsigned: charged here too
        assert served.lease is not None
        with pytest.raises(Refusal):
            await _admit(there, "r1", "eu-1", sign(b"o" * MIN_SECRET_BYTES, "r1", "acme", time.time()))

    asyncio.run(run())


def test_the_proof_header_never_reaches_a_runtime() -> None:
    from router.cells import for_target, spill_headers
    from router.view import Target

    h = {"Accept": "x", **spill_headers({"Authorization": "Bearer k"}, "eu-1", "v1.1.abc")}
    assert h[HEADER] == "v1.1.abc"
    runtime = Target(id="t", model="m", url="http://r", node="n", zone="", upstream_model="m", source="static")
    assert HEADER not in for_target(runtime, h) and "Authorization" not in for_target(runtime, h)


def test_the_cells_example_router_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from router.config import load_config

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the example names its secret from the repository root
    cfg = load_config("docs/examples/cells/router-eu-1.yaml", env={})
    assert cfg.cells.mesh_secret_file is not None


def test_a_v2_answers_token_counts() -> None:
    from router.kserve import outputs_of, token_counts

    assert token_counts({"outputs": outputs_of("hi", "stop", 7, 4)}) == (7, 4)
    assert token_counts({"outputs": [{"name": "text_output", "data": ["x"]}]}) == (None, None)
    bad = [{"name": "num_input_tokens", "data": [-1]}, {"name": "num_output_tokens", "data": [True]}]
    assert token_counts({"outputs": bad}) == (None, None) and token_counts({}) == (None, None)


@pytest.mark.parametrize("signed", [False, True])
def test_a_router_without_a_secret_says_so_once_when_it_finds_cells(
    signed: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from agents.proto.infermesh.v1 import wan_pb2
    from router import cells

    class Stub:
        def __init__(self, channel: object) -> None:
            pass

        async def ListCells(self, req: object, timeout: float) -> wan_pb2.ListCellsResponse:
            return wan_pb2.ListCellsResponse(cell="eu-1", region="eu")

    monkeypatch.setattr(cells.wan_pb2_grpc, "WanStub", Stub)
    watcher = cells.CellWatcher(lambda: None, cells.CellRouter(signed=signed), refresh_s=1.0)  # type: ignore[arg-type, return-value]

    async def polls() -> None:
        for _ in range(3):
            await watcher.poll_once()

    with caplog.at_level("INFO", logger="infermesh"):
        asyncio.run(polls())
    said = [r for r in caplog.records if "mesh_secret_file is not set" in r.getMessage()]
    assert len(said) == (0 if signed else 1) and all(r.levelname == "WARNING" for r in said)
