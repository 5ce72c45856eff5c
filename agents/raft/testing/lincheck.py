"""A per-key linearizability checker for register histories (Wing & Gong search with Lowe's memoisation, as Porcupine).

Operations on different keys are independent, so the history is split per key and each part searched separately.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

UNKNOWN = object()  # the outcome of an operation whose reply was never seen (timeout, crash)


@dataclass(slots=True)
class Op:
    """One client operation. `ret` is math.inf when the client never saw a reply."""

    client: int
    key: str
    kind: str  # "put" | "get" | "cas"
    call: float
    ret: float
    arg: Any = None  # put: value; cas: (expected, new)
    out: Any = UNKNOWN  # get: value read; cas: bool succeeded; put: None


def _step(state: Any, op: Op) -> tuple[bool, Any]:
    if op.kind == "put":
        return True, op.arg
    if op.kind == "get":
        return (op.out is UNKNOWN or op.out == state), state
    if op.kind == "cas":
        expected, new = op.arg
        succeeded = state == expected
        if op.out is not UNKNOWN and op.out != succeeded:
            return False, state
        return True, (new if succeeded else state)
    raise ValueError(f"unknown operation kind {op.kind!r}")


class _Node:
    __slots__ = ("id", "is_call", "match", "next", "op", "prev")

    def __init__(self, op: Op | None, id_: int, is_call: bool) -> None:
        self.op = op
        self.id = id_
        self.is_call = is_call
        self.match: _Node | None = None
        self.prev: _Node | None = None
        self.next: _Node | None = None


def check_register(ops: list[Op], initial: Any = None, budget: int = 2_000_000) -> bool:
    """True when `ops` (one key) has a linearization. Raises RuntimeError when the search exceeds `budget` steps."""
    # gets with no reply constrain nothing
    ops = [o for o in ops if not (o.kind == "get" and o.out is UNKNOWN)]
    if not ops:
        return True
    events: list[tuple[float, int, int]] = []
    for i, o in enumerate(ops):
        if o.ret < o.call:
            raise ValueError(f"operation {o} returns before it is called")
        events.append((o.call, 0, i))
        events.append((o.ret, 1, i))
    events.sort()  # at equal times calls sort first: such operations overlap
    head = _Node(None, -1, False)
    prev = head
    calls: dict[int, _Node] = {}
    for _, kind, i in events:
        n = _Node(ops[i], i, kind == 0)
        if kind == 0:
            calls[i] = n
        else:
            calls[i].match = n
        prev.next = n
        n.prev = prev
        prev = n

    def lift(c: _Node) -> None:
        assert c.prev is not None and c.match is not None and c.match.prev is not None
        c.prev.next = c.next
        if c.next:
            c.next.prev = c.prev
        m = c.match
        m.prev.next = m.next  # type: ignore[union-attr]
        if m.next:
            m.next.prev = m.prev

    def unlift(c: _Node) -> None:
        m = c.match
        assert m is not None and m.prev is not None and c.prev is not None
        m.prev.next = m
        if m.next:
            m.next.prev = m
        c.prev.next = c
        if c.next:
            c.next.prev = c

    state = initial
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[_Node, Any]] = []
    entry = head.next
    steps = 0
    while head.next is not None:
        steps += 1
        if steps > budget:
            raise RuntimeError(f"linearizability search gave up after {budget} steps")
        assert entry is not None
        if entry.is_call:
            assert entry.op is not None
            ok, new_state = _step(state, entry.op)
            if ok:
                new_lin = linearized | (1 << entry.id)
                key = (new_lin, _hashable(new_state))
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized = new_lin
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # reached a return whose call is not linearized yet: undo the last choice
            if not stack:
                return False
            top, state = stack.pop()
            linearized &= ~(1 << top.id)
            unlift(top)
            entry = top.next
    return True


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


@dataclass(slots=True)
class CheckResult:
    ok: bool
    bad_keys: list[str]
    ops: int

    def __bool__(self) -> bool:
        return self.ok


def check_history(ops: list[Op], initial: Any = None) -> CheckResult:
    """Check a whole multi-key history: linearizable iff every key's sub-history is."""
    per_key: dict[str, list[Op]] = defaultdict(list)
    for o in ops:
        per_key[o.key].append(o)
    bad = [k for k, kops in sorted(per_key.items()) if not check_register(kops, initial)]
    return CheckResult(not bad, bad, len(ops))


INF = math.inf
