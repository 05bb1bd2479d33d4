//! Accounts suspended by an operator (OperatorService.SuspendAccount): every call made with the
//! account's tokens is refused at authentication (PERMISSION_DENIED with the reason), and its
//! own instance actions are refused too (for calls the gateway still lets through from its
//! identity cache). The instances the suspension stopped are listed so that lifting it starts
//! exactly those again.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use tonic::Status;

use crate::Ctx;
use crate::error::Result;
use crate::schema::account_suspensions;

#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = account_suspensions)]
pub(crate) struct Suspension {
    pub account_id: String,
    pub reason: String,
    pub actor_account_id: String,
    pub suspended_at: chrono::NaiveDateTime,
    /// The instances the suspension stopped, comma-separated.
    pub instance_ids: String,
}

impl Suspension {
    pub(crate) fn instances(&self) -> Vec<String> {
        self.instance_ids
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// The suspension of `account_id`, if it is suspended.
pub(crate) async fn of(ctx: &Ctx, account_id: &str) -> Result<Option<Suspension>> {
    let mut conn = ctx.db.read().await?;
    Ok(kapal::db!(&mut conn, |c| account_suspensions::table
        .find(account_id)
        .select(Suspension::as_select())
        .first(c)
        .await
        .optional())?)
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
    let mut conn = ctx.db.get().await?;
    kapal::db!(&mut conn, |c| diesel::insert_into(
        account_suspensions::table
    )
    .values(s)
    .execute(c)
    .await)?;
    Ok(())
}

pub(crate) async fn set_instances(ctx: &Ctx, account_id: &str, ids: &[String]) -> Result<()> {
    let mut conn = ctx.db.get().await?;
    kapal::db!(&mut conn, |c| diesel::update(
        account_suspensions::table.find(account_id)
    )
    .set(account_suspensions::instance_ids.eq(ids.join(",")))
    .execute(c)
    .await)?;
    Ok(())
}

/// Lifts the suspension; `false` when there was none (e.g. lifted meanwhile).
pub(crate) async fn remove(ctx: &Ctx, account_id: &str) -> Result<bool> {
    let mut conn = ctx.db.get().await?;
    let n = kapal::db!(&mut conn, |c| diesel::delete(
        account_suspensions::table.find(account_id)
    )
    .execute(c)
    .await)?;
    Ok(n > 0)
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
