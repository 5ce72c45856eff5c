"""Collective cost model for training placement: α-β terms per link class for ring, double binary tree and
hierarchical all-reduce, bus bandwidth as nccl-tests defines it, and calibration from measured comm telemetry.

Pure functions and small dataclasses: no clocks, no I/O. The planner, the placement strategies, the mock job model
and the benchmark all use the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .records import CommStats

# RTT in seconds between two nodes (a Vivaldi estimate from the topology service); None = use class defaults.
RttFn = Callable[[str, str], float]

INTRA_NVLINK = "nvlink"  # GPUs of one node joined by NVLink / NVSwitch
INTRA_PCIE = "pcie"  # GPUs of one node without NVLink (L40S, L4, T4, A10G, MIG slices of one GPU share it too)
HOST = "host"  # two nodes on one physical host (VMs / containers)
ZONE = "zone"  # two hosts in one zone: the datacenter fabric
REGION = "region"  # two zones of one region: oversubscribed inter-zone links
WAN = "wan"
LINK_CLASSES = (INTRA_NVLINK, INTRA_PCIE, HOST, ZONE, REGION, WAN)

# GPU families whose multi-GPU servers carry NVLink / NVSwitch (SXM parts).
NVLINK_TYPES = frozenset({"H200", "H100", "A100"})

# Dense BF16 tensor TFLOPS (FP16 for T4), from the vendors' data sheets: the relative speed of a worker.
GPU_TFLOPS: dict[str, float] = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "T4": 65.0,
    "CPU": 1.0,  # CPU workers (tests): only their relative order matters
}
REFERENCE_GPU = "H100"


def mig_fraction(profile: str) -> float:
    """Share of a GPU's compute a MIG slice gets: `3g.40gb` -> 3/7."""
    if not profile:
        return 1.0
    head = profile.split(".", 1)[0].rstrip("g")
    try:
        return max(1, min(7, int(head))) / 7.0
    except ValueError:
        return 1.0


@dataclass(frozen=True, slots=True)
class LinkParams:
    """α: latency per message step (seconds); β: bandwidth of one link (GB/s)."""

    alpha_s: float
    beta_gbps: float


def default_links() -> dict[str, LinkParams]:
    """Typical figures: NVLink4 per-GPU ~150 GB/s achieved busbw share, PCIe Gen4 ~20 GB/s, 200 Gb/s RoCE NICs
    (~22 GB/s achieved), a 4:1 oversubscribed inter-zone uplink, and a WAN path."""
    return {
        INTRA_NVLINK: LinkParams(3e-6, 150.0),
        INTRA_PCIE: LinkParams(8e-6, 20.0),
        HOST: LinkParams(10e-6, 40.0),
        ZONE: LinkParams(15e-6, 22.0),
        REGION: LinkParams(250e-6, 22.0),
        WAN: LinkParams(10e-3, 1.0),
    }


@dataclass(frozen=True, slots=True)
class RankSlot:
    """Where one rank (worker) runs, as the cost model sees it."""

    node: str
    zone: str = ""
    region: str = ""
    host: str = ""
    gpu_type: str = ""
    gpus: int = 1  # GPUs this worker drives (0 for a CPU worker)
    mig_profile: str = ""


def link_class(a: RankSlot, b: RankSlot) -> str:
    """The link class between two ranks' nodes (empty labels never match)."""
    if a.node == b.node:
        nvlink = a.gpu_type in NVLINK_TYPES and not a.mig_profile and not b.mig_profile
        return INTRA_NVLINK if nvlink else INTRA_PCIE
    if a.host and a.host == b.host:
        return HOST
    if a.zone and a.zone == b.zone:
        return ZONE
    if a.region and a.region == b.region:
        return REGION
    return WAN


