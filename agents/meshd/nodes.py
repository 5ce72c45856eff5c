"""Directory of known nodes: the local one (owned by the agent) and remote ones reported by membership."""

from __future__ import annotations

import time
from collections.abc import Callable

from agents.proto.infermesh.v1 import control_pb2


class NodeDirectory:
    def __init__(self, local: control_pb2.NodeInfo, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        local.local = True
        self.local = local
        self._remote: dict[str, control_pb2.NodeInfo] = {}

    def upsert(self, info: control_pb2.NodeInfo) -> None:
        """Record a remote node (the gossip component calls this as membership changes)."""
        if info.node_id == self.local.node_id:
            return
        copy = control_pb2.NodeInfo()
        copy.CopyFrom(info)
        copy.local = False
        if not copy.updated_unix_ms:
            copy.updated_unix_ms = int(self.clock() * 1000)
        self._remote[info.node_id] = copy

    def remove(self, node_id: str) -> None:
        self._remote.pop(node_id, None)

    def get(self, node_id: str) -> control_pb2.NodeInfo | None:
        if not node_id or node_id == self.local.node_id:
            return self.local
        return self._remote.get(node_id)

    def all(self) -> list[control_pb2.NodeInfo]:
        return [self.local, *sorted(self._remote.values(), key=lambda n: n.node_id)]
