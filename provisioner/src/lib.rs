//! Kapal's provisioner: the only part of Kapal that talks to Kubernetes.
//!
//! It serves `kapal.internal.v1.ProvisionerService` to the other services and runs a
//! level-triggered controller: every instance gets its own namespace with its credentials Secret,
//! volumes, workloads, Services, Ingress, quota, limits and network policies, converged with
//! server-side apply; its status is computed from the cluster and reported to the
//! control-plane's `InstanceStateService` when it changes.
//!
//! The Kubernetes identity it runs as needs exactly `deploy/k3s/clusterrole.yaml` (tested by
//! `tests/tests/deploy_rbac.rs`), plus the Secret reads it grants itself per instance namespace
//! ([`fence`]); `deploy/k3s/admission-policy.yaml` fences what it may write.
//!
//! Self-healing: instance pods tolerate a failed node for [`Config::node_failure_toleration`]
//! (20 s) instead of 300 s, and pods evicted from a node that is not Ready are force-deleted so
//! their replacement is admitted at once; a deleted Service, Deployment or StatefulSet, or a
//! workload whose spec someone changed (e.g. scaled down), is converged again as soon as the
//! watchers see it, not only at the next resync.
//!
//! Deleted instances: the workloads go at once, the data (volumes, secrets, namespace) once
//! `delete_data_after` has passed. An orphan sweep removes namespaces of this partition whose
//! instance neither the control-plane nor the provisioner's store wants, after a safety delay.
//! GetCapacity and GetUsage read nodes, pods, volumes and (when there is one) the metrics API.
//!
//! Not yet: pruning objects of components removed from the catalog.

pub mod capacity;
pub mod cluster;
pub mod controller;
pub mod diagnostics;
pub mod error;
pub mod fence;
pub mod placement;
pub mod quantity;
pub mod render;
pub mod service;
pub mod spec;
pub mod status;
pub mod store;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kapal::auth::{InternalKey, VerifyPrincipal};
use kapal::catalog::Catalog;
use kapal::clock::SharedClock;
use kapal::db::{Db, DbConfig};
use kapal::proto::internal::v1::instance_state_service_client::InstanceStateServiceClient;
use kapal::proto::internal::v1::provisioner_service_server::ProvisionerServiceServer;
use tokio::net::TcpListener;
use tonic::server::NamedService as _;

/// K3s' default pod and service networks (`--cluster-cidr`, `--service-cidr`).
pub const DEFAULT_CLUSTER_CIDRS: [&str; 2] = ["10.42.0.0/16", "10.43.0.0/16"];

