import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InstanceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTANCE_STATUS_UNSPECIFIED: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_PENDING: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_PROVISIONING: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_READY: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_DEGRADED: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_SUSPENDED: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_DELETING: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_DELETED: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_FAILED: _ClassVar[InstanceStatus]

class DesiredState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DESIRED_STATE_UNSPECIFIED: _ClassVar[DesiredState]
    DESIRED_STATE_RUNNING: _ClassVar[DesiredState]
    DESIRED_STATE_STOPPED: _ClassVar[DesiredState]
    DESIRED_STATE_DELETED: _ClassVar[DesiredState]
INSTANCE_STATUS_UNSPECIFIED: InstanceStatus
INSTANCE_STATUS_PENDING: InstanceStatus
INSTANCE_STATUS_PROVISIONING: InstanceStatus
INSTANCE_STATUS_READY: InstanceStatus
INSTANCE_STATUS_DEGRADED: InstanceStatus
INSTANCE_STATUS_SUSPENDED: InstanceStatus
INSTANCE_STATUS_DELETING: InstanceStatus
INSTANCE_STATUS_DELETED: InstanceStatus
INSTANCE_STATUS_FAILED: InstanceStatus
DESIRED_STATE_UNSPECIFIED: DesiredState
DESIRED_STATE_RUNNING: DesiredState
DESIRED_STATE_STOPPED: DesiredState
DESIRED_STATE_DELETED: DesiredState

