//! Kapal's control-plane: accounts, the catalog, orders (idempotent checkout), instances (desired
//! state and status history), and the orchestration of billing and the provisioner.
//!
//! Public services (reached through the gateway): `kapal.v1.CatalogService`, `AccountService`,
//! `OrderService`, `InstanceService`, `SupportService`, and for operators `AdminService` and
//! `SupportAdminService` (role ADMIN). Internal services: `kapal.internal.v1.IdentityService`
//! (for the gateway), `InstanceStateService` (for the provisioner) and `EntitlementService` (for
//! billing).
//!
//! Where things live, in three rooms:
//! - **Handlers**, one module per service, thin: they check the caller and the request, call the
//!   rules and the store, and turn the result into the answer. `accounts` (AccountService, with
//!   `sessions`), `catalog`, `orders`, `instances`, `admin`, `operator_api` (OperatorService and
//!   billing's AuditService), `entitlements`, `internal` (IdentityService,
//!   InstanceStateService), `support::api`. No handler reaches into another for data.
//! - **Rules** the handlers share: `lifecycle` (an instance's effective desired state within
//!   billing, the refusals that follow, its wire form and provisioner spec, the push to the
//!   provisioner, its usage, and the actions on it for owners and operators), `capacity` (the
//!   ceiling), `login` (log-in back-off, bounded hashing), `suspensions`, `diagnostics`,
//!   `credentials` (the cache); background jobs: `changes` (the change poller for watches),
//!   `alerting`, `metrics`, the order recovery in `orders`.
//! - **Data access**: [`store`](crate::store), one module per table, holding every diesel query
//!   (support tickets: `support::store`). `models` and `schema` are the rows and tables.

mod accounts;
mod admin;
mod alerting;
mod capacity;
mod catalog;
mod changes;
mod credentials;
mod diagnostics;
mod entitlements;
pub mod error;
mod instances;
mod internal;
mod lifecycle;
mod login;
mod mail;
mod metrics;
mod models;
mod operator_api;
pub mod operators;
mod orders;
mod schema;
mod sessions;
mod store;
pub mod support;
mod suspensions;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use kapal::auth::{InternalKey, VerifyPrincipal};
use kapal::catalog::Catalog;
use kapal::clock::SharedClock;
use kapal::config::Problem;
use kapal::db::{Db, DbConfig, Migrations};
use kapal::proto::internal::v1::audit_service_server::AuditServiceServer;
use kapal::proto::internal::v1::billing_service_client::BillingServiceClient;
use kapal::proto::internal::v1::entitlement_service_server::EntitlementServiceServer;
use kapal::proto::internal::v1::identity_service_server::IdentityServiceServer;
use kapal::proto::internal::v1::instance_state_service_server::InstanceStateServiceServer;
use kapal::proto::internal::v1::provisioner_service_client::ProvisionerServiceClient;
use kapal::proto::v1::account_service_server::AccountServiceServer;
use kapal::proto::v1::admin_service_server::AdminServiceServer;
use kapal::proto::v1::catalog_service_server::CatalogServiceServer;
use kapal::proto::v1::instance_service_server::InstanceServiceServer;
use kapal::proto::v1::operator_service_server::OperatorServiceServer;
use kapal::proto::v1::order_service_server::OrderServiceServer;
use kapal::proto::v1::support_admin_service_server::SupportAdminServiceServer;
use kapal::proto::v1::support_service_server::SupportServiceServer;
use kapal::serve::{InternalChannel, Upstream};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

pub use mail::MailConfig;

