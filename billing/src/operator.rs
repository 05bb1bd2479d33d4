//! Operators acting on billing (issue 17): `ExtendSubscription` and `CreditInvoice` of
//! `kapal.v1.BillingAdminService`.
//!
//! ## The audit log
//!
//! Operators' actions have one audit log, the control-plane's (`AdminService.ListAuditEvents`).
//! Billing records each action there through `kapal.internal.v1.AuditService` (signed as a
//! service, with the operator's account id from the principal billing received) after the
//! request was checked and before anything is changed: no audit row, no action (UNAVAILABLE).
//! An action refused after that (a race lost, a refund declined) stays recorded as attempted,
//! as the control-plane's own operator actions do.
//!
//! ## Extending
//!
//! One transaction, guarded like the scheduler's own writes: a compare-and-set on the schedule
//! row's `version` (and no scheduler lease held), on the subscription's status and period end.
//! TRIALING/ACTIVE: the period end (and trial end), the current invoice's period end and the
//! schedule's `next_action_at` move by N days; the renewal-upcoming notice is keyed on the
//! period end, so it moves with it. PAST_DUE/SUSPENDED: the deadline (end of grace or of the
//! suspension) moves. A lost race is retried.
//!
//! ## Crediting
//!
//! The invoice's `credited_amount` is raised first with a compare-and-set that keeps it at most
//! the invoice's amount, in the same transaction as the PENDING credit note (holding its first
//! attempt); then the provider refunds (idempotency key `kapal-credit-<note id>`); the note
//! becomes REFUNDED (and an event is written to the subscription's history), or FAILED with
//! the amount released. A provider that does not answer leaves the note PENDING, its amount
//! reserved (the refund may have happened), and the PENDING note is the answer: billing's
//! scheduler asks again with back-off, and gives up after a bounded number of attempts
//! ([`crate::refunds`]).

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::{
    BoolExpressionMethods as _, ExpressionMethods as _, OptionalExtension as _, QueryDsl as _,
    SelectableHelper as _,
};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use kapal::auth::Principal;
use kapal::proto::internal::v1 as internal;
use kapal::proto::internal::v1::audit_service_client::AuditServiceClient;
use kapal::proto::v1 as pb;
use kapal::serve::InternalChannel;
use kapal::wire;
use uuid::Uuid;

use crate::api::Billing;
use crate::charging::invoice_number;
use crate::error::Error;
use crate::lifecycle::{InvoiceStatus, SubscriptionStatus};
use crate::refunds::{self, Outcome, REFUND_LEASE};
use crate::schema::{
    credit_notes, invoices, subscription_events, subscription_schedule, subscriptions,
};
use crate::store::{self, CreditNoteRow, InvoiceRow, ScheduleRow, SubscriptionRow};

/// The actor of operators' events in a subscription's history.
pub const OPERATOR: &str = "operator";
/// The longest extension, in days.
pub const MAX_EXTENSION_DAYS: u32 = 365;
/// How often an extension that lost a race (the scheduler was acting) is tried.
const ATTEMPTS: u32 = 50;

/// Where billing writes operators' actions: the control-plane's audit log.
#[derive(Clone)]
pub struct AuditLog(Option<AuditServiceClient<InternalChannel>>);

impl AuditLog {
    /// The control-plane's audit log at `endpoint`; `None`: there is none, and operators'
    /// actions are refused.
    pub fn new(client: Option<AuditServiceClient<InternalChannel>>) -> AuditLog {
        AuditLog(client)
    }

    async fn record(
        &self,
        actor: &Principal,
        action: &str,
        target: &str,
        subject_account_id: &str,
        reason: &str,
    ) -> Result<(), Error> {
        let Some(client) = &self.0 else {
            return Err(Error::Unavailable(
                "billing has no control-plane to write the audit log to (--control-plane); nothing was done"
                    .into(),
            ));
        };
        let request = internal::RecordOperatorActionRequest {
            actor_account_id: actor.account_id.to_string(),
            action: action.into(),
            target: target.into(),
            subject_account_id: subject_account_id.into(),
            reason: reason.into(),
        };
        match client.clone().record_operator_action(request).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                Err(Error::FailedPrecondition(s.message().to_string()))
            }
            Err(s) => {
                tracing::warn!(action, target, error = %s, "the audit log could not be written");
                Err(Error::Unavailable(
                    "the audit log could not be written; nothing was done: try again".into(),
                ))
            }
        }
    }
}

