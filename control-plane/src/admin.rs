//! `kapal.v1.AdminService`: the operators' view of the platform. Every call needs the ADMIN
//! role (PERMISSION_DENIED otherwise).
//!
//! Reading an instance's credentials needs a reason, and is written to the audit log before
//! the credentials are read: if the audit row cannot be written, no credentials are returned.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::auth;
use kapal::db::DbError;
use kapal::paging;
use kapal::proto::internal::v1::GetUsageRequest;
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

use crate::Ctx;
use crate::capacity::{self, Amounts};
use crate::error::{Error, Result};
use crate::instances::instance_to_wire;
use crate::models::{AuditEntry, Instance, instance_state};
use crate::schema::{accounts, audit_log, instance_events, instances};

pub struct Admin(pub Ctx);

/// The audit action of a credential read.
const READ_CREDENTIALS: &str = "read_credentials";
/// An instance DEGRADED for longer than this is an alert.
const DEGRADED_ALERT_AFTER: chrono::Duration = chrono::Duration::minutes(5);
/// Capacity above `ceiling - WARNING_MARGIN` percent is a warning.
const WARNING_MARGIN: f64 = 10.0;
/// At most this many failed or degraded instances are looked at per ListAlerts.
const MAX_INSTANCE_ALERTS: i64 = 1000;

/// The owner of an instance, as operators see it.
type Owner = (String, String);

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
    let mut conn = ctx.db.read().await?;
    kapal::db!(&mut conn, |c| instances::table
        .inner_join(accounts::table)
        .filter(instances::id.eq(id))
        .select((
            Instance::as_select(),
            (accounts::customer_id, accounts::email)
        ))
        .first(c)
        .await
        .optional())?
    .ok_or_else(|| Error::not_found(format!("no instance {id}")))
}

/// The instance's usage from the provisioner.
pub(crate) async fn usage(ctx: &Ctx, instance_id: &str) -> Result<InstanceUsage> {
    match ctx
        .provisioner
        .clone()
        .get_usage(GetUsageRequest {
            instance_id: instance_id.to_string(),
        })
        .await
    {
        Ok(u) => Ok(u.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => Err(Error::not_found(format!(
            "instance {instance_id} has nothing in the cluster yet; usage is shown once it is provisioned"
        ))),
        Err(s) => {
            tracing::warn!(instance_id, code = ?s.code(), message = s.message(), "usage unavailable");
            Err(Error::Unavailable(
                "the instance's usage cannot be read from the cluster now; retry shortly".into(),
            ))
        }
    }
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
    let mut conn = ctx.db.read().await?;
    let rows: Vec<(Instance, String)> = kapal::db!(&mut conn, |c| instances::table
        .inner_join(accounts::table)
        .filter(instances::status.eq_any([failed, degraded]))
        .filter(instances::desired_state.ne(instance_state::DELETED))
        .order(instances::updated_at.asc())
        .limit(MAX_INSTANCE_ALERTS)
        .select((Instance::as_select(), accounts::customer_id))
        .load(c)
        .await)?;
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = rows.iter().map(|(i, _)| i.id.as_str()).collect();
    let events: Vec<(String, String, chrono::NaiveDateTime)> =
        kapal::db!(&mut conn, |c| instance_events::table
            .filter(instance_events::instance_id.eq_any(&ids))
            .order((
                instance_events::instance_id,
                instance_events::at.desc(),
                instance_events::id.desc()
            ))
            .select((
                instance_events::instance_id,
                instance_events::status,
                instance_events::at
            ))
            .load(c)
            .await)?;
    drop(conn);
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
        let mut conn = self.0.db.read().await.map_err(Error::from)?;
        let rows: Vec<(Instance, Owner)> = kapal::db!(&mut conn, |c| {
            let mut q = instances::table
                .inner_join(accounts::table)
                .select((
                    Instance::as_select(),
                    (accounts::customer_id, accounts::email),
                ))
                .order((instances::created_at.desc(), instances::id.desc()))
                .limit(limit + 1)
                .into_boxed();
            if let Some(s) = status {
                q = q.filter(instances::status.eq(s));
            }
            if let Some(a) = &app_id {
                q = q.filter(instances::app_id.eq(a.clone()));
            }
            if let Some(a) = &account_id {
                q = q.filter(instances::account_id.eq(a.clone()));
            }
            if let Some(cur) = &cursor {
                q = q.filter(
                    instances::created_at.lt(cur.at).or(instances::created_at
                        .eq(cur.at)
                        .and(instances::id.lt(cur.id.clone()))),
                );
            }
            q.load(c).await
        })
        .map_err(Error::from)?;
        drop(conn);
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
            let actor = p.account_id.to_string();
            let mut conn = ctx.db.get().await.map_err(Error::from)?;
            let actor_email: String = kapal::db!(&mut conn, |c| accounts::table
                .find(&actor)
                .select(accounts::email)
                .first(c)
                .await)
            .map_err(Error::from)?;
            let entry = AuditEntry {
                id: Uuid::now_v7().to_string(),
                actor_account_id: actor,
                action: READ_CREDENTIALS.into(),
                target: instance.id.clone(),
                detail: reason,
                at: ctx.now(),
                actor_email,
                subject_account_id: instance.account_id.clone(),
            };
            kapal::db!(&mut conn, |c| diesel::insert_into(audit_log::table)
                .values(&entry)
                .execute(c)
                .await)
            .map_err(Error::from)?;
            drop(conn);
            tracing::info!(audit_id = %entry.id, actor = %entry.actor_account_id, instance_id = %instance.id, "operator read an instance's credentials");
            if instance.desired_state != instance_state::DELETED
                && let Some(i) = wire.instance.as_mut()
            {
                let cacheable = crate::entitlements::effective(&instance).desired
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
        Ok(Response::new(usage(&self.0, &id).await?))
    }

    async fn list_audit_events(
        &self,
        req: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        auth::admin(&req)?;
        let limit = kapal::wire::page_size(req.get_ref().page_size);
        let cursor = paging::parse(&req.get_ref().page_token)?;
        let mut conn = self.0.db.read().await.map_err(Error::from)?;
        let rows: Vec<AuditEntry> = kapal::db!(&mut conn, |c| {
            let mut q = audit_log::table
                .select(AuditEntry::as_select())
                .order((audit_log::at.desc(), audit_log::id.desc()))
                .limit(limit + 1)
                .into_boxed();
            if let Some(cur) = &cursor {
                q = q.filter(
                    audit_log::at.lt(cur.at).or(audit_log::at
                        .eq(cur.at)
                        .and(audit_log::id.lt(cur.id.clone()))),
                );
            }
            q.load(c).await
        })
        .map_err(|e| Error::Db(DbError::from(e)))?;
        drop(conn);
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
