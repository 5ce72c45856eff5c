"""The scheduler honours the portal's `pinning/` and `placements/` keys: nodes kept for a model's inference get no
new training work (like a cordoned node) while the keys exist, and are planned again once they are gone."""

from __future__ import annotations

from typing import Any

from agents.scheduler import storekeys as K
from agents.scheduler.component import SchedulerComponent, SchedulerSection
from agents.scheduler.reserved import reserved_nodes


class MemoryStore:
    """The part of StoreClient a scheduler pass uses, over a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    async def get_prefix(self, prefix: str, *, serializable: bool = False) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}

    async def put(self, key: str, value: Any) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)


def _inventory(name: str, now: float) -> dict[str, Any]:
    gpus = [{"uuid": f"GPU-{name}-{i}", "gpu_type": "H100", "index": i} for i in range(2)]
    return {"name": name, "zone": "zone-a", "status": "active", "gpus": gpus, "at": now}


def test_pins_and_placements_name_the_nodes_kept_for_inference() -> None:
    got = reserved_nodes(
        {"pinning/policy-1": {"model": "llm", "nodes": ["n1"]}},
        {"placements/deployment-2": {"model": "chat", "nodes": ["n4", "n3", "n2"], "replicas": 2}},
    )
    assert got == {
        "n1": "pinned to model llm (pinning/policy-1)",
        "n2": "placement of model chat (placements/deployment-2)",
        "n3": "placement of model chat (placements/deployment-2)",
    }
    assert reserved_nodes({}, {"placements/deployment-3": {"model": "x", "nodes": [], "replicas": 1}}) == {}


async def test_a_training_job_avoids_pinned_nodes_until_the_pin_goes() -> None:
    now = 1000.0
    job = {"id": 7, "tenant": 1, "name": "train", "status": "pending", "priority": 50, "workers": 1,
           "spec": {"workers": {"min": 1, "max": 1}, "gpus_per_worker": 2, "entrypoint": ["torchrun"]}}  # fmt: skip
    store = MemoryStore({
        f"{K.INVENTORY}n1": _inventory("n1", now),
        f"{K.INVENTORY}n2": _inventory("n2", now),
        f"{K.PORTAL_JOBS}7": job,
        "pinning/policy-1": {"model": "llm", "nodes": ["n1"]},
        "placements/deployment-1": {"model": "chat", "nodes": ["n2"], "replicas": 1},
    })  # fmt: skip
    sched = SchedulerComponent(SchedulerSection())
    await sched.run_pass(store, now)  # type: ignore[arg-type]
    assert f"{K.PLANS}7" not in store.data
    state = store.data[f"{K.JOBS}7"]
    assert state["status"] == "queued", state
    del store.data["placements/deployment-1"]
    await sched.run_pass(store, now)  # type: ignore[arg-type]
    plan = store.data[f"{K.PLANS}7"]
    assert [w["node"] for w in plan["workers"]] == ["n2"], plan
