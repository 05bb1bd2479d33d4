//! `kapal.v1.OperatorService`: operators acting on any customer's instance. Every call needs
//! the ADMIN role (PERMISSION_DENIED otherwise) and a reason.
//!
//! The audit row (who, what, whose, why) is written before the action is carried out: if it
//! cannot be written, nothing is done, and an action that is then refused (e.g. by the
//! capacity ceiling) stays recorded as attempted. The action follows the customer's own rules
//! (see [`crate::lifecycle::act`]) and is written to the instance's history with the reason.

use kapal::auth::{self, Principal};
use kapal::proto::v1::operator_service_server::OperatorService;
use kapal::proto::v1::{
    self as pb, AccountSuspension, GetInstanceDiagnosticsRequest, InstanceDiagnostics,
    OperatorInstanceActionRequest, SuspendAccountRequest, UnsuspendAccountRequest,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::lifecycle::{self, Action, Actor, instance_to_wire};
use crate::models::AuditEntry;
use crate::suspensions::Suspension;
use crate::{Ctx, store};

pub struct Operator(pub Ctx);

/// Checks an operator's reason: 3-500 characters.
fn check_reason(reason: &str, what: &str) -> Result<String> {
    let reason = reason.trim();
    let n = reason.chars().count();
    if !(3..=500).contains(&n) {
        return Err(Error::invalid(format!(
            "{what} needs a reason of 3-500 characters (e.g. a support ticket), kept in the audit log"
        )));
    }
    Ok(reason.to_string())
}

/// The owner (account id, customer id) of any instance, or NOT_FOUND.
async fn owner(ctx: &Ctx, id: &str) -> Result<(String, String)> {
    store::instances::owner_ids(&ctx.db, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("no instance {id}")))
}

/// Writes the audit row of `action` by the operator `p` on `target` (of `subject_account_id`).
pub(crate) async fn audit(
    ctx: &Ctx,
    p: &Principal,
    action: &str,
    target: &str,
    subject_account_id: &str,
    reason: &str,
) -> Result<()> {
    audit_as(
        ctx,
        &p.account_id.to_string(),
        action,
        target,
        subject_account_id,
        reason,
    )
    .await?;
    Ok(())
}

/// Writes the audit row of `action` by the account `actor` (with its email now) and returns
/// its id. NOT_FOUND when there is no such account.
async fn audit_as(
    ctx: &Ctx,
    actor: &str,
    action: &str,
    target: &str,
    subject_account_id: &str,
    reason: &str,
) -> Result<AuditEntry> {
    let entry = AuditEntry {
        id: Uuid::now_v7().to_string(),
        actor_account_id: actor.into(),
        action: action.into(),
        target: target.into(),
        detail: reason.into(),
        at: ctx.now(),
        actor_email: String::new(),
        subject_account_id: subject_account_id.into(),
    };
    let entry = store::audit_log::insert_with_actor_email(&ctx.db, entry)
        .await?
        .ok_or_else(|| Error::not_found(format!("no account {actor}")))?;
    tracing::info!(audit_id = %entry.id, actor = %entry.actor_account_id, action, target, "operator action");
    Ok(entry)
}

/// `kapal.internal.v1.AuditService` for billing: its operator actions (extending a
/// subscription, crediting an invoice) go into the same audit log, written before billing
/// carries them out.
pub struct AuditApi(pub Ctx);

#[tonic::async_trait]
impl kapal::proto::internal::v1::audit_service_server::AuditService for AuditApi {
    async fn record_operator_action(
        &self,
        req: Request<kapal::proto::internal::v1::RecordOperatorActionRequest>,
    ) -> Result<Response<kapal::proto::internal::v1::RecordOperatorActionResponse>, Status> {
        auth::service(&req)?;
        let req = req.into_inner();
        let ctx = &self.0;
        let actor = kapal::wire::uuid("actor_account_id", &req.actor_account_id)?.to_string();
        let subject = kapal::wire::uuid("subject_account_id", &req.subject_account_id)?.to_string();
        let action = kapal::wire::required("action", &req.action)?;
        let target = kapal::wire::required("target", &req.target)?;
        let reason = check_reason(&req.reason, action)?;
        // Only operators act on other customers' billing: the role is checked here too, on
        // the account as it is now.
        let role = store::accounts::role(&ctx.db, &actor).await?;
        if role.as_deref() != Some("admin") {
            return Err(Status::failed_precondition(format!(
                "account {actor} is not an operator"
            )));
        }
        let entry = audit_as(ctx, &actor, action, target, &subject, &reason).await?;
        Ok(Response::new(
            kapal::proto::internal::v1::RecordOperatorActionResponse { id: entry.id },
        ))
    }
}