@dataclass(slots=True)
class Fabric:
    """Link parameters, zone uplinks and RTTs: everything the cost of a collective depends on besides the ranks.

    `zone_uplink_gbps[zone]` is the bandwidth all of a zone's traffic to other zones shares (oversubscription);
    `efficiency[class]` is the calibrated ratio predicted/measured time (1 = the model is right), learnt from
    CommStats.
    """

    links: dict[str, LinkParams] = field(default_factory=default_links)
    zone_uplink_gbps: dict[str, float] = field(default_factory=dict)
    default_uplink_gbps: float | None = None  # None: uplinks are not a bottleneck
    rtt: RttFn | None = None
    efficiency: dict[str, float] = field(default_factory=dict)

    def alpha(self, cls: str, a: RankSlot, b: RankSlot) -> float:
        base = self.links[cls].alpha_s
        if self.rtt is not None and cls not in (INTRA_NVLINK, INTRA_PCIE):
            # one-way latency from the measured round trip replaces the class default when it is larger
            return max(base, self.rtt(a.node, b.node) / 2.0)
        return base

    def beta(self, cls: str) -> float:
        return self.links[cls].beta_gbps * 1e9 * self.efficiency.get(cls, 1.0)

    def uplink(self, zone: str) -> float | None:
        gbps = self.zone_uplink_gbps.get(zone, self.default_uplink_gbps)
        return None if gbps is None else gbps * 1e9 * self.efficiency.get(REGION, 1.0)


@dataclass(slots=True)
class CollectiveCost:
    """Predicted time of one all-reduce of `nbytes` and what it is made of."""

    algorithm: str
    time_s: float
    nbytes: int
    n_ranks: int
    bottleneck: str  # link class that bounds the bandwidth term
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def algbw_gbps(self) -> float:
        return self.nbytes / self.time_s / 1e9 if self.time_s > 0 else 0.0

    @property
    def busbw_gbps(self) -> float:
        """nccl-tests: busbw = algbw * 2(n-1)/n for all-reduce."""
        n = max(self.n_ranks, 1)
        return self.algbw_gbps * 2 * (n - 1) / n


def _groups(ranks: Sequence[RankSlot]) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    by_node: dict[str, list[int]] = {}
    for i, r in enumerate(ranks):
        by_node.setdefault(r.node, []).append(i)
    by_zone: dict[str, list[str]] = {}
    for node, idx in by_node.items():
        z = ranks[idx[0]].zone
        if node not in by_zone.setdefault(z, []):
            by_zone[z].append(node)
    return by_node, by_zone


def _hop_beta(fabric: Fabric, cls: str, leaving_node: int, leaving_zone: int, zone: str) -> float:
    """Bandwidth one of several concurrent flows gets: a node's NIC and a zone's uplink are shared."""
    beta = fabric.beta(cls)
    if cls in (INTRA_NVLINK, INTRA_PCIE):
        return beta
    beta /= max(leaving_node, 1)
    if cls in (REGION, WAN):
        up = fabric.uplink(zone)
        if up is not None:
            beta = min(beta, up / max(leaving_zone, 1))
    return beta


def ring_allreduce(ranks: Sequence[RankSlot], nbytes: int, fabric: Fabric) -> CollectiveCost:
    """Ring in rank order: 2(N-1) steps, each moving nbytes/N over every hop at once; the slowest hop rules."""
    n = len(ranks)
    if n <= 1:
        return CollectiveCost("ring", 0.0, nbytes, n, "none")
    leaving_node: dict[str, int] = {}
    leaving_zone: dict[str, int] = {}
    hops = []
    for i in range(n):
        a, b = ranks[i], ranks[(i + 1) % n]
        cls = link_class(a, b)
        hops.append((a, b, cls))
        if a.node != b.node:
            leaving_node[a.node] = leaving_node.get(a.node, 0) + 1
        if a.zone != b.zone or cls in (REGION, WAN):
            leaving_zone[a.zone] = leaving_zone.get(a.zone, 0) + 1
    chunk = nbytes / n
    worst, worst_cls, worst_alpha = 0.0, "none", 0.0
    for a, b, cls in hops:
        alpha = fabric.alpha(cls, a, b)
        beta = _hop_beta(fabric, cls, leaving_node.get(a.node, 0), leaving_zone.get(a.zone, 0), a.zone)
        t = alpha + chunk / beta
        if t > worst:
            worst, worst_cls, worst_alpha = t, cls, alpha
    steps = 2 * (n - 1)
    return CollectiveCost(
        "ring", steps * worst, nbytes, n, worst_cls,
        {"steps": float(steps), "latency_s": steps * worst_alpha, "bandwidth_s": steps * (worst - worst_alpha)},
    )  # fmt: skip


