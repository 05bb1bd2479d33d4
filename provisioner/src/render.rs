//! The Kubernetes objects an instance should have, computed by pure functions from its spec, its
//! catalog app and plan, and the provisioner's settings. Nothing here talks to the cluster, so
//! every object is unit-tested as rendered.
//!
//! Names inside the instance's namespace:
//! - `<component>`: the component's Deployment or StatefulSet, and its Service;
//! - `<component>-data`: the component's PersistentVolumeClaim;
//! - [`CREDENTIALS_SECRET`]: generated username, password and app secrets;
//! - [`INGRESS_NAME`]: routes the hostname to the public component;
//! - [`QUOTA_NAME`], [`LIMITS_NAME`]: the plan's resources as a quota and container limits;
//! - [`DENY_POLICY`], [`ALLOW_NAMESPACE_POLICY`], [`ALLOW_INGRESS_POLICY`], [`ALLOW_DNS_POLICY`],
//!   [`ALLOW_INTERNET_POLICY`], [`ALLOW_APP_EGRESS_POLICY`]: network isolation. Every pod is
//!   hostile (n8n runs its owner's code): nothing comes in but from the instance's own pods and
//!   the ingress controller, nothing goes out but to the instance's own pods, the cluster DNS,
//!   the public internet (never private, link-local, loopback, CGNAT or cluster addresses) and
//!   what the catalog app declares.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceQuota, ResourceQuotaSpec, ResourceRequirements, SeccompProfile,
    Secret, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction,
    Toleration, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::core::v1::{PodAffinity, PodAffinityTerm};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, IPBlock, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyEgressRule,
    NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kapal::catalog::{App, Component, Plan, SetupJob, WorkloadKind};
use kapal::cidr::Cidr;

use crate::spec::{Desired, Spec};

/// The one field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "kapal-provisioner";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "kapal";
pub const LABEL_INSTANCE: &str = "kapal.dev/instance";
pub const LABEL_CUSTOMER: &str = "kapal.dev/customer";
pub const LABEL_APP: &str = "kapal.dev/app";
/// On workloads, their pods and Services: which catalog component.
pub const LABEL_COMPONENT: &str = "kapal.dev/component";
pub const LABEL_POD_SECURITY: &str = "pod-security.kubernetes.io/enforce";
/// On every object of an instance and its namespace: which provisioner deployment
/// ([`Settings::partition`]) made it. The orphan sweep only ever looks at its own partition.
pub const LABEL_PARTITION: &str = "kapal.dev/partition";
/// On a namespace of Kapal's whose instance nobody wants any more: since when (RFC 3339). It
/// is deleted once it has stayed orphaned for the sweep's safety delay.
pub const ANNOTATION_ORPHANED_SINCE: &str = "kapal.dev/orphaned-since";
/// Pod-template annotation; bumping it rolls the workload's pods.
pub const ANNOTATION_RESTART: &str = "kapal.dev/restart-generation";
/// cert-manager's annotation naming the ClusterIssuer of an Ingress' certificate.
pub const ANNOTATION_CLUSTER_ISSUER: &str = "cert-manager.io/cluster-issuer";
pub const CREDENTIALS_SECRET: &str = "kapal-credentials";
/// The app's setup job (see [`kapal::catalog::SetupJob`]).
pub const SETUP_JOB: &str = "kapal-setup";
/// [`LABEL_COMPONENT`] of the setup job and its pods.
pub const SETUP_COMPONENT: &str = "setup";
pub const INGRESS_NAME: &str = "kapal-web";
/// The Secret cert-manager writes the certificate into when an issuer is configured.
pub const TLS_SECRET: &str = "kapal-tls";
/// The copy of the configured wildcard certificate (`tls_secret` `namespace/name`) in each
/// instance namespace.
pub const WILDCARD_TLS_SECRET: &str = "kapal-wildcard-tls";
pub const QUOTA_NAME: &str = "kapal-quota";
pub const LIMITS_NAME: &str = "kapal-limits";
pub const DENY_POLICY: &str = "kapal-default-deny";
pub const ALLOW_NAMESPACE_POLICY: &str = "kapal-allow-same-namespace";
pub const ALLOW_INGRESS_POLICY: &str = "kapal-allow-ingress-controller";
pub const ALLOW_DNS_POLICY: &str = "kapal-allow-cluster-dns";
pub const ALLOW_INTERNET_POLICY: &str = "kapal-allow-internet";
/// Only when the catalog app declares extra egress.
pub const ALLOW_APP_EGRESS_POLICY: &str = "kapal-allow-app-egress";
/// Scratch disk of the setup job's container, on top of the plan's.
const SETUP_EPHEMERAL_MIB: u32 = 256;
/// Keys of the credentials Secret besides the app's generated secrets.
pub const USERNAME_KEY: &str = "username";
pub const PASSWORD_KEY: &str = "password";
const PASSWORD_LENGTH: usize = 24;
const DATA_VOLUME: &str = "data";
const PORT_NAME: &str = "main";

/// Deployment-wide settings that shape every instance's objects.
#[derive(Clone, Debug)]
pub struct Settings {
    /// IngressClass of every Ingress.
    pub ingress_class: String,
    /// StorageClass of new volumes; `None` uses the cluster's default class.
    pub storage_class: Option<String>,
    /// cert-manager ClusterIssuer for each hostname's certificate (wins over `tls_secret`).
    pub tls_issuer: Option<String>,
    /// The (wildcard) certificate Secret for the Ingress' TLS: `namespace/name` is copied into
    /// each instance namespace as [`WILDCARD_TLS_SECRET`] (and kept in sync at every
    /// convergence); a bare `name` must exist in the instance namespace already.
    pub tls_secret: Option<String>,
    /// Namespace of the ingress controller, the only other namespace allowed to reach instances.
    pub ingress_namespace: String,
    /// Addresses of an ingress controller that is not a pod (the local cluster's Traefik runs as
    /// a process on a node), also allowed to reach instances. Empty on K3s.
    pub ingress_sources: Vec<Cidr>,
    /// Addresses of a cluster DNS that is not pods (the local cluster's CoreDNS is a process on
    /// a node), also allowed as DNS servers (port 53). Empty on K3s.
    pub dns_addresses: Vec<Cidr>,
    /// The cluster DNS: its namespace and its pods' labels (K3s' CoreDNS: `kube-system`,
    /// `k8s-app=kube-dns`). Instance pods may send DNS queries (port 53) to these pods only.
    pub dns_namespace: String,
    pub dns_pod_labels: BTreeMap<String, String>,
    /// The cluster's pod and service networks (K3s: 10.42.0.0/16 and 10.43.0.0/16). Instance
    /// pods never reach them (other customers' pods, the API server's Service, Kapal's own);
    /// reaching their own components and the DNS is allowed by pod selectors instead.
    pub cluster_cidrs: Vec<Cidr>,
    /// Further networks instance pods never reach, e.g. the nodes' public addresses (the API
    /// server, kubelets and node ports) when the nodes have some.
    pub egress_deny: Vec<Cidr>,
    /// How long instance pods stay bound to a node that is not ready or unreachable before they
    /// are evicted and recreated elsewhere (`tolerationSeconds` of the
    /// `node.kubernetes.io/not-ready` and `node.kubernetes.io/unreachable` NoExecute taints).
    pub node_failure_toleration: Duration,
    /// Further tolerations on every instance pod (e.g. a dedicated node pool's taint).
    pub extra_tolerations: Vec<Toleration>,
    /// Affinity of every instance pod; `None` (default) lets the scheduler choose.
    pub affinity: Option<Affinity>,
    /// Node labels every instance pod (app, database, setup job) selects (`nodeSelector`).
    pub node_selector: BTreeMap<String, String>,
    /// Catalog image -> the image pods run instead (the local cluster's own builds; empty in
    /// production).
    pub image_map: crate::placement::ImageMap,
    /// Value of [`LABEL_PARTITION`] on every object.
    pub partition: String,
}

impl Settings {
    /// The `(namespace, name)` of the wildcard certificate to copy into instance namespaces,
    /// when `tls_secret` is `namespace/name` and no issuer is set.
    pub fn wildcard_tls_source(&self) -> Option<(&str, &str)> {
        if self.tls_issuer.is_some() {
            return None;
        }
        self.tls_secret
            .as_deref()?
            .split_once('/')
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
    }
}

/// The instance's copy of the wildcard certificate `source` (its `tls.crt` and `tls.key`).
pub fn wildcard_tls_copy(spec: &Spec, settings: &Settings, source: &Secret) -> Secret {
    let data = source
        .data
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() == "tls.crt" || k.as_str() == "tls.key")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut metadata = meta(spec, WILDCARD_TLS_SECRET, instance_labels(spec));
    label_partition(&mut metadata, settings);
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Adds the partition label to `meta`.
pub fn label_partition(meta: &mut ObjectMeta, settings: &Settings) {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_PARTITION.to_string(), settings.partition.clone());
}

/// The node-condition taints whose toleration [`Settings::node_failure_toleration`] bounds.
pub const NODE_FAILURE_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// A component's workload.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    Deployment(Deployment),
    StatefulSet(StatefulSet),
}

impl Workload {
    pub fn name(&self) -> &str {
        let meta = match self {
            Workload::Deployment(d) => &d.metadata,
            Workload::StatefulSet(s) => &s.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }

    pub fn pod_template(&self) -> Option<&PodTemplateSpec> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref().map(|s| &s.template),
            Workload::StatefulSet(s) => s.spec.as_ref().map(|s| &s.template),
        }
    }

    pub fn replicas(&self) -> Option<i32> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref().and_then(|s| s.replicas),
            Workload::StatefulSet(s) => s.spec.as_ref().and_then(|s| s.replicas),
        }
    }
}

/// Everything an instance's namespace should contain (but its credentials Secret, which is
/// created once by [`credentials_secret`] and never re-rendered).
#[derive(Clone, Debug)]
pub struct Objects {
    pub namespace: Namespace,
    pub quota: ResourceQuota,
    pub limits: LimitRange,
    pub network_policies: Vec<NetworkPolicy>,
    pub volumes: Vec<PersistentVolumeClaim>,
    pub services: Vec<Service>,
    pub workloads: Vec<Workload>,
    pub ingress: Ingress,
    /// The app's setup job; only while the instance should run.
    pub setup: Option<Job>,
}

/// CPU, memory and scratch disk of one component: its `resource_share` percent of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub ephemeral_storage_mib: u32,
}

impl Resources {
    pub fn of(plan: &Plan, component: &Component) -> Resources {
        Resources {
            cpu_millis: share(plan.cpu_millis, component.resource_share),
            memory_mib: share(plan.memory_mib, component.resource_share),
            ephemeral_storage_mib: share(plan.ephemeral_storage_mib, component.resource_share),
        }
    }

    fn quantities(self) -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            ("cpu".to_string(), cpu(self.cpu_millis)),
            ("memory".to_string(), mebibytes(self.memory_mib)),
            (
                "ephemeral-storage".to_string(),
                mebibytes(self.ephemeral_storage_mib),
            ),
        ])
    }
}

fn share(total: u32, percent: u32) -> u32 {
    // u64: no overflow for any u32 total.
    u32::try_from(u64::from(total) * u64::from(percent) / 100).unwrap_or(total)
}

fn cpu(millis: u32) -> Quantity {
    Quantity(format!("{millis}m"))
}

/// Canonical form (what the API server stores), so applies are no-ops when nothing changed.
fn mebibytes(mib: u32) -> Quantity {
    if mib.is_multiple_of(1024) {
        Quantity(format!("{}Gi", mib / 1024))
    } else {
        Quantity(format!("{mib}Mi"))
    }
}

fn count(n: usize) -> Quantity {
    Quantity(n.to_string())
}

