from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelLoad(_message.Message):
    __slots__ = ("model", "targets", "healthy", "capacity", "running", "waiting", "ttft_p95_s", "ttft_s")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    TTFT_P95_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    model: str
    targets: int
    healthy: int
    capacity: int
    running: float
    waiting: float
    ttft_p95_s: float
    ttft_s: float
    def __init__(self, model: _Optional[str] = ..., targets: _Optional[int] = ..., healthy: _Optional[int] = ..., capacity: _Optional[int] = ..., running: _Optional[float] = ..., waiting: _Optional[float] = ..., ttft_p95_s: _Optional[float] = ..., ttft_s: _Optional[float] = ...) -> None: ...

class CellSummary(_message.Message):
    __slots__ = ("cell", "region", "ingress", "seq", "models")
    CELL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    cell: str
    region: str
    ingress: str
    seq: int
    models: _containers.RepeatedCompositeFieldContainer[ModelLoad]
    def __init__(self, cell: _Optional[str] = ..., region: _Optional[str] = ..., ingress: _Optional[str] = ..., seq: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelLoad, _Mapping]]] = ...) -> None: ...

class WanPacket(_message.Message):
    __slots__ = ("cell", "summary", "ping_t", "pong_t")
    CELL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PING_T_FIELD_NUMBER: _ClassVar[int]
    PONG_T_FIELD_NUMBER: _ClassVar[int]
    cell: str
    summary: CellSummary
    ping_t: float
    pong_t: float
    def __init__(self, cell: _Optional[str] = ..., summary: _Optional[_Union[CellSummary, _Mapping]] = ..., ping_t: _Optional[float] = ..., pong_t: _Optional[float] = ...) -> None: ...

class RemoteCell(_message.Message):
    __slots__ = ("summary", "rtt_s", "age_s", "alive")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    RTT_S_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    summary: CellSummary
    rtt_s: float
    age_s: float
    alive: bool
    def __init__(self, summary: _Optional[_Union[CellSummary, _Mapping]] = ..., rtt_s: _Optional[float] = ..., age_s: _Optional[float] = ..., alive: _Optional[bool] = ...) -> None: ...

class ListCellsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCellsResponse(_message.Message):
    __slots__ = ("cell", "region", "local", "cells")
    CELL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cell: str
    region: str
    local: CellSummary
    cells: _containers.RepeatedCompositeFieldContainer[RemoteCell]
    def __init__(self, cell: _Optional[str] = ..., region: _Optional[str] = ..., local: _Optional[_Union[CellSummary, _Mapping]] = ..., cells: _Optional[_Iterable[_Union[RemoteCell, _Mapping]]] = ...) -> None: ...