def _inter_node(ranks: Sequence[RankSlot], by_node: dict[str, list[int]], fabric: Fabric) -> tuple[str, float, str]:
    """The worst inter-node link class among the job's nodes, its α, and a zone it leaves."""
    leaders = [ranks[idx[0]] for idx in by_node.values()]
    order = {c: i for i, c in enumerate(LINK_CLASSES)}
    worst_cls, worst_alpha, zone = HOST, 0.0, ""
    for i, a in enumerate(leaders):
        for b in leaders[i + 1 :]:
            cls = link_class(a, b)
            alpha = fabric.alpha(cls, a, b)
            if order[cls] > order[worst_cls] or (cls == worst_cls and alpha > worst_alpha):
                worst_cls, worst_alpha, zone = cls, alpha, a.zone
    return worst_cls, worst_alpha, zone


def _intra(ranks: Sequence[RankSlot], by_node: dict[str, list[int]]) -> tuple[int, str]:
    k = max(len(v) for v in by_node.values())
    nvlink = all(link_class(ranks[v[0]], ranks[v[0]]) == INTRA_NVLINK for v in by_node.values())
    return k, INTRA_NVLINK if nvlink else INTRA_PCIE


def tree_allreduce(ranks: Sequence[RankSlot], nbytes: int, fabric: Fabric) -> CollectiveCost:
    """NCCL's double binary tree: intra-node chains, a binary tree over the m nodes (≈ 2·log2 m inter-node
    latencies for reduce + broadcast), pipelined so the bandwidth term is 2·S over the slowest link (each node
    sends and receives about S per tree direction over both trees)."""
    n = len(ranks)
    if n <= 1:
        return CollectiveCost("tree", 0.0, nbytes, n, "none")
    by_node, by_zone = _groups(ranks)
    m = len(by_node)
    k, intra_cls = _intra(ranks, by_node)
    intra_alpha = fabric.links[intra_cls].alpha_s
    latency = 2 * (k - 1) * intra_alpha
    bw = 2 * nbytes / fabric.beta(intra_cls) if k > 1 else 0.0
    bottleneck = intra_cls
    if m > 1:
        inter_cls, inter_alpha, zone = _inter_node(ranks, by_node, fabric)
        latency += 2 * math.ceil(math.log2(m)) * inter_alpha
        # both trees cross each zone boundary: two flows share a zone's uplink
        beta = _hop_beta(fabric, inter_cls, 1, 2 if len(by_zone) > 1 else 1, zone)
        inter_bw = 2 * nbytes / beta
        if inter_bw >= bw:
            bw, bottleneck = inter_bw, inter_cls
    return CollectiveCost("tree", latency + bw, nbytes, n, bottleneck, {"latency_s": latency, "bandwidth_s": bw})


def hierarchical_allreduce(ranks: Sequence[RankSlot], nbytes: int, fabric: Fabric) -> CollectiveCost:
    """Intra-node reduce-scatter, inter-node ring all-reduce of each 1/k shard (k rings in parallel through the
    node's NIC), intra-node all-gather."""
    n = len(ranks)
    if n <= 1:
        return CollectiveCost("hierarchical", 0.0, nbytes, n, "none")
    by_node, by_zone = _groups(ranks)
    m = len(by_node)
    k, intra_cls = _intra(ranks, by_node)
    intra_alpha, intra_beta = fabric.links[intra_cls].alpha_s, fabric.beta(intra_cls)
    rs = (k - 1) * (intra_alpha + nbytes / k / intra_beta) if k > 1 else 0.0
    ag = rs
    inter = 0.0
    bottleneck = intra_cls
    if m > 1:
        inter_cls, inter_alpha, zone = _inter_node(ranks, by_node, fabric)
        # k shard rings leave every node through its NIC; with nodes grouped by zone, each ring crosses each zone
        # boundary once per direction
        beta = _hop_beta(fabric, inter_cls, k, k if len(by_zone) > 1 else 1, zone)
        inter = 2 * (m - 1) * (inter_alpha + nbytes / k / m / beta)
        if inter >= rs + ag:
            bottleneck = inter_cls
    return CollectiveCost(
        "hierarchical", rs + inter + ag, nbytes, n, bottleneck,
        {"reduce_scatter_s": rs, "inter_allreduce_s": inter, "all_gather_s": ag},
    )  # fmt: skip


