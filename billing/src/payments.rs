//! Payment providers: who actually moves the money.
//!
//! Billing charges an invoice through a [`PaymentProvider`]. Every charge of one invoice carries
//! the same idempotency key (derived from the invoice id), so a provider that honours it (as
//! Indonesian gateways such as Midtrans and Xendit do) settles an invoice at most once even when
//! billing charges it again after a crash, a timeout or a failure. A new gateway is one more
//! implementation of the trait; the subscription lifecycle does not change.
//!
//! [`DummyProvider`] settles every charge instantly (the free trial is Rp 0) and can be told to
//! fail (decline), or to leave refunds unanswered, for tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

/// One charge of one invoice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    pub invoice_id: Uuid,
    /// The human-facing invoice number, e.g. "KPL-000042" (gateways show it to the payer).
    pub invoice_number: String,
    /// The same for every charge of the same invoice: a provider must settle one key at most
    /// once, and answer a repeated key with the original outcome.
    pub idempotency_key: String,
    /// Amount in whole units of `currency` (rupiah).
    pub amount: i64,
    /// ISO 4217 code, "IDR".
    pub currency: String,
    /// The paying account.
    pub account_id: Uuid,
}

/// Proof that a charge was settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentReceipt {
    /// The provider's name, e.g. "dummy" (shown on the invoice).
    pub provider: String,
    /// The provider's reference of the payment (shown on the invoice).
    pub reference: String,
}

/// One refund of (part of) a settled payment: a credit note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    /// The credit note.
    pub credit_note_id: Uuid,
    pub invoice_id: Uuid,
    /// The provider's reference of the payment refunded (from its receipt).
    pub payment_reference: String,
    /// The same for every attempt of the same credit note: a provider must refund one key at
    /// most once.
    pub idempotency_key: String,
    /// Amount in whole units of `currency` (rupiah); positive.
    pub amount: i64,
    /// ISO 4217 code, "IDR".
    pub currency: String,
    pub account_id: Uuid,
}

/// Why a charge (or a refund) did not settle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The provider refused the payment. The reason is meant for the customer (e.g. "card
    /// declined", "insufficient balance") and must not contain secrets.
    #[error("declined: {0}")]
    Declined(String),
    /// The provider could not be reached or gave no clear answer, so the outcome is unknown.
    /// Charging again with the same idempotency key is safe. The text is for logs only.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
}

impl PaymentError {
    /// The reason as the customer may read it.
    pub fn public_reason(&self) -> String {
        match self {
            PaymentError::Declined(reason) => format!("declined: {reason}"),
            PaymentError::Unavailable(_) => {
                "the payment provider did not answer; please try again".to_string()
            }
        }
    }
}

/// A payment gateway.
#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    /// Short, stable name recorded with each payment, e.g. "dummy", "midtrans".
    fn name(&self) -> &str;

    /// Charges `request.amount` to the account. Must be idempotent on
    /// `request.idempotency_key`: a repeated key returns the first outcome and never moves
    /// money twice. Billing bounds the call with a timeout and treats a timeout as
    /// [`PaymentError::Unavailable`].
    async fn charge(&self, request: ChargeRequest) -> Result<PaymentReceipt, PaymentError>;

    /// Refunds `request.amount` of a settled payment. Must be idempotent on
    /// `request.idempotency_key` like [`PaymentProvider::charge`]. Billing never asks for more
    /// than the payment's amount less what it refunded before. A provider that cannot refund
    /// declines (the default).
    async fn refund(&self, request: RefundRequest) -> Result<PaymentReceipt, PaymentError> {
        let _ = request;
        Err(PaymentError::Declined(format!(
            "the payment provider {} cannot refund; refund outside Kapal",
            self.name()
        )))
    }
}

/// A provider that settles every charge instantly, like the Rp 0 trial checkout needs. Clones
/// share their state, so a test can keep one handle and switch failures on and off with
/// [`DummyProvider::set_fail`].
#[derive(Clone, Debug, Default)]
pub struct DummyProvider {
    fail: Arc<AtomicBool>,
    /// Settled charges by idempotency key, so a repeated key gets the same receipt, as a real
    /// gateway would answer.
    settled: Arc<Mutex<HashMap<String, PaymentReceipt>>>,
    /// Refunds recorded, by idempotency key.
    refunds: Arc<Mutex<HashMap<String, (RefundRequest, PaymentReceipt)>>>,
    /// How many of the next refund calls get no answer ([`PaymentError::Unavailable`]).
    unanswered_refunds: Arc<Mutex<usize>>,
    /// Every refund call, by idempotency key (answered or not).
    refund_calls: Arc<Mutex<HashMap<String, usize>>>,
}

