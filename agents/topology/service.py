"""Topology view of one node: its Vivaldi client, the last coordinate seen from each peer, link classes from
labels, and the RTT estimate `rtt(src, dst)` that strategies (hybrid_mesh) use as network cost."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from agents.topology.vivaldi import Coordinate, VivaldiClient, VivaldiConfig

# Fallback RTTs (seconds) per link class when a coordinate is missing, in line with common datacenter figures.
DEFAULT_CLASS_RTT = {"local": 0.0, "host": 0.00005, "zone": 0.0005, "region": 0.002, "wan": 0.05}


class LinkClass(enum.StrEnum):
    LOCAL = "local"  # the node itself
    HOST = "host"  # same machine
    ZONE = "zone"
    REGION = "region"
    WAN = "wan"


def link_class(a: dict[str, str], b: dict[str, str]) -> LinkClass:
    """Classify a link from both ends' labels (`host`, `zone`, `region`); missing labels never match."""

    def same(key: str) -> bool:
        return bool(a.get(key)) and a.get(key) == b.get(key)

    if same("node"):
        return LinkClass.LOCAL
    if same("host"):
        return LinkClass.HOST
    if same("zone"):
        return LinkClass.ZONE
    if same("region"):
        return LinkClass.REGION
    return LinkClass.WAN


@dataclass(slots=True)
class PeerView:
    coordinate: Coordinate | None
    labels: dict[str, str]
    last_rtt: float | None = None


class Topology:
    def __init__(
        self, node: str, labels: dict[str, str], config: VivaldiConfig | None = None, rng: random.Random | None = None
    ) -> None:
        self.node = node
        self.labels = {**labels, "node": node}
        self.client = VivaldiClient(config, rng)
        self.peers: dict[str, PeerView] = {}
        self.rejected_samples = 0

    @property
    def coordinate(self) -> Coordinate:
        return self.client.coord

    def set_labels(self, node: str, labels: dict[str, str]) -> None:
        view = self.peers.setdefault(node, PeerView(None, {}))
        view.labels = {**labels, "node": node}

    def observe(self, node: str, rtt_s: float, coordinate: bytes) -> bool:
        """A direct probe RTT with the peer's coordinate; returns False (and counts) if the sample is unusable."""
        try:
            coord = Coordinate.decode(coordinate)
            self.client.update(node, coord, rtt_s)
        except ValueError:
            self.rejected_samples += 1
            return False
        view = self.peers.setdefault(node, PeerView(None, {"node": node}))
        view.coordinate = coord
        view.last_rtt = rtt_s
        return True

    def forget(self, node: str) -> None:
        self.peers.pop(node, None)
        self.client.forget(node)

    def coordinate_of(self, node: str) -> Coordinate | None:
        if node == self.node:
            return self.client.coord
        view = self.peers.get(node)
        return view.coordinate if view else None

    def labels_of(self, node: str) -> dict[str, str]:
        if node == self.node:
            return self.labels
        view = self.peers.get(node)
        return view.labels if view else {"node": node}

    def link(self, a: str, b: str) -> LinkClass:
        return link_class(self.labels_of(a), self.labels_of(b))

    def rtt(self, a: str, b: str) -> float:
        """Estimated RTT in seconds between any two known nodes; link-class default when coordinates are missing."""
        if a == b:
            return 0.0
        ca, cb = self.coordinate_of(a), self.coordinate_of(b)
        if ca is not None and cb is not None and len(ca.vec) == len(cb.vec):
            return ca.distance(cb)
        return DEFAULT_CLASS_RTT[self.link(a, b).value]