/// Size of a component's volume: its `storage_share` percent of the plan's storage.
pub fn volume_size(plan: &Plan, storage_share: u32) -> Quantity {
    mebibytes(share(plan.storage_gib.saturating_mul(1024), storage_share))
}

/// Name of a component's PersistentVolumeClaim.
pub fn volume_name(component: &str) -> String {
    format!("{component}-{DATA_VOLUME}")
}

/// The labels every object of the instance carries.
pub fn instance_labels(spec: &Spec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_INSTANCE.to_string(), spec.instance_id.to_string()),
        (LABEL_CUSTOMER.to_string(), spec.customer_id.clone()),
        (LABEL_APP.to_string(), spec.app_id.clone()),
    ])
}

fn component_labels(spec: &Spec, component: &str) -> BTreeMap<String, String> {
    let mut labels = instance_labels(spec);
    labels.insert(LABEL_COMPONENT.to_string(), component.to_string());
    labels
}

/// The (immutable) selector of a component's pods.
fn selector_labels(spec: &Spec, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_INSTANCE.to_string(), spec.instance_id.to_string()),
        (LABEL_COMPONENT.to_string(), component.to_string()),
    ])
}

fn meta(spec: &Spec, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(spec.namespace.clone()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// Replaces `{{hostname}}`, `{{url}}`, `{{instance_id}}`, `{{customer_id}}` and
/// `{{component:<name>}}` (the component's Service name) in `template`. Anything else in braces
/// is left as it is.
pub fn render_template(template: &str, spec: &Spec, app: &App) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = &after[..end];
        let value = match key {
            "hostname" => Some(spec.hostname.clone()),
            "url" => Some(spec.url()),
            "instance_id" => Some(spec.instance_id.to_string()),
            "customer_id" => Some(spec.customer_id.clone()),
            _ => key
                .strip_prefix("component:")
                .filter(|name| app.components.iter().any(|c| c.name == *name))
                .map(str::to_string),
        };
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The app's admin user name for this instance.
pub fn username(spec: &Spec, app: &App) -> String {
    render_template(&app.credentials.username, spec, app)
}

/// The instance's credentials Secret with freshly generated values. Created once; never
/// re-rendered over an existing Secret.
pub fn credentials_secret(spec: &Spec, app: &App, settings: &Settings) -> Secret {
    let mut data = BTreeMap::from([
        (USERNAME_KEY.to_string(), username(spec, app)),
        (PASSWORD_KEY.to_string(), generate_password()),
    ]);
    for s in &app.secrets {
        data.insert(s.name.clone(), generate_secret(s.length));
    }
    let mut metadata = meta(spec, CREDENTIALS_SECRET, instance_labels(spec));
    label_partition(&mut metadata, settings);
    Secret {
        metadata,
        string_data: Some(data),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    }
}

/// Keys the credentials Secret must hold for `app`.
pub fn credential_keys(app: &App) -> Vec<String> {
    let mut keys = vec![USERNAME_KEY.to_string(), PASSWORD_KEY.to_string()];
    keys.extend(app.secrets.iter().map(|s| s.name.clone()));
    keys
}

/// The customer's generated password: [`PASSWORD_LENGTH`] alphanumerics with at least one
/// lower-case letter, one upper-case letter and one digit, as apps' password rules ask (n8n
/// refuses an owner password without a digit and an upper-case letter; about 1.5% of plain
/// random 24-character values have no digit). Drawn again until it has all three.
pub fn generate_password() -> String {
    loop {
        let password = generate_secret(PASSWORD_LENGTH);
        if password.bytes().any(|b| b.is_ascii_lowercase())
            && password.bytes().any(|b| b.is_ascii_uppercase())
            && password.bytes().any(|b| b.is_ascii_digit())
        {
            return password;
        }
    }
}

/// A random alphanumeric value from the OS-seeded thread RNG.
pub fn generate_secret(length: usize) -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

/// Every object of the instance but its credentials Secret.
pub fn render(spec: &Spec, app: &App, plan: &Plan, settings: &Settings) -> Objects {
    let mut objects = render_objects(spec, app, plan, settings);
    for meta in objects.metas_mut() {
        label_partition(meta, settings);
    }
    objects
}

impl Objects {
    /// The metadata of every object.
    pub fn metas_mut(&mut self) -> Vec<&mut ObjectMeta> {
        let mut metas = vec![
            &mut self.namespace.metadata,
            &mut self.quota.metadata,
            &mut self.limits.metadata,
            &mut self.ingress.metadata,
        ];
        metas.extend(self.network_policies.iter_mut().map(|p| &mut p.metadata));
        metas.extend(self.volumes.iter_mut().map(|v| &mut v.metadata));
        metas.extend(self.services.iter_mut().map(|s| &mut s.metadata));
        metas.extend(self.workloads.iter_mut().map(|w| match w {
            Workload::Deployment(d) => &mut d.metadata,
            Workload::StatefulSet(s) => &mut s.metadata,
        }));
        metas.extend(self.setup.iter_mut().map(|j| &mut j.metadata));
        metas
    }
}

fn render_objects(spec: &Spec, app: &App, plan: &Plan, settings: &Settings) -> Objects {
    Objects {
        namespace: namespace(spec, app),
        quota: quota(spec, app, plan),
        limits: limit_range(spec, plan),
        network_policies: network_policies(spec, app, settings),
        volumes: app
            .components
            .iter()
            .filter_map(|c| {
                c.volume
                    .as_ref()
                    .map(|v| volume(spec, plan, c, v.storage_share, settings))
            })
            .collect(),
        services: app.components.iter().map(|c| service(spec, c)).collect(),
        workloads: app
            .components
            .iter()
            .map(|c| workload(spec, app, plan, c, settings))
            .collect(),
        ingress: ingress(spec, app, settings),
        setup: app
            .setup
            .as_ref()
            .filter(|_| spec.desired == Desired::Running)
            .and_then(|setup| setup_job(spec, app, setup, settings)),
    }
}

/// The app's setup job: its container runs as `setup.run_as_user` with the restricted
/// security context, with the component's environment (plus its own) and volume, on the
/// component's node (the volume is ReadWriteOnce). `None` when the component is unknown.
fn setup_job(spec: &Spec, app: &App, setup: &SetupJob, settings: &Settings) -> Option<Job> {
    let component = app.components.iter().find(|c| c.name == setup.component)?;
    let mut env = env(spec, app, component);
    env.extend(env_vars(spec, app, &setup.env));
    let resources = Resources {
        cpu_millis: setup.cpu_millis,
        memory_mib: setup.memory_mib,
        ephemeral_storage_mib: SETUP_EPHEMERAL_MIB,
    }
    .quantities();
    let container = Container {
        name: SETUP_COMPONENT.to_string(),
        image: Some(crate::placement::image(&settings.image_map, &setup.image)),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(
            setup
                .command
                .iter()
                .map(|c| render_template(c, spec, app))
                .collect(),
        ),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            run_as_non_root: Some(true),
            run_as_user: Some(setup.run_as_user),
            run_as_group: Some(setup.run_as_user),
            ..SecurityContext::default()
        }),
        volume_mounts: component.volume.as_ref().map(|v| {
            vec![VolumeMount {
                name: DATA_VOLUME.to_string(),
                mount_path: v.mount_path.clone(),
                ..VolumeMount::default()
            }]
        }),
        ..Container::default()
    };
    let mut affinity = settings.affinity.clone().unwrap_or_default();
    affinity.pod_affinity = Some(PodAffinity {
        required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(spec, &component.name)),
                ..LabelSelector::default()
            }),
            topology_key: "kubernetes.io/hostname".to_string(),
            ..PodAffinityTerm::default()
        }]),
        ..PodAffinity::default()
    });
    Some(Job {
        metadata: meta(spec, SETUP_JOB, component_labels(spec, SETUP_COMPONENT)),
        spec: Some(JobSpec {
            backoff_limit: Some(6),
            active_deadline_seconds: Some(1800),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(component_labels(spec, SETUP_COMPONENT)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("OnFailure".to_string()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(setup.run_as_user),
                        run_as_group: Some(setup.run_as_user),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    tolerations: Some(tolerations(settings)),
                    node_selector: node_selector(settings),
                    affinity: Some(affinity),
                    volumes: component.volume.as_ref().map(|_| {
                        vec![Volume {
                            name: DATA_VOLUME.to_string(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: volume_name(&component.name),
                                ..PersistentVolumeClaimVolumeSource::default()
                            }),
                            ..Volume::default()
                        }]
                    }),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// The namespace, enforcing the app's Pod Security Standard (`restricted` for apps whose
/// images run as a fixed non-root user, `baseline` otherwise).
fn namespace(spec: &Spec, app: &App) -> Namespace {
    let mut labels = instance_labels(spec);
    labels.insert(
        LABEL_POD_SECURITY.to_string(),
        app.pod_security.as_str().to_string(),
    );
    Namespace {
        metadata: ObjectMeta {
            name: Some(spec.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// The plan's CPU and memory, plus room for the app's setup job while it runs.
fn quota(spec: &Spec, app: &App, plan: &Plan) -> ResourceQuota {
    let volumes = app.components.iter().filter(|c| c.volume.is_some()).count();
    let (setup_cpu, setup_memory, setup_ephemeral, setup_pods) =
        app.setup.as_ref().map_or((0, 0, 0, 0), |s| {
            (s.cpu_millis, s.memory_mib, SETUP_EPHEMERAL_MIB, 1)
        });
    let cpu_total = cpu(plan.cpu_millis.saturating_add(setup_cpu));
    let memory_total = mebibytes(plan.memory_mib.saturating_add(setup_memory));
    let ephemeral_total = mebibytes(plan.ephemeral_storage_mib.saturating_add(setup_ephemeral));
    let hard = BTreeMap::from([
        (
            "requests.ephemeral-storage".to_string(),
            ephemeral_total.clone(),
        ),
        ("limits.ephemeral-storage".to_string(), ephemeral_total),
        ("requests.cpu".to_string(), cpu_total.clone()),
        ("limits.cpu".to_string(), cpu_total),
        ("requests.memory".to_string(), memory_total.clone()),
        ("limits.memory".to_string(), memory_total),
        (
            "requests.storage".to_string(),
            mebibytes(plan.storage_gib.saturating_mul(1024)),
        ),
        ("persistentvolumeclaims".to_string(), count(volumes)),
        // Room for one replacement pod per component while an old one terminates (and the
        // setup job's).
        (
            "pods".to_string(),
            count(app.components.len() * 2 + setup_pods),
        ),
        ("services".to_string(), count(app.components.len())),
        ("services.nodeports".to_string(), count(0)),
        ("services.loadbalancers".to_string(), count(0)),
    ]);
    ResourceQuota {
        metadata: meta(spec, QUOTA_NAME, instance_labels(spec)),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

fn limit_range(spec: &Spec, plan: &Plan) -> LimitRange {
    let default = Resources {
        cpu_millis: plan.cpu_millis.min(100),
        memory_mib: plan.memory_mib.min(128),
        ephemeral_storage_mib: plan.ephemeral_storage_mib.min(256),
    }
    .quantities();
    let max = Resources {
        cpu_millis: plan.cpu_millis,
        memory_mib: plan.memory_mib,
        ephemeral_storage_mib: plan.ephemeral_storage_mib.max(SETUP_EPHEMERAL_MIB),
    }
    .quantities();
    LimitRange {
        metadata: meta(spec, LIMITS_NAME, instance_labels(spec)),
        spec: Some(LimitRangeSpec {
            limits: vec![
                LimitRangeItem {
                    type_: "Container".to_string(),
                    default: Some(default.clone()),
                    default_request: Some(default),
                    max: Some(max),
                    ..LimitRangeItem::default()
                },
                LimitRangeItem {
                    type_: "PersistentVolumeClaim".to_string(),
                    max: Some(BTreeMap::from([(
                        "storage".to_string(),
                        mebibytes(plan.storage_gib.saturating_mul(1024)),
                    )])),
                    ..LimitRangeItem::default()
                },
            ],
        }),
    }
}

/// The networks no instance pod reaches: [`kapal::cidr::non_public`], the cluster's networks
/// and the configured extra ones, without those another one covers.
pub fn denied_networks(settings: &Settings) -> Vec<Cidr> {
    let mut nets = kapal::cidr::non_public();
    nets.extend(settings.cluster_cidrs.iter().copied());
    nets.extend(settings.egress_deny.iter().copied());
    kapal::cidr::without_covered(nets)
}

fn network_policies(spec: &Spec, app: &App, settings: &Settings) -> Vec<NetworkPolicy> {
    let all_pods = || Some(LabelSelector::default());
    // A policy restricts the directions named in its types; `Some(rules)` adds that direction
    // (an empty list of rules allows nothing, and is sent as no list at all).
    let policy = |name: &str,
                  ingress: Option<Vec<NetworkPolicyIngressRule>>,
                  egress: Option<Vec<NetworkPolicyEgressRule>>| {
        let mut types = Vec::new();
        if ingress.is_some() {
            types.push("Ingress".to_string());
        }
        if egress.is_some() {
            types.push("Egress".to_string());
        }
        let ingress = ingress.filter(|rules| !rules.is_empty());
        let egress = egress.filter(|rules| !rules.is_empty());
        NetworkPolicy {
            metadata: meta(spec, name, instance_labels(spec)),
            spec: Some(NetworkPolicySpec {
                pod_selector: all_pods(),
                policy_types: Some(types),
                ingress,
                egress,
            }),
        }
    };
    let own_pods = || {
        Some(vec![NetworkPolicyPeer {
            pod_selector: all_pods(),
            ..NetworkPolicyPeer::default()
        }])
    };
    let namespace_named = |name: &str| {
        Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                name.to_string(),
            )])),
            ..LabelSelector::default()
        })
    };
    let port = |number: u16, protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(number))),
        protocol: Some(protocol.to_string()),
        ..NetworkPolicyPort::default()
    };
    let denied = denied_networks(settings);
    let internet = |everything: &str, v4: bool| NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: everything.to_string(),
            except: Some(
                denied
                    .iter()
                    .filter(|c| c.is_ipv4() == v4)
                    .map(Cidr::to_string)
                    .collect(),
            ),
        }),
        ..NetworkPolicyPeer::default()
    };
    let mut policies = vec![
        // Selecting every pod for Ingress and Egress with no rule denies all traffic in and
        // out; each policy below allows one kind of traffic (policies add up) ...
        policy(DENY_POLICY, Some(Vec::new()), Some(Vec::new())),
        // ... between the instance's own pods (the app and its database) ...
        policy(
            ALLOW_NAMESPACE_POLICY,
            Some(vec![NetworkPolicyIngressRule {
                from: own_pods(),
                ..NetworkPolicyIngressRule::default()
            }]),
            Some(vec![NetworkPolicyEgressRule {
                to: own_pods(),
                ..NetworkPolicyEgressRule::default()
            }]),
        ),
        // ... in from the ingress controller (Traefik, and cert-manager's HTTP-01 solver pods
        // in this namespace are reached through it too) ...
        policy(
            ALLOW_INGRESS_POLICY,
            Some(vec![NetworkPolicyIngressRule {
                from: Some(
                    std::iter::once(NetworkPolicyPeer {
                        namespace_selector: namespace_named(&settings.ingress_namespace),
                        ..NetworkPolicyPeer::default()
                    })
                    .chain(settings.ingress_sources.iter().map(|c| NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: c.to_string(),
                            except: None,
                        }),
                        ..NetworkPolicyPeer::default()
                    }))
                    .collect(),
                ),
                ..NetworkPolicyIngressRule::default()
            }]),
            None,
        ),
        // ... out to the cluster DNS, its pods only and port 53 only (the DNS Service's
        // address is in the service network, which is denied below: policies are checked
        // against the pod the Service sends the packet to) ...
        policy(
            ALLOW_DNS_POLICY,
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(
                    std::iter::once(NetworkPolicyPeer {
                        namespace_selector: namespace_named(&settings.dns_namespace),
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(settings.dns_pod_labels.clone()),
                            ..LabelSelector::default()
                        }),
                        ..NetworkPolicyPeer::default()
                    })
                    .chain(settings.dns_addresses.iter().map(|c| NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: c.to_string(),
                            except: None,
                        }),
                        ..NetworkPolicyPeer::default()
                    }))
                    .collect(),
                ),
                ports: Some(vec![port(53, "UDP"), port(53, "TCP")]),
            }]),
        ),
        // ... and out to the public internet: every address but private, link-local (cloud
        // metadata), loopback, CGNAT, multicast and reserved ranges, and the cluster's own
        // networks (other customers' pods, the API server, Kapal and its database).
        policy(
            ALLOW_INTERNET_POLICY,
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![internet("0.0.0.0/0", true), internet("::/0", false)]),
                ..NetworkPolicyEgressRule::default()
            }]),
        ),
    ];
    // What the catalog declares for this app, and nothing else.
    if !app.egress.is_empty() {
        policies.push(policy(
            ALLOW_APP_EGRESS_POLICY,
            None,
            Some(
                app.egress
                    .iter()
                    .map(|rule| NetworkPolicyEgressRule {
                        to: Some(vec![NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: rule.cidr.clone(),
                                except: None,
                            }),
                            ..NetworkPolicyPeer::default()
                        }]),
                        ports: Some(
                            rule.ports
                                .iter()
                                .map(|p| port(p.port, p.protocol.as_str()))
                                .collect(),
                        ),
                    })
                    .collect(),
            ),
        ));
    }
    policies
}

