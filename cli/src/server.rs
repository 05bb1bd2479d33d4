//! `kapal server`: runs all four services in one process, or one of them, composed by the stack
//! builder (`kapal-stack`): in one process the gateway calls the control-plane and billing, and
//! the control-plane calls billing and the provisioner, in-process; billing and the provisioner
//! call the control-plane over its loopback socket. This file turns flags into each service's
//! `Config` and reports every problem (flags and the services' `Config::validate`) at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use kapal::auth::InternalKey;
use kapal::catalog::Catalog;
use kapal::db::DbConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Service {
    /// All four services in this process.
    All,
    Gateway,
    ControlPlane,
    Billing,
    Provisioner,
}

/// Whether sign-up mails a code that must come back before the account may order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmailVerification {
    /// Needs an SMTP server (--smtp-url). For every real server.
    On,
    /// Development only: accounts order without a verified address, passwords cannot be
    /// reset, and sign-up says whether an address is taken.
    Off,
}

/// Which payment provider charges priced plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Payments {
    /// Development only: settles every charge, whatever the amount, without charging anyone.
    Dummy,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Which service to run.
    #[arg(long, value_enum, default_value = "all", env = "KAPAL_SERVICE")]
    pub service: Service,
    /// Address of the public gateway (gRPC and grpc-web).
    #[arg(long, default_value = "127.0.0.1:8080", env = "KAPAL_LISTEN")]
    pub listen: String,
    /// Directory for the embedded SQLite databases and the internal key.
    #[arg(long, default_value = "kapal-data", env = "KAPAL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (postgres://user:password@host/db); SQLite files in the data directory when unset.
    #[arg(long, env = "KAPAL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// PostgreSQL cancels a statement that runs longer than this (its statement_timeout; not
    /// for migrations), e.g. 30s, 2m. A statement_timeout in the URL's `options` wins.
    #[arg(long, default_value = "30s", value_parser = parse_period, env = "KAPAL_DB_STATEMENT_TIMEOUT")]
    pub db_statement_timeout: Duration,
    /// TCP keep-alive probes on PostgreSQL connections start after this long idle, so a dead
    /// connection is found out in about a minute, not hours. A `keepalives_idle` in the URL wins.
    #[arg(long, default_value = "60s", value_parser = parse_period, env = "KAPAL_DB_KEEPALIVE")]
    pub db_keepalive: Duration,
    /// How long a call from one Kapal service to another may take before it ends with
    /// DEADLINE_EXCEEDED (and is retried where it is retried), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_period, env = "KAPAL_INTERNAL_DEADLINE")]
    pub internal_deadline: Duration,
    /// Directory of the app catalog (*.yaml).
    #[arg(long, default_value = "catalog", env = "KAPAL_CATALOG_DIR")]
    pub catalog_dir: PathBuf,
    /// Instances are served on <customer-id>.<app>.<domain>.
    #[arg(long, default_value = "kapal.localhost", env = "KAPAL_DOMAIN")]
    pub domain: String,
    /// Secret (32+ characters) signing identities between the services; all services of a
    /// deployment need the same one. Default: read or created at <data-dir>/internal.key.
    #[arg(long, env = "KAPAL_INTERNAL_KEY", hide_env_values = true)]
    pub internal_key: Option<String>,
    /// No longer supported: whoever signed up first with a listed email became an admin.
    /// Operators are made with `kapal admin grant --email E --reason R`; a server given this
    /// setting refuses to start and says so.
    #[arg(long, env = "KAPAL_ADMIN_EMAILS", value_delimiter = ',', hide = true)]
    pub admin_emails: Vec<String>,
    /// Checkouts are refused (RESOURCE_EXHAUSTED) when the plan would push the CPU or memory
    /// committed on the cluster over this percentage of its allocatable.
    #[arg(long, default_value_t = 80, env = "KAPAL_CAPACITY_CEILING")]
    pub capacity_ceiling: u32,
    /// How long a deleted instance's data (volumes, secrets) is kept before it is removed, e.g.
    /// 7d, 12h, 30m.
    #[arg(long, default_value = "7d", value_parser = parse_period, env = "KAPAL_DATA_RETENTION")]
    pub data_retention: Duration,
    /// First-response SLAs of support tickets per severity, e.g.
    /// `critical=2h,high=8h,normal=24h,low=72h` (those not named keep these defaults; units s,
    /// m, h, d). A ticket is an at-risk alert in its last quarter, a breach alert after.
    #[arg(long, env = "KAPAL_SUPPORT_SLA", value_parser = parse_support_sla, default_value = "")]
    pub support_sla: kapal_control_plane::support::Settings,
    /// How often Kapal works out its own alerts (those `kapal admin alerts` lists, but for
    /// support tickets, which send their own notices) and pushes each that opens or closes to
    /// the notifier (the log, and --notify-webhook when set), e.g. 60s or 5m; `off`: never.
    #[arg(long, default_value = "60s", value_parser = parse_period_or_off, env = "KAPAL_ALERT_INTERVAL")]
    pub alert_interval: Duration,
    /// POST lifecycle notifications (renewal upcoming, payment failed, suspended, expired),
    /// support ticket notices (opened, answered, resolved, SLA at risk, SLA breached) and
    /// alerts that open or close as signed JSON to this http:// URL; they are logged either
    /// way.
    #[arg(long, env = "KAPAL_NOTIFY_WEBHOOK", requires = "notify_webhook_secret")]
    pub notify_webhook: Option<String>,
    /// Secret the webhook's HMAC-SHA256 signature is made with (16+ characters).
    #[arg(
        long,
        env = "KAPAL_NOTIFY_WEBHOOK_SECRET",
        hide_env_values = true,
        requires = "notify_webhook"
    )]
    pub notify_webhook_secret: Option<String>,

    /// Listen address of the control-plane (default: 127.0.0.1:8081, or a free port with --service all).
    #[arg(long, env = "KAPAL_CONTROL_PLANE_LISTEN")]
    pub control_plane_listen: Option<String>,
    /// Listen address of billing (default: 127.0.0.1:8082, or a free port with --service all).
    #[arg(long, env = "KAPAL_BILLING_LISTEN")]
    pub billing_listen: Option<String>,
    /// Listen address of the provisioner (default: 127.0.0.1:8083, or a free port with --service all).
    #[arg(long, env = "KAPAL_PROVISIONER_LISTEN")]
    pub provisioner_listen: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9464), a listener of
    /// its own, never the public port. Off when unset.
    #[arg(long, env = "KAPAL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Export traces (one per public call, across the services) over OTLP/gRPC to this
    /// collector, e.g. http://127.0.0.1:4317. Off when unset; OpenTelemetry's own
    /// OTEL_EXPORTER_OTLP_ENDPOINT does not turn it on.
    #[arg(long, env = "KAPAL_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// URL of the control-plane for the other services (default: from its listen address).
    #[arg(long, env = "KAPAL_CONTROL_PLANE_ENDPOINT")]
    pub control_plane_endpoint: Option<String>,
    /// URL of billing for the other services.
    #[arg(long, env = "KAPAL_BILLING_ENDPOINT")]
    pub billing_endpoint: Option<String>,
    /// URL of the provisioner for the other services.
    #[arg(long, env = "KAPAL_PROVISIONER_ENDPOINT")]
    pub provisioner_endpoint: Option<String>,

    /// Kubeconfig of the cluster instances run on (default: $KUBECONFIG, ~/.kube/config, or
    /// in-cluster). Only the provisioner uses it; the other services need no Kubernetes
    /// credentials and never read them.
    #[arg(long, env = "KAPAL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the ingress controller, the only namespace whose pods may connect to
    /// instances (K3s runs Traefik in kube-system).
    #[arg(long, default_value = "kube-system", env = "KAPAL_INGRESS_NAMESPACE")]
    pub ingress_namespace: String,
    /// Addresses (comma-separated CIDRs) of an ingress controller that does not run as a pod,
    /// also allowed to connect to instances. Default none (K3s runs Traefik as a pod); the
    /// local cluster's real nodes run Traefik as a process on node 1: 10.213.0.11/32.
    #[arg(long, env = "KAPAL_INGRESS_SOURCE_CIDRS", value_delimiter = ',')]
    pub ingress_source_cidrs: Vec<String>,
    /// Addresses (comma-separated CIDRs) of a cluster DNS that does not run as pods, which
    /// instance pods may also query on port 53. Default none (K3s runs CoreDNS as pods); the
    /// local cluster's real nodes run CoreDNS as a process on node 1: 10.213.0.11/32.
    #[arg(long, env = "KAPAL_DNS_CIDRS", value_delimiter = ',')]
    pub dns_cidrs: Vec<String>,
    /// The cluster's pod and service networks (comma-separated CIDRs), which instance pods may
    /// never reach (K3s' defaults: --cluster-cidr 10.42.0.0/16, --service-cidr 10.43.0.0/16).
    #[arg(
        long,
        env = "KAPAL_CLUSTER_CIDRS",
        value_delimiter = ',',
        default_value = "10.42.0.0/16,10.43.0.0/16"
    )]
    pub cluster_cidrs: Vec<String>,
    /// Further networks instance pods may never reach (comma-separated CIDRs), e.g. the nodes'
    /// public addresses. Private, link-local (cloud metadata), loopback and CGNAT ranges are
    /// always denied.
    #[arg(long, env = "KAPAL_EGRESS_DENY", value_delimiter = ',')]
    pub egress_deny: Vec<String>,
    /// Namespace of the cluster DNS, the only DNS instance pods may query.
    #[arg(long, default_value = "kube-system", env = "KAPAL_DNS_NAMESPACE")]
    pub dns_namespace: String,
    /// Labels of the cluster DNS pods (comma-separated key=value).
    #[arg(
        long,
        default_value = "k8s-app=kube-dns",
        env = "KAPAL_DNS_LABELS",
        value_delimiter = ','
    )]
    pub dns_labels: Vec<String>,
    /// IngressClass of instance ingresses.
    #[arg(long, default_value = "traefik", env = "KAPAL_INGRESS_CLASS")]
    pub ingress_class: String,
    /// StorageClass of instance volumes (default: the cluster's default class).
    #[arg(long, env = "KAPAL_STORAGE_CLASS")]
    pub storage_class: Option<String>,
    /// cert-manager ClusterIssuer that issues instance certificates.
    #[arg(long, env = "KAPAL_TLS_ISSUER")]
    pub tls_issuer: Option<String>,
    /// Name of a wildcard TLS secret for instance ingresses (instead of an issuer).
    #[arg(long, env = "KAPAL_TLS_SECRET")]
    pub tls_secret: Option<String>,
    /// Node labels every instance pod selects (comma-separated key=value), e.g.
    /// kapal.dev/real-node=true to run customers' apps on the local cluster's real nodes.
    /// Default none: the scheduler chooses among all nodes.
    #[arg(long, env = "KAPAL_INSTANCE_NODE_SELECTOR", value_delimiter = ',')]
    pub instance_node_selector: Vec<String>,
    /// Taints every instance pod tolerates (comma-separated, written like the taint:
    /// key=value:Effect, or key:Effect for any value), e.g. kapal.dev/real-node=true:NoSchedule.
    #[arg(long, env = "KAPAL_INSTANCE_TOLERATIONS", value_delimiter = ',')]
    pub instance_toleration: Vec<String>,
    /// File mapping the catalog's images to the images instance pods run instead, one
    /// `<catalog image> <image>` pair per line (# comments). For the local cluster, whose real
    /// nodes run images built on the machine: deploy/local-cluster/images.map. Production runs
    /// the catalog's images (no map).
    #[arg(long, env = "KAPAL_IMAGE_MAP")]
    pub image_map: Option<PathBuf>,
    /// This deployment's partition of the cluster (label kapal.dev/partition): the provisioner
    /// only ever removes orphaned objects of its own partition.
    #[arg(long, default_value = "default", env = "KAPAL_PARTITION")]
    pub partition: String,
    /// How long objects of an instance that no longer exists stay before they are removed.
    #[arg(long, default_value = "10m", value_parser = parse_period, env = "KAPAL_ORPHAN_DELAY")]
    pub orphan_delay: Duration,

    /// PEM certificate of the gateway; TLS is on when this and --tls-key are set.
    #[arg(long, env = "KAPAL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the gateway.
    #[arg(long, env = "KAPAL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Other origins whose pages may call the API (CORS; comma-separated, `*` for any). Default
    /// none: the console is served by the gateway itself, from the API's own origin.
    #[arg(long, env = "KAPAL_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// The built web console (console/dist after `npm run build`), served to browsers on the
    /// gateway's port. Without it, browsers get a plain 404 (the API works as ever).
    #[arg(long, env = "KAPAL_CONSOLE_DIR")]
    pub console_dir: Option<PathBuf>,
    /// Requests per second allowed per caller; 0 turns rate limits off.
    #[arg(long, default_value_t = kapal_gateway::DEFAULT_RATE_LIMIT_PER_SECOND, env = "KAPAL_RATE_LIMIT")]
    pub rate_limit: u32,
    /// Burst of requests allowed per caller above the rate (at least 1 when limits are on).
    #[arg(long, default_value_t = kapal_gateway::DEFAULT_RATE_LIMIT_BURST, env = "KAPAL_RATE_BURST")]
    pub rate_burst: u32,
    /// Proxies in front of the gateway whose X-Forwarded-For is believed (comma-separated CIDRs,
    /// e.g. the cluster's pod network where Traefik runs: 10.42.0.0/16). Anonymous callers are
    /// then rate-limited by their own address instead of the proxy's. Default none.
    #[arg(long, env = "KAPAL_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Live WatchInstance streams one account may hold at once.
    #[arg(long, default_value_t = 20, env = "KAPAL_MAX_WATCHES_PER_ACCOUNT")]
    pub max_watches_per_account: usize,
    /// Live (not deleted) instances one account may hold, orders in progress included.
    #[arg(long, default_value_t = 5, env = "KAPAL_MAX_INSTANCES_PER_ACCOUNT")]
    pub max_instances_per_account: usize,
    /// Payment provider for priced plans. Kapal has no real provider yet, so a server whose
    /// catalog has priced plans and that runs billing refuses to start unless this is `dummy`
    /// (development only: it settles any amount without charging anyone). Free plans need none.
    #[arg(long, value_enum, env = "KAPAL_PAYMENTS")]
    pub payments: Option<Payments>,
    /// Email verification of new accounts. `on` needs --smtp-url; the server refuses to start
    /// without one. `off` is for development only (scripts/run uses a local Mailpit instead).
    #[arg(
        long,
        value_enum,
        default_value = "on",
        env = "KAPAL_EMAIL_VERIFICATION"
    )]
    pub email_verification: EmailVerification,
    /// SMTP server for verification and password-reset mail: smtp://HOST:587?tls=required
    /// (STARTTLS), smtps://HOST:465, or plain smtp://127.0.0.1:PORT on loopback only.
    #[arg(long, env = "KAPAL_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// SMTP AUTH user name (if the server wants one).
    #[arg(long, env = "KAPAL_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// SMTP AUTH password.
    #[arg(long, env = "KAPAL_SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<String>,
    /// Sender of Kapal's mail.
    #[arg(
        long,
        default_value = "Kapal <no-reply@kapal.localhost>",
        env = "KAPAL_MAIL_FROM"
    )]
    pub mail_from: String,
    /// Largest request message accepted, in bytes.
    #[arg(long, default_value_t = 64 * 1024, env = "KAPAL_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: usize,

    /// Log as JSON lines.
    #[arg(long, env = "KAPAL_LOG_JSON")]
    pub log_json: bool,
}

