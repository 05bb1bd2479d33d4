//! Harness for tests against Kapal's local Kubernetes control plane (`scripts/local-cluster`,
//! documented in `deploy/local-cluster/README.md`).
//!
//! - [`cluster()`] gives the running cluster, starting it once per test process if needed.
//! - [`TestNamespace`] gives each test its own namespace, so tests run in parallel; it is deleted
//!   on drop (or with [`TestNamespace::cleanup`]).
//! - [`wait_for`] polls a condition with a deadline and a clear message when it runs out.
//! - [`TempNode`] registers an extra kwok node that only the creating test's pods tolerate, and can
//!   be stopped ([`TempNode::stop`]) to exercise node failure without disturbing other tests.
//!
//! Every test builds its own [`kube::Client`] with [`Cluster::client`]: a client holds tasks on the
//! tokio runtime it was built on, and each `#[tokio::test]` has its own runtime, so a client must
//! never be shared between tests through a static.
//!
//! Environment: `KAPAL_KUBECONFIG` points the harness at an already-running cluster (nothing is
//! started then); otherwise it runs `scripts/local-cluster up` (idempotent: a no-op taking about a
//! second when the cluster is already up), which honours `KAPAL_CLUSTER_DIR`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;
use tokio::sync::OnceCell;

/// Label put on every namespace the harness creates.
pub const TEST_LABEL: (&str, &str) = ("kapal.dev/test", "true");
/// kwok acts as the kubelet of exactly the nodes carrying this label with value [`KWOK_MANAGED`].
/// Changing the value stops the node (see `scripts/local-cluster node-down`).
pub const KWOK_LABEL: &str = "kapal.dev/kwok";
/// Value of [`KWOK_LABEL`] on a running node.
pub const KWOK_MANAGED: &str = "managed";
/// Value of [`KWOK_LABEL`] on a stopped node.
pub const KWOK_STOPPED: &str = "stopped";
/// Names of the three nodes `scripts/local-cluster up` registers (defaults).
pub const NODES: [&str; 3] = ["kapal-node-1", "kapal-node-2", "kapal-node-3"];
/// Name of the default StorageClass.
pub const STORAGE_CLASS: &str = "local-path";
/// Name of the IngressClass.
pub const INGRESS_CLASS: &str = "traefik";

/// Test namespaces older than this are leftovers of killed test runs and are deleted when a
/// test process first connects.
const STALE_NAMESPACE_AGE: Duration = Duration::from_secs(2 * 3600);

/// The local cluster, shared by all tests of a process.
pub struct Cluster {
    kubeconfig: PathBuf,
    config: Config,
}

impl Cluster {
    /// Path of the admin kubeconfig (token with `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new admin client for the calling test. Must be called inside the test's runtime.
    pub fn client(&self) -> kube::Client {
        // Client::try_from only fails on TLS/config errors, which connect() already ruled out.
        Client::try_from(self.config.clone())
            .unwrap_or_else(|e| panic!("building a kube client: {e}"))
    }

    /// The `kube::Config` the clients are built from (admin).
    pub fn config(&self) -> &Config {
        &self.config
    }
}

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();

/// The running local cluster. The first call in a test process runs `scripts/local-cluster up`
/// (unless `KAPAL_KUBECONFIG` is set), which starts the cluster or, when it runs already, only
/// checks it; later calls return the same value.
pub async fn cluster() -> anyhow::Result<&'static Cluster> {
    CLUSTER.get_or_try_init(connect).await
}

fn repo_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is <repo>/tests
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

