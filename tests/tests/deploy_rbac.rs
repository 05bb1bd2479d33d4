//! `deploy/k3s` (and the `deploy/k3s-sqlite` overlay) against the real local control plane
//! (`scripts/local-cluster`):
//!
//! - both kustomizations, resolved here as `kubectl apply -k` would: every object parses and the
//!   API server accepts it (server-side dry-run with strict field validation; the namespaced ones
//!   also for real, in a test namespace per variant that enforces the same Pod Security level as
//!   `namespace.yaml`, until every Deployment has its pod), the files agree with each other
//!   (names, labels, ports, keys, each service's endpoints and the Services), only the
//!   provisioner's pod mounts a ServiceAccount token, every container limits ephemeral storage,
//!   the NetworkPolicies admit exactly the intended connections (computed as data), the SQLite
//!   overlay is one pod on its claim, and the catalog ConfigMap is the repository's catalog;
//! - the provisioner does its whole job (an n8n instance to READY; capacity and usage read; a
//!   deleted Service repaired; its node failing, the evicted pod released and replaced;
//!   SUSPENDED; DELETED with its data kept for a moment, then removed; orphan sweeps) with exactly the
//!   ClusterRole of `deploy/k3s/clusterrole.yaml` and under `admission-policy.yaml`, authenticated
//!   only by a bound token of a ServiceAccount (no admin token, no client certificate), and no
//!   request of it is refused ([`FencedIdentity`]);
//! - that role cannot do anything else of consequence: RBAC objects (but its own RoleBindings),
//!   writing nodes, creating pods, exec, impersonation, reading or listing secrets, node proxy
//!   (kubelet), deleting volumes. (What the admission policy refuses: `tests/tests/fence.rs`.)
//!
//! Cluster-scoped objects that must really exist (the ClusterRole and its binding) get unique
//! names and are deleted at the end, or on drop after a failure; so are the test namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, Namespace, Node, Pod, PodSpec, Secret, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kapal::auth::{InternalKey, VerifyPrincipal};
use kapal::catalog::Catalog;
use kapal::db::DbConfig;
use kapal::proto::internal::v1::instance_state_service_server::InstanceStateServiceServer;
use kapal::proto::internal::v1::provisioner_service_client::ProvisionerServiceClient;
use kapal::proto::internal::v1::{
    ApplyInstanceRequest, GetCapacityRequest, GetCredentialsRequest, GetInstanceStateRequest,
    GetUsageRequest, InstanceSpec,
};
use kapal::proto::v1::{DesiredState, InstanceStatus};
use kapal_tests::cluster::{
    TempNode, TestNamespace, api_status, best_effort, cluster, explain, unique_name, wait_for,
};
use kapal_tests::fake::{ControlPlane as FakeControlPlane, free_listener, lock};
use kapal_tests::fence::{Apply, FencedIdentity, apply_manifest, can};
use kube::api::{
    DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::discovery::pinned_kind;
use kube::{Api, Client, ResourceExt as _};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;

const FIELD_MANAGER: &str = "kapal-test";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn k3s_dir() -> PathBuf {
    repo_root().join("deploy/k3s")
}

fn sqlite_dir() -> PathBuf {
    repo_root().join("deploy/k3s-sqlite")
}

// ---------------------------------------------------------------------------------------------
// Reading the manifests.

/// The fields of a kustomization that `build` resolves; any other is an error, so that a new
/// kustomize feature in `deploy/` cannot be silently ignored here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kustomization {
    #[serde(default)]
    #[allow(dead_code)]
    api_version: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<KustomizePatch>,
    #[serde(default)]
    images: Vec<KustomizeImage>,
}

/// A patch of `patches:`: a file, or inline (no `target:`: matched by the patch's own id).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KustomizePatch {
    path: Option<String>,
    patch: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KustomizeImage {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
}

fn kustomization(dir: &Path) -> anyhow::Result<Kustomization> {
    let path = dir.join("kustomization.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every YAML document of a file, as JSON values (empty documents skipped).
fn documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("parsing {}", path.display()))?;
        if !value.is_null() {
            out.push(
                serde_json::to_value(value)
                    .with_context(|| format!("{} is not representable as JSON", path.display()))?,
            );
        }
    }
    ensure!(!out.is_empty(), "{} holds no object", path.display());
    Ok(out)
}

/// The Kubernetes objects of a file.
fn objects(path: &Path) -> anyhow::Result<Vec<DynamicObject>> {
    documents(path)?
        .into_iter()
        .map(|v| {
            let obj: DynamicObject = serde_json::from_value(v)
                .with_context(|| format!("{} is not a Kubernetes object", path.display()))?;
            ensure!(
                obj.types.is_some() && obj.metadata.name.is_some(),
                "{}: an object without apiVersion/kind/name",
                path.display()
            );
            Ok(obj)
        })
        .collect()
}

/// `*.yaml` files directly in `dir`, by name.
fn yaml_files(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("odd file name {}", path.display()))?;
            out.insert(name.to_string());
        }
    }
    Ok(out)
}

fn kind(obj: &DynamicObject) -> &str {
    obj.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("")
}

fn find<'a>(
    objs: &'a [DynamicObject],
    kind_: &str,
    name: &str,
) -> anyhow::Result<&'a DynamicObject> {
    objs.iter()
        .find(|o| kind(o) == kind_ && o.metadata.name.as_deref() == Some(name))
        .ok_or_else(|| anyhow!("deploy/k3s has no {kind_} {name}"))
}

/// `obj`'s manifest as a typed object.
fn typed<K: serde::de::DeserializeOwned>(obj: &DynamicObject) -> anyhow::Result<K> {
    serde_json::from_value(serde_json::to_value(obj)?)
        .with_context(|| format!("{} {}", kind(obj), obj.name_any()))
}

/// kustomize's `images:` transformer, for the container images of workloads.
fn set_images(obj: &mut DynamicObject, images: &[KustomizeImage]) {
    let Some(containers) = obj
        .data
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for container in containers {
        let Some(image) = container.get("image").and_then(Value::as_str) else {
            continue;
        };
        let (name, tag) = image.rsplit_once(':').unwrap_or((image, ""));
        if let Some(rule) = images.iter().find(|i| i.name == name) {
            let new = format!(
                "{}:{}",
                rule.new_name.as_deref().unwrap_or(name),
                rule.new_tag.as_deref().unwrap_or(tag)
            );
            container["image"] = Value::String(new);
        }
    }
}

