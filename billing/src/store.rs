//! Data access: every query billing runs, written once for both backends with [`kapal::db!`].
//!
//! Each function takes the pool, holds one connection only for its own queries (never across a
//! payment-provider call) and does its writes in one transaction.

use chrono::NaiveDateTime;
use diesel::{
    BoolExpressionMethods as _, ExpressionMethods as _, Insertable, OptionalExtension as _,
    QueryDsl as _, Queryable, Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use kapal::db::Db;

use crate::error::Error;
use crate::lifecycle::{self, InvoiceStatus, Renewal, RenewalChange, SubscriptionStatus};
use crate::schema::{
    credit_notes, invoice_counter, invoices, payments, subscription_events, subscription_schedule,
    subscriptions,
};

/// A stored subscription.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = subscriptions)]
pub struct SubscriptionRow {
    pub id: String,
    pub account_id: String,
    pub order_id: String,
    pub instance_id: String,
    pub app_id: String,
    pub plan_id: String,
    pub status: String,
    pub price_amount: i64,
    pub currency: String,
    pub trial_end: Option<NaiveDateTime>,
    pub current_period_start: NaiveDateTime,
    pub current_period_end: NaiveDateTime,
    pub auto_renew: bool,
    pub cancel_at_period_end: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl SubscriptionRow {
    pub fn status(&self) -> Result<SubscriptionStatus, Error> {
        SubscriptionStatus::parse(&self.status).ok_or_else(|| {
            Error::Corrupt(format!(
                "subscription {} has unknown status {:?}",
                self.id, self.status
            ))
        })
    }

    /// Whether it is (or, before its first payment, will be) a free trial: a converted trial
    /// is not one any more.
    pub fn is_trial(&self) -> bool {
        self.trial_end.is_some() && matches!(self.status.as_str(), "incomplete" | "trialing")
    }
}

/// A stored invoice.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = invoices)]
pub struct InvoiceRow {
    pub id: String,
    pub number: i64,
    pub subscription_id: String,
    pub account_id: String,
    pub period_start: NaiveDateTime,
    pub period_end: NaiveDateTime,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub charging_until: Option<NaiveDateTime>,
    pub failure_reason: Option<String>,
    pub created_at: NaiveDateTime,
    pub paid_at: Option<NaiveDateTime>,
    pub payment_provider: Option<String>,
    pub payment_reference: Option<String>,
    /// Credited by credit notes refunded or being refunded.
    pub credited_amount: i64,
}

impl InvoiceRow {
    pub fn status(&self) -> Result<InvoiceStatus, Error> {
        InvoiceStatus::parse(&self.status).ok_or_else(|| {
            Error::Corrupt(format!(
                "invoice {} has unknown status {:?}",
                self.id, self.status
            ))
        })
    }

    /// The idempotency key of every charge of this invoice.
    pub fn idempotency_key(&self) -> String {
        format!("kapal-invoice-{}", self.id)
    }

    /// Whether a charge of this invoice is running (its lease has not run out at `now`).
    pub fn is_being_charged(&self, now: NaiveDateTime) -> bool {
        self.charging_until.is_some_and(|until| until >= now)
    }
}

#[derive(Insertable)]
#[diesel(table_name = subscription_events)]
pub(crate) struct NewEvent<'a> {
    pub subscription_id: &'a str,
    pub at: NaiveDateTime,
    pub from_status: Option<&'a str>,
    pub to_status: &'a str,
    pub cause: &'a str,
}

/// A subscription's scheduling state (see `crate::scheduler`).
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = subscription_schedule)]
pub struct ScheduleRow {
    pub subscription_id: String,
    /// A plan change taking effect at the next renewal, and its price.
    pub next_plan_id: Option<String>,
    pub next_price_amount: Option<i64>,
    /// PAST_DUE: end of grace; SUSPENDED: expiry; EXPIRED/CANCELED: clean-up.
    pub deadline: Option<NaiveDateTime>,
    /// PAST_DUE/SUSPENDED: when the unpaid invoice is charged again.
    pub next_charge_at: Option<NaiveDateTime>,
    pub ended_at: Option<NaiveDateTime>,
    pub cleaned_up_at: Option<NaiveDateTime>,
    /// When the scheduler next has something to do with it.
    pub next_action_at: Option<NaiveDateTime>,
    /// Bumped by every scheduler write (compare-and-set).
    pub version: i64,
    /// A scheduler replica acts on it until then.
    pub lease_until: Option<NaiveDateTime>,
}

