//! The gRPC services: `kapal.internal.v1.BillingService` for the control-plane and the public
//! `kapal.v1.SubscriptionService` for customers.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Months, NaiveDateTime, SubsecRound as _};
use kapal::auth;
use kapal::catalog::Catalog;
use kapal::clock::SharedClock;
use kapal::db::Db;
use kapal::proto::internal::v1 as internal;
use kapal::proto::internal::v1::CheckPlanChangeRequest;
use kapal::proto::internal::v1::entitlement_service_client::EntitlementServiceClient;
use kapal::proto::v1 as pb;
use kapal::serve::InternalChannel;
use kapal::wire;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::charging::{self, CHARGE_LEASE, invoice_number};
use crate::error::Error;
use crate::lifecycle::{InvoiceStatus, RenewalChange, SubscriptionStatus};
use crate::payments::PaymentProvider;
use crate::store::{self, InvoiceRow, SubscriptionRow};

/// How long a request waits for a concurrent request of the same order to finish its charge.
const WAIT_FOR_OTHER_CHARGE: Duration = Duration::from_secs(70);
/// How often a waiting request looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The currency of every price in the catalog.
const CURRENCY: &str = "IDR";

/// A CreateSubscription request, checked.
struct NewOrder {
    order_id: Uuid,
    account_id: Uuid,
    instance_id: Uuid,
    app_id: String,
    plan_id: String,
}

impl TryFrom<internal::CreateSubscriptionRequest> for NewOrder {
    type Error = Status;

    fn try_from(req: internal::CreateSubscriptionRequest) -> Result<NewOrder, Status> {
        Ok(NewOrder {
            order_id: wire::uuid("order_id", &req.order_id)?,
            account_id: wire::uuid("account_id", &req.account_id)?,
            instance_id: wire::uuid("instance_id", &req.instance_id)?,
            app_id: wire::required("app_id", &req.app_id)?.to_string(),
            plan_id: wire::required("plan_id", &req.plan_id)?.to_string(),
        })
    }
}

/// Billing's state, shared by both services.
#[derive(Clone)]
pub struct Billing(Arc<Inner>);

struct Inner {
    db: Db,
    catalog: Arc<Catalog>,
    clock: SharedClock,
    payments: Arc<dyn PaymentProvider>,
    /// Asked whether a bigger plan fits the cluster (ChangePlan); `None`: not checked (billing
    /// without a control-plane, as in some of its own tests).
    control_plane: Option<EntitlementServiceClient<InternalChannel>>,
    audit: crate::operator::AuditLog,
    /// How refunds the provider did not answer are asked again (the first attempt is
    /// CreditInvoice's).
    refunds: crate::refunds::RefundPolicy,
}

impl Billing {
    pub fn new(
        db: Db,
        catalog: Arc<Catalog>,
        clock: SharedClock,
        payments: Arc<dyn PaymentProvider>,
        audit: crate::operator::AuditLog,
    ) -> Billing {
        Billing(Arc::new(Inner {
            db,
            catalog,
            clock,
            payments,
            control_plane: None,
            audit,
            refunds: crate::refunds::RefundPolicy::default(),
        }))
    }

