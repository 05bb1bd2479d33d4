//! `kapal.v1.BillingAdminService`: the operators' view of billing. Every call needs the admin
//! role (`auth::admin`: PERMISSION_DENIED for customers and services).
//!
//! ## The revenue report
//!
//! Computed with the injectable clock, aggregated in SQL (counts and sums per group, never a
//! row per invoice in memory), over `[from, to)`:
//!
//! - MRR now: the price of every ACTIVE or PAST_DUE subscription with auto-renew on and not
//!   cancelled (every period is a month), in total and per app, with the per-app counts of
//!   TRIALING, ACTIVE, PAST_DUE and SUSPENDED subscriptions.
//! - Trials ended: events leaving TRIALING inside the range; converted: those to ACTIVE (the
//!   paid plan was charged).
//! - Renewals due: paid periods (paid invoices with an amount, so not the Rp 0 trial period)
//!   that ended inside the range (and not after now); paid: those whose next period's invoice
//!   is paid (possibly after the range, e.g. within the grace period).
//! - Churned: paid subscriptions (ACTIVE, PAST_DUE or SUSPENDED) that ended (EXPIRED or
//!   CANCELED) inside the range; the rate is over the paid subscriptions that had started and
//!   not ended before `from`.
//! - Invoices per calendar month (UTC) by period start, clipped to the range: counts by status,
//!   invoiced (every invoice not void) and collected (paid, less the credit notes issued on
//!   them: `invoices.credited_amount`, shown as credited) sums; the totals are the sums of the
//!   months, which equal the sums over the invoices of the range.

use chrono::{Datelike as _, Months, NaiveDate, NaiveDateTime, NaiveTime, SubsecRound as _};
use diesel::dsl::{count_star, exists, not, sql};
use diesel::sql_types::BigInt;
use diesel::{
    BoolExpressionMethods as _, ExpressionMethods as _, OptionalExtension as _, QueryDsl as _,
    SelectableHelper as _,
};
use diesel_async::RunQueryDsl as _;
use kapal::auth;
use kapal::db::Db;
use kapal::paging;
use kapal::proto::v1 as pb;
use kapal::wire;
use tonic::{Request, Response, Status};

use crate::api::{Billing, events_to_proto, subscription_to_proto};
use crate::error::Error;
use crate::lifecycle::{InvoiceStatus, SubscriptionStatus};
use crate::schema::{invoices, subscription_events, subscription_schedule, subscriptions};
use crate::store::{self, SubscriptionRow};

/// The longest range a report may cover.
const MAX_MONTHS: u32 = 36;

/// `SUM(col)` as a BIGINT on both backends (0 when there are no rows).
fn sum_of(column: &'static str) -> diesel::expression::SqlLiteral<BigInt> {
    sql::<BigInt>(match column {
        "amount" => "CAST(COALESCE(SUM(amount), 0) AS BIGINT)",
        "credited" => "CAST(COALESCE(SUM(credited_amount), 0) AS BIGINT)",
        _ => "CAST(COALESCE(SUM(price_amount), 0) AS BIGINT)",
    })
}

fn month_start(t: NaiveDateTime) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(t.year(), t.month(), 1)
        .unwrap_or(t.date())
        .and_time(NaiveTime::MIN)
}

fn add_months(t: NaiveDateTime, n: u32) -> Result<NaiveDateTime, Error> {
    t.checked_add_months(Months::new(n))
        .ok_or_else(|| Error::InvalidArgument(format!("{t} is out of range")))
}

fn time_field(
    name: &str,
    t: Option<&prost_types::Timestamp>,
) -> Result<Option<NaiveDateTime>, Error> {
    t.map(|t| {
        wire::from_timestamp(t)
            .map(|t| t.naive_utc().trunc_subsecs(6))
            .ok_or_else(|| Error::InvalidArgument(format!("{name} is not a valid timestamp")))
    })
    .transpose()
}

/// The report's range from the request: `to` defaults to now, `from` to the first day of the
/// month two months before `to`'s month.
pub(crate) fn report_range(
    req: &pb::GetRevenueReportRequest,
    now: NaiveDateTime,
) -> Result<(NaiveDateTime, NaiveDateTime), Error> {
    let to = time_field("to", req.to.as_ref())?.unwrap_or(now);
    let from = match time_field("from", req.from.as_ref())? {
        Some(from) => from,
        None => month_start(to)
            .checked_sub_months(Months::new(2))
            .ok_or_else(|| Error::InvalidArgument(format!("to ({to}) is out of range")))?,
    };
    if from >= to {
        return Err(Error::InvalidArgument(format!(
            "from ({from} UTC) must be before to ({to} UTC)"
        )));
    }
    if add_months(from, MAX_MONTHS)? < to {
        return Err(Error::InvalidArgument(format!(
            "the range from {from} to {to} UTC is longer than {MAX_MONTHS} months; ask for a shorter one"
        )));
    }
    Ok((from, to))
}

