import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kapal.v1 import instance_pb2 as _instance_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SuspendAccountRequest(_message.Message):
    __slots__ = ("account_id", "reason")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reason: str
    def __init__(self, account_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UnsuspendAccountRequest(_message.Message):
    __slots__ = ("account_id", "reason")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reason: str
    def __init__(self, account_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AccountSuspension(_message.Message):
    __slots__ = ("account_id", "suspended", "reason", "suspended_at", "instance_ids", "not_started")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_AT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_IDS_FIELD_NUMBER: _ClassVar[int]
    NOT_STARTED_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    suspended: bool
    reason: str
    suspended_at: _timestamp_pb2.Timestamp
    instance_ids: _containers.RepeatedScalarFieldContainer[str]
    not_started: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, account_id: _Optional[str] = ..., suspended: _Optional[bool] = ..., reason: _Optional[str] = ..., suspended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., instance_ids: _Optional[_Iterable[str]] = ..., not_started: _Optional[_Iterable[str]] = ...) -> None: ...

class OperatorInstanceActionRequest(_message.Message):
    __slots__ = ("instance_id", "reason", "override_capacity")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    reason: str
    override_capacity: bool
    def __init__(self, instance_id: _Optional[str] = ..., reason: _Optional[str] = ..., override_capacity: _Optional[bool] = ...) -> None: ...
