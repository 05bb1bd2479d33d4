//! The app catalog: one YAML file per app in `catalog/`, loaded and validated at start-up.
//!
//! A file describes the app for customers (name, description, plans and prices in IDR) and for
//! the provisioner (its components: images, ports, volumes, environment, generated secrets).
//! Adding an app is adding a file; an invalid file stops start-up with the file, the field and
//! the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::wire::is_dns_label;

/// Every app, by id.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    apps: BTreeMap<String, App>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// Lower-case id used in hostnames (`<customer>.<id>.<domain>`).
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub documentation_url: String,
    /// The deployed upstream version (tag of the main component's image).
    pub version: String,
    pub plans: Vec<Plan>,
    pub components: Vec<Component>,
    /// Secrets generated once per instance and kept in its Kubernetes Secret.
    #[serde(default)]
    pub secrets: Vec<GeneratedSecret>,
    /// How the customer logs in.
    pub credentials: CredentialTemplate,
    /// The Pod Security Standard the instance's namespace enforces. `restricted` needs every
    /// component to run as a fixed non-root user (`run_as_user`); default `baseline`, for
    /// images that start as root (e.g. MySQL, MariaDB, WordPress' Apache).
    #[serde(default)]
    pub pod_security: PodSecurity,
    /// A one-off job run next to a component once it exists (e.g. WordPress' admin user, so the
    /// customer never sees a setup wizard). It must be idempotent: it may run again.
    #[serde(default)]
    pub setup: Option<SetupJob>,
    /// Connections the app needs beyond what every instance may open (its own components, the
    /// cluster DNS and the public internet): e.g. a licence server inside a private network.
    /// Nothing else opens an instance's egress; each rule needs its reason.
    #[serde(default)]
    pub egress: Vec<EgressRule>,
}

/// Extra egress of an app (see [`App::egress`]): TCP or UDP to one network.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// The network, in CIDR notation (`203.0.113.10/32`).
    pub cidr: String,
    /// Ports; at least one (an app never gets a whole network).
    pub ports: Vec<EgressPort>,
    /// Why the app needs it, for whoever reviews the catalog.
    pub reason: String,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EgressPort {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// As Kubernetes writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// A Kubernetes Job of an app (see [`App::setup`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupJob {
    /// The component whose environment and volume the job shares; its pod runs on the same node.
    pub component: String,
    /// Image with a pinned tag.
    pub image: String,
    /// The non-root user id it runs as.
    pub run_as_user: i64,
    /// Command and arguments; may use the placeholders of [`Component::env`].
    pub command: Vec<String>,
    /// Further environment (after the component's), as in [`Component::env`].
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// CPU and memory of its container, on top of the plan's (the namespace quota has room
    /// for it).
    pub cpu_millis: u32,
    pub memory_mib: u32,
}

/// A Pod Security Standard level (`pod-security.kubernetes.io/enforce`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurity {
    #[default]
    Baseline,
    Restricted,
}

impl PodSecurity {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurity::Baseline => "baseline",
            PodSecurity::Restricted => "restricted",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub id: String,
    pub name: String,
    /// Monthly price in whole rupiah.
    pub monthly_price_idr: i64,
    /// Non-zero for a free trial of this many days.
    #[serde(default)]
    pub trial_days: u32,
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub storage_gib: u32,
    /// Scratch disk of the node (container layers' writes, logs, emptyDirs) the instance may
    /// use, shared by its components like CPU and memory; past it the kubelet evicts the pod
    /// rather than let one tenant fill a node's disk. Default 1 GiB.
    #[serde(default = "default_ephemeral_storage_mib")]
    pub ephemeral_storage_mib: u32,
}