/// Server-side apply of a manifest, dry-run or for real, with strict field validation. A dry
/// run is forced: it changes nothing, so fields another manager owns on a live object of the
/// same name (e.g. another test's copy of a cluster-scoped object) do not matter.
async fn apply(
    client: &Client,
    obj: &DynamicObject,
    namespace: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<DynamicObject> {
    let how = Apply {
        dry_run,
        force: dry_run,
    };
    apply_manifest(client, obj, namespace, how).await
}

/// A pod as the Deployment would make it; created with dry-run, so PodSecurity and the other
/// admission plugins judge its spec.
async fn dry_run_pod(client: &Client, ns: &str, deployment: &Deployment) -> anyhow::Result<()> {
    let template = deployment
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or_else(|| anyhow!("the Deployment has no spec"))?;
    let mut metadata = template.metadata.unwrap_or_default();
    metadata.name = Some(unique_name("kapal-pod"));
    let pod = Pod {
        metadata,
        spec: template.spec,
        ..Pod::default()
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(
            &PostParams {
                dry_run: true,
                field_manager: Some(FIELD_MANAGER.into()),
            },
            &pod,
        )
        .await
        .map_err(explain)
        .with_context(|| {
            format!(
                "a pod of Deployment {} is rejected (Pod Security level of namespace.yaml?)",
                deployment.name_any()
            )
        })?;
    Ok(())
}

/// Whether the API server keeps objects of this kind in namespaces.
async fn namespaced(client: &Client, obj: &DynamicObject) -> anyhow::Result<bool> {
    let types = obj
        .types
        .clone()
        .ok_or_else(|| anyhow!("no apiVersion/kind"))?;
    let gvk = GroupVersionKind::try_from(&types)?;
    let (_, caps) = pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the API server does not serve {gvk:?}"))?;
    Ok(matches!(caps.scope, kube::discovery::Scope::Namespaced))
}

// ---------------------------------------------------------------------------------------------
// (a) The manifests: `kubectl apply -k` resolved here, so the test needs no kubectl.

/// What `kubectl kustomize <dir>` makes of the features `deploy/` uses: `resources:` (files and
/// other kustomizations), `patches:` (one strategic merge patch per entry, from `path:` or inline
/// `patch:`, matched by apiVersion, kind, name and namespace: `$patch: delete` removes the
/// object, otherwise maps are merged; a list in a patch is refused, as kustomize would merge it
/// by key) and `images:`, applied to everything the kustomization holds, its bases' objects too.
fn build(dir: &Path) -> anyhow::Result<Vec<DynamicObject>> {
    let k = kustomization(dir)?;
    let mut objs: Vec<DynamicObject> = Vec::new();
    for resource in &k.resources {
        let path = dir.join(resource);
        let found = if path.is_dir() {
            build(&path)?
        } else {
            objects(&path)?
        };
        for obj in found {
            ensure!(
                !objs.iter().any(|o| object_id(o) == object_id(&obj)),
                "{}: {:?} is defined twice (kustomize refuses that)",
                dir.display(),
                object_id(&obj)
            );
            objs.push(obj);
        }
    }
    for patch in &k.patches {
        let mut docs = match (&patch.path, &patch.patch) {
            (Some(path), None) => documents(&dir.join(path))?,
            (None, Some(text)) => documents_in(text, &format!("{}: inline patch", dir.display()))?,
            _ => anyhow::bail!("{}: a patch has one of path and patch", dir.display()),
        };
        ensure!(
            docs.len() == 1,
            "{}: one patch per entry ({docs:?})",
            dir.display()
        );
        let mut doc = docs.remove(0);
        let directive = doc
            .as_object_mut()
            .and_then(|m| m.remove("$patch"))
            .map(|d| d.as_str().unwrap_or_default().to_string());
        let patch_obj: DynamicObject =
            serde_json::from_value(doc.clone()).context("a patch is not a Kubernetes object")?;
        let id = object_id(&patch_obj);
        let at = objs
            .iter()
            .position(|o| object_id(o) == id)
            .ok_or_else(|| anyhow!("{}: no object matches the patch of {id:?}", dir.display()))?;
        match directive.as_deref() {
            Some("delete") => {
                objs.remove(at);
            }
            None => {
                let mut value = serde_json::to_value(&objs[at])?;
                merge_patch(&mut value, &doc, "")?;
                objs[at] = serde_json::from_value(value)?;
            }
            Some(other) => anyhow::bail!("$patch: {other} is not supported here"),
        }
    }
    for obj in &mut objs {
        set_images(obj, &k.images);
    }
    Ok(objs)
}

/// The YAML documents of a text (`documents` for inline patches).
fn documents_in(text: &str, origin: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value =
            serde_yaml::Value::deserialize(doc).with_context(|| format!("parsing {origin}"))?;
        if !value.is_null() {
            out.push(serde_json::to_value(value)?);
        }
    }
    Ok(out)
}

/// A strategic merge patch made only of maps and values: maps merge, `null` removes, values
/// replace.
fn merge_patch(target: &mut Value, patch: &Value, at: &str) -> anyhow::Result<()> {
    let (Some(target), Some(patch)) = (target.as_object_mut(), patch.as_object()) else {
        anyhow::bail!("{at}: not a map");
    };
    for (key, value) in patch {
        let here = format!("{at}/{key}");
        ensure!(
            !key.starts_with('$'),
            "{here}: directives inside a patch are not supported here"
        );
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(_) if target.get(key).is_some_and(Value::is_object) => {
                merge_patch(target.get_mut(key).expect("checked"), value, &here)?;
            }
            Value::Array(_) => anyhow::bail!(
                "{here}: kustomize merges lists of a strategic merge patch by key; teach this test first"
            ),
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

/// What kustomize identifies an object by.
fn object_id(obj: &DynamicObject) -> (String, String, String, String) {
    let types = obj.types.clone().unwrap_or_default();
    (
        types.api_version,
        types.kind,
        obj.name_any(),
        obj.metadata.namespace.clone().unwrap_or_default(),
    )
}

/// The typed objects of one kind.
fn all_of<K: serde::de::DeserializeOwned>(
    objs: &[DynamicObject],
    kind_: &str,
) -> anyhow::Result<Vec<K>> {
    objs.iter()
        .filter(|o| kind(o) == kind_)
        .map(typed)
        .collect()
}

fn pod_spec(deployment: &Deployment) -> PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default()
}

fn pod_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// The `kapal` container of a Deployment's pod.
fn kapal_container(deployment: &Deployment) -> anyhow::Result<Container> {
    let pod = pod_spec(deployment);
    ensure!(
        pod.containers.len() == 1,
        "{}: one container",
        deployment.name_any()
    );
    Ok(pod.containers[0].clone())
}

fn env_of(container: &Container) -> BTreeMap<String, EnvVar> {
    container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect()
}

fn env_value<'a>(env: &'a BTreeMap<String, EnvVar>, key: &str) -> Option<&'a str> {
    env.get(key).and_then(|e| e.value.as_deref())
}

/// The port of an address like `0.0.0.0:8081`, which must listen on every interface (a pod's
/// loopback is not reachable from its Service).
fn listen_port(deployment: &str, key: &str, value: Option<&str>) -> anyhow::Result<i32> {
    let value = value.ok_or_else(|| anyhow!("{deployment}: {key} is not set"))?;
    let addr: std::net::SocketAddr = value
        .parse()
        .with_context(|| format!("{deployment}: {key}={value:?}"))?;
    ensure!(
        addr.ip().is_unspecified(),
        "{deployment}: {key}={value} does not listen on the pod's address"
    );
    Ok(i32::from(addr.port()))
}

/// The settings' name of a service: `control-plane` → `CONTROL_PLANE`.
fn env_name(service: &str) -> String {
    service.to_uppercase().replace('-', "_")
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A `metav1.LabelSelector` on labels (the empty selector selects everything).
fn label_selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_label && by_expression
}

/// Something that connects or is connected to, for the NetworkPolicy model: a pod (with labels,
/// in a namespace) or an address outside the pod network (the API server, the internet).
#[derive(Clone, Debug)]
struct Endpoint {
    name: String,
    namespace: String,
    namespace_labels: BTreeMap<String, String>,
    /// None: not a pod.
    labels: Option<BTreeMap<String, String>>,
    ip: std::net::Ipv4Addr,
    /// (name, port, protocol) of what it serves.
    ports: Vec<(Option<String>, i32, String)>,
}

fn cidr_contains(cidr: &str, ip: std::net::Ipv4Addr) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<std::net::Ipv4Addr>(), bits.parse::<u32>()) else {
        return false;
    };
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits.min(32))
    };
    u32::from(net) & mask == u32::from(ip) & mask
}

/// Whether a NetworkPolicy peer (of a policy in `policy_ns`) is `other`.
fn peer_matches(peer: &NetworkPolicyPeer, policy_ns: &str, other: &Endpoint) -> bool {
    if let Some(block) = &peer.ip_block {
        return cidr_contains(&block.cidr, other.ip)
            && !block
                .except
                .iter()
                .flatten()
                .any(|c| cidr_contains(c, other.ip));
    }
    // Pod and namespace selectors only ever select pods.
    let Some(labels) = &other.labels else {
        return false;
    };
    let namespace = match &peer.namespace_selector {
        None => other.namespace == policy_ns,
        Some(s) => label_selector_matches(s, &other.namespace_labels),
    };
    let pod = peer
        .pod_selector
        .as_ref()
        .is_none_or(|s| label_selector_matches(s, labels));
    namespace && pod
}

fn port_matches(
    ports: Option<&Vec<NetworkPolicyPort>>,
    dst: &Endpoint,
    port: i32,
    protocol: &str,
) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return true;
    };
    ports.iter().any(|p| {
        p.protocol.as_deref().unwrap_or("TCP") == protocol
            && match &p.port {
                None => true,
                Some(IntOrString::Int(n)) => *n <= port && port <= p.end_port.unwrap_or(*n),
                Some(IntOrString::String(name)) => dst.ports.iter().any(|(n, p, proto)| {
                    n.as_ref() == Some(name) && *p == port && proto == protocol
                }),
            }
    })
}

/// The policies that isolate `pod` in one direction ("Ingress" or "Egress").
fn isolating<'a>(
    policies: &'a [NetworkPolicy],
    pod: &Endpoint,
    direction: &str,
) -> Vec<&'a NetworkPolicy> {
    let Some(labels) = &pod.labels else {
        return Vec::new();
    };
    policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(pod.namespace.as_str()))
        .filter(|p| {
            let spec = p.spec.clone().unwrap_or_default();
            let types = spec.policy_types.clone().unwrap_or_else(|| {
                let mut t = vec!["Ingress".to_string()];
                if spec.egress.is_some() {
                    t.push("Egress".into());
                }
                t
            });
            types.iter().any(|t| t == direction)
                && label_selector_matches(&spec.pod_selector.unwrap_or_default(), labels)
        })
        .collect()
}