class Instance(_message.Message):
    __slots__ = ("id", "app_id", "plan_id", "status", "status_reason", "desired_state", "url", "hostname", "subscription_id", "order_id", "credentials", "created_at", "updated_at", "ready_at", "suspended_by_billing", "data_deleted_after")
    ID_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    READY_AT_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_BY_BILLING_FIELD_NUMBER: _ClassVar[int]
    DATA_DELETED_AFTER_FIELD_NUMBER: _ClassVar[int]
    id: str
    app_id: str
    plan_id: str
    status: InstanceStatus
    status_reason: str
    desired_state: DesiredState
    url: str
    hostname: str
    subscription_id: str
    order_id: str
    credentials: Credentials
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    ready_at: _timestamp_pb2.Timestamp
    suspended_by_billing: bool
    data_deleted_after: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., app_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., status: _Optional[_Union[InstanceStatus, str]] = ..., status_reason: _Optional[str] = ..., desired_state: _Optional[_Union[DesiredState, str]] = ..., url: _Optional[str] = ..., hostname: _Optional[str] = ..., subscription_id: _Optional[str] = ..., order_id: _Optional[str] = ..., credentials: _Optional[_Union[Credentials, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ready_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., suspended_by_billing: _Optional[bool] = ..., data_deleted_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Credentials(_message.Message):
    __slots__ = ("username", "password", "login_url")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    LOGIN_URL_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    login_url: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ..., login_url: _Optional[str] = ...) -> None: ...

class ListInstancesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInstancesResponse(_message.Message):
    __slots__ = ("instances", "next_page_token")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    next_page_token: str
    def __init__(self, instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetInstanceRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class WatchInstanceRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class InstanceActionRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class InstanceEvent(_message.Message):
    __slots__ = ("instance", "at")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    instance: Instance
    at: _timestamp_pb2.Timestamp
    def __init__(self, instance: _Optional[_Union[Instance, _Mapping]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetInstanceUsageRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class InstanceUsage(_message.Message):
    __slots__ = ("instance_id", "metrics_available", "metrics_note", "cpu_millis", "memory_bytes", "cpu_limit_millis", "memory_limit_bytes", "storage_capacity_bytes", "storage_used_bytes", "observed_at")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    METRICS_NOTE_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_LIMIT_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    metrics_available: bool
    metrics_note: str
    cpu_millis: int
    memory_bytes: int
    cpu_limit_millis: int
    memory_limit_bytes: int
    storage_capacity_bytes: int
    storage_used_bytes: int
    observed_at: _timestamp_pb2.Timestamp
    def __init__(self, instance_id: _Optional[str] = ..., metrics_available: _Optional[bool] = ..., metrics_note: _Optional[str] = ..., cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., cpu_limit_millis: _Optional[int] = ..., memory_limit_bytes: _Optional[int] = ..., storage_capacity_bytes: _Optional[int] = ..., storage_used_bytes: _Optional[int] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListInstanceEventsRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class ListInstanceEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[InstanceHistoryEntry]
    def __init__(self, events: _Optional[_Iterable[_Union[InstanceHistoryEntry, _Mapping]]] = ...) -> None: ...

class GetInstanceDiagnosticsRequest(_message.Message):
    __slots__ = ("instance_id", "log_lines", "reason")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    LOG_LINES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    log_lines: int
    reason: str
    def __init__(self, instance_id: _Optional[str] = ..., log_lines: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class InstanceDiagnostics(_message.Message):
    __slots__ = ("instance_id", "namespace", "events", "pods", "volumes", "history", "observed_at")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    namespace: str
    events: _containers.RepeatedCompositeFieldContainer[KubernetesEvent]
    pods: _containers.RepeatedCompositeFieldContainer[PodDiagnostics]
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeDiagnostics]
    history: _containers.RepeatedCompositeFieldContainer[InstanceHistoryEntry]
    observed_at: _timestamp_pb2.Timestamp
    def __init__(self, instance_id: _Optional[str] = ..., namespace: _Optional[str] = ..., events: _Optional[_Iterable[_Union[KubernetesEvent, _Mapping]]] = ..., pods: _Optional[_Iterable[_Union[PodDiagnostics, _Mapping]]] = ..., volumes: _Optional[_Iterable[_Union[VolumeDiagnostics, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[InstanceHistoryEntry, _Mapping]]] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class KubernetesEvent(_message.Message):
    __slots__ = ("type", "reason", "message", "object", "count", "first_seen", "last_seen", "source")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    type: str
    reason: str
    message: str
    object: str
    count: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    source: str
    def __init__(self, type: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., object: _Optional[str] = ..., count: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class PodDiagnostics(_message.Message):
    __slots__ = ("name", "phase", "node", "conditions", "containers", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    phase: str
    node: str
    conditions: _containers.RepeatedCompositeFieldContainer[PodCondition]
    containers: _containers.RepeatedCompositeFieldContainer[ContainerDiagnostics]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., phase: _Optional[str] = ..., node: _Optional[str] = ..., conditions: _Optional[_Iterable[_Union[PodCondition, _Mapping]]] = ..., containers: _Optional[_Iterable[_Union[ContainerDiagnostics, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PodCondition(_message.Message):
    __slots__ = ("type", "status", "reason", "message")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    type: str
    status: str
    reason: str
    message: str
    def __init__(self, type: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ContainerDiagnostics(_message.Message):
    __slots__ = ("name", "image", "init", "ready", "restart_count", "state", "state_reason", "state_message", "last_termination_reason", "last_exit_code", "last_terminated_at", "log_tail", "log_note")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_TERMINATION_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_TERMINATED_AT_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    LOG_NOTE_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: str
    init: bool
    ready: bool
    restart_count: int
    state: str
    state_reason: str
    state_message: str
    last_termination_reason: str
    last_exit_code: int
    last_terminated_at: _timestamp_pb2.Timestamp
    log_tail: _containers.RepeatedScalarFieldContainer[str]
    log_note: str
    def __init__(self, name: _Optional[str] = ..., image: _Optional[str] = ..., init: _Optional[bool] = ..., ready: _Optional[bool] = ..., restart_count: _Optional[int] = ..., state: _Optional[str] = ..., state_reason: _Optional[str] = ..., state_message: _Optional[str] = ..., last_termination_reason: _Optional[str] = ..., last_exit_code: _Optional[int] = ..., last_terminated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., log_tail: _Optional[_Iterable[str]] = ..., log_note: _Optional[str] = ...) -> None: ...

class VolumeDiagnostics(_message.Message):
    __slots__ = ("claim", "phase", "volume", "storage_class", "requested_bytes", "capacity_bytes")
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    STORAGE_CLASS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    claim: str
    phase: str
    volume: str
    storage_class: str
    requested_bytes: int
    capacity_bytes: int
    def __init__(self, claim: _Optional[str] = ..., phase: _Optional[str] = ..., volume: _Optional[str] = ..., storage_class: _Optional[str] = ..., requested_bytes: _Optional[int] = ..., capacity_bytes: _Optional[int] = ...) -> None: ...

class InstanceHistoryEntry(_message.Message):
    __slots__ = ("status", "reason", "at", "actor")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    status: InstanceStatus
    reason: str
    at: _timestamp_pb2.Timestamp
    actor: str
    def __init__(self, status: _Optional[_Union[InstanceStatus, str]] = ..., reason: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ...) -> None: ...