impl ScheduleRow {
    /// The schedule of a new subscription: nothing to do before its first payment.
    pub fn new(subscription_id: &str) -> ScheduleRow {
        ScheduleRow {
            subscription_id: subscription_id.to_string(),
            next_plan_id: None,
            next_price_amount: None,
            deadline: None,
            next_charge_at: None,
            ended_at: None,
            cleaned_up_at: None,
            next_action_at: None,
            version: 0,
            lease_until: None,
        }
    }
}

/// The plan change pending on a subscription, if any.
pub async fn next_plan(db: &Db, id: &str) -> Result<Option<String>, Error> {
    let mut conn = db.read().await?;
    let plan = kapal::db!(&mut conn, |c| {
        subscription_schedule::table
            .find(id)
            .select(subscription_schedule::next_plan_id)
            .first::<Option<String>>(c)
            .await
            .optional()
    })?;
    Ok(plan.flatten())
}

/// A stored subscription event.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = subscription_events)]
pub struct EventRow {
    pub id: i64,
    pub at: NaiveDateTime,
    pub from_status: Option<String>,
    pub to_status: String,
    pub cause: String,
    pub actor: String,
}

/// A page of a subscription's events, oldest first: at most `limit` events after the event
/// `after` (an event id, from [`kapal::paging::parse_after_id`]), and the next page's token
/// (empty on the last page).
pub async fn subscription_events(
    db: &Db,
    id: &str,
    after: Option<i64>,
    limit: i64,
) -> Result<(Vec<EventRow>, String), Error> {
    let mut conn = db.read().await?;
    let mut rows: Vec<EventRow> = kapal::db!(&mut conn, |c| {
        subscription_events::table
            .filter(subscription_events::subscription_id.eq(id))
            .filter(subscription_events::id.gt(after.unwrap_or(i64::MIN)))
            .order(subscription_events::id.asc())
            .limit(limit.saturating_add(1))
            .select(EventRow::as_select())
            .load(c)
            .await
    })?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = match rows.last() {
        Some(last) if more => kapal::paging::token(last.at, &last.id.to_string()),
        _ => String::new(),
    };
    Ok((rows, next))
}

