//! Internal services: identity for the gateway, instance state for the provisioner.

use kapal::auth;
use kapal::proto::internal::v1::identity_service_server::IdentityService;
use kapal::proto::internal::v1::instance_state_service_server::InstanceStateService;
use kapal::proto::internal::v1::{
    self as ipb, AuthenticateRequest, InstanceSpec, ListDesiredInstancesRequest,
    ListDesiredInstancesResponse, ReportInstanceStateResponse,
};
use kapal::proto::v1::InstanceStatus;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::models::instance_state;
use crate::store::instances::Recorded;
use crate::{Ctx, lifecycle, sessions, store};

pub struct Identity(pub Ctx);

#[tonic::async_trait]
impl IdentityService for Identity {
    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<ipb::Principal>, Status> {
        auth::service(&req)?;
        let (p, expires_at, scope) = sessions::authenticate(&self.0, &req.get_ref().token).await?;
        // A suspended account's calls are refused, with why (the gateway passes this on).
        if let Some(s) = crate::suspensions::of(&self.0, &p.account_id.to_string()).await? {
            return Err(crate::suspensions::refusal(&s));
        }
        let role = match p.role {
            auth::Role::Admin => kapal::proto::v1::Role::Admin,
            _ => kapal::proto::v1::Role::Customer,
        };
        Ok(Response::new(ipb::Principal {
            account_id: p.account_id.to_string(),
            customer_id: p.customer_id,
            role: role as i32,
            token_id: p.token_id.to_string(),
            expires_at: Some(kapal::wire::timestamp(expires_at)),
            scope: scope as i32,
        }))
    }
}

pub struct InstanceState(pub Ctx);

/// Records an observed status: updates the instance and appends to its history when it changed.
///
/// Statuses reach the control-plane one way, the provisioner's reports (ApplyInstance's answer
/// is an acknowledgement and is not recorded). Reports may still arrive out of order (a retry,
/// two connections): one whose `sequence` is not above the stored one arrived late and is
/// ignored. A report without a sequence (0) is recorded as it comes.
pub(crate) async fn record_state(ctx: &Ctx, state: &ipb::InstanceState) -> Result<bool> {
    let status = InstanceStatus::try_from(state.status).unwrap_or(InstanceStatus::Unspecified);
    if status == InstanceStatus::Unspecified {
        return Err(Error::invalid("status is required"));
    }
    let id = kapal::wire::uuid("instance_id", &state.instance_id)?.to_string();
    let sequence = i64::try_from(state.sequence)
        .map_err(|_| Error::invalid("sequence is too large (at most 2^63 - 1)"))?;
    let status_db = instance_state::status_to_db(status);
    let now = ctx.now();
    let reason = kapal::wire::truncate(&state.reason, 500).to_string();
    let observed = store::instances::ObservedStatus {
        instance_id: &id,
        status: status_db,
        ready: status == InstanceStatus::Ready,
        reason: &reason,
        sequence,
    };
    let changed = match store::instances::record_status(&ctx.db, &observed, now).await? {
        Recorded::Unchanged => false,
        Recorded::Changed { first_ready } => {
            if let Some((app_id, created_at)) = first_ready {
                let took = (now - created_at).num_milliseconds().max(0) as f64 / 1e3;
                metrics::histogram!("kapal_provisioning_duration_seconds", "app" => app_id)
                    .record(took);
            }
            true
        }
    };
    if changed {
        tracing::info!(instance_id = %id, status = status_db, reason = %reason, "instance status changed");
        let _ = ctx.changes.send(id);
    }
    Ok(changed)
}

#[tonic::async_trait]
impl InstanceStateService for InstanceState {
    async fn report_instance_state(
        &self,
        req: Request<ipb::InstanceState>,
    ) -> Result<Response<ReportInstanceStateResponse>, Status> {
        auth::service(&req)?;
        let id = kapal::wire::uuid("instance_id", &req.get_ref().instance_id)?.to_string();
        kapal::telemetry::record_instance(&id);
        if store::instances::get(&self.0.db, &id).await?.is_none() {
            return Err(Status::not_found(format!("no instance {id}")));
        }
        record_state(&self.0, req.get_ref()).await?;
        Ok(Response::new(ReportInstanceStateResponse {}))
    }

    async fn list_desired_instances(
        &self,
        req: Request<ListDesiredInstancesRequest>,
    ) -> Result<Response<ListDesiredInstancesResponse>, Status> {
        auth::service(&req)?;
        let req = req.into_inner();
        if req.page_size == 0 {
            // A caller from before paging reads one answer and no token: give it everything,
            // as before, rather than a first page it would take for the whole list.
            return Ok(Response::new(ListDesiredInstancesResponse {
                instances: desired(&self.0, None, None).await?,
                next_page_token: String::new(),
            }));
        }
        let limit = i64::from(req.page_size.min(MAX_DESIRED_PAGE));
        let after = desired_cursor(&req.page_token)?;
        let mut instances = desired(&self.0, after.as_deref(), Some(limit + 1)).await?;
        let more = instances.len() as i64 > limit;
        instances.truncate(usize::try_from(limit).unwrap_or(0));
        let next_page_token = match instances.last() {
            Some(last) if more => desired_token(&last.instance_id),
            _ => String::new(),
        };
        Ok(Response::new(ListDesiredInstancesResponse {
            instances,
            next_page_token,
        }))
    }
}

/// Most desired instances in one ListDesiredInstances answer (about 1 KB each: far below
/// gRPC's 4 MB message limit).
const MAX_DESIRED_PAGE: u32 = 1000;

/// The page token after the instance `id` (opaque to callers).
fn desired_token(id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("desired|{id}"))
}

/// The instance id a page token continues after; `None` for the first page.
fn desired_cursor(token: &str) -> Result<Option<String>, Status> {
    use base64::Engine as _;
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Status::invalid_argument(
            "page_token is not one ListDesiredInstances returned; start again without a page_token",
        )
    };
    if token.len() > 200 {
        return Err(invalid());
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let id = raw.strip_prefix("desired|").ok_or_else(invalid)?;
    let id = uuid::Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok(Some(id.to_string()))
}

/// Every instance the provisioner must keep, with its owner's customer id: those meant to run
/// or be stopped, deleted ones not yet reported gone, and deleted ones whose data is still kept
/// (so the provisioner's sweep of unknown namespaces does not remove retained data early).
/// The desired instances, in the order of their ids: those after `after` (a page token's id),
/// at most `limit` of them; `None`, `None`: all of them.
async fn desired(ctx: &Ctx, after: Option<&str>, limit: Option<i64>) -> Result<Vec<InstanceSpec>> {
    let rows = store::instances::desired(
        &ctx.db,
        ctx.now(),
        after.unwrap_or(""),
        limit.unwrap_or(i64::MAX),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|(i, a)| lifecycle::spec_of(i, &a.customer_id))
        .collect())
}
