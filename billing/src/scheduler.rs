//! The lifecycle scheduler: drives every subscription through the state machine of
//! [`crate::lifecycle`] as time passes: renewals (charging the next period), trial ends, the
//! grace period after a failed payment, suspension, expiry and clean-up.
//!
//! ## What it does, and when
//!
//! Each subscription has a schedule row (`subscription_schedule`) whose `next_action_at` says
//! when the scheduler next has something to do. [`Scheduler::tick`]`(now)` takes every
//! subscription due at `now` and advances it step by step until nothing is due any more:
//!
//! - `TRIALING`/`ACTIVE` at the end of the period: cancelled → `CANCELED`; a trial that was not
//!   converted (ChangePlan) → `EXPIRED`; auto-renew off → `EXPIRED`; otherwise the next period
//!   is invoiced (one invoice per period: `UNIQUE (subscription_id, period_start)`) and charged.
//!   Paid → `ACTIVE` with the new period (and the new plan of a ChangePlan, sent to the
//!   control-plane as an entitlement so the instance gets the plan's resources); failed →
//!   `PAST_DUE` with a grace period ([`Settings::grace`]).
//! - `PAST_DUE`/`SUSPENDED`: the unpaid invoice is charged again every [`Settings::retry_every`]
//!   while auto-renew is on; paid → `ACTIVE` (reactivated, the instance resumes). At the end of
//!   grace → `SUSPENDED` (instance scaled to zero, data kept); [`Settings::suspension`] later →
//!   `EXPIRED`. A cancellation ends it (`CANCELED`) at the next check.
//! - `EXPIRED`/`CANCELED`: [`Settings::retention`] after the end the subscription is cleaned up
//!   (the instance is deleted; an event, the status stays).
//!
//! Every step is recorded as an event whose time is when the step was due, not when the
//! scheduler got to it: a scheduler that was stopped for a week catches up with every missed
//! step in order and computes every later deadline from the due times, so the result is the
//! same as if it had never stopped (only the charges happen late).
//!
//! ## Exactly once with several replicas
//!
//! Before acting on a subscription a scheduler takes its lease: a compare-and-set on the
//! schedule row's `version` (the version it read, bumped, with `lease_until`). Of two replicas
//! that read the same row exactly one gets it; the other skips the subscription. Every write of
//! the step (status, event, entitlement outbox, invoices voided) happens in one transaction
//! filtered on the claimed version, so a replica whose lease ran out and was taken over writes
//! nothing. Charges are idempotent on their own: the invoice of a period exists once, a charge
//! holds the invoice's lease, and every charge of an invoice carries the same idempotency key.
//! A scheduler that crashed mid-step leaves a lease that runs out ([`Settings::lease`]); the
//! next tick then redoes the step, finding the invoice (and its payment) already there.
//!
//! ## Effects on instances
//!
//! A change of what the instance may do ([`Entitlement`]) is written to `entitlement_outbox`
//! in the same transaction as the status change, with its cause and the subscription's plan
//! from then on, for delivery to the
//! control-plane ([`crate::delivery`]); the scheduler then wakes the delivery
//! ([`Scheduler::with_outbox_wake`]).
//!
//! ## Refunds
//!
//! Every tick also asks the payment provider again for the credit notes whose refund it did
//! not answer, when their next attempt is due ([`crate::refunds`]).
//!
//! ## Renewal upcoming
//!
//! Every tick also tells the customers whose auto-renewing subscription renews (or whose
//! converted trial is first charged) within [`Settings::renewal_notice`] (3 days): once per
//! period, recorded in `subscription_schedule.renewal_notice_for` (the period end) by a
//! compare-and-set before the notification is sent, so two schedulers send it once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Months, NaiveDateTime, SubsecRound as _, Utc};
use diesel::{
    BoolExpressionMethods as _, ExpressionMethods as _, NullableExpressionMethods as _,
    OptionalExtension as _, QueryDsl as _, SelectableHelper as _,
};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use futures::StreamExt as _;
use kapal::clock::SharedClock;
use kapal::db::Db;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::charging::{self, CHARGE_LEASE, invoice_number};
use crate::error::Error;
use crate::lifecycle::{Entitlement, InvoiceStatus, SubscriptionStatus};
use crate::notify::{LogNotifier, Notification, NotificationKind, Notifier};
use crate::payments::PaymentProvider;
use crate::refunds::RefundPolicy;
use crate::schema::{
    entitlement_outbox, invoice_counter, invoices, subscription_events, subscription_schedule,
    subscriptions,
};
use crate::store::{self, InvoiceRow, NewEvent, ScheduleRow, SubscriptionRow};

/// How many times in a row a tick retries steps that failed.
const MAX_RETRIES: u32 = 10;