/// The calendar months (UTC) of `[from, to)`: label and the part of the month inside the
/// range.
fn months(
    from: NaiveDateTime,
    to: NaiveDateTime,
) -> Result<Vec<(String, NaiveDateTime, NaiveDateTime)>, Error> {
    let mut out = Vec::new();
    let mut month = month_start(from);
    while month < to {
        let next = add_months(month, 1)?;
        out.push((
            month.format("%Y-%m").to_string(),
            month.max(from),
            next.min(to),
        ));
        month = next;
    }
    Ok(out)
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The revenue report over `[from, to)` as of `now`.
pub(crate) async fn revenue_report(
    db: &Db,
    app_order: &[String],
    from: NaiveDateTime,
    to: NaiveDateTime,
    now: NaiveDateTime,
) -> Result<pb::RevenueReport, Error> {
    use SubscriptionStatus as S;
    let current = [S::Trialing, S::Active, S::PastDue, S::Suspended].map(S::as_str);
    let billed = [S::Active, S::PastDue].map(S::as_str);
    let paying = [S::Active, S::PastDue, S::Suspended].map(S::as_str);
    let ended = [S::Expired, S::Canceled].map(S::as_str);
    let trialing = S::Trialing.as_str();
    let active = S::Active.as_str();
    let paid = InvoiceStatus::Paid.as_str();
    let renewals_until = to.min(now);
    let buckets = months(from, to)?;

    type Counts = Vec<(String, String, i64)>;
    type Mrr = Vec<(String, i64)>;
    type Month = Vec<(String, i64, i64, i64)>;
    let mut conn = db.get().await?;
    let (by_status, mrr, trials_ended, trials_converted, renewals_due, renewals_paid): (
        Counts,
        Mrr,
        i64,
        i64,
        i64,
        i64,
    ) = kapal::db!(&mut conn, |c| {
        async {
            let by_status: Counts = subscriptions::table
                .filter(subscriptions::status.eq_any(current))
                .group_by((subscriptions::app_id, subscriptions::status))
                .select((subscriptions::app_id, subscriptions::status, count_star()))
                .load(c)
                .await?;
            let mrr: Mrr = subscriptions::table
                .filter(subscriptions::status.eq_any(billed))
                .filter(subscriptions::auto_renew.eq(true))
                .filter(subscriptions::cancel_at_period_end.eq(false))
                .group_by(subscriptions::app_id)
                .select((subscriptions::app_id, sum_of("price_amount")))
                .load(c)
                .await?;
            let left_trial = subscription_events::table
                .filter(subscription_events::at.ge(from))
                .filter(subscription_events::at.lt(to))
                .filter(subscription_events::from_status.eq(trialing))
                .filter(subscription_events::to_status.ne(trialing));
            let trials_ended: i64 = left_trial.count().get_result(c).await?;
            let trials_converted: i64 = left_trial
                .filter(subscription_events::to_status.eq(active))
                .count()
                .get_result(c)
                .await?;
            let next = diesel::alias!(invoices as next);
            let due = invoices::table
                .filter(invoices::status.eq(paid))
                .filter(invoices::amount.gt(0))
                .filter(invoices::period_end.ge(from))
                .filter(invoices::period_end.lt(renewals_until));
            let renewals_due: i64 = due.count().get_result(c).await?;
            let renewals_paid: i64 = due
                .filter(exists(
                    next.filter(
                        next.field(invoices::subscription_id)
                            .eq(invoices::subscription_id),
                    )
                    .filter(next.field(invoices::period_start).eq(invoices::period_end))
                    .filter(next.field(invoices::status).eq(paid))
                    .select(next.field(invoices::id)),
                ))
                .count()
                .get_result(c)
                .await?;
            Ok::<_, diesel::result::Error>((
                by_status,
                mrr,
                trials_ended,
                trials_converted,
                renewals_due,
                renewals_paid,
            ))
        }
        .await
    })?;
    let (churned, paid_at_start): (i64, i64) = kapal::db!(&mut conn, |c| {
        async {
            let churned: i64 = subscription_events::table
                .filter(subscription_events::at.ge(from))
                .filter(subscription_events::at.lt(to))
                .filter(subscription_events::from_status.eq_any(paying))
                .filter(subscription_events::to_status.eq_any(ended))
                .count()
                .get_result(c)
                .await?;
            let started = diesel::alias!(subscription_events as started);
            let finished = diesel::alias!(subscription_events as finished);
            let paid_at_start: i64 = subscriptions::table
                .filter(exists(
                    started
                        .filter(
                            started
                                .field(subscription_events::subscription_id)
                                .eq(subscriptions::id),
                        )
                        .filter(started.field(subscription_events::at).lt(from))
                        .filter(started.field(subscription_events::to_status).eq_any(paying))
                        .select(started.field(subscription_events::id)),
                ))
                .filter(not(exists(
                    finished
                        .filter(
                            finished
                                .field(subscription_events::subscription_id)
                                .eq(subscriptions::id),
                        )
                        .filter(finished.field(subscription_events::at).lt(from))
                        .filter(finished.field(subscription_events::to_status).eq_any(ended))
                        .select(finished.field(subscription_events::id)),
                )))
                .count()
                .get_result(c)
                .await?;
            Ok::<_, diesel::result::Error>((churned, paid_at_start))
        }
        .await
    })?;
    let mut invoices_by_month = Vec::with_capacity(buckets.len());
    let (mut invoiced_total, mut collected_total, mut credited_total) = (0i64, 0i64, 0i64);
    for (label, start, end) in buckets {
        let rows: Month = kapal::db!(&mut conn, |c| {
            invoices::table
                .filter(invoices::period_start.ge(start))
                .filter(invoices::period_start.lt(end))
                .group_by(invoices::status)
                .select((
                    invoices::status,
                    count_star(),
                    sum_of("amount"),
                    sum_of("credited"),
                ))
                .load(c)
                .await
        })?;
        let mut month = pb::InvoicePeriod {
            month: label,
            ..Default::default()
        };
        let (mut invoiced, mut collected, mut credited) = (0i64, 0i64, 0i64);
        for (status, n, amount, refunded) in rows {
            let n = count(n);
            month.invoices += n;
            match InvoiceStatus::parse(&status) {
                Some(InvoiceStatus::Paid) => {
                    month.paid += n;
                    // Net of the credit notes issued on them.
                    collected += amount - refunded;
                    credited += refunded;
                    invoiced += amount;
                }
                Some(InvoiceStatus::Failed) => {
                    month.failed += n;
                    invoiced += amount;
                }
                Some(InvoiceStatus::Void) => month.void += n,
                Some(InvoiceStatus::Open) => invoiced += amount,
                None => {
                    return Err(Error::Corrupt(format!(
                        "invoices with unknown status {status:?}"
                    )));
                }
            }
        }
        month.invoiced = Some(wire::idr(invoiced));
        month.collected = Some(wire::idr(collected));
        month.credited = Some(wire::idr(credited));
        invoiced_total += invoiced;
        collected_total += collected;
        credited_total += credited;
        invoices_by_month.push(month);
    }
    drop(conn);

    // Per app: the catalog's apps first (in its order), then any others still subscribed.
    let mut apps: Vec<String> = app_order.to_vec();
    for (app, _, _) in &by_status {
        if !apps.contains(app) {
            apps.push(app.clone());
        }
    }
    let mut by_app: Vec<pb::AppSubscriptions> = apps
        .iter()
        .map(|app| pb::AppSubscriptions {
            app_id: app.clone(),
            mrr: Some(wire::idr(0)),
            ..Default::default()
        })
        .collect();
    for (app, status, n) in &by_status {
        if let Some(entry) = by_app.iter_mut().find(|a| &a.app_id == app) {
            let n = count(*n);
            match SubscriptionStatus::parse(status) {
                Some(S::Trialing) => entry.trialing += n,
                Some(S::Active) => entry.active += n,
                Some(S::PastDue) => entry.past_due += n,
                Some(S::Suspended) => entry.suspended += n,
                _ => {}
            }
        }
    }
    let mut mrr_total = 0i64;
    for (app, amount) in &mrr {
        mrr_total += amount;
        if let Some(entry) = by_app.iter_mut().find(|a| &a.app_id == app) {
            entry.mrr = Some(wire::idr(*amount));
        }
    }

    let (trials_ended, trials_converted) = (count(trials_ended), count(trials_converted));
    let (renewals_due, renewals_paid) = (count(renewals_due), count(renewals_paid));
    let (churned, paid_at_start) = (count(churned), count(paid_at_start));
    Ok(pb::RevenueReport {
        mrr: Some(wire::idr(mrr_total)),
        by_app,
        trials_ended,
        trials_converted,
        trial_conversion_rate: ratio(trials_converted, trials_ended),
        renewals_due,
        renewals_paid,
        renewal_rate: ratio(renewals_paid, renewals_due),
        churned,
        churn_rate: ratio(churned, paid_at_start),
        invoices_by_month,
        invoiced_total: Some(wire::idr(invoiced_total)),
        collected_total: Some(wire::idr(collected_total)),
        credited_total: Some(wire::idr(credited_total)),
        from: Some(wire::timestamp(from)),
        to: Some(wire::timestamp(to)),
        generated_at: Some(wire::timestamp(now)),
    })
}

/// The stored status an operator filters by; `None` for all.
fn status_filter(status: i32) -> Result<Option<&'static str>, Error> {
    let wanted = pb::SubscriptionStatus::try_from(status)
        .map_err(|_| Error::InvalidArgument(format!("status {status} is not a status")))?;
    if wanted == pb::SubscriptionStatus::Unspecified {
        return Ok(None);
    }
    Ok(SubscriptionStatus::ALL
        .into_iter()
        .filter(|s| s.is_visible())
        .find(|s| s.to_proto() == wanted)
        .map(SubscriptionStatus::as_str))
}

