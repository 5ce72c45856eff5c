from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StoreKeyValue(_message.Message):
    __slots__ = ("key", "value", "create_revision", "mod_revision", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class StoreGetRequest(_message.Message):
    __slots__ = ("group", "key", "prefix", "serializable")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SERIALIZABLE_FIELD_NUMBER: _ClassVar[int]
    group: str
    key: str
    prefix: bool
    serializable: bool
    def __init__(self, group: _Optional[str] = ..., key: _Optional[str] = ..., prefix: _Optional[bool] = ..., serializable: _Optional[bool] = ...) -> None: ...

class StoreGetResponse(_message.Message):
    __slots__ = ("kvs", "revision", "stale", "stale_reason", "served_by")
    KVS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    STALE_REASON_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    kvs: _containers.RepeatedCompositeFieldContainer[StoreKeyValue]
    revision: int
    stale: bool
    stale_reason: str
    served_by: int
    def __init__(self, kvs: _Optional[_Iterable[_Union[StoreKeyValue, _Mapping]]] = ..., revision: _Optional[int] = ..., stale: _Optional[bool] = ..., stale_reason: _Optional[str] = ..., served_by: _Optional[int] = ...) -> None: ...

class StorePutRequest(_message.Message):
    __slots__ = ("group", "key", "value", "client_id", "seq")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    group: str
    key: str
    value: str
    client_id: int
    seq: int
    def __init__(self, group: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[str] = ..., client_id: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class StoreCasRequest(_message.Message):
    __slots__ = ("group", "key", "expected", "expect_absent", "value", "client_id", "seq")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    EXPECT_ABSENT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    group: str
    key: str
    expected: str
    expect_absent: bool
    value: str
    client_id: int
    seq: int
    def __init__(self, group: _Optional[str] = ..., key: _Optional[str] = ..., expected: _Optional[str] = ..., expect_absent: _Optional[bool] = ..., value: _Optional[str] = ..., client_id: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class StoreDeleteRequest(_message.Message):
    __slots__ = ("group", "key", "client_id", "seq")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    group: str
    key: str
    client_id: int
    seq: int
    def __init__(self, group: _Optional[str] = ..., key: _Optional[str] = ..., client_id: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class StoreWriteResponse(_message.Message):
    __slots__ = ("succeeded", "revision", "prev_value", "has_prev", "current_value", "has_current", "served_by")
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PREV_VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_PREV_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    succeeded: bool
    revision: int
    prev_value: str
    has_prev: bool
    current_value: str
    has_current: bool
    served_by: int
    def __init__(self, succeeded: _Optional[bool] = ..., revision: _Optional[int] = ..., prev_value: _Optional[str] = ..., has_prev: _Optional[bool] = ..., current_value: _Optional[str] = ..., has_current: _Optional[bool] = ..., served_by: _Optional[int] = ...) -> None: ...

class StoreWatchRequest(_message.Message):
    __slots__ = ("group", "prefix", "start_revision")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    group: str
    prefix: str
    start_revision: int
    def __init__(self, group: _Optional[str] = ..., prefix: _Optional[str] = ..., start_revision: _Optional[int] = ...) -> None: ...

class StoreWatchEvent(_message.Message):
    __slots__ = ("revision", "type", "key", "value", "prev_value", "has_prev")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PREV_VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_PREV_FIELD_NUMBER: _ClassVar[int]
    revision: int
    type: str
    key: str
    value: str
    prev_value: str
    has_prev: bool
    def __init__(self, revision: _Optional[int] = ..., type: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[str] = ..., prev_value: _Optional[str] = ..., has_prev: _Optional[bool] = ...) -> None: ...

class RaftStatusRequest(_message.Message):
    __slots__ = ("group",)
    GROUP_FIELD_NUMBER: _ClassVar[int]
    group: str
    def __init__(self, group: _Optional[str] = ...) -> None: ...

class RaftPeerProgress(_message.Message):
    __slots__ = ("id", "match", "next", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    match: int
    next: int
    state: str
    def __init__(self, id: _Optional[int] = ..., match: _Optional[int] = ..., next: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class RaftStatusResponse(_message.Message):
    __slots__ = ("group", "node_id", "role", "leader", "term", "commit", "applied", "last_index", "snapshot_index", "voters", "learners", "progress", "addresses", "cluster_id", "groups")
    class AddressesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    group: str
    node_id: int
    role: str
    leader: int
    term: int
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    voters: _containers.RepeatedScalarFieldContainer[int]
    learners: _containers.RepeatedScalarFieldContainer[int]
    progress: _containers.RepeatedCompositeFieldContainer[RaftPeerProgress]
    addresses: _containers.ScalarMap[int, str]
    cluster_id: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, group: _Optional[str] = ..., node_id: _Optional[int] = ..., role: _Optional[str] = ..., leader: _Optional[int] = ..., term: _Optional[int] = ..., commit: _Optional[int] = ..., applied: _Optional[int] = ..., last_index: _Optional[int] = ..., snapshot_index: _Optional[int] = ..., voters: _Optional[_Iterable[int]] = ..., learners: _Optional[_Iterable[int]] = ..., progress: _Optional[_Iterable[_Union[RaftPeerProgress, _Mapping]]] = ..., addresses: _Optional[_Mapping[int, str]] = ..., cluster_id: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ...) -> None: ...

class RaftTransferRequest(_message.Message):
    __slots__ = ("group", "target")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    group: str
    target: int
    def __init__(self, group: _Optional[str] = ..., target: _Optional[int] = ...) -> None: ...

class RaftSnapshotRequest(_message.Message):
    __slots__ = ("group",)
    GROUP_FIELD_NUMBER: _ClassVar[int]
    group: str
    def __init__(self, group: _Optional[str] = ...) -> None: ...

class RaftSnapshotResponse(_message.Message):
    __slots__ = ("index", "term", "size")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    size: int
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class RaftMembershipRequest(_message.Message):
    __slots__ = ("group", "op", "node_id", "address")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    group: str
    op: str
    node_id: int
    address: str
    def __init__(self, group: _Optional[str] = ..., op: _Optional[str] = ..., node_id: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...
