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
    /// The control-plane (`http://host:port`) that entitlement changes are delivered to
    /// (`kapal.internal.v1.EntitlementService`); `None`: they stay in the outbox (tests that do
    /// not need them).
    pub control_plane_endpoint: Option<String>,
    /// How long a delivery to the control-plane may take before it ends with
    /// DEADLINE_EXCEEDED (and is retried). Default 10 s.
    pub internal_deadline: std::time::Duration,
    /// Where to publish billing's routes for a gateway in the same process (see
    /// [`kapal::serve::LocalRoutes`]); `None` serves over the listener only.
    pub local: Option<kapal::serve::LocalRoutes>,
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
            control_plane_endpoint: None,
            internal_deadline: kapal::serve::DEFAULT_INTERNAL_DEADLINE,
            local: None,
        }
    }
}

/// Connects the database (running migrations) and serves billing's gRPC services on
/// `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Config {
        db,
        catalog,
        key,
        clock,
        payments,
        scheduler,
        scheduler_interval,
        notifier,
        control_plane_endpoint,
        internal_deadline,
        local,
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
    let audit = match control_plane_endpoint.as_deref() {
        Some(endpoint) => Some(
            kapal::proto::internal::v1::audit_service_client::AuditServiceClient::new(
                kapal::serve::internal_channel_with_deadline(endpoint, &key, internal_deadline)
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
    if let Some(endpoint) = control_plane_endpoint.as_deref() {
        // ChangePlan asks the control-plane whether a bigger plan fits the cluster.
        let channel =
            kapal::serve::internal_channel_with_deadline(endpoint, &key, internal_deadline)
                .context("the control-plane endpoint")?;
        billing = billing.with_control_plane(
            kapal::proto::internal::v1::entitlement_service_client::EntitlementServiceClient::new(
                channel,
            ),
        );
    }

    // Background tasks stop when `shutdown` completes.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let mut background = tokio::task::JoinSet::new();
    let _metrics = metrics::register(db.clone(), clock.clone());
    // The scheduler wakes the delivery as soon as it wrote entitlement changes.
    let outbox_written = Arc::new(tokio::sync::Notify::new());
    if let Some(endpoint) = control_plane_endpoint.as_deref() {
        let delivery = delivery::Delivery::with_deadline(
            db.clone(),
            clock.clone(),
            endpoint,
            &key,
            internal_deadline,
        )
        .context("the control-plane endpoint")?;
        let mut stop = stop_rx.clone();
        let wake = outbox_written.clone();
        background.spawn(async move {
            delivery
                .run(wake, async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await;
        });
        tracing::info!(%endpoint, "delivering entitlement changes to the control-plane");
    } else {
        tracing::warn!("no control-plane endpoint: entitlement changes stay in billing's outbox");
    }
    if let Some(interval) = scheduler_interval {
        let scheduler = scheduler::Scheduler::new(db, clock, payments, scheduler)
            .with_notifier(notifier)
            .with_outbox_wake(outbox_written);
        let mut stop = stop_rx.clone();
        background.spawn(async move {
            scheduler
                .run(interval, async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await;
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
    if let Some(local) = &local {
        local.set(routes.clone());
    }
    let router = tonic::transport::Server::builder().add_routes(routes);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "billing serving gRPC");
    }
    let served = kapal::serve::serve(router, listener, shutdown).await;
    drop(stop_rx);
    while background.join_next().await.is_some() {}
    served
}
