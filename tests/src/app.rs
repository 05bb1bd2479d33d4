//! `TestApp`: Kapal's four real services on free loopback ports, composed by the stack builder
//! (`kapal-stack`) as `kapal server` composes them (in-process edges, or all over the network
//! with [`TestAppBuilder::upstreams_over_the_network`]), with a client side for tests (native
//! gRPC and grpc-web through the gateway).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kapal::auth::InternalKey;
use kapal::catalog::Catalog;
use kapal::clock::SharedClock;
use kapal::db::DbConfig;
use kapal::proto::v1::account_service_client::AccountServiceClient;
use kapal::proto::v1::admin_service_client::AdminServiceClient;
use kapal::proto::v1::billing_admin_service_client::BillingAdminServiceClient;
use kapal::proto::v1::catalog_service_client::CatalogServiceClient;
use kapal::proto::v1::instance_service_client::InstanceServiceClient;
use kapal::proto::v1::operator_service_client::OperatorServiceClient;
use kapal::proto::v1::order_service_client::OrderServiceClient;
use kapal::proto::v1::subscription_service_client::SubscriptionServiceClient;
use kapal::proto::v1::support_admin_service_client::SupportAdminServiceClient;
use kapal::proto::v1::support_service_client::SupportServiceClient;
use kapal::proto::v1::{InstanceStatus, SignUpRequest, WatchInstanceRequest};
use kapal::testing::Backend;
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How to build a [`TestApp`].
pub struct TestAppBuilder {
    backend: Backend,
    domain: String,
    options: Options,
}

/// What a test may change about the services (kept across [`TestApp::restart`]).
#[derive(Clone, Default)]
struct Options {
    max_message_bytes: Option<usize>,
    rate_limit: Option<(u32, u32)>,
    /// Billing's clock and how often its scheduler runs (default: system clock, every minute).
    billing_clock: Option<SharedClock>,
    scheduler_interval: Option<Duration>,
    scheduler: Option<kapal_billing::scheduler::Settings>,
    payments: Option<Arc<dyn kapal_billing::PaymentProvider>>,
    /// Where billing's scheduler sends notifications (default: the log).
    billing_notifier: Option<Arc<dyn kapal_billing::notify::Notifier>>,
    /// Share of the cluster's allocatable CPU and memory checkouts may commit (percent).
    capacity_ceiling_percent: Option<u32>,
    /// How long a deleted instance's data is kept.
    data_retention: Option<Duration>,
    /// The gateway reaches the control-plane and billing over their sockets, as when they run
    /// in separate processes (default: directly, as `kapal server` runs them together).
    upstreams_over_the_network: bool,
    /// Live instances one account may hold (default: the control-plane's).
    max_instances_per_account: Option<usize>,
    /// Proxies whose `x-forwarded-for` the gateway believes (default: none).
    trusted_proxies: Vec<kapal::cidr::Cidr>,
    /// The control-plane's clock (default: the system clock).
    control_plane_clock: Option<SharedClock>,
    /// Support SLAs and where support notices go (default: the control-plane's defaults).
    support: Option<kapal_control_plane::support::Settings>,
    support_notifier: Option<Arc<dyn kapal_control_plane::support::notify::Notifier>>,
    /// The built web console the gateway serves to browsers (default: none).
    console_dir: Option<std::path::PathBuf>,
    /// The control-plane sends mail here (email verification on); default: off.
    mail: Option<kapal_control_plane::MailConfig>,
    /// The catalog every service loads (default: the repository's `catalog/`).
    catalog_dir: Option<std::path::PathBuf>,
    /// The app catalog of every service (default: the repository's `catalog/`).
    catalog: Option<Arc<Catalog>>,
    /// Instance pods go to the local cluster's real nodes, running its local images
    /// ([`TestAppBuilder::on_real_nodes`]); default: kwok nodes, the catalog's images.
    real_nodes: bool,
    /// The provisioner's wildcard certificate Secret (`namespace/name`) for instance Ingresses.
    tls_secret: Option<String>,
    /// Export traces to this OTLP/gRPC endpoint (default: none). Process-wide: the first
    /// TestApp of a test binary sets it up (see [`TestAppBuilder::with_otlp_endpoint`]).
    otlp_endpoint: Option<String>,
}

