//! The `instance_events` table: an instance's history (its status changes and the actions on
//! it). Entries written together with a change of the instance are written by
//! [`super::instances`] in the same transaction.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::db::Db;

use crate::error::Result;
use crate::models::InstanceEvent;
use crate::schema::instance_events;

/// Appends `event` to its instance's history.
pub(crate) async fn insert(db: &Db, event: &InstanceEvent) -> Result<()> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::insert_into(instance_events::table)
        .values(event)
        .execute(c)
        .await)?;
    Ok(())
}

/// The newest `limit` entries of the instance's history, newest first.
pub(crate) async fn newest(db: &Db, instance_id: &str, limit: i64) -> Result<Vec<InstanceEvent>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instance_events::table
        .filter(instance_events::instance_id.eq(instance_id))
        .order((instance_events::at.desc(), instance_events::id.desc()))
        .limit(limit)
        .select(InstanceEvent::as_select())
        .load(c)
        .await)?)
}

/// `(instance_id, status, at)` of every history entry of the instances `ids`, by instance and
/// newest first.
pub(crate) async fn statuses_of(
    db: &Db,
    ids: &[&str],
) -> Result<Vec<(String, String, NaiveDateTime)>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instance_events::table
        .filter(instance_events::instance_id.eq_any(ids))
        .order((
            instance_events::instance_id,
            instance_events::at.desc(),
            instance_events::id.desc()
        ))
        .select((
            instance_events::instance_id,
            instance_events::status,
            instance_events::at
        ))
        .load(c)
        .await)?)
}
