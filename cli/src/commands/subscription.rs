//! Subscriptions and invoices: `kapal subscriptions`, `invoices`, `cancel`, `auto-renew`,
//! `change-plan` and `events`; the event list and a subscription's JSON are shared with
//! `kapal admin`.

use serde::Serialize;

use kapal::proto::v1::{
    CancelSubscriptionRequest, ChangePlanRequest, Invoice, ListInvoicesRequest,
    ListSubscriptionEventsRequest, ListSubscriptionsRequest, SetAutoRenewRequest, Subscription,
    SubscriptionEvent, SubscriptionStatus,
};

use crate::args::{AutoRenewArgs, ChangePlanArgs, Global, InvoicesArgs, OnOff, SubscriptionArg};
use crate::connect::{Ctx, RpcResult as _, collect_pages};
use crate::output::{
    MoneyJson, Render, Table, dash, key_values, money, money_json, short, time, ts_json,
};

pub async fn subscriptions(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let mut client = ctx.subscriptions()?;
    // Every subscription, newest first, a page at a time.
    let (subs, _) = collect_pages(u32::MAX, async |page_size, page_token| {
        let resp = client
            .list_subscriptions(ListSubscriptionsRequest {
                page_size,
                page_token,
            })
            .await
            .or_fail(&ctx)?;
        Ok((resp.subscriptions, resp.next_page_token))
    })
    .await?;
    ctx.print(&Subscriptions(subs))
}

pub async fn invoices(a: InvoicesArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.subscriptions()?;
    let subscription_id = a.subscription.unwrap_or_default();
    // Every invoice, newest first, a page at a time.
    let (invoices, _) = collect_pages(u32::MAX, async |page_size, page_token| {
        let resp = client
            .list_invoices(ListInvoicesRequest {
                subscription_id: subscription_id.clone(),
                page_size,
                page_token,
            })
            .await
            .or_fail(&ctx)?;
        Ok((resp.invoices, resp.next_page_token))
    })
    .await?;
    ctx.print(&Invoices(invoices))
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
    ctx.print(&Changed(Change::Cancelled, &s))
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
    ctx.print(&Changed(Change::AutoRenew, &s))
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
    ctx.print(&Changed(Change::Plan, &s))
}

pub async fn events(a: SubscriptionArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.subscriptions()?;
    // Every event, oldest first, a page at a time.
    let (events, _) = collect_pages(u32::MAX, async |page_size, page_token| {
        let resp = client
            .list_subscription_events(ListSubscriptionEventsRequest {
                subscription_id: a.id.clone(),
                page_size,
                page_token,
            })
            .await
            .or_fail(&ctx)?;
        Ok((resp.events, resp.next_page_token))
    })
    .await?;
    ctx.print(&Events {
        subscription_id: &a.id,
        events: &events,
    })
}

/// The answer to `kapal subscriptions`.
struct Subscriptions(Vec<Subscription>);

#[derive(Serialize)]
struct SubscriptionsJson<'a> {
    subscriptions: Vec<SubscriptionJson<'a>>,
}

impl Render for Subscriptions {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "No subscriptions yet.\n".to_string();
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
        for s in &self.0 {
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
        t.render()
    }

    fn json(&self) -> impl Serialize {
        SubscriptionsJson {
            subscriptions: self.0.iter().map(SubscriptionJson::from).collect(),
        }
    }
}

/// What `kapal cancel`, `auto-renew` and `change-plan` did.
enum Change {
    Cancelled,
    AutoRenew,
    Plan,
}

/// The answer to `kapal cancel`, `auto-renew` and `change-plan`: a sentence saying what the
/// change means, and the subscription as it now is.
struct Changed<'a>(Change, &'a Subscription);

impl Render for Changed<'_> {
    fn text(&self) -> String {
        let s = self.1;
        match self.0 {
            Change::Cancelled => format!(
                "Subscription {} is cancelled: it ends at {}, and its instance keeps running until then.\n{}",
                s.id,
                time(s.current_period_end.as_ref()),
                subscription_lines(s)
            ),
            Change::AutoRenew => format!(
                "Automatic renewal of subscription {} is {}.\n",
                s.id,
                if s.auto_renew { "on" } else { "off" }
            ),
            Change::Plan => format!("{}\n{}", plan_change_sentence(s), subscription_lines(s)),
        }
    }

    fn json(&self) -> impl Serialize {
        SubscriptionJson::from(self.1)
    }
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

/// A subscription in JSON.
#[derive(Serialize)]
pub struct SubscriptionJson<'a> {
    id: &'a str,
    app_id: &'a str,
    plan_id: &'a str,
    status: &'static str,
    price: Option<MoneyJson<'a>>,
    current_period_start: Option<String>,
    current_period_end: Option<String>,
    auto_renew: bool,
    cancel_at_period_end: bool,
    order_id: &'a str,
    created_at: Option<String>,
    trial_end: Option<String>,
    next_plan_id: &'a str,
    instance_id: &'a str,
}