async fn connect() -> anyhow::Result<Cluster> {
    let kubeconfig = match std::env::var_os("KAPAL_KUBECONFIG") {
        Some(path) => PathBuf::from(path),
        None => start_local_cluster().await?,
    };
    let kc = Kubeconfig::read_from(&kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
    let cluster = Cluster { kubeconfig, config };
    let client = Client::try_from(cluster.config.clone()).context("building a kube client")?;
    let version = client.apiserver_version().await.with_context(|| {
        format!(
            "API server of {} is not answering",
            cluster.kubeconfig.display()
        )
    })?;
    tracing::info!(version = %version.git_version, kubeconfig = %cluster.kubeconfig.display(), "local cluster ready");
    delete_stale_namespaces(&client).await;
    Ok(cluster)
}

async fn start_local_cluster() -> anyhow::Result<PathBuf> {
    let root = repo_root();
    let script = root.join("scripts/local-cluster");
    // Output goes straight to the test's stderr: a cold first run builds Kubernetes and shows
    // its progress there.
    let status = tokio::process::Command::new(&script)
        .arg("up")
        .current_dir(&root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {} up", script.display()))?;
    if !status.success() {
        bail!(
            "`{} up` failed ({status}); its reason is printed above",
            script.display()
        );
    }
    let out = tokio::process::Command::new(&script)
        .arg("kubeconfig")
        .output()
        .await
        .with_context(|| format!("running {} kubeconfig", script.display()))?;
    let path = String::from_utf8(out.stdout).context("kubeconfig path is not UTF-8")?;
    Ok(PathBuf::from(path.trim()))
}

async fn delete_stale_namespaces(client: &Client) {
    let api: Api<Namespace> = Api::all(client.clone());
    let lp = ListParams::default().labels(&format!("{}={}", TEST_LABEL.0, TEST_LABEL.1));
    let Ok(list) = api.list(&lp).await else {
        return;
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    for ns in list.items {
        let Some(created) = ns.metadata.creation_timestamp.as_ref() else {
            continue;
        };
        let age = now.duration_since(created.0).unsigned_abs();
        if age > STALE_NAMESPACE_AGE
            && ns.metadata.deletion_timestamp.is_none()
            && let Some(name) = ns.metadata.name.as_deref()
        {
            tracing::info!(namespace = name, "deleting stale test namespace");
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
    }
}

/// Polls `check` every 250 ms until it returns `Ok(Some(value))`, and returns that value.
/// `Ok(None)` means "not yet"; an `Err` is treated as "not yet" too (objects may not exist yet),
/// and the last one is reported if the deadline passes. The error names `what` and the timeout.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_error {
                Some(e) => {
                    anyhow!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The API status of a failed kube call (`code` is the HTTP status, e.g. 403), if it was one.
pub fn api_status(err: &kube::Error) -> Option<&kube::core::Status> {
    match err {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

/// A kube error with the API server's whole answer (its Display can be terse).
pub fn explain(e: kube::Error) -> anyhow::Error {
    match api_status(&e) {
        Some(s) => anyhow!("{} {}: {}", s.code, s.reason, s.message),
        None => anyhow!("{e:?}"),
    }
}

/// A namespace owned by one test: unique name (`<prefix>-<8 hex>`), labelled
/// `kapal.dev/test=true`, deleted when dropped or by [`TestNamespace::cleanup`].
pub struct TestNamespace {
    name: String,
    client: Client,
    config: Config,
    deleted: bool,
}

impl TestNamespace {
    /// Creates a namespace on the local cluster ([`cluster()`]).
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        Self::with_labels(prefix, &[]).await
    }

    /// Creates a namespace with extra labels, e.g.
    /// `[("pod-security.kubernetes.io/enforce", "baseline")]`.
    pub async fn with_labels(prefix: &str, labels: &[(&str, &str)]) -> anyhow::Result<Self> {
        let cluster = cluster().await?;
        let client = cluster.client();
        let name = unique_name(prefix);
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all.insert(TEST_LABEL.0.to_owned(), TEST_LABEL.1.to_owned());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(all),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let this = Self {
            name,
            client,
            config: cluster.config.clone(),
            deleted: false,
        };
        // The ServiceAccount admission plugin rejects pods until the service-account controller
        // has created the namespace's `default` account.
        let sa: Api<ServiceAccount> = this.api();
        wait_for(
            &format!("service account default in {}", this.name),
            Duration::from_secs(60),
            || async { Ok(sa.get_opt("default").await?.map(|_| ())) },
        )
        .await?;
        Ok(this)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin client this namespace was created with.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A namespaced API for `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace now (returns once the deletion is accepted; the namespace
    /// controller removes its contents in the background).
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.deleted = true;
        delete_namespace(&self.client, &self.name).await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let (name, config) = (self.name.clone(), self.config.clone());
        // Drop may run while the test's runtime is shutting down (or unwinding from a panic), so
        // the deletion runs on its own thread and runtime; best effort.
        best_effort(config, move |client| async move {
            delete_namespace(&client, &name).await
        });
    }
}

async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    match Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if api_status(&e).is_some_and(|s| s.code == 404) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting namespace {name}")),
    }
}

/// Deletes every namespace labelled `kapal.dev/partition=<partition>` (the instances a test
/// stack's provisioner made), best effort and in the background of the API server (namespace
/// deletion finishes after this returns). A stack's partition is its own, so this never touches
/// another test's instances; without it every run would leave its instances' requests on the
/// shared kwok nodes until the cluster is full.
pub fn delete_partition_namespaces(config: Config, partition: String) {
    best_effort(config, move |client| async move {
        let api = Api::<Namespace>::all(client.clone());
        let selector = format!("kapal.dev/partition={partition}");
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .with_context(|| format!("listing namespaces of partition {partition}"))?;
        for ns in list.items {
            if let Some(name) = ns.metadata.name {
                delete_namespace(&client, &name).await?;
            }
        }
        Ok(())
    });
}

/// The local cluster's real nodes (`scripts/real-nodes`, label
/// [`crate::app::REAL_NODE_LABEL`]) that are Ready now; empty when none runs (tests that need
/// one then say they skipped).
///
/// Tests that need real nodes skip themselves (saying so) when this is empty, unless
/// `KAPAL_TEST_REQUIRE_REAL_NODES=1` is set: then no Ready real node is an error, so a run that
/// started real nodes for these tests (`scripts/test`'s real-node stage) cannot pass by skipping.
pub async fn ready_real_nodes(kube: &Client) -> anyhow::Result<Vec<String>> {
    let (key, value) = crate::app::REAL_NODE_LABEL;
    let nodes = Api::<Node>::all(kube.clone())
        .list(&ListParams::default().labels(&format!("{key}={value}")))
        .await?;
    let ready: Vec<String> = nodes
        .items
        .into_iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| n.metadata.name)
        .collect();
    if ready.is_empty() && std::env::var("KAPAL_TEST_REQUIRE_REAL_NODES").is_ok_and(|v| v == "1") {
        anyhow::bail!(
            "KAPAL_TEST_REQUIRE_REAL_NODES=1 but no real node (label {key}={value}) is Ready: \
             see `scripts/real-nodes status` and the kubelet logs under the cluster's real-nodes/"
        );
    }
    Ok(ready)
}

/// Runs `f` with an admin client on a thread and runtime of its own and waits for it, with a
/// 20 s deadline; failures are printed, not raised. For clean-up in `Drop`: the test's runtime
/// may be shutting down when a guard drops.
pub fn best_effort<F, Fut>(config: Config, f: F)
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let handle = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(client) = Client::try_from(config) else {
                return;
            };
            if let Err(e) = tokio::time::timeout(Duration::from_secs(20), f(client))
                .await
                .unwrap_or_else(|_| Err(anyhow!("timed out")))
            {
                eprintln!("test cleanup failed (best effort): {e:#}");
            }
        });
    });
    let _ = handle.join();
}

/// `<prefix>-<8 hex chars>`, a valid DNS label (prefix lower-cased and cut to fit).
pub fn unique_name(prefix: &str) -> String {
    let mut p: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    p.truncate(50);
    let p = p.trim_matches('-');
    let id = uuid::Uuid::new_v4().simple().to_string();
    if p.is_empty() {
        format!("t-{}", &id[..8])
    } else {
        format!("{p}-{}", &id[..8])
    }
}

/// Readiness of a node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// Status of the `Ready` condition (`True`, `False`, `Unknown`), `None` before kwok set it.
    pub ready: Option<String>,
    /// Keys of taints with `node.kubernetes.io/` prefix (not-ready, unreachable, ...).
    pub condition_taints: Vec<String>,
}

impl NodeState {
    /// Ready and without the node lifecycle controller's taints: pods schedule on it.
    pub fn is_schedulable(&self) -> bool {
        self.ready.as_deref() == Some("True") && self.condition_taints.is_empty()
    }
}

/// Reads `name`'s readiness.
pub async fn node_state(client: &Client, name: &str) -> anyhow::Result<NodeState> {
    let node = Api::<Node>::all(client.clone())
        .get(name)
        .await
        .with_context(|| format!("reading node {name}"))?;
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    let condition_taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .filter(|t| t.key.starts_with("node.kubernetes.io/"))
                .map(|t| t.key.clone())
                .collect()
        })
        .unwrap_or_default();
    Ok(NodeState {
        ready,
        condition_taints,
    })
}

/// Stops a node: kwok stops renewing its lease, the node lifecycle controller marks it
/// NotReady/Unknown after `--node-monitor-grace-period` and taints it, and its pods are evicted
/// after their `tolerationSeconds`. Same as `scripts/local-cluster node-down NAME`.
/// Prefer a [`TempNode`]: stopping a shared node disturbs every test running in parallel.
pub async fn stop_node(client: &Client, name: &str) -> anyhow::Result<()> {
    set_kwok_label(client, name, KWOK_STOPPED).await
}

/// Starts a node stopped with [`stop_node`] again and waits until pods can schedule on it.
pub async fn start_node(client: &Client, name: &str) -> anyhow::Result<()> {
    set_kwok_label(client, name, KWOK_MANAGED).await?;
    wait_for(
        &format!("node {name} Ready and untainted"),
        Duration::from_secs(60),
        || async {
            Ok(node_state(client, name)
                .await?
                .is_schedulable()
                .then_some(()))
        },
    )
    .await
}

async fn set_kwok_label(client: &Client, name: &str, value: &str) -> anyhow::Result<()> {
    let patch = json!({ "metadata": { "labels": { KWOK_LABEL: value } } });
    Api::<Node>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting {KWOK_LABEL}={value} on node {name}"))?;
    Ok(())
}

/// A temporary kwok node with a `NoSchedule` taint `kapal.dev/temp-node=<name>` that only pods
/// with [`TempNode::toleration`] accept, so stopping it affects no other test. Deleted on drop.
pub struct TempNode {
    name: String,
    client: Client,
    config: Config,
    deleted: bool,
}

/// Taint key of temporary nodes.
pub const TEMP_NODE_TAINT: &str = "kapal.dev/temp-node";

impl TempNode {
    /// Registers a node sized like the local cluster's nodes (8 CPU / 16Gi, allocatable
    /// 7500m / 15Gi / 110 pods) and waits until it is Ready and untainted by the node lifecycle
    /// controller.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        let cluster = cluster().await?;
        let client = cluster.client();
        let name = unique_name(prefix);
        // A pod CIDR of its own for kwok's fake pod IPs (collisions would be harmless).
        let subnet = 100 + (uuid::Uuid::new_v4().as_u128() % 150) as u8;
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {
                    KWOK_LABEL: KWOK_MANAGED,
                    "type": "kwok",
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    TEMP_NODE_TAINT: name,
                },
                "annotations": { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
            },
            "spec": {
                "podCIDR": format!("10.42.{subnet}.0/24"),
                "podCIDRs": [format!("10.42.{subnet}.0/24")],
                "taints": [{ "key": TEMP_NODE_TAINT, "value": name, "effect": "NoSchedule" }],
            },
            "status": {
                "capacity": { "cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "160Gi" },
                "allocatable": { "cpu": "7500m", "memory": "15Gi", "pods": "110", "ephemeral-storage": "150Gi" },
                "addresses": [
                    { "type": "InternalIP", "address": format!("127.0.2.{subnet}") },
                    { "type": "Hostname", "address": name },
                ],
            },
        }))
        .context("building the temporary node")?;
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("creating node {name}"))?;
        let this = Self {
            name,
            client,
            config: cluster.config.clone(),
            deleted: false,
        };
        let (client, name) = (&this.client, &this.name);
        wait_for(
            &format!("temporary node {name} Ready and untainted"),
            Duration::from_secs(90),
            || async {
                Ok(node_state(client, name)
                    .await?
                    .is_schedulable()
                    .then_some(()))
            },
        )
        .await?;
        Ok(this)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The toleration a pod needs to run on this node (serialisable into a pod spec).
    pub fn toleration(&self) -> serde_json::Value {
        json!({ "key": TEMP_NODE_TAINT, "operator": "Equal", "value": self.name, "effect": "NoSchedule" })
    }

    /// Preferred (not required) node affinity for this node, so pods land here first yet can
    /// be rescheduled elsewhere when it fails.
    pub fn preferred_affinity(&self) -> serde_json::Value {
        json!({ "nodeAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "preference": { "matchExpressions": [{ "key": TEMP_NODE_TAINT, "operator": "In", "values": [self.name] }] }
        }] } })
    }

    /// Stops the node (see [`stop_node`]).
    pub async fn stop(&self) -> anyhow::Result<()> {
        stop_node(&self.client, &self.name).await
    }

    /// Starts the node again and waits until it is schedulable.
    pub async fn start(&self) -> anyhow::Result<()> {
        start_node(&self.client, &self.name).await
    }

    /// Deletes the node now.
    pub async fn delete(mut self) -> anyhow::Result<()> {
        self.deleted = true;
        delete_node(&self.client, &self.name).await
    }
}

impl Drop for TempNode {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let (name, config) = (self.name.clone(), self.config.clone());
        best_effort(config, move |client| async move {
            delete_node(&client, &name).await
        });
    }
}

async fn delete_node(client: &Client, name: &str) -> anyhow::Result<()> {
    match Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if api_status(&e).is_some_and(|s| s.code == 404) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting node {name}")),
    }
}

/// Sets the CPU and memory use kwok simulates for every container of every running pod in
/// `namespace` (the annotations of `deploy/local-cluster/kwok/usage-from-annotation.yaml`, e.g.
/// `"250m"`, `"300Mi"`); metrics-server reports it through the metrics API after its next
/// scrapes. Finished pods (an app's completed setup Job) use nothing and are left alone.
/// Returns how many pods were annotated.
pub async fn simulate_usage(
    client: &Client,
    namespace: &str,
    cpu: &str,
    memory: &str,
) -> anyhow::Result<usize> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods.list(&ListParams::default()).await?;
    let patch = json!({ "metadata": { "annotations": {
        "kwok.x-k8s.io/usage-cpu": cpu,
        "kwok.x-k8s.io/usage-memory": memory,
    } } });
    let running: Vec<_> = list
        .items
        .iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    for pod in &running {
        if let Some(name) = pod.metadata.name.as_deref() {
            pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("annotating pod {namespace}/{name}"))?;
        }
    }
    Ok(running.len())
}
