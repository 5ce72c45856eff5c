"""GPU source on NVML through nvidia-ml-py: utilisation, memory, thermals, power, ECC, retired pages and remapped
rows, PCIe replays, NVLink errors, clock-event reasons, Xid events and MIG devices.

Every field is read on its own: a field the GPU or driver does not support is None (and noted in `field_status`),
never a made-up zero, and one failing call never hides the others.
"""

from __future__ import annotations

import importlib
import logging
import re
from typing import Any

from agents.signals.types import GpuState

log = logging.getLogger("infermesh.gpu.nvml")

_MIG_NAME = re.compile(r"MIG\s+(\S+)\s*$")
# clock-event reason bit -> name (nvml.h nvmlClocksEventReason*; the older "throttle" names share the bits)
_REASONS = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
]
FIELDS = (
    "uuid", "name", "memory", "utilization", "temperature", "slowdown_temp", "power", "power_limit",
    "ecc_corrected_volatile", "ecc_uncorrected_volatile", "ecc_corrected_aggregate", "ecc_uncorrected_aggregate",
    "retired_pages", "remapped_rows", "pcie_replays", "nvlink_errors", "clock_event_reasons", "xid_events", "mig",
)  # fmt: skip


def reason_names(mask: int) -> list[str]:
    return [name for bit, name in _REASONS if mask & bit]


