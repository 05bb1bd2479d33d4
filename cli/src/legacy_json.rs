//! THROWAWAY: the JSON functions as they were before the Render trait, to check that the new
//! serde shapes print the same JSON. Not to be committed for good.
#![allow(dead_code)]
use crate::output::{money, rfc3339, to_utc};
use chrono::Utc;
use kapal::proto::v1::*;
use serde_json::{Value, json};

pub fn ts_json(t: Option<&prost_types::Timestamp>) -> Value {
    match t.and_then(to_utc) {
        Some(t) => json!(rfc3339(Some(t))),
        None => Value::Null,
    }
}

pub fn money_json(m: Option<&Money>) -> Value {
    match m {
        Some(m) => json!({ "amount": m.amount, "currency": m.currency, "display": money(Some(m)) }),
        None => Value::Null,
    }
}

pub fn short<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

pub fn instance_status_name(s: InstanceStatus) -> &'static str {
    short(s.as_str_name(), "INSTANCE_STATUS_")
}

pub fn desired_name(i: &Instance) -> &'static str {
    short(i.desired_state().as_str_name(), "DESIRED_STATE_")
}

pub fn order_status(o: &Order) -> &'static str {
    short(o.status().as_str_name(), "ORDER_STATUS_")
}

pub fn subscription_status(s: &Subscription) -> &'static str {
    subscription_status_name(s.status())
}

pub fn subscription_status_name(s: SubscriptionStatus) -> &'static str {
    short(s.as_str_name(), "SUBSCRIPTION_STATUS_")
}

pub fn invoice_status(i: &Invoice) -> &'static str {
    short(i.status().as_str_name(), "INVOICE_STATUS_")
}

pub fn role_name(a: &Account) -> &'static str {
    short(a.role().as_str_name(), "ROLE_")
}

pub fn account_json(a: &Account) -> Value {
    json!({
        "id": a.id,
        "email": a.email,
        "customer_id": a.customer_id,
        "display_name": a.display_name,
        "role": role_name(a),
        "created_at": ts_json(a.created_at.as_ref()),
    })
}

pub fn plan_json(p: &Plan) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "monthly_price": money_json(p.monthly_price.as_ref()),
        "trial_days": p.trial_days,
        "cpu_millis": p.cpu_millis,
        "memory_mib": p.memory_mib,
        "storage_gib": p.storage_gib,
    })
}

pub fn app_json(a: &App) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "description": a.description,
        "version": a.version,
        "documentation_url": a.documentation_url,
        "plans": a.plans.iter().map(plan_json).collect::<Vec<_>>(),
    })
}

pub fn order_json(o: &Order) -> Value {
    json!({
        "id": o.id,
        "app_id": o.app_id,
        "plan_id": o.plan_id,
        "status": order_status(o),
        "failure_reason": o.failure_reason,
        "amount": money_json(o.amount.as_ref()),
        "subscription_id": o.subscription_id,
        "instance_id": o.instance_id,
        "idempotency_key": o.idempotency_key,
        "created_at": ts_json(o.created_at.as_ref()),
        "updated_at": ts_json(o.updated_at.as_ref()),
    })
}

pub fn instance_json(i: &Instance) -> Value {
    json!({
        "id": i.id,
        "app_id": i.app_id,
        "plan_id": i.plan_id,
        "status": instance_status_name(i.status()),
        "status_reason": i.status_reason,
        "desired_state": desired_name(i),
        "url": i.url,
        "hostname": i.hostname,
        "subscription_id": i.subscription_id,
        "order_id": i.order_id,
        "credentials": i.credentials.as_ref().map(|c| json!({
            "username": c.username,
            "password": c.password,
            "login_url": c.login_url,
        })),
        "created_at": ts_json(i.created_at.as_ref()),
        "updated_at": ts_json(i.updated_at.as_ref()),
        "ready_at": ts_json(i.ready_at.as_ref()),
        "suspended_by_billing": i.suspended_by_billing,
        "data_deleted_after": ts_json(i.data_deleted_after.as_ref()),
    })
}

pub fn subscription_json(s: &Subscription) -> Value {
    json!({
        "id": s.id,
        "app_id": s.app_id,
        "plan_id": s.plan_id,
        "status": subscription_status(s),
        "price": money_json(s.price.as_ref()),
        "current_period_start": ts_json(s.current_period_start.as_ref()),
        "current_period_end": ts_json(s.current_period_end.as_ref()),
        "auto_renew": s.auto_renew,
        "cancel_at_period_end": s.cancel_at_period_end,
        "order_id": s.order_id,
        "created_at": ts_json(s.created_at.as_ref()),
        "trial_end": ts_json(s.trial_end.as_ref()),
        "next_plan_id": s.next_plan_id,
        "instance_id": s.instance_id,
    })
}