/// The node label and taint of the local cluster's real nodes (scripts/real-nodes).
pub const REAL_NODE_LABEL: (&str, &str) = ("kapal.dev/real-node", "true");
pub const REAL_NODE_TOLERATION: &str = "kapal.dev/real-node=true:NoSchedule";
/// The address of real node `i` (1-based): scripts/real-nodes gives node i `$KAPAL_REAL_NET.(10+i)`
/// (default network 10.213.0).
pub fn real_node_ip(i: u8) -> String {
    let net = std::env::var("KAPAL_REAL_NET").unwrap_or_else(|_| "10.213.0".to_string());
    format!("{net}.{}", 10 + u16::from(i))
}
/// The StorageClass of instance volumes on real nodes: K3s' local-path-provisioner
/// (scripts/real-nodes), directories made 0777 on the node the pod was placed on.
pub const REAL_NODE_STORAGE_CLASS: &str = "real-local-path";

/// The local cluster's map of catalog images to the images built on the machine.
pub fn local_image_map_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster/images.map")
}

/// The running services of one test.
pub struct TestApp {
    pub backend: Backend,
    pub gateway_addr: SocketAddr,
    pub key: InternalKey,
    pub db: DbConfig,
    pub catalog: Arc<Catalog>,
    pub kubeconfig: std::path::PathBuf,
    pub domain: String,
    /// Temporary directory with the SQLite files (kept across [`TestApp::restart`]).
    pub dir: Arc<tempfile::TempDir>,
    /// [`TestApp::admin`] signs this email up and makes it an operator as `kapal admin grant` does.
    pub admin_email: String,
    /// This stack's partition label on the cluster (objects of other stacks are not its orphans).
    pub partition: String,
    options: Options,
    /// The services, composed by the stack builder (kapal-stack) as `kapal server` composes
    /// them; `None` before the first start.
    running: Option<kapal_stack::Running>,
    /// Further control-planes and gateways ([`TestApp::replica`]).
    replicas: Vec<kapal_stack::Running>,
    /// The cluster's admin config, for deleting this stack's instances when it is dropped.
    cluster_config: Option<kube::Config>,
    /// Billing's and the provisioner's internal endpoints, for [`TestApp::replica`].
    billing_url: String,
    prov_url: String,
}

impl TestAppBuilder {
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The gateway calls the control-plane and billing over their sockets (HTTP/2), as when
    /// each service runs in its own process, instead of directly in this process.
    pub fn upstreams_over_the_network(mut self) -> Self {
        self.options.upstreams_over_the_network = true;
        self
    }

