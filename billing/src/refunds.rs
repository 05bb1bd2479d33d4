//! Refunds of credit notes (issue 17): asking the payment provider, recording its answer, and
//! asking again when it did not answer.
//!
//! `CreditInvoice` ([`crate::operator`]) reserves the amount on the invoice, writes the PENDING
//! note holding its first attempt and makes it ([`attempt`]). Every attempt of a note carries
//! the idempotency key `kapal-credit-<note id>`, so a provider refunds a note at most once
//! however often it is asked.
//!
//! - Refunded: the note is REFUNDED, an event is written to the subscription's history.
//! - Declined: the provider said no: the note is FAILED and its amount released.
//! - No answer (or an error): the refund may or may not have happened. The note stays PENDING
//!   with the amount reserved, its error and the time of the next attempt
//!   ([`RefundPolicy::backoff`]: 5 minutes, doubling, at most 6 hours apart by default).
//!   Billing's scheduler makes the next attempts ([`crate::scheduler::Scheduler::tick`]); after
//!   the last one ([`RefundPolicy::max_attempts`], 8 by default) still unanswered, the note is
//!   FAILED, its amount released, and operators are told ([`NotificationKind::RefundFailed`],
//!   through the scheduler's notifier, and the `kapal_billing_refunds_failed_total` counter):
//!   they check with the provider and credit again if no money moved.
//!
//! ## Exactly one attempt at a time, with several replicas
//!
//! An attempt is taken with a compare-and-set on the note's `attempts` (the count read, plus
//! one), only when the note is PENDING and its `next_attempt_at` has come; taking it moves
//! `next_attempt_at` to the end of a lease ([`REFUND_LEASE`], longer than the provider's
//! timeout), so another replica takes the note over only when the holder died. Of two
//! replicas that read the same note exactly one makes the attempt. A failure or a retry is
//! recorded only by the holder of the latest attempt (filtered on `attempts`); a refund is
//! recorded by whoever got it while the note is PENDING (the money moved).

use std::sync::Arc;

use chrono::NaiveDateTime;
use diesel::{ExpressionMethods as _, QueryDsl as _, SelectableHelper as _};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use kapal::db::Db;
use uuid::Uuid;

use crate::charging::{CHARGE_LEASE, CHARGE_TIMEOUT, invoice_number};
use crate::error::Error;
use crate::notify::{Notification, NotificationKind, Notifier};
use crate::operator::{CreditNoteStatus, OPERATOR};
use crate::payments::{PaymentError, PaymentProvider, RefundRequest};
use crate::schema::{credit_notes, invoices, subscription_events, subscriptions};
use crate::store::{CreditNoteRow, InvoiceRow};

/// How long one attempt holds a note before another replica may take it over.
pub(crate) const REFUND_LEASE: chrono::Duration = CHARGE_LEASE;

/// How refunds the provider did not answer are asked again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefundPolicy {
    /// The wait after the first attempt; it doubles after each further one.
    pub first_retry: chrono::Duration,
    /// The longest wait between two attempts.
    pub max_backoff: chrono::Duration,
    /// Attempts in all (the first included, at least 2); after the last one unanswered the
    /// note is FAILED.
    pub max_attempts: u32,
}

impl Default for RefundPolicy {
    fn default() -> RefundPolicy {
        RefundPolicy {
            first_retry: chrono::Duration::minutes(5),
            max_backoff: chrono::Duration::hours(6),
            max_attempts: 8,
        }
    }
}

impl RefundPolicy {
    /// The wait after `attempts` attempts (1 or more): `first_retry` doubled `attempts - 1`
    /// times, at most `max_backoff`.
    pub fn backoff(&self, attempts: i32) -> chrono::Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let wait = self
            .first_retry
            .checked_mul(1 << doublings)
            .unwrap_or(self.max_backoff);
        wait.min(self.max_backoff).max(chrono::Duration::zero())
    }

    fn attempts(&self) -> i32 {
        i32::try_from(self.max_attempts.max(2)).unwrap_or(i32::MAX)
    }
}

