//! `kapal.internal.v1.ProvisionerService`: for Kapal's own services only.

use std::sync::Arc;

use kapal::proto::internal::v1::provisioner_service_server::ProvisionerService;
use kapal::proto::internal::v1::{
    ApplyInstanceRequest, GetCapacityRequest, GetCredentialsRequest, GetDiagnosticsRequest,
    GetInstanceStateRequest, GetUsageRequest, InstanceState,
};
use kapal::proto::v1::{Capacity, Credentials, InstanceDiagnostics, InstanceUsage};
use tonic::{Request, Response, Status};

use crate::controller::Controller;

pub struct Provisioner {
    controller: Arc<Controller>,
}

impl Provisioner {
    pub fn new(controller: Arc<Controller>) -> Provisioner {
        Provisioner { controller }
    }
}

#[tonic::async_trait]
impl ProvisionerService for Provisioner {
    async fn apply_instance(
        &self,
        req: Request<ApplyInstanceRequest>,
    ) -> Result<Response<InstanceState>, Status> {
        kapal::auth::service(&req)?;
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        kapal::telemetry::record_instance(&spec.instance_id);
        Ok(Response::new(self.controller.apply(&spec).await?))
    }

    async fn get_instance_state(
        &self,
        req: Request<GetInstanceStateRequest>,
    ) -> Result<Response<InstanceState>, Status> {
        kapal::auth::service(&req)?;
        kapal::telemetry::record_instance(&req.get_ref().instance_id);
        Ok(Response::new(
            self.controller
                .instance_state(&req.get_ref().instance_id)
                .await?,
        ))
    }

    async fn get_credentials(
        &self,
        req: Request<GetCredentialsRequest>,
    ) -> Result<Response<Credentials>, Status> {
        kapal::auth::service(&req)?;
        kapal::telemetry::record_instance(&req.get_ref().instance_id);
        Ok(Response::new(
            self.controller
                .credentials(&req.get_ref().instance_id)
                .await?,
        ))
    }

    async fn get_capacity(
        &self,
        req: Request<GetCapacityRequest>,
    ) -> Result<Response<Capacity>, Status> {
        kapal::auth::service(&req)?;
        Ok(Response::new(self.controller.capacity().await?))
    }

    async fn get_usage(
        &self,
        req: Request<GetUsageRequest>,
    ) -> Result<Response<InstanceUsage>, Status> {
        kapal::auth::service(&req)?;
        kapal::telemetry::record_instance(&req.get_ref().instance_id);
        Ok(Response::new(
            self.controller.usage(&req.get_ref().instance_id).await?,
        ))
    }

    async fn get_diagnostics(
        &self,
        req: Request<GetDiagnosticsRequest>,
    ) -> Result<Response<InstanceDiagnostics>, Status> {
        kapal::auth::service(&req)?;
        let r = req.get_ref();
        kapal::telemetry::record_instance(&r.instance_id);
        Ok(Response::new(
            self.controller
                .diagnostics(&r.instance_id, r.log_lines)
                .await?,
        ))
    }
}
