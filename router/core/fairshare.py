"""Fair sharing of a model's freed batch slots among the tenants of one priority class, without I/O.

Each tenant has a FIFO queue; queues are served by weighted deficit round robin: a tenant's turn adds its weight
(normalised so the heaviest tenant waiting gets 1 request per turn) to its deficit, and it is served while the
deficit covers a request. A tenant that floods the router thus waits behind its own requests, not in front of the
others'. Weights come from the tenants' requests/s quotas; a tenant without one weighs as much as the heaviest.
When the queue is full, the tenant with the longest queue gives way (`victim`).

A tenant that had nothing waiting joins a list of new tenants served before the backlogged ones, for one turn (as
fq_codel treats new flows): a tenant sending within its share finds its request next in line, not behind one turn
of every flooding tenant; a tenant that keeps a backlog is never new, so it cannot use this to jump the queue.

`SlotShare` keeps a free slot for such a tenant when it is due, so that its request need not wait for one to free.
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


class SlotShare:
    """Who holds a model's batch slots, and how many free ones are kept for light tenants.

    Slots are not preempted, so a light tenant arriving while a flood holds every slot would wait for the first of
    them to free (a whole service time when the runtime's batch finishes in step). A tenant with nothing in service
    that was active lately (within twice its own usual gap between requests, at most `horizon_s`) is therefore kept
    one free slot: a tenant that already has requests in service may not take it. With k such tenants, k slots are
    kept, never so many that the taker would fall below its max-min share (slots / (k + 1)); with one slot in all,
    none. A tenant with nothing in service is never held back by this, so light tenants cannot block each other.
    """

    def __init__(self, horizon_s: float = 5.0) -> None:
        self.horizon_s = horizon_s
        self.serving: dict[str, int] = {}  # tenant -> requests past the hold, until they finish
        self._last: dict[str, float] = {}  # tenant -> its last arrival (monotonic seconds)
        self._gap: dict[str, float] = {}  # tenant -> moving average of its gaps between arrivals

    def arrived(self, tenant: str, now: float) -> None:
        last = self._last.get(tenant)
        if last is not None:
            gap = min(now - last, self.horizon_s)
            prev = self._gap.get(tenant)
            self._gap[tenant] = gap if prev is None else 0.7 * prev + 0.3 * gap
        self._last[tenant] = now

    def started(self, tenant: str) -> None:
        self.serving[tenant] = self.serving.get(tenant, 0) + 1

    def done(self, tenant: str) -> None:
        n = self.serving.get(tenant, 0) - 1
        if n > 0:
            self.serving[tenant] = n
        else:
            self.serving.pop(tenant, None)

    def reserved(self, tenant: str, slots: int, now: float) -> int:
        """Free slots `tenant` must leave for others now (0 when it has nothing in service)."""
        if tenant not in self.serving or slots < 2 or len(self._last) < 2:
            return 0
        light = 0
        for other, last in list(self._last.items()):
            age = now - last
            if age > self.horizon_s:  # silent long enough to be forgotten: bounds the table and the loop
                del self._last[other]
                self._gap.pop(other, None)
            elif other != tenant and other not in self.serving and age <= 2 * self._gap.get(other, 0.0):
                light += 1
        return min(light, slots - -(-slots // (light + 1)))