/// Sets (or, for the current plan, withdraws) the plan one of the account's subscriptions
/// moves to at its next renewal, recorded as an event. A trial is converted: auto-renew on.
pub async fn change_plan(
    db: &Db,
    account_id: &str,
    id: &str,
    plan_id: &str,
    price: i64,
    now: NaiveDateTime,
) -> Result<(SubscriptionRow, Option<String>), Error> {
    let hidden = SubscriptionStatus::Incomplete.as_str();
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| {
        c.transaction(async |c| {
            let sub: SubscriptionRow = subscriptions::table
                .find(id)
                .filter(subscriptions::account_id.eq(account_id))
                .filter(subscriptions::status.ne(hidden))
                .select(SubscriptionRow::as_select())
                .first(c)
                .await
                .optional()?
                .ok_or(Error::NotFound("subscription"))?;
            let status = sub.status()?;
            if status.is_final() {
                return Err(Error::FailedPrecondition(format!(
                    "the subscription has already ended ({status})"
                )));
            }
            let sched: ScheduleRow = subscription_schedule::table
                .find(&sub.id)
                .select(ScheduleRow::as_select())
                .first(c)
                .await?;
            if sched.lease_until.is_some_and(|until| until >= now) {
                return Err(Error::FailedPrecondition(
                    "the subscription is being renewed right now; try again in a minute".to_string(),
                ));
            }
            let trial = sub.is_trial();
            let (next_plan, next_price, cause) = if plan_id == sub.plan_id && !trial {
                if sched.next_plan_id.is_none() {
                    return Ok::<_, Error>((sub, None));
                }
                (None, None, "plan change withdrawn by the customer".to_string())
            } else if trial {
                (
                    Some(plan_id),
                    Some(price),
                    format!(
                        "trial converted by the customer to plan {plan_id}: charged at the end of the trial, auto-renew on"
                    ),
                )
            } else {
                (
                    Some(plan_id),
                    Some(price),
                    format!("plan change to {plan_id} by the customer, from the next renewal"),
                )
            };
            let auto_renew = if trial { true } else { sub.auto_renew };
            let cancel = if trial { false } else { sub.cancel_at_period_end };
            // Compare-and-set on the schedule's version, like the scheduler's own writes.
            let updated = diesel::update(
                subscription_schedule::table
                    .find(&sub.id)
                    .filter(subscription_schedule::version.eq(sched.version)),
            )
            .set((
                subscription_schedule::next_plan_id.eq(next_plan),
                subscription_schedule::next_price_amount.eq(next_price),
                subscription_schedule::version.eq(sched.version + 1),
            ))
            .execute(c)
            .await?;
            if updated != 1 {
                return Err(Error::FailedPrecondition(
                    "the subscription changed at the same time; try again".to_string(),
                ));
            }
            diesel::update(subscriptions::table.find(&sub.id))
                .set((
                    subscriptions::auto_renew.eq(auto_renew),
                    subscriptions::cancel_at_period_end.eq(cancel),
                    subscriptions::updated_at.eq(now),
                ))
                .execute(c)
                .await?;
            diesel::insert_into(subscription_events::table)
                .values(NewEvent {
                    subscription_id: &sub.id,
                    at: now,
                    from_status: Some(&sub.status),
                    to_status: &sub.status,
                    cause: &cause,
                })
                .execute(c)
                .await?;
            Ok((
                SubscriptionRow {
                    auto_renew,
                    cancel_at_period_end: cancel,
                    updated_at: now,
                    ..sub
                },
                next_plan.map(str::to_string),
            ))
        })
        .await
    })
}

#[derive(Insertable)]
#[diesel(table_name = payments)]
struct NewPayment<'a> {
    id: &'a str,
    invoice_id: &'a str,
    attempt: i32,
    idempotency_key: &'a str,
    provider: &'a str,
    amount: i64,
    currency: &'a str,
    status: &'a str,
    created_at: NaiveDateTime,
}

/// The subscription of `sub.order_id` and its first invoice: created from `sub` and `invoice`
/// (status INCOMPLETE, invoice OPEN, with the next invoice number) when the order has none,
/// or the ones stored by an earlier call. Safe under concurrent calls for the same order: the
/// insert does nothing when another call's insert won, and this call reads the winner's rows.
pub async fn find_or_create_subscription(
    db: &Db,
    sub: &SubscriptionRow,
    invoice: &InvoiceRow,
    cause: &str,
) -> Result<(SubscriptionRow, InvoiceRow), Error> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| {
        c.transaction(async |c| {
            // First the subscription: a concurrent call for the same order waits here on the
            // order_id index until the winner commits, then inserts nothing.
            let inserted = diesel::insert_into(subscriptions::table)
                .values(sub)
                .on_conflict(subscriptions::order_id)
                .do_nothing()
                .execute(c)
                .await?;
            let stored: SubscriptionRow = subscriptions::table
                .filter(subscriptions::order_id.eq(&sub.order_id))
                .select(SubscriptionRow::as_select())
                .first(c)
                .await?;
            if inserted == 1 {
                let number: i64 = diesel::update(invoice_counter::table.find(1))
                    .set(invoice_counter::last_number.eq(invoice_counter::last_number + 1))
                    .returning(invoice_counter::last_number)
                    .get_result(c)
                    .await?;
                let invoice = InvoiceRow {
                    number,
                    subscription_id: stored.id.clone(),
                    ..invoice.clone()
                };
                diesel::insert_into(invoices::table)
                    .values(&invoice)
                    .execute(c)
                    .await?;
                diesel::insert_into(subscription_schedule::table)
                    .values(ScheduleRow::new(&stored.id))
                    .execute(c)
                    .await?;
                diesel::insert_into(subscription_events::table)
                    .values(NewEvent {
                        subscription_id: &stored.id,
                        at: stored.created_at,
                        from_status: None,
                        to_status: &stored.status,
                        cause,
                    })
                    .execute(c)
                    .await?;
            }
            let first: InvoiceRow = invoices::table
                .filter(invoices::subscription_id.eq(&stored.id))
                .order(invoices::number.asc())
                .select(InvoiceRow::as_select())
                .first(c)
                .await?;
            Ok::<_, Error>((stored, first))
        })
        .await
    })
}