const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// How the control-plane runs.
pub struct Config {
    pub db: DbConfig,
    pub catalog: Arc<Catalog>,
    /// Signs and verifies principals between Kapal's services.
    pub key: InternalKey,
    pub clock: SharedClock,
    /// Billing (its internal gRPC endpoint, e.g. `http://127.0.0.1:8082`, or its routes in
    /// this process; the stack builder `kapal-stack` chooses).
    pub billing: Upstream,
    /// The provisioner.
    pub provisioner: Upstream,
    /// Instances are served on `<customer-id>.<app>.<domain>`.
    pub domain: String,
    /// Lifetime of a login session.
    pub session_ttl: Duration,
    /// How often orders left pending (e.g. by a crash) are picked up again.
    pub recovery_interval: Duration,
    /// How many pending orders the recovery works on at once (default 8).
    pub recovery_concurrency: usize,
    /// How long the recovery works on one pending order before it leaves it for the next
    /// round (default 30 s): one stuck order holds neither the others nor the loop.
    pub recovery_order_timeout: Duration,
    /// How long a call to another Kapal service (billing, the provisioner) may take before it
    /// ends with DEADLINE_EXCEEDED (default 10 s).
    pub internal_deadline: Duration,
    /// Live WatchInstance streams one account may hold at once (each holds a task and wakes
    /// on every change); one more is RESOURCE_EXHAUSTED. Default 20.
    pub max_watches_per_account: usize,
    /// How often this process's one change poller reads the instances changed (by any
    /// replica) for its WatchInstance streams, while any is open (default 1 s): a change made
    /// through another replica reaches a stream within about this long.
    pub watch_poll_interval: Duration,
    /// Checkouts are refused when the plan would push committed CPU or memory over this share
    /// of the cluster's allocatable (percent, 1-100; default 80).
    pub capacity_ceiling_percent: u32,
    /// How long the provisioner's capacity snapshot is reused (default 5 s).
    pub capacity_cache_ttl: Duration,
    /// How long a deleted instance's data (volumes, secrets, namespace) is kept.
    pub data_retention: Duration,
    /// Support tickets' first-response SLAs per severity and when a ticket is at risk.
    pub support: support::Settings,
    /// Where support tickets' notices and alerts that open or close go (default: the log).
    pub notifier: Arc<dyn support::notify::Notifier>,
    /// How often the alerts of ListAlerts are worked out and their openings and closings
    /// pushed to the notifier (default 60 s; zero: never, only ListAlerts shows them).
    pub alert_interval: Duration,
    /// The SMTP server for verification and password-reset mail. `Some`: sign-up mails a code,
    /// only verified accounts check out, and passwords can be reset. `None`: email verification
    /// is off (development only: sign-up answers at once and tells whether an address is taken).
    pub mail: Option<MailConfig>,
    /// Live (not deleted) instances one account may hold, counting orders in progress; the
    /// next checkout is RESOURCE_EXHAUSTED. Default 5.
    pub max_instances_per_account: usize,
}

impl Config {
    /// A configuration with the defaults: system clock, domain `kapal.localhost`, 30-day sessions.
    pub fn new(
        db: DbConfig,
        catalog: Arc<Catalog>,
        key: InternalKey,
        billing: impl Into<Upstream>,
        provisioner: impl Into<Upstream>,
    ) -> Config {
        Config {
            db,
            catalog,
            key,
            clock: kapal::clock::system(),
            billing: billing.into(),
            provisioner: provisioner.into(),
            domain: "kapal.localhost".into(),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            recovery_interval: Duration::from_secs(15),
            recovery_concurrency: 8,
            recovery_order_timeout: Duration::from_secs(30),
            internal_deadline: kapal::serve::DEFAULT_INTERNAL_DEADLINE,
            max_watches_per_account: 20,
            watch_poll_interval: Duration::from_secs(1),
            capacity_ceiling_percent: 80,
            capacity_cache_ttl: Duration::from_secs(5),
            data_retention: Duration::from_secs(7 * 24 * 3600),
            support: support::Settings::default(),
            notifier: Arc::new(support::notify::LogNotifier),
            alert_interval: Duration::from_secs(60),
            mail: None,
            max_instances_per_account: 5,
        }
    }

