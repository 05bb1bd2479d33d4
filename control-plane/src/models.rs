//! Rows of the control-plane's tables, and the text values of their state columns.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::schema::*;

#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = accounts)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub customer_id: String,
    pub display_name: String,
    pub role: String,
    pub created_at: NaiveDateTime,
    /// When the address was proved to be the account's (a code mailed to it came back).
    pub email_verified_at: Option<NaiveDateTime>,
}

/// A one-time code mailed to an account's address ([`code_purpose`]).
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = email_codes)]
pub struct EmailCode {
    pub id: String,
    pub account_id: String,
    pub purpose: String,
    /// SHA-256 of the code (hex); the code itself is only in the email.
    pub code_hash: String,
    pub created_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub attempts: i64,
    pub used_at: Option<NaiveDateTime>,
}

pub mod code_purpose {
    pub const VERIFY: &str = "verify";
    pub const RESET: &str = "reset";
}

#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = tokens)]
pub struct Token {
    pub id: String,
    pub account_id: String,
    pub kind: String,
    pub name: String,
    pub token_hash: String,
    pub prefix: String,
    pub created_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
    /// What the token may do ([`token_scope`]); sessions are always full.
    pub scope: String,
    /// When it last authenticated a call, to within [`crate::sessions::LAST_USED_PRECISION`].
    pub last_used_at: Option<NaiveDateTime>,
    /// The user-agent of the client that opened a session; '' when none.
    pub user_agent: String,
    /// The IP address of the client that opened it, as the gateway saw it; '' when unknown.
    pub client_address: String,
}

#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = orders)]
pub struct Order {
    pub id: String,
    pub account_id: String,
    pub idempotency_key: String,
    pub app_id: String,
    pub plan_id: String,
    pub status: String,
    pub failure_reason: String,
    pub amount: i64,
    pub currency: String,
    pub subscription_id: Option<String>,
    pub instance_id: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = instances)]
pub struct Instance {
    pub id: String,
    pub account_id: String,
    pub order_id: String,
    pub app_id: String,
    pub plan_id: String,
    pub hostname: String,
    pub namespace: String,
    pub subscription_id: Option<String>,
    pub desired_state: String,
    pub status: String,
    pub status_reason: String,
    pub restart_generation: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub ready_at: Option<NaiveDateTime>,
    /// What billing entitles the instance to ([`entitlement`]); the customer's own wish is
    /// `desired_state`.
    pub entitlement: String,
    /// Billing's outbox id of the entitlement change applied last.
    pub entitlement_sequence: i64,
    pub entitlement_cause: String,
    pub entitlement_at: Option<NaiveDateTime>,
    /// For a deleted instance: when its data is removed for good.
    pub data_deleted_after: Option<NaiveDateTime>,
}

#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = instance_events)]
pub struct InstanceEvent {
    pub id: String,
    pub instance_id: String,
    pub status: String,
    pub reason: String,
    pub at: NaiveDateTime,
    /// Who acted: empty for status changes from the cluster, [`OPERATOR`] for operators'
    /// actions.
    pub actor: String,
}

/// [`InstanceEvent::actor`] of an operator's action.
pub const OPERATOR: &str = "operator";
/// [`InstanceEvent::actor`] of billing holding or releasing the instance (its subscription).
pub const BILLING: &str = "billing";

/// An operator's action on customer data: `target` is the instance id, `detail` the reason
/// the operator gave, `subject_account_id` the instance's owner.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_log)]
pub struct AuditEntry {
    pub id: String,
    pub actor_account_id: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub at: NaiveDateTime,
    pub actor_email: String,
    pub subject_account_id: String,
}

pub mod token_kind {
    pub const SESSION: &str = "session";
    pub const API: &str = "api";
}

/// API token scopes as stored, with their wire values.
pub mod token_scope {
    use kapal::proto::v1::ApiTokenScope;

    pub const FULL: &str = "full";
    pub const READ_ONLY: &str = "read_only";

    pub fn to_wire(s: &str) -> ApiTokenScope {
        match s {
            FULL => ApiTokenScope::Full,
            READ_ONLY => ApiTokenScope::ReadOnly,
            _ => ApiTokenScope::Unspecified,
        }
    }
}

pub mod order_status {
    pub const PENDING: &str = "pending";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
}

/// Entitlements as stored (what billing allows an instance), with their wire values.
pub mod entitlement {
    use kapal::proto::internal::v1::Entitlement;

    pub const ACTIVE: &str = "active";
    pub const SUSPENDED: &str = "suspended";
    pub const EXPIRED: &str = "expired";

    pub fn to_db(e: Entitlement) -> Option<&'static str> {
        match e {
            Entitlement::Active => Some(ACTIVE),
            Entitlement::Suspended => Some(SUSPENDED),
            Entitlement::Expired => Some(EXPIRED),
            Entitlement::Unspecified => None,
        }
    }
}

/// Instance statuses and desired states as stored, with their wire values.
pub mod instance_state {
    use kapal::proto::v1::{DesiredState, InstanceStatus};

    pub const RUNNING: &str = "running";
    pub const STOPPED: &str = "stopped";
    pub const DELETED: &str = "deleted";

    pub fn desired_to_wire(s: &str) -> DesiredState {
        match s {
            RUNNING => DesiredState::Running,
            STOPPED => DesiredState::Stopped,
            DELETED => DesiredState::Deleted,
            _ => DesiredState::Unspecified,
        }
    }

    pub fn status_to_db(s: InstanceStatus) -> &'static str {
        match s {
            InstanceStatus::Unspecified => "unspecified",
            InstanceStatus::Pending => "pending",
            InstanceStatus::Provisioning => "provisioning",
            InstanceStatus::Ready => "ready",
            InstanceStatus::Degraded => "degraded",
            InstanceStatus::Suspended => "suspended",
            InstanceStatus::Deleting => "deleting",
            InstanceStatus::Deleted => "deleted",
            InstanceStatus::Failed => "failed",
        }
    }

    pub fn status_to_wire(s: &str) -> InstanceStatus {
        match s {
            "pending" => InstanceStatus::Pending,
            "provisioning" => InstanceStatus::Provisioning,
            "ready" => InstanceStatus::Ready,
            "degraded" => InstanceStatus::Degraded,
            "suspended" => InstanceStatus::Suspended,
            "deleting" => InstanceStatus::Deleting,
            "deleted" => InstanceStatus::Deleted,
            "failed" => InstanceStatus::Failed,
            _ => InstanceStatus::Unspecified,
        }
    }
}