/// Whether the policies let `src` open a connection to `dst` on `port`/`protocol`: both its
/// egress from `src` and its ingress into `dst` must be allowed.
fn allowed(
    policies: &[NetworkPolicy],
    src: &Endpoint,
    dst: &Endpoint,
    port: i32,
    protocol: &str,
) -> bool {
    let egress = isolating(policies, src, "Egress");
    let out = egress.is_empty()
        || egress.iter().any(|p| {
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            p.spec
                .iter()
                .flat_map(|s| s.egress.iter().flatten())
                .any(|rule| {
                    let to = rule.to.as_ref().filter(|t| !t.is_empty());
                    to.is_none_or(|peers| peers.iter().any(|peer| peer_matches(peer, ns, dst)))
                        && port_matches(rule.ports.as_ref(), dst, port, protocol)
                })
        });
    let ingress = isolating(policies, dst, "Ingress");
    let into = ingress.is_empty()
        || ingress.iter().any(|p| {
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            p.spec
                .iter()
                .flat_map(|s| s.ingress.iter().flatten())
                .any(|rule| {
                    let from = rule.from.as_ref().filter(|f| !f.is_empty());
                    from.is_none_or(|peers| peers.iter().any(|peer| peer_matches(peer, ns, src)))
                        && port_matches(rule.ports.as_ref(), dst, port, protocol)
                })
        });
    out && into
}

/// Every (source, destination) the policies let connect on some port the destination serves.
fn edges(policies: &[NetworkPolicy], endpoints: &[Endpoint]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for src in endpoints.iter().filter(|e| e.labels.is_some()) {
        for dst in endpoints.iter().filter(|d| d.name != src.name) {
            if dst
                .ports
                .iter()
                .any(|(_, port, protocol)| allowed(policies, src, dst, *port, protocol))
            {
                out.insert((src.name.clone(), dst.name.clone()));
            }
        }
    }
    out
}

/// The pods around Kapal's: Traefik and CoreDNS in kube-system, PostgreSQL in Kapal's namespace,
/// a customer's pod, and two addresses outside the pod network.
fn surroundings(namespace_labels: &BTreeMap<String, String>) -> Vec<Endpoint> {
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let kube_system = labels(&[("kubernetes.io/metadata.name", "kube-system")]);
    let tcp = |name: &str, port: i32| (Some(name.to_string()), port, "TCP".to_string());
    vec![
        Endpoint {
            name: "traefik".into(),
            namespace: "kube-system".into(),
            namespace_labels: kube_system.clone(),
            labels: Some(labels(&[("app.kubernetes.io/name", "traefik")])),
            ip: [10, 42, 1, 2].into(),
            ports: vec![tcp("web", 8000), tcp("websecure", 8443)],
        },
        Endpoint {
            name: "coredns".into(),
            namespace: "kube-system".into(),
            namespace_labels: kube_system,
            labels: Some(labels(&[("k8s-app", "kube-dns")])),
            ip: [10, 42, 1, 3].into(),
            ports: vec![(Some("dns".into()), 53, "UDP".into()), tcp("dns-tcp", 53)],
        },
        Endpoint {
            name: "postgresql".into(),
            namespace: "kapal".into(),
            namespace_labels: namespace_labels.clone(),
            labels: Some(labels(&[("app.kubernetes.io/name", "postgresql")])),
            ip: [10, 42, 2, 9].into(),
            ports: vec![tcp("tcp-postgresql", 5432)],
        },
        Endpoint {
            name: "customer".into(),
            namespace: "kapal-c0ffee-n8n".into(),
            namespace_labels: labels(&[
                ("kubernetes.io/metadata.name", "kapal-c0ffee-n8n"),
                ("app.kubernetes.io/managed-by", "kapal"),
            ]),
            labels: Some(labels(&[("app.kubernetes.io/name", "n8n")])),
            ip: [10, 42, 3, 4].into(),
            ports: vec![tcp("http", 5678)],
        },
        Endpoint {
            name: "api-server".into(),
            namespace: String::new(),
            namespace_labels: BTreeMap::new(),
            labels: None,
            ip: [192, 168, 1, 10].into(),
            ports: vec![tcp("https", 6443)],
        },
        Endpoint {
            name: "internet".into(),
            namespace: String::new(),
            namespace_labels: BTreeMap::new(),
            labels: None,
            ip: [203, 0, 113, 7].into(),
            ports: vec![tcp("https", 443)],
        },
    ]
}

/// The services each service calls, by their settings' names (`KAPAL_<X>_ENDPOINT`): what
/// `cli/src/server.rs` gives each service's configuration.
fn calls(service: &str) -> &'static [&'static str] {
    match service {
        "gateway" => &["control-plane", "billing"],
        "control-plane" => &["billing", "provisioner"],
        "billing" | "provisioner" => &["control-plane"],
        _ => &[],
    }
}