impl DummyProvider {
    /// The provider's name on invoices.
    pub const NAME: &'static str = "dummy";

    /// A provider that settles every charge.
    pub fn new() -> DummyProvider {
        DummyProvider::default()
    }

    /// A provider that declines every charge until [`DummyProvider::set_fail`]`(false)`.
    pub fn failing() -> DummyProvider {
        let provider = DummyProvider::new();
        provider.set_fail(true);
        provider
    }

    /// Declines every following charge and refund (`true`) or settles them again (`false`).
    pub fn set_fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    /// Leaves the next `n` refund calls unanswered ([`PaymentError::Unavailable`], as a gateway
    /// that timed out), whatever their key; then refunds again.
    pub fn leave_refunds_unanswered(&self, n: usize) {
        *self
            .unanswered_refunds
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = n;
    }

    /// How many times a refund with `idempotency_key` was asked for, answered or not.
    pub fn refund_calls(&self, idempotency_key: &str) -> usize {
        let calls = self.refund_calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.get(idempotency_key).copied().unwrap_or(0)
    }

    /// The refunds this provider recorded (one per idempotency key), in no particular order.
    pub fn refunds(&self) -> Vec<(RefundRequest, PaymentReceipt)> {
        let refunds = self.refunds.lock().unwrap_or_else(|e| e.into_inner());
        refunds.values().cloned().collect()
    }
}

#[async_trait::async_trait]
impl PaymentProvider for DummyProvider {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn charge(&self, request: ChargeRequest) -> Result<PaymentReceipt, PaymentError> {
        let mut settled = self.settled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(receipt) = settled.get(&request.idempotency_key) {
            return Ok(receipt.clone());
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(PaymentError::Declined(
                "the dummy provider was told to fail".to_string(),
            ));
        }
        if request.amount < 0 {
            return Err(PaymentError::Declined(
                "a negative amount cannot be charged".to_string(),
            ));
        }
        let receipt = PaymentReceipt {
            provider: Self::NAME.to_string(),
            reference: format!("dummy-{}", Uuid::new_v4()),
        };
        settled.insert(request.idempotency_key, receipt.clone());
        Ok(receipt)
    }

    async fn refund(&self, request: RefundRequest) -> Result<PaymentReceipt, PaymentError> {
        *self
            .refund_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(request.idempotency_key.clone())
            .or_default() += 1;
        {
            let mut unanswered = self
                .unanswered_refunds
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if *unanswered > 0 {
                *unanswered -= 1;
                return Err(PaymentError::Unavailable(
                    "the dummy provider was told not to answer".to_string(),
                ));
            }
        }
        let mut refunds = self.refunds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, receipt)) = refunds.get(&request.idempotency_key) {
            return Ok(receipt.clone());
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(PaymentError::Declined(
                "the dummy provider was told to fail".to_string(),
            ));
        }
        if request.amount <= 0 {
            return Err(PaymentError::Declined(
                "only a positive amount can be refunded".to_string(),
            ));
        }
        let receipt = PaymentReceipt {
            provider: Self::NAME.to_string(),
            reference: format!("dummy-refund-{}", Uuid::new_v4()),
        };
        tracing::info!(
            credit_note = %request.credit_note_id,
            payment = %request.payment_reference,
            amount = request.amount,
            reference = %receipt.reference,
            "dummy provider recorded a refund"
        );
        refunds.insert(request.idempotency_key.clone(), (request, receipt.clone()));
        Ok(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &str) -> ChargeRequest {
        ChargeRequest {
            invoice_id: Uuid::new_v4(),
            invoice_number: "KPL-000001".into(),
            idempotency_key: key.into(),
            amount: 0,
            currency: "IDR".into(),
            account_id: Uuid::new_v4(),
        }
    }

    #[tokio::test]
    async fn settles_once_per_idempotency_key_and_fails_on_demand() {
        let provider = DummyProvider::new();
        let a = provider.charge(request("k1")).await.expect("settles");
        assert_eq!(a.provider, "dummy");
        assert!(a.reference.starts_with("dummy-"), "{}", a.reference);
        assert_eq!(provider.charge(request("k1")).await, Ok(a.clone()));

        let handle = provider.clone();
        handle.set_fail(true);
        assert!(matches!(
            provider.charge(request("k2")).await,
            Err(PaymentError::Declined(_))
        ));
        // An already settled key keeps its receipt.
        assert_eq!(provider.charge(request("k1")).await, Ok(a.clone()));
        handle.set_fail(false);
        let b = provider.charge(request("k2")).await.expect("settles again");
        assert_ne!(a.reference, b.reference);
        assert!(
            DummyProvider::failing()
                .charge(request("k3"))
                .await
                .is_err()
        );
    }
}