fn default_ephemeral_storage_mib() -> u32 {
    1024
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Name within the app (e.g. "app", "db"); also the name of its Kubernetes objects.
    pub name: String,
    pub kind: WorkloadKind,
    /// Image with a pinned tag.
    pub image: String,
    /// The container port.
    pub port: u16,
    /// The component the ingress routes the hostname to (exactly one per app).
    #[serde(default)]
    pub public: bool,
    /// Share of the plan's CPU and memory, in percent (all components add up to 100).
    pub resource_share: u32,
    /// A persistent volume mounted at `mount_path`, with this share of the plan's storage in percent.
    #[serde(default)]
    pub volume: Option<Volume>,
    /// Environment; values may use `{{hostname}}`, `{{url}}`, `{{instance_id}}`,
    /// `{{component:<name>}}` (the in-cluster host of a component) or come from a secret.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// User id the container runs as, when the image needs a specific one.
    #[serde(default)]
    pub run_as_user: Option<i64>,
    /// HTTP path of the readiness probe; a TCP check on `port` when absent.
    #[serde(default)]
    pub readiness_path: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub mount_path: String,
    pub storage_share: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    /// Name of a generated secret (see App.secrets) or `username` / `password`.
    #[serde(default)]
    pub secret: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratedSecret {
    pub name: String,
    /// Length in characters of the generated value (alphanumeric).
    #[serde(default = "default_secret_length")]
    pub length: usize,
}

fn default_secret_length() -> usize {
    32
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialTemplate {
    /// The admin user name; may use `{{hostname}}` and `{{customer_id}}`.
    pub username: String,
    /// Path of the login page under the instance URL.
    #[serde(default)]
    pub login_path: String,
}

/// A catalog file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct CatalogError {
    pub file: PathBuf,
    pub field: String,
    pub reason: String,
}

fn err(file: &Path, field: impl Into<String>, reason: impl Into<String>) -> CatalogError {
    CatalogError {
        file: file.to_path_buf(),
        field: field.into(),
        reason: reason.into(),
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl App {
    fn validate(&self, file: &Path) -> Result<(), CatalogError> {
        if !is_dns_label(&self.id, 20) {
            return Err(err(
                file,
                "id",
                "must be 1-20 characters of a-z, 0-9 and '-'",
            ));
        }
        if self.name.trim().is_empty() {
            return Err(err(file, "name", "must not be empty"));
        }
        if self.plans.is_empty() {
            return Err(err(file, "plans", "at least one plan is needed"));
        }
        let mut plan_ids = BTreeSet::new();
        for (i, plan) in self.plans.iter().enumerate() {
            let f = |name: &str| format!("plans[{i}].{name}");
            if !is_dns_label(&plan.id, 32) {
                return Err(err(
                    file,
                    f("id"),
                    "must be 1-32 characters of a-z, 0-9 and '-'",
                ));
            }
            if !plan_ids.insert(plan.id.as_str()) {
                return Err(err(
                    file,
                    f("id"),
                    format!("plan '{}' is defined twice", plan.id),
                ));
            }
            if plan.monthly_price_idr < 0 {
                return Err(err(file, f("monthly_price_idr"), "must not be negative"));
            }
            if plan.trial_days > 0 && plan.monthly_price_idr != 0 {
                return Err(err(file, f("monthly_price_idr"), "a trial plan costs Rp 0"));
            }
            if plan.ephemeral_storage_mib < 64 {
                return Err(err(
                    file,
                    f("ephemeral_storage_mib"),
                    "a plan needs at least 64 MiB of scratch disk",
                ));
            }
            if plan.cpu_millis < 10 || plan.memory_mib < 16 || plan.storage_gib < 1 {
                return Err(err(
                    file,
                    f("cpu_millis"),
                    "a plan needs at least 10 millicores, 16 MiB of memory and 1 GiB of storage",
                ));
            }
        }
        if self.components.is_empty() {
            return Err(err(file, "components", "at least one component is needed"));
        }
        let secret_names: BTreeSet<&str> = self.secrets.iter().map(|s| s.name.as_str()).collect();
        for (i, s) in self.secrets.iter().enumerate() {
            if !is_env_name(&s.name) || s.name == "username" || s.name == "password" {
                return Err(err(
                    file,
                    format!("secrets[{i}].name"),
                    "must be a name of letters, digits and '_', other than username and password",
                ));
            }
            if !(8..=128).contains(&s.length) {
                return Err(err(
                    file,
                    format!("secrets[{i}].length"),
                    "must be between 8 and 128",
                ));
            }
        }
        let names: BTreeSet<&str> = self.components.iter().map(|c| c.name.as_str()).collect();
        if names.len() != self.components.len() {
            return Err(err(file, "components", "component names must be unique"));
        }
        let mut share = 0;
        let mut storage = 0;
        for (i, c) in self.components.iter().enumerate() {
            let f = |name: &str| format!("components[{i}].{name}");
            if !is_dns_label(&c.name, 20) {
                return Err(err(
                    file,
                    f("name"),
                    "must be 1-20 characters of a-z, 0-9 and '-'",
                ));
            }
            let Some((_, tag)) = c.image.rsplit_once(':') else {
                return Err(err(file, f("image"), "must pin a version tag (image:tag)"));
            };
            if tag.is_empty() || tag == "latest" || tag.contains('/') {
                return Err(err(
                    file,
                    f("image"),
                    "must pin a version tag, not 'latest'",
                ));
            }
            if c.port == 0 {
                return Err(err(file, f("port"), "must be a port number"));
            }
            if c.resource_share == 0 || c.resource_share > 100 {
                return Err(err(file, f("resource_share"), "must be 1-100 (percent)"));
            }
            share += c.resource_share;
            if let Some(v) = &c.volume {
                if !v.mount_path.starts_with('/') {
                    return Err(err(
                        file,
                        f("volume.mount_path"),
                        "must be an absolute path",
                    ));
                }
                if v.storage_share == 0 || v.storage_share > 100 {
                    return Err(err(
                        file,
                        f("volume.storage_share"),
                        "must be 1-100 (percent)",
                    ));
                }
                storage += v.storage_share;
            }
            for (j, e) in c.env.iter().enumerate() {
                let field = format!("components[{i}].env[{j}]");
                if !is_env_name(&e.name) {
                    return Err(err(
                        file,
                        format!("{field}.name"),
                        "must be letters, digits and '_'",
                    ));
                }
                match (&e.value, &e.secret) {
                    (Some(v), None) => {
                        for reference in v.split("{{component:").skip(1) {
                            let target = reference.split("}}").next().unwrap_or_default();
                            if !names.contains(target) {
                                return Err(err(
                                    file,
                                    format!("{field}.value"),
                                    format!("refers to unknown component '{target}'"),
                                ));
                            }
                        }
                    }
                    (None, Some(s)) => {
                        if s != "username" && s != "password" && !secret_names.contains(s.as_str())
                        {
                            return Err(err(
                                file,
                                format!("{field}.secret"),
                                format!("'{s}' is not in secrets (nor username/password)"),
                            ));
                        }
                    }
                    _ => return Err(err(file, field, "needs exactly one of value or secret")),
                }
            }
        }
        if share != 100 {
            return Err(err(
                file,
                "components",
                format!("resource_share adds up to {share}%, not 100%"),
            ));
        }
        if storage > 100 {
            return Err(err(
                file,
                "components",
                format!("volume storage_share adds up to {storage}%, over 100%"),
            ));
        }
        let public = self.components.iter().filter(|c| c.public).count();
        if public != 1 {
            return Err(err(
                file,
                "components",
                format!("exactly one component must be public (found {public})"),
            ));
        }
        let root = self
            .components
            .iter()
            .position(|c| c.run_as_user.is_none_or(|u| u <= 0));
        if let (PodSecurity::Restricted, Some(i)) = (self.pod_security, root) {
            return Err(err(
                file,
                format!("components[{i}].run_as_user"),
                "pod_security restricted needs every component to run as a non-root user id",
            ));
        }
        if let Some(setup) = &self.setup {
            if !names.contains(setup.component.as_str()) {
                return Err(err(
                    file,
                    "setup.component",
                    format!("'{}' is not a component", setup.component),
                ));
            }
            match setup.image.rsplit_once(':') {
                Some((_, tag)) if !tag.is_empty() && tag != "latest" && !tag.contains('/') => {}
                _ => {
                    return Err(err(
                        file,
                        "setup.image",
                        "must pin a version tag, not 'latest'",
                    ));
                }
            }
            if setup.run_as_user <= 0 {
                return Err(err(file, "setup.run_as_user", "must be a non-root user id"));
            }
            if setup.command.is_empty() {
                return Err(err(file, "setup.command", "must not be empty"));
            }
            if setup.cpu_millis == 0 || setup.memory_mib == 0 {
                return Err(err(
                    file,
                    "setup.cpu_millis",
                    "the job needs some CPU and memory",
                ));
            }
            for (j, e) in setup.env.iter().enumerate() {
                let field = format!("setup.env[{j}]");
                if !is_env_name(&e.name) {
                    return Err(err(
                        file,
                        format!("{field}.name"),
                        "must be letters, digits and '_'",
                    ));
                }
                match (&e.value, &e.secret) {
                    (Some(_), None) => {}
                    (None, Some(s)) => {
                        if s != "username" && s != "password" && !secret_names.contains(s.as_str())
                        {
                            return Err(err(
                                file,
                                format!("{field}.secret"),
                                format!("'{s}' is not in secrets (nor username/password)"),
                            ));
                        }
                    }
                    _ => return Err(err(file, field, "needs exactly one of value or secret")),
                }
            }
        }
        for (i, rule) in self.egress.iter().enumerate() {
            let f = |name: &str| format!("egress[{i}].{name}");
            if let Err(e) = rule.cidr.parse::<crate::cidr::Cidr>() {
                return Err(err(file, f("cidr"), e.to_string()));
            }
            if rule.ports.is_empty() || rule.ports.iter().any(|p| p.port == 0) {
                return Err(err(
                    file,
                    f("ports"),
                    "list the ports the app needs (1-65535); a whole network is never opened",
                ));
            }
            if rule.reason.trim().is_empty() {
                return Err(err(file, f("reason"), "say why the app needs it"));
            }
        }
        if self.credentials.username.trim().is_empty() {
            return Err(err(file, "credentials.username", "must not be empty"));
        }
        Ok(())
    }

    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.id == id)
    }

    /// The component the ingress routes to.
    pub fn public_component(&self) -> Option<&Component> {
        self.components.iter().find(|c| c.public)
    }
}

impl Catalog {
    /// Loads every `*.yaml` file of `dir`. Fails on the first invalid file, naming it.
    pub fn load(dir: &Path) -> anyhow::Result<Catalog> {
        use anyhow::Context as _;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| {
                format!(
                    "reading the catalog directory {} (set KAPAL_CATALOG_DIR)",
                    dir.display()
                )
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut catalog = Catalog::default();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            catalog.add_yaml(&file, &text)?;
        }
        anyhow::ensure!(
            !catalog.apps.is_empty(),
            "the catalog directory {} has no app (*.yaml) files",
            dir.display()
        );
        Ok(catalog)
    }

    /// Adds one app from YAML text; `file` names it in errors.
    pub fn add_yaml(&mut self, file: &Path, text: &str) -> Result<(), CatalogError> {
        let app: App = serde_yaml::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("line {}", l.line()))
                .unwrap_or_else(|| "file".into());
            err(file, at, e.to_string())
        })?;
        app.validate(file)?;
        if self.apps.contains_key(&app.id) {
            return Err(err(
                file,
                "id",
                format!("app '{}' is defined by another file too", app.id),
            ));
        }
        self.apps.insert(app.id.clone(), app);
        Ok(())
    }

    pub fn app(&self, id: &str) -> Option<&App> {
        self.apps.get(id)
    }

    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.apps.values()
    }
}

