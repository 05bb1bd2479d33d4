//! Kapal billing: plans and prices (IDR, from the shared catalog), subscriptions, trials,
//! invoices and payments.
//!
//! Serves `kapal.internal.v1.BillingService` (the control-plane creates the subscription of an
//! order through it, idempotently), the public `kapal.v1.SubscriptionService` (customers
//! see and change their own subscriptions and invoices) and `kapal.v1.BillingAdminService`
//! (operators: revenue report, every subscription and its events), plus gRPC health and
//! reflection. In the background the lifecycle [`scheduler`] runs and the entitlement outbox is
//! [delivered](delivery) to the control-plane.
//!
//! Payments go through a [`PaymentProvider`]; [`DummyProvider`] settles everything (the free
//! trial is Rp 0). The subscription statuses and their allowed transitions live in
//! [`lifecycle`].
//!
//! ## CreateSubscription: idempotency and failed payments
//!
//! One transaction creates, per `order_id` (UNIQUE), the subscription in status INCOMPLETE, its
//! first invoice (OPEN, with the next number of a per-database counter) and a creation event; a
//! retry, concurrent or not, finds these rows instead. The invoice is then charged by exactly
//! one request at a time (a lease on the invoice, taken by compare-and-set), always with the
//! idempotency key `kapal-invoice-<invoice id>`; every attempt is a row in `payments`. On
//! success the invoice is PAID and the subscription becomes TRIALING or ACTIVE (an event).
//!
//! On a failed payment the call answers FAILED_PRECONDITION "payment failed: ...", the invoice
//! stays FAILED and the subscription INCOMPLETE, which customers never see. Nothing blocks a
//! retry: the next CreateSubscription for the order charges the same invoice again, with the
//! same idempotency key, and completes the same subscription. Requests that were waiting on
//! the failed charge report its failure rather than charging again.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use kapal::auth::{InternalKey, VerifyPrincipal};
use kapal::catalog::Catalog;
use kapal::clock::SharedClock;
use kapal::db::{Db, DbConfig, Migrations};
use kapal::proto::internal::v1::billing_service_server::BillingServiceServer;
use kapal::proto::v1::billing_admin_service_server::BillingAdminServiceServer;
use kapal::proto::v1::subscription_service_server::SubscriptionServiceServer;
use tokio::net::TcpListener;
use tonic::server::NamedService as _;

mod admin;
mod api;
mod charging;
pub mod delivery;
pub mod error;
pub mod lifecycle;
mod metrics;
pub mod notify;
mod operator;
pub mod payments;
pub mod refunds;
pub mod scheduler;
pub mod schema;
mod store;

pub use error::Error;
pub use payments::{
    ChargeRequest, DummyProvider, PaymentError, PaymentProvider, PaymentReceipt, RefundRequest,
};

const POSTGRES_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");

/// The name of billing's database (SQLite file `billing.db`, PostgreSQL schema `kapal_billing`).
pub const DB_NAME: &str = "billing";

/// Billing's migrations, for [`Db::connect`] (tools and tests that open billing's database).
pub fn migrations() -> Migrations {
    Migrations {
        postgres: POSTGRES_MIGRATIONS,
        sqlite: SQLITE_MIGRATIONS,
    }
}

/// How to run billing.
pub struct Config {
    /// Where billing keeps its tables.
    pub db: DbConfig,
    /// Apps and plans; prices and trial lengths come from here.
    pub catalog: Arc<Catalog>,
    /// Verifies the principals the gateway and other services sign.
    pub key: InternalKey,
    /// The clock every period, trial end and invoice date is computed from.
    pub clock: SharedClock,
    /// Who settles invoices.
    pub payments: Arc<dyn PaymentProvider>,
    /// Grace, suspension and retention periods of the lifecycle scheduler.
    pub scheduler: scheduler::Settings,
    /// How often the scheduler runs in the background; `None`: not at all (tests call
    /// [`scheduler::Scheduler::tick`] themselves).
    pub scheduler_interval: Option<std::time::Duration>,
    /// Where lifecycle notifications (renewal upcoming, payment failed, suspended, expired) go.
    pub notifier: Arc<dyn notify::Notifier>,
    /// The control-plane, that entitlement changes are delivered to
    /// (`kapal.internal.v1.EntitlementService`), operators' actions audited with and plan
    /// changes checked against; `None`: changes stay in the outbox (tests that do not need
    /// them). Set by the stack builder (`kapal-stack`) when billing runs in a stack.
    pub control_plane: Option<kapal::serve::Upstream>,
    /// How long a delivery to the control-plane may take before it ends with
    /// DEADLINE_EXCEEDED (and is retried). Default 10 s.
    pub internal_deadline: std::time::Duration,
}

