"""GPU adapters: NVML (nvidia-ml-py), dcgm-exporter scrape, and emulated GPUs, all behind one `GpuSource`."""

from __future__ import annotations

from typing import Any, Protocol

from agents.signals.types import GpuState


class GpuSource(Protocol):
    def read(self) -> list[GpuState]: ...
    def close(self) -> None: ...


KINDS = ("nvml", "dcgm", "emulated")


def make_gpu_source(kind: str, **options: Any) -> GpuSource:
    """Build a source. nvml: xid_events (bool), nvml (a pynvml stand-in). dcgm: url, timeout_s.
    emulated: profiles (list such as ["h100", "a100-80gb", "l40s", "h100:mig-1g.10gb"]), seed, node, faults
    (a list of "FAULT@INDEX" strings or {"index": i, "fault": "xid 79"} objects, injected at start; an object with
    "at_s" is injected that many seconds after start instead, and with "clear_after_s" cleared that much later: a
    fault drill), cooling ("normal" or "hot") and thermal_tau_s (overrides the cooling's thermal time constant)."""
    if kind == "nvml":
        from agents.signals.gpu.nvml import NvmlGpuSource

        _only(kind, options, {"xid_events", "nvml"})
        return NvmlGpuSource(options.get("nvml"), xid_events=bool(options.get("xid_events", True)))
    if kind == "dcgm":
        from agents.signals.gpu.dcgm import DcgmExporterSource

        _only(kind, options, {"url", "timeout_s"})
        return DcgmExporterSource(**options)
    if kind == "emulated":
        from agents.signals.gpu.emulated import EmulatedGpuSource

        _only(kind, options, {"profiles", "seed", "node", "faults", "cooling", "thermal_tau_s"})
        faults = options.pop("faults", None) or []
        source = EmulatedGpuSource(**options)
        for i, f in enumerate(faults):
            if isinstance(f, dict) and ("at_s" in f or "clear_after_s" in f):
                at, after = f.get("at_s", 0.0), f.get("clear_after_s")
                for name, value in (("at_s", at), ("clear_after_s", after)):
                    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                        raise ValueError(f"faults[{i}].{name} must be a number of seconds, got {value!r}")
                source.schedule(str(f.get("fault", "")), int(f.get("index", 0)), float(at), after)
            elif isinstance(f, dict):
                source.inject(str(f.get("fault", "")), int(f.get("index", 0)))
            else:
                fault, _, index = str(f).partition("@")
                source.inject(fault, int(index or 0))
        return source
    raise ValueError(f"unknown GPU source kind {kind!r}; known: {', '.join(KINDS)}")


def _only(kind: str, options: dict[str, Any], allowed: set[str]) -> None:
    extra = set(options) - allowed
    if extra:
        raise ValueError(f"unknown option(s) for the {kind} GPU source: {', '.join(sorted(extra))}")


__all__ = ["KINDS", "GpuSource", "GpuState", "make_gpu_source"]
