"""The router's in-memory target view: static targets from config merged with what the agent's watch stream says.

Requests read it without any I/O; the watch driver (router.watch) replaces the agent part as updates arrive.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from router.config import StaticTarget
from router.core.hedging import LatencyWindow

# agent states showing a runtime queueing at its learned slots while more were sent, before the count is trusted
SLOTS_CONFIRMATIONS = 20
# After a state shows a probe of a learned slot count waiting in the runtime's queue, no probe goes there for this
# long, doubled each time it happens again (up to the maximum) until the count rises: a waiting probe costs its
# request the runtime's whole turnover time, which on a slow target under saturation is seconds.
PROBE_BACKOFF_S = 2.0
PROBE_BACKOFF_MAX_S = 60.0


@dataclass(slots=True, eq=False)
class Target:
    """One place a model is served: a runtime endpoint on a node / GPU (or MIG slice)."""

    id: str
    model: str
    url: str
    runtime: str = "vllm"
    api: str = "openai"
    node: str = ""
    gpu_uuid: str = ""
    mig_profile: str = ""
    gpu_type: str = ""  # the family of its GPUs (H100, A100, ...) as the agent knows it; "" = unknown
    zone: str = ""
    revision: str = ""
    quant: str = ""
    upstream_model: str = ""
    role: str = "both"  # both | prefill | decode (disaggregated serving, router/pd.py)
    source: str = "static"  # static | agent
    # Fused state from the agent; None = unknown (static targets start unknown).
    healthy: bool = True
    waiting: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None
    ttft_p95_s: float | None = None
    tokens_per_s: float | None = None
    max_concurrency: int | None = None
    service_rate_rps: float | None = None
    work_left_s: float | None = None
    cost_per_mtok: float | None = None
    freshness: float = 0.0
    state: Any = None  # the agent's TargetState message, handed to strategies as is
    updated: float = 0.0
    learned_slots: int | None = None  # batch slots seen in use while the runtime queued (when it does not say)
    slots_confirmed: int = 0  # states that showed the runtime queueing at `learned_slots` with more sent than that
    probe_backoff_s: float = 0.0  # the current pause after a probe seen waiting (0: none yet since the count rose)
    probe_paused_until: float = 0.0  # monotonic time before which no probe goes here
    # Local knowledge of this router.
    inflight: int = 0
    slow_skips: int = 0
    completed: int = 0
    ttft: LatencyWindow = field(default_factory=lambda: LatencyWindow(128))
    rate_window_start: float = field(default_factory=time.monotonic)
    rate_window_done: int = 0
    service_rate: float | None = None
    pred_ttft_s: float = 0.0  # the strategy's predicted TTFT here at its last decision (0 = none): hedge patience

    @property
    def labels(self) -> tuple[str, str, str, str, str, str, str]:
        return (self.model, self.revision, self.runtime, self.node, self.gpu_uuid, self.mig_profile, self.zone)

    @property
    def slots(self) -> int | None:
        return self.max_concurrency or self.learned_slots

    def has_slot(self, now: float | None = None) -> bool:
        """Whether a request sent now would start at once (unknown slot count: assume so), or may go as a probe of
        a learned slot count (`slot_tier`)."""
        return self.slot_tier(now) > 0

    def slot_tier(self, now: float | None = None) -> int:
        """2: a free batch slot (or an unknown slot count); 1: no free slot by a learned count not yet confirmed,
        but the runtime says nothing waits there, so one request beyond it may go (a count learned too low can only
        rise if more than it is ever sent); 0: full. Targets of tier 2 go before those of tier 1, so a probe takes
        only a request that would otherwise wait at the router. No probe while paused after one was seen waiting
        (`learn`)."""
        slots = self.slots
        if slots is None or self.inflight < slots:
            return 2
        probe = (
            self.max_concurrency is None
            and self.slots_confirmed < SLOTS_CONFIRMATIONS
            and self.waiting is not None
            and self.waiting < 1
            and self.inflight < slots + 1
            and (time.monotonic() if now is None else now) >= self.probe_paused_until
        )
        return 1 if probe else 0

    def learn(self, waiting: float | None, running: float | None, now: float | None = None) -> None:
        # A runtime that queues while running N sequences has (at most) N slots; the maximum over time converges.
        # A queue can also be momentary (a request that arrived during an iteration waits for its end; a long chunked
        # prefill takes the token budget for several iterations), so N is a lower bound, confirmed by states that
        # show the queue at N while this router has more than N there. Running N always means at least N slots.
        if running is None or running < 1:
            return
        # A state showing the runtime queueing while this router has more than the learned count there is a probe
        # seen waiting (whatever runs: a runtime short of KV cache runs fewer): pause probing, twice as long as last.
        n = int(running)
        learned = self.learned_slots
        if learned is not None and n > learned:
            self.learned_slots, self.slots_confirmed = n, 0
            self.probe_backoff_s, self.probe_paused_until = 0.0, 0.0
        elif waiting is not None and waiting >= 1:
            if learned is None:
                self.learned_slots, self.slots_confirmed = n, 0
                return
            if n == learned and self.inflight > learned:
                self.slots_confirmed += 1
            now = time.monotonic() if now is None else now
            if self.inflight > learned and now >= self.probe_paused_until:
                self.probe_backoff_s = min(PROBE_BACKOFF_MAX_S, 2 * self.probe_backoff_s or PROBE_BACKOFF_S)
                self.probe_paused_until = now + self.probe_backoff_s

    def est_waiting(self) -> float:
        """Queue estimate: the agent's figure when fresh, else what this router itself has in flight there."""
        local = float(self.inflight)
        slots = self.slots
        if slots:
            local = max(0.0, local - slots)
        if self.waiting is None:
            return local
        return max(self.waiting, local)

    def on_done(self, now: float) -> None:
        self.completed += 1
        self.rate_window_done += 1
        span = now - self.rate_window_start
        if span >= 5.0:
            self.service_rate = self.rate_window_done / span
            self.rate_window_start = now
            self.rate_window_done = 0