    /// Retries refunds the provider did not answer by `policy` (the scheduler's). Call before
    /// the value is shared.
    pub fn with_refund_policy(mut self, policy: crate::refunds::RefundPolicy) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.refunds = policy;
        }
        self
    }

    /// Checks plan upgrades against the cluster's capacity with the control-plane `client`
    /// (see ChangePlan). Call before the value is shared.
    pub fn with_control_plane(mut self, client: EntitlementServiceClient<InternalChannel>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.control_plane = Some(client);
        }
        self
    }

    /// RESOURCE_EXHAUSTED when moving `sub`'s instance from plan `from` to the bigger plan `to`
    /// would push the cluster past its capacity ceiling (the control-plane's answer, for the
    /// customer); nothing is asked for a plan that is not bigger.
    async fn check_capacity_for(
        &self,
        sub: &SubscriptionRow,
        from: Option<&kapal::catalog::Plan>,
        to: &kapal::catalog::Plan,
    ) -> Result<(), Error> {
        let bigger =
            from.is_none_or(|f| to.cpu_millis > f.cpu_millis || to.memory_mib > f.memory_mib);
        let Some(client) = self.0.control_plane.clone().filter(|_| bigger) else {
            return Ok(());
        };
        let mut client = client;
        let answer = client
            .check_plan_change(CheckPlanChangeRequest {
                instance_id: sub.instance_id.clone(),
                plan_id: to.id.clone(),
            })
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                Err(Error::ResourceExhausted(s.message().to_string()))
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), subscription_id = %sub.id, "the control-plane could not check a plan change against the cluster's capacity");
                Err(Error::Unavailable(
                    "the cluster's capacity for this plan could not be checked just now; nothing was changed, try again in a minute".into(),
                ))
            }
        }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.0.db
    }

    pub(crate) fn payments(&self) -> &dyn PaymentProvider {
        self.0.payments.as_ref()
    }

    pub(crate) fn audit(&self) -> &crate::operator::AuditLog {
        &self.0.audit
    }

    pub(crate) fn refund_policy(&self) -> &crate::refunds::RefundPolicy {
        &self.0.refunds
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.0.catalog
    }

    /// The current time as stored (UTC, microseconds: what both backends keep).
    pub(crate) fn now(&self) -> NaiveDateTime {
        self.0.clock.now().naive_utc().trunc_subsecs(6)
    }

    async fn create_subscription(
        &self,
        order: NewOrder,
    ) -> Result<(SubscriptionRow, InvoiceRow), Error> {
        let NewOrder {
            order_id,
            account_id,
            instance_id,
            app_id,
            plan_id,
        } = order;
        let app = self.0.catalog.app(&app_id).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "app_id {:?} is not in the catalog",
                wire::truncate(&app_id, 64)
            ))
        })?;
        let plan = app.plan(&plan_id).ok_or_else(|| {
            let plans: Vec<&str> = app.plans.iter().map(|p| p.id.as_str()).collect();
            Error::InvalidArgument(format!(
                "plan_id {:?} is not a plan of {}; its plans are {}",
                wire::truncate(&plan_id, 64),
                app.id,
                plans.join(", ")
            ))
        })?;

        let now = self.now();
        let trial = plan.trial_days > 0;
        let (period_end, trial_end) = if trial {
            let end = now + chrono::Duration::days(i64::from(plan.trial_days));
            (end, Some(end))
        } else {
            let end = now
                .checked_add_months(Months::new(1))
                .ok_or_else(|| Error::Corrupt(format!("the clock is out of range: {now}")))?;
            (end, None)
        };
        let sub = SubscriptionRow {
            id: Uuid::now_v7().to_string(),
            account_id: account_id.to_string(),
            order_id: order_id.to_string(),
            instance_id: instance_id.to_string(),
            app_id: app.id.clone(),
            plan_id: plan.id.clone(),
            status: SubscriptionStatus::Incomplete.as_str().to_string(),
            price_amount: plan.monthly_price_idr,
            currency: CURRENCY.to_string(),
            trial_end,
            current_period_start: now,
            current_period_end: period_end,
            // A trial charges nothing automatically: it ends unless the customer picks a paid plan.
            auto_renew: !trial,
            cancel_at_period_end: false,
            created_at: now,
            updated_at: now,
        };
        let invoice_id = Uuid::now_v7().to_string();
        let invoice = InvoiceRow {
            id: invoice_id,
            number: 0, // allocated by the store, in the same transaction
            subscription_id: sub.id.clone(),
            account_id: sub.account_id.clone(),
            period_start: now,
            period_end,
            amount: plan.monthly_price_idr,
            currency: CURRENCY.to_string(),
            status: InvoiceStatus::Open.as_str().to_string(),
            charging_until: None,
            failure_reason: None,
            created_at: now,
            paid_at: None,
            payment_provider: None,
            payment_reference: None,
            credited_amount: 0,
        };
        let cause = format!("created for order {order_id}");
        let (stored, first) =
            store::find_or_create_subscription(&self.0.db, &sub, &invoice, &cause).await?;
        if (
            &stored.account_id,
            &stored.instance_id,
            &stored.app_id,
            &stored.plan_id,
        ) != (&sub.account_id, &sub.instance_id, &sub.app_id, &sub.plan_id)
        {
            return Err(Error::OrderConflict(format!(
                "order {order_id} already has a subscription with another account, instance, app or plan"
            )));
        }
        self.settle_first_invoice(first).await
    }

    /// Brings the first invoice to PAID, charging it when no one else is, and returns it with
    /// its (then started) subscription.
    ///
    /// At most one request charges an invoice at a time: a charge first takes the invoice's
    /// lease (`invoices.charging_until`) with a compare-and-set on the status and lease this
    /// request saw, so of several requests that saw the same state exactly one proceeds. The
    /// others wait for that charge's outcome and report it: PAID, or its failure (they do not
    /// charge again). A lease runs out only when its holder died; then the next request
    /// charges again, with the same idempotency key.
    ///
    /// A failed charge leaves the invoice FAILED and the subscription INCOMPLETE (invisible to
    /// the customer); the next CreateSubscription for the order charges the same invoice again
    /// with the same idempotency key.
    async fn settle_first_invoice(
        &self,
        first: InvoiceRow,
    ) -> Result<(SubscriptionRow, InvoiceRow), Error> {
        let db = &self.0.db;
        let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHER_CHARGE;
        // Whether another request's charge ran while this one was here: its failure is then
        // this request's answer too.
        let mut waited = false;
        let mut invoice = first;
        loop {
            let now = self.now();
            let status = invoice.status()?;
            match status {
                InvoiceStatus::Paid => {
                    let sub = store::subscription(db, &invoice.subscription_id).await?;
                    return Ok((sub, invoice));
                }
                InvoiceStatus::Void => {
                    return Err(Error::FailedPrecondition(format!(
                        "the invoice {} of this order was voided",
                        invoice_number(invoice.number)
                    )));
                }
                InvoiceStatus::Open | InvoiceStatus::Failed => {}
            }
            if invoice.is_being_charged(now) {
                waited = true;
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::PaymentInProgress);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            } else if waited && status == InvoiceStatus::Failed {
                let reason = invoice.failure_reason.clone().unwrap_or_default();
                return Err(Error::PaymentFailed(reason));
            } else {
                let provider = self.0.payments.name();
                match store::claim_charge(db, &invoice, provider, now, now + CHARGE_LEASE).await? {
                    Some(claim) => self.charge(&claim).await?,
                    // Another request changed the invoice first: look at what it did.
                    None => waited = true,
                }
            }
            invoice = store::invoice(db, &invoice.id).await?;
        }
    }

    /// The wire form of a subscription, with its pending plan change.
    async fn subscription_to_proto(
        &self,
        row: &SubscriptionRow,
    ) -> Result<pb::Subscription, Error> {
        let next_plan = store::next_plan(&self.0.db, &row.id).await?;
        subscription_to_proto(row, next_plan)
    }

    /// Charges a claimed invoice and records the outcome (see [`charging`]).
    async fn charge(&self, claim: &store::Claim) -> Result<(), Error> {
        charging::charge_claimed(&self.0.db, self.0.payments.as_ref(), claim, || self.now())
            .await?
            .map_err(Error::PaymentFailed)
    }
}