pub fn invoice_json(i: &Invoice) -> Value {
    json!({
        "id": i.id,
        "number": i.number,
        "subscription_id": i.subscription_id,
        "period_start": ts_json(i.period_start.as_ref()),
        "period_end": ts_json(i.period_end.as_ref()),
        "amount": money_json(i.amount.as_ref()),
        "status": invoice_status(i),
        "created_at": ts_json(i.created_at.as_ref()),
        "paid_at": ts_json(i.paid_at.as_ref()),
        "payment_provider": i.payment_provider,
        "payment_reference": i.payment_reference,
    })
}

pub fn token_json(k: &ApiToken) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "state": token_state(k, Utc::now()),
        "created_at": ts_json(k.created_at.as_ref()),
        "expires_at": ts_json(k.expires_at.as_ref()),
        "revoked_at": ts_json(k.revoked_at.as_ref()),
    })
}

pub fn token_state(k: &ApiToken, now: chrono::DateTime<Utc>) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k
        .expires_at
        .as_ref()
        .and_then(to_utc)
        .is_some_and(|t| t <= now)
    {
        "expired"
    } else {
        "active"
    }
}

pub fn admin_instance_json(a: &AdminInstance) -> Value {
    json!({
        "instance": a.instance.as_ref().map(instance_json),
        "account_id": a.account_id,
        "customer_id": a.customer_id,
        "email": a.email,
        "namespace": a.namespace,
    })
}

pub fn amounts_json(a: Option<&ResourceAmounts>) -> Value {
    let a = a.copied().unwrap_or_default();
    json!({ "cpu_millis": a.cpu_millis, "memory_bytes": a.memory_bytes, "pods": a.pods })
}

pub fn capacity_json(c: &Capacity) -> Value {
    json!({
        "nodes": c.nodes.iter().map(|n| json!({
            "name": n.name,
            "ready": n.ready,
            "schedulable": n.schedulable,
            "allocatable": amounts_json(n.allocatable.as_ref()),
            "requested": amounts_json(n.requested.as_ref()),
        })).collect::<Vec<_>>(),
        "allocatable": amounts_json(c.allocatable.as_ref()),
        "requested": amounts_json(c.requested.as_ref()),
        "requested_by_kapal": amounts_json(c.requested_by_kapal.as_ref()),
        "committed": amounts_json(c.committed.as_ref()),
        "ceiling_percent": c.ceiling_percent,
        "observed_at": ts_json(c.observed_at.as_ref()),
    })
}

pub fn severity(a: &Alert) -> &'static str {
    short(a.severity().as_str_name(), "ALERT_SEVERITY_")
}

pub fn alert_json(a: &Alert) -> Value {
    json!({
        "severity": severity(a),
        "kind": a.kind,
        "subject": a.subject,
        "since": ts_json(a.since.as_ref()),
        "message": a.message,
    })
}

pub fn audit_json(e: &AuditEvent) -> Value {
    json!({
        "id": e.id,
        "at": ts_json(e.at.as_ref()),
        "actor_account_id": e.actor_account_id,
        "actor_email": e.actor_email,
        "action": e.action,
        "instance_id": e.instance_id,
        "instance_account_id": e.instance_account_id,
        "reason": e.reason,
    })
}

pub fn revenue_json(r: &RevenueReport) -> Value {
    json!({
        "from": ts_json(r.from.as_ref()),
        "to": ts_json(r.to.as_ref()),
        "generated_at": ts_json(r.generated_at.as_ref()),
        "mrr": money_json(r.mrr.as_ref()),
        "by_app": r.by_app.iter().map(|a| json!({
            "app_id": a.app_id,
            "trialing": a.trialing,
            "active": a.active,
            "past_due": a.past_due,
            "suspended": a.suspended,
            "mrr": money_json(a.mrr.as_ref()),
        })).collect::<Vec<_>>(),
        "trials_ended": r.trials_ended,
        "trials_converted": r.trials_converted,
        "trial_conversion_rate": r.trial_conversion_rate,
        "renewals_due": r.renewals_due,
        "renewals_paid": r.renewals_paid,
        "renewal_rate": r.renewal_rate,
        "renewal_rate_below_target": r.renewals_due > 0 && r.renewal_rate < RENEWAL_TARGET,
        "churned": r.churned,
        "churn_rate": r.churn_rate,
        "invoices_by_month": r.invoices_by_month.iter().map(|m| json!({
            "month": m.month,
            "invoices": m.invoices,
            "paid": m.paid,
            "failed": m.failed,
            "void": m.void,
            "invoiced": money_json(m.invoiced.as_ref()),
            "collected": money_json(m.collected.as_ref()),
        })).collect::<Vec<_>>(),
        "invoiced_total": money_json(r.invoiced_total.as_ref()),
        "collected_total": money_json(r.collected_total.as_ref()),
    })
}

