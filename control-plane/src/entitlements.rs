//! `kapal.internal.v1.EntitlementService`: what billing entitles an instance to.
//!
//! Billing delivers every change of a subscription (from its outbox, in order, until
//! acknowledged) as an entitlement with a sequence. The control-plane stores it on the instance,
//! next to (never instead of) the customer's own desired state, and applies a change only when
//! its sequence is higher than the one stored: the conditional UPDATE makes that race-safe, so
//! a late or repeated delivery never undoes a newer one.
//!
//! What the provisioner is asked for is the *effective* desired state ([`lifecycle::effective`]):
//! - the customer deleted the instance: DELETED, data kept until `data_deleted_after`;
//! - EXPIRED: DELETED, data removed at once (billing kept it through its own retention). Final:
//!   later changes are acknowledged and ignored;
//! - SUSPENDED: STOPPED with `suspended_by_billing` (scaled to zero, data kept);
//! - ACTIVE: the customer's desired state, so an instance the customer had not stopped runs
//!   again and one they stopped stays stopped.
//!
//! A change also names the plan the subscription pays for from then on (a ChangePlan applied
//! at renewal, a converted trial). A plan other than the instance's is recorded on the instance
//! in the same transaction, with an entry in its history, and the push that follows has the
//! provisioner re-render the instance with that plan's resources (CPU and memory of its
//! workloads, its quota; a volume grows when its storage class can expand, and never shrinks:
//! billing refuses such downgrades at ChangePlan). A plan billing names that is not in the
//! catalog is logged and the instance keeps its plan.

use chrono::NaiveDateTime;
use kapal::auth;
use kapal::catalog::Plan;
use kapal::proto::internal::v1::entitlement_service_server::EntitlementService;
use kapal::proto::internal::v1::{
    CheckPlanChangeRequest, CheckPlanChangeResponse, Entitlement, SetEntitlementRequest,
    SetEntitlementResponse,
};
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::models::{Instance, entitlement, instance_state};
use crate::store::instances::EntitlementOutcome as Outcome;
use crate::{Ctx, lifecycle, store};

pub struct Entitlements(pub Ctx);

/// The history entry a customer sees for an entitlement change.
fn history_reason(value: &str, subscription_id: &str, cause: &str) -> String {
    let because = if cause.is_empty() {
        String::new()
    } else {
        format!(" ({cause})")
    };
    let text = match value {
        entitlement::SUSPENDED => format!(
            "Suspended by billing: subscription {subscription_id} is unpaid or has ended{because}. The instance is scaled to zero; its data is kept, and it starts again once the subscription is paid."
        ),
        entitlement::EXPIRED => format!(
            "Deleted by billing: subscription {subscription_id} ended{because}. The instance and its data are removed."
        ),
        _ => format!(
            "Subscription {subscription_id} is active{because}: billing no longer holds the instance."
        ),
    };
    kapal::wire::truncate(&text, 500).to_string()
}

/// A validated SetEntitlement request.
struct Change {
    instance_id: String,
    subscription_id: String,
    value: &'static str,
    sequence: i64,
    at: NaiveDateTime,
    cause: String,
    /// The plan from this change on; `None` when billing did not say.
    plan_id: Option<String>,
}

fn parse(ctx: &Ctx, req: &SetEntitlementRequest) -> Result<Change> {
    let instance_id = kapal::wire::uuid("instance_id", &req.instance_id)?.to_string();
    let subscription_id = kapal::wire::uuid("subscription_id", &req.subscription_id)?.to_string();
    let value = Entitlement::try_from(req.entitlement)
        .ok()
        .and_then(entitlement::to_db)
        .ok_or_else(|| Error::invalid("entitlement is required: ACTIVE, SUSPENDED or EXPIRED"))?;
    if req.sequence <= 0 {
        return Err(Error::invalid(
            "sequence must be positive: send billing's outbox id of the change",
        ));
    }
    let at = match &req.at {
        Some(t) => kapal::wire::from_timestamp(t)
            .ok_or_else(|| Error::invalid("at is not a valid timestamp"))?
            .naive_utc(),
        None => ctx.now(),
    };
    Ok(Change {
        instance_id,
        subscription_id,
        value,
        sequence: req.sequence,
        at,
        cause: kapal::wire::truncate(req.cause.trim(), 300).to_string(),
        plan_id: Some(req.plan_id.trim())
            .filter(|p| !p.is_empty())
            .map(|p| kapal::wire::truncate(p, 64).to_string()),
    })
}

/// The history entry a customer sees when billing moves the instance to another plan.
fn plan_change_reason(from: &str, to: &Plan, subscription_id: &str) -> String {
    let text = format!(
        "Plan changed from {from} to {} by subscription {subscription_id}: the instance is given {} mCPU, {} MiB of memory and a {} GiB volume (a volume never shrinks).",
        to.id, to.cpu_millis, to.memory_mib, to.storage_gib
    );
    kapal::wire::truncate(&text, 500).to_string()
}

/// The plan the change moves the instance to, when it names another plan of the instance's
/// app; a plan not in the catalog is logged and ignored (the instance keeps its plan).
fn new_plan<'a>(ctx: &'a Ctx, row: &Instance, change: &Change) -> Option<&'a Plan> {
    let wanted = change.plan_id.as_deref().filter(|p| *p != row.plan_id)?;
    let plan = ctx.catalog.app(&row.app_id).and_then(|a| a.plan(wanted));
    if plan.is_none() {
        tracing::warn!(
            instance_id = %row.id, app_id = %row.app_id, plan_id = wanted,
            "billing names a plan that is not in the catalog; the instance keeps plan {}",
            row.plan_id
        );
    }
    plan
}