/// The checks of one resolved variant (`deploy/k3s` or `deploy/k3s-sqlite`) that need no API
/// server. `sqlite`: the variant keeps its data in SQLite files on a claim.
fn check_variant(
    variant: &str,
    objs: &[DynamicObject],
    image: &str,
    secret: &Secret,
    sqlite: bool,
) -> anyhow::Result<()> {
    let deployments: Vec<Deployment> = all_of(objs, "Deployment")?;
    let services: Vec<k8s_openapi::api::core::v1::Service> = all_of(objs, "Service")?;
    let accounts: Vec<ServiceAccount> = all_of(objs, "ServiceAccount")?;
    let policies: Vec<NetworkPolicy> = all_of(objs, "NetworkPolicy")?;
    let secret_keys: BTreeSet<String> = secret
        .string_data
        .clone()
        .unwrap_or_default()
        .into_keys()
        .collect();
    let kapal_service = |d: &Deployment| -> anyhow::Result<String> {
        let env = env_of(&kapal_container(d)?);
        env_value(&env, "KAPAL_SERVICE")
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{variant}: {} has no KAPAL_SERVICE", d.name_any()))
    };
    let mut running: BTreeMap<String, String> = BTreeMap::new();
    for d in &deployments {
        let service = kapal_service(d)?;
        ensure!(
            running.insert(service.clone(), d.name_any()).is_none(),
            "{variant}: two Deployments run {service}"
        );
    }
    let wanted: Vec<&str> = if sqlite {
        vec!["all"]
    } else {
        vec!["billing", "control-plane", "gateway", "provisioner"]
    };
    assert_eq!(
        running.keys().map(String::as_str).collect::<Vec<_>>(),
        wanted,
        "{variant}: the Deployments and the services they run"
    );

    // Exactly one pod mounts a ServiceAccount token: the provisioner's, as kapal-provisioner.
    // The others say so themselves (not only through their ServiceAccount) and run as an account
    // that no binding names.
    let bound: BTreeSet<String> = objs
        .iter()
        .filter(|o| ["RoleBinding", "ClusterRoleBinding"].contains(&kind(o)))
        .flat_map(|o| o.data["subjects"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["kind"] == "ServiceAccount")
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    let mut mounting = Vec::new();
    for d in &deployments {
        let pod = pod_spec(d);
        let account_name = pod
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let account = accounts.iter().find(|a| a.name_any() == account_name);
        let mounts = pod
            .automount_service_account_token
            .or_else(|| account.and_then(|a| a.automount_service_account_token))
            .unwrap_or(true);
        if mounts {
            mounting.push((kapal_service(d)?, account_name));
        } else {
            assert_eq!(
                pod.automount_service_account_token,
                Some(false),
                "{variant}: {} sets automountServiceAccountToken: false itself",
                d.name_any()
            );
            ensure!(
                account.is_some(),
                "{variant}: {} runs as ServiceAccount {account_name}, which the manifests do not define",
                d.name_any()
            );
            ensure!(
                !bound.contains(&account_name),
                "{variant}: {} runs as {account_name}, which a binding grants a role",
                d.name_any()
            );
        }
    }
    let provisioner = if sqlite { "all" } else { "provisioner" };
    assert_eq!(
        mounting,
        [(provisioner.to_string(), "kapal-provisioner".to_string())],
        "{variant}: the pods that mount a ServiceAccount token (service, account)"
    );

    // Each pod: one replica; Recreate where state lives in the process (all but the gateway);
    // the image; security; resources with ephemeral-storage; its listener; gRPC probes on it;
    // the endpoints of what it calls; its secrets.
    for d in &deployments {
        let name = d.name_any();
        let service = kapal_service(d)?;
        let spec = d.spec.clone().unwrap_or_default();
        let pod = pod_spec(d);
        assert_eq!(spec.replicas, Some(1), "{variant}: {name}: one replica");
        if service != "gateway" {
            assert_eq!(
                spec.strategy.and_then(|s| s.type_).as_deref(),
                Some("Recreate"),
                "{variant}: {name}: never two at once"
            );
        }
        let pod_security = pod.security_context.clone().unwrap_or_default();
        assert_eq!(pod_security.run_as_non_root, Some(true), "{name}");
        assert_eq!(
            pod_security.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault"),
            "{name}"
        );
        for container in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let resources = container.resources.clone().unwrap_or_default();
            for (what, amounts) in [
                ("requests", &resources.requests),
                ("limits", &resources.limits),
            ] {
                let amounts = amounts.clone().unwrap_or_default();
                for resource in ["cpu", "memory", "ephemeral-storage"] {
                    ensure!(
                        amounts.contains_key(resource),
                        "{variant}: {name}/{}: no {resource} in {what}",
                        container.name
                    );
                }
            }
            let sc = container.security_context.clone().unwrap_or_default();
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
            assert_eq!(
                sc.capabilities.and_then(|c| c.drop),
                Some(vec!["ALL".to_string()]),
                "{name}"
            );
        }
        let container = kapal_container(d)?;
        assert_eq!(
            container.image.as_deref(),
            Some(image),
            "{variant}: {name}: the image after kustomize's images: transformer"
        );
        assert_eq!(container.args.clone().unwrap_or_default(), ["server"]);
        let env = env_of(&container);
        let port = if matches!(service.as_str(), "gateway" | "all") {
            listen_port(&name, "KAPAL_LISTEN", env_value(&env, "KAPAL_LISTEN"))?
        } else {
            let key = format!("KAPAL_{}_LISTEN", env_name(&service));
            listen_port(&name, &key, env_value(&env, &key))?
        };
        if service == "all" {
            // Every internal listener stays on loopback, out of reach of the network.
            for other in ["control-plane", "billing", "provisioner"] {
                let key = format!("KAPAL_{}_LISTEN", env_name(other));
                ensure!(!env.contains_key(&key), "{variant}: {name} sets {key}");
            }
        }
        let grpc_port = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("grpc"))
            .map(|p| p.container_port);
        assert_eq!(grpc_port, Some(port), "{variant}: {name}: port grpc");
        for probe in [
            &container.startup_probe,
            &container.readiness_probe,
            &container.liveness_probe,
        ] {
            let probed = probe.as_ref().and_then(|p| p.grpc.as_ref()).map(|g| g.port);
            assert_eq!(
                probed,
                Some(port),
                "{variant}: {name}: gRPC probes on its port"
            );
        }
        // What it calls: KAPAL_<X>_ENDPOINT is http://<Service>:<port>, and that Service
        // selects the pod running <x>, on the port its listener has.
        for callee in calls(&service) {
            let key = format!("KAPAL_{}_ENDPOINT", env_name(callee));
            let url =
                env_value(&env, &key).ok_or_else(|| anyhow!("{variant}: {name} has no {key}"))?;
            let (host, port) = url
                .strip_prefix("http://")
                .and_then(|hp| hp.split_once(':'))
                .ok_or_else(|| anyhow!("{variant}: {name}: {key}={url} is not http://host:port"))?;
            let port: i32 = port.parse().with_context(|| format!("{key}={url}"))?;
            let svc = services
                .iter()
                .find(|s| s.name_any() == host)
                .ok_or_else(|| anyhow!("{variant}: {name}: {key}={url}: no Service {host}"))?;
            let svc_spec = svc.spec.clone().unwrap_or_default();
            let svc_port = svc_spec
                .ports
                .iter()
                .flatten()
                .find(|p| p.port == port)
                .ok_or_else(|| {
                    anyhow!("{variant}: {name}: {key}={url}: Service {host} has no port {port}")
                })?;
            let selector = svc_spec.selector.clone().unwrap_or_default();
            let targets: Vec<&Deployment> = deployments
                .iter()
                .filter(|t| selects(&selector, &pod_labels(t)))
                .collect();
            ensure!(
                targets.len() == 1 && kapal_service(targets[0])? == *callee,
                "{variant}: {name}: {key}={url}: Service {host} does not select the {callee} pod alone"
            );
            let target = kapal_container(targets[0])?;
            let target_env = env_of(&target);
            let listen_key = format!("KAPAL_{}_LISTEN", env_name(callee));
            let listening = listen_port(
                &targets[0].name_any(),
                &listen_key,
                env_value(&target_env, &listen_key),
            )?;
            let target_port = match &svc_port.target_port {
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(port_name)) => target
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_ref() == Some(port_name))
                    .map(|p| p.container_port),
                None => Some(port),
            };
            assert_eq!(
                target_port,
                Some(listening),
                "{variant}: Service {host} port {port} reaches {callee}'s {listen_key}"
            );
        }
        // Secrets: the internal key for all; the database URL for the services with a schema
        // (never the gateway), none with SQLite.
        let has_schema = !sqlite && service != "gateway";
        for (key, wanted) in [
            ("KAPAL_INTERNAL_KEY", true),
            ("KAPAL_DATABASE_URL", has_schema),
        ] {
            let reference = env
                .get(key)
                .and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.secret_key_ref.as_ref());
            ensure!(
                reference.is_some() == wanted && (wanted || !env.contains_key(key)),
                "{variant}: {name}: {key} {} from the Secret",
                if wanted {
                    "must come"
                } else {
                    "must not be given"
                }
            );
            if let Some(reference) = reference {
                assert_eq!(
                    Some(reference.name.as_str()),
                    secret.metadata.name.as_deref()
                );
                assert_eq!(reference.key, key);
                assert!(secret_keys.contains(key), "the template has {key}");
                assert_ne!(reference.optional, Some(true), "{key} is required");
            }
        }
        for from in container.env_from.clone().unwrap_or_default() {
            let map = from.config_map_ref.map(|c| c.name).unwrap_or_default();
            find(objs, "ConfigMap", &map)?;
        }
        let volumes = pod.volumes.clone().unwrap_or_default();
        let catalog = volumes
            .iter()
            .find_map(|v| v.config_map.as_ref().map(|c| c.name.clone()))
            .ok_or_else(|| anyhow!("{variant}: {name}: no catalog ConfigMap volume"))?;
        assert_eq!(catalog, "kapal-catalog");
        let data = volumes.iter().find(|v| v.name == "data");
        if sqlite {
            let claim = data
                .and_then(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.clone())
                .ok_or_else(|| anyhow!("{variant}: {name}: the data directory is not a claim"))?;
            find(objs, "PersistentVolumeClaim", &claim)?;
            assert_eq!(
                env_value(&env, "KAPAL_DATA_DIR"),
                container
                    .volume_mounts
                    .iter()
                    .flatten()
                    .find(|m| m.name == "data")
                    .map(|m| m.mount_path.as_str()),
                "{variant}: {name}: the data directory is the claim"
            );
        } else if let Some(data) = data {
            ensure!(
                data.persistent_volume_claim.is_none(),
                "{variant}: {name}: PostgreSQL keeps nothing durable in the pod"
            );
        }
    }

    // Services: ClusterIP only, each selecting exactly one pod; the Ingress reaches only a Service
    // of the pod serving the gateway, h2c.
    for svc in &services {
        let spec = svc.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.type_.as_deref(),
            Some("ClusterIP"),
            "{}",
            svc.name_any()
        );
        let selector = spec.selector.clone().unwrap_or_default();
        let selected: Vec<String> = deployments
            .iter()
            .filter(|d| selects(&selector, &pod_labels(d)))
            .map(|d| d.name_any())
            .collect();
        assert_eq!(
            selected.len(),
            1,
            "{variant}: Service {} selects {selected:?}",
            svc.name_any()
        );
    }
    let ingresses: Vec<k8s_openapi::api::networking::v1::Ingress> = all_of(objs, "Ingress")?;
    ensure!(!ingresses.is_empty(), "{variant}: no Ingress");
    for ingress in &ingresses {
        let spec = ingress.spec.clone().unwrap_or_default();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("traefik"));
        ensure!(
            spec.default_backend.is_none(),
            "{variant}: a default backend"
        );
        let backends: Vec<_> = spec
            .rules
            .iter()
            .flatten()
            .flat_map(|r| r.http.clone().map(|h| h.paths).unwrap_or_default())
            .map(|p| p.backend.service)
            .collect();
        ensure!(
            !backends.is_empty(),
            "{variant}: the Ingress has no backend"
        );
        for backend in backends {
            let backend = backend.ok_or_else(|| anyhow!("{variant}: a backend is no Service"))?;
            let svc = services
                .iter()
                .find(|s| s.name_any() == backend.name)
                .ok_or_else(|| anyhow!("{variant}: the Ingress names Service {}", backend.name))?;
            let spec = svc.spec.clone().unwrap_or_default();
            let selector = spec.selector.clone().unwrap_or_default();
            for d in deployments
                .iter()
                .filter(|d| selects(&selector, &pod_labels(d)))
            {
                let service = kapal_service(d)?;
                ensure!(
                    service == "gateway" || service == "all",
                    "{variant}: the Ingress reaches {service}"
                );
            }
            let port_name = backend.port.and_then(|p| p.name);
            ensure!(
                spec.ports
                    .iter()
                    .flatten()
                    .any(|p| p.name.is_some() && p.name == port_name),
                "{variant}: the Ingress uses a port of Service {}",
                backend.name
            );
            assert_eq!(
                svc.metadata
                    .annotations
                    .clone()
                    .unwrap_or_default()
                    .get("traefik.ingress.kubernetes.io/service.serversscheme")
                    .map(String::as_str),
                Some("h2c"),
                "Traefik talks h2c to the gateway"
            );
        }
    }

    // The NetworkPolicies admit exactly these connections (as data: every pair of Kapal's
    // pods, Traefik, CoreDNS, PostgreSQL, a customer's pod, the API server and the internet).
    let namespace: Namespace = typed(find(objs, "Namespace", "kapal")?)?;
    let mut namespace_labels = namespace.metadata.labels.clone().unwrap_or_default();
    namespace_labels.insert("kubernetes.io/metadata.name".into(), "kapal".into());
    let mut endpoints = surroundings(&namespace_labels);
    for (i, d) in deployments.iter().enumerate() {
        let container = kapal_container(d)?;
        endpoints.push(Endpoint {
            name: d.name_any(),
            namespace: "kapal".into(),
            namespace_labels: namespace_labels.clone(),
            labels: Some(pod_labels(d)),
            ip: [10, 42, 0, 10 + i as u8].into(),
            ports: container
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    (
                        p.name.clone(),
                        p.container_port,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
                .collect(),
        });
    }
    let pod_of = |service: &str| running.get(service).cloned().unwrap_or_default();
    let edge = |a: &str, b: &str| (a.to_string(), b.to_string());
    // The public port admits the ingress controller's namespace, kube-system: CoreDNS stands
    // for its other pods.
    let mut expected: BTreeSet<(String, String)> = if sqlite {
        BTreeSet::from([
            edge("traefik", &pod_of("all")),
            edge("coredns", &pod_of("all")),
        ])
    } else {
        let [gateway, control_plane, billing, provisioner] =
            ["gateway", "control-plane", "billing", "provisioner"].map(pod_of);
        BTreeSet::from([
            edge("traefik", &gateway),
            edge("coredns", &gateway),
            edge(&gateway, &control_plane),
            edge(&billing, &control_plane),
            edge(&provisioner, &control_plane),
            edge(&gateway, &billing),
            edge(&control_plane, &billing),
            edge(&control_plane, &provisioner),
            edge(&control_plane, "postgresql"),
            edge(&billing, "postgresql"),
            edge(&provisioner, "postgresql"),
            // The gateway reaches nothing else: DNS to find the two above.
            edge(&gateway, "coredns"),
        ])
    };
    // Nothing outside Kapal's namespace is isolated by these policies, and the egress of
    // everyone but the gateway is open (deploy/README.md lists what each needs).
    let outside = ["traefik", "coredns", "customer", "api-server", "internet"];
    let mut ingress_only = expected.clone();
    for src in endpoints.iter().filter(|e| e.labels.is_some()) {
        for dst in outside.iter().filter(|d| **d != src.name) {
            ingress_only.insert(edge(&src.name, dst));
            if sqlite || src.name != pod_of("gateway") {
                expected.insert(edge(&src.name, dst));
            }
        }
    }
    // No policy is left over for a pod the variant does not run.
    for p in &policies {
        let selector = p.spec.clone().unwrap_or_default().pod_selector;
        ensure!(
            endpoints.iter().any(|e| e.namespace == "kapal"
                && e.labels.as_ref().is_some_and(|l| {
                    label_selector_matches(&selector.clone().unwrap_or_default(), l)
                })),
            "{variant}: NetworkPolicy {} selects no pod",
            p.name_any()
        );
    }
    // With the ingress policies alone too: the gateway's egress policy is a second wall, not the
    // only one.
    let ingress_policies: Vec<NetworkPolicy> = policies
        .iter()
        .cloned()
        .filter_map(|mut p| {
            let spec = p.spec.as_mut()?;
            let types = spec
                .policy_types
                .get_or_insert_with(|| vec!["Ingress".into()]);
            types.retain(|t| t == "Ingress");
            spec.egress = None;
            (!types.is_empty()).then_some(p)
        })
        .collect();
    for (what, policies, expected) in [
        ("", &policies, &expected),
        (
            " (ingress policies alone)",
            &ingress_policies,
            &ingress_only,
        ),
    ] {
        let actual = edges(policies, &endpoints);
        let missing: Vec<_> = expected.difference(&actual).collect();
        let extra: Vec<_> = actual.difference(expected).collect();
        ensure!(
            missing.is_empty() && extra.is_empty(),
            "{variant}: NetworkPolicies{what}: missing connections {missing:?}, unwanted connections {extra:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_manifests_are_consistent_and_accepted_by_the_api_server() -> anyhow::Result<()> {
    let k3s = k3s_dir();
    let base = kustomization(&k3s)?;

    // The kustomization lists every manifest but the Secret template (which `apply -k` must
    // never overwrite), and nothing else.
    let files = yaml_files(&k3s)?;
    let listed: BTreeSet<String> = base.resources.iter().cloned().collect();
    let expected: BTreeSet<String> = files
        .iter()
        .filter(|f| *f != "kustomization.yaml" && *f != "secret.example.yaml")
        .cloned()
        .collect();
    assert_eq!(listed, expected, "deploy/k3s/kustomization.yaml resources");
    ensure!(
        files.contains("secret.example.yaml"),
        "deploy/k3s/secret.example.yaml is missing"
    );
    let sqlite = kustomization(&sqlite_dir())?;
    let sqlite_files = yaml_files(&sqlite_dir())?;
    let sqlite_resources: Vec<&String> =
        sqlite.resources.iter().filter(|r| *r != "../k3s").collect();
    assert_eq!(
        sqlite.resources.len(),
        sqlite_resources.len() + 1,
        "deploy/k3s-sqlite builds on ../k3s"
    );
    let mut sqlite_listed: BTreeSet<String> = sqlite_resources.into_iter().cloned().collect();
    sqlite_listed.extend(sqlite.patches.iter().filter_map(|p| p.path.clone()));
    sqlite_listed.insert("kustomization.yaml".into());
    assert_eq!(sqlite_listed, sqlite_files, "deploy/k3s-sqlite files");

    let manifests = build(&k3s)?;
    let sqlite_manifests = build(&sqlite_dir())?;
    let secret_template = objects(&k3s.join("secret.example.yaml"))?;
    let secret: Secret = typed(&secret_template[0])?;
    // The placeholder key is refused by Kapal, so an unedited template cannot run.
    let placeholder = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get("KAPAL_INTERNAL_KEY"))
        .cloned()
        .unwrap_or_default();
    assert!(InternalKey::from_secret(&placeholder).is_err());

    // No wildcard, no cluster-admin: the role names every verb and resource.
    let role: ClusterRole = typed(find(&manifests, "ClusterRole", "kapal-provisioner")?)?;
    for rule in role.rules.clone().unwrap_or_default() {
        let everything = rule
            .verbs
            .iter()
            .chain(rule.resources.iter().flatten())
            .chain(rule.api_groups.iter().flatten());
        assert!(everything.clone().all(|s| s != "*"), "wildcard in {rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        // Named objects only for "bind" on the role of its per-namespace Secret reads.
        assert!(
            rule.resource_names.is_none()
                || (rule.verbs == ["bind"]
                    && rule.resources.as_deref() == Some(&["clusterroles".to_string()])
                    && rule.resource_names.as_deref()
                        == Some(&["kapal-instance-secrets".to_string()])),
            "{rule:?}"
        );
    }
    assert!(role.aggregation_rule.is_none());
    let binding: ClusterRoleBinding =
        typed(find(&manifests, "ClusterRoleBinding", "kapal-provisioner")?)?;
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "kapal-provisioner");
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "kapal-provisioner");
    assert_eq!(subjects[0].namespace.as_deref(), Some("kapal"));

    // The image both variants run: the one deploy/k3s/kustomization.yaml names (the SQLite
    // overlay's own pod takes it from its own images:, which must say the same).
    let rule = base
        .images
        .first()
        .ok_or_else(|| anyhow!("deploy/k3s/kustomization.yaml has no images:"))?;
    let image = format!(
        "{}:{}",
        rule.new_name.as_deref().unwrap_or(&rule.name),
        rule.new_tag.as_deref().unwrap_or("latest")
    );
    check_variant("deploy/k3s", &manifests, &image, &secret, false)?;
    check_variant(
        "deploy/k3s-sqlite",
        &sqlite_manifests,
        &image,
        &secret,
        true,
    )?;
    // The SQLite overlay keeps everything else of deploy/k3s as it is, but the public Service's
    // selector.
    for obj in &manifests {
        if let Some(same) = sqlite_manifests
            .iter()
            .find(|o| object_id(o) == object_id(obj))
            && !(kind(obj) == "Service" && obj.name_any() == "kapal-gateway")
        {
            assert!(
                serde_json::to_value(same)? == serde_json::to_value(obj)?,
                "deploy/k3s-sqlite changes {:?}",
                object_id(obj)
            );
        }
    }

    // The catalog ConfigMap is exactly catalog/*.yaml, and loads as a catalog.
    let catalog_map = find(&manifests, "ConfigMap", "kapal-catalog")?;
    let data: BTreeMap<String, String> =
        serde_json::from_value(catalog_map.data.get("data").cloned().unwrap_or_default())?;
    let catalog_dir = kapal::catalog::repo_catalog_dir();
    let mut on_disk = BTreeMap::new();
    for name in yaml_files(&catalog_dir)? {
        on_disk.insert(
            name.clone(),
            std::fs::read_to_string(catalog_dir.join(&name))?,
        );
    }
    assert!(
        data == on_disk,
        "deploy/k3s/catalog-configmap.yaml differs from catalog/: regenerate it (deploy/README.md, \"The catalog\"); \
         ConfigMap has {:?}, catalog/ has {:?}",
        data.keys().collect::<Vec<_>>(),
        on_disk.keys().collect::<Vec<_>>()
    );
    let mounted = tempfile::tempdir()?;
    for (name, text) in &data {
        std::fs::write(mounted.path().join(name), text)?;
    }
    let from_map = Catalog::load(mounted.path())?;
    let from_repo = Catalog::load(&catalog_dir)?;
    let ids = |c: &Catalog| c.apps().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&from_map), ids(&from_repo));

    // The API server accepts every object of both variants: cluster-scoped ones with dry-run
    // only (their fixed names could clash with a real installation), namespaced ones with
    // dry-run and then for real, each variant in a test namespace of its own with
    // namespace.yaml's labels (so its Pod Security level); every Deployment then gets its pod.
    let client = cluster().await?.client();
    let namespace: Namespace = typed(find(&manifests, "Namespace", "kapal")?)?;
    let labels = namespace.metadata.labels.clone().unwrap_or_default();
    let label_refs: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (variant, objs, prefix) in [
        ("deploy/k3s", &manifests, "deploy-k3s"),
        ("deploy/k3s-sqlite", &sqlite_manifests, "deploy-sqlite"),
    ] {
        let ns = TestNamespace::with_labels(prefix, &label_refs).await?;
        let mut namespaced_objs = Vec::new();
        for obj in objs.iter() {
            let is_namespaced = namespaced(&client, obj).await?;
            if is_namespaced {
                // Everything namespaced lives in the Namespace of namespace.yaml.
                assert_eq!(
                    obj.metadata.namespace.as_deref(),
                    Some("kapal"),
                    "{variant}: {} {}",
                    kind(obj),
                    obj.name_any()
                );
                namespaced_objs.push(obj);
            }
            apply(&client, obj, Some(ns.name()), true)
                .await
                .with_context(|| variant.to_string())?;
        }
        apply(&client, &secret_template[0], Some(ns.name()), true).await?;
        for obj in namespaced_objs {
            apply(&client, obj, Some(ns.name()), false)
                .await
                .with_context(|| variant.to_string())?;
        }
        apply(&client, &secret_template[0], Some(ns.name()), false).await?;
        let deployments: Vec<Deployment> = all_of(objs, "Deployment")?;
        for d in &deployments {
            dry_run_pod(&client, ns.name(), d).await?;
        }
        let api: Api<Deployment> = ns.api();
        for d in &deployments {
            let name = d.name_any();
            wait_for(
                &format!("Deployment {name} of {variant} to have its pod available"),
                READY_TIMEOUT,
                || async {
                    let d = api.get(&name).await?;
                    Ok((d.status.and_then(|s| s.available_replicas) == Some(1)).then_some(()))
                },
            )
            .await?;
        }
        ns.cleanup().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (b) and (c): a ServiceAccount bound to exactly deploy/k3s/clusterrole.yaml, under the
// admission policy (kapal_tests::fence::FencedIdentity).

/// A request to authorize: (verb, API group, resource, subresource, namespace).
type Access<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Ok(v) => panic!("{what}: allowed, expected 403 Forbidden ({v:?})"),
        Err(e) => assert_eq!(
            api_status(&e).map(|s| s.code),
            Some(403),
            "{what}: expected 403 Forbidden, got {e}"
        ),
    }
}

