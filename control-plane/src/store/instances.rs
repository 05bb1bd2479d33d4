//! The `instances` table: every query on it, for the handlers of InstanceService, AdminService,
//! OperatorService, EntitlementService and InstanceStateService and for the background jobs
//! (change poller, metrics, alerts). Writes that must read what they change run in one
//! transaction here; the rules deciding what to write stay with the callers (passed in as
//! values or closures).

use chrono::NaiveDateTime;
use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use kapal::db::{Db, DbConn, DbError};
use kapal::paging::Cursor;

use super::{CHECKOUT_LOCK_KEY, Check};
use crate::error::Result;
use crate::models::{Account, Instance, InstanceEvent, entitlement, instance_state};
use crate::schema::{accounts, instance_events, instances};

/// The owner of an instance, as operators see it: customer id and email.
pub(crate) type Owner = (String, String);

/// The instance `id`, on a read connection.
pub(crate) async fn get(db: &Db, id: &str) -> Result<Option<Instance>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .find(id)
        .select(Instance::as_select())
        .first(c)
        .await
        .optional())?)
}

/// The instance `id` if it is `account_id`'s, on a read connection.
pub(crate) async fn owned(db: &Db, account_id: &str, id: &str) -> Result<Option<Instance>> {
    let mut conn = db.read().await?;
    owned_on(&mut conn, account_id, id).await
}

/// [`owned`] on a given connection (the writer's, to read what is about to be changed).
pub(crate) async fn owned_on(
    conn: &mut DbConn<'_>,
    account_id: &str,
    id: &str,
) -> Result<Option<Instance>> {
    Ok(kapal::db!(conn, |c| instances::table
        .filter(instances::id.eq(id))
        .filter(instances::account_id.eq(account_id))
        .select(Instance::as_select())
        .first(c)
        .await
        .optional())?)
}

/// Whether `id` is an instance of `account_id` (its id), on a read connection.
pub(crate) async fn owned_id(db: &Db, account_id: &str, id: &str) -> Result<Option<String>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .filter(instances::id.eq(id))
        .filter(instances::account_id.eq(account_id))
        .select(instances::id)
        .first(c)
        .await
        .optional())?)
}

/// The instance `id` with its owner's customer id, on the writer's connection (read right
/// before a push, so the newest state goes out).
pub(crate) async fn with_customer(db: &Db, id: &str) -> Result<Option<(Instance, String)>> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .inner_join(accounts::table)
        .filter(instances::id.eq(id))
        .select((Instance::as_select(), accounts::customer_id))
        .first::<(Instance, String)>(c)
        .await
        .optional())?)
}

/// The instance `id` with its owner's customer id and email.
pub(crate) async fn with_owner(db: &Db, id: &str) -> Result<Option<(Instance, Owner)>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .inner_join(accounts::table)
        .filter(instances::id.eq(id))
        .select((
            Instance::as_select(),
            (accounts::customer_id, accounts::email)
        ))
        .first(c)
        .await
        .optional())?)
}

/// The instance `id`'s owner: its account id and customer id.
pub(crate) async fn owner_ids(db: &Db, id: &str) -> Result<Option<(String, String)>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .inner_join(accounts::table)
        .filter(instances::id.eq(id))
        .select((instances::account_id, accounts::customer_id))
        .first(c)
        .await
        .optional())?)
}

/// A page of `account_id`'s instances, newest first: at most `limit` after `cursor`, keyset
/// on the (account_id, created_at, id) index.
pub(crate) async fn list_owned(
    db: &Db,
    account_id: &str,
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<Instance>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| {
        let mut q = instances::table
            .filter(instances::account_id.eq(account_id.to_string()))
            .order((instances::created_at.desc(), instances::id.desc()))
            .limit(limit)
            .select(Instance::as_select())
            .into_boxed();
        if let Some(cur) = cursor {
            q = q.filter(
                instances::created_at.lt(cur.at).or(instances::created_at
                    .eq(cur.at)
                    .and(instances::id.lt(cur.id.clone()))),
            );
        }
        q.load(c).await
    })?)
}

