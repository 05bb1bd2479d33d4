//! Instance changes for WatchInstance streams: one notifier per process, shared by every stream.
//!
//! A stream waits on [`crate::Ctx::changes`] (a broadcast of changed instance ids) and reads its
//! instance again only when that instance changed; no stream polls the database. Changes made
//! by this process are sent as they are written. Changes made by another control-plane replica
//! on the same database reach this process through [`poll`]: one task per process that reads
//! the ids of instances whose `updated_at` moved past its cursor (an index serves it) and sends
//! them on the same channel. So the database sees one small query per interval per process,
//! however many streams are open.
//!
//! Why a poller rather than PostgreSQL's LISTEN/NOTIFY: it works the same on SQLite (which has
//! no notifications across processes), needs no connection held outside the pool, and a
//! replica cannot miss a notification while it reconnects: the cursor catches up from the data.
//!
//! `updated_at` is written by whichever replica made the change, with its clock, inside its
//! transaction. Each poll reads back [`OVERLAP`] before the cursor, so a change committed a
//! little after its timestamp, or made by a replica whose clock is behind by less than that, is
//! still seen; ids already sent for the same `updated_at` are not sent again.

use std::collections::HashMap;
use std::time::Duration;

use chrono::NaiveDateTime;

use crate::error::Result;
use crate::{Ctx, store};

/// How far before its cursor each poll reads again (commit delays, replicas' clock skew).
const OVERLAP: chrono::Duration = chrono::Duration::seconds(10);

/// Feeds [`Ctx::changes`] with instances changed in the database (by any replica) every
/// `interval` until `stop` turns true. It polls also while no stream listens: its cursor stays
/// current, so a stream that opens is woken by changes after it opened, not by a catch-up.
pub(crate) async fn poll(
    ctx: Ctx,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `None` until the first poll reads it from the data.
    let mut cursor: Option<NaiveDateTime> = None;
    let mut sent: HashMap<String, NaiveDateTime> = HashMap::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match round(&ctx, cursor, &mut sent).await {
            Ok(next) => cursor = Some(next),
            Err(e) => {
                tracing::warn!(error = %e, "reading changed instances for watchers failed; retrying")
            }
        }
    }
}

/// One poll: sends the ids changed since `cursor` (minus [`OVERLAP`]) not sent yet, and returns
/// the new cursor. Without a cursor (the first poll), the newest `updated_at` is the cursor.
async fn round(
    ctx: &Ctx,
    cursor: Option<NaiveDateTime>,
    sent: &mut HashMap<String, NaiveDateTime>,
) -> Result<NaiveDateTime> {
    let cursor = match cursor {
        Some(c) => c,
        None => store::instances::newest_update(&ctx.db)
            .await?
            .unwrap_or_else(|| ctx.now()),
    };
    let since = cursor - OVERLAP;
    let rows = store::instances::updated_after(&ctx.db, since).await?;
    let mut newest = cursor;
    for (id, at) in rows {
        newest = newest.max(at);
        if sent.get(&id) == Some(&at) {
            continue;
        }
        // No stream listening is not an error.
        let _ = ctx.changes.send(id.clone());
        sent.insert(id, at);
    }
    let keep_after = newest - OVERLAP;
    sent.retain(|_, at| *at > keep_after);
    Ok(newest)
}
