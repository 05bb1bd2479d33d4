//! An instance's rules, shared by the handlers (InstanceService, OperatorService,
//! EntitlementService, AdminService, OrderService, InstanceStateService), so that none of them
//! reaches into another: its effective desired state (the customer's wish within what billing
//! allows) and the refusals that follow from it, its wire form, its spec for the provisioner
//! and the push of that spec, its usage from the provisioner, and the actions on it
//! ([`act`]: restart, stop, start, delete, for its owner and for operators). Data access goes
//! through [`crate::store`].

use chrono::NaiveDateTime;
use kapal::proto::internal::v1::{ApplyInstanceRequest, GetUsageRequest, InstanceSpec};
use kapal::proto::v1::{self as pb, DesiredState, InstanceUsage};
use kapal::wire::{opt_timestamp, timestamp};
use tonic::Status;

use crate::Ctx;
use crate::error::{Error, Result};
use crate::models::{self, Instance, entitlement, instance_state};
use crate::store;
use crate::store::instances::DesiredChange;

/// What the provisioner is asked to make of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Effective {
    pub desired: DesiredState,
    /// With `desired` DELETED: when the data goes (None: at once).
    pub delete_data_after: Option<NaiveDateTime>,
    /// With `desired` STOPPED: stopped by billing, not by the customer.
    pub suspended_by_billing: bool,
}

/// The instance's effective desired state: the customer's wish within what billing allows
/// (see `crate::entitlements`).
pub(crate) fn effective(i: &Instance) -> Effective {
    if i.desired_state == instance_state::DELETED || i.entitlement == entitlement::EXPIRED {
        return Effective {
            desired: DesiredState::Deleted,
            delete_data_after: i.data_deleted_after,
            suspended_by_billing: false,
        };
    }
    if i.entitlement == entitlement::SUSPENDED {
        return Effective {
            desired: DesiredState::Stopped,
            delete_data_after: None,
            suspended_by_billing: true,
        };
    }
    Effective {
        desired: instance_state::desired_to_wire(&i.desired_state),
        delete_data_after: None,
        suspended_by_billing: false,
    }
}

/// Whether billing (not the customer) keeps the instance from running.
pub(crate) fn suspended_by_billing(i: &Instance) -> bool {
    i.desired_state != instance_state::DELETED && i.entitlement != entitlement::ACTIVE
}

fn subscription_of(i: &Instance) -> &str {
    i.subscription_id.as_deref().unwrap_or("")
}

/// Why a customer cannot start (or restart) the instance now, when billing holds it.
pub(crate) fn start_refusal(i: &Instance) -> Option<Error> {
    match i.entitlement.as_str() {
        entitlement::SUSPENDED => Some(Error::FailedPrecondition(format!(
            "This instance is suspended because its subscription {} is unpaid or has ended; pay or reactivate the subscription and it starts again.",
            subscription_of(i)
        ))),
        entitlement::EXPIRED => Some(expired_refusal(i)),
        _ => None,
    }
}

/// Why no action is possible on an instance whose subscription expired.
pub(crate) fn expired_refusal(i: &Instance) -> Error {
    Error::FailedPrecondition(format!(
        "This instance was deleted because its subscription {} ended; its data is removed. Order the app again for a new instance.",
        subscription_of(i)
    ))
}

pub(crate) fn instance_to_wire(i: &Instance) -> pb::Instance {
    pb::Instance {
        id: i.id.clone(),
        app_id: i.app_id.clone(),
        plan_id: i.plan_id.clone(),
        status: instance_state::status_to_wire(&i.status) as i32,
        status_reason: i.status_reason.clone(),
        desired_state: instance_state::desired_to_wire(&i.desired_state) as i32,
        url: format!("https://{}", i.hostname),
        hostname: i.hostname.clone(),
        subscription_id: i.subscription_id.clone().unwrap_or_default(),
        order_id: i.order_id.clone(),
        credentials: None,
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
        ready_at: opt_timestamp(i.ready_at),
        suspended_by_billing: suspended_by_billing(i),
        data_deleted_after: opt_timestamp(i.data_deleted_after),
    }
}

/// The provisioner's view of an instance: its effective desired state (the customer's wish
/// within what billing allows, see [`effective`]).
pub(crate) fn spec_of(i: &Instance, customer_id: &str) -> InstanceSpec {
    let effective = effective(i);
    InstanceSpec {
        instance_id: i.id.clone(),
        account_id: i.account_id.clone(),
        customer_id: customer_id.to_string(),
        app_id: i.app_id.clone(),
        plan_id: i.plan_id.clone(),
        hostname: i.hostname.clone(),
        namespace: i.namespace.clone(),
        desired_state: effective.desired as i32,
        restart_generation: u64::try_from(i.restart_generation).unwrap_or(0),
        delete_data_after: opt_timestamp(effective.delete_data_after),
        suspended_by_billing: effective.suspended_by_billing,
    }
}