/// Settings of the provisioner. [`Config::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the provisioner keeps its copy of the desired specs.
    pub db: DbConfig,
    pub catalog: Arc<Catalog>,
    /// Verifies callers and signs calls to the control-plane.
    pub key: InternalKey,
    /// How to reach the cluster (e.g. [`kube::Config::infer`], or from a kubeconfig file with
    /// [`kube_config_from`]).
    pub kube: kube::Config,
    /// The control-plane's InstanceStateService (`http://host:port`, or its routes in this
    /// process). `None`: desired state comes only from ApplyInstance, and statuses are not
    /// reported. Set by the stack builder (`kapal-stack`) when the provisioner runs in a stack.
    pub control_plane: Option<kapal::serve::Upstream>,
    /// How long a call to the control-plane may take before it ends with DEADLINE_EXCEEDED.
    /// Default 10 s.
    pub internal_deadline: Duration,
    /// IngressClass of instance Ingresses. Default `traefik` (K3s).
    pub ingress_class: String,
    /// Namespace of the ingress controller, allowed through instance network policies.
    /// Default `kube-system` (where K3s runs Traefik).
    pub ingress_namespace: String,
    /// Addresses the ingress controller connects to instances from when it does not run as a
    /// pod (the local cluster's Traefik is a process on a node, so its connections carry that
    /// node's address), allowed in beside `ingress_namespace`'s pods. Default none: on K3s
    /// Traefik is a pod.
    pub ingress_sources: Vec<kapal::cidr::Cidr>,
    /// Addresses of a cluster DNS that does not run as pods (the local cluster's CoreDNS is a
    /// process on a node), which instance pods may also query on port 53. Default none: on K3s
    /// CoreDNS is a pod, matched by `dns_namespace` and `dns_pod_labels`.
    pub dns_addresses: Vec<kapal::cidr::Cidr>,
    /// The cluster DNS instance pods may query: namespace and pod labels. Default
    /// `kube-system`, `k8s-app=kube-dns` (K3s' CoreDNS).
    pub dns_namespace: String,
    pub dns_pod_labels: std::collections::BTreeMap<String, String>,
    /// The cluster's pod and service networks, which instance pods never reach. Default K3s':
    /// 10.42.0.0/16 and 10.43.0.0/16.
    pub cluster_cidrs: Vec<kapal::cidr::Cidr>,
    /// Further networks instance pods never reach (e.g. the nodes' public addresses). Private,
    /// link-local, loopback and CGNAT ranges are always denied. Default none.
    pub egress_deny: Vec<kapal::cidr::Cidr>,
    /// StorageClass of instance volumes; `None` (default) uses the cluster's default class.
    pub storage_class: Option<String>,
    /// cert-manager ClusterIssuer for each hostname's certificate. Default none.
    pub tls_issuer: Option<String>,
    /// (Wildcard) certificate Secret for instance Ingresses, used when no issuer is set:
    /// `namespace/name` is copied into every instance namespace (kept in sync at each
    /// convergence); a bare `name` must already exist there. Default none (no TLS section).
    pub tls_secret: Option<String>,
    /// How often every instance is converged again and the desired list pulled. Default 30 s.
    pub resync_interval: Duration,
    /// How long a pod may wait for capacity or a volume before its instance is FAILED.
    /// Default 2 minutes.
    pub unschedulable_grace: Duration,
    /// How long an instance pod stays on a node that is not ready or unreachable before it is
    /// evicted and recreated on a healthy node (its toleration of the node-failure taints).
    /// Default 20 s: with the node monitor's grace period (40 s on K3s) a pod moves within about
    /// a minute, instead of the API server's default 300 s.
    pub node_failure_toleration: Duration,
    /// Further tolerations on every instance pod. Default none.
    pub extra_tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// Affinity of every instance pod (e.g. a dedicated node pool). Default none.
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    /// Node labels every instance pod selects (app, database and setup job pods). Default none.
    pub node_selector: std::collections::BTreeMap<String, String>,
    /// Catalog image -> the image instance pods run instead ([`placement::parse_image_map`]).
    /// For the local cluster, whose real nodes run images built on the machine; default empty
    /// (production runs the catalog's images).
    pub image_map: placement::ImageMap,
    /// Label value (`kapal.dev/partition`) on every object this provisioner makes; the orphan
    /// sweep only looks at namespaces of its own partition, so provisioners of several
    /// deployments (or tests) sharing a cluster never touch each other's. Default `default`.
    pub partition: String,
    /// How often namespaces of instances nobody wants any more are looked for. Default 60 s.
    pub sweep_interval: Duration,
    /// How long such a namespace stays (marked orphaned) before it is deleted. Default 10
    /// minutes.
    pub orphan_safety_delay: Duration,
    pub clock: SharedClock,
}

impl Config {
    pub fn new(
        db: DbConfig,
        catalog: Arc<Catalog>,
        key: InternalKey,
        kube: kube::Config,
        control_plane: impl Into<kapal::serve::Upstream>,
    ) -> Config {
        // An empty endpoint: none.
        let control_plane = Some(control_plane.into()).filter(kapal::serve::Upstream::is_set);
        Config {
            db,
            catalog,
            key,
            kube,
            control_plane,
            internal_deadline: kapal::serve::DEFAULT_INTERNAL_DEADLINE,
            ingress_class: "traefik".to_string(),
            ingress_namespace: "kube-system".to_string(),
            ingress_sources: Vec::new(),
            dns_addresses: Vec::new(),
            dns_namespace: "kube-system".to_string(),
            dns_pod_labels: std::collections::BTreeMap::from([(
                "k8s-app".to_string(),
                "kube-dns".to_string(),
            )]),
            cluster_cidrs: DEFAULT_CLUSTER_CIDRS
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            egress_deny: Vec::new(),
            storage_class: None,
            tls_issuer: None,
            tls_secret: None,
            resync_interval: Duration::from_secs(30),
            unschedulable_grace: Duration::from_secs(120),
            node_failure_toleration: Duration::from_secs(20),
            extra_tolerations: Vec::new(),
            affinity: None,
            node_selector: std::collections::BTreeMap::new(),
            image_map: placement::ImageMap::new(),
            partition: "default".to_string(),
            sweep_interval: Duration::from_secs(60),
            orphan_safety_delay: Duration::from_secs(600),
            clock: kapal::clock::system(),
        }
    }

