"""The sans-IO job lifecycle, table-driven: each case is a store, then a list of steps (what the trainers or the
portal change, then one `reconcile` pass whose result is committed back) and what the job looks like after each.

No agent, no Raft, no clock: `reconcile(snapshot, now, config)` over a dict that plays the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from agents.scheduler import storekeys as K
from agents.scheduler.lifecycle import LifecycleConfig, Reconciled, Snapshot, reconcile

NOW = 1_000.0
Store = dict[str, Any]


def inventory(name: str, gpus: int = 2, at: float = NOW) -> dict[str, Any]:
    return {"name": name, "zone": "zone-a", "status": "active", "at": at,
            "gpus": [{"uuid": f"GPU-{name}-{i}", "gpu_type": "H100", "index": i} for i in range(gpus)]}  # fmt: skip


def portal_job(jid: int, gpus_per_worker: int = 2, workers: int = 1, status: str = "pending") -> dict[str, Any]:
    return {"id": jid, "tenant": 1, "name": f"job-{jid}", "status": status, "priority": 50, "workers": workers,
            "spec": {"workers": {"min": workers, "max": workers}, "gpus_per_worker": gpus_per_worker,
                     "entrypoint": ["torchrun"], "checkpoint_uri": "s3://ckpt/x"}}  # fmt: skip


def fleet(*names: str) -> Store:
    return {f"{K.INVENTORY}{n}": inventory(n) for n in names}


# ---------------------------------------------------------------- what changes between passes
def report(status: str, generation: int | None = None) -> Callable[[Store], None]:
    """Every worker of job 1's current plan reports `status` (for the plan's generation unless given)."""

    def change(store: Store) -> None:
        plan = store[f"{K.PLANS}1"]
        gen = plan["generation"] if generation is None else generation
        for w in plan["workers"]:
            store[f"{K.REPORTS}1/{w['node']}"] = {"generation": gen, "status": status, "step": 10, "at": NOW}

    return change


def cancel(store: Store) -> None:
    store[f"{K.PORTAL_JOBS}1"]["status"] = "cancelled"


def remove_job(store: Store) -> None:
    del store[f"{K.PORTAL_JOBS}1"]


def add_node(name: str) -> Callable[[Store], None]:
    def change(store: Store) -> None:
        store[f"{K.INVENTORY}{name}"] = inventory(name)

    return change


def nothing(store: Store) -> None:
    pass


# ---------------------------------------------------------------- the driver the tests share
def commit(store: Store, out: Reconciled) -> None:
    store.update(out.writes)
    for key in out.deletes:
        store.pop(key, None)


def run_pass(store: Store, config: LifecycleConfig, now: float = NOW) -> Reconciled:
    out = reconcile(Snapshot.from_store(store), now, config)
    commit(store, out)
    return out


@dataclass
class Step:
    change: Callable[[Store], None]
    status: str
    has_plan: bool
    event: str = ""  # a kind the pass must have emitted for job 1
    reason: str = ""  # a substring of the job's reason
    generation: int | None = None  # of the committed plan
    new_leader: bool = False  # this pass runs on a fresh config (a new leader with nothing in memory)


@dataclass
class Case:
    name: str
    store: Callable[[], Store]
    steps: list[Step]
    config: dict[str, Any] = field(default_factory=dict)


def _one_job(*nodes: str, gpus_per_worker: int = 2) -> Callable[[], Store]:
    return lambda: {**fleet(*nodes), f"{K.PORTAL_JOBS}1": portal_job(1, gpus_per_worker)}


CASES = [
    Case("failure, restart from checkpoint, failed after the limit", _one_job("n1", "n2"), [
        Step(nothing, "placing", True, event="placed", generation=1),
        Step(report("running"), "running", True, event="status.running"),
        Step(report("failed"), "placing", True, event="worker_failed", generation=2),
        Step(report("failed"), "placing", True, event="worker_failed", generation=3),
        Step(report("failed"), "failed", False, event="status.failed", reason="after 2 restarts"),
        Step(nothing, "failed", False),  # a failed job stays failed and is not placed again
    ], config={"max_restarts": 2}),
    Case("a failure report of an older generation is not a new failure", _one_job("n1"), [
        Step(nothing, "placing", True, generation=1),
        Step(report("failed"), "placing", True, event="worker_failed", generation=2),
        Step(report("failed", generation=1), "placing", True, generation=2),
        Step(report("running"), "running", True, generation=2),
    ], config={"max_restarts": 1}),
    Case("cancellation in the portal deletes the plan", _one_job("n1"), [
        Step(nothing, "placing", True),
        Step(report("running"), "running", True),
        Step(cancel, "cancelled", False, event="status.cancelled", reason="job cancelled"),
    ]),
    Case("a job gone from the portal is cancelled", _one_job("n1"), [
        Step(nothing, "placing", True),
        Step(remove_job, "cancelled", False, event="status.cancelled"),
    ]),
    Case("all workers succeeded", lambda: {**fleet("n1", "n2"), f"{K.PORTAL_JOBS}1": portal_job(1, 2, workers=2)}, [
        Step(nothing, "placing", True, event="placed"),
        Step(report("running"), "running", True, reason="2 workers running"),
        Step(report("succeeded"), "succeeded", False, event="status.succeeded", reason="all 2 workers finished"),
        Step(nothing, "succeeded", False),
    ]),
    Case("a queue reason is carried over while it holds, then the job is placed", _one_job("n1", gpus_per_worker=4), [
        Step(nothing, "queued", False, event="status.queued"),
        Step(nothing, "queued", False),  # same reason: no new event, no rewrite
        Step(add_node("n2"), "queued", False),
        Step(lambda s: s.update({f"{K.INVENTORY}n3": inventory("n3", gpus=4)}), "placing", True, event="placed"),
    ]),
    Case("a new leader rebuilds the state from the store alone", _one_job("n1"), [
        Step(nothing, "placing", True, generation=1),
        Step(report("failed"), "placing", True, event="worker_failed", generation=2, new_leader=True),
        # the restart count came from the store: the next failure is past the limit of 1
        Step(report("failed"), "failed", False, reason="after 1 restarts", new_leader=True),
    ], config={"max_restarts": 1}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_lifecycle(case: Case) -> None:
    store = case.store()
    config = LifecycleConfig(**case.config)
    for i, step in enumerate(case.steps):
        step.change(store)
        before = store.get(f"{K.JOBS}1")
        out = run_pass(store, LifecycleConfig(**case.config) if step.new_leader else config)
        where = f"step {i} of {case.name!r}"
        state = store[f"{K.JOBS}1"]
        assert state["status"] == step.status, (where, state)
        assert (f"{K.PLANS}1" in store) == step.has_plan, (where, sorted(store))
        kinds = [e.kind for e in out.events if e.job_id == "1"]
        if step.event:
            assert step.event in kinds, (where, kinds)
        if step.reason:
            assert step.reason in state["reason"], (where, state["reason"])
        if step.generation is not None:
            assert store[f"{K.PLANS}1"]["generation"] == step.generation, where
        if step.change is nothing and not step.event and before is not None and before["status"] == step.status:
            assert f"{K.JOBS}1" not in out.writes and not kinds, (where, kinds)  # a quiet pass writes nothing


def test_a_restart_is_recorded_in_the_job_state_and_its_events() -> None:
    store = _one_job("n1")()
    config = LifecycleConfig(max_restarts=3)
    run_pass(store, config)
    report("failed")(store)
    run_pass(store, config)
    state = store[f"{K.JOBS}1"]
    assert state["restarts"] == 1
    assert any(e["kind"] == "worker_failed" and "restarting from checkpoint" in e["message"] for e in state["events"])
    assert store[f"{K.PLANS}1"]["generation"] == 2


def test_an_invalid_portal_job_fails_naming_the_problem() -> None:
    store = {**fleet("n1"), f"{K.PORTAL_JOBS}1": {"id": 1, "spec": {"gpus_per_worker": "many"}}}
    run_pass(store, LifecycleConfig())
    state = store[f"{K.JOBS}1"]
    assert state["status"] == "failed" and "invalid job" in state["reason"], state


def test_observations_carry_the_current_generation_reports_for_calibration() -> None:
    store = _one_job("n1")()
    config = LifecycleConfig()
    run_pass(store, config)
    report("running")(store)
    out = run_pass(store, config)
    assert [(p.job_id, sorted(rep)) for p, rep in out.observations] == [("1", ["n1"])]
    assert store[f"{K.JOBS}1"]["telemetry"]["nodes"]["n1"]["step"] == 10


def test_a_stale_inventory_takes_the_node_offline_and_moves_the_job() -> None:
    store = {**fleet("n1"), f"{K.PORTAL_JOBS}1": portal_job(1)}
    config = LifecycleConfig(offline_after_s=15)
    run_pass(store, config)
    assert store[f"{K.PLANS}1"]["workers"][0]["node"] == "n1"
    store[f"{K.INVENTORY}n2"] = inventory("n2", at=NOW + 60)
    out = run_pass(store, config, now=NOW + 60)  # n1's heartbeat is 60 s old
    assert store[f"{K.PLANS}1"]["workers"][0]["node"] == "n2", out.events