class NvmlGpuSource:
    """Reads every GPU (and MIG device) that NVML sees. `nvml` is the pynvml module, or a recording of it."""

    def __init__(self, nvml: Any = None, *, xid_events: bool = True) -> None:
        self.nv = nvml if nvml is not None else importlib.import_module("pynvml")
        self.nv.nvmlInit()
        self.field_status: dict[tuple[int, str], str] = {}
        self._closed = False
        count = self.nv.nvmlDeviceGetCount()
        self._handles = [self.nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._uuids = [self._text(self.nv.nvmlDeviceGetUUID(h)) for h in self._handles]
        self._event_set: Any = None
        if xid_events:
            self._register_xid()

    # -- helpers ---------------------------------------------------------------------------------------------
    @staticmethod
    def _text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    def _call(self, index: int, fieldname: str, fn: str, *args: Any) -> Any:
        """One NVML call; an NVML error leaves the field unknown and is noted, nothing else is affected."""
        try:
            result = getattr(self.nv, fn)(*args)
        except self.nv.NVMLError as e:
            code = getattr(e, "value", None)
            unsupported = code in (self.nv.NVML_ERROR_NOT_SUPPORTED, self.nv.NVML_ERROR_FUNCTION_NOT_FOUND)
            self.field_status[(index, fieldname)] = "unsupported" if unsupported else f"error: {e}"
            return None
        self.field_status.setdefault((index, fieldname), "ok")
        return result

    def _register_xid(self) -> None:
        try:
            self._event_set = self.nv.nvmlEventSetCreate()
        except self.nv.NVMLError as e:
            log.warning("NVML event set unavailable, no Xid events: %s", e)
            return
        for i, h in enumerate(self._handles):
            self._call(i, "xid_events", "nvmlDeviceRegisterEvents", h, self.nv.nvmlEventTypeXidCriticalError,
                       self._event_set)  # fmt: skip

    def _drain_xid(self) -> dict[str, list[int]]:
        """Xid events queued since the last read, per GPU UUID (a wait of 0 ms returns at once)."""
        out: dict[str, list[int]] = {}
        if self._event_set is None:
            return out
        for _ in range(1024):  # bounded: a storm of events must not stall a read
            try:
                ev = self.nv.nvmlEventSetWait_v2(self._event_set, 0)
            except self.nv.NVMLError:
                break  # NVML_ERROR_TIMEOUT: the queue is empty
            if ev.eventType != self.nv.nvmlEventTypeXidCriticalError:
                continue
            try:
                uuid = self._text(self.nv.nvmlDeviceGetUUID(ev.device))
            except self.nv.NVMLError:
                continue
            out.setdefault(uuid, []).append(int(ev.eventData))
        return out

    # -- reading ---------------------------------------------------------------------------------------------
    def read(self) -> list[GpuState]:
        if self._closed:
            raise RuntimeError("the NVML source is closed")
        xids = self._drain_xid()
        out: list[GpuState] = []
        for i, h in enumerate(self._handles):
            gpu = self._read_device(i, h, self._uuids[i])
            gpu.xid_events = xids.get(gpu.uuid, [])
            out.append(gpu)
            out.extend(self._read_mig(i, h, gpu))
        return out

    def _read_device(self, i: int, h: Any, uuid: str) -> GpuState:
        nv = self.nv
        name = self._call(i, "name", "nvmlDeviceGetName", h)
        st = GpuState(uuid=uuid, index=i, name=self._text(name) if name is not None else "")
        mem = self._call(i, "memory", "nvmlDeviceGetMemoryInfo", h)
        if mem is not None:
            st.memory_total_bytes, st.memory_used_bytes = int(mem.total), int(mem.used)
        util = self._call(i, "utilization", "nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            st.utilization_gpu, st.utilization_memory = float(util.gpu), float(util.memory)
        temp = self._call(i, "temperature", "nvmlDeviceGetTemperature", h, nv.NVML_TEMPERATURE_GPU)
        st.temperature_c = None if temp is None else float(temp)
        slow = self._call(i, "slowdown_temp", "nvmlDeviceGetTemperatureThreshold", h,
                          nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)  # fmt: skip
        st.slowdown_temp_c = None if slow is None else float(slow)
        power = self._call(i, "power", "nvmlDeviceGetPowerUsage", h)  # milliwatts
        st.power_w = None if power is None else power / 1000.0
        limit = self._call(i, "power_limit", "nvmlDeviceGetEnforcedPowerLimit", h)
        st.power_limit_w = None if limit is None else limit / 1000.0
        for fieldname, err_type, counter in (
            ("ecc_corrected_volatile", nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC),
            ("ecc_uncorrected_volatile", nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC),
            ("ecc_corrected_aggregate", nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_AGGREGATE_ECC),
            ("ecc_uncorrected_aggregate", nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_AGGREGATE_ECC),
        ):
            v = self._call(i, fieldname, "nvmlDeviceGetTotalEccErrors", h, err_type, counter)
            setattr(st, fieldname, None if v is None else int(v))
        # pages retired by ECC (before Ampere) and rows remapped (Ampere and later)
        sbe = self._call(i, "retired_pages", "nvmlDeviceGetRetiredPages", h,
                         nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)  # fmt: skip
        dbe = self._call(i, "retired_pages", "nvmlDeviceGetRetiredPages", h,
                         nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)  # fmt: skip
        if sbe is not None and dbe is not None:
            st.retired_pages = len(sbe) + len(dbe)
        rows = self._call(i, "remapped_rows", "nvmlDeviceGetRemappedRows", h)
        if rows is not None:
            _corr, unc, pending, _failed = rows
            st.remapped_rows_uncorrectable, st.remapped_rows_pending = int(unc), bool(pending)
        else:
            pending_pages = self._call(i, "retired_pages", "nvmlDeviceGetRetiredPagesPendingStatus", h)
            if pending_pages is not None:
                st.remapped_rows_pending = bool(pending_pages)
        replays = self._call(i, "pcie_replays", "nvmlDeviceGetPcieReplayCounter", h)
        st.pcie_replays = None if replays is None else int(replays)
        st.nvlink_errors = self._nvlink_errors(i, h)
        mask = self._call(i, "clock_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons", h)
        if mask is None and self.field_status.get((i, "clock_event_reasons")) == "unsupported":
            self.field_status.pop((i, "clock_event_reasons"))
            mask = self._call(i, "clock_event_reasons", "nvmlDeviceGetCurrentClocksThrottleReasons", h)
        st.throttle_reasons = [] if mask is None else reason_names(int(mask))
        return st

    def _nvlink_errors(self, i: int, h: Any) -> int | None:
        nv = self.nv
        total, active = 0, 0
        for link in range(nv.NVML_NVLINK_MAX_LINKS):
            try:
                state = nv.nvmlDeviceGetNvLinkState(h, link)
            except nv.NVMLError:
                break  # past the last link, or no NVLink at all
            if state != nv.NVML_FEATURE_ENABLED:
                continue
            active += 1
            for counter in (nv.NVML_NVLINK_ERROR_DL_REPLAY, nv.NVML_NVLINK_ERROR_DL_RECOVERY,
                            nv.NVML_NVLINK_ERROR_DL_CRC_FLIT, nv.NVML_NVLINK_ERROR_DL_CRC_DATA):  # fmt: skip
                v = self._call(i, "nvlink_errors", "nvmlDeviceGetNvLinkErrorCounter", h, link, counter)
                total += int(v or 0)
        if active == 0:
            self.field_status[(i, "nvlink_errors")] = "unsupported"
            return None
        return total

    def _read_mig(self, i: int, h: Any, parent: GpuState) -> list[GpuState]:
        nv = self.nv
        mode = self._call(i, "mig", "nvmlDeviceGetMigMode", h)
        if mode is None or int(mode[0]) != nv.NVML_DEVICE_MIG_ENABLE:
            return []
        count = self._call(i, "mig", "nvmlDeviceGetMaxMigDeviceCount", h) or 0
        out = []
        for j in range(int(count)):
            try:
                mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
            except nv.NVMLError:
                continue  # no MIG device in this slot
            try:
                uuid = self._text(nv.nvmlDeviceGetUUID(mh))
            except nv.NVMLError:
                continue
            name = self._call(i, "mig", "nvmlDeviceGetName", mh)
            name_s = self._text(name) if name is not None else ""
            m = _MIG_NAME.search(name_s)
            profile = m.group(1) if m else ""
            if not profile:
                attrs = self._call(i, "mig", "nvmlDeviceGetAttributes_v2", mh)
                if attrs is not None:
                    profile = f"{attrs.gpuInstanceSliceCount}g.{round(attrs.memorySizeMB / 1024)}gb"
            mig = GpuState(
                uuid=uuid, index=i, name=name_s or parent.name, mig_profile=profile, parent_uuid=parent.uuid,
                # a slice shares the physical GPU's thermals, ECC and clocks: it inherits their health
                temperature_c=parent.temperature_c, slowdown_temp_c=parent.slowdown_temp_c,
                ecc_uncorrected_volatile=parent.ecc_uncorrected_volatile,
                ecc_corrected_volatile=parent.ecc_corrected_volatile,
                remapped_rows_pending=parent.remapped_rows_pending,
                throttle_reasons=list(parent.throttle_reasons), xid_events=list(parent.xid_events),
            )  # fmt: skip
            mem = self._call(i, "mig", "nvmlDeviceGetMemoryInfo", mh)
            if mem is not None:
                mig.memory_total_bytes, mig.memory_used_bytes = int(mem.total), int(mem.used)
            out.append(mig)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._event_set is not None:
                self.nv.nvmlEventSetFree(self._event_set)
        finally:
            self.nv.nvmlShutdown()
