"""Taking back a prefix booking whose request was not prefilled where it was booked.

A cache-aware strategy books a request's prefix on its target as the request is sent (`Strategy.on_routed`): an
approximate target is assumed to hold its blocks from then on, an event-fed one counts them pending (and routed
recently) until its KV events report them stored. When the request is not prefilled there after all (its attempt
failed before a first byte and a retry went elsewhere, the forwarder skipped the target as an outlier, another cell
served it), the blocks the booking added are taken back, so later requests sharing the prefix are not sent where it
is not cached. Blocks the target held before the booking stay; an event-fed target's stored blocks (the events'
truth) are never touched.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from agents.signals.prefixindex import APPROX, PrefixIndex

MAX_BOOKINGS = 4096  # bookings remembered for a possible withdrawal; a request's fate is known within seconds


class PrefixBookings:
    """(request id, target endpoint) -> how many of the request's leading blocks the target held before the
    booking (bounded, oldest dropped)."""

    __slots__ = ("_held", "cap")

    def __init__(self, cap: int = MAX_BOOKINGS) -> None:
        self._held: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.cap = cap

    def __len__(self) -> int:
        return len(self._held)

    def note(self, request_id: str, endpoint: str, held_blocks: int) -> None:
        if not request_id:
            return  # nothing to find it by later
        held = self._held
        held[(request_id, endpoint)] = held_blocks
        if len(held) > self.cap:
            held.popitem(last=False)

    def withdraw(self, index: PrefixIndex, request_id: str, endpoint: str, hashes: Sequence[int]) -> int:
        """Take back the blocks the booking of `request_id` on `endpoint` added; returns how many."""
        held = self._held.pop((request_id, endpoint), None)
        bs = index.targets.get(endpoint)
        if held is None or bs is None or held >= len(hashes):
            return 0
        added = hashes[held:]
        if bs.kind == APPROX:
            capacity = bs.capacity
            bs.remove(added)
            bs.capacity = capacity  # not an eviction by the runtime: says nothing of its cache size
        else:
            recent, pending, blocks = bs.recent, bs.pending, bs.blocks
            for h in added:
                if h not in blocks:  # stored meanwhile: the events say it is there, whoever prefilled it
                    recent.pop(h, None)
                    pending.pop(h, None)
            bs.watched.pop(hashes[-1], None)
        return len(added)


__all__ = ["MAX_BOOKINGS", "PrefixBookings"]
