"""The linearizability checker itself: known-good and known-bad register histories."""

from __future__ import annotations

import random

import pytest

from agents.raft.testing.lincheck import INF, UNKNOWN, Op, check_history, check_register


def put(c: int, call: float, ret: float, v: str, key: str = "k") -> Op:
    return Op(c, key, "put", call, ret, v, None)


def get(c: int, call: float, ret: float, v: str | None, key: str = "k") -> Op:
    return Op(c, key, "get", call, ret, None, v)


def cas(c: int, call: float, ret: float, exp: str | None, new: str, ok: object, key: str = "k") -> Op:
    return Op(c, key, "cas", call, ret, (exp, new), ok)


def test_sequential_history_is_linearizable() -> None:
    assert check_register([put(1, 0, 1, "a"), get(1, 2, 3, "a"), put(1, 4, 5, "b"), get(2, 6, 7, "b")])


def test_stale_read_after_completed_write_is_not_linearizable() -> None:
    assert not check_register([put(1, 0, 1, "a"), put(1, 2, 3, "b"), get(2, 4, 5, "a")])


def test_concurrent_read_may_see_old_or_new_value() -> None:
    assert check_register([put(1, 0, 1, "a"), put(1, 2, 10, "b"), get(2, 3, 4, "a"), get(3, 5, 6, "b")])
    # but once a read saw the new value, a later read may not go back
    assert not check_register([put(1, 0, 1, "a"), put(1, 2, 10, "b"), get(2, 3, 4, "b"), get(3, 5, 6, "a")])


def test_read_of_never_written_value_is_not_linearizable() -> None:
    assert not check_register([put(1, 0, 1, "a"), get(2, 2, 3, "zzz")])
    assert check_register([get(2, 0, 1, None)])


def test_two_successful_cas_from_same_expected_value_is_not_linearizable() -> None:
    h = [put(1, 0, 1, "a"), cas(2, 2, 5, "a", "b", True), cas(3, 2, 5, "a", "c", True)]
    assert not check_register(h)
    h[2] = cas(3, 2, 5, "a", "c", False)
    assert check_register(h)


def test_lost_acknowledged_write_is_detected() -> None:
    assert not check_register([put(1, 0, 1, "a"), put(2, 2, 3, "b"), get(3, 10, 11, None)])


def test_unacknowledged_write_may_or_may_not_take_effect() -> None:
    pending = put(1, 0, INF, "x")
    assert check_register([pending, get(2, 5, 6, None), get(2, 7, 8, "x")])
    assert check_register([put(1, 0, INF, "x"), get(2, 5, 6, None)])
    # ...but once observed it cannot vanish again
    assert not check_register([put(1, 0, INF, "x"), get(2, 5, 6, "x"), get(2, 7, 8, None)])


def test_unknown_cas_outcome_is_searched_both_ways() -> None:
    assert check_register([put(1, 0, 1, "a"), cas(2, 2, INF, "a", "b", UNKNOWN), get(3, 10, 11, "b")])
    assert check_register([put(1, 0, 1, "a"), cas(2, 2, INF, "a", "b", UNKNOWN), get(3, 10, 11, "a")])


def test_keys_are_checked_independently() -> None:
    ok = [put(1, 0, 1, "a", "x"), put(1, 0, 1, "b", "y"), get(2, 2, 3, "a", "x"), get(2, 2, 3, "b", "y")]
    assert check_history(ok)
    res = check_history([*ok, get(3, 4, 5, "a", "y")])
    assert not res and res.bad_keys == ["y"]


def test_rejects_operation_returning_before_call() -> None:
    with pytest.raises(ValueError, match="returns before"):
        check_register([put(1, 5, 1, "a")])


def test_random_sequential_histories_pass_and_corrupted_ones_fail() -> None:
    rng = random.Random(7)
    for _ in range(200):
        state: str | None = None
        ops: list[Op] = []
        t = 0.0
        for i in range(12):
            c = rng.randrange(3)
            if rng.random() < 0.5:
                state = f"v{i}"
                ops.append(put(c, t, t + 1, state))
            else:
                ops.append(get(c, t, t + 1, state))
            t += 2
        assert check_register(ops)
        reads = [o for o in ops if o.kind == "get"]
        if reads:
            victim = rng.choice(reads)
            victim.out = "never-written"
            assert not check_register(ops)
