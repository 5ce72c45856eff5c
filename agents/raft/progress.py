"""Leader-side view of each follower: match/next indices, probe/replicate/snapshot state, in-flight window."""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0  # one append at a time until we find where the follower's log matches
    REPLICATE = 1  # optimistic pipelining of appends, bounded by the in-flight window
    SNAPSHOT = 2  # a snapshot is on its way; appends wait


class Progress:
    __slots__ = ("inflight", "is_learner", "match", "max_inflight", "next", "paused", "pending_snapshot",
                 "recent_active", "state")  # fmt: skip

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.paused = False
        self.pending_snapshot = 0
        self.recent_active = False
        self.is_learner = is_learner
        self.max_inflight = max_inflight
        self.inflight: deque[int] = deque()  # last index of each in-flight append, oldest first

    def reset_state(self, state: ProgressState) -> None:
        self.paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflight.clear()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self.reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self.reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self.reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self.reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.paused = False
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale rejection
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # stale rejection
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.paused = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.paused
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def sent(self, last: int) -> None:
        """Record an append ending at `last` was sent."""
        if self.state == ProgressState.REPLICATE:
            self.next = last + 1
            self.inflight.append(last)
        elif self.state == ProgressState.PROBE:
            self.paused = True

    def free_to(self, index: int) -> None:
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
