//! The `orders` table: checkouts, idempotent per (account, idempotency key). Placing an order
//! (checked against the account's limits and the capacity, serialized with other checkouts)
//! and completing it (its instance row created in the same transaction) are here as one
//! transaction each.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use kapal::db::{Db, DbConn, DbError};
use kapal::paging::Cursor;

use super::instances::commitment_rows;
use super::{CHECKOUT_LOCK_KEY, Check};
use crate::error::Result;
use crate::models::{Instance, Order, instance_state, order_status};
use crate::schema::{instances, orders};

/// The order `id` if it is `account_id`'s, on a read connection.
pub(crate) async fn owned(db: &Db, account_id: &str, id: &str) -> Result<Option<Order>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| orders::table
        .filter(orders::id.eq(id))
        .filter(orders::account_id.eq(account_id))
        .select(Order::as_select())
        .first(c)
        .await
        .optional())?)
}

/// The order `account_id` placed with the idempotency key `key`, on the writer's connection.
pub(crate) async fn by_key(db: &Db, account_id: &str, key: &str) -> Result<Option<Order>> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| orders::table
        .filter(orders::account_id.eq(account_id))
        .filter(orders::idempotency_key.eq(key))
        .select(Order::as_select())
        .first(c)
        .await
        .optional())?)
}

/// Marks the order FAILED with `reason`, if it is still pending.
pub(crate) async fn fail_pending(
    db: &Db,
    id: &str,
    reason: &str,
    now: NaiveDateTime,
) -> Result<()> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| diesel::update(
        orders::table
            .filter(orders::id.eq(id))
            .filter(orders::status.eq(order_status::PENDING))
    )
    .set((
        orders::status.eq(order_status::FAILED),
        orders::failure_reason.eq(reason),
        orders::updated_at.eq(now),
    ))
    .execute(c)
    .await)?;
    Ok(())
}

/// A page of `account_id`'s orders, newest first: at most `limit` after `cursor`, keyset on
/// the (account_id, created_at, id) index.
pub(crate) async fn list_owned(
    db: &Db,
    account_id: &str,
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<Order>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| {
        let mut q = orders::table
            .filter(orders::account_id.eq(account_id.to_string()))
            .order((orders::created_at.desc(), orders::id.desc()))
            .limit(limit)
            .select(Order::as_select())
            .into_boxed();
        if let Some(cur) = cursor {
            q = q.filter(
                orders::created_at.lt(cur.at).or(orders::created_at
                    .eq(cur.at)
                    .and(orders::id.lt(cur.id.clone()))),
            );
        }
        q.load(c).await
    })?)
}

/// Pending orders not updated since `before`, oldest first, at most `limit`.
pub(crate) async fn pending_before(
    db: &Db,
    before: NaiveDateTime,
    limit: i64,
) -> Result<Vec<Order>> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| orders::table
        .filter(orders::status.eq(order_status::PENDING))
        .filter(orders::updated_at.lt(before))
        .order(orders::created_at.asc())
        .limit(limit)
        .select(Order::as_select())
        .load(c)
        .await)?)
}

/// The hostnames of `account_id`'s instances of `app_id` (deleted ones too), on the writer's
/// connection.
pub(crate) async fn instance_hostnames(
    db: &Db,
    account_id: &str,
    app_id: &str,
) -> Result<Vec<String>> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .filter(instances::account_id.eq(account_id))
        .filter(instances::app_id.eq(app_id))
        .select(instances::hostname)
        .load(c)
        .await)?)
}

/// Creates the order's instance `fresh` (unless an instance with its id exists) and completes
/// the pending order `order_id` with `subscription_id`, in one transaction. Returns the
/// instance (the existing one, if any) and whether this call completed the order. A unique
/// violation (another request took the hostname) is returned as it is, for the caller to pick
/// another.
pub(crate) async fn complete(
    db: &Db,
    order_id: &str,
    fresh: &Instance,
    subscription_id: &str,
    now: NaiveDateTime,
) -> std::result::Result<(Instance, bool), DbError> {
    let mut conn = db.get().await?;
    kapal::db!(&mut conn, |c| c
        .transaction(async |c| {
            let instance = match instances::table
                .find(&fresh.id)
                .select(Instance::as_select())
                .first(c)
                .await
                .optional()?
            {
                Some(instance) => instance,
                None => {
                    diesel::insert_into(instances::table)
                        .values(fresh)
                        .execute(c)
                        .await?;
                    fresh.clone()
                }
            };
            let completed = diesel::update(
                orders::table
                    .find(order_id)
                    .filter(orders::status.eq(order_status::PENDING)),
            )
            .set((
                orders::status.eq(order_status::COMPLETED),
                orders::subscription_id.eq(subscription_id),
                orders::updated_at.eq(now),
            ))
            .execute(c)
            .await?;
            Ok((instance, completed == 1))
        })
        .await)
}