/// The scheduler's periods.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a subscription stays PAST_DUE (instance running) after a failed renewal.
    pub grace: chrono::Duration,
    /// How long a subscription stays SUSPENDED (instance scaled to zero) before it expires.
    pub suspension: chrono::Duration,
    /// How long after the end (EXPIRED/CANCELED) the instance is deleted.
    pub retention: chrono::Duration,
    /// How often an unpaid renewal is charged again.
    pub retry_every: chrono::Duration,
    /// How long one replica may act on a subscription before another may take over.
    pub lease: chrono::Duration,
    /// Subscriptions read per query.
    pub batch: i64,
    /// Subscriptions advanced at the same time.
    pub concurrency: usize,
    /// How long before a renewal (or the end of a converted trial) the customer is told that
    /// it will be charged ("renewal upcoming", once per period).
    pub renewal_notice: chrono::Duration,
    /// How credit notes whose refund the provider did not answer are asked again (each tick
    /// makes the attempts due; see [`crate::refunds`]).
    pub refunds: RefundPolicy,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            grace: chrono::Duration::days(3),
            suspension: chrono::Duration::days(14),
            retention: chrono::Duration::days(7),
            retry_every: chrono::Duration::days(1),
            lease: chrono::Duration::minutes(5),
            batch: 500,
            concurrency: 8,
            renewal_notice: chrono::Duration::days(3),
            refunds: RefundPolicy::default(),
        }
    }
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Steps taken (status changes, renewals, retries, clean-ups).
    pub steps: usize,
    /// Subscriptions left to another replica (it held the lease) or left for the next tick.
    pub skipped: usize,
    /// Subscriptions whose step failed (logged; retried at the next tick).
    pub failed: usize,
    /// "Renewal upcoming" notices sent.
    pub notices: usize,
    /// Refund attempts made for PENDING credit notes (and notes given up).
    pub refunds: usize,
}

/// The scheduler. Cheap to clone; any number may run against the same database.
#[derive(Clone)]
pub struct Scheduler(Arc<Inner>);

struct Inner {
    db: Db,
    clock: SharedClock,
    payments: Arc<dyn PaymentProvider>,
    settings: Settings,
    notifier: Arc<dyn Notifier>,
    /// Notified after a step wrote to the entitlement outbox (wakes the delivery).
    outbox_written: Arc<Notify>,
}

/// The next thing to do to a subscription, and when it was due.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Invoice (once) and charge the period starting at the current period's end.
    Charge { due: NaiveDateTime },
    /// PAST_DUE → SUSPENDED.
    Suspend { due: NaiveDateTime },
    /// → EXPIRED or CANCELED.
    End {
        due: NaiveDateTime,
        to: SubscriptionStatus,
        cause: &'static str,
    },
    /// Delete the instance of an ended subscription.
    CleanUp { due: NaiveDateTime },
}

/// The outcome of a step, written in one transaction.
struct Change {
    due: NaiveDateTime,
    to: SubscriptionStatus,
    cause: String,
    /// New period (start, end), plan and price.
    renewal: Option<(NaiveDateTime, NaiveDateTime, String, i64)>,
    sched: ScheduleRow,
    entitlement: Option<Entitlement>,
    void_unpaid: bool,
}

/// What happened to the charge of a period.
enum Charged {
    Paid(InvoiceRow),
    Failed(InvoiceRow, String),
    /// Someone else is charging it: leave it.
    Busy,
}

impl Scheduler {
    pub fn new(
        db: Db,
        clock: SharedClock,
        payments: Arc<dyn PaymentProvider>,
        settings: Settings,
    ) -> Scheduler {
        Scheduler(Arc::new(Inner {
            db,
            clock,
            payments,
            settings,
            notifier: Arc::new(LogNotifier),
            outbox_written: Arc::new(Notify::new()),
        }))
    }

