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
        Ok(Response::new(ListDesiredInstancesResponse {
            instances: lock(&self.desired).clone(),
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