fn volume(
    spec: &Spec,
    plan: &Plan,
    component: &Component,
    storage_share: u32,
    settings: &Settings,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(
            spec,
            &volume_name(&component.name),
            component_labels(spec, &component.name),
        ),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    volume_size(plan, storage_share),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            storage_class_name: settings.storage_class.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn service(spec: &Spec, component: &Component) -> Service {
    Service {
        metadata: meta(
            spec,
            &component.name,
            component_labels(spec, &component.name),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(spec, &component.name)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_string()),
                port: i32::from(component.port),
                target_port: Some(IntOrString::Int(i32::from(component.port))),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn env(spec: &Spec, app: &App, component: &Component) -> Vec<EnvVar> {
    env_vars(spec, app, &component.env)
}

fn env_vars(spec: &Spec, app: &App, vars: &[kapal::catalog::EnvVar]) -> Vec<EnvVar> {
    vars.iter()
        .map(|e| match (&e.value, &e.secret) {
            (_, Some(key)) => EnvVar {
                name: e.name.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: CREDENTIALS_SECRET.to_string(),
                        key: key.clone(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            (value, None) => EnvVar {
                name: e.name.clone(),
                value: Some(render_template(
                    value.as_deref().unwrap_or_default(),
                    spec,
                    app,
                )),
                ..EnvVar::default()
            },
        })
        .collect()
}

/// Tolerations of every instance pod: the node-failure taints for
/// [`Settings::node_failure_toleration`] (instead of the API server's default 300 s, which would
/// keep a pod on a dead node for over five minutes), then the extra ones.
fn tolerations(settings: &Settings) -> Vec<Toleration> {
    let seconds = i64::try_from(settings.node_failure_toleration.as_secs()).unwrap_or(i64::MAX);
    NODE_FAILURE_TAINTS
        .iter()
        .map(|key| Toleration {
            key: Some((*key).to_string()),
            operator: Some("Exists".to_string()),
            effect: Some("NoExecute".to_string()),
            toleration_seconds: Some(seconds),
            ..Toleration::default()
        })
        .chain(settings.extra_tolerations.iter().cloned())
        .collect()
}

/// The `nodeSelector` of every instance pod: [`Settings::node_selector`], none when empty.
fn node_selector(settings: &Settings) -> Option<BTreeMap<String, String>> {
    (!settings.node_selector.is_empty()).then(|| settings.node_selector.clone())
}

fn pod_template(
    spec: &Spec,
    app: &App,
    plan: &Plan,
    component: &Component,
    settings: &Settings,
) -> PodTemplateSpec {
    let resources = Resources::of(plan, component).quantities();
    let port = IntOrString::Int(i32::from(component.port));
    let readiness_probe = Probe {
        http_get: component.readiness_path.as_ref().map(|path| HTTPGetAction {
            path: Some(path.clone()),
            port: port.clone(),
            ..HTTPGetAction::default()
        }),
        tcp_socket: match component.readiness_path {
            Some(_) => None,
            None => Some(TCPSocketAction {
                port,
                ..TCPSocketAction::default()
            }),
        },
        initial_delay_seconds: Some(5),
        period_seconds: Some(10),
        timeout_seconds: Some(3),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let non_root = component.run_as_user.is_some();
    let container = Container {
        name: component.name.clone(),
        image: Some(crate::placement::image(
            &settings.image_map,
            &component.image,
        )),
        image_pull_policy: Some("IfNotPresent".to_string()),
        args: (!component.args.is_empty()).then(|| component.args.clone()),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_string()),
            container_port: i32::from(component.port),
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        env: (!component.env.is_empty()).then(|| env(spec, app, component)),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..ResourceRequirements::default()
        }),
        readiness_probe: Some(readiness_probe),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            // An image that starts as root (e.g. MySQL's entrypoint, which switches user) needs
            // its default capabilities; one that runs as a fixed user needs none.
            capabilities: non_root.then(|| Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            run_as_non_root: non_root.then_some(true),
            run_as_user: component.run_as_user,
            ..SecurityContext::default()
        }),
        volume_mounts: component.volume.as_ref().map(|v| {
            vec![VolumeMount {
                name: DATA_VOLUME.to_string(),
                mount_path: v.mount_path.clone(),
                ..VolumeMount::default()
            }]
        }),
        ..Container::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(component_labels(spec, &component.name)),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_RESTART.to_string(),
                spec.restart_generation.to_string(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            // Service links would inject <SERVICE>_PORT variables that some apps misread.
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: non_root.then_some(true),
                run_as_user: component.run_as_user,
                run_as_group: component.run_as_user,
                fs_group: component.run_as_user,
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            tolerations: Some(tolerations(settings)),
            node_selector: node_selector(settings),
            affinity: settings.affinity.clone(),
            volumes: component.volume.as_ref().map(|_| {
                vec![Volume {
                    name: DATA_VOLUME.to_string(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: volume_name(&component.name),
                        ..PersistentVolumeClaimVolumeSource::default()
                    }),
                    ..Volume::default()
                }]
            }),
            ..PodSpec::default()
        }),
    }
}