_AGENT_FIELDS = (
    "url",
    "runtime",
    "api",
    "node",
    "gpu_uuid",
    "mig_profile",
    "gpu_type",
    "zone",
    "revision",
    "quant",
    "upstream_model",
    "healthy",
    "waiting",
    "running",
    "kv_cache_usage",
    "ttft_p95_s",
    "tokens_per_s",
    "max_concurrency",
    "service_rate_rps",
    "work_left_s",
    "cost_per_mtok",
    "freshness",
    "state",
    "updated",
)


def target_id(model: str, url: str) -> str:
    return f"{model}@{url}"


def from_static(t: StaticTarget) -> Target:
    return Target(
        id=target_id(t.model, t.url),
        model=t.model,
        url=t.url,
        runtime=t.runtime,
        api=t.api,
        node=t.node,
        gpu_uuid=t.gpu_uuid,
        mig_profile=t.mig_profile,
        zone=t.zone,
        revision=t.revision,
        quant=t.quant,
        upstream_model=t.upstream_model or t.model,
        max_concurrency=t.max_concurrency,
        role=t.role,
        source="static",
    )


class TargetView:
    def __init__(self, static: Iterable[StaticTarget] = ()) -> None:
        self._static: dict[str, Target] = {}
        for st in static:
            t = from_static(st)
            self._static[t.id] = t
        self._agent: dict[str, Target] = {}
        self._by_model: dict[str, list[Target]] = {}
        self.version = 0
        self.dirty: set[str] = set()  # ids updated in place since the ranker last looked
        self.local_only = False
        self._rebuild()

    def _rebuild(self) -> None:
        by_model: dict[str, list[Target]] = {}
        # An agent-fed target replaces the static entry of the same model and URL: the agent knows its live state.
        merged: dict[tuple[str, str], Target] = {(t.model, t.url): t for t in self._static.values()}
        merged.update({(t.model, t.url): t for t in self._agent.values()})
        for t in merged.values():
            by_model.setdefault(t.model, []).append(t)
        for ts in by_model.values():
            ts.sort(key=lambda t: t.id)
        self._by_model = by_model
        self.version += 1

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def all(self, model: str) -> list[Target]:
        return self._by_model.get(model, [])

    def candidates(self, model: str) -> list[Target]:
        return [t for t in self._by_model.get(model, ()) if t.healthy]

    def has_model(self, model: str) -> bool:
        return model in self._by_model

    def get(self, tid: str) -> Target | None:
        return self._agent.get(tid) or self._static.get(tid)

    def counts(self) -> dict[str, int]:
        return {"static": len(self._static), "agent": len(self._agent)}

    def _merge(self, new: Target) -> Target:
        # In-flight requests hold the Target object: update a known target in place so their bookkeeping
        # (inflight, TTFT window) lands on the object the view keeps.
        old = self._agent.get(new.id)
        if old is None:
            st = self._static.get(new.id)
            if st is not None:
                new.inflight, new.completed, new.ttft = st.inflight, st.completed, st.ttft
                new.learned_slots, new.slots_confirmed = st.learned_slots, st.slots_confirmed
                new.probe_backoff_s, new.probe_paused_until = st.probe_backoff_s, st.probe_paused_until
                new.role = st.role  # the config declares the role; the agent does not know it
            new.learn(new.waiting, new.running)
            return new
        for name in _AGENT_FIELDS:
            setattr(old, name, getattr(new, name))
        old.learn(new.waiting, new.running)
        return old

    def replace_agent(self, targets: Iterable[Target]) -> None:
        """The watch's full set: the agent part of the view becomes exactly this."""
        self._agent = {t.id: self._merge(t) for t in targets}
        self._rebuild()

    def upsert_agent(self, t: Target) -> None:
        known = t.id in self._agent
        self._agent[t.id] = self._merge(t)
        if known:
            self.dirty.add(t.id)
        else:
            self._rebuild()

    def remove_agent(self, tid: str) -> None:
        if self._agent.pop(tid, None) is not None:
            self._rebuild()
