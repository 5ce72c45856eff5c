"""Win rates from real outcomes (agents/strategies/outcomes.py): A/B arms against the live strategy's outcomes,
shadows by what their pick really did, per metric (overall, ttft, latency, errors)."""

from __future__ import annotations

import pytest

from agents.strategies.outcomes import AB, SHADOW, Outcome, OutcomeBook, Trial, Window


def ok(ttft: float, latency: float | None = None) -> Outcome:
    return Outcome(True, ttft, latency if latency is not None else ttft * 2)


ERR = Outcome(False, None, 0.01)


def test_window_beaten_by_counts_ties_half_and_errors_first() -> None:
    w = Window(4)
    for t in (0.1, 0.2, 0.3):
        w.add(ok(t))
    w.add(ERR)
    got = w.beaten_by(ok(0.2))
    # beats the error and 0.3, ties 0.2: (1 + 1 + 0.5) / 4 overall; among answers 1.5 / 3
    assert got["overall"] == pytest.approx(2.5 / 4)
    assert got["ttft"] == pytest.approx(1.5 / 3)
    assert got["errors"] == pytest.approx((1 + 0.5 * 3) / 4)
    err = w.beaten_by(ERR)
    assert err == {"errors": pytest.approx(0.5 / 4), "overall": pytest.approx(0.5 / 4)}
    # the window slides: the oldest (0.1) leaves, so the same answer now beats more
    w.add(ok(0.5))
    assert w.beaten_by(ok(0.2))["ttft"] == pytest.approx(2.5 / 3)
    assert len(w) == 4 and w.errors == 1


def test_ab_arm_that_avoids_the_slow_target_wins() -> None:
    book = OutcomeBook(window=64)
    live = Trial("m", live="baseline_rr", arm="baseline_rr")
    arm = Trial("m", live="baseline_rr", arm="pinned")
    for i in range(40):
        book.record(live, ok(0.3 if i % 2 else 0.01))  # half of live's requests hit a slow target
        book.record(arm, ok(0.01))
    (ch,) = book.of_model("m")
    assert (ch.strategy, ch.mode, ch.live) == ("pinned", AB, "baseline_rr")
    assert ch.win_rate("ttft") == pytest.approx(0.75, abs=0.05)
    assert ch.win_rate("errors") == pytest.approx(0.5)
    # an arm that fails loses on errors and overall
    bad = Trial("m", live="baseline_rr", arm="broken")
    for _ in range(10):
        book.record(bad, ERR)
    broken = next(c for c in book.of_model("m") if c.strategy == "broken")
    assert broken.win_rate("errors") == pytest.approx(0.0) and broken.win_rate("overall") == pytest.approx(0.0)
    assert broken.win_rate("ttft") is None  # no answer to compare
    # the live strategy is not its own challenger
    assert {c.strategy for c in book.of_model("m")} == {"pinned", "broken"}


def test_shadow_judged_by_what_its_pick_really_did() -> None:
    book = OutcomeBook()
    # the fast target has a history of fast answers, the slow one of slow answers
    for _ in range(8):
        book.record(Trial("m", "rr", "rr", served="fast"), ok(0.01))
        book.record(Trial("m", "rr", "rr", served="slow"), ok(0.4))
    # live picked slow, the shadow fast: the shadow wins; live picked fast, the shadow too: agreement
    book.record(Trial("m", "rr", "rr", served="slow", shadow="pinned", shadow_pick="fast"), ok(0.4))
    book.record(Trial("m", "rr", "rr", served="fast", shadow="pinned", shadow_pick="fast"), ok(0.01))
    # the shadow picked a target that never served: nothing to judge by
    book.record(Trial("m", "rr", "rr", served="fast", shadow="pinned", shadow_pick="new"), ok(0.01))
    (ch,) = book.of_model("m")
    assert ch.mode == SHADOW and ch.live == "rr"
    assert (ch.compared, ch.agreed, ch.unscored) == (1, 1, 1)
    assert ch.win_rate() == pytest.approx(1.0) and ch.win_rate("latency") == pytest.approx(1.0)
    d = ch.describe()
    assert d["agree_rate"] == pytest.approx(1 / 3, abs=1e-4) and d["win_rates"]["ttft"] == 1.0
    # a shadow picking the slow target where live served fast loses
    book.record(Trial("m", "rr", "rr", served="fast", shadow="pinned", shadow_pick="slow"), ok(0.01))
    assert ch.win_rate() == pytest.approx(0.5)


def test_a_new_live_strategy_starts_a_new_comparison() -> None:
    book = OutcomeBook()
    book.record(Trial("m", "a", "a"), ok(0.2))
    book.record(Trial("m", "a", "b"), ok(0.1))
    assert next(book.of_model("m")).compared == 1
    book.record(Trial("m", "c", "c"), ok(0.2))
    book.record(Trial("m", "c", "b"), ok(0.1))
    (ch,) = book.of_model("m")
    assert ch.live == "c" and ch.compared == 1
    assert book.describe("m")[0]["served"] == 2