/// A charge this request may make: it holds the invoice's lease.
#[derive(Debug)]
pub struct Claim {
    pub invoice: InvoiceRow,
    /// The lease this request holds (`invoices.charging_until`).
    pub lease_until: NaiveDateTime,
    /// The pending row in `payments`.
    pub payment_id: String,
    /// 1 for the first charge of the invoice.
    pub attempt: i32,
    pub idempotency_key: String,
}

/// Takes the right to charge `seen` until `lease_until`, if the invoice is still in the status
/// and lease this request saw (a compare-and-set, so of all requests that saw the same state
/// exactly one gets it), and records the attempt as a pending payment through `provider`.
/// `None` when the invoice changed meanwhile.
pub async fn claim_charge(
    db: &Db,
    seen: &InvoiceRow,
    provider: &str,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
) -> Result<Option<Claim>, Error> {
    let status = seen.status()?;
    if !status.is_chargeable() || seen.is_being_charged(now) {
        return Ok(None);
    }
    let invoice_id = seen.id.as_str();
    let payment_id = uuid::Uuid::now_v7().to_string();
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| {
        c.transaction(async |c| {
            // On PostgreSQL a concurrent claim waits on the row lock and then re-checks the
            // filter against the winner's row, so exactly one claim updates it.
            let target = invoices::table
                .find(invoice_id)
                .filter(invoices::status.eq(status.as_str()));
            let claimed = match seen.charging_until {
                None => {
                    diesel::update(target.filter(invoices::charging_until.is_null()))
                        .set(invoices::charging_until.eq(Some(lease_until)))
                        .execute(c)
                        .await?
                }
                Some(expired) => {
                    diesel::update(target.filter(invoices::charging_until.eq(expired)))
                        .set(invoices::charging_until.eq(Some(lease_until)))
                        .execute(c)
                        .await?
                }
            };
            if claimed == 0 {
                return Ok::<_, Error>(None);
            }
            let invoice: InvoiceRow = invoices::table
                .find(invoice_id)
                .select(InvoiceRow::as_select())
                .first(c)
                .await?;
            let earlier: i64 = payments::table
                .filter(payments::invoice_id.eq(invoice_id))
                .count()
                .get_result(c)
                .await?;
            let attempt = i32::try_from(earlier + 1).map_err(|_| {
                Error::Corrupt(format!("invoice {invoice_id} has {earlier} payments"))
            })?;
            let idempotency_key = invoice.idempotency_key();
            diesel::insert_into(payments::table)
                .values(NewPayment {
                    id: &payment_id,
                    invoice_id,
                    attempt,
                    idempotency_key: &idempotency_key,
                    provider,
                    amount: invoice.amount,
                    currency: &invoice.currency,
                    status: lifecycle::payment::PENDING,
                    created_at: now,
                })
                .execute(c)
                .await?;
            Ok(Some(Claim {
                invoice,
                lease_until,
                payment_id: payment_id.clone(),
                attempt,
                idempotency_key,
            }))
        })
        .await
    })
}

