"""Ranking through the strategies host: A/B arms by correlation-id hash, shadow decisions recorded only, view sync."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from router.config import RoutingPolicy, StaticTarget
from router.ranking import Ranker
from router.view import PROBE_BACKOFF_MAX_S, PROBE_BACKOFF_S, SLOTS_CONFIRMATIONS, Target, TargetView


def _view(n: int) -> TargetView:
    return TargetView([StaticTarget(model="m", url=f"http://127.0.0.1:{9000 + i}", node=f"n{i}") for i in range(n)])


def test_ab_split_follows_weights_and_is_stable_per_id() -> None:
    view = _view(3)
    policy = RoutingPolicy(strategy="hybrid_mesh", ab_split={"hybrid_mesh": 3, "least_queue": 1})
    r = Ranker(view, [policy])
    arms = [r.pick_arm(policy, f"req-{i}") for i in range(4000)]
    share = arms.count("least_queue") / len(arms)
    assert 0.2 < share < 0.3
    assert r.pick_arm(policy, "same") == r.pick_arm(policy, "same")
    ranked, used = r.rank("m", view.candidates("m"), policy, "req-1")
    assert used in {"hybrid_mesh", "least_queue"}
    assert sorted(t.id for t in ranked) == sorted(t.id for t in view.candidates("m"))


def test_shadow_strategy_is_recorded_not_served() -> None:
    view = _view(4)
    policy = RoutingPolicy(strategy="baseline_rr", shadow_strategy="least_queue")
    r = Ranker(view, [policy])
    served = [r.rank("m", view.candidates("m"), policy, f"id{i}")[0][0].id for i in range(8)]
    assert len(set(served)) == 4  # round-robin served, whatever the shadow thought
    total = sum(
        REGISTRY.get_sample_value(
            "infermesh_router_shadow_decisions_total",
            {"model": "m", "strategy": "baseline_rr", "shadow": "least_queue", "agree": a},
        )
        or 0.0
        for a in ("yes", "no")
    )
    assert total >= 8


def test_least_queue_avoids_the_loaded_target_and_view_changes_sync() -> None:
    view = _view(3)
    policy = RoutingPolicy(strategy="least_queue")
    r = Ranker(view, [policy])
    first, _ = r.rank("m", view.candidates("m"), policy, "a")
    # What this router assigned counts until fresh state arrives: the next decision goes elsewhere.
    second, _ = r.rank("m", view.candidates("m"), policy, "b")
    assert first[0].id != second[0].id
    view.upsert_agent(Target(id="agent-t", model="m", url="http://127.0.0.1:9999", source="agent"))
    ranked, _ = r.rank("m", view.candidates("m"), policy, "c")
    assert "agent-t" in {t.id for t in ranked}
    view.remove_agent("agent-t")
    ranked, _ = r.rank("m", view.candidates("m"), policy, "d")
    assert "agent-t" not in {t.id for t in ranked}


def test_learned_slots_and_has_slot() -> None:
    t = Target(id="x", model="m", url="http://h")
    assert t.has_slot() and t.slots is None
    t.learn(waiting=0, running=3)
    assert t.slots is None  # not saturated: nothing learned
    t.learn(waiting=2, running=4)
    t.learn(waiting=1, running=3)
    assert t.slots == 4
    t.inflight = 4
    assert not t.has_slot()
    assert t.est_waiting() == 0
    t.inflight = 6
    assert t.est_waiting() == 2


def test_slots_learned_from_a_momentary_queue_rise_and_are_trusted_once_confirmed() -> None:
    """A request that arrives during an iteration waits for its end: a state showing 1 running and 1 waiting does
    not mean one slot. Holding at one would never let a second run, so the count would stay low for good."""
    t = Target(id="x", model="m", url="http://h", source="agent")
    t.learn(waiting=1, running=1)
    assert t.slots == 1
    t.waiting, t.inflight = 0.0, 1
    assert t.has_slot()  # the runtime says nothing waits: one more may go
    t.inflight = 2
    assert not t.has_slot()  # only one more than the learned count
    t.waiting, t.inflight = 1.0, 1
    assert not t.has_slot()  # a queue there: no probe

    t.learn(waiting=0, running=2)  # two ran at once: at least two slots
    t.learn(waiting=0, running=4)
    assert t.slots == 4
    # the runtime queues at 4 while this router has 5 there, state after state: the count is trusted
    t.inflight = 5
    for _ in range(SLOTS_CONFIRMATIONS - 1):
        t.learn(waiting=1, running=4)
    t.waiting, t.inflight = 0.0, 4
    assert not t.has_slot()  # a probe was seen waiting: paused (test_a_probe_seen_waiting_pauses_probing)
    assert t.has_slot(now=t.probe_paused_until)  # a long prefill also keeps requests waiting: not yet trusted
    t.inflight = 5
    t.learn(waiting=1, running=4)
    t.inflight = 4
    assert not t.has_slot()
    t.learn(waiting=0, running=6)  # more ran after all: learned again, probing again
    assert t.slots == 6 and t.slots_confirmed == 0
    t.inflight = 6
    assert t.has_slot()


def test_a_probe_of_a_learned_slot_count_goes_after_every_free_slot() -> None:
    """A probe queues at the runtime if the count was right: it takes only a request no free slot can start."""
    view = _view(3)
    policy = RoutingPolicy(strategy="least_queue")
    r = Ranker(view, [policy], decision_budget_us=1e9)
    targets = view.candidates("m")
    probe, free, full = targets
    for t in targets:
        t.learn(waiting=1, running=1)  # one slot learned from a momentary queue
        t.waiting, t.inflight = 0.0, 1
    free.learned_slots, free.inflight, free.waiting = 8, 6, 3.0  # a free slot, but the longest queue
    full.waiting = 2.0
    assert (probe.slot_tier(), free.slot_tier(), full.slot_tier()) == (1, 2, 0)
    ranked, _ = r.rank("m", targets, policy, "strategy")
    assert ranked[0].id == probe.id  # the strategy alone would send it to the probe
    r.finished(ranked[0].id)
    ranked, _ = r.rank("m", targets, policy, "held", usable=lambda t: t.slot_tier())
    assert [t.id for t in ranked] == [free.id, probe.id, full.id]


def test_a_probe_seen_waiting_pauses_probing() -> None:
    """A probe that waits in the runtime's queue costs its request the runtime's turnover time (seconds on a slow
    target under saturation): after a state shows one waiting, no probe goes there for a while, twice as long each
    time, until the count rises."""
    t = Target(id="x", model="m", url="http://h", source="agent")
    t.learn(waiting=1, running=4, now=0.0)  # four slots learned from a queue
    t.waiting, t.inflight = 0.0, 4
    assert t.slot_tier(now=0.0) == 1  # a probe may go
    t.inflight = 5  # it went, and the runtime shows it waiting
    t.learn(waiting=1, running=4, now=1.0)
    t.learn(waiting=1, running=4, now=1.5)  # the same wait seen again: the pause is not lengthened
    t.waiting, t.inflight = 0.0, 4  # it started; the runtime says nothing waits
    assert t.slot_tier(now=2.0) == 0  # but no probe yet
    assert t.slot_tier(now=0.99 + PROBE_BACKOFF_S) == 0 and t.slot_tier(now=1.0 + PROBE_BACKOFF_S) == 1
    t.inflight = 5
    t.learn(waiting=1, running=3, now=4.0)  # waiting again (short of KV cache it runs fewer): twice as long
    t.inflight = 4
    assert t.slot_tier(now=3.99 + 2 * PROBE_BACKOFF_S) == 0 and t.slot_tier(now=4.0 + 2 * PROBE_BACKOFF_S) == 1
    for i in range(10):
        t.inflight = 5
        t.learn(waiting=1, running=4, now=100.0 * (i + 1))
    assert t.probe_backoff_s == PROBE_BACKOFF_MAX_S
    t.inflight = 4
    t.learn(waiting=0, running=4, now=1001.0)  # no queue seen: the pause stands
    assert t.slot_tier(now=1001.0) == 0
    t.learn(waiting=0, running=5, now=1002.0)  # five ran at once: the count rises, probing again
    assert t.slots == 5
    t.inflight = 5
    assert t.slot_tier(now=1002.0) == 1


def test_a_said_slot_count_is_never_probed_past() -> None:
    t = Target(id="x", model="m", url="http://h", max_concurrency=4, waiting=0.0, inflight=4)
    assert not t.has_slot()


def test_straggler_detection_needs_evidence() -> None:
    from router.config import OutlierConfig
    from router.core.hedging import LatencyWindow
    from router.forward import Forwarder

    fw = Forwarder(None, OutlierConfig())  # type: ignore[arg-type]  # no I/O in this check
    slow = Target(id="s", model="m", url="http://s")
    fast = Target(id="f", model="m", url="http://f")
    for _ in range(8):
        slow.ttft.add(0.4)
    assert not fw.is_slow(slow, "m")  # no model-wide figure yet
    fw._model_ttft["m"] = LatencyWindow(512)
    for _ in range(40):
        fw._model_ttft["m"].add(0.05)
        fast.ttft.add(0.05)
    assert fw.is_slow(slow, "m")
    assert not fw.is_slow(fast, "m")


def test_a_straggler_is_slow_against_its_own_gpu_family() -> None:
    """In a mixed fleet an L40S answers slower than an H100 by design: it is no straggler, while a throttled H100 is."""
    from router.config import OutlierConfig
    from router.core.retry import Outcome
    from router.forward import Forwarder, Winner

    fw = Forwarder(None, OutlierConfig())  # type: ignore[arg-type]  # no I/O in this check
    h100s = [Target(id=f"h{i}", model="m", url=f"http://h{i}", gpu_type="H100") for i in range(3)]
    l40s = Target(id="l", model="m", url="http://l", gpu_type="L40S")
    mig = Target(id="g", model="m", url="http://g", gpu_type="A100", mig_profile="3g.40gb")

    def answered(t: Target, ttft: float) -> None:
        fw._won(Winner(t, None, b"", ttft, Outcome.OK), "m")  # type: ignore[arg-type]  # no response needed

    for _ in range(20):
        for h in h100s[:2]:
            answered(h, 0.05)
        answered(h100s[2], 0.4)  # throttled
        answered(l40s, 0.15)
        answered(mig, 0.3)
    assert fw.is_slow(h100s[2], "m")
    assert not fw.is_slow(h100s[0], "m")
    assert not fw.is_slow(l40s, "m") and not fw.is_slow(mig, "m")  # 3x and 6x the model's median, but alone of kind
    plain = Target(id="p", model="m", url="http://p")  # unknown family: judged against the model, as before
    for _ in range(10):
        plain.ttft.add(0.4)
    assert fw.is_slow(plain, "m")


def test_holding_at_full_batches_books_the_target_the_request_goes_to() -> None:
    """The strategy's pick (the target holding the prefix) has no free slot: the request goes to the first target
    with one, and that is where the strategy books it (prefix, queued prefill, in-flight count), not its pick."""
    from agents.signals.prefixindex import EVENTS, PrefixIndex
    from router.prefix import RequestPrefix

    view = _view(3)
    policy = RoutingPolicy(strategy="hybrid_mesh")
    r = Ranker(view, [policy], decision_budget_us=1e9)
    pi = PrefixIndex()
    targets = view.candidates("m")
    for t in targets:
        pi.ensure(t.url, EVENTS)
    pi.targets[targets[0].url].add(range(1, 121))
    r.host.strategies["hybrid_mesh"].prefix_index = pi  # type: ignore[attr-defined]
    prefix = RequestPrefix(hashes=[*range(1, 121), 999], tokens=2000)
    ranked, _ = r.rank("m", targets, policy, "free", prefix=prefix)
    assert ranked[0].id == targets[0].id  # with a slot free there, its pick
    full = targets[0].id
    prefix = RequestPrefix(hashes=[*range(1, 121), 1000], tokens=2000)
    ranked, _ = r.rank("m", targets, policy, "held", prefix=prefix, usable=lambda t: t.id != full)
    went = ranked[0]
    assert went.id != full and ranked[-1].id == full  # the full target last, the others in the strategy's order
    assert pi.match(went.url, prefix.hashes) == len(prefix.hashes)  # booked where it went ...
    assert pi.targets[went.url].backlog_tokens(16) == 16 * len(prefix.hashes)
    assert 1000 not in pi.targets[targets[0].url].pending  # ... and not on the strategy's pick
    inflight = {v.target_id: v.inflight for v in r.host.index}
    assert inflight[full] == 1 and inflight[went.id] == 1  # the first request, and this one


class _Resp:
    status = 200

    async def readany(self) -> bytes:
        return b"data: {}\n\n"

    def disarm(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Pool:
    """Refuses connections to the URLs in `down`; answers a first byte everywhere else."""

    def __init__(self, down: set[str]) -> None:
        self.down = down
        self.posted: list[str] = []

    async def post(self, url: str, path: str, body: bytes, headers: object, deadline: float) -> _Resp:
        from router.upstream import ConnectFailed

        self.posted.append(url)
        if url in self.down:
            raise ConnectFailed(f"connection refused: {url}")
        return _Resp()


def _booking_setup(strategy: str):  # type: ignore[no-untyped-def]
    from agents.signals.prefixindex import APPROX, PrefixIndex
    from router.prefix import RequestPrefix

    view = _view(3)
    policy = RoutingPolicy(strategy=strategy)
    r = Ranker(view, [policy], decision_budget_us=1e9)
    pi = PrefixIndex()
    s = r.host.strategies[strategy]
    s.prefix_index = pi  # type: ignore[attr-defined]
    if hasattr(s, "cache_index"):
        s.cache_index = pi  # type: ignore[attr-defined]
    targets = view.candidates("m")
    for t in targets:
        pi.ensure(t.url, APPROX)
    pi.targets[targets[1].url].add(range(1, 5))  # a short piece of the prefix elsewhere, kept through it all
    pi.targets[targets[0].url].add(range(1, 101))  # the strategy's pick: it holds the prefix
    prefix = RequestPrefix(hashes=[*range(1, 101), 7777], tokens=101 * 16)
    return r, policy, pi, targets, prefix


@pytest.mark.parametrize("strategy", ["cache_aware", "hybrid_mesh"])
async def test_a_retry_after_the_first_target_fails_books_the_second(strategy: str) -> None:
    """The first-ranked target refuses the connection: the retry's target gets the prefix booking and the in-flight
    count, the failed target's booking is taken back (what it held before stays), and finishing clears the count."""
    from router.config import OutlierConfig
    from router.forward import Forwarder

    r, policy, pi, targets, prefix = _booking_setup(strategy)
    ranked, _ = r.rank("m", targets, policy, f"retry-{strategy}", prefix=prefix)
    first = ranked[0]
    assert first.id == targets[0].id
    assert pi.match(first.url, prefix.hashes) == len(prefix.hashes)  # booked at the decision, 7777 included
    booking = r.booking
    assert booking is not None and booking.booked == [first.id]
    pool = _Pool({first.url})
    fw = Forwarder(pool, OutlierConfig())  # type: ignore[arg-type]
    w = await fw.open(
        ranked, "/v1/completions", lambda t: b"{}", {}, policy, "m", hedge_ok=False,
        on_attempt=lambda t, sent: r.attempt(booking, t, sent),
    )  # fmt: skip
    second = w.target
    assert w.attempts == 2 and second.id != first.id and pool.posted == [first.url, second.url]
    # booked where it was prefilled ...
    assert pi.match(second.url, prefix.hashes) == len(prefix.hashes)
    assert booking.booked == [second.id]
    # ... and no longer on the target that failed, which keeps only what it held before
    assert pi.match(first.url, prefix.hashes) == 100 and 7777 not in pi.targets[first.url].blocks
    inflight = {v.target_id: v.inflight for v in r.host.index}
    assert inflight[first.id] == 0 and inflight[second.id] == 1
    r.settle(booking)
    assert {v.target_id: v.inflight for v in r.host.index}[second.id] == 0
    assert pi.match(second.url, prefix.hashes) == len(prefix.hashes)  # served there: stays booked


