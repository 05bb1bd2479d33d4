//! Delivery of the entitlement outbox to the control-plane.
//!
//! The scheduler writes every change of what an instance may do (`entitlement_outbox`), with the
//! plan the subscription pays for from then on, in the same transaction as the status change. [`Delivery`] sends those rows to the control-plane's
//! `kapal.internal.v1.EntitlementService/SetEntitlement`, signed as a service, with the row's
//! id as the `sequence`, until the control-plane answers:
//!
//! - answered (applied or not: a lower sequence than the one applied is acknowledged and
//!   ignored there) → `delivered_at` is set;
//! - NOT_FOUND (the control-plane does not know the instance) → marked delivered all the same,
//!   with a warning: retrying cannot help;
//! - any other error → `attempts` + 1 and the row waits ([`backoff`]: 1 s, 2 s, 4 s, … at most
//!   a minute) before it is sent again.
//!
//! ## Order
//!
//! Rows of one instance are delivered strictly in id order: only the oldest undelivered row of
//! an instance is ever sent, so a row waiting for its back-off holds back the later rows of
//! the same instance, never those of other instances. The instances' heads are sent
//! concurrently.
//!
//! ## Several replicas
//!
//! Before sending a row a replica takes its lease (`lease_until`, a compare-and-set like the
//! scheduler's), so two replicas do not send the same row at the same time. Double delivery
//! (a replica that died after sending, before recording) is harmless: the control-plane is
//! idempotent on the sequence.

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDateTime, SubsecRound as _};
use diesel::{
    BoolExpressionMethods as _, ExpressionMethods as _, QueryDsl as _, Queryable, Selectable,
    SelectableHelper as _,
};
use diesel_async::RunQueryDsl as _;
use futures::StreamExt as _;
use kapal::auth::InternalKey;
use kapal::clock::SharedClock;
use kapal::db::Db;
use kapal::proto::internal::v1 as internal;
use kapal::proto::internal::v1::entitlement_service_client::EntitlementServiceClient;
use kapal::serve::InternalChannel;
use tokio::sync::Notify;

use crate::error::Error;
use crate::lifecycle::Entitlement;
use crate::schema::entitlement_outbox;

/// How long a replica may hold a row it is sending.
const LEASE: chrono::Duration = chrono::Duration::seconds(30);
/// How long a call to the control-plane may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the loop looks for undelivered rows when nobody wakes it.
pub const POLL_EVERY: Duration = Duration::from_secs(5);
/// Rows (instances' heads) read per query.
const BATCH: i64 = 500;
/// Calls in flight at once.
const CONCURRENCY: usize = 16;

/// How long a row waits after its `attempts`-th failed delivery: 1 s doubling, at most 60 s.
pub fn backoff(attempts: i32) -> chrono::Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(6);
    chrono::Duration::seconds((1i64 << exp).min(60))
}

/// What one [`Delivery::deliver_pending`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Acknowledged by the control-plane.
    pub delivered: usize,
    /// Unknown to the control-plane (marked delivered).
    pub not_found: usize,
    /// Failed; retried after their back-off.
    pub failed: usize,
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = entitlement_outbox)]
struct OutboxRow {
    id: i64,
    subscription_id: String,
    instance_id: String,
    entitlement: String,
    at: NaiveDateTime,
    attempts: i32,
    lease_until: Option<NaiveDateTime>,
    cause: Option<String>,
    plan_id: Option<String>,
}

/// Sends the outbox to the control-plane. Cheap to clone.
#[derive(Clone)]
pub struct Delivery(Arc<Inner>);

struct Inner {
    db: Db,
    clock: SharedClock,
    client: EntitlementServiceClient<InternalChannel>,
}

/// How an attempt ended.
enum Outcome {
    Delivered,
    NotFound,
    Failed(String),
}

impl Delivery {
    /// Delivery to the control-plane at `endpoint` (`http://host:port`), signing as a service
    /// with `key`. Connects lazily.
    pub fn new(
        db: Db,
        clock: SharedClock,
        control_plane: impl Into<kapal::serve::Upstream>,
        key: &InternalKey,
    ) -> anyhow::Result<Delivery> {
        Delivery::with_deadline(
            db,
            clock,
            control_plane,
            key,
            kapal::serve::DEFAULT_INTERNAL_DEADLINE,
        )
    }

