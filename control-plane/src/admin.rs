//! `kapal.v1.AdminService`: the operators' view of the platform. Every call needs the ADMIN
//! role (PERMISSION_DENIED otherwise).
//!
//! Reading an instance's credentials needs a reason, and is written to the audit log before
//! the credentials are read: if the audit row cannot be written, no credentials are returned.

use kapal::auth;
use kapal::paging;
use kapal::proto::v1::admin_service_server::AdminService;
use kapal::proto::v1::{
    AdminInstance, Alert, AlertSeverity, AuditEvent, Capacity, GetCapacityRequest,
    GetInstanceAsAdminRequest, GetInstanceUsageRequest, InstanceStatus, InstanceUsage,
    ListAlertsRequest, ListAlertsResponse, ListAllInstancesRequest, ListAllInstancesResponse,
    ListAuditEventsRequest, ListAuditEventsResponse,
};
use kapal::wire::timestamp;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::capacity::{self, Amounts};
use crate::error::{Error, Result};
use crate::lifecycle::{self, instance_to_wire};
use crate::models::{AuditEntry, Instance, instance_state};
use crate::store::instances::Owner;
use crate::{Ctx, store};

pub struct Admin(pub Ctx);

/// The audit action of a credential read.
const READ_CREDENTIALS: &str = "read_credentials";
/// An instance DEGRADED for longer than this is an alert.
const DEGRADED_ALERT_AFTER: chrono::Duration = chrono::Duration::minutes(5);
/// Capacity above `ceiling - WARNING_MARGIN` percent is a warning.
const WARNING_MARGIN: f64 = 10.0;
/// At most this many failed or degraded instances are looked at per ListAlerts.
const MAX_INSTANCE_ALERTS: i64 = 1000;

fn admin_instance(i: &Instance, (customer_id, email): &Owner) -> AdminInstance {
    AdminInstance {
        instance: Some(instance_to_wire(i)),
        account_id: i.account_id.clone(),
        customer_id: customer_id.clone(),
        email: email.clone(),
        namespace: i.namespace.clone(),
    }
}

/// Any instance with its owner's customer id and email.
async fn with_owner(ctx: &Ctx, id: &str) -> Result<(Instance, Owner)> {
    store::instances::with_owner(&ctx.db, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("no instance {id}")))
}

/// Checks the reason given for reading credentials: 3-500 characters.
fn check_reason(reason: &str) -> Result<String> {
    let reason = reason.trim();
    let n = reason.chars().count();
    if !(3..=500).contains(&n) {
        return Err(Error::invalid(
            "reading credentials needs a reason of 3-500 characters (e.g. a support ticket), kept in the audit log",
        ));
    }
    Ok(reason.to_string())
}

fn audit_to_wire(e: &AuditEntry) -> AuditEvent {
    AuditEvent {
        id: e.id.clone(),
        actor_account_id: e.actor_account_id.clone(),
        actor_email: e.actor_email.clone(),
        action: e.action.clone(),
        // Billing's actions are done to a subscription or an invoice, not an instance.
        instance_id: match e.action.as_str() {
            "extend_subscription" | "credit_invoice" => String::new(),
            _ => e.target.clone(),
        },
        instance_account_id: e.subject_account_id.clone(),
        reason: e.detail.clone(),
        at: Some(timestamp(e.at)),
        target: e.target.clone(),
    }
}

fn alert(
    kind: &str,
    severity: AlertSeverity,
    subject: &str,
    message: String,
    since: Option<chrono::NaiveDateTime>,
) -> Alert {
    Alert {
        kind: kind.into(),
        severity: severity as i32,
        message,
        subject: subject.into(),
        since: since.map(timestamp),
    }
}

