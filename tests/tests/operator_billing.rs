//! Operators acting on billing (issue 17), through the real gateway, control-plane, billing and
//! provisioner on the local cluster, on SQLite and PostgreSQL.
//!
//! Extending: customers get PERMISSION_DENIED, days outside 1-365 are INVALID_ARGUMENT; a trial
//! extended by 7 days is still TRIALING (its instance running) once the scheduler has passed
//! its old end, which a second trial ordered at the same time shows (it expired), and expires
//! with its instance held by billing at the new end; the extension is in the subscription's
//! history (actor "operator", with the reason) and in the audit log; an ended subscription is
//! FAILED_PRECONDITION.
//!
//! Crediting: customers get PERMISSION_DENIED, bad amounts INVALID_ARGUMENT, more than the
//! invoice FAILED_PRECONDITION saying how much is left; a credit note on a paid invoice (named
//! by its number) is refunded by the dummy provider (against the invoice's payment), shown on
//! the customer's invoice, in the subscription's history and the audit log, and taken off the
//! revenue report's collected total; crediting the rest of it then over-credits.
//!
//! Retrying: a refund the provider does not answer stays PENDING and is asked again by
//! billing's scheduler with back-off (manual clock, two schedulers), refunded once; one never
//! answered is FAILED after the last attempt, its amount released, operators notified.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use kapal::clock::{Clock as _, ManualClock};
use kapal::db::Db;
use kapal::proto::v1::*;
use kapal::testing::Backend;
use kapal_billing::DummyProvider;
use kapal_billing::notify::{Notification, NotificationKind, Notifier};
use kapal_billing::scheduler::{Scheduler, Settings};
use kapal_tests::app::{Clients, TestApp};
use tonic::Code;

kapal::on_both_backends!(
    worker_threads = 4;
    an_extended_trial_ends_at_its_new_end,
    a_credit_note_refunds_part_of_a_paid_invoice,
    an_unanswered_refund_is_retried_then_given_up,
);

/// How long billing's effects may take to show: the scheduler runs every 200 ms, delivery to
/// the control-plane follows.
const EFFECT_TIMEOUT: Duration = Duration::from_secs(60);

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Orders `app` on `plan`; returns (instance, subscription) once the order has both.
async fn order(c: &mut Clients, app: &str, plan: &str) -> anyhow::Result<(String, String)> {
    let order = c
        .orders
        .checkout(CheckoutRequest {
            app_id: app.into(),
            plan_id: plan.into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        })
        .await?
        .into_inner();
    let c = c.clone();
    eventually("order completed", EFFECT_TIMEOUT, || {
        let mut c = c.clone();
        let id = order.id.clone();
        async move {
            let o = c
                .orders
                .get_order(GetOrderRequest { order_id: id })
                .await?
                .into_inner();
            anyhow::ensure!(
                o.status != OrderStatus::Failed as i32,
                "order failed: {o:?}"
            );
            Ok((!o.instance_id.is_empty() && !o.subscription_id.is_empty())
                .then_some((o.instance_id, o.subscription_id)))
        }
    })
    .await
}

async fn subscription(c: &mut Clients, id: &str) -> anyhow::Result<Subscription> {
    Ok(c.subscriptions
        .get_subscription(GetSubscriptionRequest {
            subscription_id: id.into(),
        })
        .await?
        .into_inner())
}

async fn wait_status(c: &Clients, id: &str, want: SubscriptionStatus) -> anyhow::Result<()> {
    eventually(&format!("subscription {want:?}"), EFFECT_TIMEOUT, || {
        let mut c = c.clone();
        async move { Ok((subscription(&mut c, id).await?.status == want as i32).then_some(())) }
    })
    .await
}

async fn held_by_billing(c: &mut Clients, instance: &str) -> anyhow::Result<bool> {
    Ok(c.instances
        .get_instance(GetInstanceRequest {
            instance_id: instance.into(),
        })
        .await?
        .into_inner()
        .suspended_by_billing)
}

