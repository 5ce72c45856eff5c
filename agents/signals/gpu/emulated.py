"""Emulated GPUs for nodes without one: H100, H200, A100, L40S and MIG slices, with injectable faults (ECC, Xid,
thermal, throttle) so that quarantine, scoring and placement can be exercised anywhere.

A GPU bound to a runtime (`follow`, fed by the agent from each scrape of that runtime) is one device with it:
utilisation follows the runtime's running and waiting sequences, memory holds the model's weights plus the KV cache
in use, power follows utilisation, and the temperature approaches the steady state of that power with the cooling's
thermal time constant (first-order lag). At the slowdown temperature the clocks drop (thermal slowdown, with
hardware-like hysteresis), so a board with poor cooling (`cooling: hot`) under sustained load runs hot and throttled
by itself, as the quarantine rules expect to see it. Without a runtime, utilisation follows `set_load` (or stays
idle). Readings are deterministic for a seed and a clock. Xid events are delivered once, like NVML's event queue.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.emulator.profiles import WEIGHTS_8B_BF16
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
    max_sm_clock_mhz: float


# Typical figures for each product (nvidia-smi -q of these boards); NVML reports slightly less memory than the label.
MODELS: dict[str, GpuModel] = {
    "h100": GpuModel("NVIDIA H100 80GB HBM3", 81559 * 1024**2, 700.0, 70.0, 90.0, 32.0, True, 1980.0),
    "h200": GpuModel("NVIDIA H200", 143771 * 1024**2, 700.0, 75.0, 90.0, 32.0, True, 1980.0),
    "a100": GpuModel("NVIDIA A100-SXM4-80GB", 81920 * 1024**2, 400.0, 55.0, 89.0, 30.0, True, 1410.0),
    "a100-40gb": GpuModel("NVIDIA A100-SXM4-40GB", 40960 * 1024**2, 400.0, 50.0, 89.0, 30.0, True, 1410.0),
    "l40s": GpuModel("NVIDIA L40S", 46068 * 1024**2, 350.0, 35.0, 88.0, 28.0, False, 2520.0),
    "l40": GpuModel("NVIDIA L40", 46068 * 1024**2, 300.0, 33.0, 88.0, 28.0, False, 2490.0),
}


@dataclass(frozen=True, slots=True)
class Cooling:
    """How a board sheds heat: its steady temperature at the power limit (relative to the slowdown temperature)
    and the time constant of the first-order lag towards the steady state of the present power."""

    full_load_below_slowdown_c: float
    tau_s: float


# "normal": a well-cooled board settles ~15 C under its slowdown temperature at full power (what nvidia-smi shows
# on healthy SXM nodes under sustained load). "hot": blocked airflow or a failed fan, so full power settles 12 C
# above it. The time constants are assumptions of the emulator (no published figure in the calibration sources):
# tens of seconds for a heatsink, shorter where the cooling is poor.
COOLING: dict[str, Cooling] = {"normal": Cooling(15.0, 30.0), "hot": Cooling(-12.0, 10.0)}
THROTTLE_CLOCK = 0.85  # share of the maximum SM clock under thermal slowdown
THROTTLE_RELEASE_C = 5.0  # hysteresis: clocks recover this far below the slowdown temperature
KV_OVERHEAD_BYTES = 2e9  # activations and CUDA graphs besides weights and KV (gpu_profiles.md section 2)
SATURATION_SEQS = 12.0  # running sequences at which SM activity reaches ~63% (1 - 1/e); a queue means 100%
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
    temp_c: float | None = None  # the thermal state; None until the first reading
    thermal_slowdown: bool = False  # clocks reduced by temperature (with hysteresis)
    at: float | None = None  # clock of the last reading
    # the runtime this GPU serves (None: no runtime bound, utilisation follows `set_load`)
    running: float | None = None
    waiting: float = 0.0
    kv_usage: float = 0.0
    share: float = 1.0  # this GPU's share of the runtime's weights and KV cache (1/N for tensor parallelism)


def check_fault(fault: str) -> None:
    """Refuse a fault name `inject` would refuse, with the same message."""
    kind, _, arg = fault.strip().lower().replace(":", " ").partition(" ")
    if kind not in FAULTS:
        raise ValueError(f"unknown GPU fault {fault!r}; known: {', '.join(FAULTS)}")
    if kind == "xid" and arg and not arg.strip().isdigit():
        raise ValueError(f"bad Xid fault {fault!r}: expected 'xid N' with a number")


@dataclass(slots=True)
class _Drill:
    fault: str
    index: int
    at_s: float
    clear_after_s: float | None
    injected: bool = False
    cleared: bool = False


class EmulatedGpuSource:
    """A fixed set of emulated GPUs; MIG entries become slices of one emulated parent per physical index."""

    def __init__(
        self,
        profiles: list[str] | None = None,
        *,
        seed: int = 0,
        node: str = "node",
        cooling: str = "normal",
        thermal_tau_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        specs = profiles if profiles is not None else ["h100"]
        if not specs:
            raise ValueError("an emulated GPU source needs at least one profile")
        if cooling not in COOLING:
            raise ValueError(f"unknown cooling {cooling!r}; known: {', '.join(COOLING)}")
        base_cooling = COOLING[cooling]
        if thermal_tau_s is not None:
            if isinstance(thermal_tau_s, bool) or not isinstance(thermal_tau_s, int | float) or thermal_tau_s <= 0:
                raise ValueError(f"thermal_tau_s must be a positive number of seconds, got {thermal_tau_s!r}")
            base_cooling = Cooling(base_cooling.full_load_below_slowdown_c, float(thermal_tau_s))
        self.cooling = base_cooling
        self.clock = clock
        self.seed = seed
        self._rng = random.Random(seed)
        self.devices: list[_Device] = []
        for i, spec in enumerate(specs):
            base, mig = parse_spec(spec)
            parent = _uuid(seed, node, i)
            uuid = _uuid(seed, node, i, "MIG") if mig else parent
            self.devices.append(_Device(spec, base, mig, uuid, parent if mig else "", i))
        self._closed = False
        self._t0 = clock()
        self._drills: list[_Drill] = []

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

    def follow(
        self, index: int, *, running: float, waiting: float = 0.0, kv_usage: float = 0.0, share: float = 1.0
    ) -> None:
        """Bind GPU `index` to the load of the runtime it serves, as last scraped: running and waiting sequences,
        KV-cache use (0..1) and this GPU's share of the runtime (1/N under tensor parallelism)."""
        d = self._device(index)
        d.running = max(0.0, float(running))
        d.waiting = max(0.0, float(waiting))
        d.kv_usage = min(1.0, max(0.0, float(kv_usage)))
        d.share = min(1.0, max(0.0, float(share)))

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

    def schedule(self, fault: str, index: int = 0, at_s: float = 0.0, clear_after_s: float | None = None) -> None:
        """A fault drill: inject `fault` on GPU `index` `at_s` seconds after the source started and, with
        `clear_after_s`, clear that GPU's conditions (as `clear`) that many seconds later."""
        self._device(index)
        check_fault(fault)
        if at_s < 0 or (clear_after_s is not None and clear_after_s < 0):
            raise ValueError(f"a scheduled fault needs at_s >= 0 and clear_after_s >= 0, got {at_s}, {clear_after_s}")
        self._drills.append(_Drill(fault, index, at_s, clear_after_s))

    def _run_drills(self) -> None:
        elapsed = self.clock() - self._t0
        for d in self._drills:
            if not d.injected and elapsed >= d.at_s:
                self.inject(d.fault, d.index)
                d.injected = True
            if d.injected and not d.cleared and d.clear_after_s is not None and elapsed >= d.at_s + d.clear_after_s:
                self.clear(d.index)
                d.cleared = True

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
        if self._drills:
            self._run_drills()
        return [self._read(d) for d in self.devices]

    def _utilization(self, d: _Device) -> float:
        if d.running is None:
            return d.load
        if d.waiting > 0:
            return 100.0  # the engine fills its whole token budget each iteration
        return 100.0 * (1.0 - math.exp(-d.running / SATURATION_SEQS))

    def _read(self, d: _Device) -> GpuState:
        model = MODELS[d.base]
        now = self.clock()
        jitter = self._rng.uniform(-1.0, 1.0)
        load = self._utilization(d)
        util = max(0.0, min(100.0, load + (jitter if load else 0.0)))
        frac = MIG_PROFILES[d.mig] * GIB / (80 * GIB) if d.mig else 1.0
        memory_total = int(MIG_PROFILES[d.mig] * GIB * 0.975) if d.mig else model.memory_bytes
        clock = THROTTLE_CLOCK if d.thermal_slowdown else 1.0
        busy = util / 100 * clock  # fewer cycles per second: less power for the same duty cycle
        idle_w = model.idle_power_w * frac
        power = idle_w + (model.power_limit_w * frac - idle_w) * busy
        # first-order lag towards the steady temperature of this power
        full_c = model.slowdown_temp_c - self.cooling.full_load_below_slowdown_c
        steady = model.idle_temp_c + (full_c - model.idle_temp_c) * busy
        if d.temp_c is None or d.at is None:
            d.temp_c = model.idle_temp_c
        else:
            dt = max(0.0, now - d.at)
            d.temp_c = steady + (d.temp_c - steady) * math.exp(-dt / self.cooling.tau_s)
        d.at = now
        if d.temp_c >= model.slowdown_temp_c:
            d.thermal_slowdown = True
        elif d.temp_c < model.slowdown_temp_c - THROTTLE_RELEASE_C:
            d.thermal_slowdown = False
        temp = d.temp_c + jitter * 0.5
        reasons: list[str] = [] if util else ["gpu_idle"]
        if d.thermal_slowdown:
            reasons = ["sw_thermal_slowdown"]
        sm_clock = model.max_sm_clock_mhz * (THROTTLE_CLOCK if d.thermal_slowdown else 1.0)
        if d.thermal:
            temp = model.slowdown_temp_c + 3.0
            reasons = ["sw_thermal_slowdown", "hw_thermal_slowdown"]
            sm_clock = model.max_sm_clock_mhz * THROTTLE_CLOCK
        if d.throttle:
            reasons = sorted({*reasons, "sw_power_cap", "hw_slowdown"} - {"gpu_idle"})
            sm_clock = model.max_sm_clock_mhz * 0.7
        if d.running is None:
            used = memory_total * (0.02 + 0.85 * util / 100)
        else:
            # weights stay loaded while the runtime runs; the KV cache fills with the sequences it holds
            weights = WEIGHTS_8B_BF16 * d.share
            kv_budget = max(0.0, 0.9 * memory_total - weights - KV_OVERHEAD_BYTES * d.share)
            resident = 0.02 * memory_total + weights + KV_OVERHEAD_BYTES * d.share
            used = min(memory_total, resident + d.kv_usage * kv_budget)
        xids, d.pending_xids = d.pending_xids, []
        return GpuState(
            uuid=d.uuid,
            index=d.index,
            name=f"{model.product} MIG {d.mig}" if d.mig else model.product,
            memory_total_bytes=memory_total,
            memory_used_bytes=int(used),
            utilization_gpu=None if d.mig else round(util, 1),  # NVML has no utilisation per MIG device
            utilization_memory=None if d.mig else round(util * 0.6, 1),
            temperature_c=round(temp, 1),
            slowdown_temp_c=model.slowdown_temp_c,
            power_w=None if d.mig else round(power * (1 if not d.throttle else 0.7), 1),
            sm_clock_mhz=round(sm_clock, 0),
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
