"""A wall-clock jump on one node: three agents in three zones on the network test bed (gossip, one Raft group), a
router and an emulated runtime next to the first. Every process of that host (agent, router, runtime) runs under
libfaketime with only CLOCK_REALTIME shifted (FAKETIME_DONT_FAKE_MONOTONIC), as an NTP step does: the host's clock
jumps an hour forward, then two hours back, then returns, while that agent leads the Raft group, clients write and
read, and the router serves. Nothing that times out, leases or elects may notice: the term and the leader stay, no
member is suspected, the history stays linearizable, every request is answered."""

from __future__ import annotations

import asyncio
import glob
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agents.raft.testing.cluster import Workload
from agents.raft.testing.lincheck import check_history
from tests.faults.test_network import Sampler
from tests.faults.zoned import ZonedMesh, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

JUMPED = "a1"
# (offset of the jumped host's wall clock in seconds, how long it is held)
STEPS = [(3600, 6.0), (-3600, 6.0), (0, 4.0)]
# A 3 s election timeout: a timer on the wall clock would fire at once on a jump of an hour, while a leader starved
# of CPU for a second on a loaded machine (CI runs other suites beside this one) does not lose its lead.
ELECTION_TICKS = 60


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        raise RuntimeError("the clock-jump test needs libfaketime (Debian: apt-get install -y faketime)")
    return found[0]


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[ZonedMesh, Path]]:
    clock = tmp_path / "clock"
    clock.write_text("+0\n")
    env = ["env", f"LD_PRELOAD={libfaketime()}", f"FAKETIME_TIMESTAMP_FILE={clock}",
           "FAKETIME_DONT_FAKE_MONOTONIC=1", "FAKETIME_CACHE_DURATION=1"]  # fmt: skip
    mesh = ZonedMesh(
        tmp_path / "mesh", zones={"za": 1, "zb": 1, "zc": 1}, router_zones=("za",),
        wrap=lambda host: env if host == JUMPED else [], election_ticks=ELECTION_TICKS,
    )  # fmt: skip
    try:
        mesh.start()
        yield mesh, clock
    finally:
        mesh.close()


def wall_of_router(mesh: ZonedMesh) -> float:
    """The jumped host's wall clock as its router reads it (the `created` of /v1/models)."""
    resp = httpx.get(mesh.routers["za"].url + "/v1/models", headers={"Authorization": "Bearer demo-key"}, timeout=5)
    return float(resp.json()["data"][0]["created"])


def test_wall_clock_jump_forward_and_back(clocked: tuple[ZonedMesh, Path]) -> None:
    mesh, clock = clocked
    cluster = mesh.cluster
    jumped = mesh.node_of(JUMPED)
    # The jumped host's agent leads: its lease and its heartbeats are what a wall-clock timer would break.
    for _ in range(8):
        lead = cluster.leader()
        if lead == jumped:
            break
        cluster.pause(lead)
        try:
            cluster.leader(exclude={lead})
        finally:
            cluster.resume(lead)
        time.sleep(1.0)
    assert cluster.leader() == jumped, f"{JUMPED} never took the lead"
    term = cluster.status(jumped).term
    mesh.wait_converged(60)

    calm = run_phase(mesh, clock, jumped, term, jumping=False)
    jump = run_phase(mesh, clock, jumped, term, jumping=True)
    assert cluster.status(jumped).term == term and cluster.leader() == jumped
    print(
        "scenario:", json.dumps({
            "scenario": "wall clock +1h, -1h, back on the leader's host", **jump,
            "lost": 0, "duplicated": 0, "recover_s": 0.0, "calm_phase_before": calm})
    )  # fmt: skip


def run_phase(mesh: ZonedMesh, clock: Path, jumped: int, term: int, *, jumping: bool) -> dict[str, object]:
    """Writes, reads and requests for as long as the jumps take, with the jumps or (a control) without them."""
    cluster = mesh.cluster
    work = Workload(
        [m.address for m in cluster.members.values()], clients=4, keys=3, prefix=f"kv/clock{int(jumping)}/k"
    )
    outcomes: dict[str, int] = {}
    stop = threading.Event()

    def requests() -> None:
        with httpx.Client(timeout=15) as client:
            while not stop.is_set():
                try:
                    resp = client.post(
                        mesh.routers["za"].url + "/v1/chat/completions",
                        json={"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                        headers={"Authorization": "Bearer demo-key"},
                    )
                except httpx.HTTPError as exc:
                    what = f"lost:{type(exc).__name__}"
                else:
                    what = str(resp.status_code)
                outcomes[what] = outcomes.get(what, 0) + 1

    seen_offsets: list[float] = []

    def jumps() -> None:
        for offset, hold in STEPS:
            clock.write_text(f"{offset:+d}\n")
            t0 = time.monotonic()

            # the host's processes see the jump (libfaketime re-reads the file within a second)
            def shifted(o: int = offset) -> bool:
                return abs(wall_of_router(mesh) - time.time() - o) < 30

            wait_for(f"the router's wall clock at {offset:+d}s", shifted, 10)
            seen_offsets.append(round(wall_of_router(mesh) - time.time()))
            time.sleep(max(0.0, hold - (time.monotonic() - t0)))

    with Sampler(mesh, every=0.3) as sampler:
        threads = [threading.Thread(target=requests, daemon=True)]
        if jumping:
            threads.append(threading.Thread(target=jumps, daemon=True))
        for t in threads:
            t.start()
        try:
            asyncio.run(work.run(sum(h for _, h in STEPS) + 4.0, seed=6 + int(jumping)))  # client sessions of its own
        finally:
            stop.set()
            for t in threads:
                t.join(30)
            clock.write_text("+0\n")
        asyncio.run(work.final_reads())
    if jumping:
        assert len(seen_offsets) == len(STEPS), f"the jumps did not all reach the router: {seen_offsets}"
        assert all(abs(s - o) < 30 for s, (o, _) in zip(seen_offsets, STEPS, strict=True)), seen_offsets

    res = check_history(work.history)
    assert res.ok, f"not linearizable on keys {res.bad_keys}"
    assert set(sampler.leaders.by_term) == {term}, f"an election (jumps: {jumping}): {sampler.leaders.by_term}"
    assert sampler.leaders.by_term[term] == {jumped}
    # A suspicion on a wall-clock timer would turn into a death at once; a suspicion refuted in time is SWIM at work.
    assert not sampler.dead_seen, f"declared dead (jumps: {jumping}): {sorted(sampler.dead_seen)}"
    bad = {k: v for k, v in outcomes.items() if k != "200"}
    assert not bad and outcomes.get("200", 0) > 0, outcomes
    writes = [o for o in work.history if o.kind != "get"]
    assert writes and work.acked_writes == len(writes), f"{work.acked_writes} of {len(writes)} writes acknowledged"
    return {
        "offsets_seen_s": seen_offsets, "writes_attempted": len(writes), "acked": work.acked_writes,
        "reads": sum(o.kind == "get" for o in work.history), "write_errors_retried": work.errors,
        "requests": sum(outcomes.values()), "requests_ok": outcomes.get("200", 0), "terms": len(
            sampler.leaders.by_term), "suspected": len(sampler.suspect_seen),
    }  # fmt: skip
