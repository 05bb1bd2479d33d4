import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TicketSeverity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TICKET_SEVERITY_UNSPECIFIED: _ClassVar[TicketSeverity]
    TICKET_SEVERITY_CRITICAL: _ClassVar[TicketSeverity]
    TICKET_SEVERITY_HIGH: _ClassVar[TicketSeverity]
    TICKET_SEVERITY_NORMAL: _ClassVar[TicketSeverity]
    TICKET_SEVERITY_LOW: _ClassVar[TicketSeverity]

class TicketStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TICKET_STATUS_UNSPECIFIED: _ClassVar[TicketStatus]
    TICKET_STATUS_OPEN: _ClassVar[TicketStatus]
    TICKET_STATUS_WAITING_ON_CUSTOMER: _ClassVar[TicketStatus]
    TICKET_STATUS_RESOLVED: _ClassVar[TicketStatus]

class TicketAuthor(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TICKET_AUTHOR_UNSPECIFIED: _ClassVar[TicketAuthor]
    TICKET_AUTHOR_CUSTOMER: _ClassVar[TicketAuthor]
    TICKET_AUTHOR_OPERATOR: _ClassVar[TicketAuthor]

class SlaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SLA_STATE_UNSPECIFIED: _ClassVar[SlaState]
    SLA_STATE_MET: _ClassVar[SlaState]
    SLA_STATE_ON_TRACK: _ClassVar[SlaState]
    SLA_STATE_AT_RISK: _ClassVar[SlaState]
    SLA_STATE_BREACHED: _ClassVar[SlaState]
TICKET_SEVERITY_UNSPECIFIED: TicketSeverity
TICKET_SEVERITY_CRITICAL: TicketSeverity
TICKET_SEVERITY_HIGH: TicketSeverity
TICKET_SEVERITY_NORMAL: TicketSeverity
TICKET_SEVERITY_LOW: TicketSeverity
TICKET_STATUS_UNSPECIFIED: TicketStatus
TICKET_STATUS_OPEN: TicketStatus
TICKET_STATUS_WAITING_ON_CUSTOMER: TicketStatus
TICKET_STATUS_RESOLVED: TicketStatus
TICKET_AUTHOR_UNSPECIFIED: TicketAuthor
TICKET_AUTHOR_CUSTOMER: TicketAuthor
TICKET_AUTHOR_OPERATOR: TicketAuthor
SLA_STATE_UNSPECIFIED: SlaState
SLA_STATE_MET: SlaState
SLA_STATE_ON_TRACK: SlaState
SLA_STATE_AT_RISK: SlaState
SLA_STATE_BREACHED: SlaState

class Ticket(_message.Message):
    __slots__ = ("id", "subject", "severity", "status", "instance_id", "account_id", "customer_id", "created_at", "updated_at", "first_response_due_at", "first_response_at", "sla_state", "resolved_at", "message_count")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FIRST_RESPONSE_DUE_AT_FIELD_NUMBER: _ClassVar[int]
    FIRST_RESPONSE_AT_FIELD_NUMBER: _ClassVar[int]
    SLA_STATE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    id: str
    subject: str
    severity: TicketSeverity
    status: TicketStatus
    instance_id: str
    account_id: str
    customer_id: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    first_response_due_at: _timestamp_pb2.Timestamp
    first_response_at: _timestamp_pb2.Timestamp
    sla_state: SlaState
    resolved_at: _timestamp_pb2.Timestamp
    message_count: int
    def __init__(self, id: _Optional[str] = ..., subject: _Optional[str] = ..., severity: _Optional[_Union[TicketSeverity, str]] = ..., status: _Optional[_Union[TicketStatus, str]] = ..., instance_id: _Optional[str] = ..., account_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first_response_due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first_response_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sla_state: _Optional[_Union[SlaState, str]] = ..., resolved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message_count: _Optional[int] = ...) -> None: ...

class TicketMessage(_message.Message):
    __slots__ = ("id", "author", "author_name", "body", "at")
    ID_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_NAME_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    author: TicketAuthor
    author_name: str
    body: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., author: _Optional[_Union[TicketAuthor, str]] = ..., author_name: _Optional[str] = ..., body: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TicketThread(_message.Message):
    __slots__ = ("ticket", "messages")
    TICKET_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ticket: Ticket
    messages: _containers.RepeatedCompositeFieldContainer[TicketMessage]
    def __init__(self, ticket: _Optional[_Union[Ticket, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[TicketMessage, _Mapping]]] = ...) -> None: ...

class OpenTicketRequest(_message.Message):
    __slots__ = ("subject", "body", "severity", "instance_id")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    subject: str
    body: str
    severity: TicketSeverity
    instance_id: str
    def __init__(self, subject: _Optional[str] = ..., body: _Optional[str] = ..., severity: _Optional[_Union[TicketSeverity, str]] = ..., instance_id: _Optional[str] = ...) -> None: ...

class ListTicketsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTicketsResponse(_message.Message):
    __slots__ = ("tickets", "next_page_token")
    TICKETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tickets: _containers.RepeatedCompositeFieldContainer[Ticket]
    next_page_token: str
    def __init__(self, tickets: _Optional[_Iterable[_Union[Ticket, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTicketRequest(_message.Message):
    __slots__ = ("ticket_id",)
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    ticket_id: str
    def __init__(self, ticket_id: _Optional[str] = ...) -> None: ...

class ReplyToTicketRequest(_message.Message):
    __slots__ = ("ticket_id", "body")
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    ticket_id: str
    body: str
    def __init__(self, ticket_id: _Optional[str] = ..., body: _Optional[str] = ...) -> None: ...

class ResolveTicketRequest(_message.Message):
    __slots__ = ("ticket_id",)
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    ticket_id: str
    def __init__(self, ticket_id: _Optional[str] = ...) -> None: ...

class ListTicketQueueRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class QueuedTicket(_message.Message):
    __slots__ = ("ticket", "email", "response_due_at", "time_left", "sla")
    TICKET_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_DUE_AT_FIELD_NUMBER: _ClassVar[int]
    TIME_LEFT_FIELD_NUMBER: _ClassVar[int]
    SLA_FIELD_NUMBER: _ClassVar[int]
    ticket: Ticket
    email: str
    response_due_at: _timestamp_pb2.Timestamp
    time_left: _duration_pb2.Duration
    sla: _duration_pb2.Duration
    def __init__(self, ticket: _Optional[_Union[Ticket, _Mapping]] = ..., email: _Optional[str] = ..., response_due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., time_left: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., sla: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ListTicketQueueResponse(_message.Message):
    __slots__ = ("tickets", "next_page_token")
    TICKETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tickets: _containers.RepeatedCompositeFieldContainer[QueuedTicket]
    next_page_token: str
    def __init__(self, tickets: _Optional[_Iterable[_Union[QueuedTicket, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class OperatorReplyRequest(_message.Message):
    __slots__ = ("ticket_id", "body", "resolve")
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_FIELD_NUMBER: _ClassVar[int]
    ticket_id: str
    body: str
    resolve: bool
    def __init__(self, ticket_id: _Optional[str] = ..., body: _Optional[str] = ..., resolve: _Optional[bool] = ...) -> None: ...

class GetSupportReportRequest(_message.Message):
    __slots__ = ("to",)
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    to: _timestamp_pb2.Timestamp
    def __init__(self, to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., **kwargs) -> None: ...

class SupportFigures(_message.Message):
    __slots__ = ("opened", "responded", "judged", "breached", "breach_rate", "mean_first_response", "p90_first_response")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    RESPONDED_FIELD_NUMBER: _ClassVar[int]
    JUDGED_FIELD_NUMBER: _ClassVar[int]
    BREACHED_FIELD_NUMBER: _ClassVar[int]
    BREACH_RATE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIRST_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    P90_FIRST_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    opened: int
    responded: int
    judged: int
    breached: int
    breach_rate: float
    mean_first_response: _duration_pb2.Duration
    p90_first_response: _duration_pb2.Duration
    def __init__(self, opened: _Optional[int] = ..., responded: _Optional[int] = ..., judged: _Optional[int] = ..., breached: _Optional[int] = ..., breach_rate: _Optional[float] = ..., mean_first_response: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p90_first_response: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SeverityFigures(_message.Message):
    __slots__ = ("severity", "sla", "figures")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SLA_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    severity: TicketSeverity
    sla: _duration_pb2.Duration
    figures: SupportFigures
    def __init__(self, severity: _Optional[_Union[TicketSeverity, str]] = ..., sla: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., figures: _Optional[_Union[SupportFigures, _Mapping]] = ...) -> None: ...

class SupportReport(_message.Message):
    __slots__ = ("total", "by_severity", "unresolved", "to", "generated_at")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BY_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    UNRESOLVED_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    total: SupportFigures
    by_severity: _containers.RepeatedCompositeFieldContainer[SeverityFigures]
    unresolved: int
    to: _timestamp_pb2.Timestamp
    generated_at: _timestamp_pb2.Timestamp
    def __init__(self, total: _Optional[_Union[SupportFigures, _Mapping]] = ..., by_severity: _Optional[_Iterable[_Union[SeverityFigures, _Mapping]]] = ..., unresolved: _Optional[int] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., **kwargs) -> None: ...
