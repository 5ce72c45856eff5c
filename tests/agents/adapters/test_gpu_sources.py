"""GPU sources: NVML against recorded answers (fixtures/), dcgm-exporter text, and emulated GPUs with faults."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pynvml
import pytest

from agents.signals.gpu import make_gpu_source
from agents.signals.gpu.dcgm import DcgmScrapeError, parse_dcgm
from agents.signals.gpu.emulated import EmulatedGpuSource
from agents.signals.gpu.nvml import NvmlGpuSource
from agents.signals.gpu.nvml_record import RecordingNvml, ReplayNvml
from agents.signals.runtime import MetricsParseError

HERE = Path(__file__).parent
FIXTURES = sorted((HERE / "fixtures").glob("nvml_*.json"))
ROOT = HERE.parents[2]


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_every_recording_reads_sane_states(fixture: Path) -> None:
    # any recording dropped here by bench/gpu_probe.py --record is checked the same way
    source = NvmlGpuSource(ReplayNvml(fixture))
    states = source.read()
    assert states
    for g in states:
        assert g.uuid.startswith(("GPU-", "MIG-")) and g.name
        if g.memory_total_bytes is not None:
            assert 0 <= (g.memory_used_bytes or 0) <= g.memory_total_bytes
        if g.utilization_gpu is not None:
            assert 0 <= g.utilization_gpu <= 100
        if g.temperature_c is not None and g.slowdown_temp_c is not None:
            assert g.thermal_margin_c == g.slowdown_temp_c - g.temperature_c
        assert g.mig_profile == "" or g.parent_uuid
    source.close()


def test_h100_recording_maps_every_field() -> None:
    source = make_gpu_source("nvml", nvml=ReplayNvml(HERE / "fixtures" / "nvml_h100_mig.json"))
    gpus = source.read()
    whole = [g for g in gpus if not g.mig_profile]
    migs = [g for g in gpus if g.mig_profile]
    assert [g.index for g in whole] == [0, 1]
    g0, g1 = whole
    assert g0.memory_total_bytes == 81559 * 1024**2 and g0.utilization_gpu == 97.0
    assert g0.power_w == pytest.approx(612.345) and g0.power_limit_w == 700.0  # milliwatts -> watts
    assert g0.thermal_margin_c == 23.0 and g0.throttle_reasons == [] and g0.nvlink_errors == 0
    assert g0.retired_pages is None  # Hopper remaps rows; retired pages are unsupported, not zero
    assert (g1.ecc_corrected_volatile, g1.ecc_uncorrected_volatile) == (12, 1)
    assert (g1.ecc_corrected_aggregate, g1.ecc_uncorrected_aggregate) == (37, 1)
    assert g1.remapped_rows_uncorrectable == 1 and g1.remapped_rows_pending is True
    assert g1.pcie_replays == 3 and g1.nvlink_errors == 7
    assert g1.throttle_reasons == ["sw_thermal_slowdown", "hw_thermal_slowdown"]
    assert g1.xid_events == [79]
    assert [(m.mig_profile, m.parent_uuid) for m in migs] == [("3g.40gb", g1.uuid), ("1g.10gb", g1.uuid)]
    assert all(m.uuid.startswith("MIG-") and m.xid_events == [79] for m in migs)
    assert migs[0].utilization_gpu is None  # NVML gives no utilisation per MIG device
    # Xid events are a queue: a second read has none left
    assert all(g.xid_events == [] for g in source.read())
    source.close()


def test_l40s_recording_marks_unsupported_fields() -> None:
    source = NvmlGpuSource(ReplayNvml(HERE / "fixtures" / "nvml_l40s.json"))
    (g,) = source.read()
    assert g.name == "NVIDIA L40S" and g.mig_profile == ""
    assert g.ecc_uncorrected_volatile is None and g.nvlink_errors is None and g.remapped_rows_uncorrectable is None
    assert g.power_w is None and g.power_limit_w == 350.0
    assert g.throttle_reasons == ["gpu_idle"]  # through the older throttle-reasons call
    st = source.field_status
    assert st[(0, "ecc_uncorrected_volatile")] == "unsupported"
    assert st[(0, "power")].startswith("error:") and st[(0, "xid_events")] == "unsupported"
    assert st[(0, "clock_event_reasons")] == "ok"
    source.close()
    with pytest.raises(RuntimeError, match="closed"):
        source.read()


def test_recording_round_trips_through_replay(tmp_path: Path) -> None:
    # record a replayed NVML (standing in for a real one) and replay the new recording: same states
    rec = RecordingNvml(ReplayNvml(HERE / "fixtures" / "nvml_h100_mig.json"))
    first = NvmlGpuSource(rec).read()
    rec.save(tmp_path / "again.json", {"origin": "test"})
    second = NvmlGpuSource(ReplayNvml(tmp_path / "again.json")).read()
    assert first == second


def test_replay_refuses_calls_it_never_recorded() -> None:
    nv = ReplayNvml({"calls": {"nvmlDeviceGetCount()": {"ok": 1}}})
    with pytest.raises(LookupError, match="nvmlDeviceGetHandleByIndex"):
        NvmlGpuSource(nv)
    with pytest.raises(ValueError, match="'calls'"):
        ReplayNvml({"meta": {}})


def test_probe_prints_a_table_from_a_recording() -> None:
    r = subprocess.run(
        [sys.executable, "bench/gpu_probe.py", "--replay", "tests/agents/adapters/fixtures/nvml_l40s.json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "ecc_uncorrected_volatile    unsupported" in r.stdout
    assert "nvmlDeviceGetPowerUsage(gpu0)" in r.stdout and "Insufficient Permissions" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("summary: gpus=1 mig_devices=0 unsupported_fields=9")


def test_nvml_without_a_driver_fails_clearly() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        with pytest.raises(pynvml.NVMLError):
            make_gpu_source("nvml")
        assert "not found" in str(e).lower() or "driver" in str(e).lower()
    else:  # a machine with a GPU: the real source reads it
        pynvml.nvmlShutdown()
        source = make_gpu_source("nvml")
        assert source.read()
        source.close()


# -- dcgm-exporter ----------------------------------------------------------------------------------------------
def test_dcgm_published_sample_and_blank_sentinel() -> None:
    (g,) = parse_dcgm((HERE / "samples" / "dcgm-exporter.prom").read_text())
    assert g.uuid == "GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52" and g.index == 0
    # only clocks and the memory temperature (which is DCGM's "not supported" value) are in the sample
    assert g.temperature_c is None and g.utilization_gpu is None


DCGM_FULL = (HERE / "samples" / "dcgm-exporter_written.prom").read_text()


def test_dcgm_default_counters_map_to_gpu_state() -> None:
    a, b = parse_dcgm(DCGM_FULL)
    assert (a.uuid, a.name, a.utilization_gpu, a.temperature_c, a.power_w) == (
        "GPU-a", "NVIDIA H100 80GB HBM3", 87.0, 71.0, 612.5,
    )  # fmt: skip
    assert a.memory_used_bytes == 70000 * 1024**2 and a.memory_total_bytes == 81559 * 1024**2
    assert a.pcie_replays == 2 and a.xid_events == [79] and a.remapped_rows_uncorrectable == 1
    assert (b.mig_profile, b.parent_uuid, b.uuid, b.utilization_gpu) == ("3g.40gb", "GPU-b", "GPU-b/gi2", 40.0)
    # every counter in the default list is one this adapter knows or deliberately ignores
    names = [ln.split(",")[0].strip() for ln in (HERE / "samples" / "dcgm-exporter_default-counters.csv").read_text()
             .splitlines() if ln and not ln.startswith("#")]  # fmt: skip
    assert "DCGM_FI_DEV_GPU_UTIL" in names and "DCGM_FI_DEV_XID_ERRORS" in names


def test_dcgm_source_scrapes_http_and_rejects_garbage() -> None:
    bodies = [DCGM_FULL.encode(), b"<html>oops</html>"]

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies.pop(0)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        src = make_gpu_source("dcgm", url=f"http://127.0.0.1:{srv.server_port}/metrics", timeout_s=5)
        assert [g.uuid for g in src.read()] == ["GPU-a", "GPU-b/gi2"]
        with pytest.raises(MetricsParseError):
            src.read()
        src.close()
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(DcgmScrapeError, match=r"GET http://127\.0\.0\.1:"):
        make_gpu_source("dcgm", url=f"http://127.0.0.1:{srv.server_port}/metrics", timeout_s=1).read()


# -- emulated ----------------------------------------------------------------------------------------------------
def test_emulated_profiles_and_mig() -> None:
    src = make_gpu_source("emulated", profiles=["h100", "a100-80gb", "l40s", "h100:mig-1g.10gb"], seed=7)
    gpus = src.read()
    assert [g.name for g in gpus] == [
        "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S", "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
    ]  # fmt: skip
    mig = gpus[3]
    assert mig.mig_profile == "1g.10gb" and mig.parent_uuid.startswith("GPU-") and mig.uuid.startswith("MIG-")
    assert mig.memory_total_bytes is not None and mig.memory_total_bytes < 10 * 1024**3
    assert len({g.uuid for g in gpus}) == 4
    assert gpus[2].nvlink_errors is None and gpus[0].nvlink_errors == 0
    again = make_gpu_source("emulated", profiles=["h100", "a100-80gb", "l40s", "h100:mig-1g.10gb"], seed=7).read()
    assert [g.uuid for g in again] == [g.uuid for g in gpus]  # stable for a seed


def test_emulated_faults() -> None:
    src = EmulatedGpuSource(["h100", "h100"], seed=1)
    src.set_load(0, 80.0)
    g0, g1 = src.read()
    assert 78 <= (g0.utilization_gpu or 0) <= 82 and g1.throttle_reasons == ["gpu_idle"]
    assert g0.thermal_margin_c is not None and g0.thermal_margin_c > 10
    src.inject("ecc", 1)
    src.inject("xid 48", 1)
    src.inject("thermal", 0)
    src.inject("throttle", 1)
    g0, g1 = src.read()
    assert g0.thermal_margin_c is not None and g0.thermal_margin_c < 0
    assert "hw_thermal_slowdown" in g0.throttle_reasons
    assert g1.ecc_uncorrected_volatile == 1 and g1.xid_events == [48]
    assert "sw_power_cap" in g1.throttle_reasons
    assert src.read()[1].xid_events == []  # delivered once
    src.clear()
    g0, g1 = src.read()
    assert g0.thermal_margin_c is not None and g0.thermal_margin_c > 0 and g1.ecc_uncorrected_volatile == 0
    assert g1.ecc_uncorrected_aggregate == 1  # aggregate counters survive, as on hardware


def test_emulated_faults_from_options_and_bad_input() -> None:
    src = make_gpu_source("emulated", profiles=["a100"], faults=["xid:79@0", {"index": 0, "fault": "remap"}])
    (g,) = src.read()
    assert g.xid_events == [79] and g.remapped_rows_pending is True
    with pytest.raises(ValueError, match="unknown emulated GPU 'v100'"):
        make_gpu_source("emulated", profiles=["v100"])
    with pytest.raises(ValueError, match="MIG profiles are emulated for h100 and a100"):
        make_gpu_source("emulated", profiles=["l40s:mig-1g.10gb"])
    with pytest.raises(ValueError, match="unknown GPU fault 'melt'"):
        src.inject("melt")  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="no emulated GPU 3"):
        src.inject("ecc", 3)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown option"):
        make_gpu_source("emulated", profile=["h100"])
    with pytest.raises(ValueError, match="unknown GPU source kind 'rocm'"):
        make_gpu_source("rocm")


def test_a_scheduled_fault_is_injected_on_time_and_cleared_after() -> None:
    """A fault drill: the ECC error appears `at_s` after start and is cleared `clear_after_s` later, on its GPU only."""
    now = [100.0]
    src = EmulatedGpuSource(["h100", "h100"], clock=lambda: now[0])
    src.schedule("ecc", 1, at_s=60.0, clear_after_s=30.0)
    seen = []
    for t in (0.0, 59.9, 60.0, 89.9, 90.0, 200.0):
        now[0] = 100.0 + t
        g0, g1 = src.read()
        seen.append((t, g0.ecc_uncorrected_volatile, g1.ecc_uncorrected_volatile))
    assert seen == [(0.0, 0, 0), (59.9, 0, 0), (60.0, 0, 1), (89.9, 0, 1), (90.0, 0, 0), (200.0, 0, 0)]
    assert g1.ecc_uncorrected_aggregate == 1  # the lifetime counter keeps it, as on hardware

    drill = make_gpu_source(
        "emulated", profiles=["a100"], faults=[{"index": 0, "fault": "xid 79", "at_s": 0, "clear_after_s": 600}]
    )
    assert drill.read()[0].xid_events == [79]
    with pytest.raises(ValueError, match=r"faults\[0\]\.at_s must be a number of seconds, got 'soon'"):
        make_gpu_source("emulated", profiles=["a100"], faults=[{"fault": "ecc", "at_s": "soon"}])
    with pytest.raises(ValueError, match="unknown GPU fault 'melt'"):
        make_gpu_source("emulated", profiles=["a100"], faults=[{"fault": "melt", "at_s": 5}])
    with pytest.raises(ValueError, match="at_s >= 0"):
        make_gpu_source("emulated", profiles=["a100"], faults=[{"fault": "ecc", "at_s": -1}])
    with pytest.raises(ValueError, match="no emulated GPU 2"):
        make_gpu_source("emulated", profiles=["a100"], faults=[{"fault": "ecc", "index": 2, "at_s": 1}])


def test_real_h100_recording() -> None:
    # Recorded with bench/gpu_probe.py --record on a real H100 80GB HBM3 (driver 580.159.04): the values NVML gave
    # there, and the two calls that GPU answers "Not Supported" (retired pages, NVLink state) read as unknown.
    source = NvmlGpuSource(ReplayNvml(HERE / "fixtures" / "nvml_h100_real.json"))
    (gpu,) = source.read()
    assert gpu.uuid == "GPU-5ce1480e-c952-b078-cf6e-f35455ee2835"
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.memory_total_bytes == 85520809984 and gpu.memory_used_bytes == 503316480
    assert (gpu.temperature_c, gpu.slowdown_temp_c, gpu.thermal_margin_c) == (36.0, 89.0, 53.0)
    assert (gpu.power_w, gpu.power_limit_w) == (115.574, 700.0)
    assert gpu.ecc_uncorrected_volatile == 0 and gpu.remapped_rows_uncorrectable == 0
    assert gpu.remapped_rows_pending is False and gpu.pcie_replays == 0
    assert gpu.retired_pages is None and gpu.nvlink_errors is None
    assert gpu.throttle_reasons == ["gpu_idle"] and gpu.xid_events == []
    assert gpu.mig_profile == ""
    assert source.field_status[(0, "retired_pages")] == "unsupported"
    assert source.field_status[(0, "nvlink_errors")] == "unsupported"
    source.close()


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_emulated_gpu_follows_its_runtime_with_the_thermal_time_constant() -> None:
    clock = _Clock()
    src = EmulatedGpuSource(["h100", "h100"], seed=3, clock=clock, thermal_tau_s=10.0)
    src.follow(0, running=0, kv_usage=0.0)
    src.follow(1, running=0, kv_usage=0.0)
    idle0, _ = src.read()
    assert idle0.utilization_gpu == 0 and idle0.throttle_reasons == ["gpu_idle"]
    # the weights of the model are resident while the runtime runs, even idle
    assert idle0.memory_used_bytes is not None and idle0.memory_used_bytes > 16e9
    src.follow(0, running=64, waiting=5, kv_usage=0.8)
    clock.t = 10.0  # one time constant: 1 - 1/e of the way to the steady temperature
    busy, still = src.read()
    assert busy.utilization_gpu is not None and busy.utilization_gpu > 95
    assert busy.memory_used_bytes is not None and busy.memory_used_bytes > idle0.memory_used_bytes + 40e9
    assert busy.power_w is not None and busy.power_w > 600
    assert busy.temperature_c is not None and idle0.temperature_c is not None
    rise = busy.temperature_c - idle0.temperature_c
    assert 0.55 * 43 < rise < 0.7 * 43  # 43 C from idle (32) to the normal full-load steady state (75)
    clock.t = 100.0
    settled, _ = src.read()
    assert settled.temperature_c is not None and 73 < settled.temperature_c < 77
    assert settled.thermal_margin_c is not None and settled.thermal_margin_c > 10  # well cooled: never throttles
    assert settled.sm_clock_mhz == 1980
    assert still.utilization_gpu == 0 and still.temperature_c is not None and still.temperature_c < 34


def test_a_hot_board_under_load_throttles_by_itself_and_recovers_idle() -> None:
    clock = _Clock()
    src = make_gpu_source("emulated", profiles=["h100"], cooling="hot", thermal_tau_s=2.0)
    src.clock = clock  # type: ignore[attr-defined]
    src.follow(0, running=100, waiting=10, kv_usage=1.0)  # type: ignore[attr-defined]
    readings = []
    for i in range(1, 40):
        clock.t = i * 0.5
        readings.append(src.read()[0])
    hot = readings[-10:]
    assert all(g.thermal_margin_c is not None and g.thermal_margin_c < 0 for g in hot)
    assert all("sw_thermal_slowdown" in g.throttle_reasons and g.sm_clock_mhz == 1683 for g in hot)
    src.follow(0, running=0)  # type: ignore[attr-defined]
    for i in range(40, 80):
        clock.t = i * 0.5
        cool = src.read()[0]
    assert cool.thermal_margin_c is not None and cool.thermal_margin_c > 40 and cool.sm_clock_mhz == 1980
    assert cool.throttle_reasons == ["gpu_idle"]
    with pytest.raises(ValueError, match="unknown cooling 'lava'"):
        make_gpu_source("emulated", cooling="lava")
    with pytest.raises(ValueError, match="thermal_tau_s must be a positive"):
        make_gpu_source("emulated", thermal_tau_s=0)