pub(crate) fn subscription_to_proto(
    row: &SubscriptionRow,
    next_plan: Option<String>,
) -> Result<pb::Subscription, Error> {
    Ok(pb::Subscription {
        id: row.id.clone(),
        app_id: row.app_id.clone(),
        plan_id: row.plan_id.clone(),
        status: row.status()?.to_proto().into(),
        price: Some(pb::Money {
            amount: row.price_amount,
            currency: row.currency.clone(),
        }),
        current_period_start: Some(wire::timestamp(row.current_period_start)),
        current_period_end: Some(wire::timestamp(row.current_period_end)),
        auto_renew: row.auto_renew,
        cancel_at_period_end: row.cancel_at_period_end,
        order_id: row.order_id.clone(),
        created_at: Some(wire::timestamp(row.created_at)),
        trial_end: wire::opt_timestamp(row.trial_end),
        next_plan_id: next_plan.unwrap_or_default(),
        instance_id: row.instance_id.clone(),
        // Customers and services are not told the owner: only operators' responses carry it.
        account_id: String::new(),
    })
}

/// The wire form of an invoice with its credit notes (`notes` may hold other invoices' notes).
pub(crate) fn invoice_to_proto(
    row: &InvoiceRow,
    notes: &[store::CreditNoteRow],
) -> Result<pb::Invoice, Error> {
    let notes: Vec<&store::CreditNoteRow> =
        notes.iter().filter(|n| n.invoice_id == row.id).collect();
    let credited: i64 = notes
        .iter()
        .filter(|n| n.status == crate::operator::CreditNoteStatus::Refunded.as_str())
        .map(|n| n.amount)
        .sum();
    Ok(pb::Invoice {
        credited: Some(pb::Money {
            amount: credited,
            currency: row.currency.clone(),
        }),
        credit_notes: notes
            .into_iter()
            .map(crate::operator::credit_note_to_proto)
            .collect::<Result<_, _>>()?,
        id: row.id.clone(),
        number: invoice_number(row.number),
        subscription_id: row.subscription_id.clone(),
        period_start: Some(wire::timestamp(row.period_start)),
        period_end: Some(wire::timestamp(row.period_end)),
        amount: Some(pb::Money {
            amount: row.amount,
            currency: row.currency.clone(),
        }),
        status: row.status()?.to_proto().into(),
        created_at: Some(wire::timestamp(row.created_at)),
        paid_at: wire::opt_timestamp(row.paid_at),
        payment_provider: row.payment_provider.clone().unwrap_or_default(),
        payment_reference: row.payment_reference.clone().unwrap_or_default(),
    })
}

