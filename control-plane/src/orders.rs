//! `kapal.v1.OrderService`: checkout, idempotent per (customer, idempotency key).
//!
//! Checkout first records the order (a unique index on the key makes duplicates impossible, also
//! under concurrency), then completes it: billing creates the subscription and settles the first
//! invoice (idempotent per order), the instance row is created (unique per order), and the
//! provisioner is asked to converge it. Each step is idempotent, so an order interrupted at any
//! point (crash, peer down) is completed by retrying it: the client's retry with the same key does
//! that, and so does the recovery loop for orders left pending. No order is ever lost and none is
//! provisioned twice.

use futures::StreamExt as _;
use std::time::Duration;

use kapal::auth;
use kapal::paging;
use kapal::proto::internal::v1::CreateSubscriptionRequest;
use kapal::proto::v1::order_service_server::OrderService;
use kapal::proto::v1::{
    self as pb, CheckoutRequest, GetOrderRequest, ListOrdersRequest, ListOrdersResponse,
};
use kapal::wire::timestamp;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::capacity;
use crate::error::{Error, Result};
use crate::lifecycle;
use crate::models::{Account, Instance, Order, instance_state, order_status};
use crate::store::orders::{AccountLimits, Placed};
use crate::{Ctx, store};

pub struct Orders(pub Ctx);

fn order_to_wire(o: &Order) -> pb::Order {
    let status = match o.status.as_str() {
        order_status::PENDING => pb::OrderStatus::Pending,
        order_status::COMPLETED => pb::OrderStatus::Completed,
        order_status::FAILED => pb::OrderStatus::Failed,
        _ => pb::OrderStatus::Unspecified,
    };
    let completed = o.status == order_status::COMPLETED;
    pb::Order {
        id: o.id.clone(),
        app_id: o.app_id.clone(),
        plan_id: o.plan_id.clone(),
        status: status as i32,
        failure_reason: o.failure_reason.clone(),
        amount: Some(pb::Money {
            amount: o.amount,
            currency: o.currency.clone(),
        }),
        subscription_id: o.subscription_id.clone().unwrap_or_default(),
        instance_id: if completed {
            o.instance_id.clone()
        } else {
            String::new()
        },
        idempotency_key: o.idempotency_key.clone(),
        created_at: Some(timestamp(o.created_at)),
        updated_at: Some(timestamp(o.updated_at)),
    }
}

