"""Transmit-limited broadcast queue: piggybacked gossip retransmitted about λ·log N times, newest facts first."""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.gossip.codec import encode_message
from agents.gossip.messages import Message


@dataclass(slots=True)
class _Item:
    key: tuple[str, str]
    msg: Message
    size: int
    transmits: int
    order: int


class BroadcastQueue:
    """Broadcasts keyed by subject: a newer fact about a node replaces an older one still in flight."""

    def __init__(self, retransmit_mult: int, max_items: int = 4096) -> None:
        self.retransmit_mult = retransmit_mult
        self.max_items = max_items
        self._items: dict[tuple[str, str], _Item] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._items)

    def retransmit_limit(self, n_nodes: int) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log10(n_nodes + 1)))

    def queue(self, key: tuple[str, str], msg: Message, boost: int = 0) -> None:
        """`boost` extra transmissions (they also go first): for facts whose loss is costly, like refutations."""
        self._order += 1
        self._items[key] = _Item(key, msg, len(encode_message(msg)), -boost, self._order)
        if len(self._items) > self.max_items:
            # Drop the most retransmitted (then oldest) item: it has had the most chances to spread already.
            victim = max(self._items.values(), key=lambda it: (it.transmits, -it.order))
            del self._items[victim.key]

    def take(self, budget: int, n_nodes: int) -> tuple[list[Message], int]:
        """Messages fitting `budget` bytes, fewest-transmitted first; returns them and their encoded size."""
        if not self._items or budget <= 0:
            return [], 0
        limit = self.retransmit_limit(n_nodes)
        out: list[Message] = []
        used = 0
        for it in sorted(self._items.values(), key=lambda it: (it.transmits, -it.order)):
            if used + it.size > budget:
                continue
            out.append(it.msg)
            used += it.size
            it.transmits += 1
            if it.transmits >= limit:
                del self._items[it.key]
            if len(out) >= 64:
                break
        return out, used