/// Deletes a namespace as admin when dropped (the instance's, should the test fail before the
/// provisioner deletes it).
struct DeleteNamespace {
    name: String,
    admin: kube::Config,
}

impl Drop for DeleteNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        best_effort(self.admin.clone(), move |client| async move {
            let _ = Api::<Namespace>::all(client)
                .delete(&name, &DeleteParams::background())
                .await;
            Ok(())
        });
    }
}

/// Warnings and errors logged in this test process (the provisioner logs a failed watch or
/// convergence as a warning and retries, so a missing permission shows up here first).
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            let mut text = format!("{}: ", event.metadata().target());
            event.record(&mut FieldText(&mut text));
            lock(&self.0).push(text);
        }
    }
}

struct FieldText<'a>(&'a mut String);

impl tracing::field::Visit for FieldText<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

/// The process' warnings, recorded from the first call on (and printed; other log lines only
/// as `RUST_LOG` asks). Checks that the recording works, since a subscriber installed earlier
/// by someone else would silently disable it.
fn warnings() -> &'static Warnings {
    static WARNINGS: std::sync::OnceLock<Warnings> = std::sync::OnceLock::new();
    let _ = WARNINGS.get_or_init(|| {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let warnings = Warnings::default();
        let installed = tracing_subscriber::registry()
            .with(warnings.clone())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(tracing_subscriber::EnvFilter::new(
                        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                    )),
            )
            .try_init();
        assert!(installed.is_ok(), "another tracing subscriber is installed");
        warnings
    });
    let warnings = WARNINGS.get_or_init(Warnings::default);
    tracing::warn!(probe = "deploy_rbac", "warnings are recorded");
    assert!(
        lock(&warnings.0).iter().any(|w| w.contains("deploy_rbac")),
        "the warning recorder does not record"
    );
    warnings
}

