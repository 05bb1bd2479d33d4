//! Charging one invoice: the one road both the customer's checkout (`api`) and the scheduler's
//! renewals take to the payment provider.
//!
//! A caller first claims the invoice's charge lease (`store::claim_charge`), so at most one
//! charge of an invoice runs at a time; [`charge_claimed`] then asks the provider (bounded by
//! [`CHARGE_TIMEOUT`], no connection held meanwhile) and records the outcome on the invoice.

use std::time::Duration;

use chrono::NaiveDateTime;
use kapal::db::Db;
use uuid::Uuid;

use crate::error::Error;
use crate::payments::{ChargeRequest, PaymentError, PaymentProvider};
use crate::store;

/// How long one charge may hold an invoice before another may charge it again (with the same
/// idempotency key). Longer than [`CHARGE_TIMEOUT`], so a lease only runs out when its holder
/// died.
pub(crate) const CHARGE_LEASE: chrono::Duration = chrono::Duration::seconds(120);
/// How long billing waits for the payment provider.
pub(crate) const CHARGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The human-facing form of an invoice number: "KPL-000042".
pub fn invoice_number(number: i64) -> String {
    format!("KPL-{number:06}")
}

/// Charges a claimed invoice and records the outcome (PAID, or FAILED with the reason) at the
/// time `now` gives once the provider has answered (a request's clock time then; the
/// scheduler's tick time). `Ok(Err(reason))` is a declined or failed payment,
/// with the reason a customer may read; `Err` is billing's own failure (database, stored data).
pub(crate) async fn charge_claimed(
    db: &Db,
    payments: &dyn PaymentProvider,
    claim: &store::Claim,
    now: impl FnOnce() -> NaiveDateTime,
) -> Result<Result<(), String>, Error> {
    let invoice = &claim.invoice;
    let request = ChargeRequest {
        invoice_id: stored_uuid(&invoice.id)?,
        invoice_number: invoice_number(invoice.number),
        idempotency_key: claim.idempotency_key.clone(),
        amount: invoice.amount,
        currency: invoice.currency.clone(),
        account_id: stored_uuid(&invoice.account_id)?,
    };
    let outcome = match tokio::time::timeout(CHARGE_TIMEOUT, payments.charge(request)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(PaymentError::Unavailable(format!(
            "no answer within {}s",
            CHARGE_TIMEOUT.as_secs()
        ))),
    };
    let now = now();
    match outcome {
        Ok(receipt) => {
            tracing::info!(
                invoice = %invoice_number(invoice.number),
                provider = %receipt.provider,
                reference = %receipt.reference,
                amount = invoice.amount,
                "payment settled"
            );
            store::record_payment_success(db, claim, &receipt.provider, &receipt.reference, now)
                .await?;
            Ok(Ok(()))
        }
        Err(e) => {
            tracing::warn!(
                invoice = %invoice_number(invoice.number),
                attempt = claim.attempt,
                error = %e,
                "payment failed"
            );
            let reason = e.public_reason();
            store::record_payment_failure(db, claim, &reason, &e.to_string(), now).await?;
            Ok(Err(reason))
        }
    }
}

fn stored_uuid(s: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(s).map_err(|_| Error::Corrupt(format!("stored id {s:?} is not a UUID")))
}