#[tonic::async_trait]
impl internal::billing_service_server::BillingService for Billing {
    async fn create_subscription(
        &self,
        request: Request<internal::CreateSubscriptionRequest>,
    ) -> Result<Response<internal::CreateSubscriptionResponse>, Status> {
        auth::service(&request)?;
        let order = NewOrder::try_from(request.into_inner())?;
        kapal::telemetry::record_order(order.order_id);
        kapal::telemetry::record_instance(order.instance_id);
        let (sub, invoice) = self.create_subscription(order).await?;
        kapal::telemetry::record_subscription(&sub.id);
        Ok(Response::new(internal::CreateSubscriptionResponse {
            subscription: Some(subscription_to_proto(&sub, None)?),
            invoice: Some(invoice_to_proto(&invoice, &[])?),
        }))
    }
}

#[tonic::async_trait]
impl pb::subscription_service_server::SubscriptionService for Billing {
    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let account = auth::customer(&request)?.account_id.to_string();
        let req = request.get_ref();
        let limit = wire::page_size(req.page_size);
        let after = kapal::paging::parse(req.page_token.trim())?;
        let (rows, next_page_token) =
            store::list_subscriptions(&self.0.db, &account, after.as_ref(), limit).await?;
        let mut subscriptions = Vec::with_capacity(rows.len());
        for row in &rows {
            subscriptions.push(self.subscription_to_proto(row).await?);
        }
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let account = auth::customer(&request)?.account_id.to_string();
        let id = wire::uuid("subscription_id", &request.get_ref().subscription_id)?;
        kapal::telemetry::record_subscription(id);
        let row = store::customer_subscription(&self.0.db, &account, &id.to_string()).await?;
        Ok(Response::new(self.subscription_to_proto(&row).await?))
    }

    async fn cancel_subscription(
        &self,
        request: Request<pb::CancelSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let account = auth::customer(&request)?.account_id.to_string();
        let id = wire::uuid("subscription_id", &request.get_ref().subscription_id)?;
        kapal::telemetry::record_subscription(id);
        let row = store::change_renewal(
            &self.0.db,
            &account,
            &id.to_string(),
            RenewalChange::Cancel,
            self.now(),
        )
        .await?;
        Ok(Response::new(self.subscription_to_proto(&row).await?))
    }

    async fn set_auto_renew(
        &self,
        request: Request<pb::SetAutoRenewRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let account = auth::customer(&request)?.account_id.to_string();
        let req = request.get_ref();
        let id = wire::uuid("subscription_id", &req.subscription_id)?;
        kapal::telemetry::record_subscription(id);
        let row = store::change_renewal(
            &self.0.db,
            &account,
            &id.to_string(),
            RenewalChange::AutoRenew(req.auto_renew),
            self.now(),
        )
        .await?;
        Ok(Response::new(self.subscription_to_proto(&row).await?))
    }

    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        let account = auth::customer(&request)?.account_id.to_string();
        let subscription_id = match request.get_ref().subscription_id.trim() {
            "" => None,
            id => {
                let id = wire::uuid("subscription_id", id)?.to_string();
                // Someone else's (or no) subscription is NOT_FOUND, not an empty list.
                store::customer_subscription(&self.0.db, &account, &id).await?;
                Some(id)
            }
        };
        let limit = wire::page_size(request.get_ref().page_size);
        let before = kapal::paging::parse_after_id(request.get_ref().page_token.trim())?;
        let (rows, next_page_token) = store::list_invoices(
            &self.0.db,
            &account,
            subscription_id.as_deref(),
            before,
            limit,
        )
        .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let notes = store::credit_notes(&self.0.db, &ids).await?;
        let invoices = rows
            .iter()
            .map(|r| {
                let mut invoice = invoice_to_proto(r, &notes)?;
                // The provider's answers are for operators.
                for note in &mut invoice.credit_notes {
                    note.last_error.clear();
                }
                Ok(invoice)
            })
            .collect::<Result<_, Error>>()?;
        Ok(Response::new(pb::ListInvoicesResponse {
            invoices,
            next_page_token,
        }))
    }

    async fn change_plan(
        &self,
        request: Request<pb::ChangePlanRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let account = auth::customer(&request)?.account_id.to_string();
        let req = request.get_ref();
        let id = wire::uuid("subscription_id", &req.subscription_id)?.to_string();
        kapal::telemetry::record_subscription(&id);
        let plan_id = wire::required("plan_id", &req.plan_id)?;
        let sub = store::customer_subscription(&self.0.db, &account, &id).await?;
        let app = self.0.catalog.app(&sub.app_id).ok_or_else(|| {
            Error::Corrupt(format!(
                "subscription {} has app {:?}, which is not in the catalog",
                sub.id, sub.app_id
            ))
        })?;
        let plan = app.plan(plan_id).ok_or_else(|| {
            let plans: Vec<&str> = app
                .plans
                .iter()
                .filter(|p| p.trial_days == 0)
                .map(|p| p.id.as_str())
                .collect();
            Error::InvalidArgument(format!(
                "plan_id {:?} is not a plan of {}; its paid plans are {}",
                wire::truncate(plan_id, 64),
                app.id,
                plans.join(", ")
            ))
        })?;
        if plan.trial_days > 0 {
            return Err(Error::InvalidArgument(format!(
                "{} is a free trial; choose a paid plan of {}",
                plan.id, app.id
            ))
            .into());
        }
        // Volumes cannot shrink (Kubernetes refuses a smaller PersistentVolumeClaim): a plan
        // whose volume is smaller than the current plan's would not hold the data there.
        if let Some(current) = app.plan(&sub.plan_id)
            && plan.storage_gib < current.storage_gib
        {
            return Err(Error::FailedPrecondition(format!(
                "plan {} has a {} GiB volume, smaller than the {} GiB volume of this instance's plan {}; volumes cannot shrink. Choose a plan with at least {} GiB, or order {} as a new instance and move your data there.",
                plan.id,
                plan.storage_gib,
                current.storage_gib,
                current.id,
                current.storage_gib,
                plan.id
            ))
            .into());
        }
        // A bigger plan must fit the cluster: refused now, with nothing changed, rather than
        // charged at renewal for resources the cluster cannot give.
        self.check_capacity_for(&sub, app.plan(&sub.plan_id), plan)
            .await?;
        let (row, next_plan) = store::change_plan(
            &self.0.db,
            &account,
            &id,
            &plan.id,
            plan.monthly_price_idr,
            self.now(),
        )
        .await?;
        Ok(Response::new(subscription_to_proto(&row, next_plan)?))
    }

    async fn list_subscription_events(
        &self,
        request: Request<pb::ListSubscriptionEventsRequest>,
    ) -> Result<Response<pb::ListSubscriptionEventsResponse>, Status> {
        let account = auth::customer(&request)?.account_id.to_string();
        let req = request.get_ref();
        let id = wire::uuid("subscription_id", &req.subscription_id)?.to_string();
        kapal::telemetry::record_subscription(&id);
        let limit = wire::page_size(req.page_size);
        let after = kapal::paging::parse_after_id(req.page_token.trim())?;
        store::customer_subscription(&self.0.db, &account, &id).await?;
        let (rows, next_page_token) =
            store::subscription_events(&self.0.db, &id, after, limit).await?;
        Ok(Response::new(pb::ListSubscriptionEventsResponse {
            events: events_to_proto(&rows),
            next_page_token,
        }))
    }
}

/// The wire form of a subscription's events.
pub(crate) fn events_to_proto(rows: &[store::EventRow]) -> Vec<pb::SubscriptionEvent> {
    let status = |s: Option<&str>| -> i32 {
        s.and_then(SubscriptionStatus::parse)
            .map(|s| s.to_proto())
            .unwrap_or(pb::SubscriptionStatus::Unspecified)
            .into()
    };
    rows.iter()
        .map(|e| pb::SubscriptionEvent {
            at: Some(wire::timestamp(e.at)),
            from_status: status(e.from_status.as_deref()),
            to_status: status(Some(&e.to_status)),
            cause: e.cause.clone(),
            actor: e.actor.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoice_numbers_are_padded() {
        assert_eq!(invoice_number(42), "KPL-000042");
        assert_eq!(invoice_number(1_234_567), "KPL-1234567");
    }
}