ALGORITHMS: dict[str, Callable[[Sequence[RankSlot], int, Fabric], CollectiveCost]] = {
    "ring": ring_allreduce,
    "tree": tree_allreduce,
    "hierarchical": hierarchical_allreduce,
}


def worker_speed(slot: RankSlot) -> float:
    """Throughput of one worker relative to one reference GPU."""
    if slot.gpus == 0:
        return GPU_TFLOPS["CPU"] / GPU_TFLOPS[REFERENCE_GPU]
    tflops = GPU_TFLOPS.get(slot.gpu_type, GPU_TFLOPS["T4"])
    return slot.gpus * tflops * mig_fraction(slot.mig_profile) / GPU_TFLOPS[REFERENCE_GPU]


@dataclass(frozen=True, slots=True)
class StepCost:
    """Predicted training step: compute of the slowest worker, plus communication not hidden behind backward."""

    step_s: float
    compute_s: float
    comm: CollectiveCost
    exposed_comm_s: float


def step_time(
    ranks: Sequence[RankSlot],
    *,
    compute_s: float,
    grad_bytes: int,
    fabric: Fabric,
    algorithm: str = "ring",
    overlap: float = 0.5,
) -> StepCost:
    """A data-parallel step: synchronous, so the slowest worker sets compute; DDP overlaps gradient all-reduce with
    the backward pass (about `overlap` of compute), the rest of the communication is exposed."""
    slowest = min((worker_speed(r) for r in ranks), default=1.0)
    compute = compute_s / max(slowest, 1e-9)
    comm = ALGORITHMS[algorithm](ranks, grad_bytes, fabric)
    exposed = max(0.0, comm.time_s - overlap * compute)
    return StepCost(compute + exposed, compute, comm, exposed)


def classes_used(ranks: Sequence[RankSlot]) -> set[str]:
    """Link classes between consecutive ranks of a ring in rank order."""
    n = len(ranks)
    return {link_class(ranks[i], ranks[(i + 1) % n]) for i in range(n)} if n > 1 else set()


@dataclass(slots=True)
class Calibration:
    """Learns, per bottleneck link class, how much slower (or faster) collectives run than the model predicts.

    Each measured CommStats record is compared with the prediction for the same bytes on the job's placement; the
    ratio feeds an EWMA, and `apply` writes its inverse into `Fabric.efficiency`, so later plans use measured
    bandwidth instead of data-sheet figures.
    """

    alpha: float = 0.2
    ratio: dict[str, float] = field(default_factory=dict)  # link class -> measured / predicted time
    samples: dict[str, int] = field(default_factory=dict)
    min_ratio: float = 0.05
    max_ratio: float = 50.0

    def observe(self, ranks: Sequence[RankSlot], records: Iterable[CommStats], fabric: Fabric, algorithm: str) -> int:
        """Fold measured records of one job into the per-class ratios; returns how many were used."""
        used = 0
        fn = ALGORITHMS.get(algorithm, ring_allreduce)
        for rec in records:
            if rec.collective != "allreduce" or rec.time_s <= 0 or rec.bytes <= 0 or rec.n_ranks != len(ranks):
                continue
            predicted = fn(ranks, rec.bytes, fabric)
            if predicted.time_s <= 0:
                continue
            # the prediction already includes the current efficiency; undo it to get the raw ratio
            raw = rec.time_s / predicted.time_s / max(fabric.efficiency.get(predicted.bottleneck, 1.0), 1e-9)
            r = min(max(raw, self.min_ratio), self.max_ratio)
            cls = predicted.bottleneck
            old = self.ratio.get(cls)
            self.ratio[cls] = r if old is None else old + self.alpha * (r - old)
            self.samples[cls] = self.samples.get(cls, 0) + 1
            used += 1
        return used

    def apply(self, fabric: Fabric) -> None:
        for cls, r in self.ratio.items():
            fabric.efficiency[cls] = 1.0 / r