    fn into_inner(self) -> Inner {
        match Arc::try_unwrap(self.0) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                db: shared.db.clone(),
                clock: shared.clock.clone(),
                payments: shared.payments.clone(),
                settings: shared.settings.clone(),
                notifier: shared.notifier.clone(),
                outbox_written: shared.outbox_written.clone(),
            },
        }
    }

    /// The same scheduler, sending notifications to `notifier` (the log by default).
    pub fn with_notifier(self, notifier: Arc<dyn Notifier>) -> Scheduler {
        Scheduler(Arc::new(Inner {
            notifier,
            ..self.into_inner()
        }))
    }

    /// The same scheduler, notifying `wake` whenever it wrote entitlement changes to the
    /// outbox (see [`crate::delivery::Delivery::run`]).
    pub fn with_outbox_wake(self, wake: Arc<Notify>) -> Scheduler {
        Scheduler(Arc::new(Inner {
            outbox_written: wake,
            ..self.into_inner()
        }))
    }

    /// Ticks every `interval` (by the clock given at construction) until `shutdown` completes.
    pub async fn run(self, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut timer = tokio::time::interval(interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = timer.tick() => {}
            }
            let now = self.0.clock.now();
            match self.tick(now).await {
                Ok(report) if report.steps > 0 || report.failed > 0 || report.refunds > 0 => {
                    tracing::info!(?report, "billing scheduler tick");
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "billing scheduler tick failed"),
            }
        }
    }

    /// Advances every subscription due at `now` until nothing is due at `now` any more.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<TickReport, Error> {
        let now = now.naive_utc().trunc_subsecs(6);
        let mut report = TickReport::default();
        let mut retries = 0u32;
        loop {
            let due = self.due(now).await?;
            if due.is_empty() {
                break;
            }
            let results: Vec<Result<usize, Error>> = futures::stream::iter(due)
                .map(|(sub, sched)| self.advance(sub, sched, now))
                .buffer_unordered(self.0.settings.concurrency.max(1))
                .collect()
                .await;
            let mut progress = 0;
            let mut failed = 0;
            for result in results {
                match result {
                    Ok(0) => report.skipped += 1,
                    Ok(steps) => {
                        progress += 1;
                        report.steps += steps;
                    }
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(error = %e, "billing scheduler step failed; retrying");
                    }
                }
            }
            if progress == 0 {
                // Failures (e.g. a busy database) are retried a few times within the tick,
                // then left for the next one.
                if failed > 0 && retries < MAX_RETRIES {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(retries))).await;
                    continue;
                }
                report.failed = failed;
                break;
            }
        }
        report.notices = self.renewal_notices(now).await?;
        report.refunds = crate::refunds::Retries {
            db: self.0.db.clone(),
            payments: self.0.payments.clone(),
            notifier: self.0.notifier.clone(),
            policy: self.0.settings.refunds,
            batch: self.0.settings.batch,
        }
        .run(now)
        .await?;
        Ok(report)
    }

    /// Sends "renewal upcoming" to every subscription that renews (or whose converted trial is
    /// charged) within [`Settings::renewal_notice`] of `now` and was not told about this period
    /// yet. Each period is told once: the notice is recorded (`renewal_notice_for`, the period
    /// end) with a compare-and-set before it is sent, so of several schedulers exactly one
    /// sends it. Returns the number sent.
    async fn renewal_notices(&self, now: NaiveDateTime) -> Result<usize, Error> {
        let notice = self.0.settings.renewal_notice;
        if notice <= chrono::Duration::zero() {
            return Ok(0);
        }
        let horizon = now + notice;
        let renewing = [
            SubscriptionStatus::Trialing.as_str(),
            SubscriptionStatus::Active.as_str(),
        ];
        let limit = self.0.settings.batch;
        let mut sent = 0;
        loop {
            let mut conn = self.0.db.get().await?;
            let rows: Vec<(SubscriptionRow, Option<String>, Option<i64>)> =
                kapal::db!(&mut conn, |c| {
                    subscriptions::table
                        .inner_join(subscription_schedule::table)
                        .filter(subscriptions::status.eq_any(renewing))
                        .filter(subscriptions::auto_renew.eq(true))
                        .filter(subscriptions::cancel_at_period_end.eq(false))
                        .filter(subscriptions::current_period_end.gt(now))
                        .filter(subscriptions::current_period_end.le(horizon))
                        .filter(
                            subscription_schedule::renewal_notice_for
                                .is_null()
                                .or(subscription_schedule::renewal_notice_for
                                    .ne(subscriptions::current_period_end.nullable())),
                        )
                        .order((
                            subscriptions::current_period_end.asc(),
                            subscriptions::id.asc(),
                        ))
                        .limit(limit)
                        .select((
                            SubscriptionRow::as_select(),
                            subscription_schedule::next_plan_id,
                            subscription_schedule::next_price_amount,
                        ))
                        .load(c)
                        .await
                })?;
            drop(conn);
            let full = rows.len() as i64 >= limit;
            let mut recorded = 0;
            for (sub, next_plan, next_price) in rows {
                let end = sub.current_period_end;
                let trial = sub.status()? == SubscriptionStatus::Trialing;
                // A trial that was not converted ends rather than renews.
                if trial && next_plan.is_none() {
                    continue;
                }
                let mut conn = self.0.db.get().await?;
                let claimed = kapal::db!(&mut conn, |c| {
                    diesel::update(
                        subscription_schedule::table.find(&sub.id).filter(
                            subscription_schedule::renewal_notice_for
                                .is_null()
                                .or(subscription_schedule::renewal_notice_for.ne(end)),
                        ),
                    )
                    .set(subscription_schedule::renewal_notice_for.eq(Some(end)))
                    .execute(c)
                    .await
                })?;
                drop(conn);
                if claimed != 1 {
                    continue;
                }
                recorded += 1;
                let plan = next_plan.unwrap_or_else(|| sub.plan_id.clone());
                let price = next_price.unwrap_or(sub.price_amount);
                let message = if trial {
                    format!(
                        "your free trial ends on {end} UTC: plan {plan} will be charged Rp {price} then, and every month after"
                    )
                } else {
                    format!(
                        "your subscription renews on {end} UTC: plan {plan} will be charged Rp {price}"
                    )
                };
                let n = Notification {
                    kind: NotificationKind::RenewalUpcoming,
                    subscription_id: sub.id.clone(),
                    account_id: sub.account_id.clone(),
                    at: (end - notice).max(sub.current_period_start),
                    message,
                    credit_note_id: None,
                };
                if let Err(e) = self.0.notifier.notify(&n).await {
                    metrics::counter!("kapal_webhook_failures_total", "source" => "billing")
                        .increment(1);
                    tracing::warn!(subscription = %n.subscription_id, kind = ?n.kind, error = %e, "notification not delivered");
                }
                sent += 1;
            }
            if !full || recorded == 0 {
                return Ok(sent);
            }
        }
    }

    /// Subscriptions with something due at `now` that no replica holds.
    async fn due(&self, now: NaiveDateTime) -> Result<Vec<(SubscriptionRow, ScheduleRow)>, Error> {
        let limit = self.0.settings.batch;
        let mut conn = self.0.db.get().await?;
        let rows = kapal::db!(&mut conn, |c| {
            subscriptions::table
                .inner_join(subscription_schedule::table)
                .filter(subscription_schedule::next_action_at.le(now))
                .filter(
                    subscription_schedule::lease_until
                        .is_null()
                        .or(subscription_schedule::lease_until.lt(now)),
                )
                .order((
                    subscription_schedule::next_action_at.asc(),
                    subscriptions::id.asc(),
                ))
                .limit(limit)
                .select((SubscriptionRow::as_select(), ScheduleRow::as_select()))
                .load(c)
                .await
        })?;
        Ok(rows)
    }

    async fn load(&self, id: &str) -> Result<(SubscriptionRow, ScheduleRow), Error> {
        let mut conn = self.0.db.get().await?;
        let row = kapal::db!(&mut conn, |c| {
            subscriptions::table
                .inner_join(subscription_schedule::table)
                .filter(subscriptions::id.eq(id))
                .select((SubscriptionRow::as_select(), ScheduleRow::as_select()))
                .first(c)
                .await
        })?;
        Ok(row)
    }

    /// Takes every step due at `now` for one subscription, in order. Returns the number of
    /// steps taken (0: skipped).
    async fn advance(
        &self,
        mut sub: SubscriptionRow,
        mut sched: ScheduleRow,
        now: NaiveDateTime,
    ) -> Result<usize, Error> {
        let mut steps = 0;
        // A month has at least 28 days, so even years of downtime end well before this.
        for _ in 0..1000 {
            let Some(step) = next_step(&sub, &sched, now)? else {
                // Due, but nothing to do (e.g. a retry while auto-renew is off): look again
                // later, so the row does not stay due.
                if sched.next_action_at.is_some_and(|at| at <= now) && steps == 0 {
                    return self.reschedule(&sub, &sched, now).await;
                }
                break;
            };
            if sched.lease_until.is_some_and(|until| until >= now) {
                break;
            }
            let Some(claimed) = self.claim(&sched, now).await? else {
                break;
            };
            let mut notification = None;
            let mut wrote_outbox = false;
            let done = match self.act(&sub, &sched, &step, now).await {
                Ok(Some(change)) => {
                    notification = notification_of(&sub, &step, &change)?;
                    wrote_outbox = change.entitlement.is_some();
                    self.finish(&sub, claimed, change).await
                }
                // Left for later (another request is charging the invoice): keep the lease,
                // it runs out.
                Ok(None) => Ok(false),
                Err(e) => Err(e),
            };
            let done = match done {
                Ok(done) => done,
                Err(e) => {
                    // Give the subscription back at once (the step is redone from the
                    // start, finding its invoice and payment), rather than when the lease
                    // runs out.
                    self.release(&sub.id, claimed).await;
                    return Err(e);
                }
            };
            if !done {
                break;
            }
            if wrote_outbox {
                self.0.outbox_written.notify_one();
            }
            if let Some(n) = notification
                && let Err(e) = self.0.notifier.notify(&n).await
            {
                metrics::counter!("kapal_webhook_failures_total", "source" => "billing")
                    .increment(1);
                tracing::warn!(subscription = %n.subscription_id, kind = ?n.kind, error = %e, "notification not delivered");
            }
            steps += 1;
            (sub, sched) = self.load(&sub.id).await?;
        }
        Ok(steps)
    }

    /// Moves `next_action_at` of a subscription that was due with nothing to do to when it next
    /// may have something to do. Returns 0 when another replica changed it meanwhile.
    async fn reschedule(
        &self,
        sub: &SubscriptionRow,
        sched: &ScheduleRow,
        now: NaiveDateTime,
    ) -> Result<usize, Error> {
        use SubscriptionStatus::*;
        let retry_every = self
            .0
            .settings
            .retry_every
            .max(chrono::Duration::minutes(1));
        let mut next_charge_at = sched.next_charge_at;
        while let Some(n) = next_charge_at.filter(|&n| n <= now) {
            next_charge_at = Some(n + retry_every);
        }
        let next_action_at = match sub.status()? {
            Incomplete => None,
            Trialing | Active => Some(sub.current_period_end),
            PastDue | Suspended => match (sched.deadline, next_charge_at) {
                (Some(d), Some(n)) => Some(d.min(n)),
                (d, n) => d.or(n),
            },
            Expired | Canceled => sched.deadline.filter(|_| sched.cleaned_up_at.is_none()),
        };
        let mut conn = self.0.db.get().await?;
        let updated = kapal::db!(&mut conn, |c| {
            diesel::update(
                subscription_schedule::table
                    .find(&sched.subscription_id)
                    .filter(subscription_schedule::version.eq(sched.version)),
            )
            .set((
                subscription_schedule::next_charge_at.eq(next_charge_at),
                subscription_schedule::next_action_at.eq(next_action_at),
                subscription_schedule::version.eq(sched.version + 1),
            ))
            .execute(c)
            .await
        })?;
        Ok(updated)
    }

    /// Gives up the lease taken with version `claimed` (best effort: otherwise it runs out).
    async fn release(&self, id: &str, claimed: i64) {
        for attempt in 0..5u64 {
            let released = async {
                let mut conn = self.0.db.get().await?;
                kapal::db!(&mut conn, |c| {
                    diesel::update(
                        subscription_schedule::table
                            .find(id)
                            .filter(subscription_schedule::version.eq(claimed)),
                    )
                    .set((
                        subscription_schedule::version.eq(claimed + 1),
                        subscription_schedule::lease_until.eq(None::<NaiveDateTime>),
                    ))
                    .execute(c)
                    .await
                })
                .map_err(Error::from)
            }
            .await;
            match released {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(subscription = id, error = %e, "releasing a scheduler lease failed");
                    tokio::time::sleep(Duration::from_millis(10 * (attempt + 1))).await;
                }
            }
        }
    }

    /// The compare-and-set that makes this replica the only one acting on the subscription.
    /// Returns the claimed version.
    async fn claim(&self, sched: &ScheduleRow, now: NaiveDateTime) -> Result<Option<i64>, Error> {
        let until = now + self.0.settings.lease;
        let claimed = sched.version + 1;
        let mut conn = self.0.db.get().await?;
        let updated = kapal::db!(&mut conn, |c| {
            diesel::update(
                subscription_schedule::table
                    .find(&sched.subscription_id)
                    .filter(subscription_schedule::version.eq(sched.version)),
            )
            .set((
                subscription_schedule::version.eq(claimed),
                subscription_schedule::lease_until.eq(Some(until)),
            ))
            .execute(c)
            .await
        })?;
        Ok((updated == 1).then_some(claimed))
    }

    /// Carries out a step (charging when it is a renewal) and returns what to write.
    async fn act(
        &self,
        sub: &SubscriptionRow,
        sched: &ScheduleRow,
        step: &Step,
        now: NaiveDateTime,
    ) -> Result<Option<Change>, Error> {
        let settings = &self.0.settings;
        let from = sub.status()?;
        let mut next = sched.clone();
        Ok(Some(match *step {
            Step::Charge { due } => {
                let plan = sched.next_plan_id.clone().unwrap_or(sub.plan_id.clone());
                let price = sched.next_price_amount.unwrap_or(sub.price_amount);
                let start = sub.current_period_end;
                let end = start
                    .checked_add_months(Months::new(1))
                    .ok_or_else(|| Error::Corrupt(format!("period out of range: {start}")))?;
                let invoice = self.invoice_for(sub, start, end, price, now).await?;
                match self.charge(invoice, now).await? {
                    Charged::Busy => return Ok(None),
                    Charged::Paid(invoice) => {
                        next.next_plan_id = None;
                        next.next_price_amount = None;
                        next.deadline = None;
                        next.next_charge_at = None;
                        let number = invoice_number(invoice.number);
                        Change {
                            due,
                            to: SubscriptionStatus::Active,
                            cause: match from {
                                SubscriptionStatus::Trialing => {
                                    format!("trial converted to plan {plan}: invoice {number} paid")
                                }
                                SubscriptionStatus::PastDue => {
                                    format!(
                                        "renewal paid during the grace period: invoice {number}"
                                    )
                                }
                                SubscriptionStatus::Suspended => format!(
                                    "reactivated: invoice {number} paid, the instance resumes"
                                ),
                                _ => format!("renewed: invoice {number} paid"),
                            },
                            // A reactivation lets the instance run again; a new plan (a
                            // ChangePlan, a converted trial) re-renders it with the plan's
                            // resources: both reach the control-plane as an entitlement.
                            entitlement: (from == SubscriptionStatus::Suspended
                                || plan != sub.plan_id)
                                .then_some(Entitlement::Active),
                            renewal: Some((invoice.period_start, invoice.period_end, plan, price)),
                            sched: next,
                            void_unpaid: false,
                        }
                    }
                    Charged::Failed(invoice, reason) => {
                        let number = invoice_number(invoice.number);
                        next.next_charge_at = Some(due + settings.retry_every);
                        let (to, cause) = match from {
                            SubscriptionStatus::Trialing | SubscriptionStatus::Active => {
                                let grace_end = due + settings.grace;
                                next.deadline = Some(grace_end);
                                (
                                    SubscriptionStatus::PastDue,
                                    format!(
                                        "renewal payment of invoice {number} failed ({reason}); grace period until {grace_end} UTC"
                                    ),
                                )
                            }
                            _ => (
                                from,
                                format!("payment of invoice {number} failed again ({reason})"),
                            ),
                        };
                        Change {
                            due,
                            to,
                            cause,
                            renewal: None,
                            sched: next,
                            entitlement: None,
                            void_unpaid: false,
                        }
                    }
                }
            }
            Step::Suspend { due } => {
                next.deadline = Some(due + settings.suspension);
                Change {
                    due,
                    to: SubscriptionStatus::Suspended,
                    cause: "grace period over without payment: the instance is scaled to zero, its data kept"
                        .to_string(),
                    renewal: None,
                    sched: next,
                    entitlement: Some(Entitlement::Suspended),
                    void_unpaid: false,
                }
            }
            Step::End { due, to, cause } => {
                next.ended_at = Some(due);
                next.deadline = Some(due + settings.retention);
                next.next_charge_at = None;
                next.next_plan_id = None;
                next.next_price_amount = None;
                Change {
                    due,
                    to,
                    cause: format!(
                        "{cause}: the instance is scaled to zero and deleted after {} days",
                        settings.retention.num_days()
                    ),
                    renewal: None,
                    sched: next,
                    entitlement: Some(Entitlement::Suspended),
                    void_unpaid: true,
                }
            }
            Step::CleanUp { due } => {
                next.cleaned_up_at = Some(due);
                Change {
                    due,
                    to: from,
                    cause: "retention period over: the instance is deleted".to_string(),
                    renewal: None,
                    sched: next,
                    entitlement: Some(Entitlement::Expired),
                    void_unpaid: false,
                }
            }
        }))
    }

    /// The invoice of the period starting at `start`: the stored one, or a new one with the
    /// next number. Concurrent creators meet on UNIQUE (subscription_id, period_start).
    async fn invoice_for(
        &self,
        sub: &SubscriptionRow,
        start: NaiveDateTime,
        end: NaiveDateTime,
        amount: i64,
        now: NaiveDateTime,
    ) -> Result<InvoiceRow, Error> {
        for _ in 0..3 {
            let mut conn = self.0.db.get().await?;
            let existing: Option<InvoiceRow> = kapal::db!(&mut conn, |c| {
                invoices::table
                    .filter(invoices::subscription_id.eq(&sub.id))
                    .filter(invoices::period_start.eq(start))
                    .select(InvoiceRow::as_select())
                    .first(c)
                    .await
                    .optional()
            })?;
            if let Some(invoice) = existing {
                return Ok(invoice);
            }
            let result = kapal::db!(&mut conn, |c| {
                c.transaction(async |c| {
                    // The write first: on SQLite it takes the write lock (waiting for other
                    // writers) before anything is read; on PostgreSQL it serializes invoice
                    // creation on the counter row.
                    let number: i64 = diesel::update(invoice_counter::table.find(1))
                        .set(invoice_counter::last_number.eq(invoice_counter::last_number + 1))
                        .returning(invoice_counter::last_number)
                        .get_result(c)
                        .await?;
                    let raced: i64 = invoices::table
                        .filter(invoices::subscription_id.eq(&sub.id))
                        .filter(invoices::period_start.eq(start))
                        .count()
                        .get_result(c)
                        .await?;
                    if raced > 0 {
                        // Created meanwhile: roll back (the number is not used) and read it.
                        return Err(Error::Raced);
                    }
                    let invoice = InvoiceRow {
                        id: Uuid::now_v7().to_string(),
                        number,
                        subscription_id: sub.id.clone(),
                        account_id: sub.account_id.clone(),
                        period_start: start,
                        period_end: end,
                        amount,
                        currency: sub.currency.clone(),
                        status: InvoiceStatus::Open.as_str().to_string(),
                        charging_until: None,
                        failure_reason: None,
                        created_at: now,
                        paid_at: None,
                        payment_provider: None,
                        payment_reference: None,
                        credited_amount: 0,
                    };
                    diesel::insert_into(invoices::table)
                        .values(&invoice)
                        .execute(c)
                        .await?;
                    Ok(invoice)
                })
                .await
            });
            match result {
                // Another replica created it at the same time: read theirs.
                Err(Error::Raced) => continue,
                Err(Error::Db(e)) if e.is_unique_violation() => continue,
                other => return other,
            }
        }
        Err(Error::Corrupt(format!(
            "the invoice of subscription {} for {start} could neither be created nor read",
            sub.id
        )))
    }

    /// Charges an invoice unless it is paid already or being charged.
    async fn charge(&self, invoice: InvoiceRow, now: NaiveDateTime) -> Result<Charged, Error> {
        let db = &self.0.db;
        match invoice.status()? {
            InvoiceStatus::Paid => return Ok(Charged::Paid(invoice)),
            InvoiceStatus::Void => {
                return Err(Error::Corrupt(format!(
                    "invoice {} of a period to renew is void",
                    invoice.id
                )));
            }
            InvoiceStatus::Open | InvoiceStatus::Failed => {}
        }
        let provider = self.0.payments.name().to_string();
        let Some(claim) =
            store::claim_charge(db, &invoice, &provider, now, now + CHARGE_LEASE).await?
        else {
            let invoice = store::invoice(db, &invoice.id).await?;
            return Ok(match invoice.status()? {
                InvoiceStatus::Paid => Charged::Paid(invoice),
                _ => Charged::Busy,
            });
        };
        // The outcome is on the invoice either way; it is read back below.
        let _declined =
            charging::charge_claimed(db, self.0.payments.as_ref(), &claim, || now).await?;
        let invoice = store::invoice(db, &invoice.id).await?;
        Ok(match invoice.status()? {
            InvoiceStatus::Paid => Charged::Paid(invoice),
            InvoiceStatus::Failed => {
                let reason = invoice.failure_reason.clone().unwrap_or_default();
                Charged::Failed(invoice, reason)
            }
            _ => Charged::Busy,
        })
    }

    /// Writes a step's outcome if this replica still holds the lease (`claimed`). Returns
    /// whether it did.
    async fn finish(
        &self,
        sub: &SubscriptionRow,
        claimed: i64,
        change: Change,
    ) -> Result<bool, Error> {
        let from = sub.status()?;
        if change.to != from && !from.can_become(change.to) {
            return Err(Error::Corrupt(format!(
                "subscription {}: the scheduler may not change {from} to {}",
                sub.id, change.to
            )));
        }
        let sched = ScheduleRow {
            next_action_at: next_action_at(change.to, sub, &change),
            version: claimed + 1,
            lease_until: None,
            ..change.sched.clone()
        };
        let now = self.0.clock.now().naive_utc().trunc_subsecs(6);
        let mut conn = self.0.db.get().await?;
        kapal::db!(&mut conn, |c| {
            c.transaction(async |c| {
                let updated = diesel::update(
                    subscription_schedule::table
                        .find(&sub.id)
                        .filter(subscription_schedule::version.eq(claimed)),
                )
                .set((
                    subscription_schedule::next_plan_id.eq(&sched.next_plan_id),
                    subscription_schedule::next_price_amount.eq(sched.next_price_amount),
                    subscription_schedule::deadline.eq(sched.deadline),
                    subscription_schedule::next_charge_at.eq(sched.next_charge_at),
                    subscription_schedule::ended_at.eq(sched.ended_at),
                    subscription_schedule::cleaned_up_at.eq(sched.cleaned_up_at),
                    subscription_schedule::next_action_at.eq(sched.next_action_at),
                    subscription_schedule::version.eq(sched.version),
                    subscription_schedule::lease_until.eq(sched.lease_until),
                ))
                .execute(c)
                .await?;
                if updated != 1 {
                    // The lease ran out and another replica took over: write nothing.
                    return Ok::<_, Error>(false);
                }
                let target = subscriptions::table
                    .find(&sub.id)
                    .filter(subscriptions::status.eq(from.as_str()));
                let updated = match &change.renewal {
                    Some((start, end, plan, price)) => {
                        diesel::update(target)
                            .set((
                                subscriptions::status.eq(change.to.as_str()),
                                subscriptions::current_period_start.eq(start),
                                subscriptions::current_period_end.eq(end),
                                subscriptions::plan_id.eq(plan),
                                subscriptions::price_amount.eq(price),
                                subscriptions::updated_at.eq(now),
                            ))
                            .execute(c)
                            .await?
                    }
                    None => {
                        diesel::update(target)
                            .set((
                                subscriptions::status.eq(change.to.as_str()),
                                subscriptions::updated_at.eq(now),
                            ))
                            .execute(c)
                            .await?
                    }
                };
                if updated != 1 {
                    return Err(Error::Corrupt(format!(
                        "subscription {} changed status under the scheduler's lease",
                        sub.id
                    )));
                }
                diesel::insert_into(subscription_events::table)
                    .values(NewEvent {
                        subscription_id: &sub.id,
                        at: change.due,
                        from_status: Some(from.as_str()),
                        to_status: change.to.as_str(),
                        cause: &change.cause,
                    })
                    .execute(c)
                    .await?;
                if let Some(entitlement) = change.entitlement {
                    // The plan from this change on: the renewal's (new) plan, or the current one.
                    let plan = change
                        .renewal
                        .as_ref()
                        .map_or(&sub.plan_id, |(_, _, plan, _)| plan);
                    diesel::insert_into(entitlement_outbox::table)
                        .values((
                            entitlement_outbox::subscription_id.eq(&sub.id),
                            entitlement_outbox::instance_id.eq(&sub.instance_id),
                            entitlement_outbox::entitlement.eq(entitlement.as_str()),
                            entitlement_outbox::at.eq(change.due),
                            entitlement_outbox::cause.eq(Some(&change.cause)),
                            entitlement_outbox::plan_id.eq(Some(plan)),
                        ))
                        .execute(c)
                        .await?;
                }
                if change.void_unpaid {
                    let unpaid = [InvoiceStatus::Open.as_str(), InvoiceStatus::Failed.as_str()];
                    diesel::update(
                        invoices::table
                            .filter(invoices::subscription_id.eq(&sub.id))
                            .filter(invoices::status.eq_any(unpaid))
                            .filter(
                                invoices::charging_until
                                    .is_null()
                                    .or(invoices::charging_until.lt(now)),
                            ),
                    )
                    .set((
                        invoices::status.eq(InvoiceStatus::Void.as_str()),
                        invoices::charging_until.eq(None::<NaiveDateTime>),
                    ))
                    .execute(c)
                    .await?;
                }
                Ok(true)
            })
            .await
        })
    }
}

