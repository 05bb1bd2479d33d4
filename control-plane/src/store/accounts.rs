//! The `accounts` table: who signs in, their customer id, role and verified address.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::db::{Db, DbError};

use crate::error::Result;
use crate::models::{Account, AuditEntry};
use crate::schema::{accounts, audit_log};

/// The account's role (`admin` or `customer`), on a read connection.
pub(crate) async fn role(db: &Db, id: &str) -> Result<Option<String>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| accounts::table
        .find(id)
        .select(accounts::role)
        .first(c)
        .await
        .optional())?)
}

/// The account's customer id and role, on a read connection.
pub(crate) async fn customer_id_and_role(db: &Db, id: &str) -> Result<Option<(String, String)>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| accounts::table
        .find(id)
        .select((accounts::customer_id, accounts::role))
        .first(c)
        .await
        .optional())?)
}

/// The account `id`, on the writer's connection.
pub(crate) async fn get(db: &Db, id: &str) -> Result<Option<Account>> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| accounts::table
        .find(id)
        .select(Account::as_select())
        .first(c)
        .await
        .optional())?)
}

/// The account `id`, on a read connection.
pub(crate) async fn get_read(db: &Db, id: &str) -> Result<Option<Account>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| accounts::table
        .find(id)
        .select(Account::as_select())
        .first(c)
        .await
        .optional())?)
}

/// The account with the (normalized) address `email`, on the writer's connection.
pub(crate) async fn by_email(db: &Db, email: &str) -> Result<Option<Account>> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| accounts::table
        .filter(accounts::email.eq(email))
        .select(Account::as_select())
        .first(c)
        .await
        .optional())?)
}

/// How many accounts have the address `email` (0 or 1), on the writer's connection.
pub(crate) async fn count_with_email(db: &Db, email: &str) -> Result<i64> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| accounts::table
        .filter(accounts::email.eq(email))
        .count()
        .get_result(c)
        .await)?)
}

/// Inserts `account`; the database's error as it is (a unique violation: the email or the
/// customer id is taken).
pub(crate) async fn insert(db: &Db, account: &Account) -> std::result::Result<(), DbError> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::insert_into(accounts::table)
        .values(account)
        .execute(c)
        .await)?;
    Ok(())
}

/// Records the account's address as verified at `now`, unless it was already.
pub(crate) async fn mark_verified(db: &Db, id: &str, now: NaiveDateTime) -> Result<()> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::update(
        accounts::table
            .find(id)
            .filter(accounts::email_verified_at.is_null())
    )
    .set(accounts::email_verified_at.eq(now))
    .execute(c)
    .await)?;
    Ok(())
}

/// The account's address and when it was verified, on a read connection.
pub(crate) async fn email_and_verified(
    db: &Db,
    id: &str,
) -> Result<Option<(String, Option<NaiveDateTime>)>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| accounts::table
        .find(id)
        .select((accounts::email, accounts::email_verified_at))
        .first(c)
        .await
        .optional())?)
}

/// Gives the account of `email` the role `role` and writes `audit(account)` to the audit log,
/// in one transaction; nothing is written when it has that role already. Returns the account
/// (as it was read) and whether its role changed; `None`: no account has that address.
pub(crate) async fn set_role(
    db: &Db,
    email: &str,
    role: &str,
    audit: impl Fn(&Account) -> AuditEntry + Sync,
) -> std::result::Result<Option<(Account, bool)>, DbError> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| {
        use diesel_async::AsyncConnection as _;
        c.transaction(async |c| {
            let Some(account) = accounts::table
                .filter(accounts::email.eq(email))
                .select(Account::as_select())
                .first(c)
                .await
                .optional()?
            else {
                return Ok(None);
            };
            if account.role == role {
                return Ok(Some((account, false)));
            }
            diesel::update(accounts::table.find(&account.id))
                .set(accounts::role.eq(role))
                .execute(c)
                .await?;
            diesel::insert_into(audit_log::table)
                .values(&audit(&account))
                .execute(c)
                .await?;
            Ok(Some((account, true)))
        })
        .await
    })
}
