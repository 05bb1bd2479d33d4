import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kapal.v1 import common_pb2 as _common_pb2
from kapal.v1 import instance_pb2 as _instance_pb2
from kapal.v1 import subscription_pb2 as _subscription_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AlertSeverity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_SEVERITY_UNSPECIFIED: _ClassVar[AlertSeverity]
    ALERT_SEVERITY_WARNING: _ClassVar[AlertSeverity]
    ALERT_SEVERITY_CRITICAL: _ClassVar[AlertSeverity]
ALERT_SEVERITY_UNSPECIFIED: AlertSeverity
ALERT_SEVERITY_WARNING: AlertSeverity
ALERT_SEVERITY_CRITICAL: AlertSeverity

class ListInvoicesAsAdminRequest(_message.Message):
    __slots__ = ("account_id", "subscription_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    subscription_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ExtendSubscriptionRequest(_message.Message):
    __slots__ = ("subscription_id", "days", "reason")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    days: int
    reason: str
    def __init__(self, subscription_id: _Optional[str] = ..., days: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class CreditInvoiceRequest(_message.Message):
    __slots__ = ("invoice_id", "amount", "reason")
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    amount: _common_pb2.Money
    reason: str
    def __init__(self, invoice_id: _Optional[str] = ..., amount: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class CreditInvoiceResponse(_message.Message):
    __slots__ = ("credit_note", "invoice")
    CREDIT_NOTE_FIELD_NUMBER: _ClassVar[int]
    INVOICE_FIELD_NUMBER: _ClassVar[int]
    credit_note: _subscription_pb2.CreditNote
    invoice: _subscription_pb2.Invoice
    def __init__(self, credit_note: _Optional[_Union[_subscription_pb2.CreditNote, _Mapping]] = ..., invoice: _Optional[_Union[_subscription_pb2.Invoice, _Mapping]] = ...) -> None: ...

class AdminInstance(_message.Message):
    __slots__ = ("instance", "account_id", "customer_id", "email", "namespace")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    instance: _instance_pb2.Instance
    account_id: str
    customer_id: str
    email: str
    namespace: str
    def __init__(self, instance: _Optional[_Union[_instance_pb2.Instance, _Mapping]] = ..., account_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., email: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ListAllInstancesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "app_id", "account_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: _instance_pb2.InstanceStatus
    app_id: str
    account_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[_instance_pb2.InstanceStatus, str]] = ..., app_id: _Optional[str] = ..., account_id: _Optional[str] = ...) -> None: ...

class ListAllInstancesResponse(_message.Message):
    __slots__ = ("instances", "next_page_token")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[AdminInstance]
    next_page_token: str
    def __init__(self, instances: _Optional[_Iterable[_Union[AdminInstance, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetInstanceAsAdminRequest(_message.Message):
    __slots__ = ("instance_id", "include_credentials", "reason")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    include_credentials: bool
    reason: str
    def __init__(self, instance_id: _Optional[str] = ..., include_credentials: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class GetCapacityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResourceAmounts(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes", "pods")
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    pods: int
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., pods: _Optional[int] = ...) -> None: ...

class NodeCapacity(_message.Message):
    __slots__ = ("name", "ready", "schedulable", "allocatable", "requested")
    NAME_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    SCHEDULABLE_FIELD_NUMBER: _ClassVar[int]
    ALLOCATABLE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    name: str
    ready: bool
    schedulable: bool
    allocatable: ResourceAmounts
    requested: ResourceAmounts
    def __init__(self, name: _Optional[str] = ..., ready: _Optional[bool] = ..., schedulable: _Optional[bool] = ..., allocatable: _Optional[_Union[ResourceAmounts, _Mapping]] = ..., requested: _Optional[_Union[ResourceAmounts, _Mapping]] = ...) -> None: ...

class Capacity(_message.Message):
    __slots__ = ("nodes", "allocatable", "requested", "requested_by_kapal", "committed", "ceiling_percent", "observed_at")
    NODES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATABLE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_KAPAL_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    CEILING_PERCENT_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeCapacity]
    allocatable: ResourceAmounts
    requested: ResourceAmounts
    requested_by_kapal: ResourceAmounts
    committed: ResourceAmounts
    ceiling_percent: int
    observed_at: _timestamp_pb2.Timestamp
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeCapacity, _Mapping]]] = ..., allocatable: _Optional[_Union[ResourceAmounts, _Mapping]] = ..., requested: _Optional[_Union[ResourceAmounts, _Mapping]] = ..., requested_by_kapal: _Optional[_Union[ResourceAmounts, _Mapping]] = ..., committed: _Optional[_Union[ResourceAmounts, _Mapping]] = ..., ceiling_percent: _Optional[int] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Alert(_message.Message):
    __slots__ = ("kind", "severity", "message", "subject", "since")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    severity: AlertSeverity
    message: str
    subject: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[str] = ..., severity: _Optional[_Union[AlertSeverity, str]] = ..., message: _Optional[str] = ..., subject: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "actor_account_id", "actor_email", "action", "instance_id", "instance_account_id", "reason", "at", "target")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_EMAIL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    id: str
    actor_account_id: str
    actor_email: str
    action: str
    instance_id: str
    instance_account_id: str
    reason: str
    at: _timestamp_pb2.Timestamp
    target: str
    def __init__(self, id: _Optional[str] = ..., actor_account_id: _Optional[str] = ..., actor_email: _Optional[str] = ..., action: _Optional[str] = ..., instance_id: _Optional[str] = ..., instance_account_id: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., target: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetRevenueReportRequest(_message.Message):
    __slots__ = ("to",)
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    to: _timestamp_pb2.Timestamp
    def __init__(self, to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., **kwargs) -> None: ...

class AppSubscriptions(_message.Message):
    __slots__ = ("app_id", "trialing", "active", "past_due", "suspended", "mrr")
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    TRIALING_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PAST_DUE_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    MRR_FIELD_NUMBER: _ClassVar[int]
    app_id: str
    trialing: int
    active: int
    past_due: int
    suspended: int
    mrr: _common_pb2.Money
    def __init__(self, app_id: _Optional[str] = ..., trialing: _Optional[int] = ..., active: _Optional[int] = ..., past_due: _Optional[int] = ..., suspended: _Optional[int] = ..., mrr: _Optional[_Union[_common_pb2.Money, _Mapping]] = ...) -> None: ...

class InvoicePeriod(_message.Message):
    __slots__ = ("month", "invoices", "paid", "failed", "void", "invoiced", "collected", "credited")
    MONTH_FIELD_NUMBER: _ClassVar[int]
    INVOICES_FIELD_NUMBER: _ClassVar[int]
    PAID_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    VOID_FIELD_NUMBER: _ClassVar[int]
    INVOICED_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_FIELD_NUMBER: _ClassVar[int]
    CREDITED_FIELD_NUMBER: _ClassVar[int]
    month: str
    invoices: int
    paid: int
    failed: int
    void: int
    invoiced: _common_pb2.Money
    collected: _common_pb2.Money
    credited: _common_pb2.Money
    def __init__(self, month: _Optional[str] = ..., invoices: _Optional[int] = ..., paid: _Optional[int] = ..., failed: _Optional[int] = ..., void: _Optional[int] = ..., invoiced: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., collected: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., credited: _Optional[_Union[_common_pb2.Money, _Mapping]] = ...) -> None: ...

class RevenueReport(_message.Message):
    __slots__ = ("mrr", "by_app", "trials_ended", "trials_converted", "trial_conversion_rate", "renewals_due", "renewals_paid", "renewal_rate", "churned", "churn_rate", "invoices_by_month", "invoiced_total", "collected_total", "to", "generated_at", "credited_total")
    MRR_FIELD_NUMBER: _ClassVar[int]
    BY_APP_FIELD_NUMBER: _ClassVar[int]
    TRIALS_ENDED_FIELD_NUMBER: _ClassVar[int]
    TRIALS_CONVERTED_FIELD_NUMBER: _ClassVar[int]
    TRIAL_CONVERSION_RATE_FIELD_NUMBER: _ClassVar[int]
    RENEWALS_DUE_FIELD_NUMBER: _ClassVar[int]
    RENEWALS_PAID_FIELD_NUMBER: _ClassVar[int]
    RENEWAL_RATE_FIELD_NUMBER: _ClassVar[int]
    CHURNED_FIELD_NUMBER: _ClassVar[int]
    CHURN_RATE_FIELD_NUMBER: _ClassVar[int]
    INVOICES_BY_MONTH_FIELD_NUMBER: _ClassVar[int]
    INVOICED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREDITED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    mrr: _common_pb2.Money
    by_app: _containers.RepeatedCompositeFieldContainer[AppSubscriptions]
    trials_ended: int
    trials_converted: int
    trial_conversion_rate: float
    renewals_due: int
    renewals_paid: int
    renewal_rate: float
    churned: int
    churn_rate: float
    invoices_by_month: _containers.RepeatedCompositeFieldContainer[InvoicePeriod]
    invoiced_total: _common_pb2.Money
    collected_total: _common_pb2.Money
    to: _timestamp_pb2.Timestamp
    generated_at: _timestamp_pb2.Timestamp
    credited_total: _common_pb2.Money
    def __init__(self, mrr: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., by_app: _Optional[_Iterable[_Union[AppSubscriptions, _Mapping]]] = ..., trials_ended: _Optional[int] = ..., trials_converted: _Optional[int] = ..., trial_conversion_rate: _Optional[float] = ..., renewals_due: _Optional[int] = ..., renewals_paid: _Optional[int] = ..., renewal_rate: _Optional[float] = ..., churned: _Optional[int] = ..., churn_rate: _Optional[float] = ..., invoices_by_month: _Optional[_Iterable[_Union[InvoicePeriod, _Mapping]]] = ..., invoiced_total: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., collected_total: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., credited_total: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., **kwargs) -> None: ...

class ListAllSubscriptionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "app_id", "account_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: _subscription_pb2.SubscriptionStatus
    app_id: str
    account_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[_subscription_pb2.SubscriptionStatus, str]] = ..., app_id: _Optional[str] = ..., account_id: _Optional[str] = ...) -> None: ...

class ListAllSubscriptionsResponse(_message.Message):
    __slots__ = ("subscriptions", "next_page_token")
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[_subscription_pb2.Subscription]
    next_page_token: str
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[_subscription_pb2.Subscription, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