/// Parses a period like `7d`, `12h`, `30m`, `45s` or `1d12h` (whole days, hours, minutes and
/// seconds).
fn parse_support_sla(s: &str) -> Result<kapal_control_plane::support::Settings, String> {
    kapal_control_plane::support::Settings::parse_slas(s).map_err(|e| e.to_string())
}

/// A period as [`parse_period`] reads it, or `off` (zero).
fn parse_period_or_off(s: &str) -> Result<Duration, String> {
    if s.trim() == "off" {
        return Ok(Duration::ZERO);
    }
    parse_period(s).map_err(|e| format!("{e}, or off"))
}

fn parse_period(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a period like 7d, 12h, 30m or 1d12h");
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// Settings checked all at once, so every mistake is reported before exiting.
struct Checked {
    db: DbConfig,
    catalog: Arc<Catalog>,
    key: InternalKey,
    notifier: Option<Arc<dyn kapal_billing::notify::Notifier>>,
    /// Support notices go to the same webhook.
    support_notifier: Option<Arc<dyn kapal_control_plane::support::notify::Notifier>>,
    /// The cluster, when this process runs the provisioner (nothing else gets credentials).
    kube: Option<kapal_provisioner::KubeConfig>,
    cluster_cidrs: Vec<kapal::cidr::Cidr>,
    egress_deny: Vec<kapal::cidr::Cidr>,
    ingress_sources: Vec<kapal::cidr::Cidr>,
    dns_addresses: Vec<kapal::cidr::Cidr>,
    dns_labels: std::collections::BTreeMap<String, String>,
    instance_node_selector: std::collections::BTreeMap<String, String>,
    instance_tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    image_map: kapal_provisioner::placement::ImageMap,
    trusted_proxies: Vec<kapal::cidr::Cidr>,
    mail: Option<kapal_control_plane::MailConfig>,
}

fn cidrs(name: &str, values: &[String], problems: &mut Vec<String>) -> Vec<kapal::cidr::Cidr> {
    values
        .iter()
        .filter(|v| !v.trim().is_empty())
        .filter_map(|v| {
            v.parse()
                .map_err(|e| problems.push(format!("{name}: {e}")))
                .ok()
        })
        .collect()
}

async fn check(args: &ServerArgs) -> anyhow::Result<(Checked, kapal_stack::Stack)> {
    let mut problems = Vec::new();
    let runs_provisioner = matches!(args.service, Service::All | Service::Provisioner);
    let kube = if runs_provisioner {
        kapal_provisioner::kube_config_from(args.kubeconfig.as_deref())
            .await
            .map_err(|e| {
                problems.push(format!(
                    "KAPAL_KUBECONFIG (--kubeconfig): the provisioner needs the cluster's credentials: {e} (scripts/local-cluster up prints a kubeconfig; in a cluster, run the provisioner with its ServiceAccount)"
                ))
            })
            .ok()
    } else {
        None
    };
    let cluster_cidrs = cidrs(
        "KAPAL_CLUSTER_CIDRS (--cluster-cidrs)",
        &args.cluster_cidrs,
        &mut problems,
    );
    let egress_deny = cidrs(
        "KAPAL_EGRESS_DENY (--egress-deny)",
        &args.egress_deny,
        &mut problems,
    );
    let ingress_sources = cidrs(
        "KAPAL_INGRESS_SOURCE_CIDRS (--ingress-source-cidrs)",
        &args.ingress_source_cidrs,
        &mut problems,
    );
    let dns_addresses = cidrs(
        "KAPAL_DNS_CIDRS (--dns-cidrs)",
        &args.dns_cidrs,
        &mut problems,
    );
    let trusted_proxies = cidrs(
        "KAPAL_TRUSTED_PROXIES (--trusted-proxies)",
        &args.trusted_proxies,
        &mut problems,
    );
    let mut dns_labels = std::collections::BTreeMap::new();
    for label in args.dns_labels.iter().filter(|l| !l.trim().is_empty()) {
        match label.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                dns_labels.insert(k.trim().to_string(), v.trim().to_string());
            }
            _ => problems.push(format!(
                "KAPAL_DNS_LABELS (--dns-labels): {label:?} is not key=value"
            )),
        }
    }
    let mut instance_node_selector = std::collections::BTreeMap::new();
    for label in args
        .instance_node_selector
        .iter()
        .filter(|l| !l.trim().is_empty())
    {
        match kapal_provisioner::placement::parse_node_label(label) {
            Ok((k, v)) => {
                instance_node_selector.insert(k, v);
            }
            Err(e) => problems.push(format!(
                "KAPAL_INSTANCE_NODE_SELECTOR (--instance-node-selector): {e}"
            )),
        }
    }
    let instance_tolerations = args
        .instance_toleration
        .iter()
        .filter(|t| !t.trim().is_empty())
        .filter_map(|t| {
            kapal_provisioner::placement::parse_toleration(t)
                .map_err(|e| {
                    problems.push(format!(
                        "KAPAL_INSTANCE_TOLERATIONS (--instance-toleration): {e}"
                    ))
                })
                .ok()
        })
        .collect();
    let image_map = match &args.image_map {
        Some(path) => kapal_provisioner::placement::load_image_map(path)
            .map_err(|e| problems.push(format!("KAPAL_IMAGE_MAP (--image-map): {e}")))
            .unwrap_or_default(),
        None => kapal_provisioner::placement::ImageMap::new(),
    };
    let db = DbConfig::new(args.database_url.as_deref(), args.data_dir.clone())
        .map_err(|e| problems.push(format!("KAPAL_DATABASE_URL (--database-url): {e}")))
        .ok()
        .and_then(|db| {
            let settings = kapal::db::PostgresSettings {
                statement_timeout: args.db_statement_timeout,
                keepalive_idle: args.db_keepalive,
            };
            db.with_postgres_settings(&settings)
                .map_err(|e| {
                    problems.push(format!(
                        "KAPAL_DB_STATEMENT_TIMEOUT (--db-statement-timeout), KAPAL_DB_KEEPALIVE (--db-keepalive): {e}"
                    ))
                })
                .ok()
        });
    let catalog = Catalog::load(&args.catalog_dir)
        .map_err(|e| problems.push(format!("KAPAL_CATALOG_DIR (--catalog-dir): {e:#}")))
        .ok();
    if let Some(catalog) = &catalog
        && matches!(args.service, Service::All | Service::Billing)
        && args.payments.is_none()
    {
        let priced: Vec<String> = catalog
            .apps()
            .flat_map(|a| {
                a.plans
                    .iter()
                    .filter(|p| p.monthly_price_idr > 0)
                    .map(move |p| format!("{} {}", a.id, p.id))
            })
            .collect();
        if !priced.is_empty() {
            problems.push(format!(
                "KAPAL_PAYMENTS (--payments): the catalog has priced plans ({}) but no payment provider is configured, so they would be sold without charging anyone. Kapal has no real provider yet: for development pass --payments dummy (it settles any amount), or serve a catalog of free plans only",
                priced.join(", ")
            ));
        }
    }
    let key = match &args.internal_key {
        Some(k) => InternalKey::from_secret(k)
            .map_err(|e| problems.push(format!("KAPAL_INTERNAL_KEY (--internal-key): {e}")))
            .ok(),
        None => InternalKey::load_or_create(&args.data_dir.join("internal.key"))
            .map_err(|e| problems.push(format!("KAPAL_DATA_DIR (--data-dir): {e:#}")))
            .ok(),
    };
    for (name, value) in [
        ("KAPAL_LISTEN (--listen)", Some(&args.listen)),
        (
            "KAPAL_CONTROL_PLANE_LISTEN",
            args.control_plane_listen.as_ref(),
        ),
        ("KAPAL_BILLING_LISTEN", args.billing_listen.as_ref()),
        ("KAPAL_PROVISIONER_LISTEN", args.provisioner_listen.as_ref()),
    ] {
        if let Some(v) = value
            && v.parse::<SocketAddr>().is_err()
        {
            problems.push(format!(
                "{name}: {v:?} is not an address like 127.0.0.1:8080"
            ));
        }
    }
    for (name, value) in [
        ("KAPAL_CONTROL_PLANE_ENDPOINT", &args.control_plane_endpoint),
        ("KAPAL_BILLING_ENDPOINT", &args.billing_endpoint),
        ("KAPAL_PROVISIONER_ENDPOINT", &args.provisioner_endpoint),
    ] {
        if let Some(v) = value
            && !(v.starts_with("http://") || v.starts_with("https://"))
        {
            problems.push(format!(
                "{name}: {v:?} is not a URL like http://127.0.0.1:8081"
            ));
        }
    }
    if args.admin_emails.iter().any(|e| !e.trim().is_empty()) {
        problems.push(
            "KAPAL_ADMIN_EMAILS (--admin-emails): no longer supported (whoever signed up first with a listed email became an admin); make operators with `kapal admin grant --email E --reason R` against this server's database, and remove the setting".into(),
        );
    }
    let mail = mail_config(args, &mut problems);
    if args.max_message_bytes < 1024 {
        problems
            .push("KAPAL_MAX_MESSAGE_BYTES (--max-message-bytes): must be at least 1024".into());
    }
    let mut notifier: Option<Arc<dyn kapal_billing::notify::Notifier>> = None;
    let mut support_notifier: Option<Arc<dyn kapal_control_plane::support::notify::Notifier>> =
        None;
    if let (Some(url), Some(secret)) = (&args.notify_webhook, &args.notify_webhook_secret) {
        if secret.len() < 16 {
            problems.push(
                "KAPAL_NOTIFY_WEBHOOK_SECRET (--notify-webhook-secret): must be at least 16 characters"
                    .into(),
            );
        }
        match kapal_billing::notify::WebhookNotifier::new(url, secret.as_bytes()) {
            Ok(n) => notifier = Some(Arc::new(n)),
            Err(e) => problems.push(format!("KAPAL_NOTIFY_WEBHOOK (--notify-webhook): {e}")),
        }
        if let Ok(n) =
            kapal_control_plane::support::notify::WebhookNotifier::new(url, secret.as_bytes())
        {
            support_notifier = Some(Arc::new(n));
        }
    }
    // The services' own checks, of configurations made of what could be read (stand-ins for
    // what could not), so every problem is reported at once.
    let checked = Checked {
        db: db.unwrap_or_else(|| DbConfig::DataDir(args.data_dir.clone())),
        catalog: Arc::new(catalog.unwrap_or_default()),
        key: key.unwrap_or_else(InternalKey::random),
        notifier,
        support_notifier,
        kube,
        cluster_cidrs,
        egress_deny,
        ingress_sources,
        dns_addresses,
        dns_labels,
        instance_node_selector,
        instance_tolerations,
        image_map,
        trusted_proxies,
        mail,
    };
    let stack = stack(args, &checked)?;
    for (service, service_problems) in [
        (
            "gateway",
            here(&stack.gateway, kapal_gateway::Config::validate),
        ),
        (
            "control-plane",
            here(&stack.control_plane, kapal_control_plane::Config::validate),
        ),
        (
            "billing",
            here(&stack.billing, kapal_billing::Config::validate),
        ),
        (
            "provisioner",
            here(&stack.provisioner, kapal_provisioner::Config::validate),
        ),
    ] {
        problems.extend(
            service_problems
                .into_iter()
                .map(|p| format!("{}: {}", flag(service, p.setting), p.message)),
        );
    }
    if !problems.is_empty() {
        anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
    }
    Ok((checked, stack))
}