impl Operator {
    async fn act(
        &self,
        req: Request<OperatorInstanceActionRequest>,
        action: Action,
    ) -> Result<Response<pb::Instance>, Status> {
        let p = auth::admin(&req)?.clone();
        let req = req.into_inner();
        let ctx = &self.0;
        let id = kapal::wire::uuid("instance_id", &req.instance_id)?.to_string();
        let (verb, audit_action) = match action {
            Action::Restart => ("restarting an instance", "restart_instance"),
            Action::Stop => ("stopping an instance", "stop_instance"),
            Action::Start if req.override_capacity => {
                ("starting an instance", "start_instance_over_capacity")
            }
            Action::Start => ("starting an instance", "start_instance"),
            Action::Delete => ("deleting an instance", "delete_instance"),
        };
        let reason = check_reason(&req.reason, verb)?;
        let (account_id, customer_id) = owner(ctx, &id).await?;
        audit(ctx, &p, audit_action, &id, &account_id, &reason).await?;
        let actor = Actor::Operator {
            reason: &reason,
            override_capacity: action == Action::Start && req.override_capacity,
        };
        let updated = lifecycle::act(ctx, (&account_id, &customer_id), &id, action, actor).await?;
        Ok(Response::new(instance_to_wire(&updated)))
    }
}

#[tonic::async_trait]
impl OperatorService for Operator {
    async fn restart_instance_as_operator(
        &self,
        req: Request<OperatorInstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        self.act(req, Action::Restart).await
    }

    async fn stop_instance_as_operator(
        &self,
        req: Request<OperatorInstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        self.act(req, Action::Stop).await
    }

    async fn start_instance_as_operator(
        &self,
        req: Request<OperatorInstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        self.act(req, Action::Start).await
    }

    async fn suspend_account(
        &self,
        req: Request<SuspendAccountRequest>,
    ) -> Result<Response<AccountSuspension>, Status> {
        let p = auth::admin(&req)?.clone();
        let req = req.into_inner();
        let ctx = &self.0;
        let account_id = kapal::wire::uuid("account_id", &req.account_id)?.to_string();
        let reason = check_reason(&req.reason, "suspending an account")?;
        let customer_id = customer_account(ctx, &account_id).await?;
        if crate::suspensions::of(ctx, &account_id).await?.is_some() {
            return Err(Status::failed_precondition(
                "the account is suspended already (see `kapal admin audit`)",
            ));
        }
        audit(
            ctx,
            &p,
            "suspend_account",
            &account_id,
            &account_id,
            &reason,
        )
        .await?;
        // The row first: from here on the account's calls and instance actions are refused.
        let suspension = Suspension {
            account_id: account_id.clone(),
            reason: reason.clone(),
            actor_account_id: p.account_id.to_string(),
            suspended_at: ctx.now(),
            instance_ids: String::new(),
        };
        crate::suspensions::insert(ctx, &suspension)
            .await
            .map_err(|e| match e {
                // Suspended by another operator at the same moment.
                Error::Db(e) if e.is_unique_violation() => {
                    Status::failed_precondition("the account is suspended already")
                }
                e => e.into(),
            })?;
        let history = format!("account suspended: {reason}");
        let mut stopped = Vec::new();
        for id in running_instances(ctx, &account_id).await? {
            let actor = Actor::Operator {
                reason: &history,
                override_capacity: false,
            };
            match lifecycle::act(ctx, (&account_id, &customer_id), &id, Action::Stop, actor).await {
                Ok(_) => stopped.push(id),
                // Deleted or ended meanwhile: nothing to stop.
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
                Err(s) => return Err(s),
            }
        }
        crate::suspensions::set_instances(ctx, &account_id, &stopped).await?;
        let mut wire = suspension_to_wire(&suspension, true);
        wire.instance_ids = stopped;
        Ok(Response::new(wire))
    }

