from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreRequest(_message.Message):
    __slots__ = ("model", "revision", "tenant", "prompt_tokens", "max_tokens", "strategy", "top_k", "client_node", "mig_profile", "exclude", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NODE_FIELD_NUMBER: _ClassVar[int]
    MIG_PROFILE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    revision: str
    tenant: str
    prompt_tokens: int
    max_tokens: int
    strategy: str
    top_k: int
    client_node: str
    mig_profile: str
    exclude: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, model: _Optional[str] = ..., revision: _Optional[str] = ..., tenant: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., strategy: _Optional[str] = ..., top_k: _Optional[int] = ..., client_node: _Optional[str] = ..., mig_profile: _Optional[str] = ..., exclude: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ScoredTarget(_message.Message):
    __slots__ = ("target_id", "endpoint", "node", "score", "terms")
    class TermsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    target_id: str
    endpoint: str
    node: str
    score: float
    terms: _containers.ScalarMap[str, float]
    def __init__(self, target_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., node: _Optional[str] = ..., score: _Optional[float] = ..., terms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("ranked", "strategy", "fallback", "fallback_reason", "decision_us")
    RANKED_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    DECISION_US_FIELD_NUMBER: _ClassVar[int]
    ranked: _containers.RepeatedCompositeFieldContainer[ScoredTarget]
    strategy: str
    fallback: bool
    fallback_reason: str
    decision_us: float
    def __init__(self, ranked: _Optional[_Iterable[_Union[ScoredTarget, _Mapping]]] = ..., strategy: _Optional[str] = ..., fallback: _Optional[bool] = ..., fallback_reason: _Optional[str] = ..., decision_us: _Optional[float] = ...) -> None: ...

class AdmitRequest(_message.Message):
    __slots__ = ("model", "tenant", "prompt_tokens", "max_tokens", "revision")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    model: str
    tenant: str
    prompt_tokens: int
    max_tokens: int
    revision: str
    def __init__(self, model: _Optional[str] = ..., tenant: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., revision: _Optional[str] = ...) -> None: ...

class AdmitResponse(_message.Message):
    __slots__ = ("admitted", "reason", "retry_after_s", "queue_per_target", "routable_targets")
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_PER_TARGET_FIELD_NUMBER: _ClassVar[int]
    ROUTABLE_TARGETS_FIELD_NUMBER: _ClassVar[int]
    admitted: bool
    reason: str
    retry_after_s: float
    queue_per_target: float
    routable_targets: int
    def __init__(self, admitted: _Optional[bool] = ..., reason: _Optional[str] = ..., retry_after_s: _Optional[float] = ..., queue_per_target: _Optional[float] = ..., routable_targets: _Optional[int] = ...) -> None: ...

class OutcomeReport(_message.Message):
    __slots__ = ("target_id", "request_id", "ok", "ttft_s", "latency_s", "prompt_tokens", "completion_tokens", "error", "hedged", "cancelled")
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HEDGED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    target_id: str
    request_id: str
    ok: bool
    ttft_s: float
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    error: str
    hedged: bool
    cancelled: bool
    def __init__(self, target_id: _Optional[str] = ..., request_id: _Optional[str] = ..., ok: _Optional[bool] = ..., ttft_s: _Optional[float] = ..., latency_s: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., error: _Optional[str] = ..., hedged: _Optional[bool] = ..., cancelled: _Optional[bool] = ...) -> None: ...

class OutcomeAck(_message.Message):
    __slots__ = ("accepted", "rejected", "errors")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...
