"""Fair sharing of a model's freed batch slots among the tenants of one priority class, without I/O.

Each tenant has a FIFO queue; queues are served by weighted deficit round robin: a tenant's turn adds its weight
(normalised so the heaviest tenant waiting gets 1 request per turn) to its deficit, and it is served while the
deficit covers a request. A tenant that floods the router thus waits behind its own requests, not in front of the
others'. Weights come from the tenants' requests/s quotas; a tenant without one weighs as much as the heaviest.
When the queue is full, the tenant with the longest queue gives way (`victim`).

A tenant that had nothing waiting joins a list of new tenants served before the backlogged ones, for one turn (as
fq_codel treats new flows): a tenant sending within its share finds its request next in line, not behind one turn
of every flooding tenant; a tenant that keeps a backlog is never new, so it cannot use this to jump the queue.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}
        self._weights: dict[str, float | None] = {}
        self._deficit: dict[str, float] = {}
        self._ring: deque[str] = deque()  # backlogged tenants with waiting requests, in turn order
        self._new: deque[str] = deque()  # tenants whose first request since they had none waits: served first
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def waiting(self, tenant: str) -> int:
        q = self._queues.get(tenant)
        return len(q) if q else 0

    def push(self, tenant: str, item: T, weight: float | None = None, *, front: bool = False) -> None:
        """Queue `item`; `front` puts it back at the head of its tenant's queue with its turn refunded (a request
        woken for a slot it could not use)."""
        q = self._queues.get(tenant)
        if q is None:
            q = self._queues[tenant] = deque()
            self._deficit[tenant] = 0.0
        if not q and tenant not in self._ring and tenant not in self._new:
            self._new.append(tenant)
        self._weights[tenant] = weight if weight is None or weight > 0 else None
        if front:
            q.appendleft(item)
            self._deficit[tenant] += 1.0
        else:
            q.append(item)
        self._n += 1

    def _weight(self, tenant: str) -> float:
        known = [w for t in (*self._ring, *self._new) if (w := self._weights.get(t)) is not None]
        top = max(known) if known else 1.0
        w = self._weights.get(tenant)
        return 1.0 if w is None else w / top

    def _drop(self, tenant: str) -> None:
        if tenant in self._new:
            self._new.remove(tenant)
        else:
            self._ring.remove(tenant)
        self._deficit[tenant] = 0.0

    def pop(self) -> T | None:
        """The next request by weighted deficit round robin, or None when nothing waits."""
        while self._new:
            t = self._new.popleft()
            q = self._queues[t]
            self._deficit[t] += self._weight(t)
            if self._deficit[t] >= 1.0:
                self._deficit[t] -= 1.0
                item = q.popleft()
                self._n -= 1
                if q:
                    self._ring.append(t)  # its new turn is over: it queues with the backlogged tenants
                else:
                    self._deficit[t] = 0.0
                return item
            self._ring.append(t)  # a light tenant's first turn does not cover a request: it waits its turns
        while self._ring:
            t = self._ring[0]
            q = self._queues[t]
            if self._deficit[t] < 1.0:
                self._deficit[t] += self._weight(t)
            if self._deficit[t] >= 1.0:
                self._deficit[t] -= 1.0
                item = q.popleft()
                self._n -= 1
                if not q:
                    self._drop(t)
                elif self._deficit[t] < 1.0:
                    self._ring.rotate(-1)  # its turn is over
                return item
            self._ring.rotate(-1)
        return None

    def remove(self, tenant: str, item: T) -> bool:
        q = self._queues.get(tenant)
        if not q:
            return False
        try:
            q.remove(item)
        except ValueError:
            return False
        self._n -= 1
        if not q:
            self._drop(tenant)
        return True

    def victim(self, tenant: str) -> str | None:
        """When the queue is full and `tenant` wants in: the tenant that should give way, `tenant` itself when its
        queue is the longest (ties included), else the longest one's tenant."""
        longest = max((*self._ring, *self._new), key=lambda t: len(self._queues[t]), default=None)
        if longest is None or self.waiting(tenant) >= len(self._queues[longest]):
            return tenant
        return longest

    def pop_newest(self, tenant: str) -> T | None:
        q = self._queues.get(tenant)
        if not q:
            return None
        item = q.pop()
        self._n -= 1
        if not q:
            self._drop(tenant)
        return item