/// The notification a step's change calls for, if any.
fn notification_of(
    sub: &SubscriptionRow,
    step: &Step,
    change: &Change,
) -> Result<Option<Notification>, Error> {
    use SubscriptionStatus::*;
    let from = sub.status()?;
    let kind = match (from, change.to) {
        (Suspended, Suspended) | (PastDue, PastDue)
            if matches!(step, Step::Charge { .. }) && change.renewal.is_none() =>
        {
            NotificationKind::PaymentFailed
        }
        (Trialing | Active, PastDue) => NotificationKind::PaymentFailed,
        (PastDue, Suspended) => NotificationKind::Suspended,
        (f, Expired | Canceled) if !f.is_final() => NotificationKind::Expired,
        _ => return Ok(None),
    };
    Ok(Some(Notification {
        kind,
        subscription_id: sub.id.clone(),
        account_id: sub.account_id.clone(),
        at: change.due,
        message: change.cause.clone(),
        credit_note_id: None,
    }))
}

/// When the scheduler next acts on a subscription that is now `status` after `change`.
fn next_action_at(
    status: SubscriptionStatus,
    sub: &SubscriptionRow,
    change: &Change,
) -> Option<NaiveDateTime> {
    use SubscriptionStatus::*;
    let sched = &change.sched;
    match status {
        Incomplete => None,
        Trialing | Active => Some(
            change
                .renewal
                .as_ref()
                .map_or(sub.current_period_end, |(_, end, _, _)| *end),
        ),
        PastDue | Suspended => match (sched.deadline, sched.next_charge_at) {
            (Some(d), Some(n)) => Some(d.min(n)),
            (d, n) => d.or(n),
        },
        Expired | Canceled => match sched.cleaned_up_at {
            Some(_) => None,
            None => sched.deadline,
        },
    }
}