/// The problems of a service's configuration, when it runs here.
fn here<C>(
    part: &kapal_stack::Part<C>,
    validate: fn(&C) -> Vec<kapal::config::Problem>,
) -> Vec<kapal::config::Problem> {
    match part {
        kapal_stack::Part::Here(config, _) => validate(config),
        _ => Vec::new(),
    }
}

/// The variable and flag that set a service's `Config` field.
fn flag(service: &str, setting: &str) -> String {
    let flag = match (service, setting) {
        ("gateway", "rate_limit_burst" | "rate_limit_per_second") => {
            "KAPAL_RATE_LIMIT (--rate-limit), KAPAL_RATE_BURST (--rate-burst)"
        }
        ("gateway", "max_message_bytes") => "KAPAL_MAX_MESSAGE_BYTES (--max-message-bytes)",
        ("gateway", "cors_allowed_origins") => "KAPAL_CORS_ORIGINS (--cors-origins)",
        ("gateway", "console_dir") => "KAPAL_CONSOLE_DIR (--console-dir)",
        ("gateway", "tls.cert_path") => "KAPAL_TLS_CERT (--tls-cert)",
        ("gateway", "tls.key_path") => "KAPAL_TLS_KEY (--tls-key)",
        (_, "internal_deadline") => "KAPAL_INTERNAL_DEADLINE (--internal-deadline)",
        ("control-plane", "domain") => "KAPAL_DOMAIN (--domain)",
        ("control-plane", "capacity_ceiling_percent") => {
            "KAPAL_CAPACITY_CEILING (--capacity-ceiling)"
        }
        ("control-plane", "max_instances_per_account") => {
            "KAPAL_MAX_INSTANCES_PER_ACCOUNT (--max-instances-per-account)"
        }
        ("control-plane", "max_watches_per_account") => {
            "KAPAL_MAX_WATCHES_PER_ACCOUNT (--max-watches-per-account)"
        }
        ("control-plane", "data_retention") => "KAPAL_DATA_RETENTION (--data-retention)",
        ("control-plane", "mail") => "KAPAL_SMTP_URL / KAPAL_MAIL_FROM",
        ("provisioner", "partition") => "KAPAL_PARTITION (--partition)",
        ("provisioner", "dns_pod_labels") => "KAPAL_DNS_LABELS (--dns-labels)",
        ("provisioner", "orphan_safety_delay") => "KAPAL_ORPHAN_DELAY (--orphan-delay)",
        _ => return format!("{service} {setting}"),
    };
    flag.to_string()
}

