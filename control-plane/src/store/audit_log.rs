//! The `audit_log` table: what operators did (credential reads, actions on instances and
//! accounts, role changes, billing's operator actions), newest first when listed.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::db::Db;
use kapal::paging::Cursor;

use crate::error::Result;
use crate::models::AuditEntry;
use crate::schema::{accounts, audit_log};

/// Writes `entry` with its actor's email as it is now (read on the same connection), and
/// returns it. `None`: `entry.actor_account_id` is no account; nothing is written.
pub(crate) async fn insert_with_actor_email(
    db: &Db,
    mut entry: AuditEntry,
) -> Result<Option<AuditEntry>> {
    let mut conn = db.get().await?;
    let actor = entry.actor_account_id.clone();
    let Some(email) = kapal::db!(&mut conn, |c| accounts::table
        .find(&actor)
        .select(accounts::email)
        .first::<String>(c)
        .await
        .optional())?
    else {
        return Ok(None);
    };
    entry.actor_email = email;
    kapal::db!(&mut conn, |c| diesel::insert_into(audit_log::table)
        .values(&entry)
        .execute(c)
        .await)?;
    Ok(Some(entry))
}

/// A page of the audit log, newest first: at most `limit` entries after `cursor`.
pub(crate) async fn page(db: &Db, cursor: Option<&Cursor>, limit: i64) -> Result<Vec<AuditEntry>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| {
        let mut q = audit_log::table
            .select(AuditEntry::as_select())
            .order((audit_log::at.desc(), audit_log::id.desc()))
            .limit(limit)
            .into_boxed();
        if let Some(cur) = cursor {
            q = q.filter(
                audit_log::at.lt(cur.at).or(audit_log::at
                    .eq(cur.at)
                    .and(audit_log::id.lt(cur.id.clone()))),
            );
        }
        q.load(c).await
    })?)
}