/// What is due for `sub` at `now`, if anything.
fn next_step(
    sub: &SubscriptionRow,
    sched: &ScheduleRow,
    now: NaiveDateTime,
) -> Result<Option<Step>, Error> {
    use SubscriptionStatus::*;
    let Some(at) = sched.next_action_at else {
        return Ok(None);
    };
    if at > now {
        return Ok(None);
    }
    let status = sub.status()?;
    Ok(match status {
        Incomplete => None,
        Trialing | Active => {
            let due = sub.current_period_end;
            if due > now {
                None
            } else if sub.cancel_at_period_end {
                Some(Step::End {
                    due,
                    to: Canceled,
                    cause: "cancelled by the customer: the period ended",
                })
            } else if status == Trialing && sched.next_plan_id.is_none() {
                Some(Step::End {
                    due,
                    to: Expired,
                    cause: "the free trial ended without a paid plan",
                })
            } else if !sub.auto_renew {
                Some(Step::End {
                    due,
                    to: Expired,
                    cause: "the period ended without renewal (auto-renew off)",
                })
            } else {
                Some(Step::Charge { due })
            }
        }
        PastDue | Suspended => {
            let deadline = sched.deadline.ok_or_else(|| {
                Error::Corrupt(format!(
                    "subscription {} is {status} without a deadline",
                    sub.id
                ))
            })?;
            let retry = sched
                .next_charge_at
                .filter(|&n| sub.auto_renew && n < deadline && n <= now);
            if sub.cancel_at_period_end {
                Some(Step::End {
                    due: at,
                    to: Canceled,
                    cause: "cancelled by the customer while unpaid",
                })
            } else if let Some(due) = retry {
                Some(Step::Charge { due })
            } else if deadline <= now {
                Some(if status == PastDue {
                    Step::Suspend { due: deadline }
                } else {
                    Step::End {
                        due: deadline,
                        to: Expired,
                        cause: "the suspension ended without payment",
                    }
                })
            } else {
                None
            }
        }
        Expired | Canceled => match (sched.cleaned_up_at, sched.deadline) {
            (None, Some(deadline)) if deadline <= now => Some(Step::CleanUp { due: deadline }),
            _ => None,
        },
    })
}
