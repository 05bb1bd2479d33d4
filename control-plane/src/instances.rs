//! `kapal.v1.InstanceService`: a customer's instances, their status and the actions on them.
//!
//! The control-plane keeps the desired state (running, stopped, deleted) and the status history;
//! the provisioner converges the cluster and reports the status it observes.

use std::pin::Pin;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures::Stream;
use kapal::auth;
use kapal::db::DbConn;
use kapal::paging;
use kapal::proto::internal::v1::{ApplyInstanceRequest, InstanceSpec};
use kapal::proto::v1::instance_service_server::InstanceService;
use kapal::proto::v1::{
    self as pb, GetInstanceDiagnosticsRequest, GetInstanceRequest, GetInstanceUsageRequest,
    InstanceActionRequest, InstanceDiagnostics, InstanceEvent, InstanceUsage,
    ListInstanceEventsRequest, ListInstanceEventsResponse, ListInstancesRequest,
    ListInstancesResponse, WatchInstanceRequest,
};
use kapal::wire::{opt_timestamp, timestamp};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::Ctx;
use crate::error::{Error, Result};
use crate::models::{self, Account, Instance, entitlement, instance_state};
use crate::schema::{accounts, instance_events, instances};

pub struct Instances {
    pub ctx: Ctx,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

pub(crate) fn instance_to_wire(i: &Instance) -> pb::Instance {
    pb::Instance {
        id: i.id.clone(),
        app_id: i.app_id.clone(),
        plan_id: i.plan_id.clone(),
        status: instance_state::status_to_wire(&i.status) as i32,
        status_reason: i.status_reason.clone(),
        desired_state: instance_state::desired_to_wire(&i.desired_state) as i32,
        url: format!("https://{}", i.hostname),
        hostname: i.hostname.clone(),
        subscription_id: i.subscription_id.clone().unwrap_or_default(),
        order_id: i.order_id.clone(),
        credentials: None,
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
        ready_at: opt_timestamp(i.ready_at),
        suspended_by_billing: crate::entitlements::suspended_by_billing(i),
        data_deleted_after: opt_timestamp(i.data_deleted_after),
    }
}

/// The provisioner's view of an instance: its effective desired state (the customer's wish
/// within what billing allows, see [`crate::entitlements::effective`]).
pub(crate) fn spec_of(i: &Instance, customer_id: &str) -> InstanceSpec {
    let effective = crate::entitlements::effective(i);
    InstanceSpec {
        instance_id: i.id.clone(),
        account_id: i.account_id.clone(),
        customer_id: customer_id.to_string(),
        app_id: i.app_id.clone(),
        plan_id: i.plan_id.clone(),
        hostname: i.hostname.clone(),
        namespace: i.namespace.clone(),
        desired_state: effective.desired as i32,
        restart_generation: u64::try_from(i.restart_generation).unwrap_or(0),
        delete_data_after: opt_timestamp(effective.delete_data_after),
        suspended_by_billing: effective.suspended_by_billing,
    }
}

/// Asks the provisioner to converge `instance`. Failures are logged, not returned: the
/// provisioner's periodic resync lists desired instances and converges them anyway.
///
/// The answer only acknowledges the spec: the status reaches the control-plane as the
/// provisioner's report (made before it answers when the status changed), never from here.
pub(crate) async fn push_to_provisioner(ctx: &Ctx, instance: &Instance, customer_id: &str) {
    let request = ApplyInstanceRequest {
        spec: Some(spec_of(instance, customer_id)),
    };
    if let Err(s) = ctx.provisioner.clone().apply_instance(request).await {
        tracing::warn!(
            instance_id = %instance.id, code = ?s.code(), message = s.message(),
            "provisioner unreachable; its resync will converge the instance"
        );
    }
}

/// One of the caller's instances, or NOT_FOUND.
async fn owned(ctx: &Ctx, account_id: &str, id: &str) -> Result<Instance> {
    let mut conn = ctx.db.read().await?;
    owned_on(&mut conn, account_id, id).await
}

/// [`owned`] on a given connection (the writer's, to read what is about to be changed).
async fn owned_on(conn: &mut DbConn<'_>, account_id: &str, id: &str) -> Result<Instance> {
    kapal::db!(conn, |c| instances::table
        .filter(instances::id.eq(id))
        .filter(instances::account_id.eq(account_id))
        .select(Instance::as_select())
        .first(c)
        .await
        .optional())?
    .ok_or_else(|| Error::not_found(format!("no instance {id}")))
}

pub(crate) async fn load(ctx: &Ctx, id: &str) -> Result<Option<Instance>> {
    let mut conn = ctx.db.read().await?;
    Ok(kapal::db!(&mut conn, |c| instances::table
        .find(id)
        .select(Instance::as_select())
        .first(c)
        .await
        .optional())?)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Restart,
    Stop,
    Start,
    Delete,
}

/// Who acts on an instance.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Actor<'a> {
    /// Its owner, through InstanceService.
    Owner,
    /// An operator (OperatorService), with the reason they gave (shown in the instance's
    /// history) and whether a start may go over the capacity ceiling.
    Operator {
        reason: &'a str,
        override_capacity: bool,
    },
}

