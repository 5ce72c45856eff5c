"""The agent's view of what is cached where: it subscribes to the KV events of every runtime that publishes them
(`runtimes[].kv_events`), keeps the bounded per-runtime block index of `agents.signals.prefixindex`, and exposes its
size, kind and the event stream's health on /metrics. Runtimes without events are listed as kind `none` here: the
approximate index of what was routed to them lives in the routers that route (`router/prefix.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agents.signals.prefixindex import BYTES_PER_BLOCK, PrefixIndex
from agents.signals.runtime.kvevents import KVEventSubscriber

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

_STREAM_COUNTERS = ("messages", "events", "gaps", "resyncs", "replayed", "out_of_order", "restarts", "malformed",
                    "cleared")  # fmt: skip


class AgentPrefixIndex(Collector):
    def __init__(self, runtimes: list[Any], max_blocks: int = 200_000) -> None:
        self.index = PrefixIndex(max_blocks=max_blocks)
        self.urls = [rt.url for rt in runtimes]
        self.subs = [
            KVEventSubscriber(self.index, rt.url, rt.kv_events, rt.kv_events_replay, rt.kv_events_topic)
            for rt in runtimes
            if getattr(rt, "kv_events", "")
        ]

    def start(self) -> None:
        for sub in self.subs:
            sub.start()

    async def close(self) -> None:
        for sub in self.subs:
            await sub.close()

    def collect(self) -> Iterator[Metric]:
        blocks = GaugeMetricFamily("meshd_prefix_index_blocks", "KV blocks the agent knows a runtime holds, by index "
                                   "kind (events: exact from its KV events; none: it publishes none)",
                                   labels=["endpoint", "kind"])  # fmt: skip
        for url in self.urls:
            bs = self.index.targets.get(url)
            blocks.add_metric([url, bs.kind if bs is not None else "none"], len(bs) if bs is not None else 0)
        yield blocks
        yield GaugeMetricFamily("meshd_prefix_index_bytes", "Estimated memory of the agent's prefix index",
                                value=self.index.blocks * BYTES_PER_BLOCK)  # fmt: skip
        events = CounterMetricFamily("meshd_kv_events", "KV-event stream of each runtime: messages, events, gaps, "
                                     "replays, restarts, malformed frames", labels=["endpoint", "kind"])  # fmt: skip
        for sub in self.subs:
            c = sub.stream.counters
            for name in _STREAM_COUNTERS:
                events.add_metric([sub.stream.target_id, name], getattr(c, name))
        yield events