fn check_idempotency_key(key: &str) -> Result<()> {
    let ok = (8..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else if key.is_empty() {
        Err(Error::invalid(
            "idempotency_key is required: send a new UUID per order, and the same one when retrying",
        ))
    } else {
        Err(Error::invalid(
            "idempotency_key must be 8-128 characters of letters, digits, '.', '_', ':' or '-'",
        ))
    }
}

async fn load_order(ctx: &Ctx, account_id: &str, id: &str) -> Result<Option<Order>> {
    store::orders::owned(&ctx.db, account_id, id).await
}

async fn set_failed(ctx: &Ctx, order: &Order, reason: &str) -> Result<Order> {
    store::orders::fail_pending(&ctx.db, &order.id, reason, ctx.now()).await?;
    tracing::warn!(order_id = %order.id, reason, "order failed");
    Ok(load_order(ctx, &order.account_id, &order.id)
        .await?
        .unwrap_or_else(|| order.clone()))
}

/// FAILED_PRECONDITION unless the account may buy: when the server sends email, its address
/// must be verified.
async fn ensure_may_check_out(ctx: &Ctx, account_id: &str) -> Result<()> {
    if ctx.mailer.is_none() {
        return Ok(());
    }
    let (email, verified) = store::accounts::email_and_verified(&ctx.db, account_id)
        .await?
        .ok_or_else(|| Error::Internal(format!("account {account_id} is gone")))?;
    if verified.is_none() {
        return Err(Error::FailedPrecondition(format!(
            "verify your email address before checking out: enter the code mailed to {email} with `kapal verify-email --email {email} --code CODE` (no mail? `kapal resend-verification` sends a new code)"
        )));
    }
    Ok(())
}

/// Completes a pending order; returns it as it is afterwards. Safe to call any number of times,
/// concurrently too.
pub(crate) async fn process(ctx: &Ctx, order: Order) -> Result<Order> {
    if order.status != order_status::PENDING {
        return Ok(order);
    }
    // 1. Subscription and first payment (idempotent per order id in billing).
    let billing = ctx
        .billing
        .clone()
        .create_subscription(CreateSubscriptionRequest {
            order_id: order.id.clone(),
            account_id: order.account_id.clone(),
            app_id: order.app_id.clone(),
            plan_id: order.plan_id.clone(),
            instance_id: order.instance_id.clone(),
        })
        .await;
    let subscription_id = match billing {
        Ok(resp) => resp
            .into_inner()
            .subscription
            .map(|s| s.id)
            .unwrap_or_default(),
        Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::InvalidArgument) => {
            return set_failed(ctx, &order, s.message()).await;
        }
        Err(s) => {
            // Billing is down or failed: the order stays pending and is retried.
            tracing::warn!(order_id = %order.id, code = ?s.code(), "billing unavailable; order stays pending");
            return Ok(order);
        }
    };
    if subscription_id.is_empty() {
        return Err(Error::Internal("billing returned no subscription".into()));
    }

    // 2. The instance row and the order's completion, in one transaction.
    let account = store::accounts::get(&ctx.db, &order.account_id)
        .await?
        .ok_or_else(|| {
            Error::Internal(format!(
                "the account {} of order {} is gone",
                order.account_id, order.id
            ))
        })?;
    let mut attempt = 0;
    let (instance, completed_here) = loop {
        attempt += 1;
        match create_instance(ctx, &order, &account, &subscription_id).await {
            Ok(done) => break done,
            // Another request took the hostname we picked: pick again.
            Err(Error::Db(e)) if e.is_unique_violation() && attempt < 5 => continue,
            Err(e) => return Err(e),
        }
    };

    // 3. Hand it to the provisioner, in the background: checkout answers without waiting for
    // the cluster, and the status follows through the provisioner's reports. Only the request
    // that completed the order does this, so concurrent retries of one checkout do not each
    // apply the instance again. If the push is lost (provisioner down, a crash), the
    // provisioner's resync, which lists the desired instances, converges the instance anyway.
    if completed_here {
        tracing::info!(order_id = %order.id, instance_id = %instance.id, "order completed");
        let ctx = ctx.clone();
        let customer_id = account.customer_id.clone();
        // In the checkout's span: the push is part of the checkout's trace.
        tokio::spawn(kapal::telemetry::in_current_span(async move {
            lifecycle::push_to_provisioner(&ctx, &instance, &customer_id).await;
        }));
    }
    Ok(load_order(ctx, &order.account_id, &order.id)
        .await?
        .unwrap_or(order))
}

/// Creates the order's instance (unless it exists) and completes the order, in one transaction.
/// Returns the instance and whether this call completed the order.
async fn create_instance(
    ctx: &Ctx,
    order: &Order,
    account: &Account,
    subscription_id: &str,
) -> Result<(Instance, bool)> {
    let now = ctx.now();
    let existing = store::orders::instance_hostnames(&ctx.db, &account.id, &order.app_id).await?;
    let label = (1..)
        .map(|n| {
            if n == 1 {
                account.customer_id.clone()
            } else {
                format!("{}-{n}", account.customer_id)
            }
        })
        .find(|l| !existing.contains(&format!("{l}.{}.{}", order.app_id, ctx.domain)))
        .unwrap_or_else(|| account.customer_id.clone());
    let fresh = Instance {
        id: order.instance_id.clone(),
        account_id: order.account_id.clone(),
        order_id: order.id.clone(),
        app_id: order.app_id.clone(),
        plan_id: order.plan_id.clone(),
        hostname: format!("{label}.{}.{}", order.app_id, ctx.domain),
        namespace: format!("kapal-{label}-{}", order.app_id),
        subscription_id: Some(subscription_id.to_string()),
        desired_state: instance_state::RUNNING.into(),
        status: instance_state::status_to_db(pb::InstanceStatus::Pending).into(),
        status_reason: "Waiting for the cluster".into(),
        restart_generation: 0,
        created_at: now,
        updated_at: now,
        ready_at: None,
        entitlement: crate::models::entitlement::ACTIVE.into(),
        entitlement_sequence: 0,
        entitlement_cause: String::new(),
        entitlement_at: None,
        data_deleted_after: None,
    };
    Ok(store::orders::complete(&ctx.db, &order.id, &fresh, subscription_id, now).await?)
}

/// The order the caller placed with this idempotency key, if any.
async fn find_by_key(ctx: &Ctx, account_id: &str, key: &str) -> Result<Option<Order>> {
    store::orders::by_key(&ctx.db, account_id, key).await
}

