"""Prometheus metrics of the gossip layer: members by state, probe RTTs, suspicions, false positives, traffic."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agents.gossip.messages import MemberState

DROP_REASONS = ("truncated", "oversized", "malformed", "unauthenticated", "replayed", "unsealed")


class GossipMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.members = Gauge("infermesh_gossip_members", "Members by state as seen by this node", ["state"],
                             registry=registry)  # fmt: skip
        self.probe_rtt = Histogram(
            "infermesh_gossip_probe_rtt_seconds",
            "RTT of direct probes",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.suspicions = Counter("infermesh_gossip_suspicions_total",
                                  "Suspicions raised by this node's probes, and suspected members that refuted",
                                  ["outcome"], registry=registry)  # fmt: skip
        self.false_positives = Counter(
            "infermesh_gossip_false_positives_total",
            "Times this live node learnt that it had been declared dead (and refuted it)",
            registry=registry,
        )
        self.self_refutes = Counter("infermesh_gossip_refutations_total", "Suspicions of this node it refuted",
                                    registry=registry)  # fmt: skip
        self.messages = Counter("infermesh_gossip_messages_total", "Gossip messages", ["direction"], registry=registry)
        self.packets = Counter("infermesh_gossip_packets_total", "UDP packets", ["direction"], registry=registry)
        self.bytes = Counter("infermesh_gossip_bytes_total", "UDP and TCP bytes", ["direction"], registry=registry)
        self.dropped = Counter("infermesh_gossip_dropped_packets_total", "Packets dropped as bad input", ["reason"],
                               registry=registry)  # fmt: skip
        self.push_pulls = Counter("infermesh_gossip_push_pull_total", "Push/pull exchanges", ["purpose", "result"],
                                  registry=registry)  # fmt: skip
        self.health = Gauge("infermesh_gossip_health_score", "Lifeguard local health score (0 = healthy)",
                            registry=registry)  # fmt: skip
        self.degraded = Gauge("infermesh_gossip_degraded",
                              "1 while this node has lost contact with most of the mesh (local-only mode)",
                              registry=registry)  # fmt: skip
        self.peer_loss = Gauge("infermesh_gossip_peer_loss",
                               "Share of the last direct probes to a peer left unanswered (1: declared dead)",
                               ["peer"], registry=registry)  # fmt: skip
        self.peer_rtt = Gauge("infermesh_gossip_peer_rtt_seconds", "Moving average of direct-probe RTTs to a peer",
                              ["peer"], registry=registry)  # fmt: skip
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        for s in MemberState:
            self.members.labels(s.name.lower())
        for outcome in ("raised", "refuted"):
            self.suspicions.labels(outcome)
