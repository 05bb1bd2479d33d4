//! `kapal.v1.OperatorService`: operators acting on any customer's instance. Every call needs
//! the ADMIN role (PERMISSION_DENIED otherwise) and a reason.
//!
//! The audit row (who, what, whose, why) is written before the action is carried out: if it
//! cannot be written, nothing is done, and an action that is then refused (e.g. by the
//! capacity ceiling) stays recorded as attempted. The action follows the customer's own rules
//! (see [`crate::instances::act`]) and is written to the instance's history with the reason.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::auth::{self, Principal};
use kapal::proto::v1::operator_service_server::OperatorService;
use kapal::proto::v1::{
    self as pb, GetInstanceDiagnosticsRequest, InstanceDiagnostics, OperatorInstanceActionRequest,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Ctx;
use crate::error::{Error, Result};
use crate::instances::{Action, Actor, instance_to_wire};
use crate::models::AuditEntry;
use crate::schema::{accounts, audit_log, instances};

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
    let mut conn = ctx.db.read().await?;
    kapal::db!(&mut conn, |c| instances::table
        .inner_join(accounts::table)
        .filter(instances::id.eq(id))
        .select((instances::account_id, accounts::customer_id))
        .first(c)
        .await
        .optional())?
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
    let actor = p.account_id.to_string();
    let mut conn = ctx.db.get().await?;
    let actor_email: String = kapal::db!(&mut conn, |c| accounts::table
        .find(&actor)
        .select(accounts::email)
        .first(c)
        .await)?;
    let entry = AuditEntry {
        id: Uuid::now_v7().to_string(),
        actor_account_id: actor,
        action: action.into(),
        target: target.into(),
        detail: reason.into(),
        at: ctx.now(),
        actor_email,
        subject_account_id: subject_account_id.into(),
    };
    kapal::db!(&mut conn, |c| diesel::insert_into(audit_log::table)
        .values(&entry)
        .execute(c)
        .await)?;
    tracing::info!(audit_id = %entry.id, actor = %entry.actor_account_id, action, target, "operator action");
    Ok(())
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
        let updated =
            crate::instances::act(ctx, (&account_id, &customer_id), &id, action, actor).await?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_are_checked() {
        assert!(super::check_reason(" ab ", "x").is_err());
        assert_eq!(super::check_reason(" T-42 ", "x").ok(), Some("T-42".into()));
        assert!(super::check_reason(&"x".repeat(501), "x").is_err());
    }
}