impl<'a> From<&'a Subscription> for SubscriptionJson<'a> {
    fn from(s: &'a Subscription) -> Self {
        SubscriptionJson {
            id: &s.id,
            app_id: &s.app_id,
            plan_id: &s.plan_id,
            status: subscription_status(s),
            price: money_json(s.price.as_ref()),
            current_period_start: ts_json(s.current_period_start.as_ref()),
            current_period_end: ts_json(s.current_period_end.as_ref()),
            auto_renew: s.auto_renew,
            cancel_at_period_end: s.cancel_at_period_end,
            order_id: &s.order_id,
            created_at: ts_json(s.created_at.as_ref()),
            trial_end: ts_json(s.trial_end.as_ref()),
            next_plan_id: &s.next_plan_id,
            instance_id: &s.instance_id,
        }
    }
}

/// `SUBSCRIPTION_STATUS_PAST_DUE` -> `PAST_DUE`.
pub fn subscription_status(s: &Subscription) -> &'static str {
    subscription_status_name(s.status())
}

fn subscription_status_name(s: SubscriptionStatus) -> &'static str {
    short(s.as_str_name(), "SUBSCRIPTION_STATUS_")
}

/// The answer to `kapal invoices`.
struct Invoices(Vec<Invoice>);

#[derive(Serialize)]
struct InvoicesJson<'a> {
    invoices: Vec<InvoiceJson<'a>>,
}

impl Render for Invoices {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "No invoices yet.\n".to_string();
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
        for i in &self.0 {
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
        t.render()
    }

    fn json(&self) -> impl Serialize {
        InvoicesJson {
            invoices: self.0.iter().map(InvoiceJson::from).collect(),
        }
    }
}

/// An invoice in JSON.
#[derive(Serialize)]
struct InvoiceJson<'a> {
    id: &'a str,
    number: &'a str,
    subscription_id: &'a str,
    period_start: Option<String>,
    period_end: Option<String>,
    amount: Option<MoneyJson<'a>>,
    status: &'static str,
    created_at: Option<String>,
    paid_at: Option<String>,
    payment_provider: &'a str,
    payment_reference: &'a str,
}

impl<'a> From<&'a Invoice> for InvoiceJson<'a> {
    fn from(i: &'a Invoice) -> Self {
        InvoiceJson {
            id: &i.id,
            number: &i.number,
            subscription_id: &i.subscription_id,
            period_start: ts_json(i.period_start.as_ref()),
            period_end: ts_json(i.period_end.as_ref()),
            amount: money_json(i.amount.as_ref()),
            status: invoice_status(i),
            created_at: ts_json(i.created_at.as_ref()),
            paid_at: ts_json(i.paid_at.as_ref()),
            payment_provider: &i.payment_provider,
            payment_reference: &i.payment_reference,
        }
    }
}

/// `INVOICE_STATUS_PAID` -> `PAID`.
fn invoice_status(i: &Invoice) -> &'static str {
    short(i.status().as_str_name(), "INVOICE_STATUS_")
}

/// The answer to `kapal events` and `kapal admin events`: a subscription's status changes,
/// oldest first.
pub struct Events<'a> {
    pub subscription_id: &'a str,
    pub events: &'a [SubscriptionEvent],
}

#[derive(Serialize)]
struct EventsJson<'a> {
    subscription_id: &'a str,
    events: Vec<EventJson<'a>>,
}

/// A status change in JSON; a status before the subscription existed is null.
#[derive(Serialize)]
struct EventJson<'a> {
    at: Option<String>,
    from_status: Option<&'static str>,
    to_status: Option<&'static str>,
    cause: &'a str,
}

impl<'a> From<&'a SubscriptionEvent> for EventJson<'a> {
    fn from(e: &'a SubscriptionEvent) -> Self {
        let status = |s: SubscriptionStatus| match s {
            SubscriptionStatus::Unspecified => None,
            s => Some(subscription_status_name(s)),
        };
        EventJson {
            at: ts_json(e.at.as_ref()),
            from_status: status(e.from_status()),
            to_status: status(e.to_status()),
            cause: &e.cause,
        }
    }
}

impl Render for Events<'_> {
    fn text(&self) -> String {
        if self.events.is_empty() {
            return format!("No events of subscription {}.\n", self.subscription_id);
        }
        events_table(self.events)
    }

    fn json(&self) -> impl Serialize {
        EventsJson {
            subscription_id: self.subscription_id,
            events: self.events.iter().map(EventJson::from).collect(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::fixtures::at;
    use crate::output::json_of;
    use serde_json::json;

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
        let v = json_of(&Changed(Change::Plan, &s));
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
                actor: String::new(),
            },
            SubscriptionEvent {
                at: at("2026-11-15T08:00:00Z"),
                from_status: SubscriptionStatus::Trialing as i32,
                to_status: SubscriptionStatus::PastDue as i32,
                cause: "renewal payment failed: declined".to_string(),
                actor: String::new(),
            },
        ];
        assert_eq!(
            events_table(&events),
            "AT                    CHANGE                CAUSE\n\
             2026-11-01T08:00:00Z  - -> TRIALING         checkout\n\
             2026-11-15T08:00:00Z  TRIALING -> PAST_DUE  renewal payment failed: declined\n"
        );
        let v = json_of(&Events {
            subscription_id: "s1",
            events: &events,
        })["events"][0]
            .clone();
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