/// Records a settled charge: the invoice is PAID, and a subscription waiting for its first
/// payment starts (TRIALING or ACTIVE), with an event.
pub async fn record_payment_success(
    db: &Db,
    claim: &Claim,
    provider: &str,
    reference: &str,
    now: NaiveDateTime,
) -> Result<(), Error> {
    let invoice = &claim.invoice;
    let chargeable = [InvoiceStatus::Open.as_str(), InvoiceStatus::Failed.as_str()];
    let cause = format!(
        "invoice {} paid",
        crate::charging::invoice_number(invoice.number)
    );
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| {
        c.transaction(async |c| {
            let paid = diesel::update(
                invoices::table
                    .find(&invoice.id)
                    .filter(invoices::status.eq_any(chargeable)),
            )
            .set((
                invoices::status.eq(InvoiceStatus::Paid.as_str()),
                invoices::paid_at.eq(Some(now)),
                invoices::payment_provider.eq(Some(provider)),
                invoices::payment_reference.eq(Some(reference)),
                invoices::charging_until.eq(None::<NaiveDateTime>),
                invoices::failure_reason.eq(None::<String>),
            ))
            .execute(c)
            .await?;
            // An invoice already paid by another attempt (the provider answered the repeated
            // idempotency key with the same payment): this attempt settled nothing new.
            let payment_status = if paid == 1 {
                lifecycle::payment::SUCCEEDED
            } else {
                lifecycle::payment::DUPLICATE
            };
            diesel::update(payments::table.find(&claim.payment_id))
                .set((
                    payments::status.eq(payment_status),
                    payments::reference.eq(Some(reference)),
                    payments::finished_at.eq(Some(now)),
                ))
                .execute(c)
                .await?;
            if paid == 0 {
                return Ok::<_, Error>(());
            }
            let sub: SubscriptionRow = subscriptions::table
                .find(&invoice.subscription_id)
                .select(SubscriptionRow::as_select())
                .first(c)
                .await?;
            let from = sub.status()?;
            if from == SubscriptionStatus::Incomplete {
                let to = SubscriptionStatus::started(sub.is_trial());
                debug_assert!(from.can_become(to));
                diesel::update(
                    subscriptions::table
                        .find(&sub.id)
                        .filter(subscriptions::status.eq(from.as_str())),
                )
                .set((
                    subscriptions::status.eq(to.as_str()),
                    subscriptions::updated_at.eq(now),
                ))
                .execute(c)
                .await?;
                // From now on the scheduler acts at the end of the first period.
                diesel::update(subscription_schedule::table.find(&sub.id))
                    .set(subscription_schedule::next_action_at.eq(Some(sub.current_period_end)))
                    .execute(c)
                    .await?;
                diesel::insert_into(subscription_events::table)
                    .values(NewEvent {
                        subscription_id: &sub.id,
                        at: now,
                        from_status: Some(from.as_str()),
                        to_status: to.as_str(),
                        cause: &cause,
                    })
                    .execute(c)
                    .await?;
            }
            Ok(())
        })
        .await
    })
}

/// Records a failed charge: the payment keeps the provider's `error`; the invoice becomes
/// FAILED with `public_reason` (and can be charged again), unless this request's lease ran out
/// and another request is charging it now.
pub async fn record_payment_failure(
    db: &Db,
    claim: &Claim,
    public_reason: &str,
    error: &str,
    now: NaiveDateTime,
) -> Result<(), Error> {
    let invoice = &claim.invoice;
    let chargeable = [InvoiceStatus::Open.as_str(), InvoiceStatus::Failed.as_str()];
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| {
        c.transaction(async |c| {
            diesel::update(payments::table.find(&claim.payment_id))
                .set((
                    payments::status.eq(lifecycle::payment::FAILED),
                    payments::error.eq(Some(error)),
                    payments::finished_at.eq(Some(now)),
                ))
                .execute(c)
                .await?;
            diesel::update(
                invoices::table
                    .find(&invoice.id)
                    .filter(invoices::status.eq_any(chargeable))
                    .filter(invoices::charging_until.eq(claim.lease_until)),
            )
            .set((
                invoices::status.eq(InvoiceStatus::Failed.as_str()),
                invoices::failure_reason.eq(Some(public_reason)),
                invoices::charging_until.eq(None::<NaiveDateTime>),
            ))
            .execute(c)
            .await?;
            Ok::<_, Error>(())
        })
        .await
    })
}