fn workload(
    spec: &Spec,
    app: &App,
    plan: &Plan,
    component: &Component,
    settings: &Settings,
) -> Workload {
    let metadata = meta(
        spec,
        &component.name,
        component_labels(spec, &component.name),
    );
    let selector = LabelSelector {
        match_labels: Some(selector_labels(spec, &component.name)),
        ..LabelSelector::default()
    };
    let template = pod_template(spec, app, plan, component, settings);
    let replicas = Some(spec.desired.replicas());
    match component.kind {
        WorkloadKind::Deployment => Workload::Deployment(Deployment {
            metadata,
            spec: Some(DeploymentSpec {
                replicas,
                selector,
                template,
                revision_history_limit: Some(3),
                // A volume is ReadWriteOnce and the app owns its data: stop the old pod before
                // the new one starts (this also keeps a restart within the namespace's quota).
                strategy: component.volume.as_ref().map(|_| DeploymentStrategy {
                    type_: Some("Recreate".to_string()),
                    ..DeploymentStrategy::default()
                }),
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        }),
        WorkloadKind::StatefulSet => Workload::StatefulSet(StatefulSet {
            metadata,
            spec: Some(StatefulSetSpec {
                replicas,
                selector,
                template,
                service_name: Some(component.name.clone()),
                revision_history_limit: Some(3),
                ..StatefulSetSpec::default()
            }),
            ..StatefulSet::default()
        }),
    }
}

fn ingress(spec: &Spec, app: &App, settings: &Settings) -> Ingress {
    // Catalog validation guarantees exactly one public component.
    let public = app.public_component().or(app.components.first());
    let (service, port) = public.map(|c| (c.name.clone(), c.port)).unwrap_or_default();
    let mut metadata = meta(spec, INGRESS_NAME, instance_labels(spec));
    let tls_secret = match (&settings.tls_issuer, &settings.tls_secret) {
        (Some(issuer), _) => {
            metadata.annotations = Some(BTreeMap::from([(
                ANNOTATION_CLUSTER_ISSUER.to_string(),
                issuer.clone(),
            )]));
            Some(TLS_SECRET.to_string())
        }
        (None, Some(secret)) => Some(match settings.wildcard_tls_source() {
            // Copied into the namespace by the provisioner.
            Some(_) => WILDCARD_TLS_SECRET.to_string(),
            None => secret.clone(),
        }),
        (None, None) => None,
    };
    Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: Some(settings.ingress_class.clone()),
            rules: Some(vec![IngressRule {
                host: Some(spec.hostname.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_string()),
                        path_type: "Prefix".to_string(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: service,
                                port: Some(ServiceBackendPort {
                                    number: Some(i32::from(port)),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            tls: tls_secret.map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.hostname.clone()]),
                    secret_name: Some(secret),
                }]
            }),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapal::catalog::Catalog;
    use uuid::Uuid;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("a CIDR")
    }

    fn catalog() -> Catalog {
        Catalog::load(&kapal::catalog::repo_catalog_dir()).expect("catalog")
    }

    fn spec(app: &str, plan: &str) -> Spec {
        Spec {
            instance_id: Uuid::parse_str("0197a0e0-0000-7000-8000-000000000001").expect("uuid"),
            account_id: Uuid::new_v4(),
            customer_id: "c1a2b3c4".into(),
            app_id: app.into(),
            plan_id: plan.into(),
            hostname: format!("c1a2b3c4.{app}.kapal.example"),
            namespace: format!("kapal-c1a2b3c4-{app}"),
            desired: Desired::Running,
            restart_generation: 0,
            delete_data_after: None,
            suspended_by_billing: false,
        }
    }

    fn settings() -> Settings {
        Settings {
            ingress_class: "traefik".into(),
            storage_class: None,
            tls_issuer: None,
            tls_secret: None,
            ingress_namespace: "kube-system".into(),
            ingress_sources: Vec::new(),
            dns_addresses: Vec::new(),
            dns_namespace: "kube-system".into(),
            dns_pod_labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
            cluster_cidrs: vec![cidr("10.42.0.0/16"), cidr("10.43.0.0/16")],
            egress_deny: Vec::new(),
            node_failure_toleration: Duration::from_secs(20),
            extra_tolerations: Vec::new(),
            affinity: None,
            node_selector: BTreeMap::new(),
            image_map: crate::placement::ImageMap::new(),
            partition: "p1".into(),
        }
    }

    fn rendered(app_id: &str, plan_id: &str) -> (Spec, Objects) {
        let catalog = catalog();
        let app = catalog.app(app_id).expect("app");
        let spec = spec(app_id, plan_id);
        let objects = render(&spec, app, app.plan(plan_id).expect("plan"), &settings());
        (spec, objects)
    }

    fn labels_of(meta: &ObjectMeta) -> &BTreeMap<String, String> {
        meta.labels.as_ref().expect("labels")
    }

    /// Every object carries the instance's labels and lives in its namespace.
    fn assert_instance_labels(spec: &Spec, meta: &ObjectMeta) {
        let labels = labels_of(meta);
        let name = meta.name.as_deref().unwrap_or("?");
        assert_eq!(
            labels.get(LABEL_MANAGED_BY).map(String::as_str),
            Some("kapal"),
            "{name}"
        );
        assert_eq!(
            labels.get(LABEL_INSTANCE),
            Some(&spec.instance_id.to_string()),
            "{name}"
        );
        assert_eq!(
            labels.get(LABEL_CUSTOMER),
            Some(&spec.customer_id),
            "{name}"
        );
        assert_eq!(labels.get(LABEL_APP), Some(&spec.app_id), "{name}");
        assert_eq!(
            labels.get(LABEL_PARTITION).map(String::as_str),
            Some("p1"),
            "{name}"
        );
    }

    fn all_metas(objects: &Objects) -> Vec<&ObjectMeta> {
        let mut metas = vec![
            &objects.quota.metadata,
            &objects.limits.metadata,
            &objects.ingress.metadata,
        ];
        metas.extend(objects.network_policies.iter().map(|p| &p.metadata));
        metas.extend(objects.volumes.iter().map(|p| &p.metadata));
        metas.extend(objects.services.iter().map(|s| &s.metadata));
        metas.extend(objects.workloads.iter().map(|w| match w {
            Workload::Deployment(d) => &d.metadata,
            Workload::StatefulSet(s) => &s.metadata,
        }));
        metas
    }

    fn container(w: &Workload) -> &Container {
        &w.pod_template()
            .and_then(|t| t.spec.as_ref())
            .expect("pod spec")
            .containers[0]
    }

    fn env_value<'a>(c: &'a Container, name: &str) -> &'a EnvVar {
        c.env
            .as_ref()
            .and_then(|env| env.iter().find(|e| e.name == name))
            .unwrap_or_else(|| panic!("env {name}"))
    }

    fn secret_ref(e: &EnvVar) -> (&str, &str) {
        let r = e
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .unwrap_or_else(|| panic!("{} comes from a secret", e.name));
        (r.name.as_str(), r.key.as_str())
    }

    const MIB: u128 = 1 << 20;

    /// CPU and memory bytes of a container, checking requests equal limits.
    fn limits(c: &Container) -> (String, u128) {
        let r = c.resources.as_ref().expect("resources");
        assert_eq!(r.requests, r.limits, "requests equal limits");
        let l = r.limits.as_ref().expect("limits");
        (
            l["cpu"].0.clone(),
            crate::cluster::quantity_bytes(&l["memory"]).expect("memory"),
        )
    }

    /// `share` percent of the plan's CPU and memory.
    fn share_of(plan: &Plan, share: u32) -> (String, u128) {
        (
            format!("{}m", plan.cpu_millis * share / 100),
            u128::from(plan.memory_mib * share / 100) * MIB,
        )
    }

    fn bytes(q: &Quantity) -> u128 {
        crate::cluster::quantity_bytes(q).expect("quantity")
    }

    fn pvc_size(p: &PersistentVolumeClaim) -> Quantity {
        p.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .expect("requests")["storage"]
            .clone()
    }

    #[test]
    fn quantities_are_written_in_the_api_servers_canonical_form() {
        assert_eq!(mebibytes(2560).0, "2560Mi");
        assert_eq!(mebibytes(2048).0, "2Gi");
        assert_eq!(cpu(250).0, "250m");
        let catalog = catalog();
        let plan = catalog
            .app("ghost")
            .and_then(|a| a.plan("starter"))
            .expect("plan");
        assert_eq!(
            bytes(&volume_size(plan, 50)),
            (u128::from(plan.storage_gib) << 30) / 2
        );
    }

    #[test]
    fn n8n_renders_one_deployment_with_its_volume_service_and_ingress() {
        let (spec, objects) = rendered("n8n", "trial");
        let plan = catalog()
            .app("n8n")
            .and_then(|a| a.plan("trial"))
            .expect("plan")
            .clone();
        let ns = &objects.namespace.metadata;
        assert_eq!(ns.name.as_deref(), Some("kapal-c1a2b3c4-n8n"));
        assert_eq!(
            labels_of(ns).get(LABEL_POD_SECURITY).map(String::as_str),
            Some("restricted"),
            "n8n runs as node (1000)"
        );
        assert_instance_labels(&spec, ns);
        for meta in all_metas(&objects) {
            assert_instance_labels(&spec, meta);
            assert_eq!(meta.namespace.as_deref(), Some("kapal-c1a2b3c4-n8n"));
        }

        assert_eq!(objects.workloads.len(), 1);
        let Workload::Deployment(d) = &objects.workloads[0] else {
            panic!("n8n runs as a Deployment")
        };
        assert_eq!(d.metadata.name.as_deref(), Some("app"));
        let dspec = d.spec.as_ref().expect("spec");
        assert_eq!(dspec.replicas, Some(1));
        assert_eq!(
            dspec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
            Some("Recreate")
        );
        let selector = dspec.selector.match_labels.as_ref().expect("selector");
        let pod_labels = dspec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("pod labels");
        for (k, v) in selector {
            assert_eq!(
                pod_labels.get(k),
                Some(v),
                "the selector matches the pod labels"
            );
        }
        assert_eq!(
            pod_labels.get(LABEL_MANAGED_BY).map(String::as_str),
            Some("kapal"),
            "pods are watched by label"
        );

        let c = container(&objects.workloads[0]);
        assert_eq!(c.image.as_deref(), Some("docker.n8n.io/n8nio/n8n:1.94.1"));
        assert_eq!(c.ports.as_ref().expect("ports")[0].container_port, 5678);
        // all of the plan for the single component
        assert_eq!(limits(c), share_of(&plan, 100));
        assert_eq!(
            env_value(c, "N8N_HOST").value.as_deref(),
            Some("c1a2b3c4.n8n.kapal.example")
        );
        assert_eq!(
            env_value(c, "WEBHOOK_URL").value.as_deref(),
            Some("https://c1a2b3c4.n8n.kapal.example/")
        );
        assert_eq!(
            secret_ref(env_value(c, "N8N_ENCRYPTION_KEY")),
            (CREDENTIALS_SECRET, "encryption_key")
        );
        let probe = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http readiness probe");
        assert_eq!(probe.path.as_deref(), Some("/healthz"));
        assert_eq!(probe.port, IntOrString::Int(5678));
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(1000));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        let pod = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec");
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(
            pod.volumes.as_ref().expect("volumes")[0]
                .persistent_volume_claim
                .as_ref()
                .map(|p| p.claim_name.as_str()),
            Some("app-data")
        );
        assert_eq!(
            c.volume_mounts.as_ref().expect("mounts")[0].mount_path,
            "/home/node/.n8n"
        );
        let annotations = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref());
        assert_eq!(
            annotations
                .and_then(|a| a.get(ANNOTATION_RESTART))
                .map(String::as_str),
            Some("0")
        );

        assert_eq!(objects.volumes.len(), 1);
        assert_eq!(
            objects.volumes[0].metadata.name.as_deref(),
            Some("app-data")
        );
        assert_eq!(
            bytes(&pvc_size(&objects.volumes[0])),
            u128::from(plan.storage_gib) << 30
        );
        assert_eq!(
            objects.volumes[0]
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.clone()),
            None,
            "cluster default"
        );

        assert_eq!(objects.services.len(), 1);
        let svc = objects.services[0].spec.as_ref().expect("service spec");
        assert_eq!(objects.services[0].metadata.name.as_deref(), Some("app"));
        assert_eq!(svc.ports.as_ref().expect("ports")[0].port, 5678);
        assert_eq!(svc.selector.as_ref(), Some(selector));

        let ing = objects.ingress.spec.as_ref().expect("ingress spec");
        assert_eq!(ing.ingress_class_name.as_deref(), Some("traefik"));
        let rule = &ing.rules.as_ref().expect("rules")[0];
        assert_eq!(rule.host.as_deref(), Some("c1a2b3c4.n8n.kapal.example"));
        let backend = rule.http.as_ref().expect("http").paths[0]
            .backend
            .service
            .as_ref()
            .expect("service backend");
        assert_eq!(backend.name, "app");
        assert_eq!(backend.port.as_ref().and_then(|p| p.number), Some(5678));
        assert!(ing.tls.is_none(), "no TLS configured");

        let hard = objects
            .quota
            .spec
            .as_ref()
            .and_then(|s| s.hard.as_ref())
            .expect("hard");
        // The plan, plus room for the owner's setup job (100m, 128 MiB) while it runs.
        assert_eq!(
            hard["requests.cpu"].0,
            format!("{}m", plan.cpu_millis + 100)
        );
        assert_eq!(
            bytes(&hard["limits.memory"]),
            u128::from(plan.memory_mib + 128) * MIB
        );
        assert_eq!(
            bytes(&hard["requests.storage"]),
            u128::from(plan.storage_gib) << 30
        );
        assert_eq!(hard["persistentvolumeclaims"].0, "1");
        let names: Vec<_> = objects
            .network_policies
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        assert_eq!(
            names,
            [
                DENY_POLICY,
                ALLOW_NAMESPACE_POLICY,
                ALLOW_INGRESS_POLICY,
                ALLOW_DNS_POLICY,
                ALLOW_INTERNET_POLICY
            ]
        );
    }

    /// NetworkPolicies are namespaced and select pods of their own namespace only: customer B's
    /// policies never name customer A's namespace or pods, and the only other namespace any
    /// policy admits traffic from is the ingress controller's.
    #[test]
    fn one_customers_policies_cannot_select_another_customers_pods() {
        let catalog = catalog();
        for app in catalog.apps() {
            let plan = app.plans.first().expect("a plan");
            let a = spec(&app.id, &plan.id);
            let mut b = spec(&app.id, &plan.id);
            b.instance_id = Uuid::new_v4();
            b.customer_id = "d5e6f7a8".into();
            b.namespace = format!("kapal-d5e6f7a8-{}", app.id);
            let objects_b = render(&b, app, plan, &settings());
            for policy in &objects_b.network_policies {
                let name = policy.metadata.name.as_deref().unwrap_or("?");
                assert_eq!(
                    policy.metadata.namespace.as_deref(),
                    Some(b.namespace.as_str())
                );
                let spec = policy.spec.as_ref().expect("spec");
                let peers = spec
                    .ingress
                    .iter()
                    .flatten()
                    .flat_map(|rule| rule.from.iter().flatten());
                for peer in peers {
                    match &peer.namespace_selector {
                        // A pod selector alone selects pods of the policy's own namespace.
                        None => assert!(peer.ip_block.is_none(), "{name}: no IP blocks"),
                        Some(ns) => {
                            let labels = ns.match_labels.clone().unwrap_or_default();
                            assert_eq!(
                                labels.get("kubernetes.io/metadata.name"),
                                Some(&settings().ingress_namespace),
                                "{name}: only the ingress controller's namespace"
                            );
                            assert_ne!(
                                labels.get("kubernetes.io/metadata.name"),
                                Some(&a.namespace)
                            );
                            assert!(ns.match_expressions.is_none(), "{name}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn restricted_apps_render_pods_the_restricted_standard_admits() {
        let levels: Vec<(String, String)> = catalog()
            .apps()
            .map(|app| {
                let (_, objects) = rendered(&app.id, "trial");
                let level = labels_of(&objects.namespace.metadata)[LABEL_POD_SECURITY].clone();
                if level == "restricted" {
                    for w in &objects.workloads {
                        let pod = w.pod_template().and_then(|t| t.spec.as_ref()).expect("pod");
                        let psc = pod.security_context.as_ref().expect("pod context");
                        assert_eq!(
                            psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                            Some("RuntimeDefault")
                        );
                        for c in &pod.containers {
                            let sc = c.security_context.as_ref().expect("context");
                            assert_eq!(sc.allow_privilege_escalation, Some(false));
                            assert_eq!(sc.run_as_non_root, Some(true));
                            assert!(sc.run_as_user.is_some_and(|u| u > 0));
                            assert_eq!(
                                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                                Some(vec!["ALL".to_string()])
                            );
                        }
                    }
                }
                (app.id.clone(), level)
            })
            .collect();
        assert_eq!(
            levels,
            [
                ("ghost".to_string(), "baseline".to_string()),
                ("n8n".to_string(), "restricted".to_string()),
                ("wordpress".to_string(), "baseline".to_string()),
            ]
        );
    }

    #[test]
    fn restricted_needs_a_non_root_user_for_every_component() {
        let yaml = |user: &str| {
            format!(
                r#"
id: demo
name: Demo
description: d
version: "1"
plans: [{{id: basic, name: Basic, monthly_price_idr: 1000, cpu_millis: 100, memory_mib: 128, storage_gib: 1}}]
components:
  - {{name: app, kind: Deployment, image: "demo:1", port: 80, public: true, resource_share: 100{user}}}
credentials: {{username: admin}}
pod_security: restricted
"#
            )
        };
        let e = Catalog::default()
            .add_yaml(std::path::Path::new("demo.yaml"), &yaml(""))
            .expect_err("root image");
        assert_eq!(e.field, "components[0].run_as_user");
        let e = Catalog::default()
            .add_yaml(std::path::Path::new("demo.yaml"), &yaml(", run_as_user: 0"))
            .expect_err("uid 0");
        assert_eq!(e.field, "components[0].run_as_user");
        Catalog::default()
            .add_yaml(
                std::path::Path::new("demo.yaml"),
                &yaml(", run_as_user: 1000"),
            )
            .expect("non-root");
    }

    #[test]
    fn ghost_splits_the_plan_between_app_and_database() {
        let (spec, objects) = rendered("ghost", "starter");
        let plan = catalog()
            .app("ghost")
            .and_then(|a| a.plan("starter"))
            .expect("plan")
            .clone();
        for meta in all_metas(&objects) {
            assert_instance_labels(&spec, meta);
        }
        let names: Vec<_> = objects.workloads.iter().map(Workload::name).collect();
        assert_eq!(names, ["app", "db"]);
        let app = &objects.workloads[0];
        let db = &objects.workloads[1];
        assert!(matches!(app, Workload::Deployment(_)));
        let Workload::StatefulSet(sts) = db else {
            panic!("ghost's db is a StatefulSet")
        };
        assert_eq!(
            sts.spec.as_ref().and_then(|s| s.service_name.as_deref()),
            Some("db")
        );

        // split 50/50
        assert_eq!(limits(container(app)), share_of(&plan, 50));
        assert_eq!(limits(container(db)), share_of(&plan, 50));
        let half = (u128::from(plan.storage_gib) << 30) / 2;
        let sizes: Vec<_> = objects
            .volumes
            .iter()
            .map(|p| {
                (
                    p.metadata.name.as_deref().unwrap_or_default(),
                    bytes(&pvc_size(p)),
                )
            })
            .collect();
        assert_eq!(sizes, [("app-data", half), ("db-data", half)]);

        let c = container(app);
        assert_eq!(
            env_value(c, "database__connection__host").value.as_deref(),
            Some("db"),
            "the db component's Service"
        );
        assert_eq!(
            env_value(c, "url").value.as_deref(),
            Some("https://c1a2b3c4.ghost.kapal.example")
        );
        assert_eq!(
            secret_ref(env_value(c, "database__connection__password")),
            (CREDENTIALS_SECRET, "db_password")
        );
        let service_names: Vec<_> = objects
            .services
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        assert!(service_names.contains(&"db"), "{service_names:?}");
        let d = container(db);
        assert_eq!(
            secret_ref(env_value(d, "MYSQL_PASSWORD")),
            (CREDENTIALS_SECRET, "db_password")
        );
        assert_eq!(
            secret_ref(env_value(d, "MYSQL_ROOT_PASSWORD")),
            (CREDENTIALS_SECRET, "db_root_password")
        );
        // MySQL's entrypoint starts as root: it keeps its capabilities but may not escalate.
        let sc = d.security_context.as_ref().expect("security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert!(sc.capabilities.is_none());
        assert_eq!(sc.run_as_non_root, None);
        assert!(
            d.readiness_probe
                .as_ref()
                .and_then(|p| p.tcp_socket.as_ref())
                .is_some(),
            "TCP readiness without a path"
        );
    }

    #[test]
    fn wordpress_points_at_its_mariadb_and_the_ingress_uses_the_configured_tls() {
        let catalog = catalog();
        let app = catalog.app("wordpress").expect("wordpress");
        let spec = spec("wordpress", "pro");
        let mut settings = settings();
        settings.ingress_class = "nginx".into();
        settings.storage_class = Some("fast".into());
        settings.tls_issuer = Some("letsencrypt".into());
        let objects = render(&spec, app, app.plan("pro").expect("pro"), &settings);

        let c = container(&objects.workloads[0]);
        assert_eq!(c.image.as_deref(), Some("wordpress:6.8.1-php8.3-apache"));
        let plan = app.plan("pro").expect("pro");
        // split 50/50
        assert_eq!(limits(c), share_of(plan, 50));
        assert_eq!(
            env_value(c, "WORDPRESS_DB_HOST").value.as_deref(),
            Some("db")
        );
        assert_eq!(
            env_value(c, "WORDPRESS_CONFIG_EXTRA").value.as_deref(),
            Some(
                "define('WP_HOME', 'https://c1a2b3c4.wordpress.kapal.example'); define('WP_SITEURL', 'https://c1a2b3c4.wordpress.kapal.example');"
            )
        );
        assert_eq!(
            secret_ref(env_value(c, "WORDPRESS_DB_PASSWORD")),
            (CREDENTIALS_SECRET, "db_password")
        );
        let half = (u128::from(plan.storage_gib) << 30) / 2;
        assert_eq!(
            objects
                .volumes
                .iter()
                .map(|p| bytes(&pvc_size(p)))
                .collect::<Vec<_>>(),
            [half, half]
        );
        for v in &objects.volumes {
            assert_eq!(
                v.spec
                    .as_ref()
                    .and_then(|s| s.storage_class_name.as_deref()),
                Some("fast")
            );
        }

        let ing = objects.ingress.spec.as_ref().expect("spec");
        assert_eq!(ing.ingress_class_name.as_deref(), Some("nginx"));
        let tls = &ing.tls.as_ref().expect("tls")[0];
        assert_eq!(tls.secret_name.as_deref(), Some(TLS_SECRET));
        assert_eq!(
            tls.hosts.as_deref(),
            Some(&["c1a2b3c4.wordpress.kapal.example".to_string()][..])
        );
        let annotations = objects
            .ingress
            .metadata
            .annotations
            .as_ref()
            .expect("annotations");
        assert_eq!(
            annotations
                .get(ANNOTATION_CLUSTER_ISSUER)
                .map(String::as_str),
            Some("letsencrypt")
        );
        let backend = ing.rules.as_ref().expect("rules")[0]
            .http
            .as_ref()
            .expect("http")
            .paths[0]
            .backend
            .service
            .as_ref()
            .expect("backend");
        assert_eq!(
            (
                backend.name.as_str(),
                backend.port.as_ref().and_then(|p| p.number)
            ),
            ("app", Some(80))
        );

        settings.tls_issuer = None;
        settings.tls_secret = Some("wildcard-tls".into());
        let objects = render(&spec, app, app.plan("pro").expect("pro"), &settings);
        let tls = &objects
            .ingress
            .spec
            .as_ref()
            .and_then(|s| s.tls.as_ref())
            .expect("tls")[0];
        assert_eq!(tls.secret_name.as_deref(), Some("wildcard-tls"));
        assert!(objects.ingress.metadata.annotations.is_none());

        // `namespace/name`: the provisioner's copy in the instance namespace.
        settings.tls_secret = Some("cert-manager/wildcard-kapal".into());
        assert_eq!(
            settings.wildcard_tls_source(),
            Some(("cert-manager", "wildcard-kapal"))
        );
        let objects = render(&spec, app, app.plan("pro").expect("pro"), &settings);
        let tls = &objects
            .ingress
            .spec
            .as_ref()
            .and_then(|s| s.tls.as_ref())
            .expect("tls")[0];
        assert_eq!(tls.secret_name.as_deref(), Some(WILDCARD_TLS_SECRET));
        let source: Secret = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "wildcard-kapal", "namespace": "cert-manager", "labels": { "x": "y" } },
            "type": "kubernetes.io/tls",
            "data": { "tls.crt": "Y3J0", "tls.key": "a2V5", "ca.crt": "Y2E=" },
        }))
        .expect("secret");
        let copy = wildcard_tls_copy(&spec, &settings, &source);
        assert_eq!(copy.metadata.name.as_deref(), Some(WILDCARD_TLS_SECRET));
        assert_eq!(
            copy.metadata.namespace.as_deref(),
            Some(spec.namespace.as_str())
        );
        assert_instance_labels(&spec, &copy.metadata);
        assert_eq!(
            copy.data
                .as_ref()
                .map(|d| d.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["tls.crt".to_string(), "tls.key".to_string()])
        );
        // An issuer wins: nothing is copied.
        settings.tls_issuer = Some("letsencrypt".into());
        assert_eq!(settings.wildcard_tls_source(), None);
    }

    #[test]
    fn wordpress_installs_its_admin_from_the_credentials_without_the_wizard() {
        let catalog = catalog();
        let app = catalog.app("wordpress").expect("wordpress");
        let spec = spec("wordpress", "trial");
        let plan = app.plan("trial").expect("trial");
        let objects = render(&spec, app, plan, &settings());
        let job = objects.setup.as_ref().expect("a setup job");
        assert_eq!(job.metadata.name.as_deref(), Some(SETUP_JOB));
        assert_instance_labels(&spec, &job.metadata);
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("wordpress:cli-2.12.0-php8.3"));
        // The admin's name and password are the credentials Secret's, which GetCredentials
        // returns; the URL is the instance's.
        assert_eq!(
            secret_ref(env_value(c, "WP_ADMIN_USER")),
            (CREDENTIALS_SECRET, USERNAME_KEY)
        );
        assert_eq!(
            secret_ref(env_value(c, "WP_ADMIN_PASSWORD")),
            (CREDENTIALS_SECRET, PASSWORD_KEY)
        );
        assert_eq!(
            env_value(c, "WP_URL").value.as_deref(),
            Some("https://c1a2b3c4.wordpress.kapal.example")
        );
        // wp-config.php reads the app's database settings from the environment.
        assert_eq!(
            secret_ref(env_value(c, "WORDPRESS_DB_PASSWORD")),
            (CREDENTIALS_SECRET, "db_password")
        );
        let script = c.command.as_ref().expect("command").join(" ");
        assert!(
            script.contains("wp core is-installed || wp core install --url=\"$WP_URL\"")
                && script.contains("--admin_user=\"$WP_ADMIN_USER\"")
                && script.contains("--admin_password=\"$WP_ADMIN_PASSWORD\"")
                && script.contains("--skip-email"),
            "{script}"
        );
        // Next to the app's pod, on its volume.
        assert_eq!(
            c.volume_mounts.as_ref().map(|m| m[0].mount_path.as_str()),
            Some("/var/www/html")
        );
        assert_eq!(
            pod.volumes.as_ref().and_then(|v| v[0]
                .persistent_volume_claim
                .as_ref()
                .map(|p| p.claim_name.as_str())),
            Some("app-data")
        );
        let term = &pod
            .affinity
            .as_ref()
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .expect("pod affinity")[0];
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        assert_eq!(
            term.label_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref()),
            Some(&selector_labels(&spec, "app"))
        );
        // Within the restricted standard (so baseline too), with resources the quota has
        // room for next to the plan.
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(
            (
                sc.run_as_non_root,
                sc.run_as_user,
                sc.allow_privilege_escalation
            ),
            (Some(true), Some(33), Some(false))
        );
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            pod.security_context
                .as_ref()
                .and_then(|s| s.seccomp_profile.as_ref())
                .map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert_eq!(limits(c), ("100m".to_string(), 128 * MIB));
        let hard = objects
            .quota
            .spec
            .as_ref()
            .and_then(|s| s.hard.as_ref())
            .expect("hard");
        assert_eq!(
            hard["requests.cpu"].0,
            format!("{}m", plan.cpu_millis + 100)
        );
        assert_eq!(
            bytes(&hard["limits.memory"]),
            u128::from(plan.memory_mib + 128) * MIB
        );
        assert_eq!(hard["pods"].0, "5");

        // Only while the instance should run; other apps have none.
        let mut stopped = spec.clone();
        stopped.desired = Desired::Stopped;
        assert!(render(&stopped, app, plan, &settings()).setup.is_none());
    }

    #[test]
    fn n8n_and_ghost_set_up_their_owner_from_the_credentials() {
        let catalog = catalog();
        for (id, port, command) in [
            ("n8n", "5678", "/rest/owner/setup"),
            ("ghost", "2368", "/ghost/api/admin/authentication/setup/"),
        ] {
            let app = catalog.app(id).expect("app");
            let objects = render(
                &spec(id, "trial"),
                app,
                app.plan("trial").expect("trial"),
                &settings(),
            );
            let job = objects.setup.as_ref().expect("a setup job");
            let c = &job
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .expect("pod")
                .containers[0];
            // The app's own image (Node 20), as the app's non-root user, no other image.
            let app_image = &app.components[0].image;
            assert_eq!(c.image.as_ref(), Some(app_image), "{id}");
            assert_eq!(
                c.security_context.as_ref().and_then(|s| s.run_as_user),
                Some(1000)
            );
            assert_eq!(
                secret_ref(env_value(c, "OWNER_EMAIL")),
                (CREDENTIALS_SECRET, USERNAME_KEY)
            );
            assert_eq!(
                secret_ref(env_value(c, "OWNER_PASSWORD")),
                (CREDENTIALS_SECRET, PASSWORD_KEY)
            );
            // The app's Service, on the app's port.
            assert_eq!(env_value(c, "SETUP_HOST").value.as_deref(), Some("app"));
            assert_eq!(env_value(c, "SETUP_PORT").value.as_deref(), Some(port));
            let argv = c.command.as_ref().expect("command");
            assert_eq!(argv[..2], ["node".to_string(), "-e".to_string()], "{id}");
            assert!(argv[2].contains(command), "{id}: {}", argv[2]);
            assert!(
                !argv[2].contains("{{"),
                "{id}: a placeholder left: {}",
                argv[2]
            );
        }
    }

    #[test]
    fn stopped_scales_to_zero_and_a_restart_changes_only_the_pod_annotation() {
        let catalog = catalog();
        let app = catalog.app("ghost").expect("ghost");
        let plan = app.plan("trial").expect("trial");
        let mut s = spec("ghost", "trial");
        let running = render(&s, app, plan, &settings());
        s.desired = Desired::Stopped;
        let stopped = render(&s, app, plan, &settings());
        assert!(stopped.workloads.iter().all(|w| w.replicas() == Some(0)));
        assert_eq!(
            stopped.volumes, running.volumes,
            "stopping keeps the volumes"
        );

        s.desired = Desired::Running;
        s.restart_generation = 7;
        let restarted = render(&s, app, plan, &settings());
        for (before, after) in running.workloads.iter().zip(&restarted.workloads) {
            assert_ne!(before, after);
            let ann = after
                .pod_template()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref());
            assert_eq!(
                ann.and_then(|a| a.get(ANNOTATION_RESTART))
                    .map(String::as_str),
                Some("7")
            );
            assert_eq!(
                before.pod_template().map(|t| &t.spec),
                after.pod_template().map(|t| &t.spec),
                "only the annotation changes"
            );
        }
    }

    #[test]
    fn every_pod_leaves_a_failed_node_after_the_configured_toleration() {
        let catalog = catalog();
        let app = catalog.app("ghost").expect("ghost");
        let spec = spec("ghost", "trial");
        let mut settings = settings();
        let extra: Toleration = serde_json::from_value(serde_json::json!(
            { "key": "pool", "operator": "Equal", "value": "a", "effect": "NoSchedule" }
        ))
        .expect("toleration");
        settings.extra_tolerations = vec![extra.clone()];
        let affinity: Affinity = serde_json::from_value(serde_json::json!({ "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{ "weight": 1,
                "preference": { "matchExpressions": [{ "key": "pool", "operator": "In", "values": ["a"] }] } }]
        } }))
        .expect("affinity");
        settings.affinity = Some(affinity.clone());
        let objects = render(&spec, app, app.plan("trial").expect("trial"), &settings);
        assert_eq!(objects.workloads.len(), 2);
        for w in &objects.workloads {
            let pod = w
                .pod_template()
                .and_then(|t| t.spec.as_ref())
                .expect("pod spec");
            let tolerations = pod.tolerations.as_ref().expect("tolerations");
            for key in NODE_FAILURE_TAINTS {
                let t = tolerations
                    .iter()
                    .find(|t| t.key.as_deref() == Some(key))
                    .unwrap_or_else(|| panic!("{} tolerates {key}", w.name()));
                assert_eq!(
                    (
                        t.operator.as_deref(),
                        t.effect.as_deref(),
                        t.toleration_seconds
                    ),
                    (Some("Exists"), Some("NoExecute"), Some(20))
                );
            }
            assert_eq!(tolerations.last(), Some(&extra));
            assert_eq!(pod.affinity.as_ref(), Some(&affinity));
        }
        // Without extras: only the two node-failure tolerations, no affinity.
        let (_, objects) = rendered("n8n", "trial");
        let pod = objects.workloads[0]
            .pod_template()
            .and_then(|t| t.spec.as_ref())
            .expect("pod spec");
        assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(2));
        assert_eq!(pod.affinity, None);
    }

    #[test]
    fn the_image_map_and_node_selector_reach_every_pod_the_instance_runs() {
        let catalog = catalog();
        let app = catalog.app("wordpress").expect("wordpress");
        let spec = spec("wordpress", "trial");
        let mut settings = settings();
        settings.image_map = crate::placement::parse_image_map(
            "mariadb:11.4.7 localhost/kapal/mariadb:10.11.19\n\
             wordpress:6.8.1-php8.3-apache localhost/kapal/wordpress:6.1.9-php8.2-apache\n\
             wordpress:cli-2.12.0-php8.3 localhost/kapal/wp-setup:6.1.9-php8.2\n\
             ghost:5.116.2 localhost/kapal/ghost:5\n",
        )
        .expect("image map");
        settings.node_selector = BTreeMap::from([("kapal.dev/real-node".into(), "true".into())]);
        settings.extra_tolerations = vec![
            crate::placement::parse_toleration("kapal.dev/real-node=true:NoSchedule")
                .expect("toleration"),
        ];
        let objects = render(&spec, app, app.plan("trial").expect("trial"), &settings);
        let mut pods: Vec<(String, &PodSpec)> = objects
            .workloads
            .iter()
            .map(|w| {
                let pod = w.pod_template().and_then(|t| t.spec.as_ref());
                (w.name().to_string(), pod.expect("pod spec"))
            })
            .collect();
        let job = objects.setup.as_ref().expect("setup job");
        let job_pod = job.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        pods.push(("setup".into(), job_pod.expect("job pod")));
        let images: BTreeMap<String, String> = pods
            .iter()
            .map(|(name, pod)| {
                let image = pod.containers[0].image.clone().unwrap_or_default();
                (name.clone(), image)
            })
            .collect();
        assert_eq!(
            images,
            BTreeMap::from([
                (
                    "app".into(),
                    "localhost/kapal/wordpress:6.1.9-php8.2-apache".into()
                ),
                ("db".into(), "localhost/kapal/mariadb:10.11.19".into()),
                (
                    "setup".into(),
                    "localhost/kapal/wp-setup:6.1.9-php8.2".into()
                ),
            ])
        );
        for (name, pod) in &pods {
            assert_eq!(
                pod.node_selector.as_ref(),
                Some(&settings.node_selector),
                "{name}"
            );
            let tolerations = pod.tolerations.as_ref().expect("tolerations");
            assert_eq!(
                tolerations.last(),
                settings.extra_tolerations.last(),
                "{name}"
            );
        }

        // Without them (production): the catalog's images, no node selector.
        let (_, objects) = rendered("wordpress", "trial");
        let pod = objects.workloads[0]
            .pod_template()
            .and_then(|t| t.spec.as_ref())
            .expect("pod spec");
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("wordpress:6.8.1-php8.3-apache")
        );
        assert_eq!(pod.node_selector, None);
    }

    #[test]
    fn templates_render_known_placeholders_and_keep_the_rest() {
        let catalog = catalog();
        let app = catalog.app("ghost").expect("ghost");
        let s = spec("ghost", "trial");
        assert_eq!(
            render_template(
                "{{url}}/x {{instance_id}} {{customer_id}} {{component:db}} {{component:nope}} {{other}} {{open",
                &s,
                app
            ),
            format!(
                "https://c1a2b3c4.ghost.kapal.example/x {} c1a2b3c4 db {{{{component:nope}}}} {{{{other}}}} {{{{open",
                s.instance_id
            )
        );
        assert_eq!(username(&s, app), "owner@c1a2b3c4.ghost.kapal.example");
    }

    #[test]
    fn the_credentials_secret_holds_every_generated_value() {
        let catalog = catalog();
        let app = catalog.app("wordpress").expect("wordpress");
        let s = spec("wordpress", "trial");
        let secret = credentials_secret(&s, app, &settings());
        assert_eq!(secret.metadata.name.as_deref(), Some(CREDENTIALS_SECRET));
        assert_instance_labels(&s, &secret.metadata);
        let data = secret.string_data.as_ref().expect("data");
        assert_eq!(data.keys().cloned().collect::<Vec<_>>(), {
            let mut k = credential_keys(app);
            k.sort();
            k
        });
        assert_eq!(data[USERNAME_KEY], "admin");
        assert_eq!(data[PASSWORD_KEY].len(), PASSWORD_LENGTH);
        // Always a digit, an upper-case and a lower-case letter (n8n's rule for its owner).
        for _ in 0..2000 {
            let p = generate_password();
            assert_eq!(p.len(), PASSWORD_LENGTH);
            assert!(
                p.bytes().any(|b| b.is_ascii_digit())
                    && p.bytes().any(|b| b.is_ascii_uppercase())
                    && p.bytes().any(|b| b.is_ascii_lowercase()),
                "{p}"
            );
        }
        assert_eq!(data["db_password"].len(), 32);
        assert!(
            data[PASSWORD_KEY]
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        );
        let again = credentials_secret(&s, app, &settings());
        assert_ne!(
            again.string_data.as_ref().map(|d| &d[PASSWORD_KEY]),
            Some(&data[PASSWORD_KEY]),
            "random each time"
        );
    }

    // -----------------------------------------------------------------------------------------
    // The tenant boundary, checked as data: a small evaluator of NetworkPolicy semantics (the
    // local cluster stores policies but enforces none) asks, for connections a hostile
    // instance pod might open, whether any policy lets them through.

    mod boundary {
        use std::net::IpAddr;

        use k8s_openapi::api::networking::v1::{
            NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

        use super::*;

        type Labels = BTreeMap<String, String>;

        /// A pod somewhere in the cluster.
        #[derive(Clone)]
        pub struct Pod {
            pub namespace: String,
            pub namespace_labels: Labels,
            pub labels: Labels,
            pub ip: IpAddr,
        }

        impl Pod {
            pub fn new(namespace: &str, labels: &[(&str, &str)], ip: &str) -> Pod {
                Pod {
                    namespace: namespace.to_string(),
                    namespace_labels: Labels::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        namespace.to_string(),
                    )]),
                    labels: labels
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                        .collect(),
                    ip: ip.parse().expect("an IP"),
                }
            }
        }

        /// Where a connection goes: a pod, or an address outside the cluster's pods.
        pub enum To<'a> {
            Pod(&'a Pod),
            Address(IpAddr),
        }

        fn selects(selector: &LabelSelector, labels: &Labels) -> bool {
            let by_label = selector
                .match_labels
                .iter()
                .flatten()
                .all(|(k, v)| labels.get(k) == Some(v));
            let by_expression = selector.match_expressions.iter().flatten().all(|e| {
                let value = labels.get(&e.key);
                let values = e.values.clone().unwrap_or_default();
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    other => panic!("unknown operator {other}"),
                }
            });
            by_label && by_expression
        }

        fn in_block(peer: &NetworkPolicyPeer, ip: IpAddr) -> bool {
            let Some(block) = &peer.ip_block else {
                return false;
            };
            let cidr: Cidr = block.cidr.parse().expect("the block's CIDR");
            let excepted = block.except.iter().flatten().any(|e| {
                let e: Cidr = e.parse().expect("an except CIDR");
                assert!(
                    cidr.covers(&e),
                    "{e} must lie in {cidr} (the API server refuses it)"
                );
                e.contains(ip)
            });
            cidr.contains(ip) && !excepted
        }

        /// Whether `peer` of a policy in `policy_ns` matches the other end. Pods match by
        /// selectors and, as some engines do, by their IP in an ipBlock (the stricter reading
        /// would only make fewer connections pass).
        fn peer_matches(peer: &NetworkPolicyPeer, policy_ns: &str, other: &To<'_>) -> bool {
            match other {
                // An IPv4-mapped address goes out as IPv4 (as the kernel sends it).
                To::Address(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => {
                    let v4 = v6.to_ipv4_mapped().map(std::net::IpAddr::V4);
                    v4.is_some_and(|ip| in_block(peer, ip))
                }
                To::Address(ip) => in_block(peer, *ip),
                To::Pod(pod) => {
                    if peer.ip_block.is_some() {
                        return in_block(peer, pod.ip);
                    }
                    let namespace_ok = match &peer.namespace_selector {
                        Some(sel) => selects(sel, &pod.namespace_labels),
                        None => pod.namespace == policy_ns,
                    };
                    let pod_ok = peer
                        .pod_selector
                        .as_ref()
                        .is_none_or(|sel| selects(sel, &pod.labels));
                    namespace_ok && pod_ok
                }
            }
        }

        fn port_matches(ports: Option<&Vec<NetworkPolicyPort>>, port: u16, protocol: &str) -> bool {
            match ports {
                None => true,
                Some(ports) if ports.is_empty() => true,
                Some(ports) => ports.iter().any(|p| {
                    let proto = p.protocol.as_deref().unwrap_or("TCP");
                    let number = match &p.port {
                        None => true,
                        Some(IntOrString::Int(n)) => *n == i32::from(port),
                        Some(IntOrString::String(_)) => panic!("named ports are not used"),
                    };
                    proto == protocol && number
                }),
            }
        }

        fn applies(policy: &NetworkPolicy, pod: &Pod, direction: &str) -> bool {
            let spec = policy.spec.as_ref().expect("spec");
            policy.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                && spec
                    .pod_selector
                    .as_ref()
                    .is_some_and(|sel| selects(sel, &pod.labels))
                && spec.policy_types.iter().flatten().any(|t| t == direction)
        }

        /// A rule's peers (none: any peer) and ports (none: any port).
        type Rule<'a> = (
            Option<&'a Vec<NetworkPolicyPeer>>,
            Option<&'a Vec<NetworkPolicyPort>>,
        );

        /// Whether the policies that select `subject` in `direction` ("Egress" or "Ingress")
        /// let a connection to or from `peer` on `port`/`protocol` through: allowed when no
        /// policy selects it that way, or when a rule of one that does matches.
        fn allows(
            policies: &[NetworkPolicy],
            direction: &str,
            subject: &Pod,
            peer: &To<'_>,
            port: u16,
            protocol: &str,
        ) -> bool {
            let applying: Vec<_> = policies
                .iter()
                .filter(|p| applies(p, subject, direction))
                .collect();
            applying.is_empty()
                || applying.iter().any(|p| {
                    let ns = p.metadata.namespace.as_deref().unwrap_or_default();
                    let spec = p.spec.as_ref();
                    let rules: Vec<Rule<'_>> = if direction == "Egress" {
                        spec.and_then(|s| s.egress.as_ref())
                            .iter()
                            .flat_map(|r| r.iter())
                            .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                            .collect()
                    } else {
                        spec.and_then(|s| s.ingress.as_ref())
                            .iter()
                            .flat_map(|r| r.iter())
                            .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                            .collect()
                    };
                    rules.into_iter().any(|(peers, ports)| {
                        let peer_ok = match peers {
                            None => true,
                            Some(peers) if peers.is_empty() => true,
                            Some(peers) => peers.iter().any(|p| peer_matches(p, ns, peer)),
                        };
                        peer_ok && port_matches(ports, port, protocol)
                    })
                })
        }

        /// Whether `from` may open a connection to `to` on `port`/`protocol`, as far as the
        /// egress policies of `from`'s namespace go.
        pub fn egress(
            policies: &[NetworkPolicy],
            from: &Pod,
            to: &To<'_>,
            port: u16,
            protocol: &str,
        ) -> bool {
            allows(policies, "Egress", from, to, port, protocol)
        }

        /// Whether `to` accepts a connection from `from`, as far as the ingress policies of
        /// `to`'s namespace go.
        pub fn ingress(policies: &[NetworkPolicy], from: &Pod, to: &Pod, port: u16) -> bool {
            allows(policies, "Ingress", to, &To::Pod(from), port, "TCP")
        }

        /// Whether `to` accepts a connection from `from`, a pod or an address that is no pod's.
        pub fn ingress_from(
            policies: &[NetworkPolicy],
            from: &To<'_>,
            to: &Pod,
            port: u16,
        ) -> bool {
            allows(policies, "Ingress", to, from, port, "TCP")
        }
    }

    /// The pods of an instance as the cluster would label them, with made-up pod IPs.
    fn instance_pods(spec: &Spec, app: &App, objects: &Objects) -> Vec<(String, boundary::Pod)> {
        app.components
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut namespace_labels = objects
                    .namespace
                    .metadata
                    .labels
                    .clone()
                    .unwrap_or_default();
                namespace_labels
                    .insert("kubernetes.io/metadata.name".into(), spec.namespace.clone());
                let pod = boundary::Pod {
                    namespace: spec.namespace.clone(),
                    namespace_labels,
                    labels: component_labels(spec, &c.name),
                    ip: format!("10.42.7.{}", i + 10).parse().expect("IP"),
                };
                (c.name.clone(), pod)
            })
            .collect()
    }

    #[test]
    fn a_hostile_instance_pod_reaches_the_internet_and_nothing_else() {
        use boundary::{Pod, To, egress, ingress};
        let ip = |s: &str| -> std::net::IpAddr { s.parse().expect("IP") };
        let catalog = catalog();
        let dns = Pod::new("kube-system", &[("k8s-app", "kube-dns")], "10.42.0.5");
        let traefik = Pod::new(
            "kube-system",
            &[("app.kubernetes.io/name", "traefik")],
            "10.42.0.9",
        );
        let kapal = Pod::new(
            "kapal",
            &[("app.kubernetes.io/name", "kapal")],
            "10.42.0.20",
        );
        for app in catalog.apps() {
            let plan = app.plans.first().expect("a plan");
            let spec = spec(&app.id, &plan.id);
            let objects = render(&spec, app, plan, &settings());
            let policies = &objects.network_policies;
            // Another customer's instance of the same app, with its own policies.
            let mut other = spec.clone();
            other.instance_id = Uuid::new_v4();
            other.customer_id = "d5e6f7a8".into();
            other.namespace = format!("kapal-d5e6f7a8-{}", app.id);
            let other_objects = render(&other, app, plan, &settings());
            let mut other_pods = instance_pods(&other, app, &other_objects);
            for (_, pod) in &mut other_pods {
                pod.ip = ip("10.42.9.33");
            }
            let pods = instance_pods(&spec, app, &objects);
            for (name, pod) in &pods {
                let what = format!("{} {name}", app.id);
                for denied in [
                    "169.254.169.254", // cloud metadata
                    "10.43.0.1",       // the API server's Service
                    "127.0.0.1",       // loopback (the local API server listens there)
                    "10.0.0.5",        // a node (kubelet, node ports, API server) on 10/8
                    "10.1.2.3",
                    "172.16.0.1",
                    "172.31.255.254",
                    "192.168.0.1",
                    "192.168.1.10",
                    "100.64.0.1",  // CGNAT
                    "10.42.9.33",  // another instance's pod, by IP
                    "10.43.12.34", // any Service
                    "fd00::1",
                    "fe80::1",
                    "::1",
                    "::ffff:10.0.0.1",
                ] {
                    for port in [80, 443, 5432, 6443, 10250] {
                        assert!(
                            !egress(policies, pod, &To::Address(ip(denied)), port, "TCP"),
                            "{what}: {denied}:{port} must be denied"
                        );
                    }
                }
                for (_, victim) in &other_pods {
                    assert!(
                        !egress(policies, pod, &To::Pod(victim), 80, "TCP"),
                        "{what}: another customer's pod"
                    );
                    assert!(
                        !ingress(&other_objects.network_policies, pod, victim, 80),
                        "{what}: another customer's pod lets it in"
                    );
                }
                assert!(
                    !egress(policies, pod, &To::Pod(&kapal), 8080, "TCP"),
                    "{what}: Kapal's own pods"
                );
                assert!(
                    !egress(policies, pod, &To::Pod(&traefik), 9000, "TCP"),
                    "{what}: Traefik's admin port"
                );
                assert!(
                    !egress(policies, pod, &To::Pod(&dns), 8080, "TCP"),
                    "{what}: DNS pods on another port"
                );
                for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
                    assert!(
                        egress(policies, pod, &To::Address(ip(public)), 443, "TCP"),
                        "{what}: {public} is allowed"
                    );
                }
                assert!(
                    egress(policies, pod, &To::Pod(&dns), 53, "UDP"),
                    "{what}: cluster DNS over UDP"
                );
                assert!(
                    egress(policies, pod, &To::Pod(&dns), 53, "TCP"),
                    "{what}: cluster DNS over TCP"
                );
                // Its own components (the app and its database), both ways.
                for (peer_name, peer) in &pods {
                    assert!(
                        egress(policies, pod, &To::Pod(peer), 3306, "TCP"),
                        "{what} -> {peer_name}"
                    );
                    assert!(
                        ingress(policies, pod, peer, 3306),
                        "{peer_name} accepts {what}"
                    );
                }
                // Only the ingress controller comes in from outside.
                assert!(
                    ingress(policies, &traefik, pod, 80),
                    "{what}: Traefik reaches it"
                );
                assert!(
                    !ingress(policies, &kapal, pod, 80),
                    "{what}: nothing else from outside"
                );
            }
        }
    }

    #[test]
    fn an_ingress_controller_that_is_no_pod_is_let_in_by_its_address_only() {
        use boundary::{To, ingress_from};
        let catalog = catalog();
        let app = catalog.app("wordpress").expect("wordpress");
        let plan = app.plan("trial").expect("trial");
        let spec = spec("wordpress", "trial");
        let node_1 = To::Address("10.213.0.11".parse().expect("IP"));
        let node_2 = To::Address("10.213.0.12".parse().expect("IP"));
        // K3s: Traefik is a pod; a node's address is nobody the instance lets in.
        let objects = render(&spec, app, plan, &settings());
        let pods = instance_pods(&spec, app, &objects);
        for (_, pod) in &pods {
            assert!(!ingress_from(&objects.network_policies, &node_1, pod, 80));
        }
        // The local cluster: Traefik is a process on node 1, told with ingress_sources.
        let mut settings = settings();
        settings.ingress_sources = vec![cidr("10.213.0.11/32")];
        let objects = render(&spec, app, plan, &settings);
        let pods = instance_pods(&spec, app, &objects);
        for (_, pod) in &pods {
            assert!(ingress_from(&objects.network_policies, &node_1, pod, 80));
            assert!(
                !ingress_from(&objects.network_policies, &node_2, pod, 80),
                "only the address named"
            );
        }
    }

    #[test]
    fn a_cluster_dns_that_is_no_pod_is_reached_by_its_address_on_port_53_only() {
        use boundary::{To, egress};
        let catalog = catalog();
        let app = catalog.app("wordpress").expect("wordpress");
        let plan = app.plan("trial").expect("trial");
        let spec = spec("wordpress", "trial");
        let node_1 = To::Address("10.213.0.11".parse().expect("IP"));
        let objects = render(&spec, app, plan, &settings());
        for (_, pod) in &instance_pods(&spec, app, &objects) {
            assert!(!egress(&objects.network_policies, pod, &node_1, 53, "UDP"));
        }
        let mut settings = settings();
        settings.dns_addresses = vec![cidr("10.213.0.11/32")];
        let objects = render(&spec, app, plan, &settings);
        for (_, pod) in &instance_pods(&spec, app, &objects) {
            assert!(egress(&objects.network_policies, pod, &node_1, 53, "UDP"));
            assert!(egress(&objects.network_policies, pod, &node_1, 53, "TCP"));
            assert!(
                !egress(&objects.network_policies, pod, &node_1, 10250, "TCP"),
                "DNS only"
            );
        }
    }

    #[test]
    fn the_cluster_networks_and_extra_denials_are_configurable() {
        use boundary::{Pod, To, egress};
        let catalog = catalog();
        let app = catalog.app("n8n").expect("n8n");
        let plan = app.plan("trial").expect("trial");
        let spec = spec("n8n", "trial");
        let mut settings = settings();
        // A cluster on public-looking networks, and nodes with a public address.
        settings.cluster_cidrs = vec![cidr("198.51.100.0/24"), cidr("2001:db8:42::/56")];
        settings.egress_deny = vec![cidr("203.0.113.7/32")];
        let objects = render(&spec, app, plan, &settings);
        let pod = &instance_pods(&spec, app, &objects)[0].1;
        let reaches = |s: &str| {
            egress(
                &objects.network_policies,
                pod,
                &To::Address(s.parse().expect("IP")),
                443,
                "TCP",
            )
        };
        assert!(!reaches("198.51.100.7"), "pod network");
        assert!(!reaches("2001:db8:42::9"), "IPv6 service network");
        assert!(!reaches("203.0.113.7"), "a node's public address");
        assert!(reaches("203.0.113.8"), "its neighbour is the internet");
        assert!(
            !reaches("10.43.0.1") && !reaches("169.254.169.254"),
            "always denied"
        );
        let dns = Pod::new("kube-system", &[("k8s-app", "kube-dns")], "198.51.100.2");
        assert!(egress(
            &objects.network_policies,
            pod,
            &To::Pod(&dns),
            53,
            "UDP"
        ));
    }

    #[test]
    fn an_app_reaches_a_private_network_only_where_its_catalog_entry_says() {
        use boundary::{To, egress};
        let mut catalog = Catalog::default();
        let yaml = r#"
id: licensed
name: Licensed
description: needs its licence server
version: "1"
plans: [{id: basic, name: Basic, monthly_price_idr: 0, trial_days: 7, cpu_millis: 100, memory_mib: 128, storage_gib: 1}]
components:
  - {name: app, kind: Deployment, image: "demo:1.0", port: 80, public: true, resource_share: 100}
credentials: {username: admin}
egress:
  - {cidr: 10.9.8.7/32, ports: [{port: 8443}], reason: licence server}
"#;
        catalog
            .add_yaml(std::path::Path::new("licensed.yaml"), yaml)
            .expect("loads");
        let app = catalog.app("licensed").expect("app");
        let plan = app.plan("basic").expect("plan");
        let spec = spec("n8n", "trial");
        let objects = render(&spec, app, plan, &settings());
        let pod = &instance_pods(&spec, app, &objects)[0].1;
        let reaches = |s: &str, port: u16| {
            egress(
                &objects.network_policies,
                pod,
                &To::Address(s.parse().expect("IP")),
                port,
                "TCP",
            )
        };
        assert!(reaches("10.9.8.7", 8443), "declared");
        assert!(!reaches("10.9.8.7", 22), "another port");
        assert!(!reaches("10.9.8.8", 8443), "another address");
        // n8n declares nothing: the policy is not rendered at all.
        let (_, n8n) = rendered("n8n", "trial");
        assert!(
            n8n.network_policies
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(ALLOW_APP_EGRESS_POLICY))
        );
    }

    #[test]
    fn every_container_and_the_namespace_bound_the_nodes_scratch_disk() {
        let catalog = catalog();
        for app in catalog.apps() {
            for plan in &app.plans {
                let (_, objects) = rendered(&app.id, &plan.id);
                let mut total = 0u128;
                for w in &objects.workloads {
                    let c = container(w);
                    let res = c.resources.as_ref().expect("resources");
                    let limit = &res.limits.as_ref().expect("limits")["ephemeral-storage"];
                    assert_eq!(
                        Some(limit),
                        res.requests
                            .as_ref()
                            .expect("requests")
                            .get("ephemeral-storage")
                    );
                    total += bytes(limit);
                }
                let plan_bytes = u128::from(plan.ephemeral_storage_mib) << 20;
                assert!(
                    total <= plan_bytes && total + (8 << 20) >= plan_bytes,
                    "{} {}: {total} of {plan_bytes}",
                    app.id,
                    plan.id
                );
                let hard = objects
                    .quota
                    .spec
                    .as_ref()
                    .and_then(|s| s.hard.clone())
                    .expect("hard");
                let setup = if app.setup.is_some() {
                    u128::from(SETUP_EPHEMERAL_MIB) << 20
                } else {
                    0
                };
                assert_eq!(bytes(&hard["limits.ephemeral-storage"]), plan_bytes + setup);
                assert_eq!(
                    bytes(&hard["requests.ephemeral-storage"]),
                    plan_bytes + setup
                );
                let container_limits = &objects.limits.spec.as_ref().expect("spec").limits[0];
                assert!(
                    container_limits
                        .max
                        .as_ref()
                        .expect("max")
                        .contains_key("ephemeral-storage")
                );
                assert!(
                    container_limits
                        .default
                        .as_ref()
                        .expect("default")
                        .contains_key("ephemeral-storage")
                );
                if let Some(job) = &objects.setup {
                    let c = &job
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.spec.as_ref())
                        .expect("pod")
                        .containers[0];
                    let limits = c
                        .resources
                        .as_ref()
                        .and_then(|r| r.limits.as_ref())
                        .expect("limits");
                    assert_eq!(
                        bytes(&limits["ephemeral-storage"]),
                        u128::from(SETUP_EPHEMERAL_MIB) << 20
                    );
                }
            }
        }
    }
}
