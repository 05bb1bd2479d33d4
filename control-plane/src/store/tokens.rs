//! The `tokens` table: login sessions and API tokens, stored as hashes (the rules are in
//! `crate::accounts` and `crate::sessions`).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::db::Db;
use kapal::paging::Cursor;

use crate::error::Result;
use crate::models::{Account, Token, token_kind};
use crate::schema::{accounts, tokens};

pub(crate) async fn insert(db: &Db, token: &Token) -> Result<()> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::insert_into(tokens::table)
        .values(token)
        .execute(c)
        .await)?;
    Ok(())
}

/// The token whose hash is `hash`, unrevoked and unexpired at `now`, with its account (read
/// connection).
pub(crate) async fn valid_with_account(
    db: &Db,
    hash: &str,
    now: NaiveDateTime,
) -> Result<Option<(Token, Account)>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| tokens::table
        .inner_join(accounts::table)
        .filter(tokens::token_hash.eq(hash))
        .filter(tokens::revoked_at.is_null())
        .filter(tokens::expires_at.gt(now))
        .select((Token::as_select(), Account::as_select()))
        .first(c)
        .await
        .optional())?)
}

/// The token `id` if it is `account_id`'s (read connection).
pub(crate) async fn owned(db: &Db, account_id: &str, id: &str) -> Result<Option<Token>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| tokens::table
        .find(id)
        .filter(tokens::account_id.eq(account_id))
        .select(Token::as_select())
        .first(c)
        .await
        .optional())?)
}

/// Records that the token `id` was used at `now`.
pub(crate) async fn set_last_used(db: &Db, id: &str, now: NaiveDateTime) -> Result<usize> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| diesel::update(
        tokens::table.find(id)
    )
    .set(tokens::last_used_at.eq(now))
    .execute(c)
    .await)?)
}

/// Revokes the token `id` of `account_id` at `now` if it is not revoked yet.
pub(crate) async fn revoke(db: &Db, account_id: &str, id: &str, now: NaiveDateTime) -> Result<()> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::update(
        tokens::table
            .filter(tokens::id.eq(id))
            .filter(tokens::account_id.eq(account_id))
            .filter(tokens::revoked_at.is_null())
    )
    .set(tokens::revoked_at.eq(now))
    .execute(c)
    .await)?;
    Ok(())
}

/// Revokes `account_id`'s token `id` of `kind` at `now` (unless revoked already) and returns
/// it as it is then; `None`: the account has no such token of that kind.
pub(crate) async fn revoke_of_kind(
    db: &Db,
    account_id: &str,
    id: &str,
    kind: &str,
    now: NaiveDateTime,
) -> Result<Option<Token>> {
    let mine = || {
        tokens::table
            .filter(tokens::id.eq(id.to_string()))
            .filter(tokens::account_id.eq(account_id.to_string()))
            .filter(tokens::kind.eq(kind.to_string()))
    };
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::update(
        mine().filter(tokens::revoked_at.is_null())
    )
    .set(tokens::revoked_at.eq(now))
    .execute(c)
    .await)?;
    Ok(kapal::db!(&mut conn, |c| mine()
        .select(Token::as_select())
        .first(c)
        .await
        .optional())?)
}

/// Sets the account's password hash and revokes its live sessions at `now` (all of them, or
/// all but `keep`), on one connection. Returns the sessions ended.
pub(crate) async fn set_password_ending_sessions(
    db: &Db,
    account_id: &str,
    password_hash: &str,
    keep: Option<&str>,
    now: NaiveDateTime,
) -> Result<usize> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::update(
        accounts::table.find(account_id)
    )
    .set(accounts::password_hash.eq(password_hash))
    .execute(c)
    .await)?;
    let keep = keep.unwrap_or("").to_string();
    Ok(kapal::db!(&mut conn, |c| diesel::update(
        tokens::table
            .filter(tokens::account_id.eq(account_id))
            .filter(tokens::kind.eq(token_kind::SESSION))
            .filter(tokens::revoked_at.is_null())
            .filter(tokens::id.ne(&keep))
    )
    .set(tokens::revoked_at.eq(now))
    .execute(c)
    .await)?)
}

/// A page of `account_id`'s tokens of `kind`, newest first: at most `limit` after `cursor`;
/// with `live_at`, only those unrevoked and unexpired then.
pub(crate) async fn page(
    db: &Db,
    account_id: &str,
    kind: &str,
    live_at: Option<NaiveDateTime>,
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<Token>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| {
        let mut q = tokens::table
            .filter(tokens::account_id.eq(account_id.to_string()))
            .filter(tokens::kind.eq(kind.to_string()))
            .order((tokens::created_at.desc(), tokens::id.desc()))
            .limit(limit)
            .select(Token::as_select())
            .into_boxed();
        if let Some(now) = live_at {
            q = q
                .filter(tokens::revoked_at.is_null())
                .filter(tokens::expires_at.gt(now));
        }
        if let Some(cur) = cursor {
            q = q.filter(
                tokens::created_at.lt(cur.at).or(tokens::created_at
                    .eq(cur.at)
                    .and(tokens::id.lt(cur.id.clone()))),
            );
        }
        q.load(c).await
    })?)
}