/// Checks an operator's reason: 3-500 characters.
fn check_reason(reason: &str, what: &str) -> Result<String, Error> {
    let reason = reason.trim();
    if !(3..=500).contains(&reason.chars().count()) {
        return Err(Error::InvalidArgument(format!(
            "{what} needs a reason of 3-500 characters (e.g. a support ticket), kept in the audit log and shown to the customer"
        )));
    }
    Ok(reason.to_string())
}

fn days_of(days: u32) -> Result<chrono::Duration, Error> {
    if !(1..=MAX_EXTENSION_DAYS).contains(&days) {
        return Err(Error::InvalidArgument(format!(
            "days must be 1-{MAX_EXTENSION_DAYS}; got {days}"
        )));
    }
    Ok(chrono::Duration::days(i64::from(days)))
}

fn fmt_time(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// One extension, computed from the rows read.
struct Extension {
    /// New period end (TRIALING/ACTIVE).
    period_end: Option<NaiveDateTime>,
    /// New schedule.
    sched: ScheduleRow,
    cause: String,
}

fn extension(
    sub: &SubscriptionRow,
    sched: &ScheduleRow,
    by: chrono::Duration,
    days: u32,
    reason: &str,
) -> Result<Extension, Error> {
    use SubscriptionStatus::*;
    let status = sub.status()?;
    let mut next = sched.clone();
    let (period_end, cause) = match status {
        Trialing | Active => {
            let end = sub.current_period_end + by;
            next.next_action_at = Some(end);
            let what = if status == Trialing {
                "the free trial"
            } else {
                "the current period (free of charge)"
            };
            (
                Some(end),
                format!(
                    "Kapal support extended {what} by {days} days, to {}: {reason}",
                    fmt_time(end)
                ),
            )
        }
        PastDue | Suspended => {
            let deadline = sched.deadline.ok_or_else(|| {
                Error::Corrupt(format!(
                    "subscription {} is {status} without a deadline",
                    sub.id
                ))
            })? + by;
            next.deadline = Some(deadline);
            next.next_action_at = Some(match sched.next_charge_at {
                Some(n) => n.min(deadline),
                None => deadline,
            });
            let what = if status == PastDue {
                format!(
                    "the grace period by {days} days: the instance keeps running until {} unless paid",
                    fmt_time(deadline)
                )
            } else {
                format!(
                    "the suspension by {days} days: the subscription ends on {} unless paid",
                    fmt_time(deadline)
                )
            };
            (None, format!("Kapal support extended {what}: {reason}"))
        }
        Incomplete => return Err(Error::NotFound("subscription")),
        Expired | Canceled => {
            return Err(Error::FailedPrecondition(format!(
                "subscription {} is {status}: an ended subscription cannot be extended (the customer orders again)",
                sub.id
            )));
        }
    };
    Ok(Extension {
        period_end,
        sched: next,
        cause,
    })
}

impl Billing {
    async fn load_subscription(&self, id: &str) -> Result<(SubscriptionRow, ScheduleRow), Error> {
        let mut conn = self.db().get().await?;
        kapal::db!(&mut conn, |c| {
            subscriptions::table
                .inner_join(subscription_schedule::table)
                .filter(subscriptions::id.eq(id))
                .select((SubscriptionRow::as_select(), ScheduleRow::as_select()))
                .first(c)
                .await
                .optional()
        })?
        .ok_or(Error::NotFound("subscription"))
    }

    /// `ExtendSubscription`.
    pub(crate) async fn extend_subscription(
        &self,
        operator: &Principal,
        req: &pb::ExtendSubscriptionRequest,
    ) -> Result<pb::Subscription, Error> {
        let by = days_of(req.days)?;
        let reason = check_reason(&req.reason, "extending a subscription")?;
        let id = wire::uuid("subscription_id", &req.subscription_id)?.to_string();
        let (sub, sched) = self.load_subscription(&id).await?;
        // Refused before the audit log when it cannot be done.
        extension(&sub, &sched, by, req.days, &reason)?;
        self.audit()
            .record(
                operator,
                "extend_subscription",
                &id,
                &sub.account_id,
                &format!("{} days: {reason}", req.days),
            )
            .await?;
        for attempt in 0..ATTEMPTS {
            let (sub, sched) = self.load_subscription(&id).await?;
            let ext = extension(&sub, &sched, by, req.days, &reason)?;
            if self.write_extension(&sub, &sched, &ext).await? {
                tracing::info!(subscription = %id, days = req.days, operator = %operator.account_id, "subscription extended");
                let (sub, _) = self.load_subscription(&id).await?;
                let next_plan = store::next_plan(self.db(), &id).await?;
                let mut wire = crate::api::subscription_to_proto(&sub, next_plan)?;
                wire.account_id = sub.account_id;
                return Ok(wire);
            }
            // The scheduler holds or just changed the subscription: read it again.
            if attempt + 1 < ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(Error::Raced)
    }

    /// Writes an extension if nothing changed since `sub` and `sched` were read and no
    /// scheduler holds the subscription. Returns whether it did.
    async fn write_extension(
        &self,
        sub: &SubscriptionRow,
        sched: &ScheduleRow,
        ext: &Extension,
    ) -> Result<bool, Error> {
        let now = self.now();
        let status = sub.status()?;
        let mut conn = self.db().get().await?;
        kapal::db!(&mut conn, |c| {
            c.transaction(async |c| {
                let updated = diesel::update(
                    subscription_schedule::table
                        .find(&sub.id)
                        .filter(subscription_schedule::version.eq(sched.version))
                        .filter(
                            subscription_schedule::lease_until
                                .is_null()
                                .or(subscription_schedule::lease_until.lt(now)),
                        ),
                )
                .set((
                    subscription_schedule::deadline.eq(ext.sched.deadline),
                    subscription_schedule::next_action_at.eq(ext.sched.next_action_at),
                    subscription_schedule::version.eq(sched.version + 1),
                ))
                .execute(c)
                .await?;
                if updated != 1 {
                    return Ok::<_, Error>(false);
                }
                let target = subscriptions::table
                    .find(&sub.id)
                    .filter(subscriptions::status.eq(status.as_str()))
                    .filter(subscriptions::current_period_end.eq(sub.current_period_end));
                let updated = match ext.period_end {
                    Some(end) => {
                        let trial_end = if status == SubscriptionStatus::Trialing {
                            Some(end)
                        } else {
                            sub.trial_end
                        };
                        // The invoice of the current period covers the extension.
                        diesel::update(
                            invoices::table
                                .filter(invoices::subscription_id.eq(&sub.id))
                                .filter(invoices::period_start.eq(sub.current_period_start))
                                .filter(invoices::period_end.eq(sub.current_period_end)),
                        )
                        .set(invoices::period_end.eq(end))
                        .execute(c)
                        .await?;
                        diesel::update(target)
                            .set((
                                subscriptions::current_period_end.eq(end),
                                subscriptions::trial_end.eq(trial_end),
                                subscriptions::updated_at.eq(now),
                            ))
                            .execute(c)
                            .await?
                    }
                    None => {
                        diesel::update(target)
                            .set(subscriptions::updated_at.eq(now))
                            .execute(c)
                            .await?
                    }
                };
                if updated != 1 {
                    // Changed without the schedule's version: roll back and read again.
                    return Err(Error::Raced);
                }
                diesel::insert_into(subscription_events::table)
                    .values((
                        subscription_events::subscription_id.eq(&sub.id),
                        subscription_events::at.eq(now),
                        subscription_events::from_status.eq(Some(status.as_str())),
                        subscription_events::to_status.eq(status.as_str()),
                        subscription_events::cause.eq(&ext.cause),
                        subscription_events::actor.eq(OPERATOR),
                    ))
                    .execute(c)
                    .await?;
                Ok(true)
            })
            .await
        })
        .or_else(|e| match e {
            Error::Raced => Ok(false),
            e => Err(e),
        })
    }

    /// The invoice named by id (UUID) or number ("KPL-000042").
    async fn find_invoice(&self, name: &str) -> Result<InvoiceRow, Error> {
        let name = wire::required("invoice_id", name)?;
        let mut conn = self.db().get().await?;
        let row = if let Some(n) = name
            .to_ascii_uppercase()
            .strip_prefix("KPL-")
            .map(str::to_string)
        {
            let number: i64 = n.parse().map_err(|_| {
                Error::InvalidArgument(format!(
                    "invoice_id {:?} is neither an invoice id (UUID) nor an invoice number like KPL-000042",
                    wire::truncate(name, 64)
                ))
            })?;
            kapal::db!(&mut conn, |c| {
                invoices::table
                    .filter(invoices::number.eq(number))
                    .select(InvoiceRow::as_select())
                    .first(c)
                    .await
                    .optional()
            })?
        } else {
            let id = wire::uuid("invoice_id", name)?.to_string();
            kapal::db!(&mut conn, |c| {
                invoices::table
                    .find(&id)
                    .select(InvoiceRow::as_select())
                    .first(c)
                    .await
                    .optional()
            })?
        };
        row.ok_or(Error::NotFound("invoice"))
    }

    /// `CreditInvoice`.
    pub(crate) async fn credit_invoice(
        &self,
        operator: &Principal,
        req: &pb::CreditInvoiceRequest,
    ) -> Result<pb::CreditInvoiceResponse, Error> {
        let reason = check_reason(&req.reason, "crediting an invoice")?;
        let money = req.amount.as_ref().ok_or_else(|| {
            Error::InvalidArgument("amount is required: a positive number of rupiah".into())
        })?;
        if money.amount <= 0 {
            return Err(Error::InvalidArgument(format!(
                "amount must be a positive number of rupiah; got {}",
                money.amount
            )));
        }
        let invoice = self.find_invoice(&req.invoice_id).await?;
        let number = invoice_number(invoice.number);
        let currency = money.currency.trim();
        if !currency.is_empty() && !currency.eq_ignore_ascii_case(&invoice.currency) {
            return Err(Error::InvalidArgument(format!(
                "invoice {number} is in {}; credit it in {} (or leave the currency empty)",
                invoice.currency, invoice.currency
            )));
        }
        let amount = money.amount;
        if invoice.status()? != InvoiceStatus::Paid {
            return Err(Error::FailedPrecondition(format!(
                "invoice {number} is {}: only a paid invoice can be credited",
                invoice.status
            )));
        }
        check_left(&invoice, amount)?;
        self.audit()
            .record(
                operator,
                "credit_invoice",
                &invoice.id,
                &invoice.account_id,
                &format!("Rp {amount} on invoice {number}: {reason}"),
            )
            .await?;

        let now = self.now();
        let note = CreditNoteRow {
            id: Uuid::now_v7().to_string(),
            invoice_id: invoice.id.clone(),
            subscription_id: invoice.subscription_id.clone(),
            account_id: invoice.account_id.clone(),
            amount,
            currency: invoice.currency.clone(),
            reason: reason.clone(),
            actor_account_id: operator.account_id.to_string(),
            status: CreditNoteStatus::Pending.as_str().into(),
            provider: self.payments().name().to_string(),
            reference: None,
            error: None,
            created_at: now,
            finished_at: None,
            // This request holds the first attempt; should it die, the scheduler takes over.
            attempts: 1,
            next_attempt_at: Some(now + REFUND_LEASE),
        };
        let mut conn = self.db().get().await?;
        let reserved = kapal::db!(&mut conn, |c| {
            c.transaction(async |c| {
                let updated = diesel::update(
                    invoices::table
                        .find(&invoice.id)
                        .filter(invoices::status.eq(InvoiceStatus::Paid.as_str()))
                        .filter(invoices::credited_amount.le(invoices::amount - amount)),
                )
                .set(invoices::credited_amount.eq(invoices::credited_amount + amount))
                .execute(c)
                .await?;
                if updated != 1 {
                    return Ok::<_, Error>(false);
                }
                diesel::insert_into(credit_notes::table)
                    .values(&note)
                    .execute(c)
                    .await?;
                Ok(true)
            })
            .await
        })?;
        drop(conn);
        if !reserved {
            // Credited meanwhile by another operator.
            let now = store::invoice(self.db(), &invoice.id).await?;
            check_left(&now, amount)?;
            return Err(Error::Raced);
        }

        let outcome = refunds::attempt(
            self.db(),
            self.payments(),
            self.refund_policy(),
            &note,
            &invoice,
            || self.now(),
        )
        .await?;
        match outcome {
            Outcome::Refunded | Outcome::Lost => {}
            Outcome::Failed { why, .. } => {
                return Err(Error::FailedPrecondition(format!(
                    "{why}; credit note {} failed and nothing was credited",
                    note.id
                )));
            }
            Outcome::Retrying { error, next } => {
                // Answered with the PENDING note: billing asks again (the refund may have
                // happened; the same idempotency key keeps it to one).
                tracing::warn!(invoice = %number, credit_note = %note.id, %error, %next, "refund unanswered; the scheduler asks again");
            }
        }
        let invoice = store::invoice(self.db(), &invoice.id).await?;
        let notes = store::credit_notes(self.db(), std::slice::from_ref(&invoice.id)).await?;
        let credit_note = notes
            .iter()
            .find(|n| n.id == note.id)
            .map(credit_note_to_proto)
            .transpose()?;
        Ok(pb::CreditInvoiceResponse {
            credit_note,
            invoice: Some(crate::api::invoice_to_proto(&invoice, &notes)?),
        })
    }
}

/// FAILED_PRECONDITION when `amount` is more than is left to credit on `invoice`.
fn check_left(invoice: &InvoiceRow, amount: i64) -> Result<(), Error> {
    let left = invoice.amount - invoice.credited_amount;
    if amount > left {
        return Err(Error::FailedPrecondition(format!(
            "Rp {amount} is more than is left to credit on invoice {}: Rp {left} is left (of Rp {}; Rp {} credited already)",
            invoice_number(invoice.number),
            invoice.amount,
            invoice.credited_amount
        )));
    }
    Ok(())
}

/// The status of a credit note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditNoteStatus {
    Pending,
    Refunded,
    Failed,
}

impl CreditNoteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CreditNoteStatus::Pending => "pending",
            CreditNoteStatus::Refunded => "refunded",
            CreditNoteStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<CreditNoteStatus> {
        [
            CreditNoteStatus::Pending,
            CreditNoteStatus::Refunded,
            CreditNoteStatus::Failed,
        ]
        .into_iter()
        .find(|n| n.as_str() == s)
    }

    fn to_proto(self) -> pb::CreditNoteStatus {
        match self {
            CreditNoteStatus::Pending => pb::CreditNoteStatus::Pending,
            CreditNoteStatus::Refunded => pb::CreditNoteStatus::Refunded,
            CreditNoteStatus::Failed => pb::CreditNoteStatus::Failed,
        }
    }
}