/// The operators' events of a subscription's history, as its owner reads them.
async fn operator_events(c: &mut Clients, id: &str) -> anyhow::Result<Vec<SubscriptionEvent>> {
    Ok(c.subscriptions
        .list_subscription_events(ListSubscriptionEventsRequest {
            subscription_id: id.into(),
            page_size: 500,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.actor == "operator")
        .collect())
}

async fn audit(admin: &mut Clients, action: &str) -> anyhow::Result<Vec<AuditEvent>> {
    Ok(admin
        .admin
        .list_audit_events(ListAuditEventsRequest {
            page_size: 500,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.action == action)
        .collect())
}

fn extend(id: &str, days: u32, reason: &str) -> ExtendSubscriptionRequest {
    ExtendSubscriptionRequest {
        subscription_id: id.into(),
        days,
        reason: reason.into(),
    }
}

fn secs(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().map_or(0, |t| t.seconds)
}

async fn an_extended_trial_ends_at_its_new_end(backend: Backend) -> anyhow::Result<()> {
    let clock = ManualClock::new(Utc::now());
    let app = TestApp::builder()
        .backend(backend)
        .with_billing_clock(clock.clone(), Duration::from_millis(200))
        .start()
        .await?;
    let admin = app.admin().await?;
    let mut ops = admin.clients.clone();
    let customer = app.customer("dewi").await?;
    let mut c = customer.clients.clone();
    let (instance, sub_id) = order(&mut c, "n8n", "trial").await?;
    // The witness: a trial (of another app: one trial per app and account) ordered with it,
    // not extended.
    let (_, witness) = order(&mut c, "ghost", "trial").await?;
    let before = subscription(&mut c, &sub_id).await?;
    assert_eq!(before.status, SubscriptionStatus::Trialing as i32);

    // Customers cannot; days and reason are checked.
    let reason = "T-7: onboarding took longer than the trial";
    assert_eq!(
        code(
            c.billing_admin
                .extend_subscription(extend(&sub_id, 7, reason))
                .await
        ),
        Code::PermissionDenied
    );
    for days in [0, 366] {
        let s = ops
            .billing_admin
            .extend_subscription(extend(&sub_id, days, reason))
            .await
            .expect_err("days out of range");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("1-365"), "{s:?}");
    }
    assert_eq!(
        code(
            ops.billing_admin
                .extend_subscription(extend(&sub_id, 7, " "))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ops.billing_admin
                .extend_subscription(extend(&uuid::Uuid::new_v4().to_string(), 7, reason))
                .await
        ),
        Code::NotFound
    );
    assert!(audit(&mut ops, "extend_subscription").await?.is_empty());

    let extended = ops
        .billing_admin
        .extend_subscription(extend(&sub_id, 7, reason))
        .await?
        .into_inner();
    let week = 7 * 24 * 3600;
    assert_eq!(secs(&extended.trial_end), secs(&before.trial_end) + week);
    assert_eq!(
        secs(&extended.current_period_end),
        secs(&before.current_period_end) + week
    );
    assert_eq!(extended.status, SubscriptionStatus::Trialing as i32);
    assert_eq!(extended.account_id, customer.account.id);
    // The customer sees the new end.
    let seen = subscription(&mut c, &sub_id).await?;
    assert_eq!(secs(&seen.trial_end), secs(&extended.trial_end));

    // Past the old end: the witness expired, the extended trial did not.
    clock.advance(chrono::Duration::days(14) + chrono::Duration::hours(1));
    wait_status(&c, &witness, SubscriptionStatus::Expired).await?;
    let still = subscription(&mut c, &sub_id).await?;
    assert_eq!(
        still.status,
        SubscriptionStatus::Trialing as i32,
        "{still:?}"
    );
    assert!(!held_by_billing(&mut c, &instance).await?);

    // Past the new end: expired, the instance held by billing.
    clock.advance(chrono::Duration::days(7));
    wait_status(&c, &sub_id, SubscriptionStatus::Expired).await?;
    eventually("instance held by billing", EFFECT_TIMEOUT, || {
        let mut c = c.clone();
        let instance = instance.clone();
        async move { Ok(held_by_billing(&mut c, &instance).await?.then_some(())) }
    })
    .await?;

    // In the history, as the customer reads it, and in the audit log.
    let events = operator_events(&mut c, &sub_id).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].cause.contains(reason), "{events:?}");
    assert!(events[0].cause.contains("7 days"), "{events:?}");
    assert_eq!(events[0].from_status, SubscriptionStatus::Trialing as i32);
    assert_eq!(events[0].to_status, SubscriptionStatus::Trialing as i32);
    let entries = audit(&mut ops, "extend_subscription").await?;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e.target, sub_id);
    assert_eq!(e.instance_id, "");
    assert_eq!(e.actor_account_id, admin.account.id);
    assert_eq!(e.actor_email, admin.email);
    assert_eq!(e.instance_account_id, customer.account.id);
    assert!(
        e.reason.contains(reason) && e.reason.contains("7 days"),
        "{e:?}"
    );

    // Ended: nothing to extend.
    let s = ops
        .billing_admin
        .extend_subscription(extend(&sub_id, 7, reason))
        .await
        .expect_err("ended");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    Ok(())
}