pub async fn invoice(db: &Db, id: &str) -> Result<InvoiceRow, Error> {
    let mut conn = db.read().await?;
    let row = kapal::db!(&mut conn, |c| {
        invoices::table
            .find(id)
            .select(InvoiceRow::as_select())
            .first(c)
            .await
    })?;
    Ok(row)
}

pub async fn subscription(db: &Db, id: &str) -> Result<SubscriptionRow, Error> {
    let mut conn = db.read().await?;
    let row = kapal::db!(&mut conn, |c| {
        subscriptions::table
            .find(id)
            .select(SubscriptionRow::as_select())
            .first(c)
            .await
    })?;
    Ok(row)
}

/// The account's subscriptions the customer may see, newest first.
pub async fn list_subscriptions(
    db: &Db,
    account_id: &str,
    after: Option<&kapal::paging::Cursor>,
    limit: i64,
) -> Result<(Vec<SubscriptionRow>, String), Error> {
    let hidden = SubscriptionStatus::Incomplete.as_str();
    let mut conn = db.read().await?;
    let rows = kapal::db!(&mut conn, |c| {
        let mut query = subscriptions::table
            .filter(subscriptions::account_id.eq(account_id))
            .filter(subscriptions::status.ne(hidden))
            .order((subscriptions::created_at.desc(), subscriptions::id.desc()))
            .limit(limit + 1)
            .select(SubscriptionRow::as_select())
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(
                subscriptions::created_at
                    .lt(after.at)
                    .or(subscriptions::created_at
                        .eq(after.at)
                        .and(subscriptions::id.lt(&after.id))),
            );
        }
        query.load(c).await
    })?;
    Ok(kapal::paging::split(rows, limit, |r| {
        (r.created_at, r.id.as_str())
    }))
}

/// One of the account's visible subscriptions; NotFound for anyone else's.
pub async fn customer_subscription(
    db: &Db,
    account_id: &str,
    id: &str,
) -> Result<SubscriptionRow, Error> {
    let hidden = SubscriptionStatus::Incomplete.as_str();
    let mut conn = db.read().await?;
    let row = kapal::db!(&mut conn, |c| {
        subscriptions::table
            .find(id)
            .filter(subscriptions::account_id.eq(account_id))
            .filter(subscriptions::status.ne(hidden))
            .select(SubscriptionRow::as_select())
            .first(c)
            .await
            .optional()
    })?;
    row.ok_or(Error::NotFound("subscription"))
}

/// The account's invoices of visible subscriptions (of one subscription when given), newest
/// first.
pub async fn list_invoices(
    db: &Db,
    account_id: &str,
    subscription_id: Option<&str>,
    before_number: Option<i64>,
    limit: i64,
) -> Result<(Vec<InvoiceRow>, String), Error> {
    let hidden = SubscriptionStatus::Incomplete.as_str();
    let mut conn = db.read().await?;
    let mut rows = kapal::db!(&mut conn, |c| {
        let mut query = invoices::table
            .inner_join(subscriptions::table)
            .filter(invoices::account_id.eq(account_id))
            .filter(subscriptions::account_id.eq(account_id))
            .filter(subscriptions::status.ne(hidden))
            .order(invoices::number.desc())
            .limit(limit + 1)
            .select(InvoiceRow::as_select())
            .into_boxed();
        if let Some(id) = subscription_id {
            query = query.filter(invoices::subscription_id.eq(id));
        }
        if let Some(number) = before_number {
            query = query.filter(invoices::number.lt(number));
        }
        query.load(c).await
    })?;
    // Invoice numbers are unique and increase: the next page is the numbers below the last
    // row's (the shared token, with the number for its id).
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = match rows.last() {
        Some(last) if more => kapal::paging::token(last.created_at, &last.number.to_string()),
        _ => String::new(),
    };
    Ok((rows, next))
}