/// The control-plane's mail settings, when this process runs it with email verification on.
fn mail_config(
    args: &ServerArgs,
    problems: &mut Vec<String>,
) -> Option<kapal_control_plane::MailConfig> {
    if !matches!(args.service, Service::All | Service::ControlPlane)
        || args.email_verification == EmailVerification::Off
    {
        return None;
    }
    let Some(url) = args.smtp_url.as_ref().filter(|u| !u.trim().is_empty()) else {
        problems.push(
            "KAPAL_SMTP_URL (--smtp-url): new accounts verify their email, so the server needs an SMTP server to send the codes (e.g. smtp://smtp.example.com:587?tls=required with KAPAL_SMTP_USERNAME/KAPAL_SMTP_PASSWORD); for development, scripts/mailpit up gives one on loopback, or pass --email-verification off".into(),
        );
        return None;
    };
    let config = kapal_control_plane::MailConfig {
        smtp_url: url.clone(),
        username: args.smtp_username.clone(),
        password: args.smtp_password.clone(),
        from: args.mail_from.clone(),
    };
    // The control-plane's Config::validate checks the URL and the sender.
    Some(config)
}

/// The stack this process runs: the services of `--service` here, the others elsewhere at their
/// endpoints.
fn stack(args: &ServerArgs, checked: &Checked) -> anyhow::Result<kapal_stack::Stack> {
    use kapal_stack::{Listen, Part};
    let all = args.service == Service::All;
    let runs = |s: Service| all || args.service == s;
    // With every service here, those without an address of their own take a free port.
    let listen = |explicit: &Option<String>, default: &str| -> Listen {
        match explicit {
            Some(a) => Listen::Addr(a.clone()),
            None if all => Listen::any_loopback(),
            None => Listen::Addr(default.to_string()),
        }
    };
    let elsewhere = |explicit: &Option<String>, default: &str| -> String {
        explicit
            .clone()
            .unwrap_or_else(|| format!("http://{default}"))
    };
    let control_plane = if runs(Service::ControlPlane) {
        Part::Here(
            control_plane_config(args, checked),
            listen(&args.control_plane_listen, "127.0.0.1:8081"),
        )
    } else {
        Part::Elsewhere(elsewhere(&args.control_plane_endpoint, "127.0.0.1:8081"))
    };
    let billing = if runs(Service::Billing) {
        Part::Here(
            billing_config(args, checked),
            listen(&args.billing_listen, "127.0.0.1:8082"),
        )
    } else {
        Part::Elsewhere(elsewhere(&args.billing_endpoint, "127.0.0.1:8082"))
    };
    let provisioner = if runs(Service::Provisioner) {
        Part::Here(
            provisioner_config(args, checked)?,
            listen(&args.provisioner_listen, "127.0.0.1:8083"),
        )
    } else {
        Part::Elsewhere(elsewhere(&args.provisioner_endpoint, "127.0.0.1:8083"))
    };
    let gateway = if runs(Service::Gateway) {
        Part::Here(
            gateway_config(args, checked),
            Listen::Addr(args.listen.clone()),
        )
    } else {
        Part::Absent
    };
    let stack = kapal_stack::Stack {
        gateway,
        control_plane,
        billing,
        provisioner,
        in_process: true,
        metrics: args.metrics_listen.clone().map(Listen::Addr),
    };
    Ok(stack)
}