fn credit(invoice: &str, amount: i64, reason: &str) -> CreditInvoiceRequest {
    CreditInvoiceRequest {
        invoice_id: invoice.into(),
        amount: Some(Money {
            amount,
            currency: "IDR".into(),
        }),
        reason: reason.into(),
    }
}

async fn invoices(c: &mut Clients, sub: &str) -> anyhow::Result<Vec<Invoice>> {
    Ok(c.subscriptions
        .list_invoices(ListInvoicesRequest {
            subscription_id: sub.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .invoices)
}

fn money(m: &Option<Money>) -> i64 {
    m.as_ref().map_or(0, |m| m.amount)
}

async fn a_credit_note_refunds_part_of_a_paid_invoice(backend: Backend) -> anyhow::Result<()> {
    let dummy = DummyProvider::new();
    let app = TestApp::builder()
        .backend(backend)
        .with_payments(Arc::new(dummy.clone()))
        .start()
        .await?;
    let admin = app.admin().await?;
    let mut ops = admin.clients.clone();
    let customer = app.customer("agus").await?;
    let mut c = customer.clients.clone();
    let (_, sub_id) = order(&mut c, "n8n", "starter").await?;
    let (_, trial_sub) = order(&mut c, "n8n", "trial").await?;
    let invoice = invoices(&mut c, &sub_id)
        .await?
        .into_iter()
        .next()
        .expect("the first invoice");
    assert_eq!(invoice.status, InvoiceStatus::Paid as i32);
    let total = money(&invoice.amount);
    assert_eq!(total, 79_000);
    assert_eq!(money(&invoice.credited), 0);
    let report = ops
        .billing_admin
        .get_revenue_report(GetRevenueReportRequest::default())
        .await?
        .into_inner();
    let collected = money(&report.collected_total);

    let reason = "T-9: two days of outage, half the month back";
    // Customers cannot; amounts and reasons are checked.
    assert_eq!(
        code(
            c.billing_admin
                .credit_invoice(credit(&invoice.id, 1000, reason))
                .await
        ),
        Code::PermissionDenied
    );
    for bad in [0, -5] {
        assert_eq!(
            code(
                ops.billing_admin
                    .credit_invoice(credit(&invoice.id, bad, reason))
                    .await
            ),
            Code::InvalidArgument
        );
    }
    let mut usd = credit(&invoice.id, 1000, reason);
    usd.amount = Some(Money {
        amount: 1000,
        currency: "USD".into(),
    });
    assert_eq!(
        code(ops.billing_admin.credit_invoice(usd).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ops.billing_admin
                .credit_invoice(credit(&invoice.id, 1000, ""))
                .await
        ),
        Code::InvalidArgument
    );
    let s = ops
        .billing_admin
        .credit_invoice(credit(&invoice.id, total + 1, reason))
        .await
        .expect_err("more than the invoice");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("Rp 79000 is left"), "{s:?}");
    assert!(dummy.refunds().is_empty());

    // A credit note on the invoice, named by its number as the customer quotes it.
    let answer = ops
        .billing_admin
        .credit_invoice(credit(&invoice.number, 39_500, reason))
        .await?
        .into_inner();
    let note = answer.credit_note.expect("the note");
    assert_eq!(note.status, CreditNoteStatus::Refunded as i32);
    assert_eq!(money(&note.amount), 39_500);
    assert_eq!(note.reason, reason);
    assert_eq!(note.refund_provider, "dummy");
    // The dummy provider recorded the refund against the invoice's payment.
    let refunds = dummy.refunds();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].0.amount, 39_500);
    assert_eq!(refunds[0].0.payment_reference, invoice.payment_reference);
    assert_eq!(refunds[0].1.reference, note.refund_reference);

    // The customer sees it on the invoice and in the history.
    let seen = invoices(&mut c, &sub_id)
        .await?
        .into_iter()
        .find(|i| i.id == invoice.id)
        .expect("the invoice");
    assert_eq!(money(&seen.credited), 39_500);
    assert_eq!(seen.credit_notes.len(), 1);
    assert_eq!(seen.credit_notes[0].id, note.id);
    let events = operator_events(&mut c, &sub_id).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].cause.contains(reason), "{events:?}");
    assert!(events[0].cause.contains(&invoice.number), "{events:?}");
    // The audit log: who, what, whose, why.
    let entries = audit(&mut ops, "credit_invoice").await?;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].target, invoice.id);
    assert_eq!(entries[0].actor_email, admin.email);
    assert_eq!(entries[0].instance_account_id, customer.account.id);
    assert!(entries[0].reason.contains(reason), "{entries:?}");
    // The revenue report collected that much less.
    let report = ops
        .billing_admin
        .get_revenue_report(GetRevenueReportRequest::default())
        .await?
        .into_inner();
    assert_eq!(money(&report.collected_total), collected - 39_500);
    assert_eq!(money(&report.credited_total), 39_500);

    // What is left can be credited, no more.
    let s = ops
        .billing_admin
        .credit_invoice(credit(&invoice.id, 39_501, reason))
        .await
        .expect_err("over-credited");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("Rp 39500 is left"), "{s:?}");
    // Nothing is left of a free trial's Rp 0 invoice.
    let trial_invoice = invoices(&mut c, &trial_sub)
        .await?
        .into_iter()
        .next()
        .expect("the trial's invoice");
    assert_eq!(
        code(
            ops.billing_admin
                .credit_invoice(credit(&trial_invoice.id, 1, reason))
                .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(dummy.refunds().len(), 1);
    Ok(())
}

/// Collects billing's notifications (the scheduler's notifier).
#[derive(Debug, Default)]
struct Collected(Mutex<Vec<Notification>>);

#[tonic::async_trait]
impl Notifier for Collected {
    async fn notify(&self, n: &Notification) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(n.clone());
        Ok(())
    }
}

