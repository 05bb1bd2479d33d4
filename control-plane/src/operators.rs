//! Who is an operator (role admin) is decided by an operator, never by signing up: an email on
//! a list used to make whoever registered it first an admin, with every tenant's credentials in
//! reach. `kapal admin grant|revoke --email E --reason R` runs [`set_admin`] against the
//! server's own database (the same `--data-dir` / `--database-url` as `kapal server`); each
//! change is written to the audit log with the reason.
//!
//! The role is read from the database at every authentication, so a change takes effect for
//! new sessions at once, and for a session already in use when the gateway's identity cache
//! forgets it (`auth_cache_ttl`, 10 s by default).

use kapal::db::{Db, DbConfig, Migrations};
use uuid::Uuid;

use crate::models::{Account, AuditEntry};

/// The audit actions of a role change.
pub const GRANT_ADMIN: &str = "grant_admin";
pub const REVOKE_ADMIN: &str = "revoke_admin";

/// What [`set_admin`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleChange {
    pub account_id: String,
    pub email: String,
    /// False when the account already had that role (nothing written).
    pub changed: bool,
}

/// The control-plane's database, migrated (as `kapal server` would at start).
pub async fn connect(db: &DbConfig) -> anyhow::Result<Db> {
    Db::connect(
        db,
        "control-plane",
        Migrations {
            postgres: crate::POSTGRES_MIGRATIONS,
            sqlite: crate::SQLITE_MIGRATIONS,
        },
    )
    .await
}

/// Makes the account of `email` an admin (`admin: true`) or a customer again, and records who
/// (`operator`: the person or tool, e.g. `kapal admin grant (user alice)`), why (`reason`) and
/// when (`at`, UTC) in the audit log, in one transaction. The audit event names no instance;
/// its subject is the account.
pub async fn set_admin(
    db: &Db,
    email: &str,
    admin: bool,
    reason: &str,
    operator: &str,
    at: chrono::NaiveDateTime,
) -> anyhow::Result<RoleChange> {
    let email = crate::accounts::normalize_email(email).map_err(|e| anyhow::anyhow!("{e}"))?;
    let reason = reason.trim();
    anyhow::ensure!(
        (3..=500).contains(&reason.chars().count()),
        "give a reason of 3-500 characters (e.g. a ticket); it is kept in the audit log"
    );
    let role = if admin { "admin" } else { "customer" };
    let audit = |account: &Account| AuditEntry {
        id: Uuid::now_v7().to_string(),
        actor_account_id: String::new(),
        action: if admin { GRANT_ADMIN } else { REVOKE_ADMIN }.into(),
        target: String::new(),
        detail: reason.to_string(),
        at,
        actor_email: operator.to_string(),
        subject_account_id: account.id.clone(),
    };
    let outcome = crate::store::accounts::set_role(db, &email, role, audit)
        .await
        .map(|o| {
            o.map(|(account, changed)| RoleChange {
                account_id: account.id,
                email: account.email,
                changed,
            })
        });
    match outcome? {
        Some(change) => {
            if change.changed {
                tracing::info!(account_id = %change.account_id, role, operator, "account role changed");
            }
            Ok(change)
        }
        None => anyhow::bail!("no account has the email {email}: the person signs up first"),
    }
}