/// What operators filter every instance by (`None`: no filter).
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub status: Option<&'static str>,
    pub app_id: Option<String>,
    pub account_id: Option<String>,
}

/// A page of every instance with its owner, newest first, filtered.
pub(crate) async fn list_all(
    db: &Db,
    filter: &Filter,
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<(Instance, Owner)>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| {
        let mut q = instances::table
            .inner_join(accounts::table)
            .select((
                Instance::as_select(),
                (accounts::customer_id, accounts::email),
            ))
            .order((instances::created_at.desc(), instances::id.desc()))
            .limit(limit)
            .into_boxed();
        if let Some(s) = filter.status {
            q = q.filter(instances::status.eq(s));
        }
        if let Some(a) = &filter.app_id {
            q = q.filter(instances::app_id.eq(a.clone()));
        }
        if let Some(a) = &filter.account_id {
            q = q.filter(instances::account_id.eq(a.clone()));
        }
        if let Some(cur) = cursor {
            q = q.filter(
                instances::created_at.lt(cur.at).or(instances::created_at
                    .eq(cur.at)
                    .and(instances::id.lt(cur.id.clone()))),
            );
        }
        q.load(c).await
    })?)
}

/// Instances not deleted whose status is one of `statuses`, least recently updated first, at
/// most `limit`, with their owner's customer id.
pub(crate) async fn in_status(
    db: &Db,
    statuses: &[&str],
    limit: i64,
) -> Result<Vec<(Instance, String)>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .inner_join(accounts::table)
        .filter(instances::status.eq_any(statuses))
        .filter(instances::desired_state.ne(instance_state::DELETED))
        .order(instances::updated_at.asc())
        .limit(limit)
        .select((Instance::as_select(), accounts::customer_id))
        .load(c)
        .await)?)
}

/// The ids of `account_id`'s instances meant to run (not expired), oldest first.
pub(crate) async fn running_ids(db: &Db, account_id: &str) -> Result<Vec<String>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .filter(instances::account_id.eq(account_id))
        .filter(instances::desired_state.eq(instance_state::RUNNING))
        .filter(instances::entitlement.ne(entitlement::EXPIRED))
        .order(instances::created_at.asc())
        .select(instances::id)
        .load(c)
        .await)?)
}

/// Every instance the provisioner must keep, with its owner: those meant to run or be
/// stopped, deleted ones not yet reported gone, and deleted ones whose data is still kept at
/// `now`; in the order of their ids, those after `after`, at most `limit`.
pub(crate) async fn desired(
    db: &Db,
    now: NaiveDateTime,
    after: &str,
    limit: i64,
) -> Result<Vec<(Instance, Account)>> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .inner_join(accounts::table)
        .filter(instances::id.gt(after))
        .filter(
            instances::status
                .ne("deleted")
                .nullable()
                .or(instances::data_deleted_after.gt(now))
                .or(instances::desired_state
                    .ne(instance_state::DELETED)
                    .and(instances::entitlement.ne(entitlement::EXPIRED))
                    .nullable())
        )
        .select((Instance::as_select(), Account::as_select()))
        .order(instances::id.asc())
        .limit(limit)
        .load(c)
        .await)?)
}

/// How many instances there are per (app, status).
pub(crate) async fn count_by_app_and_status(db: &Db) -> Result<Vec<(String, String, i64)>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .group_by((instances::app_id, instances::status))
        .select((instances::app_id, instances::status, count_star()))
        .load(c)
        .await)?)
}

/// The newest `updated_at` of any instance.
pub(crate) async fn newest_update(db: &Db) -> Result<Option<NaiveDateTime>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .select(diesel::dsl::max(instances::updated_at))
        .first::<Option<NaiveDateTime>>(c)
        .await)?)
}

/// `(id, updated_at)` of the instances updated after `since`, oldest change first.
pub(crate) async fn updated_after(
    db: &Db,
    since: NaiveDateTime,
) -> Result<Vec<(String, NaiveDateTime)>> {
    let mut conn = db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .filter(instances::updated_at.gt(since))
        .order(instances::updated_at.asc())
        .select((instances::id, instances::updated_at))
        .load(c)
        .await)?)
}