impl Collected {
    fn refunds_failed(&self) -> Vec<Notification> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .filter(|n| n.kind == NotificationKind::RefundFailed)
            .cloned()
            .collect()
    }
}

/// A credit note as operators see it (ListInvoicesAsAdmin), with its invoice.
async fn admin_note(
    ops: &mut Clients,
    account: &str,
    note: &str,
) -> anyhow::Result<(Invoice, CreditNote)> {
    let invoices = ops
        .billing_admin
        .list_invoices_as_admin(ListInvoicesAsAdminRequest {
            account_id: account.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .invoices;
    for invoice in invoices {
        if let Some(n) = invoice.credit_notes.iter().find(|n| n.id == note).cloned() {
            return Ok((invoice, n));
        }
    }
    anyhow::bail!("credit note {note} is on none of the account's invoices")
}

fn is(note: &CreditNote, status: CreditNoteStatus) -> bool {
    note.status == status as i32
}

/// Issue 17: a refund the provider does not answer leaves the note PENDING (the operator is
/// answered with it, its attempt and the error), and billing's scheduler asks again with
/// back-off on the manual clock: refunded at the third attempt, once, although two billing
/// schedulers (replicas) run on the database: the provider was asked exactly once per attempt.
/// A note the provider never answers is FAILED after the last (8th) attempt, its amount
/// released, and operators are notified (`refund_failed`).
async fn an_unanswered_refund_is_retried_then_given_up(backend: Backend) -> anyhow::Result<()> {
    let clock = ManualClock::new(Utc::now());
    let dummy = DummyProvider::new();
    let alerts = Arc::new(Collected::default());
    let settings = Settings::default();
    let app = TestApp::builder()
        .backend(backend)
        .with_billing_clock(clock.clone(), Duration::from_millis(200))
        .with_payments(Arc::new(dummy.clone()))
        .with_billing_notifier(alerts.clone())
        .start()
        .await?;
    // A second billing scheduler on the same database, as a second billing replica runs.
    let db = Db::connect(&app.db, kapal_billing::DB_NAME, kapal_billing::migrations()).await?;
    let replica = Scheduler::new(db, clock.clone(), Arc::new(dummy.clone()), settings.clone())
        .with_notifier(alerts.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let replica = tokio::spawn(replica.run(Duration::from_millis(150), async {
        let _ = stopped.await;
    }));

    let admin = app.admin().await?;
    let mut ops = admin.clients.clone();
    let customer = app.customer("sari").await?;
    let account = customer.account.id.clone();
    let mut c = customer.clients.clone();
    let (_, sub_id) = order(&mut c, "n8n", "starter").await?;
    let invoice = invoices(&mut c, &sub_id)
        .await?
        .into_iter()
        .next()
        .expect("the first invoice");
    assert_eq!(money(&invoice.amount), 79_000);
    let reason = "T-11: the outage of the 3rd";

    // The provider does not answer the first two refund calls.
    dummy.leave_refunds_unanswered(2);
    let answer = ops
        .billing_admin
        .credit_invoice(credit(&invoice.number, 30_000, reason))
        .await?
        .into_inner();
    let note = answer.credit_note.expect("the note");
    let key = format!("kapal-credit-{}", note.id);
    assert!(is(&note, CreditNoteStatus::Pending), "{note:?}");
    assert_eq!(note.refund_attempts, 1);
    assert!(note.last_error.contains("did not answer"), "{note:?}");
    assert_eq!(
        secs(&note.next_attempt_at),
        secs(&note.created_at) + 5 * 60,
        "{note:?}"
    );
    assert!(note.finished_at.is_none());
    // The customer sees the pending note (not the provider's answer), nothing credited yet.
    let seen = invoices(&mut c, &sub_id)
        .await?
        .into_iter()
        .find(|i| i.id == invoice.id)
        .expect("the invoice");
    assert_eq!(money(&seen.credited), 0);
    assert_eq!(seen.credit_notes.len(), 1);
    assert!(is(&seen.credit_notes[0], CreditNoteStatus::Pending));
    assert_eq!(seen.credit_notes[0].last_error, "");
    assert_eq!(seen.credit_notes[0].refund_attempts, 1);
    // The operator sees the attempts and the error; customers may not look.
    let (_, seen) = admin_note(&mut ops, &account, &note.id).await?;
    assert_eq!(seen.refund_attempts, 1);
    assert_eq!(seen.last_error, note.last_error);
    assert_eq!(
        code(
            c.billing_admin
                .list_invoices_as_admin(ListInvoicesAsAdminRequest {
                    account_id: account.clone(),
                    ..Default::default()
                })
                .await
        ),
        Code::PermissionDenied
    );
    // The amount stays reserved.
    let s = ops
        .billing_admin
        .credit_invoice(credit(&invoice.id, 49_001, reason))
        .await
        .expect_err("the pending note is reserved");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("Rp 49000 is left"), "{s:?}");

    // Five minutes later: the second attempt, unanswered too; the next in ten minutes.
    clock.advance(chrono::Duration::minutes(5));
    let second_at = clock.now().timestamp();
    let n = eventually("the second attempt", EFFECT_TIMEOUT, || {
        let mut ops = ops.clone();
        let (account, id) = (account.clone(), note.id.clone());
        async move {
            let (_, n) = admin_note(&mut ops, &account, &id).await?;
            Ok(
                (n.refund_attempts == 2 && secs(&n.next_attempt_at) == second_at + 10 * 60)
                    .then_some(n),
            )
        }
    })
    .await?;
    assert!(is(&n, CreditNoteStatus::Pending), "{n:?}");
    // Ten minutes later: the third attempt refunds.
    clock.advance(chrono::Duration::minutes(10));
    let n = eventually("the refund", EFFECT_TIMEOUT, || {
        let mut ops = ops.clone();
        let (account, id) = (account.clone(), note.id.clone());
        async move {
            let (_, n) = admin_note(&mut ops, &account, &id).await?;
            Ok(is(&n, CreditNoteStatus::Refunded).then_some(n))
        }
    })
    .await?;
    assert_eq!(n.refund_attempts, 3);
    assert!(
        n.next_attempt_at.is_none() && n.finished_at.is_some(),
        "{n:?}"
    );
    // Once per attempt, though two schedulers ran; refunded once.
    assert_eq!(dummy.refund_calls(&key), 3);
    let refunds = dummy.refunds();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].1.reference, n.refund_reference);
    // The customer's invoice shows it, and the history.
    let seen = invoices(&mut c, &sub_id)
        .await?
        .into_iter()
        .find(|i| i.id == invoice.id)
        .expect("the invoice");
    assert_eq!(money(&seen.credited), 30_000);
    assert!(is(&seen.credit_notes[0], CreditNoteStatus::Refunded));
    let events = operator_events(&mut c, &sub_id).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].cause.contains(reason), "{events:?}");
    assert!(alerts.refunds_failed().is_empty());

    // A provider that never answers: FAILED after the 8th attempt.
    dummy.leave_refunds_unanswered(usize::MAX);
    let lost = ops
        .billing_admin
        .credit_invoice(credit(
            &invoice.id,
            20_000,
            "T-12: a second goodwill credit",
        ))
        .await?
        .into_inner()
        .credit_note
        .expect("the note");
    assert!(is(&lost, CreditNoteStatus::Pending), "{lost:?}");
    for attempt in 2..=settings.refunds.max_attempts {
        // The longest wait between attempts is 6 hours.
        clock.advance(chrono::Duration::hours(6));
        let now = clock.now().timestamp();
        eventually(&format!("attempt {attempt}"), EFFECT_TIMEOUT, || {
            let mut ops = ops.clone();
            let (account, id) = (account.clone(), lost.id.clone());
            async move {
                let (_, n) = admin_note(&mut ops, &account, &id).await?;
                Ok((n.refund_attempts == attempt
                    && (is(&n, CreditNoteStatus::Failed)
                        || secs(&n.next_attempt_at) > now
                            && secs(&n.next_attempt_at) <= now + 6 * 3600))
                    .then_some(()))
            }
        })
        .await?;
    }
    let (seen, n) = admin_note(&mut ops, &account, &lost.id).await?;
    assert!(is(&n, CreditNoteStatus::Failed), "{n:?}");
    assert_eq!(n.refund_attempts, 8);
    assert!(n.last_error.contains("8 attempts"), "{n:?}");
    assert!(
        n.finished_at.is_some() && n.next_attempt_at.is_none(),
        "{n:?}"
    );
    assert_eq!(dummy.refund_calls(&format!("kapal-credit-{}", lost.id)), 8);
    assert_eq!(money(&seen.credited), 30_000);
    // Released: what is left is the invoice less the refunded note.
    let s = ops
        .billing_admin
        .credit_invoice(credit(&invoice.id, 49_001, reason))
        .await
        .expect_err("over-credited");
    assert!(s.message().contains("Rp 49000 is left"), "{s:?}");
    // Operators were told, once.
    let told = alerts.refunds_failed();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].credit_note_id.as_deref(), Some(lost.id.as_str()));
    assert_eq!(told[0].account_id, account);
    assert!(told[0].message.contains(&invoice.number), "{told:?}");
    assert_eq!(dummy.refunds().len(), 1);

    let _ = stop.send(());
    replica.await?;
    Ok(())
}