fn billing_config(args: &ServerArgs, checked: &Checked) -> kapal_billing::Config {
    let mut config = kapal_billing::Config::new(
        checked.db.clone(),
        checked.catalog.clone(),
        checked.key.clone(),
    );
    // Suspensions and resumptions reach instances through the control-plane (set by the stack).
    config.internal_deadline = args.internal_deadline;
    if let Some(notifier) = &checked.notifier {
        config.notifier = notifier.clone();
    }
    config
}

fn control_plane_config(args: &ServerArgs, checked: &Checked) -> kapal_control_plane::Config {
    // Billing and the provisioner: set by the stack.
    let mut config = kapal_control_plane::Config::new(
        checked.db.clone(),
        checked.catalog.clone(),
        checked.key.clone(),
        kapal::serve::Upstream::default(),
        kapal::serve::Upstream::default(),
    );
    config.domain = args.domain.clone();
    config.internal_deadline = args.internal_deadline;
    config.capacity_ceiling_percent = args.capacity_ceiling;
    config.max_watches_per_account = args.max_watches_per_account;
    config.mail = checked.mail.clone();
    config.max_instances_per_account = args.max_instances_per_account;
    config.data_retention = args.data_retention;
    config.support = args.support_sla.clone();
    config.alert_interval = args.alert_interval;
    if let Some(n) = &checked.support_notifier {
        config.notifier = n.clone();
    }
    config
}

