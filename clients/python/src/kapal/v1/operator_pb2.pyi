from kapal.v1 import instance_pb2 as _instance_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class OperatorInstanceActionRequest(_message.Message):
    __slots__ = ("instance_id", "reason", "override_capacity")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    reason: str
    override_capacity: bool
    def __init__(self, instance_id: _Optional[str] = ..., reason: _Optional[str] = ..., override_capacity: _Optional[bool] = ...) -> None: ...
