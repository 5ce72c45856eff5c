"""Emulated GPUs for nodes without one: H100, H200, A100, L40S and MIG slices, with injectable faults (ECC, Xid,
thermal, throttle) so that quarantine, scoring and placement can be exercised anywhere.

Readings are deterministic for a seed: utilisation follows `set_load` (or stays idle) with a little seeded jitter,
temperature and power follow utilisation. Xid events are delivered once, like NVML's event queue.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from agents.signals.types import GpuState

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class GpuModel:
    product: str
    memory_bytes: int
    power_limit_w: float
    idle_power_w: float
    slowdown_temp_c: float
    idle_temp_c: float
    nvlink: bool


# Typical figures for each product (nvidia-smi -q of these boards); NVML reports slightly less memory than the label.
MODELS: dict[str, GpuModel] = {
    "h100": GpuModel("NVIDIA H100 80GB HBM3", 81559 * 1024**2, 700.0, 70.0, 90.0, 32.0, True),
    "h200": GpuModel("NVIDIA H200", 143771 * 1024**2, 700.0, 75.0, 90.0, 32.0, True),
    "a100": GpuModel("NVIDIA A100-SXM4-80GB", 81920 * 1024**2, 400.0, 55.0, 89.0, 30.0, True),
    "a100-40gb": GpuModel("NVIDIA A100-SXM4-40GB", 40960 * 1024**2, 400.0, 50.0, 89.0, 30.0, True),
    "l40s": GpuModel("NVIDIA L40S", 46068 * 1024**2, 350.0, 35.0, 88.0, 28.0, False),
    "l40": GpuModel("NVIDIA L40", 46068 * 1024**2, 300.0, 33.0, 88.0, 28.0, False),
}
_ALIASES = {"h100-80gb": "h100", "a100-80gb": "a100", "h200-141gb": "h200"}
# MIG profile -> memory in GiB for A100/H100 80GB (NVIDIA MIG user guide)
MIG_PROFILES = {"1g.10gb": 10, "1g.20gb": 20, "2g.20gb": 20, "3g.40gb": 40, "4g.40gb": 40, "7g.80gb": 80}
_SPEC = re.compile(r"^(?P<base>[a-z0-9-]+?)(?::mig-(?P<mig>\d+g\.\d+gb))?$")
FAULTS = ("ecc", "xid", "thermal", "throttle", "remap")


def parse_spec(spec: str) -> tuple[str, str]:
    """'h100' -> ('h100', ''); 'h100:mig-1g.10gb' -> ('h100', '1g.10gb'); bad names raise ValueError."""
    m = _SPEC.match(spec.strip().lower())
    if not m:
        raise ValueError(f"bad emulated GPU profile {spec!r}: expected e.g. 'h100' or 'h100:mig-1g.10gb'")
    base = _ALIASES.get(m.group("base"), m.group("base"))
    if base not in MODELS:
        raise ValueError(f"unknown emulated GPU {m.group('base')!r}; known: {', '.join(sorted(MODELS))}")
    mig = m.group("mig") or ""
    if mig:
        if base not in ("h100", "a100"):
            raise ValueError(f"MIG profiles are emulated for h100 and a100, not {base!r}")
        if mig not in MIG_PROFILES:
            raise ValueError(f"unknown MIG profile {mig!r}; known: {', '.join(MIG_PROFILES)}")
    return base, mig


def _uuid(seed: int, node: str, i: int, prefix: str = "GPU") -> str:
    h = hashlib.sha1(f"{seed}/{node}/{i}/{prefix}".encode()).hexdigest()
    return f"{prefix}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclass
class _Device:
    spec: str
    base: str
    mig: str
    uuid: str
    parent_uuid: str
    index: int
    load: float = 0.0
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    ecc_uncorrected_aggregate: int = 0
    remapped_uncorrectable: int = 0
    remap_pending: bool = False
    pending_xids: list[int] = field(default_factory=list)
    thermal: bool = False
    throttle: bool = False
    pcie_replays: int = 0


class EmulatedGpuSource:
    """A fixed set of emulated GPUs; MIG entries become slices of one emulated parent per physical index."""

    def __init__(self, profiles: list[str] | None = None, *, seed: int = 0, node: str = "node") -> None:
        specs = profiles if profiles is not None else ["h100"]
        if not specs:
            raise ValueError("an emulated GPU source needs at least one profile")
        self.seed = seed
        self._rng = random.Random(seed)
        self.devices: list[_Device] = []
        for i, spec in enumerate(specs):
            base, mig = parse_spec(spec)
            parent = _uuid(seed, node, i)
            uuid = _uuid(seed, node, i, "MIG") if mig else parent
            self.devices.append(_Device(spec, base, mig, uuid, parent if mig else "", i))
        self._closed = False

    # -- control -----------------------------------------------------------------------------------------------
    def _device(self, index: int) -> _Device:
        if not 0 <= index < len(self.devices):
            raise ValueError(f"no emulated GPU {index}; there are {len(self.devices)}")
        return self.devices[index]

    def set_load(self, index: int, utilization: float) -> None:
        """Utilisation in percent (0..100) that the next readings report."""
        if not 0.0 <= utilization <= 100.0:
            raise ValueError(f"utilization must be within 0..100, got {utilization}")
        self._device(index).load = utilization

    def inject(self, fault: str, index: int = 0) -> None:
        """Inject 'ecc', 'xid N' (or 'xid:N'), 'thermal', 'throttle' or 'remap' on one GPU."""
        d = self._device(index)
        kind, _, arg = fault.strip().lower().replace(":", " ").partition(" ")
        if kind == "ecc":
            d.ecc_uncorrected += 1
            d.ecc_uncorrected_aggregate += 1
            d.ecc_corrected += 3
        elif kind == "xid":
            try:
                code = int(arg) if arg else 79
            except ValueError:
                raise ValueError(f"bad Xid fault {fault!r}: expected 'xid N' with a number") from None
            d.pending_xids.append(code)
        elif kind == "thermal":
            d.thermal = True
        elif kind == "throttle":
            d.throttle = True
        elif kind == "remap":
            d.remapped_uncorrectable += 1
            d.remap_pending = True
        else:
            raise ValueError(f"unknown GPU fault {fault!r}; known: {', '.join(FAULTS)}")

    def clear(self, index: int | None = None) -> None:
        """Clear thermal/throttle conditions and pending remaps (ECC counters stay, as on hardware)."""
        for d in self.devices if index is None else [self._device(index)]:
            d.thermal = d.throttle = d.remap_pending = False
            d.ecc_uncorrected = 0  # volatile counters reset as after a driver reload
            d.ecc_corrected = 0
            d.pending_xids.clear()

    # -- GpuSource ---------------------------------------------------------------------------------------------
    def read(self) -> list[GpuState]:
        if self._closed:
            raise RuntimeError("the emulated GPU source is closed")
        return [self._read(d) for d in self.devices]

    def _read(self, d: _Device) -> GpuState:
        model = MODELS[d.base]
        jitter = self._rng.uniform(-1.0, 1.0)
        util = max(0.0, min(100.0, d.load + (jitter if d.load else 0.0)))
        frac = MIG_PROFILES[d.mig] * GIB / (80 * GIB) if d.mig else 1.0
        memory_total = int(MIG_PROFILES[d.mig] * GIB * 0.975) if d.mig else model.memory_bytes
        temp = model.idle_temp_c + (model.slowdown_temp_c - 15 - model.idle_temp_c) * util / 100 + jitter * 0.5
        reasons: list[str] = [] if util else ["gpu_idle"]
        if d.thermal:
            temp = model.slowdown_temp_c + 3.0
            reasons = ["sw_thermal_slowdown", "hw_thermal_slowdown"]
        if d.throttle:
            reasons = sorted({*reasons, "sw_power_cap", "hw_slowdown"} - {"gpu_idle"})
        power = model.idle_power_w + (model.power_limit_w - model.idle_power_w) * util / 100
        xids, d.pending_xids = d.pending_xids, []
        return GpuState(
            uuid=d.uuid,
            index=d.index,
            name=f"{model.product} MIG {d.mig}" if d.mig else model.product,
            memory_total_bytes=memory_total,
            memory_used_bytes=int(memory_total * (0.02 + 0.85 * util / 100)),
            utilization_gpu=None if d.mig else round(util, 1),  # NVML has no utilisation per MIG device
            utilization_memory=None if d.mig else round(util * 0.6, 1),
            temperature_c=round(temp, 1),
            slowdown_temp_c=model.slowdown_temp_c,
            power_w=None if d.mig else round(power * (1 if not d.throttle else 0.7), 1),
            power_limit_w=None if d.mig else model.power_limit_w,
            ecc_corrected_volatile=d.ecc_corrected,
            ecc_uncorrected_volatile=d.ecc_uncorrected,
            ecc_corrected_aggregate=d.ecc_corrected,
            ecc_uncorrected_aggregate=d.ecc_uncorrected_aggregate,
            retired_pages=None,  # Ampere and later remap rows instead of retiring pages
            remapped_rows_uncorrectable=d.remapped_uncorrectable,
            remapped_rows_pending=d.remap_pending,
            pcie_replays=d.pcie_replays,
            nvlink_errors=0 if model.nvlink and frac == 1.0 else None,
            throttle_reasons=reasons,
            xid_events=xids,
            mig_profile=d.mig,
            parent_uuid=d.parent_uuid,
        )

    def close(self) -> None:
        self._closed = True