/// Applies the customer's `change` to how one of their subscriptions ends (see
/// [`lifecycle::change_renewal`]) and records it as an event; unchanged when it changes
/// nothing.
pub async fn change_renewal(
    db: &Db,
    account_id: &str,
    id: &str,
    change: RenewalChange,
    now: NaiveDateTime,
) -> Result<SubscriptionRow, Error> {
    let hidden = SubscriptionStatus::Incomplete.as_str();
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| {
        c.transaction(async |c| {
            let sub: SubscriptionRow = subscriptions::table
                .find(id)
                .filter(subscriptions::account_id.eq(account_id))
                .filter(subscriptions::status.ne(hidden))
                .select(SubscriptionRow::as_select())
                .first(c)
                .await
                .optional()?
                .ok_or(Error::NotFound("subscription"))?;
            let status = sub.status()?;
            let current = Renewal {
                auto_renew: sub.auto_renew,
                cancel_at_period_end: sub.cancel_at_period_end,
            };
            let Some((next, cause)) =
                lifecycle::change_renewal(status, sub.is_trial(), current, change)
                    .map_err(Error::FailedPrecondition)?
            else {
                return Ok::<_, Error>(sub);
            };
            // Filtered on the values read, so a concurrent change is not overwritten.
            let updated = diesel::update(
                subscriptions::table
                    .find(&sub.id)
                    .filter(subscriptions::status.eq(&sub.status))
                    .filter(subscriptions::auto_renew.eq(sub.auto_renew))
                    .filter(subscriptions::cancel_at_period_end.eq(sub.cancel_at_period_end)),
            )
            .set((
                subscriptions::auto_renew.eq(next.auto_renew),
                subscriptions::cancel_at_period_end.eq(next.cancel_at_period_end),
                subscriptions::updated_at.eq(now),
            ))
            .execute(c)
            .await?;
            if updated != 1 {
                return Err(Error::FailedPrecondition(
                    "the subscription changed at the same time; try again".to_string(),
                ));
            }
            diesel::insert_into(subscription_events::table)
                .values(NewEvent {
                    subscription_id: &sub.id,
                    at: now,
                    from_status: Some(&sub.status),
                    to_status: &sub.status,
                    cause,
                })
                .execute(c)
                .await?;
            Ok(SubscriptionRow {
                auto_renew: next.auto_renew,
                cancel_at_period_end: next.cancel_at_period_end,
                updated_at: now,
                ..sub
            })
        })
        .await
    })
}

/// A stored credit note.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = credit_notes)]
pub struct CreditNoteRow {
    pub id: String,
    pub invoice_id: String,
    pub subscription_id: String,
    pub account_id: String,
    pub amount: i64,
    pub currency: String,
    pub reason: String,
    pub actor_account_id: String,
    pub status: String,
    pub provider: String,
    pub reference: Option<String>,
    pub error: Option<String>,
    pub created_at: NaiveDateTime,
    pub finished_at: Option<NaiveDateTime>,
    /// Refund calls started so far.
    pub attempts: i32,
    /// PENDING: when the provider is next asked (while an attempt runs: when it may be taken
    /// over).
    pub next_attempt_at: Option<NaiveDateTime>,
}

/// The credit notes of the invoices `ids`, oldest first.
pub async fn credit_notes(db: &Db, ids: &[String]) -> Result<Vec<CreditNoteRow>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = db.read().await?;
    let rows = kapal::db!(&mut conn, |c| {
        credit_notes::table
            .filter(credit_notes::invoice_id.eq_any(ids))
            .order((credit_notes::created_at.asc(), credit_notes::id.asc()))
            .select(CreditNoteRow::as_select())
            .load(c)
            .await
    })?;
    Ok(rows)
}