pub fn admin_subscription_json(s: &Subscription) -> Value {
    let mut v = subscription_json(s);
    v["account_id"] = json!(s.account_id);
    v
}

const RENEWAL_TARGET: f64 = 0.8;
pub fn usage_json(u: &InstanceUsage) -> Value {
    // Usage the cluster did not report is null, never 0.
    let reported = |v: Option<i64>| if u.metrics_available { v } else { None };
    json!({
        "instance_id": u.instance_id,
        "metrics_available": u.metrics_available,
        "metrics_note": u.metrics_note,
        "cpu_millis": reported(u.cpu_millis),
        "cpu_limit_millis": u.cpu_limit_millis,
        "memory_bytes": reported(u.memory_bytes),
        "memory_limit_bytes": u.memory_limit_bytes,
        "storage_capacity_bytes": u.storage_capacity_bytes,
        "storage_used_bytes": u.storage_used_bytes,
        "observed_at": ts_json(u.observed_at.as_ref()),
    })
}

pub fn subscription_event_json(e: &SubscriptionEvent) -> Value {
    let status = |s: SubscriptionStatus| match s {
        SubscriptionStatus::Unspecified => Value::Null,
        s => json!(subscription_status_name(s)),
    };
    json!({
        "at": ts_json(e.at.as_ref()),
        "from_status": status(e.from_status()),
        "to_status": status(e.to_status()),
        "cause": e.cause,
    })
}