    /// Every invalid setting, named.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(e) = validate_domain(&self.domain) {
            problems.push(Problem::new("domain", format!("{e:#}")));
        }
        if self.recovery_concurrency == 0 {
            problems.push(Problem::new("recovery_concurrency", "must be at least 1"));
        }
        for (setting, value) in [
            ("recovery_order_timeout", self.recovery_order_timeout),
            ("recovery_interval", self.recovery_interval),
            ("watch_poll_interval", self.watch_poll_interval),
            ("internal_deadline", self.internal_deadline),
            ("session_ttl", self.session_ttl),
        ] {
            if value.is_zero() {
                problems.push(Problem::new(setting, "must be longer than zero"));
            }
        }
        if !(1..=100).contains(&self.capacity_ceiling_percent) {
            problems.push(Problem::new(
                "capacity_ceiling_percent",
                format!(
                    "{} is not a percentage from 1 to 100",
                    self.capacity_ceiling_percent
                ),
            ));
        }
        if self.max_instances_per_account == 0 {
            problems.push(Problem::new(
                "max_instances_per_account",
                "must be at least 1",
            ));
        }
        if self.max_watches_per_account == 0 {
            problems.push(Problem::new(
                "max_watches_per_account",
                "must be at least 1",
            ));
        }
        if chrono::Duration::from_std(self.data_retention).is_err() {
            problems.push(Problem::new("data_retention", "is too long"));
        }
        if let Some(mail) = &self.mail
            && let Err(e) = mail.check()
        {
            problems.push(Problem::new("mail", format!("{e:#}")));
        }
        problems
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub db: Db,
    pub catalog: Arc<Catalog>,
    pub clock: SharedClock,
    pub billing: BillingServiceClient<InternalChannel>,
    pub provisioner: ProvisionerServiceClient<InternalChannel>,
    pub domain: String,
    pub session_ttl: chrono::Duration,
    /// How long a deleted instance's data is kept.
    pub data_retention: chrono::Duration,
    /// Ids of instances whose state changed, for watchers.
    pub changes: broadcast::Sender<String>,
    /// The provisioner's capacity snapshot, shared.
    pub capacity: Arc<capacity::CapacityCache>,
    /// See [`Config::capacity_ceiling_percent`].
    pub ceiling_percent: u32,
    /// Instances' credentials read from the cluster (they never change).
    pub credentials: Arc<credentials::CredentialsCache>,
    /// Live WatchInstance streams per account.
    pub watches: Arc<instances::Watches>,
    /// See [`Config::max_instances_per_account`].
    pub max_instances_per_account: usize,
    /// See [`Config::support`].
    pub support: Arc<support::Settings>,
    /// See [`Config::notifier`].
    pub notifier: Arc<dyn support::notify::Notifier>,
    /// Sends verification and reset codes; `None`: email verification is off.
    pub mailer: Option<mail::Mailer>,
}

impl Ctx {
    pub fn now(&self) -> chrono::NaiveDateTime {
        self.clock.now().naive_utc()
    }
}

/// Runs the control-plane on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    build(config).await?.serve(listener, shutdown).await
}