/// A change of the customer's desired state (see `crate::lifecycle::act`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum DesiredChange {
    /// One restart more.
    Restart,
    /// DELETED, the data kept until the time given.
    Delete { data_deleted_after: NaiveDateTime },
    /// STOPPED or RUNNING (the text value).
    Set(&'static str),
}

/// Applies `change` to the instance `id` of `account_id` unless its subscription expired
/// (meanwhile): the number of rows changed (0 or 1).
pub(crate) async fn change_desired(
    conn: &mut DbConn<'_>,
    (id, account_id): (&str, &str),
    change: DesiredChange,
    now: NaiveDateTime,
) -> Result<usize> {
    let target = instances::table
        .filter(instances::id.eq(id))
        .filter(instances::account_id.eq(account_id))
        .filter(instances::entitlement.ne(entitlement::EXPIRED));
    Ok(match change {
        DesiredChange::Restart => kapal::db!(conn, |c| diesel::update(target)
            .set((
                instances::restart_generation.eq(instances::restart_generation + 1),
                instances::updated_at.eq(now)
            ))
            .execute(c)
            .await)?,
        DesiredChange::Delete { data_deleted_after } => {
            kapal::db!(conn, |c| diesel::update(target)
                .set((
                    instances::desired_state.eq(instance_state::DELETED),
                    instances::data_deleted_after.eq(data_deleted_after),
                    instances::updated_at.eq(now)
                ))
                .execute(c)
                .await)?
        }
        DesiredChange::Set(desired) => kapal::db!(conn, |c| diesel::update(target)
            .set((
                instances::desired_state.eq(desired),
                instances::updated_at.eq(now)
            ))
            .execute(c)
            .await)?,
    })
}

/// Sets a stopped instance running if `check` (when given) accepts Kapal's commitments (the
/// rows of [`commitment_rows`]), serialized with checkouts (the same advisory lock on PostgreSQL, the
/// single writer on SQLite) so a start and a checkout cannot together overshoot. An instance
/// whose subscription expired meanwhile is not changed. `Ok(Err(message))`: refused by
/// `check`, nothing changed; `Ok(Ok(n))`: rows changed.
pub(crate) async fn start_checked(
    conn: &mut DbConn<'_>,
    (id, account_id): (&str, &str),
    now: NaiveDateTime,
    check: Option<&Check<'_>>,
) -> Result<std::result::Result<usize, String>> {
    macro_rules! check_and_start {
        ($c:ident) => {{
            if let Some(check) = check {
                let rows = commitment_rows!($c);
                if let Err(message) = check(&rows) {
                    return Ok::<_, DbError>(Err(message));
                }
            }
            let target = instances::table
                .filter(instances::id.eq(id))
                .filter(instances::account_id.eq(account_id))
                .filter(instances::entitlement.ne(entitlement::EXPIRED));
            let n = diesel::update(target)
                .set((
                    instances::desired_state.eq(instance_state::RUNNING),
                    instances::updated_at.eq(now),
                ))
                .execute($c)
                .await?;
            Ok(Ok(n))
        }};
    }
    let result: std::result::Result<_, DbError> = match conn {
        DbConn::Postgres(c) => {
            c.transaction(async |c| {
                diesel::sql_query(format!("SELECT pg_advisory_xact_lock({CHECKOUT_LOCK_KEY})"))
                    .execute(c)
                    .await?;
                check_and_start!(c)
            })
            .await
        }
        DbConn::Sqlite(c) => c.transaction(async |c| check_and_start!(c)).await,
    };
    Ok(result?)
}