fn gateway_config(args: &ServerArgs, checked: &Checked) -> kapal_gateway::Config {
    // The control-plane and billing: set by the stack.
    let mut config = kapal_gateway::Config::new(
        kapal::serve::Upstream::default(),
        kapal::serve::Upstream::default(),
        checked.key.clone(),
    );
    if let (Some(cert_path), Some(key_path)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(kapal_gateway::TlsConfig {
            cert_path: cert_path.clone(),
            key_path: key_path.clone(),
        });
    }
    config.cors_allowed_origins = args.cors_origins.clone();
    config.internal_deadline = args.internal_deadline;
    config.console_dir = args.console_dir.clone();
    config.rate_limit_per_second = args.rate_limit;
    config.rate_limit_burst = args.rate_burst;
    config.max_message_bytes = args.max_message_bytes;
    config.trusted_proxies = checked.trusted_proxies.clone();
    config
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let mut telemetry = kapal::telemetry::Settings::new(args.log_json, "info");
    telemetry.otlp_endpoint = args.otlp_endpoint.clone();
    telemetry.service_name = match args.service {
        Service::All => "kapal".to_string(),
        s => format!(
            "kapal-{}",
            s.to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        ),
    };
    kapal::telemetry::init(&telemetry).context("--otlp-endpoint")?;
    let started = std::time::Instant::now();
    let (checked, stack) = check(&args).await?;
    if args.service == Service::All || args.service == Service::Gateway {
        let scheme = if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!("Kapal gateway on {scheme}://{}", args.listen);
        if let Some(dir) = &args.console_dir {
            tracing::info!(
                "Kapal console (from {}): open {scheme}://{}/ in a browser",
                dir.display(),
                args.listen
            );
        }
    }
    let mut running = stack.start().await?;
    tracing::info!(
        service = ?args.service,
        database = checked.db_kind(),
        startup_ms = started.elapsed().as_millis() as u64,
        "kapal server started"
    );

    // Run until a signal, or until any service stops (which is an error: stop the rest).
    let mut failure = None;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        e = running.failed() => failure = Some(e),
    }
    if let Err(e) = running.stop_within(Duration::from_secs(10)).await {
        tracing::warn!(error = %format!("{e:#}"), "stopping the services");
    }
    // The spans still buffered go out before the process ends.
    let _ = tokio::task::spawn_blocking(kapal::telemetry::shutdown).await;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl Checked {
    fn db_kind(&self) -> &'static str {
        match self.db {
            DbConfig::DataDir(_) => "sqlite",
            DbConfig::Postgres(_) => "postgres",
        }
    }
}

