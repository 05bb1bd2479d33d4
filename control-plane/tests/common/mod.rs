//! What the control-plane's test files share: a fake provisioner and a fake billing (real gRPC
//! servers the control-plane calls over sockets), and how the fake provisioner reports statuses.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kapal::auth::InternalKey;
use kapal::proto::internal::v1::billing_service_server::BillingService;
use kapal::proto::internal::v1::instance_state_service_client::InstanceStateServiceClient;
use kapal::proto::internal::v1::provisioner_service_server::ProvisionerService;
use kapal::proto::internal::v1::{
    ApplyInstanceRequest, CreateSubscriptionRequest, CreateSubscriptionResponse,
    GetCapacityRequest, GetCredentialsRequest, GetDiagnosticsRequest, GetInstanceStateRequest,
    GetUsageRequest, InstanceSpec, InstanceState,
};
use kapal::proto::v1::{
    Capacity, Credentials, DesiredState, InstanceDiagnostics, InstanceStatus, InstanceUsage,
    Subscription,
};
use kapal::serve::InternalChannel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// Reports statuses to the control-plane as the real provisioner does: by
/// ReportInstanceState (the one road statuses take), each with a larger sequence than the last.
#[derive(Clone)]
pub struct Reporter {
    client: InstanceStateServiceClient<InternalChannel>,
    sequence: Arc<AtomicU64>,
}