    /// The gateway serves the built web console from `dir` (`console/dist`), as
    /// `kapal server --console-dir` does.
    pub fn with_console_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.options.console_dir = Some(dir.into());
        self
    }

    /// Every service uses `catalog` instead of the repository's (e.g. with an app made to fail).
    pub fn with_catalog(mut self, catalog: Catalog) -> Self {
        self.options.catalog = Some(Arc::new(catalog));
        self
    }

    pub fn with_max_message_bytes(mut self, n: usize) -> Self {
        self.options.max_message_bytes = Some(n);
        self
    }

    pub fn with_rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.options.rate_limit = Some((per_second, burst));
        self
    }

    /// Billing runs on `clock`, its scheduler every `interval`.
    pub fn with_billing_clock(mut self, clock: SharedClock, interval: Duration) -> Self {
        self.options.billing_clock = Some(clock);
        self.options.scheduler_interval = Some(interval);
        self
    }

    pub fn with_scheduler_settings(mut self, settings: kapal_billing::scheduler::Settings) -> Self {
        self.options.scheduler = Some(settings);
        self
    }

    pub fn with_payments(mut self, payments: Arc<dyn kapal_billing::PaymentProvider>) -> Self {
        self.options.payments = Some(payments);
        self
    }

    /// Billing's scheduler sends its notifications (lifecycle, failed refunds) to `notifier`.
    pub fn with_billing_notifier(
        mut self,
        notifier: Arc<dyn kapal_billing::notify::Notifier>,
    ) -> Self {
        self.options.billing_notifier = Some(notifier);
        self
    }

    pub fn with_capacity_ceiling(mut self, percent: u32) -> Self {
        self.options.capacity_ceiling_percent = Some(percent);
        self
    }

    /// The gateway believes `x-forwarded-for` from these networks (`--trusted-proxies`).
    pub fn with_trusted_proxies(mut self, proxies: Vec<kapal::cidr::Cidr>) -> Self {
        self.options.trusted_proxies = proxies;
        self
    }

    /// Live instances (and orders in progress) one account may hold.
    pub fn with_max_instances_per_account(mut self, n: usize) -> Self {
        self.options.max_instances_per_account = Some(n);
        self
    }

    /// The control-plane runs on `clock` (support SLAs, alerts).
    pub fn with_control_plane_clock(mut self, clock: SharedClock) -> Self {
        self.options.control_plane_clock = Some(clock);
        self
    }

    /// Support tickets' SLAs, and where their notices go.
    pub fn with_support(
        mut self,
        settings: kapal_control_plane::support::Settings,
        notifier: Arc<dyn kapal_control_plane::support::notify::Notifier>,
    ) -> Self {
        self.options.support = Some(settings);
        self.options.support_notifier = Some(notifier);
        self
    }

    /// Email verification on: the control-plane sends its mail to `mail` (see
    /// [`crate::mailpit::Mailpit::mail_config`]).
    pub fn with_mail(mut self, mail: kapal_control_plane::MailConfig) -> Self {
        self.options.mail = Some(mail);
        self
    }

    /// Every service loads its catalog from `dir` instead of the repository's `catalog/`.
    pub fn with_catalog_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.options.catalog_dir = Some(dir.into());
        self
    }

    /// Customers' instances run on the local cluster's real nodes (`scripts/real-nodes`): their
    /// pods select `kapal.dev/real-node=true`, tolerate its taint, run the images of
    /// `deploy/local-cluster/images.map` (built by scripts/build-images) and keep their data on
    /// volumes of [`REAL_NODE_STORAGE_CLASS`], as `kapal server --instance-node-selector
    /// --instance-toleration --image-map --storage-class` would set them.
    pub fn on_real_nodes(mut self) -> Self {
        self.options.real_nodes = true;
        self
    }

    /// The domain instances are served under (`<customer>.<app>.<domain>`; default `kapal.test`).
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = domain.into();
        self
    }

    /// The provisioner copies this wildcard certificate Secret (`namespace/name`) into each
    /// instance namespace for its Ingress (`kapal server --tls-secret`).
    pub fn with_tls_secret(mut self, secret: impl Into<String>) -> Self {
        self.options.tls_secret = Some(secret.into());
        self
    }

    /// The services export their traces over OTLP/gRPC to `endpoint`, as `kapal server
    /// --otlp-endpoint` does. The tracer is process-wide, like the `tracing` subscriber: use it
    /// in a test binary of its own, whose first TestApp sets it up (a later TestApp asking for
    /// another endpoint fails to start). Every call is traced (`always_on`), not the default
    /// share of them.
    pub fn with_otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.options.otlp_endpoint = Some(endpoint.into());
        self
    }

    pub fn with_data_retention(mut self, retention: Duration) -> Self {
        self.options.data_retention = Some(retention);
        self
    }

    pub async fn start(self) -> anyhow::Result<TestApp> {
        kapal::serve::install_crypto_provider();
        let mut telemetry = kapal::telemetry::Settings::new(false, "warn");
        telemetry.otlp_endpoint = self.options.otlp_endpoint.clone();
        telemetry.sampler = Some(kapal::telemetry::Sampler::ALWAYS_ON);
        kapal::telemetry::init(&telemetry)?;
        let cluster = crate::cluster::cluster().await?;
        let dir = Arc::new(tempfile::tempdir()?);
        let db = kapal::testing::db_config(self.backend, dir.path()).await?;
        let catalog = match &self.options.catalog {
            Some(c) => c.clone(),
            None => {
                let dir = self
                    .options
                    .catalog_dir
                    .clone()
                    .unwrap_or_else(kapal::catalog::repo_catalog_dir);
                Arc::new(Catalog::load(&dir)?)
            }
        };
        let mut app = TestApp {
            backend: self.backend,
            gateway_addr: ([127, 0, 0, 1], 0).into(),
            key: InternalKey::random(),
            db,
            catalog,
            kubeconfig: cluster.kubeconfig_path().to_path_buf(),
            domain: self.domain,
            dir,
            admin_email: format!("ops-{}@example.com", short_id()),
            partition: format!("test-{}", short_id()),
            options: self.options,
            running: None,
            replicas: Vec::new(),
            cluster_config: Some(cluster.config().clone()),
            billing_url: String::new(),
            prov_url: String::new(),
        };
        app.spawn_services(None).await?;
        Ok(app)
    }
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            backend: Backend::Sqlite,
            domain: "kapal.test".into(),
            options: Options::default(),
        }
    }

    /// The control-plane's configuration (also of [`TestApp::replica`]s); its upstreams are
    /// set by the stack.
    fn control_plane_config(&self) -> kapal_control_plane::Config {
        let mut cp_config = kapal_control_plane::Config::new(
            self.db.clone(),
            self.catalog.clone(),
            self.key.clone(),
            kapal::serve::Upstream::default(),
            kapal::serve::Upstream::default(),
        );
        cp_config.domain = self.domain.clone();
        if let Some(percent) = self.options.capacity_ceiling_percent {
            cp_config.capacity_ceiling_percent = percent;
        }
        // Tests do not keep deleted instances' data for days on the shared cluster (each stack
        // has its own partition, so no later sweep would find it); a test that looks at
        // retention asks for a period.
        cp_config.data_retention = self
            .options
            .data_retention
            .unwrap_or(Duration::from_secs(1));
        cp_config.recovery_interval = Duration::from_secs(1);
        if let Some(n) = self.options.max_instances_per_account {
            cp_config.max_instances_per_account = n;
        }
        cp_config.mail = self.options.mail.clone();
        cp_config
    }

    /// The gateway's configuration (also of [`TestApp::replica`]s).
    fn gateway_config(&self) -> kapal_gateway::Config {
        let mut gw_config = kapal_gateway::Config::new(
            kapal::serve::Upstream::default(),
            kapal::serve::Upstream::default(),
            self.key.clone(),
        );
        gw_config.trusted_proxies = self.options.trusted_proxies.clone();
        // Tests fire requests fast; the limiter has tests of its own.
        (gw_config.rate_limit_per_second, gw_config.rate_limit_burst) =
            self.options.rate_limit.unwrap_or((100_000, 100_000));
        gw_config
    }

    async fn spawn_services(&mut self, gateway_addr: Option<SocketAddr>) -> anyhow::Result<()> {
        let gateway = match gateway_addr {
            // Restarting: the same address, so clients keep working (retry while it is released).
            Some(addr) => {
                let mut tries = 0;
                loop {
                    match TcpListener::bind(addr).await {
                        Ok(l) => break kapal_stack::Listen::Bound(l),
                        Err(_) if tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(e).context("rebinding the gateway address"),
                    }
                }
            }
            None => kapal_stack::Listen::any_loopback(),
        };

        let mut billing_config =
            kapal_billing::Config::new(self.db.clone(), self.catalog.clone(), self.key.clone());
        if let Some(clock) = &self.options.billing_clock {
            billing_config.clock = clock.clone();
            billing_config.scheduler_interval = self.options.scheduler_interval;
        }
        if let Some(settings) = &self.options.scheduler {
            billing_config.scheduler = settings.clone();
        }
        if let Some(payments) = &self.options.payments {
            billing_config.payments = payments.clone();
        }
        if let Some(notifier) = &self.options.billing_notifier {
            billing_config.notifier = notifier.clone();
        }

        let kube = kapal_provisioner::kube_config_from(Some(&self.kubeconfig)).await?;
        let mut prov_config = kapal_provisioner::Config::new(
            self.db.clone(),
            self.catalog.clone(),
            self.key.clone(),
            kube,
            kapal::serve::Upstream::default(),
        );
        prov_config.resync_interval = Duration::from_secs(5);
        // Other tests' stacks share the cluster: their objects are not this stack's orphans.
        prov_config.partition = self.partition.clone();
        prov_config.tls_secret = self.options.tls_secret.clone();
        if self.options.real_nodes {
            prov_config.node_selector = std::collections::BTreeMap::from([(
                REAL_NODE_LABEL.0.to_string(),
                REAL_NODE_LABEL.1.to_string(),
            )]);
            prov_config.extra_tolerations = vec![
                kapal_provisioner::placement::parse_toleration(REAL_NODE_TOLERATION)
                    .map_err(anyhow::Error::msg)?,
            ];
            prov_config.image_map =
                kapal_provisioner::placement::load_image_map(&local_image_map_path())
                    .map_err(anyhow::Error::msg)?;
            // Traefik and CoreDNS run as processes in node 1's network namespace, not as pods,
            // so the NetworkPolicy engine sees node 1's address (`kapal server
            // --ingress-source-cidrs --dns-cidrs`).
            let node_1 = format!("{}/32", real_node_ip(1));
            let node_1: kapal::cidr::Cidr = node_1
                .parse()
                .map_err(|e| anyhow::anyhow!("{node_1}: {e}"))?;
            prov_config.ingress_sources = vec![node_1];
            prov_config.dns_addresses = vec![node_1];
            prov_config.storage_class = Some(REAL_NODE_STORAGE_CLASS.to_string());
        }

        let mut cp_config = self.control_plane_config();
        if let Some(clock) = &self.options.control_plane_clock {
            cp_config.clock = clock.clone();
        }
        if let Some(settings) = &self.options.support {
            cp_config.support = settings.clone();
        }
        if let Some(notifier) = &self.options.support_notifier {
            cp_config.notifier = notifier.clone();
        }

        let mut gw_config = self.gateway_config();
        if let Some(n) = self.options.max_message_bytes {
            gw_config.max_message_bytes = n;
        }
        gw_config.console_dir = self.options.console_dir.clone();

        use kapal_stack::{Listen, Part};
        let stack = kapal_stack::Stack {
            gateway: Part::Here(gw_config, gateway),
            control_plane: Part::Here(cp_config, Listen::any_loopback()),
            billing: Part::Here(billing_config, Listen::any_loopback()),
            provisioner: Part::Here(prov_config, Listen::any_loopback()),
            in_process: !self.options.upstreams_over_the_network,
            metrics: None,
        };
        let running = stack.start().await?;
        let endpoint = |addr: Option<SocketAddr>| {
            kapal_stack::Running::endpoint(addr).context("a service of the stack has no address")
        };
        self.gateway_addr = running.gateway.context("the gateway's address")?;
        self.billing_url = endpoint(running.billing)?;
        self.prov_url = endpoint(running.provisioner)?;
        self.running = Some(running);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.running.as_mut().and_then(|r| r.try_failed()) {
                return Err(e.context("stopped during start-up"));
            }
            let mut catalog = CatalogServiceClient::new(self.channel());
            if catalog
                .list_apps(kapal::proto::v1::ListAppsRequest {})
                .await
                .is_ok()
            {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "services did not come up in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a second control-plane on the same database, billing and provisioner (as a
    /// deployment with two control-plane replicas runs), with a gateway of its own in front of
    /// it; returns that gateway's address. Both stop with the others.
    pub async fn replica(&mut self) -> anyhow::Result<SocketAddr> {
        use kapal_stack::{Listen, Part};
        let stack = kapal_stack::Stack {
            gateway: Part::Here(self.gateway_config(), Listen::any_loopback()),
            control_plane: Part::Here(self.control_plane_config(), Listen::any_loopback()),
            billing: Part::Elsewhere(self.billing_url.clone()),
            provisioner: Part::Elsewhere(self.prov_url.clone()),
            in_process: !self.options.upstreams_over_the_network,
            metrics: None,
        };
        let running = stack.start().await?;
        let addr = running.gateway.context("the replica's gateway address")?;
        self.replicas.push(running);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let url = format!("http://{addr}");
        loop {
            let channel = Channel::from_shared(url.clone())?.connect_lazy();
            if CatalogServiceClient::new(channel)
                .list_apps(kapal::proto::v1::ListAppsRequest {})
                .await
                .is_ok()
            {
                return Ok(addr);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the replica did not come up in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clients acting with `token` through the gateway at `addr` (e.g. a [`TestApp::replica`]).
    pub fn clients_at(&self, addr: SocketAddr, token: &str) -> anyhow::Result<Clients> {
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
        Ok(Clients::new(channel, token))
    }

    /// Stops every service and waits for them to finish.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for mut replica in self.replicas.drain(..) {
            result = result.and(replica.stop().await);
        }
        if let Some(mut running) = self.running.take() {
            result = result.and(running.stop().await);
        }
        result
    }

    /// Stops every service and starts them again on the same data and gateway address.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        let addr = self.gateway_addr;
        self.spawn_services(Some(addr)).await
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.gateway_addr)
    }

    /// A native gRPC channel to the gateway.
    pub fn channel(&self) -> Channel {
        #[expect(clippy::expect_used, reason = "a loopback URL is always valid")]
        Channel::from_shared(self.endpoint())
            .expect("valid url")
            .connect_lazy()
    }

    /// Clients acting with `token` (or anonymously with "").
    pub fn clients(&self, token: &str) -> Clients {
        Clients::new(self.channel(), token)
    }

    /// Clients acting with `token` over grpc-web (HTTP/1.1 like most browsers, or HTTP/2).
    pub fn web_clients(&self, token: &str, http2: bool) -> anyhow::Result<Clients<WebTransport>> {
        let mut builder =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
        builder.http2_only(http2);
        let transport = tower::ServiceBuilder::new()
            .layer(tonic_web::GrpcWebClientLayer::new())
            .service(builder.build_http());
        Ok(Clients::with_origin(
            transport,
            Some(self.endpoint().parse()?),
            token,
        ))
    }

    /// Signs up a new customer with a unique email and returns its clients.
    pub async fn customer(&self, name: &str) -> anyhow::Result<Customer> {
        self.sign_up(name, "example.com").await
    }

    /// Signs up the operator account (once per app) and makes it an ADMIN the way an operator
    /// does (`kapal admin grant`, on the control-plane's database); returns its clients.
    pub async fn admin(&self) -> anyhow::Result<Customer> {
        let mut admin = self
            .sign_up_as("Operator", self.admin_email.clone())
            .await?;
        self.set_admin(&admin.email, true).await?;
        admin.account.role = kapal::proto::v1::Role::Admin as i32;
        Ok(admin)
    }

    /// Grants (`true`) or revokes the ADMIN role of the account of `email`, as `kapal admin
    /// grant|revoke` does.
    pub async fn set_admin(&self, email: &str, admin: bool) -> anyhow::Result<()> {
        let db = kapal_control_plane::operators::connect(&self.db).await?;
        kapal_control_plane::operators::set_admin(
            &db,
            email,
            admin,
            "test operator",
            "kapal admin grant (test)",
            chrono::Utc::now().naive_utc(),
        )
        .await?;
        Ok(())
    }

    async fn sign_up(&self, name: &str, domain: &str) -> anyhow::Result<Customer> {
        self.sign_up_as(name, format!("{name}-{}@{domain}", short_id()))
            .await
    }

    /// Signs up `email` (a customer, as everyone who signs up) and returns its clients.
    pub async fn sign_up_as(&self, name: &str, email: String) -> anyhow::Result<Customer> {
        let password = "correct horse 42".to_string();
        let session = self
            .clients("")
            .accounts
            .sign_up(SignUpRequest {
                email: email.clone(),
                password: password.clone(),
                display_name: name.to_string(),
            })
            .await?
            .into_inner();
        // With email verification on, sign-up mails the address and opens no session.
        let session = if session.verification_sent {
            self.clients("")
                .accounts
                .log_in(kapal::proto::v1::LogInRequest {
                    email: email.clone(),
                    password: password.clone(),
                })
                .await?
                .into_inner()
        } else {
            session
        };
        let account = session.account.context("sign-up returned no account")?;
        Ok(Customer {
            clients: self.clients(&session.token),
            token: session.token,
            email,
            password,
            account,
        })
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop the provisioner before its namespaces go, so it recreates none of them.
        for running in self.replicas.iter_mut().chain(self.running.as_mut()) {
            running.abort();
        }
        if let Some(config) = self.cluster_config.take() {
            crate::cluster::delete_partition_namespaces(config, self.partition.clone());
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Authed<S> = InterceptedService<S, Bearer>;

/// The grpc-web transport: tonic-web's client layer over a plain hyper HTTP client.
pub type WebTransport = tonic_web::GrpcWebClientService<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        tonic_web::GrpcWebCall<tonic::body::Body>,
    >,
>;

/// The public API's clients over one transport.
#[derive(Clone)]
pub struct Clients<S = Channel> {
    pub catalog: CatalogServiceClient<Authed<S>>,
    pub accounts: AccountServiceClient<Authed<S>>,
    pub orders: OrderServiceClient<Authed<S>>,
    pub instances: InstanceServiceClient<Authed<S>>,
    pub subscriptions: SubscriptionServiceClient<Authed<S>>,
    pub admin: AdminServiceClient<Authed<S>>,
    pub operator: OperatorServiceClient<Authed<S>>,
    pub billing_admin: BillingAdminServiceClient<Authed<S>>,
    pub support: SupportServiceClient<Authed<S>>,
    pub support_admin: SupportAdminServiceClient<Authed<S>>,
}

impl<S, RB> Clients<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<RB>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<tonic::codegen::StdError>,
    S::Future: Send,
    RB: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError> + Send,
{
    pub fn new(transport: S, token: &str) -> Self {
        Self::with_origin(transport, None, token)
    }

    /// Clients over `transport`, sending to `origin` (needed by plain HTTP clients such as the
    /// grpc-web one, which need absolute URIs).
    pub fn with_origin(transport: S, origin: Option<http::Uri>, token: &str) -> Self {
        let bearer = Bearer(if token.is_empty() {
            None
        } else {
            format!("Bearer {token}").parse().ok()
        });
        let s = |t: &S| InterceptedService::new(t.clone(), bearer.clone());
        macro_rules! client {
            ($c:ident) => {
                match &origin {
                    Some(o) => $c::with_origin(s(&transport), o.clone()),
                    None => $c::new(s(&transport)),
                }
            };
        }
        Clients {
            catalog: client!(CatalogServiceClient),
            accounts: client!(AccountServiceClient),
            orders: client!(OrderServiceClient),
            instances: client!(InstanceServiceClient),
            subscriptions: client!(SubscriptionServiceClient),
            admin: client!(AdminServiceClient),
            operator: client!(OperatorServiceClient),
            billing_admin: client!(BillingAdminServiceClient),
            support: client!(SupportServiceClient),
            support_admin: client!(SupportAdminServiceClient),
        }
    }
}

/// How many of each thing a customer sees in the dashboard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub orders: usize,
    pub instances: usize,
    pub subscriptions: usize,
    pub invoices: usize,
}

impl<S, RB> Clients<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<RB>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<tonic::codegen::StdError>,
    S::Future: Send,
    RB: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError> + Send,
{
    /// Counts the caller's orders, instances, subscriptions and invoices through the API.
    pub async fn counts(&mut self) -> anyhow::Result<Counts> {
        use kapal::proto::v1::{
            ListInstancesRequest, ListInvoicesRequest, ListOrdersRequest, ListSubscriptionsRequest,
        };
        Ok(Counts {
            orders: self
                .orders
                .list_orders(ListOrdersRequest::default())
                .await?
                .into_inner()
                .orders
                .len(),
            instances: self
                .instances
                .list_instances(ListInstancesRequest::default())
                .await?
                .into_inner()
                .instances
                .len(),
            subscriptions: self
                .subscriptions
                .list_subscriptions(ListSubscriptionsRequest::default())
                .await?
                .into_inner()
                .subscriptions
                .len(),
            invoices: self
                .subscriptions
                .list_invoices(ListInvoicesRequest::default())
                .await?
                .into_inner()
                .invoices
                .len(),
        })
    }
}

/// A signed-up customer.
pub struct Customer {
    pub clients: Clients,
    pub token: String,
    pub email: String,
    pub password: String,
    pub account: kapal::proto::v1::Account,
}

/// Watches an instance until its status is `want`; returns the statuses seen on the way.
pub async fn watch_until<T>(
    instances: &mut InstanceServiceClient<T>,
    instance_id: &str,
    want: InstanceStatus,
    timeout: Duration,
) -> anyhow::Result<Vec<InstanceStatus>>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let fut = async {
        let mut stream = instances
            .watch_instance(WatchInstanceRequest {
                instance_id: instance_id.to_string(),
            })
            .await?
            .into_inner();
        let mut seen = Vec::new();
        while let Some(event) = stream.message().await? {
            let instance = event.instance.context("event without instance")?;
            let status =
                InstanceStatus::try_from(instance.status).unwrap_or(InstanceStatus::Unspecified);
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            if status == want {
                return Ok(seen);
            }
            if status == InstanceStatus::Failed && want != InstanceStatus::Failed {
                anyhow::bail!("instance failed: {}", instance.status_reason);
            }
        }
        anyhow::bail!("watch ended before {want:?}; saw {seen:?}")
    };
    tokio::time::timeout(timeout, fut)
        .await
        .with_context(|| format!("instance {instance_id} not {want:?} within {timeout:?}"))?
}
