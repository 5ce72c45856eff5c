"""The in-memory Raft log: a compacted prefix (snapshot), entries after it, and the stable/committed/applied marks."""

from __future__ import annotations

from .types import Entry, Snapshot


class LogInvariantError(AssertionError):
    """The log was asked to do something that would break Raft safety (e.g. truncate committed entries)."""


class RaftLog:
    """Entries after the snapshot are kept in memory; `stable` tracks how far they are durably persisted."""

    def __init__(self, snapshot_index: int = 0, snapshot_term: int = 0, entries: list[Entry] | None = None) -> None:
        self.offset = snapshot_index  # index of the last entry folded into the snapshot
        self.offset_term = snapshot_term
        self.entries: list[Entry] = list(entries or [])
        self.committed = snapshot_index
        self.applied = snapshot_index
        self.stable = self.last_index()  # entries handed in at construction come from disk
        self.pending_snapshot: Snapshot | None = None  # received from a leader, not yet persisted/applied
        for i, e in enumerate(self.entries):
            if e.index != snapshot_index + 1 + i:
                raise LogInvariantError(f"log entries are not contiguous at position {i}: index {e.index}")

    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """Term of the entry at `index`, or None when it is compacted away or beyond the end."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset or index > self.last_index():
            return None
        return self.entries[index - self.offset - 1].term

    def match_term(self, index: int, term: int) -> bool:
        t = self.term(index)
        return t is not None and t == term

    def is_up_to_date(self, index: int, term: int) -> bool:
        lt = self.last_term()
        return term > lt or (term == lt and index >= self.last_index())

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (lo must be above the snapshot)."""
        if lo <= self.offset:
            raise LogInvariantError(f"slice({lo}, {hi}) reaches into the compacted prefix ending at {self.offset}")
        return self.entries[lo - self.offset - 1 : hi - self.offset - 1]

    def entries_from(self, lo: int, max_bytes: int) -> list[Entry]:
        """Entries from `lo`, at least one, stopping once `max_bytes` of payload is reached (batching)."""
        out: list[Entry] = []
        size = 0
        for e in self.entries[lo - self.offset - 1 :]:
            size += len(e.data) + 16
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry that is new or disagrees with the log; 0 when all are already present."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= `index` whose term is <= `term` (lets a leader skip a whole term on rejection)."""
        index = min(index, self.last_index())
        while index > self.offset:
            t = self.term(index)
            if t is None or t <= term:
                break
            index -= 1
        return index

    def maybe_append(self, index: int, log_term: int, committed: int, ents: list[Entry]) -> int | None:
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise LogInvariantError(f"entry {ci} conflicts with committed entry (committed={self.committed})")
            self.append(ents[ci - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise LogInvariantError(f"append after {after} would overwrite committed entries up to {self.committed}")
        if after < self.offset:
            raise LogInvariantError(f"append after {after} reaches into the snapshot ending at {self.offset}")
        del self.entries[after - self.offset :]
        self.entries.extend(ents)
        if self.stable > after:
            self.stable = after  # the overwritten tail must be persisted again
        return self.last_index()

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise LogInvariantError(f"commit {index} is beyond the last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def unstable_entries(self) -> list[Entry]:
        if self.stable >= self.last_index():
            return []
        return self.entries[self.stable - self.offset :]

    def stable_to(self, index: int, term: int) -> None:
        # the term check ignores an acknowledgement for entries that were overwritten while being persisted
        if index > self.stable and self.match_term(index, term):
            self.stable = index

    def next_committed(self) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        if self.committed < lo:
            return []
        return self.slice(lo, self.committed + 1)

    def applied_to(self, index: int) -> None:
        if index > self.committed:
            raise LogInvariantError(f"applied {index} beyond committed {self.committed}")
        self.applied = max(self.applied, index)

    def restore(self, snap: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.offset = snap.index
        self.offset_term = snap.term
        self.entries = []
        self.committed = snap.index
        self.stable = snap.index
        self.pending_snapshot = snap

    def compact(self, index: int) -> None:
        """Drop entries up to `index` (already captured by a snapshot)."""
        if index <= self.offset:
            return
        if index > self.applied:
            raise LogInvariantError(f"cannot compact to {index}: only {self.applied} applied")
        t = self.term(index)
        assert t is not None
        self.entries = self.entries[index - self.offset :]
        self.offset = index
        self.offset_term = t