/// Connects the database (running migrations) and builds the control-plane: its routes, and
/// its background work (order recovery, support sweep, change poller, alert push).
pub async fn build(config: Config) -> anyhow::Result<kapal::serve::Built> {
    kapal::config::check("control-plane", config.validate())?;
    let db = Db::connect(
        &config.db,
        "control-plane",
        Migrations {
            postgres: POSTGRES_MIGRATIONS,
            sqlite: SQLITE_MIGRATIONS,
        },
    )
    .await?;
    let key = config.key.clone();
    let mailer = config.mail.as_ref().map(mail::Mailer::new).transpose()?;
    if mailer.is_none() {
        tracing::warn!(
            "email verification is off: accounts check out without a verified address and passwords cannot be reset (development only)"
        );
    }
    let ctx = Ctx {
        db,
        catalog: config.catalog,
        clock: config.clock,
        billing: BillingServiceClient::new(
            config
                .billing
                .internal_channel_with_deadline(&key, config.internal_deadline)
                .context("billing")?,
        ),
        provisioner: ProvisionerServiceClient::new(
            config
                .provisioner
                .internal_channel_with_deadline(&key, config.internal_deadline)
                .context("the provisioner")?,
        ),
        domain: config.domain,
        session_ttl: chrono::Duration::from_std(config.session_ttl)
            .context("session_ttl is too large")?,
        data_retention: chrono::Duration::from_std(config.data_retention)
            .context("data_retention is too large")?,
        changes: broadcast::channel(1024).0,
        watches: Arc::new(instances::Watches::new(config.max_watches_per_account)),
        capacity: Arc::new(capacity::CapacityCache::new(config.capacity_cache_ttl)),
        ceiling_percent: config.capacity_ceiling_percent,
        credentials: Arc::new(credentials::CredentialsCache::new(credentials::CAPACITY)),
        mailer,
        max_instances_per_account: config.max_instances_per_account,
        support: Arc::new(config.support),
        notifier: config.notifier,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AccountServiceServer<accounts::Accounts>>()
        .await;
    health_reporter
        .set_serving::<CatalogServiceServer<catalog::CatalogApi>>()
        .await;
    health_reporter
        .set_serving::<OrderServiceServer<orders::Orders>>()
        .await;
    health_reporter
        .set_serving::<InstanceServiceServer<instances::Instances>>()
        .await;
    health_reporter
        .set_serving::<IdentityServiceServer<internal::Identity>>()
        .await;
    health_reporter
        .set_serving::<AdminServiceServer<admin::Admin>>()
        .await;
    health_reporter
        .set_serving::<OperatorServiceServer<operator_api::Operator>>()
        .await;
    health_reporter
        .set_serving::<InstanceStateServiceServer<internal::InstanceState>>()
        .await;
    health_reporter
        .set_serving::<SupportServiceServer<support::api::Support>>()
        .await;
    health_reporter
        .set_serving::<SupportAdminServiceServer<support::api::SupportAdmin>>()
        .await;
    health_reporter
        .set_serving::<EntitlementServiceServer<entitlements::Entitlements>>()
        .await;
    health_reporter
        .set_serving::<AuditServiceServer<operator_api::AuditApi>>()
        .await;

    let verify = VerifyPrincipal(key);
    let mut background = kapal::serve::Background::new();
    let stop_rx = background.stopping();
    // The metrics collector is registered for as long as the service's background work runs.
    let collector = metrics::register(ctx.clone());
    let stopped = background.stopped();
    background.spawn(async move {
        stopped.await;
        drop(collector);
    });
    background.spawn(orders::recover_pending(
        ctx.clone(),
        orders::Recovery {
            interval: config.recovery_interval,
            concurrency: config.recovery_concurrency,
            order_timeout: config.recovery_order_timeout,
        },
        stop_rx.clone(),
    ));
    background.spawn(support::sweep(ctx.clone(), stop_rx.clone()));
    background.spawn(changes::poll(
        ctx.clone(),
        config.watch_poll_interval,
        stop_rx.clone(),
    ));
    background.spawn(alerting::push(
        ctx.clone(),
        config.alert_interval,
        stop_rx.clone(),
    ));

    let routes = tonic::service::Routes::new(health_service)
        .add_service(kapal::serve::reflection(kapal::proto::DESCRIPTOR_SET)?)
        .add_service(verify.wrap(CatalogServiceServer::new(catalog::CatalogApi(ctx.clone()))))
        .add_service(verify.wrap(AccountServiceServer::new(accounts::Accounts(ctx.clone()))))
        .add_service(verify.wrap(OrderServiceServer::new(orders::Orders(ctx.clone()))))
        .add_service(
            verify.wrap(InstanceServiceServer::new(instances::Instances {
                ctx: ctx.clone(),
                stop: stop_rx.clone(),
            })),
        )
        .add_service(verify.wrap(IdentityServiceServer::new(internal::Identity(ctx.clone()))))
        .add_service(verify.wrap(AdminServiceServer::new(admin::Admin(ctx.clone()))))
        .add_service(
            verify.wrap(OperatorServiceServer::new(operator_api::Operator(
                ctx.clone(),
            ))),
        )
        .add_service(verify.wrap(SupportServiceServer::new(support::api::Support(
            ctx.clone(),
        ))))
        .add_service(
            verify.wrap(SupportAdminServiceServer::new(support::api::SupportAdmin(
                ctx.clone(),
            ))),
        )
        .add_service(
            verify.wrap(InstanceStateServiceServer::new(internal::InstanceState(
                ctx.clone(),
            ))),
        )
        .add_service(
            verify.wrap(EntitlementServiceServer::new(entitlements::Entitlements(
                ctx.clone(),
            ))),
        )
        .add_service(verify.wrap(AuditServiceServer::new(operator_api::AuditApi(ctx.clone()))))
        .prepare();
    let routes = kapal::metrics::instrument(routes, "control-plane");
    tracing::info!(backend = ctx.db.backend(), "control-plane built");
    Ok(kapal::serve::Built::new(
        "control-plane",
        routes,
        background,
    ))
}

fn validate_domain(domain: &str) -> anyhow::Result<()> {
    let ok = !domain.is_empty()
        && domain.len() <= 200
        && domain.split('.').all(|l| kapal::wire::is_dns_label(l, 63));
    anyhow::ensure!(
        ok,
        "KAPAL_DOMAIN must be a lower-case DNS name such as apps.example.com, got {domain:?}"
    );
    Ok(())
}