/// The catalog shipped in the repository, for tests.
pub fn repo_catalog_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_is_valid() {
        let catalog = Catalog::load(&repo_catalog_dir()).expect("catalog loads");
        for id in ["n8n", "ghost", "wordpress"] {
            let app = catalog.app(id).unwrap_or_else(|| panic!("{id} in catalog"));
            assert!(
                app.plans.iter().any(|p| p.trial_days > 0),
                "{id} has a trial plan"
            );
        }
    }

    #[test]
    fn an_invalid_file_is_reported_with_file_field_and_reason() {
        let mut catalog = Catalog::default();
        let yaml = r#"
id: demo
name: Demo
description: d
version: "1"
plans: [{id: basic, name: Basic, monthly_price_idr: 1000, cpu_millis: 100, memory_mib: 128, storage_gib: 1}]
components:
  - {name: app, kind: Deployment, image: "demo:latest", port: 80, public: true, resource_share: 100}
credentials: {username: admin}
"#;
        let e = catalog
            .add_yaml(Path::new("demo.yaml"), yaml)
            .expect_err("latest is rejected");
        assert_eq!(e.field, "components[0].image");
        assert!(
            e.to_string().starts_with("demo.yaml: components[0].image:"),
            "{e}"
        );
        let e = catalog
            .add_yaml(Path::new("bad.yaml"), "id: Bad App\n")
            .expect_err("missing fields");
        assert!(e.to_string().starts_with("bad.yaml:"), "{e}");
    }

    const EGRESS_APP: &str = r#"
