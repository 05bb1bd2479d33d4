//! The subscription state machine, in one place: the statuses a subscription and an invoice can
//! have, how they are stored and shown, and which status changes are allowed.
//!
//! | from         | to           | when                                                          |
//! |--------------|--------------|---------------------------------------------------------------|
//! | (none)       | `INCOMPLETE` | CreateSubscription wrote the subscription and its first invoice |
//! | `INCOMPLETE` | `TRIALING`   | the first invoice (Rp 0) of a trial plan was paid              |
//! | `INCOMPLETE` | `ACTIVE`     | the first invoice of a paid plan was paid                      |
//! | `INCOMPLETE` | `EXPIRED`    | the checkout was abandoned (its payment never succeeded)       |
//! | `TRIALING`   | `ACTIVE`     | the trial ended, converted (ChangePlan) to a paid plan, paid   |
//! | `TRIALING`   | `PAST_DUE`   | the trial ended, converted, but the first charge failed       |
//! | `TRIALING`   | `EXPIRED`    | the trial ended without a paid plan                            |
//! | `TRIALING`   | `CANCELED`   | cancelled by the customer, at the end of the trial             |
//! | `ACTIVE`     | `PAST_DUE`   | the renewal payment failed; the grace period starts            |
//! | `ACTIVE`     | `EXPIRED`    | the period ended without renewal (auto-renew off)              |
//! | `ACTIVE`     | `CANCELED`   | cancelled by the customer, at the end of the period            |
//! | `PAST_DUE`   | `ACTIVE`     | paid within the grace period                                   |
//! | `PAST_DUE`   | `SUSPENDED`  | the grace period is over: the instance is scaled to zero       |
//! | `PAST_DUE`   | `CANCELED`   | cancelled by the customer                                      |
//! | `SUSPENDED`  | `ACTIVE`     | paid while suspended: the instance comes back                  |
//! | `SUSPENDED`  | `EXPIRED`    | the retention period is over: the instance is removed          |
//! | `SUSPENDED`  | `CANCELED`   | cancelled by the customer                                      |
//!
//! `EXPIRED` and `CANCELED` are final. A renewal of an `ACTIVE` subscription keeps its status and
//! only moves its period. CreateSubscription makes the first transitions (creation and the
//! first payment); every later one is made by the scheduler (`crate::scheduler`), which goes
//! through [`SubscriptionStatus::can_become`] and records each change as an event with its
//! time (when it was due) and cause. After `EXPIRED`/`CANCELED` the scheduler still cleans up:
//! once the retention period has passed the instance is deleted (an event, status unchanged).
//!
//! What the instance may do follows the status ([`Entitlement`]): `TRIALING`, `ACTIVE` and
//! `PAST_DUE` (grace) run it; `SUSPENDED`, `EXPIRED` and `CANCELED` keep it scaled to zero with
//! its data; after clean-up it is deleted.
//!
//! `INCOMPLETE` is billing's own: a subscription whose first payment has not succeeded (yet) is
//! not shown to the customer at all, so the public API never carries it.
//!
//! Cancelling and turning auto-renew off or on do not change the status: they set
//! `cancel_at_period_end` / `auto_renew`, which the scheduler reads when the period ends. They
//! are recorded as events all the same, with the status unchanged.

use std::fmt;

use kapal::proto::v1 as pb;

/// The status of a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    /// Created, first payment not (yet) settled. Invisible to the customer.
    Incomplete,
    /// In the free trial.
    Trialing,
    /// Paid for the current period.
    Active,
    /// Renewal payment failed; inside the grace period, the instance keeps running.
    PastDue,
    /// Grace period over; the instance is scaled to zero, data kept.
    Suspended,
    /// Ended; the instance is removed, its data after the retention period.
    Expired,
    /// Cancelled by the customer and ended.
    Canceled,
}

impl SubscriptionStatus {
    pub const ALL: [SubscriptionStatus; 7] = [
        SubscriptionStatus::Incomplete,
        SubscriptionStatus::Trialing,
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Suspended,
        SubscriptionStatus::Expired,
        SubscriptionStatus::Canceled,
    ];

    /// The stored form (the `status` column).
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Incomplete => "incomplete",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Suspended => "suspended",
            SubscriptionStatus::Expired => "expired",
            SubscriptionStatus::Canceled => "canceled",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<SubscriptionStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// The wire form. `INCOMPLETE` subscriptions are never sent; it maps to UNSPECIFIED.
    pub fn to_proto(self) -> pb::SubscriptionStatus {
        match self {
            SubscriptionStatus::Incomplete => pb::SubscriptionStatus::Unspecified,
            SubscriptionStatus::Trialing => pb::SubscriptionStatus::Trialing,
            SubscriptionStatus::Active => pb::SubscriptionStatus::Active,
            SubscriptionStatus::PastDue => pb::SubscriptionStatus::PastDue,
            SubscriptionStatus::Suspended => pb::SubscriptionStatus::Suspended,
            SubscriptionStatus::Expired => pb::SubscriptionStatus::Expired,
            SubscriptionStatus::Canceled => pb::SubscriptionStatus::Canceled,
        }
    }

