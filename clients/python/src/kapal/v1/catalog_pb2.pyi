from kapal.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListAppsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAppsResponse(_message.Message):
    __slots__ = ("apps",)
    APPS_FIELD_NUMBER: _ClassVar[int]
    apps: _containers.RepeatedCompositeFieldContainer[App]
    def __init__(self, apps: _Optional[_Iterable[_Union[App, _Mapping]]] = ...) -> None: ...

class GetAppRequest(_message.Message):
    __slots__ = ("app_id",)
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    app_id: str
    def __init__(self, app_id: _Optional[str] = ...) -> None: ...

class App(_message.Message):
    __slots__ = ("id", "name", "description", "version", "plans", "documentation_url")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PLANS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTATION_URL_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    description: str
    version: str
    plans: _containers.RepeatedCompositeFieldContainer[Plan]
    documentation_url: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., version: _Optional[str] = ..., plans: _Optional[_Iterable[_Union[Plan, _Mapping]]] = ..., documentation_url: _Optional[str] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("id", "name", "monthly_price", "trial_days", "cpu_millis", "memory_mib", "storage_gib")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_PRICE_FIELD_NUMBER: _ClassVar[int]
    TRIAL_DAYS_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    STORAGE_GIB_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    monthly_price: _common_pb2.Money
    trial_days: int
    cpu_millis: int
    memory_mib: int
    storage_gib: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., monthly_price: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., trial_days: _Optional[int] = ..., cpu_millis: _Optional[int] = ..., memory_mib: _Optional[int] = ..., storage_gib: _Optional[int] = ...) -> None: ...
