//! The control-plane's data access: one module per table (or per pair of tables always written
//! together), holding every diesel query the control-plane runs, written once for both
//! backends with [`kapal::db!`], the way `billing/src/store.rs` and `provisioner/src/store.rs`
//! are for their services.
//!
//! The rooms:
//! - [`instances`]: the `instances` table (desired state, status, entitlement), with the
//!   transactions that also append to an instance's history (an entitlement change, an
//!   observed status) and the capacity-checked start, serialized with checkouts;
//! - [`instance_events`]: the `instance_events` table, an instance's history;
//! - [`orders`]: the `orders` table (placing an order under the account's limits and the
//!   capacity, serialized with other checkouts; completing it with its instance row);
//! - [`accounts`]: the `accounts` table;
//! - [`tokens`]: the `tokens` table, login sessions and API tokens (as hashes);
//! - [`email_codes`]: the `email_codes` table, one-time codes mailed for verification and
//!   password reset;
//! - [`audit_log`]: the `audit_log` table, what operators did;
//! - [`account_suspensions`]: the `account_suspensions` table, accounts an operator suspended;
//! - [`login_failures`]: the `login_failures` table, failed log-ins per address;
//! - [`pushed_alerts`]: the `pushed_alerts` table, alerts sent to the notifier and still open.
//!
//! What stays elsewhere: support tickets have their own store (`crate::support::store`).
//!
//! Rules: a function here takes the pool ([`kapal::db::Db`]) and picks the connection itself
//! (`Db::read` for reads that answer a caller, `Db::get`, the writer, for writes and for reads
//! made to decide a write), or takes a connection (`DbConn`) when the caller reads and
//! writes on one connection. Writes that must read what they change run in one transaction
//! here; what to write is decided by the caller (values, or closures called inside the
//! transaction). No function here calls a peer service or holds a connection across one.
//! Handlers (the tonic services) call these functions and run no diesel themselves.

pub(crate) mod account_suspensions;
pub(crate) mod accounts;
pub(crate) mod audit_log;
pub(crate) mod email_codes;
pub(crate) mod instance_events;
pub(crate) mod instances;
pub(crate) mod login_failures;
pub(crate) mod orders;
pub(crate) mod pushed_alerts;
pub(crate) mod tokens;

/// The PostgreSQL advisory lock (`pg_advisory_xact_lock`) that serializes checkouts with
/// starts of stopped instances, so that together they cannot overshoot the capacity ceiling.
/// On SQLite the single writer serializes them.
pub(crate) const CHECKOUT_LOCK_KEY: i64 = 0x006b_6170_616c_636b; // "kapalck"

/// A check of Kapal's commitments (the rows of [`instances::commitment_rows`]) made inside a
/// checkout's or a start's transaction: `Err(message)` refuses.
pub(crate) type Check<'a> =
    dyn Fn(&[(String, String, i64)]) -> std::result::Result<(), String> + Sync + 'a;