    /// Like [`Delivery::new`], each delivery ending with DEADLINE_EXCEEDED (and retried)
    /// after `deadline`.
    pub fn with_deadline(
        db: Db,
        clock: SharedClock,
        control_plane: impl Into<kapal::serve::Upstream>,
        key: &InternalKey,
        deadline: std::time::Duration,
    ) -> anyhow::Result<Delivery> {
        let channel = control_plane
            .into()
            .internal_channel_with_deadline(key, deadline)?;
        Ok(Delivery(Arc::new(Inner {
            db,
            clock,
            client: EntitlementServiceClient::new(channel),
        })))
    }

    fn now(&self) -> NaiveDateTime {
        self.0.clock.now().naive_utc().trunc_subsecs(6)
    }

    /// Delivers every undelivered row that may be sent now, in order per instance, until none
    /// is left (rows that failed wait for their back-off, and hold back their instance).
    pub async fn deliver_pending(&self) -> Result<DeliveryReport, Error> {
        let mut report = DeliveryReport::default();
        // Failed rows are not ready again before their back-off, so this ends.
        loop {
            let heads = self.ready_heads(self.now()).await?;
            if heads.is_empty() {
                return Ok(report);
            }
            let outcomes: Vec<Result<Option<Outcome>, Error>> = futures::stream::iter(heads)
                .map(|row| self.deliver(row))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            let mut progress = false;
            for outcome in outcomes {
                match outcome? {
                    Some(Outcome::Delivered) => {
                        progress = true;
                        report.delivered += 1;
                    }
                    Some(Outcome::NotFound) => {
                        progress = true;
                        report.not_found += 1;
                    }
                    Some(Outcome::Failed(_)) => report.failed += 1,
                    // Another replica holds it.
                    None => {}
                }
            }
            if !progress {
                return Ok(report);
            }
        }
    }