fn forbidden_warnings() -> Vec<String> {
    lock(&warnings().0)
        .iter()
        .filter(|w| {
            let w = w.to_lowercase();
            // 403 as a word of its own: an instance id such as "…-ae72-4034-…" is not a refusal.
            w.contains("forbidden")
                || w.split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|t| t == "403")
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_provisioner_does_its_whole_job_with_exactly_the_deployed_cluster_role()
-> anyhow::Result<()> {
    warnings();
    let partition = unique_name("rbac");
    // In effect once made: the role and the admission policy, for this ServiceAccount.
    let fenced = FencedIdentity::new(&partition).await?;
    let sa_config = fenced.kube_config().await?;
    // Proves the identity is the ServiceAccount, not an admin.
    drop(fenced.client().await?);

    // The provisioner with the ServiceAccount's config, next to a control-plane stand-in. A
    // resync interval of an hour: statuses after the first apply come from its watches of pods
    // and workloads, so those are exercised with the role too.
    let key = InternalKey::random();
    let control_plane = FakeControlPlane::default();
    let (cp_listener, cp_endpoint) = free_listener().await?;
    let (cp_stop, cp_stopped) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder().add_service(
        VerifyPrincipal(key.clone()).wrap(InstanceStateServiceServer::new(control_plane.clone())),
    );
    tokio::spawn(kapal::serve::serve(router, cp_listener, async {
        let _ = cp_stopped.await;
    }));
    let dir = tempfile::tempdir()?;
    let catalog = Arc::new(Catalog::load(&kapal::catalog::repo_catalog_dir())?);
    let mut config = kapal_provisioner::Config::new(
        DbConfig::DataDir(dir.path().to_path_buf()),
        catalog,
        key.clone(),
        sa_config,
        cp_endpoint,
    );
    config.resync_interval = Duration::from_secs(3600);
    // The instance's pod goes to a node of this test's own, which the test then stops: the
    // provisioner's node-failure handling (reading the node, force-deleting the evicted pod)
    // runs with the role too.
    let node = TempNode::create("kapal-rbac-node").await?;
    config.extra_tolerations = vec![serde_json::from_value(node.toleration())?];
    config.affinity = Some(serde_json::from_value(node.preferred_affinity())?);
    config.node_failure_toleration = Duration::from_secs(2);
    // Orphan sweeps every second (of this test's own partition: its instance is known, so
    // nothing is marked), to run them with the role too.
    config.partition = partition;
    config.sweep_interval = Duration::from_secs(1);
    let (listener, endpoint) = free_listener().await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(kapal_provisioner::run(config, listener, async {
        let _ = stopped.await;
    }));
    let mut provisioner =
        ProvisionerServiceClient::new(kapal::serve::internal_channel(&endpoint, &key)?);

    let customer = format!("t{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut spec = InstanceSpec {
        instance_id: Uuid::new_v4().to_string(),
        account_id: Uuid::new_v4().to_string(),
        customer_id: customer.clone(),
        app_id: "n8n".into(),
        plan_id: "trial".into(),
        hostname: format!("{customer}.n8n.kapal.test"),
        namespace: format!("kapal-{customer}-n8n"),
        desired_state: DesiredState::Running as i32,
        restart_generation: 0,
        delete_data_after: None,
        suspended_by_billing: false,
    };
    let id = spec.instance_id.clone();
    let _cleanup = DeleteNamespace {
        name: spec.namespace.clone(),
        admin: fenced.admin_config().clone(),
    };
    let reader = provisioner.clone();
    let state = move |id: String| {
        let mut provisioner = reader.clone();
        async move {
            let req = GetInstanceStateRequest { instance_id: id };
            anyhow::Ok(provisioner.get_instance_state(req).await?.into_inner())
        }
    };
    let wait_status = |status: InstanceStatus| {
        let (id, state) = (id.clone(), &state);
        async move {
            wait_for(
                &format!("instance {id} to be {}", status.as_str_name()),
                READY_TIMEOUT,
                || async {
                    let s = state(id.clone()).await?;
                    Ok((s.status == status as i32).then_some(s))
                },
            )
            .await
        }
    };

    // Apply: every object is created through the role (an error here names the missing
    // permission), and the app comes up.
    provisioner
        .apply_instance(ApplyInstanceRequest {
            spec: Some(spec.clone()),
        })
        .await
        .with_context(|| {
            format!(
                "ApplyInstance with the deployed ClusterRole; refused: {:?}",
                forbidden_warnings()
            )
        })?;
    wait_status(InstanceStatus::Ready).await?;
    control_plane
        .wait_reported(&id, InstanceStatus::Ready, READY_TIMEOUT)
        .await?;
    let credentials = provisioner
        .get_credentials(GetCredentialsRequest {
            instance_id: id.clone(),
        })
        .await
        .with_context(|| {
            format!(
                "GetCredentials with the deployed ClusterRole; refused: {:?}",
                forbidden_warnings()
            )
        })?
        .into_inner();
    assert_eq!(credentials.password.len(), 24);
    let admin = cluster().await?.client();
    let objects_in = Api::<Deployment>::namespaced(admin.clone(), &spec.namespace)
        .list(&ListParams::default())
        .await?;
    assert_eq!(objects_in.items.len(), 1, "the n8n Deployment");

    // Capacity and usage are read with the role.
    let capacity = provisioner
        .get_capacity(GetCapacityRequest {})
        .await
        .with_context(|| format!("GetCapacity; refused: {:?}", forbidden_warnings()))?
        .into_inner();
    ensure!(
        capacity.requested_by_kapal.is_some_and(|r| r.pods >= 1),
        "the instance's pod is counted: {capacity:?}"
    );
    let usage = provisioner
        .get_usage(GetUsageRequest {
            instance_id: id.clone(),
        })
        .await
        .with_context(|| format!("GetUsage; refused: {:?}", forbidden_warnings()))?
        .into_inner();
    ensure!(
        usage.storage_capacity_bytes > 0,
        "the bound volume is counted: {usage:?}"
    );

    // Drift: a Service deleted behind Kapal's back is seen by the Service watch and applied
    // again (the resync is an hour away).
    let services =
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(admin.clone(), &spec.namespace);
    let old_service = services.get("app").await?.uid();
    services.delete("app", &DeleteParams::default()).await?;
    wait_for(
        "the deleted Service to be re-created",
        READY_TIMEOUT,
        || async {
            Ok(services
                .get_opt("app")
                .await?
                .filter(|s| s.uid() != old_service)
                .map(|_| ()))
        },
    )
    .await?;

    // Node failure: the pod is evicted from the stopped node, force-deleted by the provisioner
    // (no kubelet will confirm its end) and replaced on another node.
    let pods = Api::<Pod>::namespaced(admin.clone(), &spec.namespace);
    // The app's pods (n8n's finished setup Job pod stays beside them).
    let app_pods = ListParams::default().labels("kapal.dev/component=app");
    let first = pods.list(&app_pods).await?.items;
    ensure!(
        first.len() == 1
            && first[0].spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.name()),
        "the pod is not on the test's node {}: {:?}",
        node.name(),
        first
            .iter()
            .map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
            .collect::<Vec<_>>()
    );
    let first_pod = first[0].uid();
    node.stop().await?;
    wait_for(
        "the evicted pod to be released and replaced on another node",
        Duration::from_secs(180),
        || async {
            let now = pods.list(&app_pods).await?.items;
            let released = now.iter().all(|p| p.uid() != first_pod);
            let replaced = now.iter().any(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node.name())
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            });
            Ok((released && replaced).then_some(()))
        },
    )
    .await
    .with_context(|| format!("refused: {:?}", forbidden_warnings()))?;
    wait_status(InstanceStatus::Ready).await?;

    // Stop: scaled to zero; SUSPENDED once the pod is gone (seen through the pod watch).
    spec.desired_state = DesiredState::Stopped as i32;
    let answer = provisioner
        .apply_instance(ApplyInstanceRequest {
            spec: Some(spec.clone()),
        })
        .await
        .with_context(|| {
            format!(
                "stopping with the deployed ClusterRole; refused: {:?}",
                forbidden_warnings()
            )
        })?
        .into_inner();
    wait_status(InstanceStatus::Suspended).await?;
    // The control-plane records ApplyInstance's answer as well as the reports: when the pod
    // was already gone at the answer, SUSPENDED was told there and is not reported again.
    if answer.status != InstanceStatus::Suspended as i32 {
        control_plane
            .wait_reported(&id, InstanceStatus::Suspended, READY_TIMEOUT)
            .await?;
    }

    // Delete, keeping the data for two seconds: the workloads go, then the namespace.
    spec.desired_state = DesiredState::Deleted as i32;
    spec.delete_data_after = Some(kapal::wire::timestamp(
        (chrono::Utc::now() + chrono::TimeDelta::seconds(2)).naive_utc(),
    ));
    provisioner
        .apply_instance(ApplyInstanceRequest {
            spec: Some(spec.clone()),
        })
        .await
        .with_context(|| {
            format!(
                "deleting with the deployed ClusterRole; refused: {:?}",
                forbidden_warnings()
            )
        })?;
    wait_status(InstanceStatus::Deleted).await?;
    let namespaces = Api::<Namespace>::all(admin);
    wait_for(
        "the instance's namespace to be gone",
        READY_TIMEOUT,
        || async {
            Ok(namespaces
                .get_opt(&spec.namespace)
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await
    .with_context(|| format!("refused: {:?}", forbidden_warnings()))?;

    // No request of the provisioner was refused along the way (watches included, which only
    // log and retry).
    let refused: BTreeSet<String> = forbidden_warnings().into_iter().collect();
    assert!(
        refused.is_empty(),
        "requests refused by RBAC (the first few): {:#?}",
        refused.iter().take(4).collect::<Vec<_>>()
    );

    let _ = stop.send(());
    let _ = cp_stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .context("the provisioner did not stop within 10 s")??
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deployed_cluster_role_allows_nothing_else() -> anyhow::Result<()> {
    let fenced = FencedIdentity::new(&unique_name("rbac")).await?;
    let sa = fenced.client().await?;
    let own_ns = fenced.namespace().name().to_string();
    // Any namespace: the role is cluster-wide, as instance namespaces are made at checkout.
    let elsewhere = Some("kapal-anyone-n8n");

    // Everything the role lists is allowed (the role in effect is the file's).
    for rule in fenced.role().rules.clone().unwrap_or_default() {
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    let namespace = (!["namespaces", "clusterroles"].contains(&resource.as_str()))
                        .then_some("kapal-anyone-n8n");
                    // A rule limited to named objects (bind on kapal-instance-secrets) is
                    // checked on each of them.
                    let names: Vec<Option<&str>> = match &rule.resource_names {
                        Some(names) => names.iter().map(|n| Some(n.as_str())).collect(),
                        None => vec![None],
                    };
                    for name in names {
                        assert!(
                            can(&sa, verb, &group, &resource, None, namespace, name).await?,
                            "{verb} {group}/{resource} {name:?} should be allowed"
                        );
                    }
                }
            }
        }
    }

    // Nothing outside its job.
    let denied: &[Access] = &[
        // RBAC: no way to grant itself more.
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            None,
        ),
        (
            "update",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            None,
        ),
        (
            "escalate",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            None,
        ),
        (
            "bind",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            None,
        ),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None,
            None,
        ),
        (
            "create",
            "rbac.authorization.k8s.io",
            "roles",
            None,
            elsewhere,
        ),
        // (RoleBindings: create and patch, for its own binding to kapal-instance-secrets,
        // which the admission policy alone allows; tests/tests/fence.rs.)
        (
            "update",
            "rbac.authorization.k8s.io",
            "rolebindings",
            None,
            elsewhere,
        ),
        (
            "delete",
            "rbac.authorization.k8s.io",
            "rolebindings",
            None,
            elsewhere,
        ),
        ("impersonate", "", "users", None, None),
        ("impersonate", "", "serviceaccounts", None, elsewhere),
        ("impersonate", "", "groups", None, None),
        ("create", "", "serviceaccounts", None, elsewhere),
        ("create", "", "serviceaccounts", Some("token"), elsewhere),
        // Nodes: read only.
        ("watch", "", "nodes", None, None),
        ("patch", "", "nodes", None, None),
        ("patch", "", "nodes", Some("status"), None),
        ("update", "", "nodes", Some("status"), None),
        ("delete", "", "nodes", None, None),
        ("get", "", "nodes", Some("proxy"), None),
        // Pods: workload controllers make them; no exec, logs, port-forward, eviction. (Only
        // delete, for pods stranded on a failed node.)
        ("create", "", "pods", None, elsewhere),
        ("get", "", "pods", None, elsewhere),
        ("create", "", "pods", Some("exec"), elsewhere),
        ("get", "", "pods", Some("exec"), elsewhere),
        ("create", "", "pods", Some("attach"), elsewhere),
        ("get", "", "pods", Some("log"), elsewhere),
        ("create", "", "pods", Some("portforward"), elsewhere),
        ("create", "", "pods", Some("eviction"), elsewhere),
        // Secrets: not even read, but in instance namespaces where it bound itself to
        // kapal-instance-secrets; never enumerated or deleted.
        ("get", "", "secrets", None, elsewhere),
        ("get", "", "secrets", None, None),
        ("list", "", "secrets", None, elsewhere),
        ("watch", "", "secrets", None, elsewhere),
        ("list", "", "secrets", None, None),
        ("delete", "", "secrets", None, elsewhere),
        ("update", "", "secrets", None, elsewhere),
        // Namespaces: listed by the orphan sweep, no watch, no update outside apply.
        ("watch", "", "namespaces", None, None),
        ("update", "", "namespaces", None, None),
        ("update", "", "namespaces", Some("finalize"), None),
        // Nothing deleted but whole namespaces, the workloads of a deleted instance and
        // stranded pods: never volumes on their own.
        ("deletecollection", "apps", "deployments", None, elsewhere),
        ("delete", "apps", "daemonsets", None, elsewhere),
        ("delete", "", "persistentvolumeclaims", None, elsewhere),
        ("delete", "", "resourcequotas", None, elsewhere),
        (
            "delete",
            "networking.k8s.io",
            "networkpolicies",
            None,
            elsewhere,
        ),
        ("deletecollection", "", "pods", None, elsewhere),
        ("update", "apps", "deployments", Some("scale"), elsewhere),
        // Not used at all.
        ("get", "", "configmaps", None, elsewhere),
        ("create", "", "events", None, elsewhere),
        ("create", "", "persistentvolumes", None, None),
        ("create", "apps", "daemonsets", None, elsewhere),
        ("create", "batch", "cronjobs", None, elsewhere),
        ("get", "batch", "jobs", None, elsewhere),
        (
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
            None,
        ),
        (
            "create",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
            None,
        ),
        (
            "create",
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            None,
            None,
        ),
        (
            "create",
            "certificates.k8s.io",
            "certificatesigningrequests",
            None,
            None,
        ),
        (
            "update",
            "certificates.k8s.io",
            "certificatesigningrequests",
            Some("approval"),
            None,
        ),
        ("create", "storage.k8s.io", "storageclasses", None, None),
        ("create", "cert-manager.io", "certificates", None, elsewhere),
    ];
    let mut allowed = Vec::new();
    for (verb, group, resource, sub, ns) in denied {
        if can(&sa, verb, group, resource, *sub, *ns, None).await? {
            allowed.push(format!(
                "{verb} {group}/{resource}{}",
                sub.map(|s| format!("/{s}")).unwrap_or_default()
            ));
        }
    }
    assert!(allowed.is_empty(), "the role allows too much: {allowed:?}");

    // And trying it for real is refused (all with dry-run, so nothing would change even if a
    // request got through).
    let dry_post = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let dry_delete = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    let admin_role: ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": unique_name("kapal-escalate") },
        "rules": [{ "apiGroups": ["*"], "resources": ["*"], "verbs": ["*"] }],
    }))?;
    forbidden(
        "creating a ClusterRole",
        Api::<ClusterRole>::all(sa.clone())
            .create(&dry_post, &admin_role)
            .await,
    );
    let escalation: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "escalate" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
        "subjects": [{ "kind": "ServiceAccount", "name": fenced.service_account(), "namespace": own_ns }],
    }))?;
    forbidden(
        "binding cluster-admin in its own namespace",
        Api::<RoleBinding>::namespaced(sa.clone(), &own_ns)
            .create(&dry_post, &escalation)
            .await,
    );
    let nodes = Api::<Node>::all(sa.clone());
    let node = kapal_tests::cluster::NODES[0];
    forbidden(
        "labelling a node",
        nodes
            .patch(
                node,
                &PatchParams::default().dry_run(),
                &Patch::Merge(json!({ "metadata": { "labels": { "kapal.dev/x": "y" } } })),
            )
            .await,
    );
    forbidden(
        "writing a node's status",
        nodes
            .patch_status(
                node,
                &PatchParams::default().dry_run(),
                &Patch::Merge(json!({ "status": { "conditions": [] } })),
            )
            .await,
    );
    forbidden("deleting a node", nodes.delete(node, &dry_delete).await);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "direct" },
        "spec": { "containers": [{ "name": "c", "image": "busybox" }] },
    }))?;
    forbidden(
        "creating a pod directly",
        Api::<Pod>::namespaced(sa.clone(), &own_ns)
            .create(&dry_post, &pod)
            .await,
    );
    forbidden(
        "listing kube-system's secrets",
        Api::<Secret>::namespaced(sa.clone(), "kube-system")
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "deleting a volume",
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(sa.clone(), &own_ns)
            .delete("data", &dry_delete)
            .await,
    );
    Ok(())
}
