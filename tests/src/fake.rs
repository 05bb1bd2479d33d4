//! A stand-in for the control-plane, for tests of the provisioner alone: a real gRPC service
//! (serve it on [`free_listener`]) that records the provisioner's reports and serves a desired
//! list the test sets. Tests across services use the real control-plane ([`crate::app::TestApp`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use kapal::proto::internal::v1::instance_state_service_server::InstanceStateService;
use kapal::proto::internal::v1::{
    InstanceSpec, InstanceState, ListDesiredInstancesRequest, ListDesiredInstancesResponse,
    ReportInstanceStateResponse,
};
use kapal::proto::v1::InstanceStatus;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::cluster::wait_for;

#[derive(Clone, Default)]
pub struct ControlPlane {
    /// Every report, as it arrived (statuses reach the real control-plane by report only).
    pub reports: Arc<Mutex<Vec<InstanceState>>>,
    /// What ListDesiredInstances answers.
    pub desired: Arc<Mutex<Vec<InstanceSpec>>>,
    /// Most instances per ListDesiredInstances page, below what the caller asks for (`None`:
    /// the caller's page size).
    pub page_limit: Arc<Mutex<Option<usize>>>,
    /// Every ListDesiredInstances request as it arrived: its metadata (the signed principal, as
    /// anyone between the services could capture it) and its page token.
    pub list_calls: Arc<Mutex<Vec<(tonic::metadata::MetadataMap, String)>>>,
}

#[tonic::async_trait]
impl InstanceStateService for ControlPlane {
    async fn report_instance_state(
        &self,
        req: Request<InstanceState>,
    ) -> Result<Response<ReportInstanceStateResponse>, Status> {
        kapal::auth::service(&req)?;
        lock(&self.reports).push(req.into_inner());
        Ok(Response::new(ReportInstanceStateResponse {}))
    }

    async fn list_desired_instances(
        &self,
        req: Request<ListDesiredInstancesRequest>,
    ) -> Result<Response<ListDesiredInstancesResponse>, Status> {
        kapal::auth::service(&req)?;
        lock(&self.list_calls).push((req.metadata().clone(), req.get_ref().page_token.clone()));
        let req = req.into_inner();
        let all = lock(&self.desired).clone();
        if req.page_size == 0 {
            return Ok(Response::new(ListDesiredInstancesResponse {
                instances: all,
                next_page_token: String::new(),
            }));
        }
        // The token is the offset of the next page (this fake's desired list only grows or is
        // replaced between tests' steps).
        let start: usize = match req.page_token.as_str() {
            "" => 0,
            t => t
                .parse()
                .map_err(|_| Status::invalid_argument("bad page_token"))?,
        };
        let size = (req.page_size as usize).min(lock(&self.page_limit).unwrap_or(usize::MAX));
        let end = start.saturating_add(size).min(all.len());
        let instances = all.get(start..end).unwrap_or_default().to_vec();
        let next_page_token = if end < all.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListDesiredInstancesResponse {
            instances,
            next_page_token,
        }))
    }
}

/// The guarded value, even if a panicking test poisoned the lock.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A listener on a free loopback port and its `http://` endpoint.
pub async fn free_listener() -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    Ok((listener, endpoint))
}

impl ControlPlane {
    /// Statuses reported for `id`, as they arrived.
    pub fn reported(&self, id: &str) -> Vec<(i32, String)> {
        lock(&self.reports)
            .iter()
            .filter(|r| r.instance_id == id)
            .map(|r| (r.status, r.reason.clone()))
            .collect()
    }

    /// What the control-plane held for `id` over time: its reports in the provisioner's order
    /// (their sequence), with the sequences.
    pub fn seen(&self, id: &str) -> Vec<(u64, (i32, String))> {
        let mut all: Vec<(u64, (i32, String))> = lock(&self.reports)
            .iter()
            .filter(|r| r.instance_id == id)
            .map(|r| (r.sequence, (r.status, r.reason.clone())))
            .collect();
        all.sort_by_key(|(sequence, _)| *sequence);
        all
    }

    /// Waits until `status` was reported for `id`.
    pub async fn wait_reported(
        &self,
        id: &str,
        status: InstanceStatus,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_for(
            &format!("{id} to be reported {}", status.as_str_name()),
            timeout,
            || async {
                Ok(self
                    .reported(id)
                    .iter()
                    .any(|(s, _)| *s == status as i32)
                    .then_some(()))
            },
        )
        .await
        .with_context(|| format!("reported so far: {:?}", self.seen(id)))
    }
}