    /// The statuses this one may change to (see the module's table).
    pub fn next(self) -> &'static [SubscriptionStatus] {
        use SubscriptionStatus::*;
        match self {
            Incomplete => &[Trialing, Active, Expired],
            Trialing => &[Active, PastDue, Expired, Canceled],
            Active => &[PastDue, Expired, Canceled],
            PastDue => &[Active, Suspended, Canceled],
            Suspended => &[Active, Expired, Canceled],
            Expired | Canceled => &[],
        }
    }

    /// Whether a subscription in this status may change to `to`.
    pub fn can_become(self, to: SubscriptionStatus) -> bool {
        self.next().contains(&to)
    }

    /// Whether the subscription is over (nothing can change any more).
    pub fn is_final(self) -> bool {
        self.next().is_empty()
    }

    /// Whether the customer sees the subscription (and its invoices).
    pub fn is_visible(self) -> bool {
        self != SubscriptionStatus::Incomplete
    }

    /// The status a subscription takes when its first invoice is paid.
    pub fn started(trial: bool) -> SubscriptionStatus {
        if trial {
            SubscriptionStatus::Trialing
        } else {
            SubscriptionStatus::Active
        }
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a subscription lets its instance do, as billing tells the control-plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entitlement {
    /// Runs (trialing, active, or inside grace).
    Active,
    /// Scaled to zero, data kept (suspended, or ended and not cleaned up yet).
    Suspended,
    /// Deleted (ended and cleaned up).
    Expired,
}

impl Entitlement {
    pub fn as_str(self) -> &'static str {
        match self {
            Entitlement::Active => "active",
            Entitlement::Suspended => "suspended",
            Entitlement::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Entitlement> {
        [
            Entitlement::Active,
            Entitlement::Suspended,
            Entitlement::Expired,
        ]
        .into_iter()
        .find(|e| e.as_str() == s)
    }

    /// The wire form.
    pub fn to_proto(self) -> kapal::proto::internal::v1::Entitlement {
        use kapal::proto::internal::v1::Entitlement as E;
        match self {
            Entitlement::Active => E::Active,
            Entitlement::Suspended => E::Suspended,
            Entitlement::Expired => E::Expired,
        }
    }

    /// The entitlement of a subscription in `status`, cleaned up or not.
    pub fn of(status: SubscriptionStatus, cleaned_up: bool) -> Entitlement {
        use SubscriptionStatus::*;
        match status {
            Incomplete | Trialing | Active | PastDue => Entitlement::Active,
            Suspended => Entitlement::Suspended,
            Expired | Canceled if cleaned_up => Entitlement::Expired,
            Expired | Canceled => Entitlement::Suspended,
        }
    }
}

/// The status of an invoice.
///
/// `OPEN` → `PAID` | `FAILED` | `VOID`; `FAILED` → `PAID` | `FAILED` (charged again, with the
/// same idempotency key) | `VOID`. `PAID` and `VOID` are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvoiceStatus {
    Open,
    Paid,
    Failed,
    Void,
}

impl InvoiceStatus {
    pub const ALL: [InvoiceStatus; 4] = [
        InvoiceStatus::Open,
        InvoiceStatus::Paid,
        InvoiceStatus::Failed,
        InvoiceStatus::Void,
    ];

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Open => "open",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Failed => "failed",
            InvoiceStatus::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<InvoiceStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    pub fn to_proto(self) -> pb::InvoiceStatus {
        match self {
            InvoiceStatus::Open => pb::InvoiceStatus::Open,
            InvoiceStatus::Paid => pb::InvoiceStatus::Paid,
            InvoiceStatus::Failed => pb::InvoiceStatus::Failed,
            InvoiceStatus::Void => pb::InvoiceStatus::Void,
        }
    }

    /// Whether a charge may be (re)started for an invoice in this status.
    pub fn is_chargeable(self) -> bool {
        matches!(self, InvoiceStatus::Open | InvoiceStatus::Failed)
    }
}

impl fmt::Display for InvoiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stored states of the `payments` table (one row per charge sent to a provider).
pub mod payment {
    /// Sent to the provider, no answer recorded yet (or the process stopped meanwhile).
    pub const PENDING: &str = "pending";
    /// Settled the invoice.
    pub const SUCCEEDED: &str = "succeeded";
    /// Declined, or the provider did not answer.
    pub const FAILED: &str = "failed";
    /// The provider settled it, but the invoice had already been paid by another attempt with
    /// the same idempotency key (the provider's answer to a repeated key): nothing new settled.
    pub const DUPLICATE: &str = "duplicate";
}

/// How a subscription ends, as the customer controls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    /// Charged for the next period automatically.
    pub auto_renew: bool,
    /// Ends at the end of the current period.
    pub cancel_at_period_end: bool,
}

/// A customer's change to [`Renewal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewalChange {
    /// CancelSubscription: end at the end of the current period, no renewal.
    Cancel,
    /// SetAutoRenew. Turning it on also withdraws a cancellation.
    AutoRenew(bool),
}