/// Asks the provisioner to converge `instance`. Failures are logged, not returned: the
/// provisioner's periodic resync lists desired instances and converges them anyway.
///
/// The answer only acknowledges the spec: the status reaches the control-plane as the
/// provisioner's report (made before it answers when the status changed), never from here.
pub(crate) async fn push_to_provisioner(ctx: &Ctx, instance: &Instance, customer_id: &str) {
    let request = ApplyInstanceRequest {
        spec: Some(spec_of(instance, customer_id)),
    };
    if let Err(s) = ctx.provisioner.clone().apply_instance(request).await {
        tracing::warn!(
            instance_id = %instance.id, code = ?s.code(), message = s.message(),
            "provisioner unreachable; its resync will converge the instance"
        );
    }
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

/// One of the caller's instances, or NOT_FOUND.
pub(crate) async fn owned(ctx: &Ctx, account_id: &str, id: &str) -> Result<Instance> {
    store::instances::owned(&ctx.db, account_id, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("no instance {id}")))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Restart,
    Stop,
    Start,
    Delete,
}

/// Who acts on an instance.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Actor<'a> {
    /// Its owner, through InstanceService.
    Owner,
    /// An operator (OperatorService), with the reason they gave (shown in the instance's
    /// history) and whether a start may go over the capacity ceiling.
    Operator {
        reason: &'a str,
        override_capacity: bool,
    },
}

/// What an operator's action says in the instance's history.
fn operator_history(action: Action, reason: &str, override_capacity: bool) -> String {
    let done = match action {
        Action::Restart => "Restarted",
        Action::Stop => "Stopped",
        Action::Start if override_capacity => "Started over the capacity ceiling",
        Action::Start => "Started",
        Action::Delete => "Deleted",
    };
    format!("{done} by Kapal support: {reason}")
}

