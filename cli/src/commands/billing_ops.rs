//! The operators' billing actions: `kapal admin extend` (ExtendSubscription) and `kapal admin
//! credit` (CreditInvoice). Each needs a reason, is recorded in the audit log and shown in the
//! subscription's history.

use serde_json::json;

use kapal::proto::v1::{
    CreditInvoiceRequest, CreditInvoiceResponse, CreditNoteStatus, ExtendSubscriptionRequest,
    Money, Subscription,
};

use crate::args::{CreditArgs, ExtendArgs};
use crate::commands::subscription::subscription_status;
use crate::connect::{Ctx, RpcResult as _};
use crate::output::{Render, money, money_json, time, ts_json};

pub async fn extend(a: ExtendArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let s = ctx
        .billing_admin()?
        .extend_subscription(ExtendSubscriptionRequest {
            subscription_id: a.id,
            days: a.days,
            reason: a.reason,
        })
        .await
        .or_fail_as_operator(&ctx)?;
    ctx.print(&Extended(&s, a.days))
}

pub async fn credit(a: CreditArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let r = ctx
        .billing_admin()?
        .credit_invoice(CreditInvoiceRequest {
            invoice_id: a.invoice,
            amount: Some(Money {
                amount: a.amount,
                currency: "IDR".into(),
            }),
            reason: a.reason,
        })
        .await
        .or_fail_as_operator(&ctx)?;
    ctx.print(&Credited(&r))
}

struct Extended<'a>(&'a Subscription, u32);

impl Render for Extended<'_> {
    fn text(&self) -> String {
        let (s, days) = (self.0, self.1);
        format!(
            "Subscription {} ({}) extended by {days} days: the period now ends {}.\n",
            s.id,
            subscription_status(s),
            time(s.current_period_end.as_ref()),
        )
    }

    fn json(&self) -> impl serde::Serialize {
        let s = self.0;
        json!({
            "id": s.id,
            "account_id": s.account_id,
            "status": subscription_status(s),
            "extended_days": self.1,
            "current_period_end": ts_json(s.current_period_end.as_ref()),
            "trial_end": ts_json(s.trial_end.as_ref()),
        })
    }
}

fn note_status(s: i32) -> &'static str {
    match CreditNoteStatus::try_from(s).unwrap_or(CreditNoteStatus::Unspecified) {
        CreditNoteStatus::Pending => "pending",
        CreditNoteStatus::Refunded => "refunded",
        CreditNoteStatus::Failed => "failed",
        CreditNoteStatus::Unspecified => "unknown",
    }
}

struct Credited<'a>(&'a CreditInvoiceResponse);

impl Render for Credited<'_> {
    fn text(&self) -> String {
        let r = self.0;
        let mut out = String::new();
        if let Some(n) = &r.credit_note {
            if n.status == CreditNoteStatus::Pending as i32 {
                out.push_str(&format!(
                    "Credit note {} (pending): {} not refunded yet: the payment provider did not answer attempt {} ({}); billing asks again from {}.\n",
                    n.id,
                    money(n.amount.as_ref()),
                    n.refund_attempts,
                    n.last_error,
                    ts_json(n.next_attempt_at.as_ref()).unwrap_or_else(|| "its next run".into())
                ));
            } else {
                out.push_str(&format!(
                    "Credit note {} ({}): {} refunded by {} (reference {}).\n",
                    n.id,
                    note_status(n.status),
                    money(n.amount.as_ref()),
                    n.refund_provider,
                    n.refund_reference
                ));
            }
        }
        if let Some(i) = &r.invoice {
            out.push_str(&format!(
                "Invoice {}: {} credited of {}.\n",
                i.number,
                money(i.credited.as_ref()),
                money(i.amount.as_ref())
            ));
        }
        out
    }

    fn json(&self) -> impl serde::Serialize {
        let r = self.0;
        json!({
            "credit_note": r.credit_note.as_ref().map(|n| json!({
                "id": n.id,
                "invoice_id": n.invoice_id,
                "amount": money_json(n.amount.as_ref()),
                "status": note_status(n.status),
                "reason": n.reason,
                "refund_provider": n.refund_provider,
                "refund_reference": n.refund_reference,
                "refund_attempts": n.refund_attempts,
                "next_attempt_at": ts_json(n.next_attempt_at.as_ref()),
                "last_error": n.last_error,
                "created_at": ts_json(n.created_at.as_ref()),
            })),
            "invoice": r.invoice.as_ref().map(|i| json!({
                "id": i.id,
                "number": i.number,
                "amount": money_json(i.amount.as_ref()),
                "credited": money_json(i.credited.as_ref()),
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapal::proto::v1::{CreditNote, Invoice};

    fn idr(amount: i64) -> Option<Money> {
        Some(Money {
            amount,
            currency: "IDR".into(),
        })
    }

    #[test]
    fn a_credit_note_shows_what_was_refunded_and_what_is_credited() {
        let r = CreditInvoiceResponse {
            credit_note: Some(CreditNote {
                id: "n1".into(),
                invoice_id: "i1".into(),
                amount: idr(39_500),
                reason: "T-9".into(),
                status: CreditNoteStatus::Refunded as i32,
                refund_provider: "dummy".into(),
                refund_reference: "dummy-refund-1".into(),
                ..Default::default()
            }),
            invoice: Some(Invoice {
                id: "i1".into(),
                number: "KPL-000042".into(),
                amount: idr(79_000),
                credited: idr(39_500),
                ..Default::default()
            }),
        };
        let text = Credited(&r).text();
        assert!(text.contains("Credit note n1 (refunded)"), "{text}");
        assert!(text.contains("dummy-refund-1"), "{text}");
        assert!(text.contains("Invoice KPL-000042"), "{text}");
        let json = crate::output::json_of(&Credited(&r));
        assert_eq!(json["credit_note"]["status"], "refunded");
        assert_eq!(json["invoice"]["number"], "KPL-000042");
    }

    #[test]
    fn a_pending_credit_note_says_billing_asks_again() {
        let r = CreditInvoiceResponse {
            credit_note: Some(CreditNote {
                id: "n2".into(),
                amount: idr(10_000),
                status: CreditNoteStatus::Pending as i32,
                refund_attempts: 1,
                last_error: "the payment provider did not answer".into(),
                next_attempt_at: Some(prost_types::Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            invoice: None,
        };
        let text = Credited(&r).text();
        assert!(text.contains("Credit note n2 (pending)"), "{text}");
        assert!(text.contains("not refunded yet"), "{text}");
        assert!(text.contains("attempt 1"), "{text}");
        assert!(!text.contains("refunded by"), "{text}");
        let json = crate::output::json_of(&Credited(&r));
        assert_eq!(json["credit_note"]["refund_attempts"], 1);
        assert!(json["credit_note"]["next_attempt_at"].is_string());
    }
}
