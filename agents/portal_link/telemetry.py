"""Roll-ups of the agent's fused state for the portal: per-GPU readings (with every Xid seen since the last report,
since NVML reports an Xid once) and node totals."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from agents.proto.portal_link import GpuRollup, NodeRollup, PeerLink


def _num(value: float | None, lo: float, hi: float | None = None) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    value = max(lo, value)
    return min(hi, value) if hi is not None else value


class TelemetrySampler:
    """Watches fusion's GPU readings between reports so that one-shot Xid events are not missed."""

    def __init__(self, fusion: Any) -> None:
        self.fusion = fusion
        self._seen: dict[str, int] = {}  # uuid -> observed_unix_ms of the last reading looked at
        self._xids: dict[str, list[int]] = {}

    def sample(self) -> None:
        for uuid, gpu in list(self.fusion.gpus.items()):
            d = gpu.delta
            if self._seen.get(uuid) == d.observed_unix_ms:
                continue
            self._seen[uuid] = d.observed_unix_ms
            if d.xid_events:
                bucket = self._xids.setdefault(uuid, [])
                bucket.extend(int(x) for x in d.xid_events)
                del bucket[:-64]

    def gpus(self) -> list[GpuRollup]:
        self.sample()
        out = []
        for uuid, gpu in sorted(self.fusion.gpus.items(), key=lambda kv: (kv[1].delta.index, kv[0])):
            d = gpu.delta
            used_frac = None
            if d.HasField("memory_used_bytes") and d.HasField("memory_total_bytes") and d.memory_total_bytes > 0:
                used_frac = _num(d.memory_used_bytes / d.memory_total_bytes, 0.0, 1.0)
            out.append(
                GpuRollup(
                    uuid=uuid[:96],
                    index=max(0, min(1024, d.index)),
                    name=d.name[:128],
                    mig_profile=d.mig_profile[:32],
                    utilization=_num(d.utilization_gpu, 0.0, 100.0) if d.HasField("utilization_gpu") else None,
                    memory_used_frac=used_frac,
                    temperature_c=_num(d.temperature_c, -50.0, 200.0) if d.HasField("temperature_c") else None,
                    slowdown_temp_c=_num(d.slowdown_temp_c, 0.0, 200.0) if d.HasField("slowdown_temp_c") else None,
                    power_w=_num(d.power_w, 0.0) if d.HasField("power_w") else None,
                    ecc_uncorrectable=(
                        max(0, d.ecc_uncorrected_volatile) if d.HasField("ecc_uncorrected_volatile") else None
                    ),
                    remap_pending=bool(d.HasField("remapped_rows_pending") and d.remapped_rows_pending),
                    xids=self._xids.pop(uuid, [])[-64:],
                    throttle_reasons=[r[:64] for r in d.throttle_reasons][:32],
                    healthy=bool(gpu.healthy),
                    reason=str(gpu.reason)[:256],
                )
            )
        return out

    def node(self, state: str) -> NodeRollup:
        targets = list(self.fusion.targets.values())
        local = [t for t in targets if t.node == self.fusion.node_id]
        return NodeRollup(
            state=state,
            targets=len(local),
            routable_targets=sum(1 for t in local if self.fusion.routable(t)),
            requests_running=sum(t.signals.requests_running or 0.0 for t in local),
            requests_waiting=sum(t.signals.requests_waiting or 0.0 for t in local),
            tokens_per_s=sum(t.signals.tokens_per_s or 0.0 for t in local),
        )


def peers(
    node_id: str,
    others: list[str],
    rtt: Callable[[str, str], float] | None,
    links: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> list[PeerLink]:
    """RTT and loss to each known peer: measured by gossip's direct probes (`links`: RTT in seconds and loss per
    peer) where it has, else the RTT the topology service estimates; nothing without gossip."""
    links = links or {}
    if rtt is None and not links:
        return []
    out = []
    for other in sorted({*others, *links})[:256]:
        measured_rtt, loss = links.get(other, (None, None))
        value = measured_rtt
        if value is None and rtt is not None:
            try:
                value = rtt(node_id, other)
            except Exception:  # a peer the estimator does not know yet
                value = None
        ms = _num(value * 1000.0, 0.0) if value is not None else None
        loss = _num(loss, 0.0, 1.0) if loss is not None else None
        if ms is not None or loss is not None:
            out.append(PeerLink(node=other[:128], rtt_ms=ms, loss=loss))
    return out