/// What placing a new order did.
pub(crate) enum Placed {
    Inserted,
    /// Another request placed an order with the same key first.
    Existing(Box<Order>),
    /// No room in the cluster; nothing was written.
    Refused(String),
    /// The account has had this app's free trial (one per account and app).
    TrialUsed,
    /// The account holds as many live instances (and pending orders) as it may.
    TooMany(i64),
}

/// What one account may order, checked with the capacity in the same transaction.
pub(crate) struct AccountLimits {
    /// The app's trial plans when the plan ordered is one (else empty: no trial check).
    pub trial_plans: Vec<String>,
    /// Live (not deleted) instances plus pending orders one account may hold.
    pub max_live: i64,
}

/// Places the order `new` in one transaction, serialized with other checkouts and with starts
/// of stopped instances (an advisory lock on PostgreSQL, the single writer on SQLite): an order
/// with the same key answers as [`Placed::Existing`]; then the account's trial and live
/// instance limits; then `check` on Kapal's commitments (the rows of [`commitment_rows`],
/// which count the orders being completed; `Err(message)`: refused); then the insert. A unique
/// violation of a concurrent insert of the same key is returned as it is.
pub(crate) async fn place(
    db: &Db,
    new: &Order,
    limits: &AccountLimits,
    check: Option<&Check<'_>>,
) -> std::result::Result<Placed, DbError> {
    macro_rules! check_and_insert {
        ($c:ident) => {{
            if let Some(existing) = orders::table
                .filter(orders::account_id.eq(&new.account_id))
                .filter(orders::idempotency_key.eq(&new.idempotency_key))
                .select(Order::as_select())
                .first($c)
                .await
                .optional()?
            {
                return Ok(Placed::Existing(Box::new(existing)));
            }
            if !limits.trial_plans.is_empty() {
                let trials: i64 = orders::table
                    .filter(orders::account_id.eq(&new.account_id))
                    .filter(orders::app_id.eq(&new.app_id))
                    .filter(orders::plan_id.eq_any(&limits.trial_plans))
                    .filter(orders::status.ne(order_status::FAILED))
                    .count()
                    .get_result($c)
                    .await?;
                if trials > 0 {
                    return Ok(Placed::TrialUsed);
                }
            }
            let live: i64 = instances::table
                .filter(instances::account_id.eq(&new.account_id))
                .filter(instances::desired_state.ne(instance_state::DELETED))
                .count()
                .get_result($c)
                .await?;
            let pending: i64 = orders::table
                .filter(orders::account_id.eq(&new.account_id))
                .filter(orders::status.eq(order_status::PENDING))
                .count()
                .get_result($c)
                .await?;
            if live + pending >= limits.max_live {
                return Ok(Placed::TooMany(live + pending));
            }
            if let Some(check) = check {
                let rows = commitment_rows!($c);
                if let Err(message) = check(&rows) {
                    return Ok(Placed::Refused(message));
                }
            }
            diesel::insert_into(orders::table)
                .values(new)
                .execute($c)
                .await?;
            Ok(Placed::Inserted)
        }};
    }
    let mut conn = db.get().await?;
    match &mut conn {
        DbConn::Postgres(c) => {
            c.transaction(async |c| {
                diesel::sql_query(format!("SELECT pg_advisory_xact_lock({CHECKOUT_LOCK_KEY})"))
                    .execute(c)
                    .await?;
                check_and_insert!(c)
            })
            .await
        }
        DbConn::Sqlite(c) => c.transaction(async |c| check_and_insert!(c)).await,
    }
}