/// What an attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Refunded,
    /// Still PENDING: the provider did not answer; asked again at this time.
    Retrying {
        error: String,
        next: NaiveDateTime,
    },
    /// FAILED, the amount released: declined, or (`gave_up`) the last attempt unanswered.
    Failed {
        why: String,
        gave_up: bool,
    },
    /// Another replica took the note over meanwhile: nothing was written.
    Lost,
}

fn uuid_of(s: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(s).map_err(|_| Error::Corrupt(format!("stored id {s:?} is not a UUID")))
}

/// Asks the provider to refund `note`, whose latest attempt (`note.attempts`) the caller holds,
/// and records the answer at the time `now` gives once it came.
pub(crate) async fn attempt(
    db: &Db,
    payments: &dyn PaymentProvider,
    policy: &RefundPolicy,
    note: &CreditNoteRow,
    invoice: &InvoiceRow,
    now: impl FnOnce() -> NaiveDateTime,
) -> Result<Outcome, Error> {
    let request = RefundRequest {
        credit_note_id: uuid_of(&note.id)?,
        invoice_id: uuid_of(&invoice.id)?,
        payment_reference: invoice.payment_reference.clone().unwrap_or_default(),
        idempotency_key: format!("kapal-credit-{}", note.id),
        amount: note.amount,
        currency: note.currency.clone(),
        account_id: uuid_of(&invoice.account_id)?,
    };
    let outcome = match tokio::time::timeout(CHARGE_TIMEOUT, payments.refund(request)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(PaymentError::Unavailable(format!(
            "no answer within {}s",
            CHARGE_TIMEOUT.as_secs()
        ))),
    };
    let now = now();
    let number = invoice_number(invoice.number);
    match outcome {
        Ok(receipt) => {
            let cause = format!(
                "Kapal support credited Rp {} on invoice {number} (refund {} by {}): {}",
                note.amount, receipt.reference, receipt.provider, note.reason
            );
            let mut conn = db.get().await?;
            let recorded = kapal::db!(&mut conn, |c| {
                c.transaction(async |c| {
                    // Whoever got the refund records it while the note is PENDING.
                    let updated = diesel::update(
                        credit_notes::table
                            .find(&note.id)
                            .filter(credit_notes::status.eq(CreditNoteStatus::Pending.as_str())),
                    )
                    .set((
                        credit_notes::status.eq(CreditNoteStatus::Refunded.as_str()),
                        credit_notes::provider.eq(&receipt.provider),
                        credit_notes::reference.eq(Some(&receipt.reference)),
                        credit_notes::finished_at.eq(Some(now)),
                        credit_notes::next_attempt_at.eq(None::<NaiveDateTime>),
                    ))
                    .execute(c)
                    .await?;
                    if updated != 1 {
                        return Ok::<_, diesel::result::Error>(false);
                    }
                    let status: String = subscriptions::table
                        .find(&note.subscription_id)
                        .select(subscriptions::status)
                        .first(c)
                        .await?;
                    diesel::insert_into(subscription_events::table)
                        .values((
                            subscription_events::subscription_id.eq(&note.subscription_id),
                            subscription_events::at.eq(now),
                            subscription_events::from_status.eq(Some(&status)),
                            subscription_events::to_status.eq(&status),
                            subscription_events::cause.eq(&cause),
                            subscription_events::actor.eq(OPERATOR),
                        ))
                        .execute(c)
                        .await?;
                    Ok(true)
                })
                .await
            })?;
            if !recorded {
                return Ok(Outcome::Lost);
            }
            tracing::info!(invoice = %number, credit_note = %note.id, amount = note.amount, attempt = note.attempts, reference = %receipt.reference, "invoice credited");
            Ok(Outcome::Refunded)
        }
        Err(PaymentError::Declined(why)) => {
            let why = format!("the payment provider declined the refund: {why}");
            if fail(db, note, now, &why).await? {
                tracing::warn!(invoice = %number, credit_note = %note.id, attempt = note.attempts, %why, "refund declined");
                Ok(Outcome::Failed {
                    why,
                    gave_up: false,
                })
            } else {
                Ok(Outcome::Lost)
            }
        }
        Err(e @ PaymentError::Unavailable(_)) => {
            let error = format!("the payment provider did not answer: {e}");
            if note.attempts >= policy.attempts() {
                let why = format!(
                    "no answer from the payment provider to {} attempts (the last: {e})",
                    note.attempts
                );
                return Ok(if fail(db, note, now, &why).await? {
                    Outcome::Failed { why, gave_up: true }
                } else {
                    Outcome::Lost
                });
            }
            let next = now + policy.backoff(note.attempts);
            let mut conn = db.get().await?;
            let updated = kapal::db!(&mut conn, |c| {
                diesel::update(
                    credit_notes::table
                        .find(&note.id)
                        .filter(credit_notes::status.eq(CreditNoteStatus::Pending.as_str()))
                        .filter(credit_notes::attempts.eq(note.attempts)),
                )
                .set((
                    credit_notes::error.eq(Some(&error)),
                    credit_notes::next_attempt_at.eq(Some(next)),
                ))
                .execute(c)
                .await
            })?;
            if updated != 1 {
                return Ok(Outcome::Lost);
            }
            tracing::warn!(invoice = %number, credit_note = %note.id, attempt = note.attempts, %next, error = %e, "refund unanswered; asking again later");
            Ok(Outcome::Retrying { error, next })
        }
    }
}