async def test_a_target_skipped_before_any_attempt_is_not_left_booked() -> None:
    """The request never reaches the decision's target (an outlier skip, another cell serving it): the first attempt
    sent releases that booking; a request that finishes without any attempt leaves none either."""
    from router.prefix import RequestPrefix

    r, policy, pi, targets, prefix = _booking_setup("cache_aware")
    ranked, _ = r.rank("m", targets, policy, "skipped", prefix=prefix)
    booking = r.booking
    assert booking is not None
    elsewhere = ranked[2]
    r.attempt(booking, elsewhere, True)
    assert booking.booked == [elsewhere.id]
    assert 7777 not in pi.targets[ranked[0].url].blocks and pi.match(elsewhere.url, prefix.hashes) == 101
    r.settle(booking)
    assert all(v.inflight == 0 for v in r.host.index)
    other = RequestPrefix(hashes=[*range(1, 101), 8888], tokens=101 * 16)
    ranked, _ = r.rank("m", targets, policy, "never-sent", prefix=other)
    booking = r.booking
    assert booking is not None and 8888 in pi.targets[ranked[0].url].blocks
    r.settle(booking)
    assert all(v.inflight == 0 for v in r.host.index)
    assert all(8888 not in bs.blocks for bs in pi.targets.values())


async def test_a_hedge_books_its_target_and_the_primary_keeps_its_booking() -> None:
    """A hedge is booked where it is sent; the primary it beat keeps its booking (it was sent and prefilled as far
    as it got: the runtime keeps an aborted request's computed blocks cached); finishing clears both counts."""
    import asyncio

    from router.config import OutlierConfig
    from router.forward import Forwarder

    r, _, pi, targets, prefix = _booking_setup("cache_aware")
    policy = RoutingPolicy(
        strategy="cache_aware", hedging={"enabled": True, "default_delay_ms": 20, "budget_ratio": 1.0}
    )
    ranked, _ = r.rank("m", targets, policy, "hedged", prefix=prefix)
    booking = r.booking
    assert booking is not None

    class Slow(_Pool):
        async def post(self, url: str, path: str, body: bytes, headers: object, deadline: float) -> _Resp:
            if url == ranked[0].url:
                await asyncio.sleep(0.5)
            return await super().post(url, path, body, headers, deadline)

    fw = Forwarder(Slow(set()), OutlierConfig())  # type: ignore[arg-type]
    w = await fw.open(
        ranked, "/v1/completions", lambda t: b"{}", {}, policy, "m", hedge_ok=True,
        on_attempt=lambda t, sent: r.attempt(booking, t, sent),
    )  # fmt: skip
    assert w.hedged and w.hedge_won and w.target.id != ranked[0].id
    assert booking.booked == [ranked[0].id, w.target.id]
    assert pi.match(w.target.url, prefix.hashes) == pi.match(ranked[0].url, prefix.hashes) == len(prefix.hashes)
    r.settle(booking)
    assert all(v.inflight == 0 for v in r.host.index)