/// Rows `(app_id, plan_id, count)` of what Kapal has committed: instances that should run
/// (desired RUNNING and entitled by billing) and orders still being completed, each grouped by
/// app and plan. One statement, so one snapshot: an order completing meanwhile (pending order
/// replaced by its instance in one transaction) is counted exactly once. Expands to
/// diesel-async code on the connection `$c`; `?` converts to the enclosing function's error
/// (e.g. `DbError` inside a transaction).
macro_rules! commitment_rows {
    ($c:expr) => {{
        use diesel::dsl::count_star;
        use $crate::schema::{instances as ci, orders as co};
        let rows: Vec<(String, String, i64)> = ci::table
            .filter(ci::desired_state.eq($crate::models::instance_state::RUNNING))
            .filter(ci::entitlement.eq($crate::models::entitlement::ACTIVE))
            .group_by((ci::app_id, ci::plan_id))
            .select((ci::app_id, ci::plan_id, count_star()))
            .union_all(
                co::table
                    .filter(co::status.eq($crate::models::order_status::PENDING))
                    .group_by((co::app_id, co::plan_id))
                    .select((co::app_id, co::plan_id, count_star())),
            )
            .load($c)
            .await?;
        rows
    }};
}
pub(crate) use commitment_rows;

/// [`commitment_rows`] now (outside a checkout), on the writer's connection.
pub(crate) async fn commitments(db: &Db) -> Result<Vec<(String, String, i64)>> {
    let mut conn = db.get().await?;
    Ok(kapal::db!(&mut conn, |c| async {
        Ok::<_, DbError>(commitment_rows!(c))
    }
    .await)?)
}

/// A change of an instance's entitlement from billing, validated.
pub(crate) struct EntitlementChange<'a> {
    pub instance_id: &'a str,
    pub subscription_id: &'a str,
    pub value: &'static str,
    pub sequence: i64,
    pub at: NaiveDateTime,
    pub cause: &'a str,
}

/// What [`set_entitlement`] did.
pub(crate) enum EntitlementOutcome {
    NotFound,
    OtherSubscription(String),
    /// Stored now.
    Applied,
    /// The same change again (a redelivery): nothing to store.
    Repeated,
    /// A later change was applied already (or the instance expired): ignored.
    Stale,
}

/// Stores `change` if its sequence is higher than the one stored (and the instance has not
/// expired), in one transaction with what goes with it: an EXPIRED instance's data is due
/// `now`; `new_plan(row)` (`Some((plan_id, history reason))`) moves the instance to another
/// plan with an entry in its history; `history(row)` is the history entry of a changed
/// entitlement. Entries are by billing.
pub(crate) async fn set_entitlement<P, H>(
    db: &Db,
    change: &EntitlementChange<'_>,
    now: NaiveDateTime,
    new_plan: P,
    history: H,
) -> Result<EntitlementOutcome>
where
    P: Fn(&Instance) -> Option<(String, String)> + Sync,
    H: Fn(&Instance) -> String + Sync,
{
    let event = |row: &Instance, reason: String| InstanceEvent {
        id: uuid::Uuid::now_v7().to_string(),
        instance_id: change.instance_id.to_string(),
        status: row.status.clone(),
        reason,
        at: now,
        actor: crate::models::BILLING.into(),
    };
    let mut conn = db.get().await?;
    let outcome: std::result::Result<EntitlementOutcome, DbError> = kapal::db!(&mut conn, |c| c
        .transaction(async |c| {
            let Some(row) = instances::table
                .find(change.instance_id)
                .select(Instance::as_select())
                .first(c)
                .await
                .optional()?
            else {
                return Ok(EntitlementOutcome::NotFound);
            };
            if let Some(other) = row.subscription_id.as_ref()
                && *other != change.subscription_id
            {
                return Ok(EntitlementOutcome::OtherSubscription(other.clone()));
            }
            // The condition is what makes this race-safe: of two concurrent changes only a
            // higher sequence can still match after the other committed.
            let updated = diesel::update(
                instances::table
                    .find(change.instance_id)
                    .filter(instances::entitlement_sequence.lt(change.sequence))
                    .filter(instances::entitlement.ne(entitlement::EXPIRED)),
            )
            .set((
                instances::entitlement.eq(change.value),
                instances::entitlement_sequence.eq(change.sequence),
                instances::entitlement_cause.eq(change.cause),
                instances::entitlement_at.eq(change.at),
                instances::updated_at.eq(now),
            ))
            .execute(c)
            .await?;
            if updated == 0 {
                let repeated =
                    row.entitlement_sequence == change.sequence && row.entitlement == change.value;
                return Ok(if repeated {
                    EntitlementOutcome::Repeated
                } else {
                    EntitlementOutcome::Stale
                });
            }
            if change.value == entitlement::EXPIRED {
                // Billing kept the data through its retention already: it goes now.
                diesel::update(instances::table.find(change.instance_id))
                    .set(instances::data_deleted_after.eq(now))
                    .execute(c)
                    .await?;
            }
            if let Some((plan_id, reason)) = new_plan(&row) {
                diesel::update(instances::table.find(change.instance_id))
                    .set(instances::plan_id.eq(&plan_id))
                    .execute(c)
                    .await?;
                diesel::insert_into(instance_events::table)
                    .values(&event(&row, reason))
                    .execute(c)
                    .await?;
            }
            if change.value != row.entitlement {
                diesel::insert_into(instance_events::table)
                    .values(&event(&row, history(&row)))
                    .execute(c)
                    .await?;
            }
            Ok(EntitlementOutcome::Applied)
        })
        .await);
    Ok(outcome?)
}