/// Stores the change if it is newer than the one stored; appends to the instance's history.
async fn save(ctx: &Ctx, change: &Change) -> Result<Outcome> {
    let stored = store::instances::EntitlementChange {
        instance_id: &change.instance_id,
        subscription_id: &change.subscription_id,
        value: change.value,
        sequence: change.sequence,
        at: change.at,
        cause: &change.cause,
    };
    store::instances::set_entitlement(
        &ctx.db,
        &stored,
        ctx.now(),
        |row| {
            new_plan(ctx, row, change).map(|plan| {
                let reason = plan_change_reason(&row.plan_id, plan, &change.subscription_id);
                (plan.id.clone(), reason)
            })
        },
        |_| history_reason(change.value, &change.subscription_id, &change.cause),
    )
    .await
}

/// Hands the instance's effective spec to the provisioner in the background, like checkout: the
/// answer does not wait for the cluster, and a lost push is converged by the provisioner's
/// resync (it lists the desired instances, which carry the same effective spec). The instance is
/// read in the task, right before the push, so the newest state is what goes out.
fn converge(ctx: &Ctx, instance_id: &str) {
    let _ = ctx.changes.send(instance_id.to_string());
    let ctx = ctx.clone();
    let instance_id = instance_id.to_string();
    tokio::spawn(async move {
        let row = store::instances::with_customer(&ctx.db, &instance_id).await;
        match row {
            Ok(Some((instance, customer_id))) => {
                lifecycle::push_to_provisioner(&ctx, &instance, &customer_id).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                instance_id = %instance_id, error = %e,
                "reading the instance to push failed; the provisioner's resync will converge it"
            ),
        }
    });
}

#[tonic::async_trait]
impl EntitlementService for Entitlements {
    async fn set_entitlement(
        &self,
        req: Request<SetEntitlementRequest>,
    ) -> Result<Response<SetEntitlementResponse>, Status> {
        auth::service(&req)?;
        let ctx = &self.0;
        let change = parse(ctx, req.get_ref())?;
        let applied = match save(ctx, &change).await? {
            Outcome::NotFound => {
                return Err(Error::not_found(format!("no instance {}", change.instance_id)).into());
            }
            Outcome::OtherSubscription(other) => {
                return Err(Error::FailedPrecondition(format!(
                    "instance {} belongs to subscription {other}, not {}",
                    change.instance_id, change.subscription_id
                ))
                .into());
            }
            Outcome::Applied => {
                if change.value == entitlement::EXPIRED {
                    // The instance and its Secret go: no credentials from memory either.
                    ctx.credentials.evict(&change.instance_id);
                }
                tracing::info!(
                    instance_id = %change.instance_id, subscription_id = %change.subscription_id,
                    entitlement = change.value, sequence = change.sequence, cause = %change.cause,
                    plan_id = change.plan_id.as_deref().unwrap_or(""),
                    "entitlement applied"
                );
                converge(ctx, &change.instance_id);
                true
            }
            Outcome::Repeated => {
                // Pushed again: the first delivery may have been stored just before a crash.
                converge(ctx, &change.instance_id);
                true
            }
            Outcome::Stale => {
                tracing::info!(
                    instance_id = %change.instance_id, sequence = change.sequence,
                    "entitlement change older than the one applied; ignored"
                );
                false
            }
        };
        Ok(Response::new(SetEntitlementResponse { applied }))
    }

    async fn check_plan_change(
        &self,
        req: Request<CheckPlanChangeRequest>,
    ) -> Result<Response<CheckPlanChangeResponse>, Status> {
        auth::service(&req)?;
        let ctx = &self.0;
        let id = kapal::wire::uuid("instance_id", &req.get_ref().instance_id)?.to_string();
        let plan_id = req.get_ref().plan_id.trim();
        let row = store::instances::get(&ctx.db, &id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no instance {id}")))?;
        let app = ctx.catalog.app(&row.app_id);
        let to = app.and_then(|a| a.plan(plan_id)).ok_or_else(|| {
            Error::invalid(format!(
                "plan_id {:?} is not a plan of {}",
                kapal::wire::truncate(plan_id, 64),
                row.app_id
            ))
        })?;
        // A plan gone from the catalog counts as nothing (as in the commitments): all of the
        // new plan is new then.
        let from = app.and_then(|a| a.plan(&row.plan_id));
        // Only an instance that should run holds resources against the ceiling; a stopped or
        // suspended one is checked when it starts again (with the plan it has then).
        let counted =
            row.desired_state == instance_state::RUNNING && row.entitlement == entitlement::ACTIVE;
        if !counted {
            return Ok(Response::new(CheckPlanChangeResponse {}));
        }
        let Some(capacity) = ctx.capacity.observe(&ctx.provisioner).await.capacity else {
            // Unknown capacity: accepted, as a checkout would be.
            return Ok(Response::new(CheckPlanChangeResponse {}));
        };
        let kapal = crate::capacity::current_commitments(ctx).await?;
        let nothing = Plan {
            id: row.plan_id.clone(),
            cpu_millis: 0,
            memory_mib: 0,
            ..to.clone()
        };
        let from = from.unwrap_or(&nothing);
        crate::capacity::check_growth(&capacity, kapal, from, to, ctx.ceiling_percent)
            .map_err(Error::ResourceExhausted)?;
        Ok(Response::new(CheckPlanChangeResponse {}))
    }
}