impl Reporter {
    /// Reports to the control-plane at `url` (its InstanceStateService), signed with `key`.
    pub fn new(url: &str, key: &InternalKey) -> Self {
        // Signed as a service, as the provisioner's channel is.
        let channel = kapal::serve::internal_channel(url, key).expect("control-plane url");
        Reporter {
            client: InstanceStateServiceClient::new(channel),
            sequence: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Reports `state` with the next sequence, before the fake answers ApplyInstance (as the
    /// real provisioner reports a changed status before it answers).
    pub async fn report(&self, mut state: InstanceState) -> Result<(), Status> {
        state.sequence = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        self.client.clone().report_instance_state(state).await?;
        Ok(())
    }
}

/// A fake provisioner, as both test files use it: records every spec it is handed, reports and
/// answers the status the spec asks for, counts credential reads, reports the cluster capacity
/// the test sets (none: UNAVAILABLE, as when the API server is down) and answers usage with
/// fixed figures. The real provisioner on the local cluster is tested in `kapal-tests`.
#[derive(Clone)]
pub struct FakeProvisioner {
    pub specs: Arc<Mutex<Vec<InstanceSpec>>>,
    pub credential_reads: Arc<AtomicUsize>,
    pub capacity: Arc<Mutex<Option<Capacity>>>,
    reporter: Reporter,
}

pub const MIB: i64 = 1024 * 1024;

impl FakeProvisioner {
    /// Reporting to the control-plane at `cp_url`, with `capacity` as the cluster's.
    pub fn new(cp_url: &str, key: &InternalKey, capacity: Option<Capacity>) -> Self {
        FakeProvisioner {
            specs: Arc::default(),
            credential_reads: Arc::default(),
            capacity: Arc::new(Mutex::new(capacity)),
            reporter: Reporter::new(cp_url, key),
        }
    }
}

#[tonic::async_trait]
impl ProvisionerService for FakeProvisioner {
    async fn apply_instance(
        &self,
        req: Request<ApplyInstanceRequest>,
    ) -> Result<Response<InstanceState>, Status> {
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let (status, reason) = match DesiredState::try_from(spec.desired_state) {
            Ok(DesiredState::Running) => (InstanceStatus::Ready, "Running"),
            Ok(DesiredState::Stopped) if spec.suspended_by_billing => {
                (InstanceStatus::Suspended, "Suspended by billing")
            }
            Ok(DesiredState::Stopped) => (InstanceStatus::Suspended, "Stopped by the customer"),
            Ok(DesiredState::Deleted) => (InstanceStatus::Deleted, "Deleted"),
            _ => return Err(Status::invalid_argument("desired_state is required")),
        };
        let state = InstanceState {
            instance_id: spec.instance_id.clone(),
            status: status as i32,
            reason: reason.into(),
            observed_at: None,
            sequence: 0,
        };
        // Recorded as it arrives (the order the control-plane pushed in), then reported.
        self.specs.lock().expect("lock").push(spec);
        self.reporter.report(state.clone()).await?;
        Ok(Response::new(state))
    }

    async fn get_instance_state(
        &self,
        _: Request<GetInstanceStateRequest>,
    ) -> Result<Response<InstanceState>, Status> {
        Err(Status::not_found("the fake provisioner keeps no state"))
    }

    /// Always answers (`pw-<instance id>`), and counts, so tests see when the control-plane asks.
    async fn get_credentials(
        &self,
        req: Request<GetCredentialsRequest>,
    ) -> Result<Response<Credentials>, Status> {
        self.credential_reads.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(Credentials {
            username: "admin".into(),
            password: format!("pw-{}", req.into_inner().instance_id),
            login_url: "https://example.test/login".into(),
        }))
    }

    async fn get_capacity(
        &self,
        _: Request<GetCapacityRequest>,
    ) -> Result<Response<Capacity>, Status> {
        self.capacity
            .lock()
            .expect("lock")
            .clone()
            .map(Response::new)
            .ok_or_else(|| Status::unavailable("the API server is down"))
    }

    async fn get_usage(
        &self,
        req: Request<GetUsageRequest>,
    ) -> Result<Response<InstanceUsage>, Status> {
        Ok(Response::new(InstanceUsage {
            instance_id: req.into_inner().instance_id,
            metrics_available: true,
            metrics_note: String::new(),
            cpu_millis: Some(42),
            memory_bytes: Some(100 * MIB),
            cpu_limit_millis: 200,
            memory_limit_bytes: 400 * MIB,
            storage_capacity_bytes: 2 * 1024 * MIB,
            storage_used_bytes: None,
            observed_at: None,
        }))
    }

    async fn get_diagnostics(
        &self,
        _: Request<GetDiagnosticsRequest>,
    ) -> Result<Response<InstanceDiagnostics>, Status> {
        Err(Status::unavailable("the fake provisioner has no cluster"))
    }
}

/// A fake billing: one subscription per order (derived from the order id, so the same on every
/// retry and computable by the test); or, as a test sets it, down, or stuck on some orders (it
/// never answers them).
#[derive(Clone, Default)]
pub struct FakeBilling(pub Arc<Mutex<BillingMode>>);

#[derive(Clone, Default)]
pub enum BillingMode {
    #[default]
    Answers,
    Unavailable,
    StuckOn(Vec<String>),
}

impl FakeBilling {
    /// The subscription this fake makes for `order_id`.
    pub fn subscription_of(order_id: &Uuid) -> String {
        Uuid::from_u128(order_id.as_u128().rotate_left(64)).to_string()
    }
}

#[tonic::async_trait]
impl BillingService for FakeBilling {
    async fn create_subscription(
        &self,
        req: Request<CreateSubscriptionRequest>,
    ) -> Result<Response<CreateSubscriptionResponse>, Status> {
        let req = req.into_inner();
        let mode = self.0.lock().expect("lock").clone();
        match mode {
            BillingMode::Answers => {}
            BillingMode::Unavailable => return Err(Status::unavailable("billing is down")),
            BillingMode::StuckOn(orders) if orders.contains(&req.order_id) => {
                std::future::pending::<()>().await;
            }
            BillingMode::StuckOn(_) => {}
        }
        let order_id = Uuid::parse_str(&req.order_id)
            .map_err(|_| Status::invalid_argument("order_id must be a UUID"))?;
        Ok(Response::new(CreateSubscriptionResponse {
            subscription: Some(Subscription {
                id: FakeBilling::subscription_of(&order_id),
                app_id: req.app_id,
                plan_id: req.plan_id,
                ..Default::default()
            }),
            invoice: None,
        }))
    }
}