impl Instances {
    async fn act(
        &self,
        req: Request<InstanceActionRequest>,
        action: Action,
    ) -> Result<Response<pb::Instance>, Status> {
        let p = auth::customer(&req)?.clone();
        let id = kapal::wire::uuid("instance_id", &req.get_ref().instance_id)?.to_string();
        kapal::telemetry::record_instance(&id);
        let account_id = p.account_id.to_string();
        let updated = act(
            &self.ctx,
            (&account_id, &p.customer_id),
            &id,
            action,
            Actor::Owner,
        )
        .await?;
        Ok(Response::new(instance_to_wire(&updated)))
    }
}

/// What an operator's action says in the instance's history.
fn operator_history(action: Action, reason: &str, override_capacity: bool) -> String {
    let done = match action {
        Action::Restart => "Restarted",
        Action::Stop => "Stopped",
        Action::Start if override_capacity => "Started over the capacity ceiling",
        Action::Start => "Started",
        Action::Delete => "Deleted",
    };
    format!("{done} by Kapal support: {reason}")
}

/// Restarts, stops, starts or deletes the instance `id` of `account_id` (whose customer id is
/// `customer_id`) for `actor`: the same rules for its owner and for operators (deleted and
/// expired instances are not changed, billing's holds are kept, a start is checked against the
/// capacity ceiling unless an operator overrides it). An operator's action is also written to
/// the instance's history. Returns the instance after the change.
pub(crate) async fn act(
    ctx: &Ctx,
    (account_id, customer_id): (&str, &str),
    id: &str,
    action: Action,
    actor: Actor<'_>,
) -> Result<Instance, Status> {
    let account_id = account_id.to_string();
    let id = id.to_string();
    // A suspended account's own actions are refused (the gateway refuses its calls too, once
    // its identity cache has seen the suspension).
    if matches!(actor, Actor::Owner)
        && let Some(s) = crate::suspensions::of(ctx, &account_id).await?
    {
        return Err(crate::suspensions::refusal(&s));
    }
    {
        let override_capacity = matches!(
            actor,
            Actor::Operator {
                override_capacity: true,
                ..
            }
        );
        // Starting a stopped instance commits its plan again: the cluster is read first (no
        // connection is held across a call to a peer), checked below as a checkout would be.
        let capacity = match action {
            Action::Start if !override_capacity => {
                ctx.capacity.observe(&ctx.provisioner).await.capacity
            }
            _ => None,
        };
        // Read on the connection that writes: what is checked below is what gets changed.
        let mut conn = ctx.db.get().await.map_err(Error::from)?;
        let current = owned_on(&mut conn, &account_id, &id).await?;
        if current.desired_state == instance_state::DELETED {
            return Err(Status::failed_precondition("the instance has been deleted"));
        }
        if current.entitlement == entitlement::EXPIRED {
            return Err(crate::entitlements::expired_refusal(&current).into());
        }
        // Billing holds the instance: it runs again once the subscription is paid. Stopping and
        // deleting stay the customer's to do.
        if matches!(action, Action::Start | Action::Restart)
            && let Some(refusal) = crate::entitlements::start_refusal(&current)
        {
            return Err(refusal.into());
        }
        let now = ctx.now();
        // An instance whose subscription expired meanwhile is not the customer's to change.
        let target = instances::table
            .filter(instances::id.eq(&id))
            .filter(instances::account_id.eq(&account_id))
            .filter(instances::entitlement.ne(entitlement::EXPIRED));
        let updated = match action {
            Action::Restart => {
                if current.desired_state != instance_state::RUNNING {
                    return Err(Status::failed_precondition(
                        "the instance is stopped: start it instead of restarting it",
                    ));
                }
                kapal::db!(&mut conn, |c| diesel::update(target)
                    .set((
                        instances::restart_generation.eq(instances::restart_generation + 1),
                        instances::updated_at.eq(now)
                    ))
                    .execute(c)
                    .await)
                .map_err(Error::from)?
            }
            Action::Delete => {
                // The workloads go now; the data after the retention period.
                let data_deleted_after = now + ctx.data_retention;
                kapal::db!(&mut conn, |c| diesel::update(target)
                    .set((
                        instances::desired_state.eq(instance_state::DELETED),
                        instances::data_deleted_after.eq(data_deleted_after),
                        instances::updated_at.eq(now)
                    ))
                    .execute(c)
                    .await)
                .map_err(Error::from)?
            }
            Action::Start if current.desired_state != instance_state::RUNNING => {
                let plan = ctx
                    .catalog
                    .app(&current.app_id)
                    .and_then(|a| a.plan(&current.plan_id));
                match start_within_capacity(
                    &mut conn,
                    (&id, &account_id),
                    capacity.as_deref(),
                    ctx,
                    plan,
                    now,
                )
                .await?
                {
                    Ok(n) => n,
                    Err(message) => {
                        tracing::warn!(instance_id = %id, "start refused: {message}");
                        return Err(Error::ResourceExhausted(message).into());
                    }
                }
            }
            Action::Stop | Action::Start => {
                let desired = match action {
                    Action::Stop => instance_state::STOPPED,
                    _ => instance_state::RUNNING,
                };
                kapal::db!(&mut conn, |c| diesel::update(target)
                    .set((
                        instances::desired_state.eq(desired),
                        instances::updated_at.eq(now)
                    ))
                    .execute(c)
                    .await)
                .map_err(Error::from)?
            }
        };
        drop(conn);
        if updated == 0 {
            // Billing expired the subscription between the read and the update.
            let now_current = owned(ctx, &account_id, &id).await?;
            return Err(crate::entitlements::expired_refusal(&now_current).into());
        }
        if let Actor::Operator {
            reason,
            override_capacity,
        } = actor
        {
            let event = models::InstanceEvent {
                id: uuid::Uuid::now_v7().to_string(),
                instance_id: id.clone(),
                status: current.status.clone(),
                reason: operator_history(action, reason, override_capacity),
                at: now,
                actor: crate::models::OPERATOR.into(),
            };
            let mut conn = ctx.db.get().await.map_err(Error::from)?;
            kapal::db!(&mut conn, |c| diesel::insert_into(instance_events::table)
                .values(&event)
                .execute(c)
                .await)
            .map_err(Error::from)?;
        }
        let _ = ctx.changes.send(id.clone());
        if matches!(action, Action::Delete) {
            ctx.credentials.evict(&id);
        }
        let updated = owned(ctx, &account_id, &id).await?;
        push_to_provisioner(ctx, &updated, customer_id).await;
        Ok(owned(ctx, &account_id, &id).await?)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<InstanceEvent, Status>> + Send>>;

#[tonic::async_trait]
impl InstanceService for Instances {
    async fn list_instances(
        &self,
        req: Request<ListInstancesRequest>,
    ) -> Result<Response<ListInstancesResponse>, Status> {
        let p = auth::customer(&req)?;
        let limit = kapal::wire::page_size(req.get_ref().page_size);
        let cursor = paging::parse(&req.get_ref().page_token)?;
        let mut conn = self.ctx.db.read().await.map_err(Error::from)?;
        // Keyset pages on the (account_id, created_at, id) index.
        let rows: Vec<Instance> = kapal::db!(&mut conn, |c| {
            let mut q = instances::table
                .filter(instances::account_id.eq(p.account_id.to_string()))
                .order((instances::created_at.desc(), instances::id.desc()))
                .limit(limit + 1)
                .select(Instance::as_select())
                .into_boxed();
            if let Some(cur) = &cursor {
                q = q.filter(
                    instances::created_at.lt(cur.at).or(instances::created_at
                        .eq(cur.at)
                        .and(instances::id.lt(cur.id.clone()))),
                );
            }
            q.load(c).await
        })
        .map_err(Error::from)?;
        drop(conn);
        let (page, next) = paging::split(rows, limit, |i| (i.created_at, i.id.as_str()));
        Ok(Response::new(ListInstancesResponse {
            instances: page.iter().map(instance_to_wire).collect(),
            next_page_token: next,
        }))
    }

    async fn get_instance(
        &self,
        req: Request<GetInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let p = auth::customer(&req)?;
        let id = kapal::wire::uuid("instance_id", &req.get_ref().instance_id)?.to_string();
        kapal::telemetry::record_instance(&id);
        let instance = owned(&self.ctx, &p.account_id.to_string(), &id).await?;
        let mut wire = instance_to_wire(&instance);
        // Not for an instance deleted by its customer or because its subscription expired.
        if crate::entitlements::effective(&instance).desired != pb::DesiredState::Deleted {
            // Credentials live only in the cluster (a Kubernetes Secret), read through the
            // provisioner once, then from memory.
            wire.credentials = crate::credentials::read(&self.ctx, &id, true).await;
        }
        Ok(Response::new(wire))
    }

    type WatchInstanceStream = EventStream;

    async fn watch_instance(
        &self,
        req: Request<WatchInstanceRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let p = auth::customer(&req)?;
        let id = kapal::wire::uuid("instance_id", &req.get_ref().instance_id)?.to_string();
        kapal::telemetry::record_instance(&id);
        let account_id = p.account_id.to_string();
        // Listening before the first read: a change committed right after it is not missed.
        let mut changes = self.ctx.changes.subscribe();
        let first = owned(&self.ctx, &account_id, &id).await?;
        // Held by the stream's task: the slot is free again when the stream ends.
        let slot = self.ctx.watches.acquire(&account_id).ok_or_else(|| {
            Error::ResourceExhausted(format!(
                "this account already watches {} instances at once: close a watch (e.g. another browser tab or `kapal watch`) and try again",
                self.ctx.watches.limit()
            ))
        })?;
        let ctx = self.ctx.clone();
        let mut stop = self.stop.clone();
        let stream = async_stream(move |tx| async move {
            let _slot = slot;
            let key = |i: &Instance| {
                (
                    i.status.clone(),
                    i.status_reason.clone(),
                    i.desired_state.clone(),
                    i.restart_generation,
                    i.entitlement.clone(),
                    i.data_deleted_after,
                )
            };
            let mut last = key(&first);
            let event = |i: &Instance| InstanceEvent {
                instance: Some(instance_to_wire(i)),
                at: Some(timestamp(i.updated_at)),
            };
            if tx.send(Ok(event(&first))).await.is_err() {
                return;
            }
            if first.status == "deleted" {
                return;
            }
            loop {
                // Wake only on a change of this instance: made here, or by another replica
                // (found by this process's one change poller, see `crate::changes`). Missed
                // notices (lagged) read the instance again.
                tokio::select! {
                    r = changes.recv() => match r {
                        Ok(changed) if changed != id => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    _ = stop.changed() => return,
                    _ = tx.closed() => return,
                }
                let current = match load(&ctx, &id).await {
                    Ok(Some(i)) => i,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                if key(&current) != last {
                    last = key(&current);
                    if tx.send(Ok(event(&current))).await.is_err() {
                        return;
                    }
                }
                if current.status == "deleted" {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn restart_instance(
        &self,
        req: Request<InstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        self.act(req, Action::Restart).await
    }

    async fn stop_instance(
        &self,
        req: Request<InstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        self.act(req, Action::Stop).await
    }

    async fn start_instance(
        &self,
        req: Request<InstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        self.act(req, Action::Start).await
    }

    async fn delete_instance(
        &self,
        req: Request<InstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        self.act(req, Action::Delete).await
    }

    async fn get_instance_usage(
        &self,
        req: Request<GetInstanceUsageRequest>,
    ) -> Result<Response<InstanceUsage>, Status> {
        let p = auth::customer(&req)?;
        let id = kapal::wire::uuid("instance_id", &req.get_ref().instance_id)?.to_string();
        kapal::telemetry::record_instance(&id);
        // Another customer's instance is NOT_FOUND, before the cluster is asked.
        owned(&self.ctx, &p.account_id.to_string(), &id).await?;
        Ok(Response::new(crate::admin::usage(&self.ctx, &id).await?))
    }

    async fn list_instance_events(
        &self,
        req: Request<ListInstanceEventsRequest>,
    ) -> Result<Response<ListInstanceEventsResponse>, Status> {
        let p = auth::customer(&req)?;
        let id = kapal::wire::uuid("instance_id", &req.get_ref().instance_id)?.to_string();
        kapal::telemetry::record_instance(&id);
        owned(&self.ctx, &p.account_id.to_string(), &id).await?;
        Ok(Response::new(ListInstanceEventsResponse {
            events: crate::diagnostics::history(&self.ctx, &id).await?,
        }))
    }

    async fn get_instance_diagnostics(
        &self,
        req: Request<GetInstanceDiagnosticsRequest>,
    ) -> Result<Response<InstanceDiagnostics>, Status> {
        let p = auth::customer(&req)?;
        let id = kapal::wire::uuid("instance_id", &req.get_ref().instance_id)?.to_string();
        kapal::telemetry::record_instance(&id);
        // Another customer's instance is NOT_FOUND, before the cluster is asked.
        owned(&self.ctx, &p.account_id.to_string(), &id).await?;
        Ok(Response::new(
            crate::diagnostics::diagnostics(&self.ctx, &id, req.get_ref().log_lines, false).await?,
        ))
    }
}

/// Sets a stopped instance running if the cluster has room for its plan under the ceiling,
/// serialized with checkouts (the same advisory lock on PostgreSQL, the single writer on
/// SQLite) so a start and a checkout cannot together overshoot. Unknown capacity (provisioner
/// unreachable, no recent snapshot) or a plan gone from the catalog: started unchecked, as a
/// checkout would be accepted. `Ok(Err(message))`: refused, nothing changed.
async fn start_within_capacity(
    conn: &mut DbConn<'_>,
    (id, account_id): (&str, &str),
    capacity: Option<&kapal::proto::v1::Capacity>,
    ctx: &Ctx,
    plan: Option<&kapal::catalog::Plan>,
    now: chrono::NaiveDateTime,
) -> Result<std::result::Result<usize, String>> {
    use kapal::db::DbError;
    let catalog = &*ctx.catalog;
    let ceiling = ctx.ceiling_percent;
    macro_rules! check_and_start {
        ($c:ident) => {{
            if let (Some(cap), Some(plan)) = (capacity, plan) {
                let rows = crate::capacity::commitment_rows!($c);
                let kapal = crate::capacity::kapal_commitments(catalog, &rows);
                if let Err(message) = crate::capacity::check(cap, kapal, plan, ceiling) {
                    return Ok::<_, DbError>(Err(message));
                }
            }
            // As in `act`: an instance whose subscription expired meanwhile is not changed.
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
            use diesel_async::AsyncConnection as _;
            c.transaction(async |c| {
                diesel::sql_query(format!(
                    "SELECT pg_advisory_xact_lock({})",
                    crate::orders::CHECKOUT_LOCK_KEY
                ))
                .execute(c)
                .await?;
                check_and_start!(c)
            })
            .await
        }
        DbConn::Sqlite(c) => {
            use diesel_async::AsyncConnection as _;
            c.transaction(async |c| check_and_start!(c)).await
        }
    };
    Ok(result?)
}

/// How many WatchInstance streams each account holds; [`Watches::acquire`] hands out a slot
/// that is given back when dropped.
pub(crate) struct Watches {
    limit: usize,
    live: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Watches {
    pub(crate) fn new(limit: usize) -> Watches {
        Watches {
            limit,
            live: std::sync::Mutex::default(),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more stream of `account_id`, or `None` at the limit.
    pub(crate) fn acquire(self: &std::sync::Arc<Self>, account_id: &str) -> Option<WatchSlot> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let n = live.entry(account_id.to_string()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(WatchSlot {
            watches: self.clone(),
            account_id: account_id.to_string(),
        })
    }
}

/// One live stream of an account; dropping it frees the slot.
pub(crate) struct WatchSlot {
    watches: std::sync::Arc<Watches>,
    account_id: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut live = self.watches.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = live.get_mut(&self.account_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                live.remove(&self.account_id);
            }
        }
    }
}

/// A stream fed by a task through a small channel.
fn async_stream<F, Fut>(body: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<InstanceEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Every instance the provisioner must keep, with its owner's customer id: those meant to run
/// or be stopped, deleted ones not yet reported gone, and deleted ones whose data is still kept
/// (so the provisioner's sweep of unknown namespaces does not remove retained data early).
/// The desired instances, in the order of their ids: those after `after` (a page token's id),
/// at most `limit` of them; `None`, `None`: all of them.
pub(crate) async fn desired(
    ctx: &Ctx,
    after: Option<&str>,
    limit: Option<i64>,
) -> Result<Vec<InstanceSpec>> {
    let now = ctx.now();
    let mut conn = ctx.db.get().await?;
    let after = after.unwrap_or("").to_string();
    let limit = limit.unwrap_or(i64::MAX);
    let rows: Vec<(Instance, Account)> = kapal::db!(&mut conn, |c| instances::table
        .inner_join(accounts::table)
        .filter(instances::id.gt(&after))
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
        .await)?;
    Ok(rows
        .iter()
        .map(|(i, a)| spec_of(i, &a.customer_id))
        .collect())
}