    /// The oldest undelivered row of every instance, when it may be sent at `now` (not waiting
    /// for a back-off, not leased by another replica), oldest first.
    async fn ready_heads(&self, now: NaiveDateTime) -> Result<Vec<OutboxRow>, Error> {
        let earlier = diesel::alias!(entitlement_outbox as earlier);
        let mut conn = self.0.db.get().await?;
        let rows = kapal::db!(&mut conn, |c| {
            entitlement_outbox::table
                .filter(entitlement_outbox::delivered_at.is_null())
                .filter(
                    entitlement_outbox::next_attempt_at
                        .is_null()
                        .or(entitlement_outbox::next_attempt_at.le(now)),
                )
                .filter(
                    entitlement_outbox::lease_until
                        .is_null()
                        .or(entitlement_outbox::lease_until.lt(now)),
                )
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    earlier
                        .filter(
                            earlier
                                .field(entitlement_outbox::instance_id)
                                .eq(entitlement_outbox::instance_id),
                        )
                        .filter(earlier.field(entitlement_outbox::delivered_at).is_null())
                        .filter(
                            earlier
                                .field(entitlement_outbox::id)
                                .lt(entitlement_outbox::id),
                        )
                        .select(earlier.field(entitlement_outbox::id)),
                )))
                .order(entitlement_outbox::id.asc())
                .limit(BATCH)
                .select(OutboxRow::as_select())
                .load(c)
                .await
        })?;
        Ok(rows)
    }

    /// Leases, sends and records one row. `None` when another replica took it first.
    async fn deliver(&self, row: OutboxRow) -> Result<Option<Outcome>, Error> {
        let now = self.now();
        let until = now + LEASE;
        {
            let mut conn = self.0.db.get().await?;
            let claimed = kapal::db!(&mut conn, |c| {
                let target = entitlement_outbox::table
                    .find(row.id)
                    .filter(entitlement_outbox::delivered_at.is_null());
                match row.lease_until {
                    None => {
                        diesel::update(target.filter(entitlement_outbox::lease_until.is_null()))
                            .set(entitlement_outbox::lease_until.eq(Some(until)))
                            .execute(c)
                            .await
                    }
                    Some(seen) => {
                        diesel::update(target.filter(entitlement_outbox::lease_until.eq(seen)))
                            .set(entitlement_outbox::lease_until.eq(Some(until)))
                            .execute(c)
                            .await
                    }
                }
            })?;
            if claimed != 1 {
                return Ok(None);
            }
        }
        let outcome = self.send(&row).await;
        let now = self.now();
        let mut conn = self.0.db.get().await?;
        match &outcome {
            Outcome::Delivered | Outcome::NotFound => {
                kapal::db!(&mut conn, |c| {
                    diesel::update(entitlement_outbox::table.find(row.id))
                        .set((
                            entitlement_outbox::delivered_at.eq(Some(now)),
                            entitlement_outbox::attempts.eq(entitlement_outbox::attempts + 1),
                            entitlement_outbox::lease_until.eq(None::<NaiveDateTime>),
                        ))
                        .execute(c)
                        .await
                })?;
            }
            Outcome::Failed(error) => {
                let attempts = row.attempts.saturating_add(1);
                let next = now + backoff(attempts);
                kapal::db!(&mut conn, |c| {
                    diesel::update(
                        entitlement_outbox::table
                            .find(row.id)
                            .filter(entitlement_outbox::lease_until.eq(Some(until))),
                    )
                    .set((
                        entitlement_outbox::attempts.eq(attempts),
                        entitlement_outbox::next_attempt_at.eq(Some(next)),
                        entitlement_outbox::last_error.eq(Some(error.as_str())),
                        entitlement_outbox::lease_until.eq(None::<NaiveDateTime>),
                    ))
                    .execute(c)
                    .await
                })?;
            }
        }
        Ok(Some(outcome))
    }

    /// One SetEntitlement call; no database connection is held meanwhile.
    async fn send(&self, row: &OutboxRow) -> Outcome {
        let Some(entitlement) = Entitlement::parse(&row.entitlement) else {
            return Outcome::Failed(format!("unknown entitlement {:?}", row.entitlement));
        };
        let request = internal::SetEntitlementRequest {
            instance_id: row.instance_id.clone(),
            subscription_id: row.subscription_id.clone(),
            entitlement: entitlement.to_proto().into(),
            sequence: row.id,
            at: Some(kapal::wire::timestamp(row.at)),
            cause: row
                .cause
                .clone()
                .unwrap_or_else(|| cause(entitlement).to_string()),
            plan_id: row.plan_id.clone().unwrap_or_default(),
        };
        let mut client = self.0.client.clone();
        match tokio::time::timeout(CALL_TIMEOUT, client.set_entitlement(request)).await {
            Ok(Ok(_)) => Outcome::Delivered,
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                tracing::warn!(
                    instance = %row.instance_id,
                    subscription = %row.subscription_id,
                    sequence = row.id,
                    message = status.message(),
                    "the control-plane does not know the instance; entitlement change dropped"
                );
                Outcome::NotFound
            }
            Ok(Err(status)) => {
                tracing::warn!(
                    instance = %row.instance_id,
                    sequence = row.id,
                    attempts = row.attempts + 1,
                    code = ?status.code(),
                    message = status.message(),
                    "entitlement change not delivered; retrying later"
                );
                Outcome::Failed(format!("{:?}: {}", status.code(), status.message()))
            }
            Err(_) => Outcome::Failed(format!("no answer within {}s", CALL_TIMEOUT.as_secs())),
        }
    }

    /// Delivers whenever `wake` is notified (the scheduler wrote rows) and every
    /// [`POLL_EVERY`] otherwise, until `shutdown` completes.
    pub async fn run(self, wake: Arc<Notify>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            match self.deliver_pending().await {
                Ok(report) if report != DeliveryReport::default() => {
                    tracing::info!(?report, "entitlement changes delivered");
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "entitlement delivery failed"),
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }
}

/// The cause sent with a change recorded without one.
fn cause(entitlement: Entitlement) -> &'static str {
    match entitlement {
        Entitlement::Active => "the subscription is paid up: the instance may run",
        Entitlement::Suspended => {
            "the subscription is suspended or ended: the instance is scaled to zero, its data kept"
        }
        Entitlement::Expired => {
            "the subscription ended and its retention is over: the instance is deleted"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let secs: Vec<i64> = (1..=9).map(|a| backoff(a).num_seconds()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0).num_seconds(), 1);
    }
}
