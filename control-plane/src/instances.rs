//! `kapal.v1.InstanceService`: a customer's instances, their status and the actions on them.
//!
//! The control-plane keeps the desired state (running, stopped, deleted) and the status history;
//! the provisioner converges the cluster and reports the status it observes.

use std::pin::Pin;

use futures::Stream;
use kapal::auth;
use kapal::paging;
use kapal::proto::v1::instance_service_server::InstanceService;
use kapal::proto::v1::{
    self as pb, GetInstanceDiagnosticsRequest, GetInstanceRequest, GetInstanceUsageRequest,
    InstanceActionRequest, InstanceDiagnostics, InstanceEvent, InstanceUsage,
    ListInstanceEventsRequest, ListInstanceEventsResponse, ListInstancesRequest,
    ListInstancesResponse, WatchInstanceRequest,
};
use kapal::wire::timestamp;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::lifecycle::{self, Action, Actor, instance_to_wire, owned};
use crate::models::Instance;
use crate::{Ctx, store};

pub struct Instances {
    pub ctx: Ctx,
    pub stop: tokio::sync::watch::Receiver<bool>,
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
        let updated = lifecycle::act(
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
        // Keyset pages on the (account_id, created_at, id) index.
        let rows = store::instances::list_owned(
            &self.ctx.db,
            &p.account_id.to_string(),
            cursor.as_ref(),
            limit + 1,
        )
        .await?;
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
        if lifecycle::effective(&instance).desired != pb::DesiredState::Deleted {
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
                let current = match store::instances::get(&ctx.db, &id).await {
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
        Ok(Response::new(lifecycle::usage(&self.ctx, &id).await?))
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
