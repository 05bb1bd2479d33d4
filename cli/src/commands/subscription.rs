//! Subscriptions and invoices: `kapal subscriptions`, `invoices`, `cancel`, `auto-renew`,
//! `change-plan` and `events`; the event list is shared with `kapal admin events`.

use serde_json::{Value, json};

use kapal::proto::v1::{
    CancelSubscriptionRequest, ChangePlanRequest, ListInvoicesRequest,
    ListSubscriptionEventsRequest, ListSubscriptionsRequest, SetAutoRenewRequest, Subscription,
    SubscriptionEvent, SubscriptionStatus,
};

use crate::args::{AutoRenewArgs, ChangePlanArgs, Global, InvoicesArgs, OnOff, SubscriptionArg};
use crate::connect::{Ctx, RpcResult as _};
use crate::output::{
    Table, dash, invoice_json, invoice_status, key_values, money, print_json, subscription_json,
    subscription_status, subscription_status_name, time, ts_json,
};

pub async fn subscriptions(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let subs = ctx
        .subscriptions()?
        .list_subscriptions(ListSubscriptionsRequest {})
        .await
        .or_fail(&ctx)?
        .subscriptions;
    if ctx.json() {
        return print_json(
            &json!({ "subscriptions": subs.iter().map(subscription_json).collect::<Vec<_>>() }),
        );
    }
    if subs.is_empty() {
        println!("No subscriptions yet.");
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID",
        "APP",
        "PLAN",
        "STATUS",
        "PRICE",
        "PERIOD END",
        "AUTO-RENEW",
        "NOTE",
    ]);
    for s in &subs {
        t.row(vec![
            s.id.clone(),
            s.app_id.clone(),
            s.plan_id.clone(),
            subscription_status(s).to_string(),
            format!("{}/month", money(s.price.as_ref())),
            time(s.current_period_end.as_ref()),
            if s.auto_renew { "on" } else { "off" }.to_string(),
            if s.cancel_at_period_end {
                "cancelled: ends at period end".to_string()
            } else {
                String::new()
            },
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

fn subscription_lines(s: &Subscription) -> String {
    key_values(&[
        ("Subscription", s.id.clone()),
        ("App", s.app_id.clone()),
        ("Plan", s.plan_id.clone()),
        ("Next plan", dash(&s.next_plan_id)),
        ("Instance", dash(&s.instance_id)),
        ("Status", subscription_status(s).to_string()),
        ("Price", format!("{}/month", money(s.price.as_ref()))),
        ("Period start", time(s.current_period_start.as_ref())),
        ("Period end", time(s.current_period_end.as_ref())),
        ("Trial end", time(s.trial_end.as_ref())),
        (
            "Auto-renew",
            if s.auto_renew { "on" } else { "off" }.to_string(),
        ),
        (
            "Cancelled",
            if s.cancel_at_period_end {
                "yes: ends at period end"
            } else {
                "no"
            }
            .to_string(),
        ),
    ])
}

pub async fn invoices(a: InvoicesArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let invoices = ctx
        .subscriptions()?
        .list_invoices(ListInvoicesRequest {
            subscription_id: a.subscription.unwrap_or_default(),
        })
        .await
        .or_fail(&ctx)?
        .invoices;
    if ctx.json() {
        return print_json(
            &json!({ "invoices": invoices.iter().map(invoice_json).collect::<Vec<_>>() }),
        );
    }
    if invoices.is_empty() {
        println!("No invoices yet.");
        return Ok(());
    }
    let mut t = Table::new(&[
        "NUMBER",
        "PERIOD START",
        "PERIOD END",
        "AMOUNT",
        "STATUS",
        "PAID",
        "SUBSCRIPTION",
    ]);
    for i in &invoices {
        t.row(vec![
            i.number.clone(),
            time(i.period_start.as_ref()),
            time(i.period_end.as_ref()),
            money(i.amount.as_ref()),
            invoice_status(i).to_string(),
            time(i.paid_at.as_ref()),
            i.subscription_id.clone(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

pub async fn cancel(a: SubscriptionArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let s = ctx
        .subscriptions()?
        .cancel_subscription(CancelSubscriptionRequest {
            subscription_id: a.id,
        })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&subscription_json(&s));
    }
    println!(
        "Subscription {} is cancelled: it ends at {}, and its instance keeps running until then.",
        s.id,
        time(s.current_period_end.as_ref())
    );
    print!("{}", subscription_lines(&s));
    Ok(())
}

pub async fn auto_renew(a: AutoRenewArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let s = ctx
        .subscriptions()?
        .set_auto_renew(SetAutoRenewRequest {
            subscription_id: a.id,
            auto_renew: a.state == OnOff::On,
        })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&subscription_json(&s));
    }
    println!(
        "Automatic renewal of subscription {} is {}.",
        s.id,
        if s.auto_renew { "on" } else { "off" }
    );
    Ok(())
}

pub async fn change_plan(a: ChangePlanArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let s = ctx
        .subscriptions()?
        .change_plan(ChangePlanRequest {
            subscription_id: a.id,
            plan_id: a.plan,
        })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&subscription_json(&s));
    }
    println!("{}", plan_change_sentence(&s));
    print!("{}", subscription_lines(&s));
    Ok(())
}

/// What a ChangePlan answer means for the customer.
fn plan_change_sentence(s: &Subscription) -> String {
    if s.next_plan_id.is_empty() || s.next_plan_id == s.plan_id {
        return format!(
            "Subscription {} stays on plan {}: no plan change is pending.",
            s.id, s.plan_id
        );
    }
    if s.status() == SubscriptionStatus::Trialing {
        let end = s.trial_end.as_ref().or(s.current_period_end.as_ref());
        format!(
            "Subscription {} moves to plan {} when the trial ends ({}): it is charged then and renews automatically.",
            s.id,
            s.next_plan_id,
            time(end)
        )
    } else {
        format!(
            "Subscription {} moves from plan {} to plan {} at the next renewal ({}).",
            s.id,
            s.plan_id,
            s.next_plan_id,
            time(s.current_period_end.as_ref())
        )
    }
}

pub async fn events(a: SubscriptionArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let events = ctx
        .subscriptions()?
        .list_subscription_events(ListSubscriptionEventsRequest {
            subscription_id: a.id.clone(),
        })
        .await
        .or_fail(&ctx)?
        .events;
    print_events(&ctx, &a.id, &events)
}

pub fn print_events(ctx: &Ctx, id: &str, events: &[SubscriptionEvent]) -> anyhow::Result<()> {
    if ctx.json() {
        return print_json(&json!({
            "subscription_id": id,
            "events": events.iter().map(subscription_event_json).collect::<Vec<_>>(),
        }));
    }
    if events.is_empty() {
        println!("No events of subscription {id}.");
        return Ok(());
    }
    print!("{}", events_table(events));
    Ok(())
}

fn events_table(events: &[SubscriptionEvent]) -> String {
    let mut t = Table::new(&["AT", "CHANGE", "CAUSE"]);
    for e in events {
        t.row(vec![
            time(e.at.as_ref()),
            format!(
                "{} -> {}",
                status_or_dash(e.from_status()),
                status_or_dash(e.to_status())
            ),
            e.cause.clone(),
        ]);
    }
    t.render()
}

/// `TRIALING`, or `-` for UNSPECIFIED (before the subscription existed).
fn status_or_dash(s: SubscriptionStatus) -> &'static str {
    match s {
        SubscriptionStatus::Unspecified => "-",
        s => subscription_status_name(s),
    }
}

fn subscription_event_json(e: &SubscriptionEvent) -> Value {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::fixtures::at;

    fn subscription() -> Subscription {
        Subscription {
            id: "s1".to_string(),
            app_id: "n8n".to_string(),
            plan_id: "starter".to_string(),
            status: SubscriptionStatus::Active as i32,
            price: Some(kapal::wire::idr(79_000)),
            current_period_end: at("2026-12-01T00:00:00Z"),
            instance_id: "i1".to_string(),
            ..Subscription::default()
        }
    }

    #[test]
    fn subscriptions_show_their_instance_and_pending_plan() {
        let s = Subscription {
            next_plan_id: "pro".to_string(),
            ..subscription()
        };
        let v = subscription_json(&s);
        assert_eq!(v["instance_id"], json!("i1"));
        assert_eq!(v["next_plan_id"], json!("pro"));
        let text = subscription_lines(&s);
        assert!(text.contains("Instance:      i1\n"), "{text}");
        assert!(text.contains("Next plan:     pro\n"), "{text}");
        assert!(subscription_lines(&subscription()).contains("Next plan:     -\n"));
    }

    #[test]
    fn plan_changes_say_when_they_take_effect() {
        let paid = Subscription {
            next_plan_id: "pro".to_string(),
            ..subscription()
        };
        assert_eq!(
            plan_change_sentence(&paid),
            "Subscription s1 moves from plan starter to plan pro at the next renewal (2026-12-01T00:00:00Z)."
        );
        let trial = Subscription {
            plan_id: "trial".to_string(),
            status: SubscriptionStatus::Trialing as i32,
            trial_end: at("2026-11-30T00:00:00Z"),
            next_plan_id: "starter".to_string(),
            ..subscription()
        };
        assert_eq!(
            plan_change_sentence(&trial),
            "Subscription s1 moves to plan starter when the trial ends (2026-11-30T00:00:00Z): it is charged then and renews automatically."
        );
        assert_eq!(
            plan_change_sentence(&subscription()),
            "Subscription s1 stays on plan starter: no plan change is pending."
        );
    }

    #[test]
    fn subscription_events_read_from_to_and_cause() {
        let events = vec![
            SubscriptionEvent {
                at: at("2026-11-01T08:00:00Z"),
                from_status: SubscriptionStatus::Unspecified as i32,
                to_status: SubscriptionStatus::Trialing as i32,
                cause: "checkout".to_string(),
            },
            SubscriptionEvent {
                at: at("2026-11-15T08:00:00Z"),
                from_status: SubscriptionStatus::Trialing as i32,
                to_status: SubscriptionStatus::PastDue as i32,
                cause: "renewal payment failed: declined".to_string(),
            },
        ];
        assert_eq!(
            events_table(&events),
            "AT                    CHANGE                CAUSE\n\
             2026-11-01T08:00:00Z  - -> TRIALING         checkout\n\
             2026-11-15T08:00:00Z  TRIALING -> PAST_DUE  renewal payment failed: declined\n"
        );
        let v = subscription_event_json(&events[0]);
        assert_eq!(
            v,
            json!({
                "at": "2026-11-01T08:00:00Z",
                "from_status": null,
                "to_status": "TRIALING",
                "cause": "checkout",
            })
        );
    }
}