    /// Every invalid setting, named.
    pub fn validate(&self) -> Vec<kapal::config::Problem> {
        use kapal::config::Problem;
        let mut problems = Vec::new();
        if !is_label_value(&self.partition) {
            problems.push(Problem::new(
                "partition",
                format!(
                    "{:?} is not a Kubernetes label value (1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
                    self.partition
                ),
            ));
        }
        if self.dns_pod_labels.is_empty() {
            problems.push(Problem::new(
                "dns_pod_labels",
                "name the cluster DNS pods' labels, e.g. k8s-app=kube-dns",
            ));
        }
        for (setting, value) in [
            ("internal_deadline", self.internal_deadline),
            ("resync_interval", self.resync_interval),
            ("sweep_interval", self.sweep_interval),
        ] {
            if value.is_zero() {
                problems.push(Problem::new(setting, "must be longer than zero"));
            }
        }
        problems
    }
}

/// A Kubernetes label value that is not empty: 1-63 letters, digits, '-', '_' or '.', starting
/// and ending with a letter or digit.
fn is_label_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// How to reach the cluster: only the provisioner talks to Kubernetes, so other crates name
/// the type through here and never depend on kube themselves.
pub use kube::Config as KubeConfig;

/// The cluster of a kubeconfig file, or with `None` kube's inference: the in-cluster service
/// account, else `$KUBECONFIG` or `~/.kube/config`.
pub async fn kube_config_from(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding the cluster: not running in a pod, and no $KUBECONFIG or ~/.kube/config (set the kubeconfig path)")?,
    })
}

/// Connects the database (running migrations), starts the controller, and serves gRPC on
/// `listener` until `shutdown` completes; the controller stops with it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    build(config).await?.serve(listener, shutdown).await
}

/// Connects the database (running migrations) and builds the provisioner: its routes, and its
/// controller's tasks (aborted when it stops).
pub async fn build(config: Config) -> anyhow::Result<kapal::serve::Built> {
    kapal::serve::install_crypto_provider();
    kapal::config::check("provisioner", config.validate())?;
    let db = Db::connect(&config.db, "provisioner", store::migrations()).await?;
    let client =
        kube::Client::try_from(config.kube.clone()).context("building the Kubernetes client")?;
    let control_plane = match &config.control_plane {
        None => {
            tracing::warn!("no control-plane endpoint: statuses are not reported");
            None
        }
        Some(upstream) => Some(InstanceStateServiceClient::new(
            upstream.internal_channel_with_deadline(&config.key, config.internal_deadline)?,
        )),
    };
    let cluster = cluster::Cluster::new(client);
    // Who it is, asked once at start: it names itself in the RoleBinding that lets it read the
    // Secrets of each instance namespace (fence). Should this fail, the first convergence asks
    // again.
    let whoami = cluster.clone();
    let mut background = kapal::serve::Background::new();
    background.abort_on_stop(tokio::spawn(async move {
        if let Err(e) = whoami.me().await {
            tracing::info!(error = %error::chain(&e), "the provisioner's Kubernetes identity is not known yet");
        }
    }));
    let (controller, queues) = controller::Controller::new(controller::Parts {
        store: store::Store::new(db),
        catalog: config.catalog.clone(),
        cluster,
        settings: render::Settings {
            ingress_class: config.ingress_class.clone(),
            storage_class: config.storage_class.clone(),
            tls_issuer: config.tls_issuer.clone(),
            tls_secret: config.tls_secret.clone(),
            ingress_namespace: config.ingress_namespace.clone(),
            ingress_sources: config.ingress_sources.clone(),
            dns_addresses: config.dns_addresses.clone(),
            dns_namespace: config.dns_namespace.clone(),
            dns_pod_labels: config.dns_pod_labels.clone(),
            cluster_cidrs: config.cluster_cidrs.clone(),
            egress_deny: config.egress_deny.clone(),
            node_failure_toleration: config.node_failure_toleration,
            extra_tolerations: config.extra_tolerations.clone(),
            affinity: config.affinity.clone(),
            node_selector: config.node_selector.clone(),
            image_map: config.image_map.clone(),
            partition: config.partition.clone(),
        },
        clock: config.clock.clone(),
        unschedulable_grace: config.unschedulable_grace,
        resync_interval: config.resync_interval,
        control_plane,
        sweep: controller::Sweep {
            partition: config.partition.clone(),
            interval: config.sweep_interval,
            safety_delay: config.orphan_safety_delay,
        },
    });
    for task in controller.spawn(queues) {
        background.abort_on_stop(task);
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            ProvisionerServiceServer::<service::Provisioner>::NAME,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let routes = tonic::service::Routes::new(health_service)
        .add_service(kapal::serve::reflection(kapal::proto::DESCRIPTOR_SET)?)
        .add_service(
            VerifyPrincipal(config.key.clone()).wrap(ProvisionerServiceServer::new(
                service::Provisioner::new(controller),
            )),
        );
    let routes = kapal::metrics::instrument(routes.prepare(), "provisioner");
    Ok(kapal::serve::Built::new("provisioner", routes, background))
}
