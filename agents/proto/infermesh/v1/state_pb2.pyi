from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TargetHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TARGET_HEALTH_UNKNOWN: _ClassVar[TargetHealth]
    TARGET_HEALTH_HEALTHY: _ClassVar[TargetHealth]
    TARGET_HEALTH_UNHEALTHY: _ClassVar[TargetHealth]
TARGET_HEALTH_UNKNOWN: TargetHealth
TARGET_HEALTH_HEALTHY: TargetHealth
TARGET_HEALTH_UNHEALTHY: TargetHealth

class ModelStateDelta(_message.Message):
    __slots__ = ("node", "endpoint", "runtime", "model", "revision", "quant", "gpu_uuids", "mig_profile", "parent", "requests_waiting", "requests_running", "kv_cache_usage", "tokens_per_s", "prompt_tokens_per_s", "ttft_p95_s", "latency_p95_s", "max_concurrency", "loaded", "warming", "healthy", "cost_per_mtok", "lora_resident", "max_loras", "loras_active", "observed_unix_ms", "source")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    MIG_PROFILE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_WAITING_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_P95_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    WARMING_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    COST_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    LORA_RESIDENT_FIELD_NUMBER: _ClassVar[int]
    MAX_LORAS_FIELD_NUMBER: _ClassVar[int]
    LORAS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    node: str
    endpoint: str
    runtime: str
    model: str
    revision: str
    quant: str
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    mig_profile: str
    parent: str
    requests_waiting: float
    requests_running: float
    kv_cache_usage: float
    tokens_per_s: float
    prompt_tokens_per_s: float
    ttft_p95_s: float
    latency_p95_s: float
    max_concurrency: int
    loaded: bool
    warming: bool
    healthy: bool
    cost_per_mtok: float
    lora_resident: bool
    max_loras: int
    loras_active: int
    observed_unix_ms: int
    source: str
    def __init__(self, node: _Optional[str] = ..., endpoint: _Optional[str] = ..., runtime: _Optional[str] = ..., model: _Optional[str] = ..., revision: _Optional[str] = ..., quant: _Optional[str] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., mig_profile: _Optional[str] = ..., parent: _Optional[str] = ..., requests_waiting: _Optional[float] = ..., requests_running: _Optional[float] = ..., kv_cache_usage: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., prompt_tokens_per_s: _Optional[float] = ..., ttft_p95_s: _Optional[float] = ..., latency_p95_s: _Optional[float] = ..., max_concurrency: _Optional[int] = ..., loaded: _Optional[bool] = ..., warming: _Optional[bool] = ..., healthy: _Optional[bool] = ..., cost_per_mtok: _Optional[float] = ..., lora_resident: _Optional[bool] = ..., max_loras: _Optional[int] = ..., loras_active: _Optional[int] = ..., observed_unix_ms: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class GpuStateDelta(_message.Message):
    __slots__ = ("node", "uuid", "index", "name", "mig_profile", "parent_uuid", "memory_total_bytes", "memory_used_bytes", "utilization_gpu", "utilization_memory", "temperature_c", "slowdown_temp_c", "power_w", "power_limit_w", "ecc_corrected_volatile", "ecc_uncorrected_volatile", "ecc_corrected_aggregate", "ecc_uncorrected_aggregate", "retired_pages", "remapped_rows_uncorrectable", "remapped_rows_pending", "pcie_replays", "nvlink_errors", "throttle_reasons", "xid_events", "sm_clock_mhz", "observed_unix_ms", "source")
    NODE_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIG_PROFILE_FIELD_NUMBER: _ClassVar[int]
    PARENT_UUID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_GPU_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_MEMORY_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    SLOWDOWN_TEMP_C_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    ECC_CORRECTED_VOLATILE_FIELD_NUMBER: _ClassVar[int]
    ECC_UNCORRECTED_VOLATILE_FIELD_NUMBER: _ClassVar[int]
    ECC_CORRECTED_AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    ECC_UNCORRECTED_AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    RETIRED_PAGES_FIELD_NUMBER: _ClassVar[int]
    REMAPPED_ROWS_UNCORRECTABLE_FIELD_NUMBER: _ClassVar[int]
    REMAPPED_ROWS_PENDING_FIELD_NUMBER: _ClassVar[int]
    PCIE_REPLAYS_FIELD_NUMBER: _ClassVar[int]
    NVLINK_ERRORS_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASONS_FIELD_NUMBER: _ClassVar[int]
    XID_EVENTS_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    node: str
    uuid: str
    index: int
    name: str
    mig_profile: str
    parent_uuid: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_gpu: float
    utilization_memory: float
    temperature_c: float
    slowdown_temp_c: float
    power_w: float
    power_limit_w: float
    ecc_corrected_volatile: int
    ecc_uncorrected_volatile: int
    ecc_corrected_aggregate: int
    ecc_uncorrected_aggregate: int
    retired_pages: int
    remapped_rows_uncorrectable: int
    remapped_rows_pending: bool
    pcie_replays: int
    nvlink_errors: int
    throttle_reasons: _containers.RepeatedScalarFieldContainer[str]
    xid_events: _containers.RepeatedScalarFieldContainer[int]
    sm_clock_mhz: float
    observed_unix_ms: int
    source: str
    def __init__(self, node: _Optional[str] = ..., uuid: _Optional[str] = ..., index: _Optional[int] = ..., name: _Optional[str] = ..., mig_profile: _Optional[str] = ..., parent_uuid: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., utilization_gpu: _Optional[float] = ..., utilization_memory: _Optional[float] = ..., temperature_c: _Optional[float] = ..., slowdown_temp_c: _Optional[float] = ..., power_w: _Optional[float] = ..., power_limit_w: _Optional[float] = ..., ecc_corrected_volatile: _Optional[int] = ..., ecc_uncorrected_volatile: _Optional[int] = ..., ecc_corrected_aggregate: _Optional[int] = ..., ecc_uncorrected_aggregate: _Optional[int] = ..., retired_pages: _Optional[int] = ..., remapped_rows_uncorrectable: _Optional[int] = ..., remapped_rows_pending: _Optional[bool] = ..., pcie_replays: _Optional[int] = ..., nvlink_errors: _Optional[int] = ..., throttle_reasons: _Optional[_Iterable[str]] = ..., xid_events: _Optional[_Iterable[int]] = ..., sm_clock_mhz: _Optional[float] = ..., observed_unix_ms: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class CommStatsDelta(_message.Message):
    __slots__ = ("node", "job_id", "rank", "collective", "bytes", "time_s", "n_ranks", "algorithm", "bucket_id", "step", "observed_unix_ms", "source")
    NODE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    N_RANKS_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    BUCKET_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    node: str
    job_id: str
    rank: int
    collective: str
    bytes: int
    time_s: float
    n_ranks: int
    algorithm: str
    bucket_id: int
    step: int
    observed_unix_ms: int
    source: str
    def __init__(self, node: _Optional[str] = ..., job_id: _Optional[str] = ..., rank: _Optional[int] = ..., collective: _Optional[str] = ..., bytes: _Optional[int] = ..., time_s: _Optional[float] = ..., n_ranks: _Optional[int] = ..., algorithm: _Optional[str] = ..., bucket_id: _Optional[int] = ..., step: _Optional[int] = ..., observed_unix_ms: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class StateAck(_message.Message):
    __slots__ = ("accepted", "rejected", "errors")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class TargetState(_message.Message):
    __slots__ = ("target_id", "model", "revision", "quant", "runtime", "node", "zone", "endpoint", "gpu_uuids", "mig_profile", "health", "health_reason", "routable", "loaded", "warming", "parent", "lora_resident", "max_loras", "loras_active", "requests_waiting", "requests_running", "kv_cache_usage", "tokens_per_s", "ttft_p95_s", "latency_p95_s", "max_concurrency", "vram_used_frac", "gpu_utilization", "thermal_margin_c", "freshness", "age_s", "service_rate_rps", "work_left_s", "ewma_latency_s", "ewma_ttft_s", "error_rate", "outcomes_ok", "outcomes_error", "cost_per_mtok", "updated_unix_ms", "version", "gpu_type")
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    MIG_PROFILE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_REASON_FIELD_NUMBER: _ClassVar[int]
    ROUTABLE_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    WARMING_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    LORA_RESIDENT_FIELD_NUMBER: _ClassVar[int]
    MAX_LORAS_FIELD_NUMBER: _ClassVar[int]
    LORAS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_WAITING_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_P95_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    VRAM_USED_FRAC_FIELD_NUMBER: _ClassVar[int]
    GPU_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    THERMAL_MARGIN_C_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    SERVICE_RATE_RPS_FIELD_NUMBER: _ClassVar[int]
    WORK_LEFT_S_FIELD_NUMBER: _ClassVar[int]
    EWMA_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    EWMA_TTFT_S_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_OK_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_ERROR_FIELD_NUMBER: _ClassVar[int]
    COST_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPE_FIELD_NUMBER: _ClassVar[int]
    target_id: str
    model: str
    revision: str
    quant: str
    runtime: str
    node: str
    zone: str
    endpoint: str
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    mig_profile: str
    health: TargetHealth
    health_reason: str
    routable: bool
    loaded: bool
    warming: bool
    parent: str
    lora_resident: bool
    max_loras: int
    loras_active: int
    requests_waiting: float
    requests_running: float
    kv_cache_usage: float
    tokens_per_s: float
    ttft_p95_s: float
    latency_p95_s: float
    max_concurrency: int
    vram_used_frac: float
    gpu_utilization: float
    thermal_margin_c: float
    freshness: float
    age_s: float
    service_rate_rps: float
    work_left_s: float
    ewma_latency_s: float
    ewma_ttft_s: float
    error_rate: float
    outcomes_ok: int
    outcomes_error: int
    cost_per_mtok: float
    updated_unix_ms: int
    version: int
    gpu_type: str
    def __init__(self, target_id: _Optional[str] = ..., model: _Optional[str] = ..., revision: _Optional[str] = ..., quant: _Optional[str] = ..., runtime: _Optional[str] = ..., node: _Optional[str] = ..., zone: _Optional[str] = ..., endpoint: _Optional[str] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., mig_profile: _Optional[str] = ..., health: _Optional[_Union[TargetHealth, str]] = ..., health_reason: _Optional[str] = ..., routable: _Optional[bool] = ..., loaded: _Optional[bool] = ..., warming: _Optional[bool] = ..., parent: _Optional[str] = ..., lora_resident: _Optional[bool] = ..., max_loras: _Optional[int] = ..., loras_active: _Optional[int] = ..., requests_waiting: _Optional[float] = ..., requests_running: _Optional[float] = ..., kv_cache_usage: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., ttft_p95_s: _Optional[float] = ..., latency_p95_s: _Optional[float] = ..., max_concurrency: _Optional[int] = ..., vram_used_frac: _Optional[float] = ..., gpu_utilization: _Optional[float] = ..., thermal_margin_c: _Optional[float] = ..., freshness: _Optional[float] = ..., age_s: _Optional[float] = ..., service_rate_rps: _Optional[float] = ..., work_left_s: _Optional[float] = ..., ewma_latency_s: _Optional[float] = ..., ewma_ttft_s: _Optional[float] = ..., error_rate: _Optional[float] = ..., outcomes_ok: _Optional[int] = ..., outcomes_error: _Optional[int] = ..., cost_per_mtok: _Optional[float] = ..., updated_unix_ms: _Optional[int] = ..., version: _Optional[int] = ..., gpu_type: _Optional[str] = ...) -> None: ...

class FusedGpu(_message.Message):
    __slots__ = ("gpu", "healthy", "health_reason", "freshness", "age_s")
    GPU_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    HEALTH_REASON_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    gpu: GpuStateDelta
    healthy: bool
    health_reason: str
    freshness: float
    age_s: float
    def __init__(self, gpu: _Optional[_Union[GpuStateDelta, _Mapping]] = ..., healthy: _Optional[bool] = ..., health_reason: _Optional[str] = ..., freshness: _Optional[float] = ..., age_s: _Optional[float] = ...) -> None: ...

class CommSummary(_message.Message):
    __slots__ = ("job_id", "collective", "algorithm", "count", "ewma_time_s", "ewma_algbw_gbps", "ewma_busbw_gbps", "last_step", "n_ranks")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    EWMA_TIME_S_FIELD_NUMBER: _ClassVar[int]
    EWMA_ALGBW_GBPS_FIELD_NUMBER: _ClassVar[int]
    EWMA_BUSBW_GBPS_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    N_RANKS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    collective: str
    algorithm: str
    count: int
    ewma_time_s: float
    ewma_algbw_gbps: float
    ewma_busbw_gbps: float
    last_step: int
    n_ranks: int
    def __init__(self, job_id: _Optional[str] = ..., collective: _Optional[str] = ..., algorithm: _Optional[str] = ..., count: _Optional[int] = ..., ewma_time_s: _Optional[float] = ..., ewma_algbw_gbps: _Optional[float] = ..., ewma_busbw_gbps: _Optional[float] = ..., last_step: _Optional[int] = ..., n_ranks: _Optional[int] = ...) -> None: ...

class ListTargetsRequest(_message.Message):
    __slots__ = ("model", "routable_only")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUTABLE_ONLY_FIELD_NUMBER: _ClassVar[int]
    model: str
    routable_only: bool
    def __init__(self, model: _Optional[str] = ..., routable_only: _Optional[bool] = ...) -> None: ...

class ListTargetsResponse(_message.Message):
    __slots__ = ("targets", "version")
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedCompositeFieldContainer[TargetState]
    version: int
    def __init__(self, targets: _Optional[_Iterable[_Union[TargetState, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class GetTargetRequest(_message.Message):
    __slots__ = ("target_id",)
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    target_id: str
    def __init__(self, target_id: _Optional[str] = ...) -> None: ...

class ListGpusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListGpusResponse(_message.Message):
    __slots__ = ("gpus",)
    GPUS_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedCompositeFieldContainer[FusedGpu]
    def __init__(self, gpus: _Optional[_Iterable[_Union[FusedGpu, _Mapping]]] = ...) -> None: ...

class ListCommStatsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListCommStatsResponse(_message.Message):
    __slots__ = ("summaries",)
    SUMMARIES_FIELD_NUMBER: _ClassVar[int]
    summaries: _containers.RepeatedCompositeFieldContainer[CommSummary]
    def __init__(self, summaries: _Optional[_Iterable[_Union[CommSummary, _Mapping]]] = ...) -> None: ...

class WatchTargetsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class TargetEvent(_message.Message):
    __slots__ = ("kind", "targets", "removed_ids", "version")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[TargetEvent.Kind]
        SNAPSHOT: _ClassVar[TargetEvent.Kind]
        UPSERT: _ClassVar[TargetEvent.Kind]
        REMOVE: _ClassVar[TargetEvent.Kind]
    KIND_UNSPECIFIED: TargetEvent.Kind
    SNAPSHOT: TargetEvent.Kind
    UPSERT: TargetEvent.Kind
    REMOVE: TargetEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_IDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    kind: TargetEvent.Kind
    targets: _containers.RepeatedCompositeFieldContainer[TargetState]
    removed_ids: _containers.RepeatedScalarFieldContainer[str]
    version: int
    def __init__(self, kind: _Optional[_Union[TargetEvent.Kind, str]] = ..., targets: _Optional[_Iterable[_Union[TargetState, _Mapping]]] = ..., removed_ids: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ...) -> None: ...