/// Restarts, stops, starts or deletes the instance `id` of `account_id` (whose customer id is
/// `customer_id`) for `actor`: the same rules for its owner and for operators (deleted and
/// expired instances are not changed, billing's holds are kept, a start is checked against the
/// capacity ceiling unless an operator overrides it). An operator's action is also written to
/// the instance's history. Returns the instance after the change.
pub(crate) async fn act(
    ctx: &Ctx,
    (account_id, customer_id): (&str, &str),
    id: &str,
    action: Action,
    actor: Actor<'_>,
) -> Result<Instance, Status> {
    let account_id = account_id.to_string();
    let id = id.to_string();
    // A suspended account's own actions are refused (the gateway refuses its calls too, once
    // its identity cache has seen the suspension).
    if matches!(actor, Actor::Owner)
        && let Some(s) = crate::suspensions::of(ctx, &account_id).await?
    {
        return Err(crate::suspensions::refusal(&s));
    }
    {
        let override_capacity = matches!(
            actor,
            Actor::Operator {
                override_capacity: true,
                ..
            }
        );
        // Starting a stopped instance commits its plan again: the cluster is read first (no
        // connection is held across a call to a peer), checked below as a checkout would be.
        let capacity = match action {
            Action::Start if !override_capacity => {
                ctx.capacity.observe(&ctx.provisioner).await.capacity
            }
            _ => None,
        };
        // Read on the connection that writes: what is checked below is what gets changed.
        let mut conn = ctx.db.get().await.map_err(Error::from)?;
        let current = store::instances::owned_on(&mut conn, &account_id, &id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no instance {id}")))?;
        if current.desired_state == instance_state::DELETED {
            return Err(Status::failed_precondition("the instance has been deleted"));
        }
        if current.entitlement == entitlement::EXPIRED {
            return Err(expired_refusal(&current).into());
        }
        // Billing holds the instance: it runs again once the subscription is paid. Stopping and
        // deleting stay the customer's to do.
        if matches!(action, Action::Start | Action::Restart)
            && let Some(refusal) = start_refusal(&current)
        {
            return Err(refusal.into());
        }
        let now = ctx.now();
        let target = (id.as_str(), account_id.as_str());
        // An instance whose subscription expired meanwhile is not the customer's to change
        // (the store's updates leave it alone).
        let updated = match action {
            Action::Restart => {
                if current.desired_state != instance_state::RUNNING {
                    return Err(Status::failed_precondition(
                        "the instance is stopped: start it instead of restarting it",
                    ));
                }
                store::instances::change_desired(&mut conn, target, DesiredChange::Restart, now)
                    .await?
            }
            Action::Delete => {
                // The workloads go now; the data after the retention period.
                let data_deleted_after = now + ctx.data_retention;
                store::instances::change_desired(
                    &mut conn,
                    target,
                    DesiredChange::Delete { data_deleted_after },
                    now,
                )
                .await?
            }
            Action::Start if current.desired_state != instance_state::RUNNING => {
                let plan = ctx
                    .catalog
                    .app(&current.app_id)
                    .and_then(|a| a.plan(&current.plan_id));
                match start_within_capacity(&mut conn, target, capacity.as_deref(), ctx, plan, now)
                    .await?
                {
                    Ok(n) => n,
                    Err(message) => {
                        tracing::warn!(instance_id = %id, "start refused: {message}");
                        return Err(Error::ResourceExhausted(message).into());
                    }
                }
            }
            Action::Stop | Action::Start => {
                let desired = match action {
                    Action::Stop => instance_state::STOPPED,
                    _ => instance_state::RUNNING,
                };
                store::instances::change_desired(
                    &mut conn,
                    target,
                    DesiredChange::Set(desired),
                    now,
                )
                .await?
            }
        };
        drop(conn);
        if updated == 0 {
            // Billing expired the subscription between the read and the update.
            let now_current = owned(ctx, &account_id, &id).await?;
            return Err(expired_refusal(&now_current).into());
        }
        if let Actor::Operator {
            reason,
            override_capacity,
        } = actor
        {
            let event = models::InstanceEvent {
                id: uuid::Uuid::now_v7().to_string(),
                instance_id: id.clone(),
                status: current.status.clone(),
                reason: operator_history(action, reason, override_capacity),
                at: now,
                actor: crate::models::OPERATOR.into(),
            };
            store::instance_events::insert(&ctx.db, &event).await?;
        }
        let _ = ctx.changes.send(id.clone());
        if matches!(action, Action::Delete) {
            ctx.credentials.evict(&id);
        }
        let updated = owned(ctx, &account_id, &id).await?;
        push_to_provisioner(ctx, &updated, customer_id).await;
        Ok(owned(ctx, &account_id, &id).await?)
    }
}

/// Sets a stopped instance running if the cluster has room for its plan under the ceiling,
/// serialized with checkouts (see [`store::instances::start_checked`]). Unknown capacity
/// (provisioner unreachable, no recent snapshot) or a plan gone from the catalog: started
/// unchecked, as a checkout would be accepted. `Ok(Err(message))`: refused, nothing changed.
async fn start_within_capacity(
    conn: &mut kapal::db::DbConn<'_>,
    target: (&str, &str),
    capacity: Option<&kapal::proto::v1::Capacity>,
    ctx: &Ctx,
    plan: Option<&kapal::catalog::Plan>,
    now: NaiveDateTime,
) -> Result<std::result::Result<usize, String>> {
    let (Some(cap), Some(plan)) = (capacity, plan) else {
        return store::instances::start_checked(conn, target, now, None).await;
    };
    let catalog = &*ctx.catalog;
    let ceiling = ctx.ceiling_percent;
    let check = |rows: &[(String, String, i64)]| {
        let kapal = crate::capacity::kapal_commitments(catalog, rows);
        crate::capacity::check(cap, kapal, plan, ceiling)
    };
    store::instances::start_checked(conn, target, now, Some(&check)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(desired: &str, entitlement: &str) -> Instance {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0)
            .expect("valid")
            .naive_utc();
        Instance {
            id: "i".into(),
            account_id: "a".into(),
            order_id: "o".into(),
            app_id: "n8n".into(),
            plan_id: "starter".into(),
            hostname: "h".into(),
            namespace: "n".into(),
            subscription_id: Some("s".into()),
            desired_state: desired.into(),
            status: "ready".into(),
            status_reason: String::new(),
            restart_generation: 0,
            created_at: t,
            updated_at: t,
            ready_at: None,
            entitlement: entitlement.into(),
            entitlement_sequence: 0,
            entitlement_cause: String::new(),
            entitlement_at: None,
            data_deleted_after: Some(t),
        }
    }

    #[test]
    fn effective_state_combines_the_customer_and_billing() {
        use instance_state::{DELETED, RUNNING, STOPPED};
        let e = |d, en| effective(&instance(d, en));
        assert_eq!(
            e(RUNNING, entitlement::ACTIVE).desired,
            DesiredState::Running
        );
        assert_eq!(
            e(STOPPED, entitlement::ACTIVE).desired,
            DesiredState::Stopped
        );
        let s = e(RUNNING, entitlement::SUSPENDED);
        assert_eq!(
            (s.desired, s.suspended_by_billing),
            (DesiredState::Stopped, true)
        );
        let x = e(RUNNING, entitlement::EXPIRED);
        assert_eq!(x.desired, DesiredState::Deleted);
        assert!(x.delete_data_after.is_some());
        assert_eq!(
            e(DELETED, entitlement::SUSPENDED).desired,
            DesiredState::Deleted
        );
        assert!(!e(DELETED, entitlement::SUSPENDED).suspended_by_billing);
        assert!(start_refusal(&instance(STOPPED, entitlement::ACTIVE)).is_none());
        assert!(start_refusal(&instance(RUNNING, entitlement::SUSPENDED)).is_some());
    }
}