fn provisioner_config(
    args: &ServerArgs,
    checked: &Checked,
) -> anyhow::Result<kapal_provisioner::Config> {
    // Without credentials (a problem reported already) a stand-in, for checking the rest.
    let kube = match &checked.kube {
        Some(kube) => kube.clone(),
        None => kapal_provisioner::KubeConfig::new(
            "https://127.0.0.1:6443"
                .parse()
                .context("the stand-in cluster URL")?,
        ),
    };
    // The control-plane: set by the stack.
    let mut config = kapal_provisioner::Config::new(
        checked.db.clone(),
        checked.catalog.clone(),
        checked.key.clone(),
        kube,
        kapal::serve::Upstream::default(),
    );
    config.ingress_class = args.ingress_class.clone();
    config.internal_deadline = args.internal_deadline;
    config.storage_class = args.storage_class.clone();
    config.tls_issuer = args.tls_issuer.clone();
    config.tls_secret = args.tls_secret.clone();
    config.partition = args.partition.clone();
    config.orphan_safety_delay = args.orphan_delay;
    config.ingress_namespace = args.ingress_namespace.clone();
    config.dns_namespace = args.dns_namespace.clone();
    config.dns_pod_labels = checked.dns_labels.clone();
    config.cluster_cidrs = checked.cluster_cidrs.clone();
    config.egress_deny = checked.egress_deny.clone();
    config.ingress_sources = checked.ingress_sources.clone();
    config.dns_addresses = checked.dns_addresses.clone();
    config.node_selector = checked.instance_node_selector.clone();
    config.extra_tolerations = checked.instance_tolerations.clone();
    config.image_map = checked.image_map.clone();
    Ok(config)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_read_like_people_write_them() {
        assert_eq!(parse_period("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_period("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_period("1d12h"), Ok(Duration::from_secs(36 * 3_600)));
        assert_eq!(parse_period("90s"), Ok(Duration::from_secs(90)));
        for bad in ["", "7", "0d", "7w", "d", "-1d", "99999999999999999999d"] {
            assert!(parse_period(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_interval_may_be_off() {
        assert_eq!(parse_period_or_off("off"), Ok(Duration::ZERO));
        assert_eq!(parse_period_or_off("5m"), Ok(Duration::from_secs(300)));
        let e = parse_period_or_off("0s").expect_err("zero is spelled off");
        assert!(e.ends_with(", or off"), "{e}");
    }
}
