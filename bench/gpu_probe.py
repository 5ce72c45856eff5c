"""Print what the NVML GPU adapter reads on this machine, field by field, and which NVML calls are unsupported.

    .venv/bin/python bench/gpu_probe.py [--record tests/agents/adapters/fixtures/nvml_<name>.json] [--json]

--record saves every NVML answer in the fixture format the adapter tests replay (any *.json there is picked up).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pynvml

from agents.signals.gpu.nvml import FIELDS, NvmlGpuSource
from agents.signals.gpu.nvml_record import RecordingNvml, ReplayNvml

# GpuState attributes shown for each adapter field
_SHOW = {
    "uuid": ["uuid"], "name": ["name"], "memory": ["memory_total_bytes", "memory_used_bytes"],
    "utilization": ["utilization_gpu", "utilization_memory"], "temperature": ["temperature_c"],
    "slowdown_temp": ["slowdown_temp_c"], "power": ["power_w"], "power_limit": ["power_limit_w"],
    "ecc_corrected_volatile": ["ecc_corrected_volatile"], "ecc_uncorrected_volatile": ["ecc_uncorrected_volatile"],
    "ecc_corrected_aggregate": ["ecc_corrected_aggregate"], "ecc_uncorrected_aggregate": ["ecc_uncorrected_aggregate"],
    "retired_pages": ["retired_pages"], "remapped_rows": ["remapped_rows_uncorrectable", "remapped_rows_pending"],
    "pcie_replays": ["pcie_replays"], "nvlink_errors": ["nvlink_errors"], "clock_event_reasons": ["throttle_reasons"],
    "xid_events": ["xid_events"], "mig": ["mig_profile", "parent_uuid"],
}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", type=Path, help="write the NVML answers as a replay fixture")
    ap.add_argument("--json", action="store_true", help="also print the GpuStates as JSON")
    ap.add_argument("--replay", type=Path, help="read a recorded fixture instead of this machine's NVML")
    args = ap.parse_args()
    rec: RecordingNvml | ReplayNvml = ReplayNvml(args.replay) if args.replay else RecordingNvml(pynvml)
    try:
        source = NvmlGpuSource(rec)
    except pynvml.NVMLError as e:
        print(f"NVML not available here: {e}")
        print("summary: gpus=0 nvml=unavailable")
        return 1
    t0 = time.perf_counter()
    gpus = source.read()
    read_ms = (time.perf_counter() - t0) * 1000
    status = dict(source.field_status)
    if isinstance(rec, ReplayNvml):
        driver, nvml_version = str(rec.meta.get("driver", "?")), str(rec.meta.get("nvml", "?"))
    else:
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            nvml_version = pynvml.nvmlSystemGetNVMLVersion()
        except pynvml.NVMLError:
            driver = nvml_version = "?"
    source.close()

    print(f"driver {driver}  NVML {nvml_version}  host {platform.node()}  one read: {read_ms:.1f} ms\n")
    for g in gpus:
        title = f"GPU {g.index} {g.name}" + (f"  MIG {g.mig_profile} of {g.parent_uuid}" if g.mig_profile else "")
        print(title)
        print(f"  {'field':<27} {'status':<34} value")
        for fieldname in FIELDS:
            st = "ok" if fieldname in ("uuid",) else status.get((g.index, fieldname), "not called")
            if g.mig_profile and fieldname not in ("uuid", "name", "memory", "mig"):
                copied = any(getattr(g, a) not in (None, []) for a in _SHOW[fieldname])
                st = "from parent GPU" if copied else "not per MIG device"
            values = ", ".join(f"{a}={getattr(g, a)!r}" for a in _SHOW[fieldname])
            print(f"  {fieldname:<27} {st:<34} {values}")
        print()
    failed = sorted(k for k, v in rec.calls.items() if "error" in v and not k.startswith("nvmlEventSetWait"))
    print("NVML calls that returned an error:")
    for k in failed:
        code = rec.calls[k]["error"]
        print(f"  {k:<70} {pynvml.NVMLError(code)} ({code})")
    if not failed:
        print("  none")
    if args.json:
        print(json.dumps([asdict(g) for g in gpus], indent=1))
    if args.record and isinstance(rec, RecordingNvml):
        rec.save(args.record, {"driver": driver, "nvml": nvml_version, "host": platform.node(),
                               "origin": "recorded by bench/gpu_probe.py", "recorded_at": time.time()})  # fmt: skip
        print(f"\nrecorded {len(rec.calls)} NVML answers to {args.record}")
    unsupported = sum(1 for v in status.values() if v == "unsupported")
    errors = sum(1 for v in status.values() if v.startswith("error"))
    mig = sum(1 for g in gpus if g.mig_profile)
    print(f"summary: gpus={len(gpus) - mig} mig_devices={mig} unsupported_fields={unsupported} "
          f"field_errors={errors} read_ms={read_ms:.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