#[tonic::async_trait]
impl pb::billing_admin_service_server::BillingAdminService for Billing {
    async fn get_revenue_report(
        &self,
        request: Request<pb::GetRevenueReportRequest>,
    ) -> Result<Response<pb::RevenueReport>, Status> {
        auth::admin(&request)?;
        let now = self.now();
        let (from, to) = report_range(request.get_ref(), now)?;
        let apps: Vec<String> = self.catalog().apps().map(|a| a.id.clone()).collect();
        let report = revenue_report(self.db(), &apps, from, to, now).await?;
        Ok(Response::new(report))
    }

    async fn list_all_subscriptions(
        &self,
        request: Request<pb::ListAllSubscriptionsRequest>,
    ) -> Result<Response<pb::ListAllSubscriptionsResponse>, Status> {
        auth::admin(&request)?;
        let req = request.get_ref();
        let limit = wire::page_size(req.page_size);
        let status = status_filter(req.status)?;
        let app = Some(req.app_id.trim()).filter(|a| !a.is_empty());
        let account = match req.account_id.trim() {
            "" => None,
            id => Some(wire::uuid("account_id", id)?.to_string()),
        };
        let after = paging::parse(req.page_token.trim())?;
        let hidden = SubscriptionStatus::Incomplete.as_str();
        let mut conn = self.db().get().await.map_err(Error::from)?;
        let rows: Vec<(SubscriptionRow, Option<String>)> = kapal::db!(&mut conn, |c| {
            let mut query = subscriptions::table
                .inner_join(subscription_schedule::table)
                .filter(subscriptions::status.ne(hidden))
                .order((subscriptions::created_at.desc(), subscriptions::id.desc()))
                .limit(limit + 1)
                .select((
                    SubscriptionRow::as_select(),
                    subscription_schedule::next_plan_id,
                ))
                .into_boxed();
            if let Some(status) = status {
                query = query.filter(subscriptions::status.eq(status));
            }
            if let Some(app) = app {
                query = query.filter(subscriptions::app_id.eq(app));
            }
            if let Some(account) = &account {
                query = query.filter(subscriptions::account_id.eq(account));
            }
            if let Some(after) = &after {
                query = query.filter(
                    subscriptions::created_at
                        .lt(after.at)
                        .or(subscriptions::created_at
                            .eq(after.at)
                            .and(subscriptions::id.lt(&after.id))),
                );
            }
            query.load(c).await
        })
        .map_err(Error::from)?;
        drop(conn);
        let (rows, next_page_token) =
            paging::split(rows, limit, |(row, _)| (row.created_at, row.id.as_str()));
        let subscriptions = rows
            .into_iter()
            .map(|(row, next_plan)| {
                let mut sub = subscription_to_proto(&row, next_plan)?;
                sub.account_id = row.account_id;
                Ok(sub)
            })
            .collect::<Result<_, Error>>()?;
        Ok(Response::new(pb::ListAllSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    async fn list_subscription_events_as_admin(
        &self,
        request: Request<pb::ListSubscriptionEventsRequest>,
    ) -> Result<Response<pb::ListSubscriptionEventsResponse>, Status> {
        auth::admin(&request)?;
        let req = request.get_ref();
        let id = wire::uuid("subscription_id", &req.subscription_id)?.to_string();
        let limit = wire::page_size(req.page_size);
        let after = paging::parse_after_id(req.page_token.trim())?;
        let mut conn = self.db().get().await.map_err(Error::from)?;
        let found: Option<String> = kapal::db!(&mut conn, |c| {
            subscriptions::table
                .find(&id)
                .select(subscriptions::id)
                .first(c)
                .await
                .optional()
        })
        .map_err(Error::from)?;
        drop(conn);
        if found.is_none() {
            return Err(Error::NotFound("subscription").into());
        }
        let (rows, next_page_token) =
            store::subscription_events(self.db(), &id, after, limit).await?;
        Ok(Response::new(pb::ListSubscriptionEventsResponse {
            events: events_to_proto(&rows),
            next_page_token,
        }))
    }

    async fn list_invoices_as_admin(
        &self,
        request: Request<pb::ListInvoicesAsAdminRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        auth::admin(&request)?;
        let req = request.get_ref();
        let account = wire::uuid("account_id", &req.account_id)?.to_string();
        let subscription_id = match req.subscription_id.trim() {
            "" => None,
            id => {
                let id = wire::uuid("subscription_id", id)?.to_string();
                // Another account's (or no) subscription is NOT_FOUND, not an empty list.
                store::customer_subscription(self.db(), &account, &id).await?;
                Some(id)
            }
        };
        let limit = wire::page_size(req.page_size);
        let before = paging::parse_after_id(req.page_token.trim())?;
        let (rows, next_page_token) = store::list_invoices(
            self.db(),
            &account,
            subscription_id.as_deref(),
            before,
            limit,
        )
        .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let notes = store::credit_notes(self.db(), &ids).await?;
        let invoices = rows
            .iter()
            .map(|r| crate::api::invoice_to_proto(r, &notes))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListInvoicesResponse {
            invoices,
            next_page_token,
        }))
    }

    async fn extend_subscription(
        &self,
        request: Request<pb::ExtendSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let operator = auth::admin(&request)?.clone();
        let sub = Billing::extend_subscription(self, &operator, request.get_ref()).await?;
        Ok(Response::new(sub))
    }

    async fn credit_invoice(
        &self,
        request: Request<pb::CreditInvoiceRequest>,
    ) -> Result<Response<pb::CreditInvoiceResponse>, Status> {
        let operator = auth::admin(&request)?.clone();
        let answer = Billing::credit_invoice(self, &operator, request.get_ref()).await?;
        Ok(Response::new(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, m: u32, d: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .expect("date")
            .and_time(NaiveTime::MIN)
    }

    fn ts(t: NaiveDateTime) -> Option<prost_types::Timestamp> {
        Some(wire::timestamp(t))
    }

    #[test]
    fn the_range_defaults_to_three_months_and_is_checked() {
        let now = at(2025, 3, 17);
        let req = pb::GetRevenueReportRequest::default();
        assert_eq!(
            report_range(&req, now).expect("range"),
            (at(2025, 1, 1), now)
        );
        let req = pb::GetRevenueReportRequest {
            from: ts(at(2025, 3, 1)),
            to: ts(at(2025, 3, 1)),
        };
        assert!(matches!(
            report_range(&req, now),
            Err(Error::InvalidArgument(_))
        ));
        let req = pb::GetRevenueReportRequest {
            from: ts(at(2022, 1, 1)),
            to: ts(at(2025, 1, 2)),
        };
        assert!(matches!(
            report_range(&req, now),
            Err(Error::InvalidArgument(_))
        ));
        let req = pb::GetRevenueReportRequest {
            from: ts(at(2022, 1, 1)),
            to: ts(at(2025, 1, 1)),
        };
        assert!(report_range(&req, now).is_ok());
    }

    #[test]
    fn months_are_clipped_to_the_range() {
        let m = months(at(2025, 1, 15), at(2025, 3, 2)).expect("months");
        let labels: Vec<&str> = m.iter().map(|(l, _, _)| l.as_str()).collect();
        assert_eq!(labels, ["2025-01", "2025-02", "2025-03"]);
        assert_eq!(m[0].1, at(2025, 1, 15));
        assert_eq!(m[0].2, at(2025, 2, 1));
        assert_eq!(m[2].2, at(2025, 3, 2));
    }
}
