//! Billing's figures for Prometheus (served by [`kapal::metrics`]): subscriptions by status,
//! monthly recurring revenue, the entitlement outbox's backlog and the age of its oldest
//! undelivered change, and how far the renewal scheduler is behind. Read when `/metrics` is
//! scraped. Webhook failures are a counter the notifier increments
//! (`kapal_webhook_failures_total`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use chrono::NaiveDateTime;
use diesel::dsl::{count_star, min, sql};
use diesel::sql_types::BigInt;
use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use kapal::clock::SharedClock;
use kapal::db::Db;
use metrics::gauge;

use crate::lifecycle::SubscriptionStatus as S;
use crate::schema::{entitlement_outbox, subscription_schedule, subscriptions};

/// Registers billing's collector for as long as the guard lives.
pub(crate) fn register(db: Db, clock: SharedClock) -> kapal::metrics::CollectorGuard {
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    kapal::metrics::register_collector("billing", move || {
        let (db, clock, seen) = (db.clone(), clock.clone(), seen.clone());
        async move {
            if let Err(e) = collect(&db, &clock, &seen).await {
                tracing::warn!(error = %e, "billing metrics not read this scrape");
            }
        }
    })
}

type Figures = (
    Vec<(String, i64)>,
    i64,
    i64,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
);

async fn collect(
    db: &Db,
    clock: &SharedClock,
    seen: &Mutex<BTreeSet<String>>,
) -> anyhow::Result<()> {
    let now = clock.now().naive_utc();
    let billed = [S::Active, S::PastDue].map(S::as_str);
    let mut conn = db.read().await?;
    let (by_status, mrr, backlog, oldest, next_due): Figures = kapal::db!(&mut conn, |c| {
        async {
            let by_status: Vec<(String, i64)> = subscriptions::table
                .group_by(subscriptions::status)
                .select((subscriptions::status, count_star()))
                .load(c)
                .await?;
            // MRR as the revenue report counts it: what renews, per month, of the billed ones
            let mrr: i64 = subscriptions::table
                .filter(subscriptions::status.eq_any(billed))
                .filter(subscriptions::auto_renew.eq(true))
                .filter(subscriptions::cancel_at_period_end.eq(false))
                .select(sql::<BigInt>(
                    "CAST(COALESCE(SUM(price_amount), 0) AS BIGINT)",
                ))
                .get_result(c)
                .await?;
            let pending =
                entitlement_outbox::table.filter(entitlement_outbox::delivered_at.is_null());
            let backlog: i64 = pending.count().get_result(c).await?;
            let oldest: Option<NaiveDateTime> = pending
                .select(min(entitlement_outbox::at))
                .get_result(c)
                .await?;
            // the earliest action the scheduler should have taken by now and has not
            let next_due: Option<NaiveDateTime> = subscription_schedule::table
                .filter(subscription_schedule::next_action_at.le(now))
                .select(min(subscription_schedule::next_action_at))
                .get_result(c)
                .await?;
            Ok::<_, diesel::result::Error>((by_status, mrr, backlog, oldest, next_due))
        }
        .await
    })?;
    drop(conn);
    let current: BTreeSet<String> = by_status.iter().map(|(s, _)| s.clone()).collect();
    for (status, n) in by_status {
        gauge!("kapal_subscriptions", "status" => status).set(n as f64);
    }
    if let Ok(mut seen) = seen.lock() {
        for gone in seen.difference(&current) {
            gauge!("kapal_subscriptions", "status" => gone.clone()).set(0.0);
        }
        seen.extend(current);
    }
    gauge!("kapal_mrr_idr").set(mrr as f64);
    gauge!("kapal_entitlement_outbox_backlog").set(backlog as f64);
    let age = |t: Option<NaiveDateTime>| {
        t.map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    gauge!("kapal_entitlement_outbox_oldest_age_seconds").set(age(oldest));
    gauge!("kapal_scheduler_lag_seconds").set(age(next_due));
    Ok(())
}