/// Marks `note` (at its latest attempt, `note.attempts`) FAILED with `why` and releases its
/// amount, in one transaction. Returns whether it did (false: another replica moved on).
async fn fail(db: &Db, note: &CreditNoteRow, now: NaiveDateTime, why: &str) -> Result<bool, Error> {
    let mut conn = db.get().await?;
    let failed = kapal::db!(&mut conn, |c| {
        c.transaction(async |c| {
            let updated = diesel::update(
                credit_notes::table
                    .find(&note.id)
                    .filter(credit_notes::status.eq(CreditNoteStatus::Pending.as_str()))
                    .filter(credit_notes::attempts.eq(note.attempts)),
            )
            .set((
                credit_notes::status.eq(CreditNoteStatus::Failed.as_str()),
                credit_notes::error.eq(Some(why)),
                credit_notes::finished_at.eq(Some(now)),
                credit_notes::next_attempt_at.eq(None::<NaiveDateTime>),
            ))
            .execute(c)
            .await?;
            if updated != 1 {
                return Ok::<_, diesel::result::Error>(false);
            }
            diesel::update(invoices::table.find(&note.invoice_id))
                .set(invoices::credited_amount.eq(invoices::credited_amount - note.amount))
                .execute(c)
                .await?;
            Ok(true)
        })
        .await
    })?;
    Ok(failed)
}

/// The scheduler's part: PENDING notes whose next attempt has come.
#[derive(Clone)]
pub(crate) struct Retries {
    pub db: Db,
    pub payments: Arc<dyn PaymentProvider>,
    pub notifier: Arc<dyn Notifier>,
    pub policy: RefundPolicy,
    pub batch: i64,
}

