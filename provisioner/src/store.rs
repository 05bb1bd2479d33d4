//! The provisioner's own table: the desired spec of every instance it was asked to converge (so a
//! restart resumes), whether it was READY since it last started, and what was last reported.

use chrono::NaiveDateTime;
use diesel::{
    ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, Queryable,
    Selectable, SelectableHelper as _,
};
use diesel_async::RunQueryDsl as _;
use kapal::db::{Db, DbError};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::spec::{Desired, Spec};

pub const MIGRATIONS_SQLITE: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");
pub const MIGRATIONS_POSTGRES: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");

pub fn migrations() -> kapal::db::Migrations {
    kapal::db::Migrations {
        postgres: MIGRATIONS_POSTGRES,
        sqlite: MIGRATIONS_SQLITE,
    }
}

diesel::table! {
    instances (instance_id) {
        instance_id -> Text,
        account_id -> Text,
        customer_id -> Text,
        app_id -> Text,
        plan_id -> Text,
        hostname -> Text,
        namespace -> Text,
        desired_state -> Integer,
        restart_generation -> BigInt,
        was_ready -> Bool,
        reported_status -> Nullable<Integer>,
        reported_reason -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        delete_data_after -> Nullable<Timestamp>,
        suspended_by_billing -> Bool,
        report_sequence -> BigInt,
        finished -> Bool,
    }
}

#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = instances)]
struct Row {
    instance_id: String,
    account_id: String,
    customer_id: String,
    app_id: String,
    plan_id: String,
    hostname: String,
    namespace: String,
    desired_state: i32,
    restart_generation: i64,
    was_ready: bool,
    reported_status: Option<i32>,
    reported_reason: Option<String>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    delete_data_after: Option<NaiveDateTime>,
    suspended_by_billing: bool,
    report_sequence: i64,
    finished: bool,
}

/// One instance as the provisioner knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub spec: Spec,
    pub was_ready: bool,
    /// `kapal.v1.InstanceStatus` and reason last reported to the control-plane.
    pub reported: Option<(i32, String)>,
    /// The sequence of the last report (0: none yet).
    pub report_sequence: i64,
    /// Reported DELETED with its data gone (see [`Store::set_reported`]).
    purged: bool,
    /// When the desired spec last changed.
    pub updated_at: NaiveDateTime,
}

impl Stored {
    /// Deleted with its data and reported so: nothing is left to converge. (An instance
    /// reported DELETED whose data is still kept is not finished: its data goes later.)
    pub fn is_finished(&self) -> bool {
        self.spec.desired == Desired::Deleted && self.purged
    }

    /// The sequence of the next report: above the last one, and at least the current time in
    /// microseconds, so a provisioner that lost its table (and counts afresh) still reports
    /// above what the control-plane recorded before.
    pub fn next_sequence(&self, now: NaiveDateTime) -> i64 {
        self.report_sequence
            .saturating_add(1)
            .max(now.and_utc().timestamp_micros())
    }
}

impl TryFrom<Row> for Stored {
    type Error = Error;

    fn try_from(row: Row) -> Result<Stored> {
        let uuid = |s: &str| {
            Uuid::parse_str(s)
                .map_err(|_| Error::Internal(format!("stored id {s:?} is not a UUID")))
        };
        Ok(Stored {
            spec: Spec {
                instance_id: uuid(&row.instance_id)?,
                account_id: uuid(&row.account_id)?,
                customer_id: row.customer_id,
                app_id: row.app_id,
                plan_id: row.plan_id,
                hostname: row.hostname,
                namespace: row.namespace,
                desired: Desired::from_wire(row.desired_state).ok_or_else(|| {
                    Error::Internal(format!(
                        "stored desired state {} is unknown",
                        row.desired_state
                    ))
                })?,
                restart_generation: u64::try_from(row.restart_generation).unwrap_or(0),
                delete_data_after: row.delete_data_after.map(|t| t.and_utc()),
                suspended_by_billing: row.suspended_by_billing,
            },
            was_ready: row.was_ready,
            reported: row
                .reported_status
                .map(|s| (s, row.reported_reason.unwrap_or_default())),
            report_sequence: row.report_sequence,
            purged: row.finished,
            updated_at: row.updated_at,
        })
    }
}