/// Rich fixtures (every field set) and empty ones.
pub mod rich {
    use kapal::proto::v1::*;
    fn ts(s: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: 1_790_000_000 + s,
            nanos: 0,
        })
    }
    fn m(a: i64) -> Option<Money> {
        Some(Money {
            amount: a,
            currency: "IDR".into(),
        })
    }
    pub fn account() -> Account {
        Account {
            id: "a1".into(),
            email: "e@x".into(),
            customer_id: "c1".into(),
            display_name: "Sari \"S\" ü".into(),
            role: Role::Admin as i32,
            created_at: ts(1),
        }
    }
    pub fn plan() -> Plan {
        Plan {
            id: "starter".into(),
            name: "Starter".into(),
            monthly_price: m(79_000),
            trial_days: 14,
            cpu_millis: 500,
            memory_mib: 512,
            storage_gib: 5,
        }
    }
    pub fn app() -> App {
        App {
            id: "n8n".into(),
            name: "n8n".into(),
            description: "d".into(),
            version: "1.2".into(),
            plans: vec![plan(), Plan::default()],
            documentation_url: "https://d".into(),
        }
    }
    pub fn order() -> Order {
        Order {
            id: "o1".into(),
            app_id: "n8n".into(),
            plan_id: "trial".into(),
            status: OrderStatus::Failed as i32,
            failure_reason: "no".into(),
            amount: m(0),
            subscription_id: "s1".into(),
            instance_id: "i1".into(),
            idempotency_key: "k".into(),
            created_at: ts(2),
            updated_at: ts(3),
        }
    }
    pub fn instance() -> Instance {
        Instance {
            id: "i1".into(),
            app_id: "n8n".into(),
            plan_id: "trial".into(),
            status: InstanceStatus::Ready as i32,
            status_reason: "r".into(),
            desired_state: 1,
            url: "https://u".into(),
            hostname: "h".into(),
            subscription_id: "s1".into(),
            order_id: "o1".into(),
            credentials: Some(Credentials {
                username: "u".into(),
                password: "p".into(),
                login_url: "l".into(),
            }),
            created_at: ts(4),
            updated_at: ts(5),
            ready_at: ts(6),
            suspended_by_billing: true,
            data_deleted_after: ts(7),
        }
    }
    pub fn subscription() -> Subscription {
        Subscription {
            id: "s1".into(),
            app_id: "n8n".into(),
            plan_id: "p".into(),
            status: SubscriptionStatus::PastDue as i32,
            price: Some(Money {
                amount: -5,
                currency: "USD".into(),
            }),
            current_period_start: ts(8),
            current_period_end: ts(9),
            auto_renew: true,
            cancel_at_period_end: true,
            order_id: "o1".into(),
            created_at: ts(10),
            trial_end: ts(11),
            next_plan_id: "pro".into(),
            instance_id: "i1".into(),
            account_id: "acc".into(),
        }
    }
    pub fn invoice() -> Invoice {
        Invoice {
            id: "v1".into(),
            number: "INV-1".into(),
            subscription_id: "s1".into(),
            period_start: ts(12),
            period_end: ts(13),
            amount: m(79_000),
            status: 2,
            created_at: ts(14),
            paid_at: ts(15),
            payment_provider: "pp".into(),
            payment_reference: "ref".into(),
        }
    }
    pub fn token() -> ApiToken {
        ApiToken {
            id: "t1".into(),
            name: "ci".into(),
            created_at: ts(16),
            expires_at: ts(17),
            revoked_at: ts(18),
            prefix: "kpl_".into(),
        }
    }
    pub fn usage(avail: bool) -> InstanceUsage {
        InstanceUsage {
            instance_id: "i1".into(),
            metrics_available: avail,
            metrics_note: "n".into(),
            cpu_millis: Some(120),
            memory_bytes: Some(300),
            cpu_limit_millis: 500,
            memory_limit_bytes: 512,
            storage_capacity_bytes: 5,
            storage_used_bytes: Some(1),
            observed_at: ts(19),
        }
    }
    pub fn events() -> Vec<SubscriptionEvent> {
        vec![
            SubscriptionEvent {
                at: ts(20),
                from_status: 0,
                to_status: 1,
                cause: "c".into(),
            },
            SubscriptionEvent {
                at: None,
                from_status: 2,
                to_status: 3,
                cause: "".into(),
            },
        ]
    }
    pub fn admin_instance() -> AdminInstance {
        AdminInstance {
            instance: Some(instance()),
            account_id: "acc".into(),
            customer_id: "c1".into(),
            email: "e".into(),
            namespace: "ns".into(),
        }
    }
    fn amounts(a: i64) -> Option<ResourceAmounts> {
        Some(ResourceAmounts {
            cpu_millis: a,
            memory_bytes: a * 2,
            pods: a * 3,
        })
    }
    pub fn capacity() -> Capacity {
        Capacity {
            nodes: vec![NodeCapacity {
                name: "n".into(),
                ready: true,
                schedulable: false,
                allocatable: amounts(1),
                requested: None,
            }],
            allocatable: amounts(2),
            requested: amounts(3),
            requested_by_kapal: None,
            committed: amounts(4),
            ceiling_percent: 80,
            observed_at: ts(21),
        }
    }
    pub fn alert() -> Alert {
        Alert {
            kind: "k".into(),
            severity: 2,
            message: "m".into(),
            subject: "s".into(),
            since: ts(22),
        }
    }
    pub fn audit() -> AuditEvent {
        AuditEvent {
            id: "e1".into(),
            actor_account_id: "a".into(),
            actor_email: "o@x".into(),
            action: "read".into(),
            instance_id: "i1".into(),
            instance_account_id: "acc".into(),
            reason: "t".into(),
            at: ts(23),
        }
    }
    pub fn report() -> RevenueReport {
        RevenueReport {
            mrr: m(1),
            by_app: vec![AppSubscriptions {
                app_id: "n8n".into(),
                trialing: 1,
                active: 2,
                past_due: 3,
                suspended: 4,
                mrr: m(5),
            }],
            trials_ended: 10,
            trials_converted: 4,
            trial_conversion_rate: 0.4,
            renewals_due: 8,
            renewals_paid: 6,
            renewal_rate: 0.75,
            churned: 1,
            churn_rate: 0.1 / 3.0,
            invoices_by_month: vec![InvoicePeriod {
                month: "2026-10".into(),
                invoices: 5,
                paid: 4,
                failed: 1,
                void: 0,
                invoiced: m(7),
                collected: None,
            }],
            invoiced_total: m(8),
            collected_total: None,
            from: ts(24),
            to: None,
            generated_at: ts(25),
        }
    }
}

/// Pretty JSON, as `--output json` prints it.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("json")
}
