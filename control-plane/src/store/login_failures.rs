//! The `login_failures` table: failed log-ins in a row per address tried, and until when the
//! address waits (the rules are in `crate::login`).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::db::Db;

use crate::error::Result;
use crate::schema::login_failures;

/// Until when `email` waits, if a row is kept for it (read connection).
pub(crate) async fn blocked_until(db: &Db, email: &str) -> Result<Option<NaiveDateTime>> {
    let mut conn = db.read().await?;
    let until: Option<Option<NaiveDateTime>> = kapal::db!(&mut conn, |c| login_failures::table
        .filter(login_failures::email.eq(email))
        .select(login_failures::blocked_until)
        .first(c)
        .await
        .optional())?;
    Ok(until.flatten())
}

/// Forgets the counts whose last failure is before `stale`, counts one more failure of
/// `email` at `now`, and, when `wait(failures)` says so, makes it wait until the time given.
/// Returns the failures in a row and the wait set (on one connection, the writer's).
pub(crate) async fn count_failure(
    db: &Db,
    email: &str,
    now: NaiveDateTime,
    stale: NaiveDateTime,
    wait: impl Fn(i64) -> Option<NaiveDateTime>,
) -> Result<(i64, Option<NaiveDateTime>)> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::delete(
        login_failures::table.filter(login_failures::updated_at.lt(stale))
    )
    .execute(c)
    .await)?;
    let failures: i64 = kapal::db!(&mut conn, |c| {
        diesel::insert_into(login_failures::table)
            .values((
                login_failures::email.eq(email),
                login_failures::failures.eq(1_i64),
                login_failures::updated_at.eq(now),
            ))
            .on_conflict(login_failures::email)
            .do_update()
            .set((
                login_failures::failures.eq(login_failures::failures + 1_i64),
                login_failures::updated_at.eq(now),
            ))
            .returning(login_failures::failures)
            .get_result(c)
            .await
    })?;
    let until = wait(failures);
    if let Some(until) = until {
        kapal::db!(&mut conn, |c| diesel::update(
            login_failures::table.filter(login_failures::email.eq(email))
        )
        .set(login_failures::blocked_until.eq(until))
        .execute(c)
        .await)?;
    }
    Ok((failures, until))
}

/// Forgets `email`'s count.
pub(crate) async fn clear(db: &Db, email: &str) -> Result<()> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::delete(
        login_failures::table.filter(login_failures::email.eq(email))
    )
    .execute(c)
    .await)?;
    Ok(())
}