/// Alerts about the cluster: the provisioner, its nodes, committed capacity.
fn cluster_alerts(
    observed: &capacity::Observed,
    kapal: Option<Amounts>,
    ceiling: u32,
    out: &mut Vec<Alert>,
) {
    if let Some(e) = &observed.error {
        let detail = match &observed.capacity {
            Some(_) => "node and capacity alerts below use its last answer, under a minute old",
            None => "node and capacity alerts are unknown until it answers",
        };
        out.push(alert(
            "provisioner_unreachable",
            AlertSeverity::Critical,
            "cluster",
            format!(
                "The provisioner cannot be reached ({:?}): instances are not converged and \
                 checkouts are not checked against capacity; {detail}.",
                e.code()
            ),
            None,
        ));
    }
    let Some(cap) = &observed.capacity else {
        return;
    };
    for node in &cap.nodes {
        if !node.ready {
            out.push(alert(
                "node_not_ready",
                AlertSeverity::Critical,
                &node.name,
                format!(
                    "Node {} is not Ready: its pods are moved to other nodes once the \
                     toleration ends; check the node (kubelet, network, disk).",
                    node.name
                ),
                None,
            ));
        } else if !node.schedulable {
            out.push(alert(
                "node_not_ready",
                AlertSeverity::Critical,
                &node.name,
                format!(
                    "Node {} is cordoned: no new pods are placed on it; uncordon it when its \
                     maintenance is done.",
                    node.name
                ),
                None,
            ));
        }
    }
    if let Some(kapal) = kapal {
        let (cpu, memory) = capacity::committed_percent(cap, kapal);
        let worst = cpu.max(memory);
        let ceiling_f = f64::from(ceiling);
        let severity = if worst > ceiling_f {
            Some(AlertSeverity::Critical)
        } else if worst > ceiling_f - WARNING_MARGIN {
            Some(AlertSeverity::Warning)
        } else {
            None
        };
        if let Some(severity) = severity {
            let consequence = if severity == AlertSeverity::Critical {
                "checkouts are being refused"
            } else {
                "checkouts will be refused soon"
            };
            out.push(alert(
                "capacity_high",
                severity,
                "cluster",
                format!(
                    "Committed capacity is {cpu:.0}% of CPU and {memory:.0}% of memory against a \
                     {ceiling}% ceiling: {consequence}; add a node or raise the ceiling."
                ),
                None,
            ));
        }
    }
}

/// When the instance's current status began: the oldest of the newest run of its events with
/// that status (events are newest first).
fn status_since(
    status: &str,
    events: &[(String, chrono::NaiveDateTime)],
) -> Option<chrono::NaiveDateTime> {
    events
        .iter()
        .take_while(|(s, _)| s == status)
        .last()
        .map(|(_, at)| *at)
}

/// Alerts about instances: FAILED, or DEGRADED for a while.
async fn instance_alerts(ctx: &Ctx, out: &mut Vec<Alert>) -> Result<()> {
    let failed = instance_state::status_to_db(InstanceStatus::Failed);
    let degraded = instance_state::status_to_db(InstanceStatus::Degraded);
    let rows =
        store::instances::in_status(&ctx.db, &[failed, degraded], MAX_INSTANCE_ALERTS).await?;
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = rows.iter().map(|(i, _)| i.id.as_str()).collect();
    let events = store::instance_events::statuses_of(&ctx.db, &ids).await?;
    let mut by_instance: std::collections::HashMap<&str, Vec<(String, chrono::NaiveDateTime)>> =
        std::collections::HashMap::new();
    for (id, status, at) in &events {
        by_instance
            .entry(id.as_str())
            .or_default()
            .push((status.clone(), *at));
    }
    let now = ctx.now();
    for (i, customer_id) in &rows {
        let since = by_instance
            .get(i.id.as_str())
            .and_then(|ev| status_since(&i.status, ev))
            .unwrap_or(i.updated_at);
        let reason = if i.status_reason.is_empty() {
            "no reason reported".to_string()
        } else {
            i.status_reason.clone()
        };
        if i.status == failed {
            out.push(alert(
                "instance_failed",
                AlertSeverity::Critical,
                &i.id,
                format!(
                    "Instance {} ({} {}, customer {customer_id}) failed: {reason}",
                    i.id, i.app_id, i.plan_id
                ),
                Some(since),
            ));
        } else if now - since > DEGRADED_ALERT_AFTER {
            out.push(alert(
                "instance_degraded",
                AlertSeverity::Warning,
                &i.id,
                format!(
                    "Instance {} ({} {}, customer {customer_id}) has been degraded for {} min: {reason}",
                    i.id,
                    i.app_id,
                    i.plan_id,
                    (now - since).num_minutes()
                ),
                Some(since),
            ));
        }
    }
    Ok(())
}