id: demo
name: Demo
description: d
version: "1"
plans: [{id: basic, name: Basic, monthly_price_idr: 1000, cpu_millis: 100, memory_mib: 128, storage_gib: 1}]
components:
  - {name: app, kind: Deployment, image: "demo:1.0", port: 80, public: true, resource_share: 100}
credentials: {username: admin}
"#;

    #[test]
    fn extra_egress_names_a_network_ports_and_a_reason() {
        let ok = format!(
            "{EGRESS_APP}egress:\n  - {{cidr: 10.9.8.7/32, ports: [{{port: 8443}}, {{port: 53, protocol: UDP}}], reason: licence server}}\n"
        );
        let mut catalog = Catalog::default();
        catalog
            .add_yaml(Path::new("demo.yaml"), &ok)
            .expect("a declared egress rule loads");
        let app = catalog.app("demo").expect("demo");
        assert_eq!(app.egress[0].ports[1].protocol, Protocol::Udp);
        assert_eq!(
            app.plans[0].ephemeral_storage_mib, 1024,
            "the default scratch disk"
        );

        for (rule, field, reason) in [
            (
                "{cidr: 10.9.8.7, ports: [{port: 1}], reason: r}",
                "egress[0].cidr",
                "CIDR notation",
            ),
            (
                "{cidr: 10.9.8.7/24, ports: [{port: 1}], reason: r}",
                "egress[0].cidr",
                "host bits",
            ),
            (
                "{cidr: 10.9.8.0/24, ports: [], reason: r}",
                "egress[0].ports",
                "never opened",
            ),
            (
                "{cidr: 10.9.8.0/24, ports: [{port: 0}], reason: r}",
                "egress[0].ports",
                "1-65535",
            ),
            (
                "{cidr: 10.9.8.0/24, ports: [{port: 1}], reason: ' '}",
                "egress[0].reason",
                "why",
            ),
        ] {
            let yaml = format!("{EGRESS_APP}egress:\n  - {rule}\n");
            let e = Catalog::default()
                .add_yaml(Path::new("demo.yaml"), &yaml)
                .expect_err(rule);
            assert_eq!(e.field, field, "{rule}");
            assert!(e.reason.contains(reason), "{rule}: {e}");
        }
        let tiny = EGRESS_APP.replace(
            "storage_gib: 1}",
            "storage_gib: 1, ephemeral_storage_mib: 8}",
        );
        let e = Catalog::default()
            .add_yaml(Path::new("demo.yaml"), &tiny)
            .expect_err("8 MiB of scratch disk");
        assert_eq!(e.field, "plans[0].ephemeral_storage_mib");
    }
}