/// An existing order for a retried key: the same app and plan, or FAILED_PRECONDITION.
fn same_order(existing: Order, new: &Order) -> Result<Order> {
    if existing.app_id != new.app_id || existing.plan_id != new.plan_id {
        return Err(Error::FailedPrecondition(format!(
            "idempotency_key was already used for an order of {} ({}); use a new key for a different order",
            existing.app_id, existing.plan_id
        )));
    }
    Ok(existing)
}

/// Places a new order if the cluster has room for its plan under the ceiling. The check counts
/// the orders being completed, and checkouts are serialized from the check to the insert (an
/// advisory lock on PostgreSQL, the single connection on SQLite), so concurrent checkouts cannot
/// together overshoot. When the provisioner cannot be reached and no snapshot is recent, the
/// order is accepted unchecked (a warning is logged): a sale is not lost to a monitoring gap.
async fn place(
    ctx: &Ctx,
    new: &Order,
    app: &kapal::catalog::App,
    plan: &kapal::catalog::Plan,
) -> Result<Placed> {
    let limits = &AccountLimits {
        trial_plans: if plan.trial_days > 0 {
            app.plans
                .iter()
                .filter(|p| p.trial_days > 0)
                .map(|p| p.id.clone())
                .collect()
        } else {
            Vec::new()
        },
        max_live: i64::try_from(ctx.max_instances_per_account).unwrap_or(i64::MAX),
    };
    // The cluster is read before taking a connection: none is held across a call to a peer.
    let observed = ctx.capacity.observe(&ctx.provisioner).await;
    if observed.capacity.is_none() {
        tracing::warn!(
            order_id = %new.id,
            "the cluster's capacity is unknown (provisioner unreachable, no recent snapshot): accepting the order unchecked"
        );
    }
    let snapshot = observed.capacity.as_deref();
    let catalog = &*ctx.catalog;
    let ceiling = ctx.ceiling_percent;
    let check = |rows: &[(String, String, i64)]| match snapshot {
        Some(cap) => capacity::check(
            cap,
            capacity::kapal_commitments(catalog, rows),
            plan,
            ceiling,
        ),
        None => Ok(()),
    };
    let check: Option<&store::Check<'_>> = snapshot.map(|_| &check as &store::Check<'_>);
    let placed = store::orders::place(&ctx.db, new, limits, check).await;
    match placed {
        Ok(p) => Ok(p),
        Err(e) if e.is_unique_violation() => {
            match find_by_key(ctx, &new.account_id, &new.idempotency_key).await? {
                Some(existing) => Ok(Placed::Existing(Box::new(existing))),
                None => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[tonic::async_trait]
impl OrderService for Orders {
    async fn checkout(&self, req: Request<CheckoutRequest>) -> Result<Response<pb::Order>, Status> {
        let p = auth::customer(&req)?.clone();
        let req = req.into_inner();
        let ctx = &self.0;
        let app_id = kapal::wire::required("app_id", &req.app_id)?;
        let plan_id = kapal::wire::required("plan_id", &req.plan_id)?;
        let app = ctx.catalog.app(app_id).ok_or_else(|| {
            Error::invalid(format!(
                "unknown app {:?}: choose one of {}",
                kapal::wire::truncate(app_id, 64),
                ctx.catalog
                    .apps()
                    .map(|a| a.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let plan = app.plan(plan_id).ok_or_else(|| {
            Error::invalid(format!(
                "unknown plan {:?} for {}: choose one of {}",
                kapal::wire::truncate(plan_id, 64),
                app.id,
                app.plans
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        check_idempotency_key(&req.idempotency_key)?;

        let now = ctx.now();
        let account_id = p.account_id.to_string();
        let new = Order {
            id: Uuid::new_v4().to_string(),
            account_id: account_id.clone(),
            idempotency_key: req.idempotency_key.clone(),
            app_id: app.id.clone(),
            plan_id: plan.id.clone(),
            status: order_status::PENDING.into(),
            failure_reason: String::new(),
            amount: plan.monthly_price_idr,
            currency: "IDR".into(),
            subscription_id: None,
            instance_id: Uuid::new_v4().to_string(),
            created_at: now,
            updated_at: now,
        };
        // A retry of an order placed before is answered as it is, whatever the capacity now.
        let order = match find_by_key(ctx, &account_id, &req.idempotency_key).await? {
            Some(existing) => same_order(existing, &new)?,
            None => {
                ensure_may_check_out(ctx, &account_id).await?;
                match place(ctx, &new, app, plan).await? {
                    Placed::Inserted => {
                        tracing::info!(order_id = %new.id, app = %new.app_id, plan = %new.plan_id, "order accepted");
                        new
                    }
                    Placed::Existing(existing) => same_order(*existing, &new)?,
                    Placed::Refused(message) => {
                        tracing::warn!(app = %new.app_id, plan = %new.plan_id, "checkout refused: {message}");
                        return Err(Error::ResourceExhausted(message).into());
                    }
                    Placed::TrialUsed => {
                        let paid: Vec<&str> = app
                            .plans
                            .iter()
                            .filter(|p| p.trial_days == 0)
                            .map(|p| p.id.as_str())
                            .collect();
                        return Err(Error::FailedPrecondition(format!(
                            "this account has had its free trial of {} (one per account): order a paid plan instead ({}; `kapal app {}` shows them), or change the trial's subscription to a paid plan with `kapal change-plan`",
                            app.id,
                            paid.join(", "),
                            app.id
                        ))
                        .into());
                    }
                    Placed::TooMany(n) => {
                        return Err(Error::ResourceExhausted(format!(
                            "this account has {n} instances and orders in progress, the most one account may have ({}): delete one you no longer need (`kapal delete ID`) before ordering another, or ask the operator to raise the limit",
                            ctx.max_instances_per_account
                        ))
                        .into());
                    }
                }
            }
        };
        kapal::telemetry::record_order(&order.id);
        kapal::telemetry::record_instance(&order.instance_id);
        let order = process(ctx, order).await?;
        if let Some(subscription_id) = &order.subscription_id {
            kapal::telemetry::record_subscription(subscription_id);
        }
        Ok(Response::new(order_to_wire(&order)))
    }

    async fn get_order(
        &self,
        req: Request<GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let p = auth::customer(&req)?;
        let id = kapal::wire::uuid("order_id", &req.get_ref().order_id)?;
        kapal::telemetry::record_order(id);
        let order = load_order(&self.0, &p.account_id.to_string(), &id.to_string())
            .await?
            .ok_or_else(|| Status::not_found(format!("no order {id}")))?;
        Ok(Response::new(order_to_wire(&order)))
    }

    async fn list_orders(
        &self,
        req: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let p = auth::customer(&req)?;
        let limit = kapal::wire::page_size(req.get_ref().page_size);
        let cursor = paging::parse(&req.get_ref().page_token)?;
        // Keyset pages on the (account_id, created_at, id) index.
        let rows = store::orders::list_owned(
            &self.0.db,
            &p.account_id.to_string(),
            cursor.as_ref(),
            limit + 1,
        )
        .await?;
        let (page, next) = paging::split(rows, limit, |o| (o.created_at, o.id.as_str()));
        Ok(Response::new(ListOrdersResponse {
            orders: page.iter().map(order_to_wire).collect(),
            next_page_token: next,
        }))
    }
}

/// Completes orders left pending (a crash, billing down) every `interval`, until `stop`.
/// How the pending-order recovery runs (see [`crate::Config::recovery_interval`]).
pub(crate) struct Recovery {
    pub interval: Duration,
    pub concurrency: usize,
    pub order_timeout: Duration,
}

pub(crate) async fn recover_pending(
    ctx: Ctx,
    recovery: Recovery,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let interval = recovery.interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let cutoff = ctx.now() - chrono::Duration::seconds(5);
        let pending = store::orders::pending_before(&ctx.db, cutoff, 100).await;
        match pending {
            Ok(orders) => {
                // Several at once, each with a timeout: a stuck order (a peer that never
                // answers, a lock) holds one slot for one timeout, never the others or the loop.
                // An order cut off here stays PENDING and is tried again next round; every step
                // of `process` is idempotent per order id.
                let timeout = recovery.order_timeout;
                let ctx = &ctx;
                futures::stream::iter(orders)
                    .map(|order| async move {
                        let id = order.id.clone();
                        match tokio::time::timeout(timeout, process(ctx, order)).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => {
                                tracing::warn!(order_id = %id, error = %e, "could not complete a pending order; will retry");
                            }
                            Err(_) => {
                                tracing::warn!(order_id = %id, timeout_ms = timeout.as_millis(), "a pending order took too long; will retry");
                            }
                        }
                    })
                    .buffer_unordered(recovery.concurrency)
                    .collect::<()>()
                    .await;
            }
            Err(e) => tracing::warn!(error = %e, "listing pending orders failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_checked() {
        assert!(check_idempotency_key("0b9f6c1e-4a5d-4c4e-9a57-6f7e0f1d2c3b").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("short").is_err());
        assert!(check_idempotency_key("has space in it").is_err());
        assert!(check_idempotency_key(&"x".repeat(129)).is_err());
    }
}