/// The alerts open now, most severe first, and whether the cluster's capacity could be read
/// (when not, node and capacity alerts are unknown rather than absent).
pub(crate) async fn current_alerts(ctx: &Ctx) -> Result<(Vec<Alert>, bool)> {
    let observed = ctx.capacity.observe(&ctx.provisioner).await;
    let kapal = match &observed.capacity {
        Some(_) => Some(capacity::current_commitments(ctx).await?),
        None => None,
    };
    let mut alerts = Vec::new();
    cluster_alerts(&observed, kapal, ctx.ceiling_percent, &mut alerts);
    instance_alerts(ctx, &mut alerts).await?;
    crate::support::alerts(ctx, &mut alerts).await?;
    alerts.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.kind.cmp(&b.kind))
            .then_with(|| a.subject.cmp(&b.subject))
    });
    Ok((alerts, observed.capacity.is_some()))
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn list_all_instances(
        &self,
        req: Request<ListAllInstancesRequest>,
    ) -> Result<Response<ListAllInstancesResponse>, Status> {
        auth::admin(&req)?;
        let req = req.into_inner();
        let limit = kapal::wire::page_size(req.page_size);
        let cursor = paging::parse(&req.page_token)?;
        let status = match InstanceStatus::try_from(req.status) {
            Ok(InstanceStatus::Unspecified) => None,
            Ok(s) => Some(instance_state::status_to_db(s)),
            Err(_) => {
                return Err(Status::invalid_argument(
                    "status is not an InstanceStatus value",
                ));
            }
        };
        let app_id = match req.app_id.trim() {
            "" => None,
            a if a.len() > 64 => return Err(Status::invalid_argument("app_id is too long")),
            a => Some(a.to_string()),
        };
        let account_id = match req.account_id.trim() {
            "" => None,
            a => Some(kapal::wire::uuid("account_id", a)?.to_string()),
        };
        let filter = store::instances::Filter {
            status,
            app_id,
            account_id,
        };
        let rows =
            store::instances::list_all(&self.0.db, &filter, cursor.as_ref(), limit + 1).await?;
        let (page, next) = paging::split(rows, limit, |(i, _)| (i.created_at, i.id.as_str()));
        Ok(Response::new(ListAllInstancesResponse {
            instances: page.iter().map(|(i, o)| admin_instance(i, o)).collect(),
            next_page_token: next,
        }))
    }

    async fn get_instance_as_admin(
        &self,
        req: Request<GetInstanceAsAdminRequest>,
    ) -> Result<Response<AdminInstance>, Status> {
        let p = auth::admin(&req)?.clone();
        let req = req.into_inner();
        let ctx = &self.0;
        let id = kapal::wire::uuid("instance_id", &req.instance_id)?.to_string();
        let reason = if req.include_credentials {
            Some(check_reason(&req.reason)?)
        } else {
            None
        };
        let (instance, owner) = with_owner(ctx, &id).await?;
        let mut wire = admin_instance(&instance, &owner);
        if let Some(reason) = reason {
            // The audit row first: no row, no credentials.
            let entry = AuditEntry {
                id: Uuid::now_v7().to_string(),
                actor_account_id: p.account_id.to_string(),
                action: READ_CREDENTIALS.into(),
                target: instance.id.clone(),
                detail: reason,
                at: ctx.now(),
                actor_email: String::new(),
                subject_account_id: instance.account_id.clone(),
            };
            // An operator whose account is gone: an internal error, as before.
            let entry = store::audit_log::insert_with_actor_email(&ctx.db, entry)
                .await?
                .ok_or_else(|| {
                    Error::Internal(format!("the operator account {} is gone", p.account_id))
                })?;
            tracing::info!(audit_id = %entry.id, actor = %entry.actor_account_id, instance_id = %instance.id, "operator read an instance's credentials");
            if instance.desired_state != instance_state::DELETED
                && let Some(i) = wire.instance.as_mut()
            {
                let cacheable = lifecycle::effective(&instance).desired
                    != kapal::proto::v1::DesiredState::Deleted;
                i.credentials = crate::credentials::read(ctx, &instance.id, cacheable).await;
            }
        }
        Ok(Response::new(wire))
    }

    async fn get_capacity(
        &self,
        req: Request<GetCapacityRequest>,
    ) -> Result<Response<Capacity>, Status> {
        auth::admin(&req)?;
        let ctx = &self.0;
        let observed = ctx.capacity.observe(&ctx.provisioner).await;
        let Some(cap) = observed.capacity else {
            return Err(Error::Unavailable(
                "the cluster's capacity cannot be read now: the provisioner is unreachable; retry shortly"
                    .into(),
            )
            .into());
        };
        let kapal = capacity::current_commitments(ctx).await?;
        Ok(Response::new(capacity::complete(
            &cap,
            kapal,
            ctx.ceiling_percent,
        )))
    }

    async fn list_alerts(
        &self,
        req: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        auth::admin(&req)?;
        let (alerts, _) = current_alerts(&self.0).await?;
        Ok(Response::new(ListAlertsResponse { alerts }))
    }

    async fn get_instance_usage(
        &self,
        req: Request<GetInstanceUsageRequest>,
    ) -> Result<Response<InstanceUsage>, Status> {
        auth::admin(&req)?;
        let id = kapal::wire::uuid("instance_id", &req.get_ref().instance_id)?.to_string();
        // NOT_FOUND for ids that are no instance at all, before asking the cluster.
        with_owner(&self.0, &id).await?;
        Ok(Response::new(lifecycle::usage(&self.0, &id).await?))
    }

    async fn list_audit_events(
        &self,
        req: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        auth::admin(&req)?;
        let limit = kapal::wire::page_size(req.get_ref().page_size);
        let cursor = paging::parse(&req.get_ref().page_token)?;
        let rows = store::audit_log::page(&self.0.db, cursor.as_ref(), limit + 1).await?;
        let (page, next) = paging::split(rows, limit, |e| (e.at, e.id.as_str()));
        Ok(Response::new(ListAuditEventsResponse {
            events: page.iter().map(audit_to_wire).collect(),
            next_page_token: next,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_checked() {
        assert!(check_reason("").is_err());
        assert!(check_reason("  ab  ").is_err());
        assert_eq!(check_reason(" T-42 ").ok(), Some("T-42".into()));
        assert!(check_reason(&"x".repeat(500)).is_ok());
        assert!(check_reason(&"x".repeat(501)).is_err());
    }

    #[test]
    fn since_is_the_start_of_the_current_run() {
        let t = |m: i64| {
            chrono::DateTime::from_timestamp(1_800_000_000 + m * 60, 0)
                .expect("valid")
                .naive_utc()
        };
        let events = vec![
            ("degraded".to_string(), t(30)),
            ("degraded".to_string(), t(20)),
            ("ready".to_string(), t(10)),
            ("degraded".to_string(), t(5)),
        ];
        assert_eq!(status_since("degraded", &events), Some(t(20)));
        assert_eq!(status_since("failed", &events), None);
    }
}
