"""Typed in-process records of the signal plane.

Adapters produce these; the agent maps them to and from the protobuf deltas in `agents/proto`. Every field that a
source may not report is optional (None = unknown), never a made-up zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# One collective operation seen by a training worker: defined with the collective cost model that learns from it.
from agents.collective.records import CommStats


@dataclass(slots=True)
class ModelState:
    """What one runtime reports about one served model (a routing target together with node and GPU)."""

    model: str
    runtime: str  # vllm | tgi | triton | sglang | torchserve | tfserving | ovms | emulator
    revision: str = ""
    quant: str = ""
    endpoint: str = ""  # base URL of the runtime serving it
    requests_waiting: float | None = None
    requests_running: float | None = None
    kv_cache_usage: float | None = None  # fraction 0..1
    tokens_per_s: float | None = None  # generation throughput
    prompt_tokens_per_s: float | None = None
    ttft_p95_s: float | None = None
    latency_p95_s: float | None = None
    max_concurrency: int | None = None
    loaded: bool = True
    warming: bool = False
    healthy: bool = True
    # LoRA (vLLM's vllm:lora_requests_info and /v1/models): a runtime serving adapters reports each adapter as a
    # model of its own whose `parent` is the base model, with the runtime's queue, batch and KV signals.
    parent: str = ""
    lora_resident: bool | None = None  # the adapter's requests are running or waiting on the runtime
    max_loras: int | None = None  # adapter slots of the runtime (--max-loras)
    loras_active: int | None = None  # adapters the runtime's running and waiting requests use


@dataclass(slots=True)
class GpuState:
    """One GPU or MIG slice as read from NVML, DCGM or the emulated source."""

    uuid: str
    index: int
    name: str  # product name, e.g. "NVIDIA H100 80GB HBM3"
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    utilization_gpu: float | None = None  # percent 0..100
    utilization_memory: float | None = None
    temperature_c: float | None = None
    slowdown_temp_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: float | None = None  # present SM clock (drops under thermal slowdown or a power cap)
    ecc_corrected_volatile: int | None = None
    ecc_uncorrected_volatile: int | None = None
    ecc_corrected_aggregate: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    retired_pages: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: bool | None = None
    pcie_replays: int | None = None
    nvlink_errors: int | None = None
    throttle_reasons: list[str] = field(default_factory=list)
    xid_events: list[int] = field(default_factory=list)
    mig_profile: str = ""  # e.g. "1g.10gb"; empty for a whole GPU
    parent_uuid: str = ""  # for a MIG slice, the physical GPU

    @property
    def thermal_margin_c(self) -> float | None:
        if self.temperature_c is None or self.slowdown_temp_c is None:
            return None
        return self.slowdown_temp_c - self.temperature_c


__all__ = ["CommStats", "GpuState", "ModelState"]