/// A status the provisioner observed, validated.
pub(crate) struct ObservedStatus<'a> {
    pub instance_id: &'a str,
    /// The text value.
    pub status: &'static str,
    /// Whether it is READY.
    pub ready: bool,
    pub reason: &'a str,
    /// The report's sequence; 0: none (recorded as it comes).
    pub sequence: i64,
}

/// What [`record_status`] did.
pub(crate) enum Recorded {
    /// No such instance, a report older than the stored one, or the same status again.
    Unchanged,
    /// The status changed (and a history entry was written). `first_ready`: the instance is
    /// READY for the first time, with its app and when it was created.
    Changed {
        first_ready: Option<(String, NaiveDateTime)>,
    },
}

/// Records an observed status in one transaction: ignored when its sequence is not above the
/// stored one (a late report); only the sequence is stored when the status and reason are the
/// same; otherwise the instance's status (and `ready_at` the first time it is READY) changes
/// and its history gets an entry.
pub(crate) async fn record_status(
    db: &Db,
    observed: &ObservedStatus<'_>,
    now: NaiveDateTime,
) -> Result<Recorded> {
    let ObservedStatus {
        instance_id: id,
        status,
        ready,
        reason,
        sequence,
    } = *observed;
    let mut conn = db.get().await?;
    let recorded: std::result::Result<Recorded, DbError> = kapal::db!(&mut conn, |c| {
        c.transaction(async |c| {
            let Some((current, stored_sequence)) = instances::table
                .find(id)
                .select((Instance::as_select(), instances::status_sequence))
                .first::<(Instance, i64)>(c)
                .await
                .optional()?
            else {
                return Ok(Recorded::Unchanged);
            };
            if sequence != 0 && sequence <= stored_sequence {
                tracing::debug!(instance_id = %id, status, sequence, stored_sequence, "a report older than the stored one: ignored");
                return Ok(Recorded::Unchanged);
            }
            if current.status == status && current.status_reason == reason {
                if sequence != 0 {
                    diesel::update(instances::table.find(id))
                        .set(instances::status_sequence.eq(sequence))
                        .execute(c)
                        .await?;
                }
                return Ok(Recorded::Unchanged);
            }
            let (ready_at, first_ready) = match current.ready_at {
                None if ready => (Some(now), Some((current.app_id.clone(), current.created_at))),
                r => (r, None),
            };
            diesel::update(instances::table.find(id))
                .set((
                    instances::status.eq(status),
                    instances::status_reason.eq(reason),
                    instances::ready_at.eq(ready_at),
                    instances::updated_at.eq(now),
                    instances::status_sequence.eq(sequence.max(stored_sequence)),
                ))
                .execute(c)
                .await?;
            diesel::insert_into(instance_events::table)
                .values(&InstanceEvent {
                    id: uuid::Uuid::now_v7().to_string(),
                    instance_id: id.to_string(),
                    status: status.to_string(),
                    reason: reason.to_string(),
                    at: now,
                    actor: String::new(),
                })
                .execute(c)
                .await?;
            Ok(Recorded::Changed { first_ready })
        })
        .await
    });
    Ok(recorded?)
}
