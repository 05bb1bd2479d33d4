//! Accounts suspended by an operator (OperatorService.SuspendAccount): every call made with the
//! account's tokens is refused at authentication (PERMISSION_DENIED with the reason), and its
//! own instance actions are refused too (for calls the gateway still lets through from its
//! identity cache). The instances the suspension stopped are listed so that lifting it starts
//! exactly those again.

use tonic::Status;

use crate::error::Result;
use crate::{Ctx, store};

pub(crate) use crate::store::account_suspensions::Suspension;

/// The suspension of `account_id`, if it is suspended.
pub(crate) async fn of(ctx: &Ctx, account_id: &str) -> Result<Option<Suspension>> {
    store::account_suspensions::get(&ctx.db, account_id).await
}

/// What a suspended account's calls are answered.
pub(crate) fn refusal(s: &Suspension) -> Status {
    Status::permission_denied(format!(
        "This account was suspended by Kapal support on {} UTC: {}. Its instances are stopped and their data is kept; reply to your support ticket or contact support to have it lifted.",
        s.suspended_at.format("%Y-%m-%d %H:%M"),
        s.reason
    ))
}

pub(crate) async fn insert(ctx: &Ctx, s: &Suspension) -> Result<()> {
    store::account_suspensions::insert(&ctx.db, s).await
}

pub(crate) async fn set_instances(ctx: &Ctx, account_id: &str, ids: &[String]) -> Result<()> {
    store::account_suspensions::set_instances(&ctx.db, account_id, ids).await
}

/// Lifts the suspension; `false` when there was none (e.g. lifted meanwhile).
pub(crate) async fn remove(ctx: &Ctx, account_id: &str) -> Result<bool> {
    store::account_suspensions::remove(&ctx.db, account_id).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_says_why_and_what_to_do() {
        let s = super::Suspension {
            account_id: "a".into(),
            reason: "T-9: abuse report".into(),
            actor_account_id: "o".into(),
            suspended_at: chrono::DateTime::from_timestamp(1_800_000_000, 0)
                .expect("valid")
                .naive_utc(),
            instance_ids: "i1,i2".into(),
        };
        let status = super::refusal(&s);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("T-9: abuse report"));
        assert!(status.message().contains("support"));
        assert_eq!(s.instances(), vec!["i1", "i2"]);
    }
}
