//! The `pushed_alerts` table: alerts sent to the notifier as opened and not yet as closed
//! (what to send is decided in `crate::alerting`). Each change is conditional on the row as it
//! was read, so of several replicas only one sends each notice.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::db::Db;

use crate::error::Result;
use crate::schema::pushed_alerts;

/// An alert sent as opened and not yet as closed.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = pushed_alerts)]
pub(crate) struct Pushed {
    pub kind: String,
    pub subject: String,
    pub severity: i32,
    pub message: String,
    pub opened_at: NaiveDateTime,
}

/// Every alert pushed as opened (writer's connection: the newest state).
pub(crate) async fn all(db: &Db) -> Result<Vec<Pushed>> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| pushed_alerts::table
        .select(Pushed::as_select())
        .load(c)
        .await)?)
}

/// Removes `p` if it is still the one opened then; whether this call removed it.
pub(crate) async fn remove(db: &Db, p: &Pushed) -> Result<bool> {
    let mut conn = db.get().await?;
    let gone = kapal::db!(&mut conn, |c| diesel::delete(
        pushed_alerts::table
            .filter(pushed_alerts::kind.eq(&p.kind))
            .filter(pushed_alerts::subject.eq(&p.subject))
            .filter(pushed_alerts::opened_at.eq(p.opened_at))
    )
    .execute(c)
    .await)?;
    Ok(gone == 1)
}

/// Adds `row` unless its (kind, subject) is there already; whether this call added it.
pub(crate) async fn add(db: &Db, row: &Pushed) -> Result<bool> {
    let mut conn = db.get().await?;
    let added = kapal::db!(&mut conn, |c| diesel::insert_into(pushed_alerts::table)
        .values(row)
        .on_conflict_do_nothing()
        .execute(c)
        .await)?;
    Ok(added == 1)
}

/// Changes `p`'s severity and message if its severity is still `p.severity`; whether this
/// call changed it.
pub(crate) async fn change_severity(
    db: &Db,
    p: &Pushed,
    severity: i32,
    message: &str,
) -> Result<bool> {
    let mut conn = db.get().await?;
    let changed = kapal::db!(&mut conn, |c| diesel::update(
        pushed_alerts::table
            .filter(pushed_alerts::kind.eq(&p.kind))
            .filter(pushed_alerts::subject.eq(&p.subject))
            .filter(pushed_alerts::severity.eq(p.severity))
    )
    .set((
        pushed_alerts::severity.eq(severity),
        pushed_alerts::message.eq(message),
    ))
    .execute(c)
    .await)?;
    Ok(changed == 1)
}