/// The customer's `change` applied to a subscription in `status` (a trial when `trial`): the new
/// settings and the event's cause, `None` when nothing changes, or why it is not allowed.
/// The status itself never changes here; the scheduler acts on the settings at period end.
pub fn change_renewal(
    status: SubscriptionStatus,
    trial: bool,
    current: Renewal,
    change: RenewalChange,
) -> Result<Option<(Renewal, &'static str)>, String> {
    if status.is_final() {
        return Err(format!("the subscription has already ended ({status})"));
    }
    Ok(match change {
        RenewalChange::Cancel if current.cancel_at_period_end => None,
        RenewalChange::Cancel => Some((
            Renewal {
                auto_renew: false,
                cancel_at_period_end: true,
            },
            "cancelled by the customer: ends at the end of the period",
        )),
        RenewalChange::AutoRenew(true) if trial => {
            return Err(
                "a free trial does not renew: choose a paid plan to keep the instance after the trial"
                    .to_string(),
            );
        }
        RenewalChange::AutoRenew(true) if current.auto_renew && !current.cancel_at_period_end => {
            None
        }
        RenewalChange::AutoRenew(true) => Some((
            Renewal {
                auto_renew: true,
                cancel_at_period_end: false,
            },
            if current.cancel_at_period_end {
                "auto-renew turned on by the customer: cancellation withdrawn"
            } else {
                "auto-renew turned on by the customer"
            },
        )),
        RenewalChange::AutoRenew(false) if !current.auto_renew => None,
        RenewalChange::AutoRenew(false) => Some((
            Renewal {
                auto_renew: false,
                cancel_at_period_end: current.cancel_at_period_end,
            },
            "auto-renew turned off by the customer",
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_forms_round_trip() {
        for s in SubscriptionStatus::ALL {
            assert_eq!(SubscriptionStatus::parse(s.as_str()), Some(s));
        }
        for s in InvoiceStatus::ALL {
            assert_eq!(InvoiceStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(SubscriptionStatus::parse("ACTIVE"), None);
    }

    #[test]
    fn transitions_follow_the_table() {
        use SubscriptionStatus::*;
        assert!(Incomplete.can_become(Trialing));
        assert!(Incomplete.can_become(Active));
        assert!(!Incomplete.can_become(PastDue));
        assert!(Trialing.can_become(Active));
        assert!(!Trialing.can_become(Suspended));
        assert!(Active.can_become(PastDue));
        assert!(PastDue.can_become(Suspended));
        assert!(Suspended.can_become(Active));
        assert!(
            !Active.can_become(Active),
            "a renewal is not a status change"
        );
        for end in [Expired, Canceled] {
            assert!(end.is_final());
            assert!(
                SubscriptionStatus::ALL
                    .iter()
                    .all(|&to| !end.can_become(to))
            );
        }
        // Nothing goes back to INCOMPLETE.
        assert!(
            SubscriptionStatus::ALL
                .iter()
                .all(|&from| !from.can_become(Incomplete))
        );
    }

    #[test]
    fn renewal_changes() {
        use RenewalChange::*;
        use SubscriptionStatus::*;
        let renewing = Renewal {
            auto_renew: true,
            cancel_at_period_end: false,
        };
        let cancelled = Renewal {
            auto_renew: false,
            cancel_at_period_end: true,
        };
        let (next, _) = change_renewal(Active, false, renewing, Cancel)
            .expect("allowed")
            .expect("changes");
        assert_eq!(next, cancelled);
        assert_eq!(change_renewal(Active, false, cancelled, Cancel), Ok(None));
        let (next, cause) = change_renewal(Active, false, cancelled, AutoRenew(true))
            .expect("allowed")
            .expect("changes");
        assert_eq!(next, renewing);
        assert!(cause.contains("withdrawn"), "{cause}");
        assert_eq!(
            change_renewal(Active, false, renewing, AutoRenew(true)),
            Ok(None)
        );
        let (next, _) = change_renewal(PastDue, false, renewing, AutoRenew(false))
            .expect("allowed")
            .expect("changes");
        assert_eq!(
            next,
            Renewal {
                auto_renew: false,
                cancel_at_period_end: false
            }
        );
        let trial = Renewal {
            auto_renew: false,
            cancel_at_period_end: false,
        };
        assert!(change_renewal(Trialing, true, trial, AutoRenew(true)).is_err());
        assert_eq!(
            change_renewal(Trialing, true, trial, AutoRenew(false)),
            Ok(None)
        );
        assert!(
            change_renewal(Trialing, true, trial, Cancel)
                .expect("allowed")
                .is_some()
        );
        for end in [Expired, Canceled] {
            assert!(change_renewal(end, false, renewing, Cancel).is_err());
            assert!(change_renewal(end, false, renewing, AutoRenew(false)).is_err());
        }
    }

    #[test]
    fn only_incomplete_is_hidden() {
        for s in SubscriptionStatus::ALL {
            assert_eq!(s.is_visible(), s != SubscriptionStatus::Incomplete);
            assert_eq!(
                s.is_visible(),
                s.to_proto() != pb::SubscriptionStatus::Unspecified
            );
        }
    }
}
