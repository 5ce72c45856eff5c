"""Weighted deficit round robin over per-tenant queues (router/core/fairshare.py)."""

from __future__ import annotations

from router.core.fairshare import FairQueue, SlotShare


def test_a_flooding_tenant_waits_behind_its_own_requests() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(50):
        q.push("flood", f"f{i}")
    q.push("calm", "c0")
    order = [q.pop() for _ in range(4)]
    assert "c0" in order[:2]  # served at its first turn, not after fifty
    q.push("calm", "c1")
    assert "c1" in [q.pop(), q.pop()]


def test_weights_share_slots_in_proportion() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(300):
        q.push("big", f"b{i}", weight=30.0)
        q.push("small", f"s{i}", weight=10.0)
    served = [q.pop() for _ in range(200)]
    big = sum(1 for s in served if s and s.startswith("b"))
    assert 145 <= big <= 155  # 3:1


def test_unweighted_tenants_weigh_as_much_as_the_heaviest_and_everything_drains() -> None:
    q: FairQueue[int] = FairQueue()
    for i in range(10):
        q.push("a", i, weight=5.0)
        q.push("b", 100 + i)
    got = [q.pop() for _ in range(20)]
    assert sorted(x for x in got if x is not None) == [*range(10), *range(100, 110)]
    assert q.pop() is None and len(q) == 0


def test_requeued_at_the_front_keeps_its_turn_and_removal_and_eviction() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("a", "a0")
    q.push("a", "a1")
    q.push("b", "b0")
    first = q.pop()
    assert first == "a0"
    q.push("a", "a0", front=True)  # woken for a slot it could not use: before a1 again
    assert q.remove("b", "b0") and not q.remove("b", "b0")
    assert [q.pop(), q.pop()] == ["a0", "a1"]
    q.push("b", "b1")
    for i in range(5):
        q.push("a", f"x{i}")
    assert q.victim("b") == "a" and q.victim("a") == "a"
    assert q.pop_newest("a") == "x4" and len(q) == 5


def test_a_free_slot_is_kept_for_a_light_tenant_while_it_is_due() -> None:
    share = SlotShare(horizon_s=5.0)
    for now in (0.0, 0.5, 1.0):  # the light tenant comes every 0.5 s
        share.arrived("light", now)
    share.arrived("flood", 1.0)
    for _ in range(3):
        share.started("flood")
    assert share.reserved("flood", 4, now=1.2) == 1  # the flood may not take the last free slot of four
    assert share.reserved("light", 4, now=1.2) == 0  # a tenant with nothing in service is never held back
    assert share.reserved("flood", 1, now=1.2) == 0  # one slot in all: nothing is kept
    share.started("light")
    assert share.reserved("flood", 4, now=1.2) == 0  # it is served: nothing more is kept for it
    share.done("light")
    assert share.reserved("flood", 4, now=1.9) == 1
    assert share.reserved("flood", 4, now=2.1) == 0  # not due any more: twice its usual gap has passed
    for name in ("a", "b", "c"):
        share.arrived(name, 2.0)
        share.arrived(name, 2.2)
    assert share.reserved("flood", 4, now=2.3) == 3  # three light tenants: the flood keeps its max-min share, 1
    assert share.reserved("flood", 2, now=2.3) == 1
    share.arrived("flood", 8.0)
    assert share.reserved("flood", 4, now=8.0) == 0 and set(share._last) == {"flood"}  # the silent are forgotten
    for _ in range(3):
        share.done("flood")
    assert share.serving == {}


async def test_the_router_serves_a_calm_tenant_ahead_of_a_floods_backlog() -> None:
    """Held requests of two tenants of one class: freed slots alternate between them, and when the router's queue is
    full the flooding tenant's newest request gives way (429) instead of the calm tenant's."""
    import asyncio

    from router.config import parse_config
    from router.service import Refusal, RouterService, Tenant
    from router.upstream import UpstreamPool

    cfg = parse_config(
        {
            "agent": {"address": None},
            "targets": [{"model": "m", "url": "http://127.0.0.1:9", "max_concurrency": 1}],
            "default_policy": {"admission": {"max_queue_per_target": 6}},
        },
        env={},
    )
    svc = RouterService(cfg, UpstreamPool(limit=2, connect_timeout_s=1.0))
    (target,) = svc.view.all("m")
    target.inflight = 1  # the only batch slot is taken
    order: list[str] = []

    async def one(name: str) -> None:
        tenant = Tenant(name.rstrip("0123456789"), "standard")
        try:
            ticket = await svc.admit(api="chat", model="m", tenant=tenant, priority="standard",
                                     prompt_chars=4, max_tokens=4, corr_id=name)  # fmt: skip
        except Refusal as r:
            order.append(f"{name}:{r.status}")
            return
        order.append(name)
        target.inflight = 1  # it took the slot
        svc.inflight -= 1
        del ticket

    flood = [asyncio.create_task(one(f"flood{i}")) for i in range(6)]
    await asyncio.sleep(0.05)
    calm = asyncio.create_task(one("calm"))  # the queue is full: the flood's newest gives way
    await asyncio.sleep(0.05)
    assert order == ["flood5:429"]
    for _ in range(3):
        target.inflight = 0
        svc.slot_freed("m")
        await asyncio.sleep(0.01)
    assert "calm" in order[1:3] and calm.done()
    for t in flood:
        t.cancel()
    await asyncio.gather(*flood, return_exceptions=True)