/// What [`Store::upsert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsert {
    Created,
    Changed,
    Unchanged,
    /// The stored spec changed after `unless_changed_since`: the offered one is older.
    Stale,
}

#[derive(Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    pub fn new(db: Db) -> Store {
        Store { db }
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Stored>> {
        let mut conn = self.db.get().await?;
        let id = id.to_string();
        let row: Option<Row> = kapal::db!(&mut conn, |c| instances::table
            .find(&id)
            .select(Row::as_select())
            .first(c)
            .await
            .optional())
        .map_err(DbError::from)?;
        row.map(Stored::try_from).transpose()
    }

    /// Every instance, oldest first.
    pub async fn list(&self) -> Result<Vec<Stored>> {
        let mut conn = self.db.get().await?;
        let rows: Vec<Row> = kapal::db!(&mut conn, |c| instances::table
            .order((instances::created_at.asc(), instances::instance_id.asc()))
            .select(Row::as_select())
            .load(c)
            .await)
        .map_err(DbError::from)?;
        rows.into_iter().map(Stored::try_from).collect()
    }

    /// Records `spec` as the desired state. A changed desired state or restart generation
    /// starts a new life (`was_ready` false). With `unless_changed_since`, a stored spec that
    /// changed at or after that time is kept (the offered spec is older than it). The caller
    /// holds the instance's lock.
    pub async fn upsert(
        &self,
        spec: &Spec,
        now: NaiveDateTime,
        unless_changed_since: Option<NaiveDateTime>,
    ) -> Result<Upsert> {
        let existing = self.get(spec.instance_id).await?;
        let mut conn = self.db.get().await?;
        let id = spec.instance_id.to_string();
        let Some(old) = existing else {
            let row = Row {
                instance_id: id,
                account_id: spec.account_id.to_string(),
                customer_id: spec.customer_id.clone(),
                app_id: spec.app_id.clone(),
                plan_id: spec.plan_id.clone(),
                hostname: spec.hostname.clone(),
                namespace: spec.namespace.clone(),
                desired_state: spec.desired.to_wire() as i32,
                restart_generation: i64::try_from(spec.restart_generation).unwrap_or(i64::MAX),
                was_ready: false,
                reported_status: None,
                reported_reason: None,
                created_at: now,
                updated_at: now,
                delete_data_after: spec.delete_data_after.map(|t| t.naive_utc()),
                suspended_by_billing: spec.suspended_by_billing,
                report_sequence: 0,
                finished: false,
            };
            let inserted = kapal::db!(&mut conn, |c| diesel::insert_into(instances::table)
                .values(&row)
                .execute(c)
                .await)
            .map_err(DbError::from);
            return match inserted {
                Ok(_) => Ok(Upsert::Created),
                Err(e) if e.is_unique_violation() => Err(Error::FailedPrecondition(format!(
                    "namespace {} is already used by another instance",
                    spec.namespace
                ))),
                Err(e) => Err(e.into()),
            };
        };
        if old.spec.namespace != spec.namespace {
            return Err(Error::FailedPrecondition(format!(
                "instance {} lives in namespace {}; its namespace cannot change",
                spec.instance_id, old.spec.namespace
            )));
        }
        if old.spec.app_id != spec.app_id {
            return Err(Error::FailedPrecondition(format!(
                "instance {} runs {}; its app cannot change",
                spec.instance_id, old.spec.app_id
            )));
        }
        if old.spec == *spec {
            return Ok(Upsert::Unchanged);
        }
        if unless_changed_since.is_some_and(|since| old.updated_at >= since) {
            return Ok(Upsert::Stale);
        }
        let new_life = old.spec.desired != spec.desired
            || old.spec.restart_generation != spec.restart_generation;
        let was_ready = old.was_ready && !new_life;
        kapal::db!(&mut conn, |c| diesel::update(instances::table.find(&id))
            .set((
                instances::account_id.eq(spec.account_id.to_string()),
                instances::customer_id.eq(&spec.customer_id),
                instances::plan_id.eq(&spec.plan_id),
                instances::hostname.eq(&spec.hostname),
                instances::desired_state.eq(spec.desired.to_wire() as i32),
                instances::restart_generation
                    .eq(i64::try_from(spec.restart_generation).unwrap_or(i64::MAX)),
                instances::was_ready.eq(was_ready),
                instances::updated_at.eq(now),
                instances::delete_data_after.eq(spec.delete_data_after.map(|t| t.naive_utc())),
                instances::suspended_by_billing.eq(spec.suspended_by_billing),
            ))
            .execute(c)
            .await)
        .map_err(DbError::from)?;
        Ok(Upsert::Changed)
    }

    /// Sets `was_ready` unless the spec changed since `spec_updated_at` (a new life began).
    pub async fn set_was_ready(
        &self,
        id: Uuid,
        was_ready: bool,
        spec_updated_at: NaiveDateTime,
    ) -> Result<()> {
        let mut conn = self.db.get().await?;
        let id = id.to_string();
        kapal::db!(&mut conn, |c| diesel::update(
            instances::table
                .find(&id)
                .filter(instances::updated_at.eq(spec_updated_at))
        )
        .set(instances::was_ready.eq(was_ready))
        .execute(c)
        .await)
        .map_err(DbError::from)?;
        Ok(())
    }

    /// Records the report with `sequence` as the last one told to the control-plane, unless a
    /// later one was recorded already. `purged`: the report says DELETED with the data gone.
    pub async fn set_reported(
        &self,
        id: Uuid,
        status: i32,
        reason: &str,
        sequence: i64,
        purged: bool,
    ) -> Result<()> {
        let mut conn = self.db.get().await?;
        let id = id.to_string();
        kapal::db!(&mut conn, |c| diesel::update(
            instances::table
                .find(&id)
                .filter(instances::report_sequence.lt(sequence))
        )
        .set((
            instances::reported_status.eq(Some(status)),
            instances::reported_reason.eq(Some(reason)),
            instances::report_sequence.eq(sequence),
            instances::finished.eq(purged),
        ))
        .execute(c)
        .await)
        .map_err(DbError::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapal::testing::{Backend, db_config};

    fn spec() -> Spec {
        Spec {
            instance_id: Uuid::new_v4(),
            account_id: Uuid::new_v4(),
            customer_id: "c1a2b3c4".into(),
            app_id: "n8n".into(),
            plan_id: "trial".into(),
            hostname: "c1a2b3c4.n8n.kapal.example".into(),
            namespace: format!("kapal-{}", &Uuid::new_v4().simple().to_string()[..8]),
            desired: Desired::Running,
            restart_generation: 0,
            delete_data_after: None,
            suspended_by_billing: false,
        }
    }

    fn at(secs: i64) -> NaiveDateTime {
        chrono::DateTime::from_timestamp(1_750_000_000 + secs, 0)
            .expect("time")
            .naive_utc()
    }

    async fn store(backend: Backend, dir: &std::path::Path) -> Store {
        let cfg = db_config(backend, dir).await.expect("db config");
        Store::new(
            Db::connect(&cfg, "provisioner", migrations())
                .await
                .expect("connect"),
        )
    }

    async fn round_trip(backend: Backend) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(backend, dir.path()).await;
        let mut s = spec();
        assert_eq!(store.get(s.instance_id).await.expect("get"), None);
        assert_eq!(
            store.upsert(&s, at(0), None).await.expect("insert"),
            Upsert::Created
        );
        assert_eq!(
            store.upsert(&s, at(1), None).await.expect("same"),
            Upsert::Unchanged
        );
        let got = store
            .get(s.instance_id)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(
            (
                got.spec.clone(),
                got.was_ready,
                got.reported.clone(),
                got.updated_at
            ),
            (s.clone(), false, None, at(0))
        );

        store
            .set_was_ready(s.instance_id, true, at(0))
            .await
            .expect("ready");
        store
            .set_reported(s.instance_id, 3, "The app is running.", 10, false)
            .await
            .expect("reported");
        // A plan change keeps the instance's life; a stop starts a new one.
        s.plan_id = "pro".into();
        assert_eq!(
            store.upsert(&s, at(2), None).await.expect("plan"),
            Upsert::Changed
        );
        let got = store
            .get(s.instance_id)
            .await
            .expect("get")
            .expect("stored");
        assert!(got.was_ready);
        let running = Some((3, "The app is running.".to_string()));
        assert_eq!(got.reported, running);
        // Told in any order: a report older than the one remembered is not remembered.
        let id = s.instance_id;
        let reported = |store: &Store| {
            let store = store.clone();
            async move { store.get(id).await.expect("get").expect("stored").reported }
        };
        store
            .set_reported(id, 5, "Stopped.", 9, false)
            .await
            .expect("older");
        assert_eq!(reported(&store).await, running);
        store
            .set_reported(id, 5, "Stopped.", 10, false)
            .await
            .expect("same sequence");
        assert_eq!(reported(&store).await, running);
        store
            .set_reported(id, 2, "Starting.", 11, false)
            .await
            .expect("newer");
        assert_eq!(reported(&store).await, Some((2, "Starting.".to_string())));
        let stored = store.get(id).await.expect("get").expect("stored");
        assert_eq!(stored.report_sequence, 11);
        // The next sequence is above the last, and above the clock's microseconds.
        assert_eq!(
            stored.next_sequence(at(0)),
            at(0).and_utc().timestamp_micros()
        );
        let far_ahead = Stored {
            report_sequence: i64::MAX - 1,
            ..stored.clone()
        };
        assert_eq!(far_ahead.next_sequence(at(0)), i64::MAX);
        store
            .set_reported(id, 3, "The app is running.", 12, false)
            .await
            .expect("running again");
        assert_eq!(reported(&store).await, running);
        s.desired = Desired::Stopped;
        store.upsert(&s, at(3), None).await.expect("stop");
        let got = store
            .get(s.instance_id)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(
            (got.spec.desired, got.was_ready, got.updated_at),
            (Desired::Stopped, false, at(3))
        );
        // An evaluation of the previous life does not mark the new one ready.
        store
            .set_was_ready(s.instance_id, true, at(2))
            .await
            .expect("stale ready");
        assert!(
            !store
                .get(s.instance_id)
                .await
                .expect("get")
                .expect("stored")
                .was_ready
        );

        // A listing older than the last change does not undo it.
        let mut old = s.clone();
        old.desired = Desired::Running;
        assert_eq!(
            store.upsert(&old, at(4), Some(at(3))).await.expect("stale"),
            Upsert::Stale
        );
        assert_eq!(
            store.upsert(&old, at(5), Some(at(4))).await.expect("newer"),
            Upsert::Changed
        );

        let mut moved = s.clone();
        moved.namespace = "elsewhere".into();
        assert!(matches!(
            store.upsert(&moved, at(6), None).await,
            Err(Error::FailedPrecondition(_))
        ));
        let mut other = spec();
        other.namespace = s.namespace.clone();
        assert!(matches!(
            store.upsert(&other, at(6), None).await,
            Err(Error::FailedPrecondition(_))
        ));

        s.desired = Desired::Deleted;
        s.delete_data_after = Some(at(100).and_utc());
        store.upsert(&s, at(7), None).await.expect("delete");
        let deleted = kapal::proto::v1::InstanceStatus::Deleted as i32;
        store
            .set_reported(
                s.instance_id,
                deleted,
                &crate::status::kept_reason(at(100).and_utc()),
                13,
                false,
            )
            .await
            .expect("reported");
        let list = store.list().await.expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].spec, s, "the retention round-trips");
        assert!(!list[0].is_finished(), "its data is still to be removed");
        store
            .set_reported(
                s.instance_id,
                deleted,
                crate::status::PURGED_REASON,
                14,
                true,
            )
            .await
            .expect("reported");
        assert!(store.list().await.expect("list")[0].is_finished());
        s.desired = Desired::Stopped;
        s.delete_data_after = None;
        s.suspended_by_billing = true;
        store.upsert(&s, at(8), None).await.expect("suspend");
        assert_eq!(
            store
                .get(s.instance_id)
                .await
                .expect("get")
                .expect("stored")
                .spec,
            s
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn specs_round_trip_on_sqlite() {
        round_trip(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn specs_round_trip_on_postgres() {
        round_trip(Backend::Postgres).await;
    }
}
