"""Quarantine rules, sans-IO: telemetry samples of one node and its quarantine state in, a decision out.

Rules: uncorrectable ECC errors or a pending row remap, a fatal Xid, the thermal margin below the slowdown threshold for
several consecutive samples, persistent throttling, and network degradation (RTT / loss to most peers, as gossip
measures it). Hysteresis: a node quarantined by these rules is released only after it stayed healthy for a cool-down;
a pinned quarantine (an admin's) is never released by the rules. No clock is read: `now` is a parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Xid codes that mean the GPU (or its memory, or the driver's view of it) cannot be trusted until a reset — the set
# production node monitors drain on: 48 double-bit ECC, 62/63/64 row remapping / page retirement events, 74 NVLink,
# 79 fallen off the bus, 92 high single-bit ECC rate, 94/95 contained / uncontained ECC, 119/120 GSP errors,
# 140 unrecovered ECC.
FATAL_XIDS: frozenset[int] = frozenset({48, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140})
# Throttle reasons that mean lost performance (idle or application clocks are not a problem).
BAD_THROTTLE: frozenset[str] = frozenset(
    {"hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "sw_thermal_slowdown", "sw_power_cap"}
)


@dataclass(frozen=True, slots=True)
class Rules:
    fatal_xids: frozenset[int] = FATAL_XIDS
    thermal_margin_c: float = 0.0  # margin to the slowdown temperature below which a sample counts as too hot
    thermal_samples: int = 3  # consecutive hot samples before it counts
    throttle_samples: int = 5
    throttle_reasons: frozenset[str] = BAD_THROTTLE
    max_rtt_ms: float = 50.0
    max_loss: float = 0.05
    network_samples: int = 3
    min_peers: int = 2  # network degradation needs at least this many peers, most of them bad
    cooldown_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Gpu:
    uuid: str
    ecc_uncorrectable: int | None = None
    remap_pending: bool = False
    xids: tuple[int, ...] = ()
    temperature_c: float | None = None
    slowdown_temp_c: float | None = None
    throttle_reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Peer:
    node: str
    rtt_ms: float | None = None
    loss: float | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # unix seconds
    gpus: tuple[Gpu, ...] = ()
    peers: tuple[Peer, ...] = ()


@dataclass(frozen=True, slots=True)
class State:
    """What the portal holds about the node: its status and its open quarantine, if any."""

    status: str  # active | cordoned | draining | quarantined | offline
    quarantined_by_rules: bool = False  # an open quarantine opened by these rules
    pinned: bool = False
    quarantined_manually: bool = False  # quarantined by an admin (status) without an automatic record
    last_unhealthy_at: float | None = None
    ignore_before: float | None = None  # when the node's last quarantine was released


@dataclass(frozen=True, slots=True)
class Finding:
    rule: Literal["ecc", "xid", "thermal", "throttle", "network"]
    at: float
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["quarantine", "hold", "release", "none"]
    reason: str = ""
    findings: tuple[Finding, ...] = ()
    last_unhealthy_at: float | None = None


def _runs(flags: Sequence[bool], length: int) -> list[int]:
    """Indexes of samples that belong to a run of at least `length` consecutive True flags."""
    out: list[int] = []
    i = 0
    while i < len(flags):
        if not flags[i]:
            i += 1
            continue
        j = i
        while j < len(flags) and flags[j]:
            j += 1
        if j - i >= length:
            out.extend(range(i, j))
        i = j
    return out


def findings(samples: Sequence[Sample], rules: Rules) -> list[Finding]:
    """Every rule violation found in `samples` (oldest first)."""
    out: list[Finding] = []
    samples = sorted(samples, key=lambda s: s.at)
    for s in samples:
        for g in s.gpus:
            if (g.ecc_uncorrectable or 0) > 0 or g.remap_pending:
                what = f"{g.ecc_uncorrectable} uncorrectable ECC errors" if g.ecc_uncorrectable else "row remap pending"
                out.append(
                    Finding("ecc", s.at, f"GPU {g.uuid}: {what}", {"gpu": g.uuid, "ecc": g.ecc_uncorrectable or 0})
                )
            fatal = sorted(set(g.xids) & rules.fatal_xids)
            if fatal:
                codes = ",".join(str(x) for x in fatal)
                out.append(Finding("xid", s.at, f"GPU {g.uuid}: fatal Xid {codes}", {"gpu": g.uuid, "xids": fatal}))
    uuids = sorted({g.uuid for s in samples for g in s.gpus})
    for uuid in uuids:
        readings = [(s, next((g for g in s.gpus if g.uuid == uuid), None)) for s in samples]
        hot = [
            g is not None
            and g.temperature_c is not None
            and g.slowdown_temp_c is not None
            and g.slowdown_temp_c - g.temperature_c < rules.thermal_margin_c
            for _, g in readings
        ]
        for i in _runs(hot, rules.thermal_samples):
            s, hot_gpu = readings[i]
            assert hot_gpu is not None and hot_gpu.temperature_c is not None and hot_gpu.slowdown_temp_c is not None
            g = hot_gpu
            out.append(
                Finding(
                    "thermal",
                    s.at,
                    f"GPU {uuid}: {g.temperature_c:.0f} C, slowdown at {g.slowdown_temp_c:.0f} C "
                    f"for {rules.thermal_samples}+ samples",
                    {"gpu": uuid, "temperature_c": g.temperature_c, "slowdown_temp_c": g.slowdown_temp_c},
                )
            )
        throttled = [g is not None and bool(set(g.throttle_reasons) & rules.throttle_reasons) for _, g in readings]
        for i in _runs(throttled, rules.throttle_samples):
            s, slow_gpu = readings[i]
            assert slow_gpu is not None
            g = slow_gpu
            reasons = sorted(set(g.throttle_reasons) & rules.throttle_reasons)
            out.append(
                Finding(
                    "throttle",
                    s.at,
                    f"GPU {uuid}: throttled ({', '.join(reasons)}) for {rules.throttle_samples}+ samples",
                    {"gpu": uuid, "reasons": reasons},
                )
            )
    degraded = [_network_bad(s, rules) for s in samples]
    for i in _runs([d is not None for d in degraded], rules.network_samples):
        bad = degraded[i]
        assert bad is not None
        out.append(
            Finding(
                "network",
                samples[i].at,
                f"network degraded to {len(bad)} peers: " + ", ".join(p.node for p in bad[:5]),
                {"peers": [{"node": p.node, "rtt_ms": p.rtt_ms, "loss": p.loss} for p in bad]},
            )
        )
    return out


def _network_bad(s: Sample, rules: Rules) -> list[Peer] | None:
    measured = [p for p in s.peers if p.rtt_ms is not None or p.loss is not None]
    if len(measured) < rules.min_peers:
        return None
    bad = [
        p
        for p in measured
        if (p.rtt_ms is not None and p.rtt_ms > rules.max_rtt_ms) or (p.loss is not None and p.loss > rules.max_loss)
    ]
    # A node whose links to most peers are bad is the common factor; one bad link says little about the node.
    return bad if len(bad) * 2 > len(measured) else None


def decide(state: State, samples: Sequence[Sample], now: float, rules: Rules) -> Decision:
    """What to do with one node now, given its recent samples."""
    if state.status == "offline" or not samples:
        return Decision("none")  # no fresh telemetry: nothing to judge by (liveness handles silence)
    # Faults from before the last release were judged already; only newer ones count.
    found = [f for f in findings(samples, rules) if state.ignore_before is None or f.at > state.ignore_before]
    last_bad = max((f.at for f in found), default=None)
    if state.last_unhealthy_at is not None and (last_bad is None or state.last_unhealthy_at > last_bad):
        last_bad = state.last_unhealthy_at
    newest = _dedupe(found)
    reason = newest[0].message if newest else ""
    if state.quarantined_by_rules:
        if not state.pinned and state.status == "quarantined":
            latest = max(s.at for s in samples)
            healthy_since = last_bad if last_bad is not None else min(s.at for s in samples)
            # Hysteresis: healthy samples must span the whole cool-down, not just the time since the fault.
            if latest - healthy_since >= rules.cooldown_s and now - healthy_since >= rules.cooldown_s:
                return Decision(
                    "release", f"healthy for {now - healthy_since:.0f}s (cool-down {rules.cooldown_s:.0f}s)"
                )
        return Decision("hold" if found else "none", reason, newest, last_bad)
    if found and state.status != "quarantined":
        return Decision("quarantine", reason, newest, last_bad)
    return Decision("none", reason, newest, last_bad)


def _dedupe(found: Iterable[Finding]) -> tuple[Finding, ...]:
    """One finding per (rule, message), the latest, newest first: evidence stays readable."""
    latest: dict[tuple[str, str], Finding] = {}
    for f in found:
        key = (f.rule, f.message)
        if key not in latest or f.at > latest[key].at:
            latest[key] = f
    return tuple(sorted(latest.values(), key=lambda f: -f.at))


def sample_from_telemetry(at: float, data: Mapping[str, Any]) -> Sample:
    """A Sample from a stored telemetry sample (the agent link's GpuRollup / PeerLink shapes)."""
    gpus = tuple(
        Gpu(
            uuid=str(g.get("uuid", "")),
            ecc_uncorrectable=g.get("ecc_uncorrectable"),
            remap_pending=bool(g.get("remap_pending", False)),
            xids=tuple(int(x) for x in g.get("xids", ())),
            temperature_c=g.get("temperature_c"),
            slowdown_temp_c=g.get("slowdown_temp_c"),
            throttle_reasons=tuple(str(r) for r in g.get("throttle_reasons", ())),
        )
        for g in data.get("gpus", ())
    )
    peers = tuple(
        Peer(node=str(p.get("node", "")), rtt_ms=p.get("rtt_ms"), loss=p.get("loss")) for p in data.get("peers", ())
    )
    return Sample(at=at, gpus=gpus, peers=peers)


def evidence(findings_: Iterable[Finding]) -> list[dict[str, Any]]:
    return [{"rule": f.rule, "at": f.at, "message": f.message, **f.evidence} for f in findings_]
