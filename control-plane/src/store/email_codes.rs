//! The `email_codes` table: one-time codes mailed to an account's address (verification,
//! password reset), stored as hashes (the rules are in `crate::accounts`).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::db::Db;

use crate::error::Result;
use crate::models::EmailCode;
use crate::schema::email_codes;

/// Stores `row`, the account's new code of its purpose; the earlier unused ones of that
/// purpose are used up at `now` (they stop working).
pub(crate) async fn replace(db: &Db, row: &EmailCode, now: NaiveDateTime) -> Result<()> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::update(
        email_codes::table
            .filter(email_codes::account_id.eq(&row.account_id))
            .filter(email_codes::purpose.eq(&row.purpose))
            .filter(email_codes::used_at.is_null())
    )
    .set(email_codes::used_at.eq(now))
    .execute(c)
    .await)?;
    kapal::db!(&mut conn, |c| diesel::insert_into(email_codes::table)
        .values(row)
        .execute(c)
        .await)?;
    Ok(())
}

/// How many codes of `purpose` were made for the account after `since`.
pub(crate) async fn made_since(
    db: &Db,
    account_id: &str,
    purpose: &str,
    since: NaiveDateTime,
) -> Result<i64> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| email_codes::table
        .filter(email_codes::account_id.eq(account_id))
        .filter(email_codes::purpose.eq(purpose))
        .filter(email_codes::created_at.gt(since))
        .count()
        .get_result(c)
        .await)?)
}

/// Uses up the account's live (unused, unexpired at `now`) code of `purpose` if its hash is
/// `code_hash`. Every try counts against the code's attempts (at most `max_attempts`), right or
/// wrong, before the hash is compared. Whether the code was right and is used up now.
pub(crate) async fn spend(
    db: &Db,
    account_id: &str,
    purpose: &str,
    code_hash: &str,
    max_attempts: i64,
    now: NaiveDateTime,
) -> Result<bool> {
    let mut conn = db.get().await?;
    let Some(live) = kapal::db!(&mut conn, |c| email_codes::table
        .filter(email_codes::account_id.eq(account_id))
        .filter(email_codes::purpose.eq(purpose))
        .filter(email_codes::used_at.is_null())
        .filter(email_codes::expires_at.gt(now))
        .order(email_codes::created_at.desc())
        .select(EmailCode::as_select())
        .first(c)
        .await
        .optional())?
    else {
        return Ok(false);
    };
    let counted = kapal::db!(&mut conn, |c| diesel::update(
        email_codes::table
            .find(&live.id)
            .filter(email_codes::used_at.is_null())
            .filter(email_codes::attempts.lt(max_attempts))
    )
    .set(email_codes::attempts.eq(email_codes::attempts + 1))
    .execute(c)
    .await)?;
    if counted == 0 || code_hash != live.code_hash {
        return Ok(false);
    }
    let used = kapal::db!(&mut conn, |c| diesel::update(
        email_codes::table
            .find(&live.id)
            .filter(email_codes::used_at.is_null())
    )
    .set(email_codes::used_at.eq(now))
    .execute(c)
    .await)?;
    Ok(used > 0)
}
