"""Prometheus view of this member's Raft groups, read from the cores at scrape time (nothing to keep in step).

Labels: `cluster` and `group` only (bounded by the configured groups). With check-quorum on, a leader that loses its
quorum steps down, so `infermesh_raft_has_leader == 0` on a member means its writes are refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .host import RaftHost

_LABELS = ["cluster", "group"]


class RaftCollector(Collector):
    def __init__(self, host: RaftHost) -> None:
        self.host = host

    def collect(self) -> Iterator[Metric]:
        fams = {
            name: GaugeMetricFamily(f"infermesh_raft_{name}", help_, labels=_LABELS)
            for name, help_ in (
                ("leader", "1 while this member leads the group"),
                ("has_leader", "1 while this member knows a leader (0: electing or quorum lost, writes refused)"),
                ("term", "Current term"),
                ("commit_index", "Highest log index known committed"),
                ("applied_index", "Highest log index applied to the state machine"),
                ("voters", "Voting members in the configuration"),
            )
        }
        syncs = CounterMetricFamily(
            "infermesh_raft_log_syncs", "Log writes waited for with fsync (each may carry many entries)", labels=_LABELS
        )
        entries = CounterMetricFamily("infermesh_raft_log_entries", "Entries written to the log", labels=_LABELS)
        for name, g in list(self.host.groups.items()):
            syncs.add_metric([self.host.cluster_id, name], float(g.log_syncs))
            entries.add_metric([self.host.cluster_id, name], float(g.log_entries))
            st = g.core
            labels = [self.host.cluster_id, name]
            fams["leader"].add_metric(labels, 1.0 if st.role.name == "LEADER" else 0.0)
            fams["has_leader"].add_metric(labels, 1.0 if st.lead else 0.0)
            fams["term"].add_metric(labels, float(st.term))
            fams["commit_index"].add_metric(labels, float(st.log.committed))
            fams["applied_index"].add_metric(labels, float(st.log.applied))
            fams["voters"].add_metric(labels, float(len(st.voters)))
        yield from fams.values()
        yield syncs
        yield entries