pub(crate) fn credit_note_to_proto(n: &CreditNoteRow) -> Result<pb::CreditNote, Error> {
    let status = CreditNoteStatus::parse(&n.status).ok_or_else(|| {
        Error::Corrupt(format!(
            "credit note {} has unknown status {:?}",
            n.id, n.status
        ))
    })?;
    Ok(pb::CreditNote {
        id: n.id.clone(),
        invoice_id: n.invoice_id.clone(),
        amount: Some(pb::Money {
            amount: n.amount,
            currency: n.currency.clone(),
        }),
        reason: n.reason.clone(),
        status: status.to_proto().into(),
        created_at: Some(wire::timestamp(n.created_at)),
        refund_provider: n.provider.clone(),
        refund_reference: n.reference.clone().unwrap_or_default(),
        refund_attempts: u32::try_from(n.attempts).unwrap_or(0),
        next_attempt_at: n
            .next_attempt_at
            .filter(|_| status == CreditNoteStatus::Pending)
            .map(wire::timestamp),
        last_error: n.error.clone().unwrap_or_default(),
        finished_at: n.finished_at.map(wire::timestamp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_bounded() {
        assert!(matches!(days_of(0), Err(Error::InvalidArgument(_))));
        assert!(matches!(days_of(366), Err(Error::InvalidArgument(_))));
        assert_eq!(days_of(1).ok(), Some(chrono::Duration::days(1)));
        assert_eq!(days_of(365).ok(), Some(chrono::Duration::days(365)));
    }
}