impl Config {
    /// Billing with the system clock and the dummy payment provider.
    pub fn new(db: DbConfig, catalog: Arc<Catalog>, key: InternalKey) -> Config {
        Config {
            db,
            catalog,
            key,
            clock: kapal::clock::system(),
            payments: Arc::new(DummyProvider::new()),
            scheduler: scheduler::Settings::default(),
            scheduler_interval: Some(std::time::Duration::from_secs(60)),
            notifier: Arc::new(notify::LogNotifier),
            control_plane: None,
            internal_deadline: kapal::serve::DEFAULT_INTERNAL_DEADLINE,
        }
    }

    /// Every invalid setting, named.
    pub fn validate(&self) -> Vec<kapal::config::Problem> {
        let mut problems = Vec::new();
        if self.internal_deadline.is_zero() {
            problems.push(kapal::config::Problem::new(
                "internal_deadline",
                "must be longer than zero",
            ));
        }
        if self.scheduler_interval.is_some_and(|i| i.is_zero()) {
            problems.push(kapal::config::Problem::new(
                "scheduler_interval",
                "must be longer than zero (None: no scheduler)",
            ));
        }
        problems
    }
}

/// Connects the database (running migrations) and serves billing's gRPC services on
/// `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    build(config).await?.serve(listener, shutdown).await
}

/// Connects the database (running migrations) and builds billing: its routes, and its
/// background work (delivery of entitlement changes, the lifecycle scheduler).
pub async fn build(config: Config) -> anyhow::Result<kapal::serve::Built> {
    kapal::config::check("billing", config.validate())?;
    let Config {
        db,
        catalog,
        key,
        clock,
        payments,
        scheduler,
        scheduler_interval,
        notifier,
        control_plane,
        internal_deadline,
    } = config;
    let db = Db::connect(&db, DB_NAME, migrations())
        .await
        .context("opening billing's database")?;
    tracing::info!(
        backend = db.backend(),
        provider = payments.name(),
        "billing database ready"
    );
    // Operators' actions go to the control-plane's audit log before they are carried out.
    let audit = match &control_plane {
        Some(upstream) => Some(
            kapal::proto::internal::v1::audit_service_client::AuditServiceClient::new(
                upstream
                    .internal_channel_with_deadline(&key, internal_deadline)
                    .context("the control-plane endpoint")?,
            ),
        ),
        None => None,
    };
    let mut billing = api::Billing::new(
        db.clone(),
        catalog,
        clock.clone(),
        payments.clone(),
        operator::AuditLog::new(audit),
    )
    .with_refund_policy(scheduler.refunds);
    if let Some(upstream) = &control_plane {
        // ChangePlan asks the control-plane whether a bigger plan fits the cluster.
        let channel = upstream
            .internal_channel_with_deadline(&key, internal_deadline)
            .context("the control-plane endpoint")?;
        billing = billing.with_control_plane(
            kapal::proto::internal::v1::entitlement_service_client::EntitlementServiceClient::new(
                channel,
            ),
        );
    }

    // Background tasks stop after the server.
    let mut background = kapal::serve::Background::new();
    // The metrics collector is registered for as long as the service's background work runs.
    let collector = metrics::register(db.clone(), clock.clone());
    let stopped = background.stopped();
    background.spawn(async move {
        stopped.await;
        drop(collector);
    });
    // The scheduler wakes the delivery as soon as it wrote entitlement changes.
    let outbox_written = Arc::new(tokio::sync::Notify::new());
    if let Some(upstream) = &control_plane {
        let delivery = delivery::Delivery::with_deadline(
            db.clone(),
            clock.clone(),
            upstream.clone(),
            &key,
            internal_deadline,
        )
        .context("the control-plane endpoint")?;
        let stop = background.stopped();
        let wake = outbox_written.clone();
        background.spawn(async move {
            delivery.run(wake, stop).await;
        });
        tracing::info!(%upstream, "delivering entitlement changes to the control-plane");
    } else {
        tracing::warn!("no control-plane endpoint: entitlement changes stay in billing's outbox");
    }
    if let Some(interval) = scheduler_interval {
        let scheduler = scheduler::Scheduler::new(db, clock, payments, scheduler)
            .with_notifier(notifier)
            .with_outbox_wake(outbox_written);
        let stop = background.stopped();
        background.spawn(async move {
            scheduler.run(interval, stop).await;
        });
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in [
        BillingServiceServer::<api::Billing>::NAME,
        SubscriptionServiceServer::<api::Billing>::NAME,
        BillingAdminServiceServer::<api::Billing>::NAME,
    ] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }

    let routes = tonic::service::Routes::new(health_service)
        .add_service(kapal::serve::reflection(kapal::proto::DESCRIPTOR_SET)?)
        .add_service(VerifyPrincipal(key.clone()).wrap(BillingServiceServer::new(billing.clone())))
        .add_service(
            VerifyPrincipal(key.clone()).wrap(SubscriptionServiceServer::new(billing.clone())),
        )
        .add_service(VerifyPrincipal(key).wrap(BillingAdminServiceServer::new(billing)))
        .prepare();
    let routes = kapal::metrics::instrument(routes, "billing");
    Ok(kapal::serve::Built::new("billing", routes, background))
}