    async fn unsuspend_account(
        &self,
        req: Request<UnsuspendAccountRequest>,
    ) -> Result<Response<AccountSuspension>, Status> {
        let p = auth::admin(&req)?.clone();
        let req = req.into_inner();
        let ctx = &self.0;
        let account_id = kapal::wire::uuid("account_id", &req.account_id)?.to_string();
        let reason = check_reason(&req.reason, "lifting a suspension")?;
        let Some(suspension) = crate::suspensions::of(ctx, &account_id).await? else {
            return Err(Status::failed_precondition("the account is not suspended"));
        };
        let customer_id = customer_account(ctx, &account_id).await?;
        audit(
            ctx,
            &p,
            "unsuspend_account",
            &account_id,
            &account_id,
            &reason,
        )
        .await?;
        if !crate::suspensions::remove(ctx, &account_id).await? {
            return Err(Status::failed_precondition("the account is not suspended"));
        }
        let history = format!("account suspension lifted: {reason}");
        let mut wire = suspension_to_wire(&suspension, false);
        for id in suspension.instances() {
            let actor = Actor::Operator {
                reason: &history,
                override_capacity: false,
            };
            match lifecycle::act(ctx, (&account_id, &customer_id), &id, Action::Start, actor).await
            {
                Ok(_) => wire.instance_ids.push(id),
                Err(s) => wire.not_started.push(format!("{id}: {}", s.message())),
            }
        }
        Ok(Response::new(wire))
    }

    async fn get_instance_diagnostics_as_operator(
        &self,
        req: Request<GetInstanceDiagnosticsRequest>,
    ) -> Result<Response<InstanceDiagnostics>, Status> {
        let p = auth::admin(&req)?.clone();
        let req = req.into_inner();
        let ctx = &self.0;
        let id = kapal::wire::uuid("instance_id", &req.instance_id)?.to_string();
        let reason = check_reason(&req.reason, "reading an instance's diagnostics")?;
        crate::diagnostics::log_lines(req.log_lines)?;
        let (account_id, _) = owner(ctx, &id).await?;
        audit(ctx, &p, "read_diagnostics", &id, &account_id, &reason).await?;
        Ok(Response::new(
            crate::diagnostics::diagnostics(ctx, &id, req.log_lines, true).await?,
        ))
    }
}

/// The account's customer id, or NOT_FOUND; FAILED_PRECONDITION for an operator's account.
async fn customer_account(ctx: &Ctx, account_id: &str) -> Result<String> {
    let (customer_id, role) = store::accounts::customer_id_and_role(&ctx.db, account_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("no account {account_id}")))?;
    if role == "admin" {
        return Err(Error::FailedPrecondition(
            "this is an operator's account: revoke its admin role first (`kapal admin revoke`)"
                .into(),
        ));
    }
    Ok(customer_id)
}

/// The account's instances meant to run (not deleted, not ended by billing).
async fn running_instances(ctx: &Ctx, account_id: &str) -> Result<Vec<String>> {
    store::instances::running_ids(&ctx.db, account_id).await
}

fn suspension_to_wire(s: &Suspension, suspended: bool) -> AccountSuspension {
    AccountSuspension {
        account_id: s.account_id.clone(),
        suspended,
        reason: s.reason.clone(),
        suspended_at: Some(kapal::wire::timestamp(s.suspended_at)),
        instance_ids: Vec::new(),
        not_started: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_are_checked() {
        assert!(super::check_reason(" ab ", "x").is_err());
        assert_eq!(super::check_reason(" T-42 ", "x").ok(), Some("T-42".into()));
        assert!(super::check_reason(&"x".repeat(501), "x").is_err());
    }
}