impl Retries {
    /// Makes the next attempt of every PENDING note due at `now` that no replica holds (one
    /// batch). Returns how many attempts were made.
    pub(crate) async fn run(&self, now: NaiveDateTime) -> Result<usize, Error> {
        let mut conn = self.db.get().await?;
        let due: Vec<CreditNoteRow> = kapal::db!(&mut conn, |c| {
            credit_notes::table
                .filter(credit_notes::status.eq(CreditNoteStatus::Pending.as_str()))
                .filter(credit_notes::next_attempt_at.le(now))
                .order((credit_notes::next_attempt_at.asc(), credit_notes::id.asc()))
                .limit(self.batch)
                .select(CreditNoteRow::as_select())
                .load(c)
                .await
        })?;
        drop(conn);
        let mut made = 0;
        for note in due {
            match self.one(note, now).await {
                Ok(true) => made += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "refund attempt failed; retrying"),
            }
        }
        Ok(made)
    }

    /// Takes and makes the next attempt of `note`, or gives it up when its last attempt's
    /// holder died. Returns whether this replica acted.
    async fn one(&self, note: CreditNoteRow, now: NaiveDateTime) -> Result<bool, Error> {
        let invoice = crate::store::invoice(&self.db, &note.invoice_id).await?;
        if note.attempts >= self.policy.attempts() {
            let why = format!(
                "no answer from the payment provider to {} attempts (the last: {})",
                note.attempts,
                note.error.as_deref().unwrap_or("it was never recorded")
            );
            if fail(&self.db, &note, now, &why).await? {
                self.alert(&note, &invoice, &why, now).await;
                return Ok(true);
            }
            return Ok(false);
        }
        let attempts = note.attempts + 1;
        let lease = now + REFUND_LEASE;
        let mut conn = self.db.get().await?;
        let taken = kapal::db!(&mut conn, |c| {
            diesel::update(
                credit_notes::table
                    .find(&note.id)
                    .filter(credit_notes::status.eq(CreditNoteStatus::Pending.as_str()))
                    .filter(credit_notes::attempts.eq(note.attempts))
                    .filter(credit_notes::next_attempt_at.le(now)),
            )
            .set((
                credit_notes::attempts.eq(attempts),
                credit_notes::next_attempt_at.eq(Some(lease)),
            ))
            .execute(c)
            .await
        })?;
        drop(conn);
        if taken != 1 {
            // Another replica took it.
            return Ok(false);
        }
        let held = CreditNoteRow {
            attempts,
            next_attempt_at: Some(lease),
            ..note
        };
        match attempt(
            &self.db,
            self.payments.as_ref(),
            &self.policy,
            &held,
            &invoice,
            || now,
        )
        .await?
        {
            Outcome::Failed { why, .. } => self.alert(&held, &invoice, &why, now).await,
            Outcome::Refunded | Outcome::Retrying { .. } | Outcome::Lost => {}
        }
        Ok(true)
    }

    /// Tells operators that `note` failed.
    async fn alert(
        &self,
        note: &CreditNoteRow,
        invoice: &InvoiceRow,
        why: &str,
        now: NaiveDateTime,
    ) {
        metrics::counter!("kapal_billing_refunds_failed_total").increment(1);
        let number = invoice_number(invoice.number);
        tracing::error!(invoice = %number, credit_note = %note.id, amount = note.amount, %why, "credit note FAILED: an operator must check the refund with the provider");
        let n = Notification {
            kind: NotificationKind::RefundFailed,
            subscription_id: note.subscription_id.clone(),
            account_id: note.account_id.clone(),
            at: now,
            message: format!(
                "credit note {} (Rp {} on invoice {number}) FAILED: {why}. Rp {} is no longer credited on the invoice; check with the payment provider ({}, idempotency key kapal-credit-{}) whether the money was refunded, and issue a new credit note if it was not",
                note.id, note.amount, note.amount, note.provider, note.id
            ),
            credit_note_id: Some(note.id.clone()),
        };
        if let Err(e) = self.notifier.notify(&n).await {
            metrics::counter!("kapal_webhook_failures_total", "source" => "billing").increment(1);
            tracing::warn!(credit_note = %note.id, kind = ?n.kind, error = %e, "notification not delivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_the_longest_wait() {
        let p = RefundPolicy::default();
        let m = chrono::Duration::minutes;
        assert_eq!(p.backoff(1), m(5));
        assert_eq!(p.backoff(2), m(10));
        assert_eq!(p.backoff(3), m(20));
        assert_eq!(p.backoff(7), m(320));
        assert_eq!(p.backoff(8), chrono::Duration::hours(6));
        assert_eq!(p.backoff(1000), chrono::Duration::hours(6));
        assert_eq!(p.backoff(0), m(5));
        assert_eq!(
            RefundPolicy {
                max_attempts: 0,
                ..p
            }
            .attempts(),
            2
        );
    }
}
