from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MemberStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBER_STATUS_UNSPECIFIED: _ClassVar[MemberStatus]
    MEMBER_STATUS_ALIVE: _ClassVar[MemberStatus]
    MEMBER_STATUS_SUSPECT: _ClassVar[MemberStatus]
    MEMBER_STATUS_DEAD: _ClassVar[MemberStatus]
    MEMBER_STATUS_LEFT: _ClassVar[MemberStatus]
MEMBER_STATUS_UNSPECIFIED: MemberStatus
MEMBER_STATUS_ALIVE: MemberStatus
MEMBER_STATUS_SUSPECT: MemberStatus
MEMBER_STATUS_DEAD: MemberStatus
MEMBER_STATUS_LEFT: MemberStatus

class Coordinate(_message.Message):
    __slots__ = ("vec", "error", "adjustment", "height")
    VEC_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ADJUSTMENT_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    vec: _containers.RepeatedScalarFieldContainer[float]
    error: float
    adjustment: float
    height: float
    def __init__(self, vec: _Optional[_Iterable[float]] = ..., error: _Optional[float] = ..., adjustment: _Optional[float] = ..., height: _Optional[float] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("name", "gossip_address", "status", "incarnation", "coordinate", "roles", "zone", "region", "grpc_address", "labels", "rtt_estimate_s", "link_class", "summary_version", "state_age_s", "local", "measured_rtt_s", "loss")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    COORDINATE_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RTT_ESTIMATE_S_FIELD_NUMBER: _ClassVar[int]
    LINK_CLASS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_AGE_S_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    MEASURED_RTT_S_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    name: str
    gossip_address: str
    status: MemberStatus
    incarnation: int
    coordinate: Coordinate
    roles: _containers.RepeatedScalarFieldContainer[str]
    zone: str
    region: str
    grpc_address: str
    labels: _containers.ScalarMap[str, str]
    rtt_estimate_s: float
    link_class: str
    summary_version: int
    state_age_s: float
    local: bool
    measured_rtt_s: float
    loss: float
    def __init__(self, name: _Optional[str] = ..., gossip_address: _Optional[str] = ..., status: _Optional[_Union[MemberStatus, str]] = ..., incarnation: _Optional[int] = ..., coordinate: _Optional[_Union[Coordinate, _Mapping]] = ..., roles: _Optional[_Iterable[str]] = ..., zone: _Optional[str] = ..., region: _Optional[str] = ..., grpc_address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., rtt_estimate_s: _Optional[float] = ..., link_class: _Optional[str] = ..., summary_version: _Optional[int] = ..., state_age_s: _Optional[float] = ..., local: _Optional[bool] = ..., measured_rtt_s: _Optional[float] = ..., loss: _Optional[float] = ...) -> None: ...

class ListMembersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMembersResponse(_message.Message):
    __slots__ = ("node", "members", "degraded", "reachable", "total", "health_score")
    NODE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    HEALTH_SCORE_FIELD_NUMBER: _ClassVar[int]
    node: str
    members: _containers.RepeatedCompositeFieldContainer[Member]
    degraded: bool
    reachable: int
    total: int
    health_score: int
    def __init__(self, node: _Optional[str] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., degraded: _Optional[bool] = ..., reachable: _Optional[int] = ..., total: _Optional[int] = ..., health_score: _Optional[int] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("node", "version", "payload")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: int
    payload: bytes
    def __init__(self, node: _Optional[str] = ..., version: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class ListSummariesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSummariesResponse(_message.Message):
    __slots__ = ("summaries",)
    SUMMARIES_FIELD_NUMBER: _ClassVar[int]
    summaries: _containers.RepeatedCompositeFieldContainer[Summary]
    def __init__(self, summaries: _Optional[_Iterable[_Union[Summary, _Mapping]]] = ...) -> None: ...

class EstimateRttRequest(_message.Message):
    __slots__ = ("src", "dst")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ...) -> None: ...

class EstimateRttResponse(_message.Message):
    __slots__ = ("rtt_s", "link_class", "from_coordinates")
    RTT_S_FIELD_NUMBER: _ClassVar[int]
    LINK_CLASS_FIELD_NUMBER: _ClassVar[int]
    FROM_COORDINATES_FIELD_NUMBER: _ClassVar[int]
    rtt_s: float
    link_class: str
    from_coordinates: bool
    def __init__(self, rtt_s: _Optional[float] = ..., link_class: _Optional[str] = ..., from_coordinates: _Optional[bool] = ...) -> None: ...
