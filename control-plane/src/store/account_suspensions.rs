//! The `account_suspensions` table: accounts suspended by an operator, with the instances the
//! suspension stopped (the rules are in `crate::suspensions`).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::db::Db;

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

/// The suspension of `account_id`, if it is suspended (read connection).
pub(crate) async fn get(db: &Db, account_id: &str) -> Result<Option<Suspension>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| account_suspensions::table
        .find(account_id)
        .select(Suspension::as_select())
        .first(c)
        .await
        .optional())?)
}

pub(crate) async fn insert(db: &Db, s: &Suspension) -> Result<()> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::insert_into(
        account_suspensions::table
    )
    .values(s)
    .execute(c)
    .await)?;
    Ok(())
}

/// Records the instances the suspension stopped.
pub(crate) async fn set_instances(db: &Db, account_id: &str, ids: &[String]) -> Result<()> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::update(
        account_suspensions::table.find(account_id)
    )
    .set(account_suspensions::instance_ids.eq(ids.join(",")))
    .execute(c)
    .await)?;
    Ok(())
}

/// Deletes the suspension; `false` when there was none.
pub(crate) async fn remove(db: &Db, account_id: &str) -> Result<bool> {
    let mut conn = db.get().await?;
    let n = kapal::db!(&mut conn, |c| diesel::delete(
        account_suspensions::table.find(account_id)
    )
    .execute(c)
    .await)?;
    Ok(n > 0)
}
