"""The replicated state machine: revisions, put/cas/delete, client sessions (retries apply once), watch history."""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from .schema import StoreInputError, check_key, check_value


class Compacted(Exception):
    """A watch asked for revisions older than the retained event history."""


@dataclass(slots=True, frozen=True)
class KeyValue:
    key: str
    value: str
    create_rev: int
    mod_rev: int
    version: int


@dataclass(slots=True, frozen=True)
class Event:
    revision: int
    type: str  # "put" | "delete"
    key: str
    value: str
    prev_value: str | None


def encode_command(op: str, key: str, *, value: str | None = None, expected: str | None = None,
                   expect_absent: bool = False, client: int = 0, seq: int = 0) -> bytes:  # fmt: skip
    cmd: dict[str, Any] = {"op": op, "k": key}
    if value is not None:
        cmd["v"] = value
    if op == "cas":
        cmd["e"] = None if expect_absent else expected
    if client:
        cmd["c"] = client
        cmd["s"] = seq
    return json.dumps(cmd, separators=(",", ":")).encode()


class PolicyStore:
    """Deterministic: the same commands in the same order give the same state and results on every member."""

    def __init__(self, history: int = 10_000, max_sessions: int = 10_000) -> None:
        self.data: dict[str, KeyValue] = {}
        self.revision = 0
        self.compacted_rev = 0  # watches from at or below this revision get Compacted
        self.events: deque[Event] = deque(maxlen=history)
        self.sessions: OrderedDict[int, tuple[int, dict[str, Any]]] = OrderedDict()
        self.max_sessions = max_sessions
        self.last_request: tuple[int, int] = (0, 0)  # (client, seq) of the last applied command

    # -------------------------------------------------------------- apply
    def apply(self, data: bytes) -> dict[str, Any]:
        """Apply one committed command; returns its result (also cached for the client's retries)."""
        self.last_request = (0, 0)
        if not data:
            return {"ok": True, "rev": self.revision}  # leader's no-op at the start of a term
        try:
            cmd = json.loads(data)
            op = cmd["op"]
            client = int(cmd.get("c", 0))
            seq = int(cmd.get("s", 0))
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": f"malformed command: {exc}", "rev": self.revision}
        self.last_request = (client, seq)
        if client:
            last = self.sessions.get(client)
            if last is not None and seq <= last[0]:
                if seq == last[0]:
                    return last[1]  # a retried proposal: answer as before, apply nothing
                return {"ok": False, "error": f"sequence {seq} of client {client} is older than {last[0]}"}
        result = self._execute(op, cmd)
        if client:
            self.sessions[client] = (seq, result)
            self.sessions.move_to_end(client)
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
        return result

    def _execute(self, op: str, cmd: dict[str, Any]) -> dict[str, Any]:
        key = cmd.get("k")
        try:
            if not isinstance(key, str):
                raise StoreInputError("command has no key")
            check_key(key)
            cur = self.data.get(key)
            if op == "put":
                return self._put(key, check_value(key, str(cmd["v"])), cur)
            if op == "cas":
                expected = cmd.get("e")
                current = cur.value if cur else None
                if expected != current:
                    return {"ok": True, "rev": self.revision, "value": current, "succeeded": False}
                return self._put(key, check_value(key, str(cmd["v"])), cur) | {"succeeded": True}
            if op == "del":
                if cur is None:
                    return {"ok": True, "rev": self.revision, "deleted": 0}
                self.revision += 1
                del self.data[key]
                self.events.append(Event(self.revision, "delete", key, "", cur.value))
                return {"ok": True, "rev": self.revision, "deleted": 1, "prev": cur.value}
        except (StoreInputError, KeyError) as exc:
            return {"ok": False, "error": str(exc), "rev": self.revision}
        return {"ok": False, "error": f"unknown operation {op!r}", "rev": self.revision}

    def _put(self, key: str, value: str, cur: KeyValue | None) -> dict[str, Any]:
        self.revision += 1
        rev = self.revision
        kv = KeyValue(key, value, cur.create_rev if cur else rev, rev, (cur.version if cur else 0) + 1)
        self.data[key] = kv
        self.events.append(Event(rev, "put", key, value, cur.value if cur else None))
        return {"ok": True, "rev": rev, "prev": cur.value if cur else None}

    # -------------------------------------------------------------- reads
    def get(self, key: str) -> KeyValue | None:
        return self.data.get(key)

    def range(self, prefix: str) -> list[KeyValue]:
        return [self.data[k] for k in sorted(self.data) if k.startswith(prefix)]

    def events_since(self, revision: int, prefix: str) -> list[Event]:
        """Events with revision >= `revision` under `prefix` (etcd's watch start revision)."""
        oldest = self.events[0].revision if self.events else self.revision + 1
        floor = max(self.compacted_rev + 1, oldest if len(self.events) == self.events.maxlen else 1)
        if revision < floor and revision <= self.revision:
            raise Compacted(f"revision {revision} is compacted; the oldest watchable revision is {floor}")
        return [e for e in self.events if e.revision >= revision and e.key.startswith(prefix)]

    # -------------------------------------------------------------- snapshots
    def snapshot(self) -> bytes:
        return json.dumps(
            {
                "rev": self.revision,
                "data": [[kv.key, kv.value, kv.create_rev, kv.mod_rev, kv.version] for kv in self.data.values()],
                "sessions": [[c, s, r] for c, (s, r) in self.sessions.items()],
            },
            separators=(",", ":"),
        ).encode()

    def restore(self, blob: bytes) -> None:
        if not blob:
            self.__init__(self.events.maxlen or 10_000, self.max_sessions)  # type: ignore[misc]
            return
        obj = json.loads(blob)
        self.revision = int(obj["rev"])
        self.data = {k: KeyValue(k, v, c, m, ver) for k, v, c, m, ver in obj["data"]}
        self.sessions = OrderedDict((int(c), (int(s), r)) for c, s, r in obj["sessions"])
        self.events.clear()
        self.compacted_rev = self.revision  # history before a snapshot is not kept
