"""GPU source that scrapes NVIDIA dcgm-exporter (its default counters, etc/default-counters.csv) into GpuStates.

Labels follow dcgm-exporter's renderer: `gpu`, `UUID` (or `uuid`), `device`, `modelName`, and `GPU_I_PROFILE` /
`GPU_I_ID` on MIG instances; both `Hostname` and the newer `hostname` are accepted. DCGM's "blank" sentinels
(int64 >= 0x7ffffffffffffff0, float64 >= 2^47: not supported / not found) mean unknown.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Callable

from agents.signals.gpu.nvml import reason_names
from agents.signals.runtime.exposition import parse_exposition
from agents.signals.types import GpuState

MIB = 1024 * 1024
_BLANK = 140737488355328.0  # DCGM_FP64_BLANK; every int64 blank value is larger still

# DCGM field -> (GpuState attribute, scale)
_SCALAR: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("utilization_gpu", 1.0),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("utilization_memory", 1.0),
    "DCGM_FI_DEV_GPU_TEMP": ("temperature_c", 1.0),
    "DCGM_FI_DEV_SLOWDOWN_TEMP": ("slowdown_temp_c", 1.0),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": ("power_limit_w", 1.0),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_FB_USED": ("memory_used_bytes", MIB),
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": ("pcie_replays", 1.0),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("ecc_corrected_volatile", 1.0),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("ecc_uncorrected_volatile", 1.0),
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": ("ecc_corrected_aggregate", 1.0),
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": ("ecc_uncorrected_aggregate", 1.0),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("remapped_rows_uncorrectable", 1.0),
}
_INT_ATTRS = {"memory_used_bytes", "pcie_replays", "ecc_corrected_volatile", "ecc_uncorrected_volatile",
              "ecc_corrected_aggregate", "ecc_uncorrected_aggregate", "remapped_rows_uncorrectable"}  # fmt: skip
_NVLINK = ("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
           "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL")  # fmt: skip
_RETIRED = ("DCGM_FI_DEV_RETIRED_SBE", "DCGM_FI_DEV_RETIRED_DBE")


def _known(v: float) -> bool:
    return not math.isnan(v) and v >= 0 and v < _BLANK


def parse_dcgm(text: str) -> list[GpuState]:
    """GpuStates from dcgm-exporter exposition text; raises MetricsParseError on text that is not exposition."""
    idx = parse_exposition(text)
    gpus: dict[tuple[str, str], GpuState] = {}
    memory_parts: dict[tuple[str, str], dict[str, float]] = {}
    nvlink: dict[tuple[str, str], float] = {}
    retired: dict[tuple[str, str], float] = {}

    def state(labels: dict[str, str]) -> tuple[tuple[str, str], GpuState] | None:
        uuid = labels.get("UUID") or labels.get("uuid") or ""
        if not uuid:
            return None
        gi = labels.get("GPU_I_ID", "")
        key = (uuid, gi)
        if key not in gpus:
            try:
                index = int(labels.get("gpu", "0"))
            except ValueError:
                index = 0
            profile = labels.get("GPU_I_PROFILE", "")
            gpus[key] = GpuState(
                uuid=f"{uuid}/gi{gi}" if gi else uuid, index=index, name=labels.get("modelName", ""),
                mig_profile=profile, parent_uuid=uuid if gi else "",
            )  # fmt: skip
        return key, gpus[key]

    for name in idx.names():
        if not name.startswith("DCGM_"):
            continue
        for s in idx.get(name):
            found = state(s.labels)
            if found is None:
                continue
            key, st = found
            v = s.value
            if not _known(v):
                continue
            if name in _SCALAR:
                attr, scale = _SCALAR[name]
                setattr(st, attr, int(v * scale) if attr in _INT_ATTRS else v * scale)
            elif name in _NVLINK:
                nvlink[key] = nvlink.get(key, 0.0) + v
            elif name in _RETIRED:
                retired[key] = retired.get(key, 0.0) + v
            elif name == "DCGM_FI_DEV_RETIRED_PENDING" or name == "DCGM_FI_DEV_ROW_REMAP_PENDING":
                st.remapped_rows_pending = bool(v) or bool(st.remapped_rows_pending)
            elif name == "DCGM_FI_DEV_XID_ERRORS":
                # the value of the last Xid seen (0: none); a gauge, not a queue of events
                st.xid_events = [int(v)] if v else []
            elif name in ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"):
                st.throttle_reasons = reason_names(int(v))
            if name in ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED"):
                memory_parts.setdefault(key, {})[name] = v
    for key, parts in memory_parts.items():
        if "DCGM_FI_DEV_FB_USED" in parts and "DCGM_FI_DEV_FB_FREE" in parts:
            total = sum(parts.values())  # used + free (+ reserved when exported)
            gpus[key].memory_total_bytes = int(total * MIB)
    for key, v in nvlink.items():
        gpus[key].nvlink_errors = int(v)
    for key, v in retired.items():
        gpus[key].retired_pages = int(v)
    return sorted(gpus.values(), key=lambda g: (g.index, g.uuid))


class DcgmExporterSource:
    """Scrapes a dcgm-exporter endpoint (default http://127.0.0.1:9400/metrics) on each read."""

    def __init__(self, url: str = "http://127.0.0.1:9400/metrics", timeout_s: float = 2.0,
                 fetch: Callable[[str, float], str] | None = None) -> None:  # fmt: skip
        self.url = url
        self.timeout_s = timeout_s
        self._fetch = fetch or _http_get

    def read(self) -> list[GpuState]:
        return parse_dcgm(self._fetch(self.url, self.timeout_s))

    def close(self) -> None:
        pass


class DcgmScrapeError(RuntimeError):
    """dcgm-exporter could not be reached or answered with an error."""


def _http_get(url: str, timeout_s: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body: bytes = resp.read()
            return body.decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DcgmScrapeError(f"GET {url}: {e}") from e
