//! Every call to the Kubernetes API: converging an instance's objects with server-side apply
//! (one field manager), creating its credentials once, deleting its namespace, and reading what
//! the cluster shows of it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{RoleBinding, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kapal::catalog::{App, Plan, WorkloadKind};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::fence;
use crate::render::{
    self, ANNOTATION_ORPHANED_SINCE, CREDENTIALS_SECRET, FIELD_MANAGER, LABEL_INSTANCE,
    LABEL_MANAGED_BY, MANAGED_BY, Objects, Settings, Workload,
};
use crate::spec::{Desired, Spec};
use crate::status::Observed;

/// Whose a namespace is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Absent,
    /// This instance's; `terminating` while it is being deleted.
    Ours {
        terminating: bool,
    },
    /// Something else's: never touched.
    Foreign,
}

#[derive(Clone)]
pub struct Cluster {
    client: Client,
    /// Who the provisioner is (learnt once, see [`Cluster::me`]).
    me: Arc<OnceCell<Subject>>,
}

fn is_status(e: &kube::Error, codes: &[u16]) -> bool {
    matches!(e, kube::Error::Api(s) if codes.contains(&s.code))
}

/// Server-side apply of `obj` as Kapal's one field manager, taking over conflicting fields.
async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

/// Bytes of a quantity such as `2Gi`, `2560Mi`, `1G`, `1.5Gi` or `1000000`; `None` when
/// unparseable or negative.
pub fn quantity_bytes(q: &Quantity) -> Option<u128> {
    crate::quantity::value(q).and_then(|v| u128::try_from(v).ok())
}

fn storage_request(pvc: &PersistentVolumeClaim) -> Option<&Quantity> {
    pvc.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
}

/// `desired` adjusted to what an existing claim allows: its storage class cannot change, and a
/// volume never shrinks (a plan downgrade keeps the larger volume).
pub fn adjust_volume(
    mut desired: PersistentVolumeClaim,
    existing: Option<&PersistentVolumeClaim>,
) -> PersistentVolumeClaim {
    let Some(existing) = existing else {
        return desired;
    };
    let existing_class = existing
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone());
    let existing_size = storage_request(existing).cloned();
    if let Some(spec) = desired.spec.as_mut() {
        spec.storage_class_name = existing_class;
        if let (Some(have), Some(requests)) = (
            existing_size,
            spec.resources.as_mut().and_then(|r| r.requests.as_mut()),
        ) {
            let want = requests.get("storage").and_then(quantity_bytes);
            if quantity_bytes(&have) >= want {
                requests.insert("storage".to_string(), have);
            }
        }
    }
    desired
}

impl Cluster {
    pub fn new(client: Client) -> Cluster {
        Cluster {
            client,
            me: Arc::new(OnceCell::new()),
        }
    }

    /// The provisioner's own RBAC subject, from a SelfSubjectReview at the first call (a failed
    /// review is asked again at the next call).
    pub async fn me(&self) -> Result<Subject> {
        self.me
            .get_or_try_init(|| async {
                let username = fence::whoami(&self.client).await?;
                let me = fence::subject_of(&username);
                tracing::info!(user = %username, kind = %me.kind, "the provisioner's Kubernetes identity");
                Ok::<_, Error>(me)
            })
            .await
            .cloned()
    }

    /// A Secret of an instance namespace, `None` if it does not exist. A refusal (403) is tried
    /// again for [`fence::BINDING_PROPAGATION`]: the read is allowed by the namespace's
    /// RoleBinding ([`fence::secrets_role_binding`]), which the RBAC authorizer may not know yet
    /// when it was just applied.
    async fn instance_secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
        let api: Api<Secret> = self.namespaced(namespace);
        let deadline = tokio::time::Instant::now() + fence::BINDING_PROPAGATION;
        loop {
            match api.get_opt(name).await {
                Err(e) if is_status(&e, &[403]) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(namespace, secret = name, error = %e, "Secret read refused; the RoleBinding may not be in effect yet");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                other => return Ok(other?),
            }
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn namespaced<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Whether `spec`'s namespace is absent, the instance's own, or someone else's.
    pub async fn owner(&self, spec: &Spec) -> Result<Owner> {
        let ns = Api::<Namespace>::all(self.client.clone())
            .get_opt(&spec.namespace)
            .await?;
        Ok(owner_of(ns.as_ref(), spec))
    }

    /// Converges the cluster to `spec`: applies every rendered object, or for a deleted
    /// instance deletes its workloads and, once its data is no longer kept (see
    /// [`Spec::delete_data_after`]), its namespace. Idempotent: when nothing changed, no object
    /// changes either. Returns when the instance needs converging again (its data is due for
    /// removal), if it does.
    pub async fn converge(
        &self,
        spec: &Spec,
        app: &App,
        plan: &Plan,
        settings: &Settings,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        match self.owner(spec).await? {
            Owner::Foreign => {
                return Err(Error::FailedPrecondition(format!(
                    "namespace {} exists and does not belong to instance {}",
                    spec.namespace, spec.instance_id
                )));
            }
            Owner::Ours { terminating: true } if spec.desired != Desired::Deleted => {
                // Objects cannot be created in a terminating namespace; the next resync
                // creates the instance once it is gone.
                tracing::info!(instance = %spec.instance_id, namespace = %spec.namespace, "namespace still terminating; waiting");
                return Ok(None);
            }
            Owner::Absent if spec.desired == Desired::Deleted => return Ok(None),
            _ => {}
        }
        if spec.desired == Desired::Deleted {
            if let Some(until) = spec.data_kept_until(now) {
                self.delete_workloads(spec, app).await?;
                return Ok(Some(until));
            }
            self.delete_namespace(spec).await?;
            return Ok(None);
        }
        let objects = render::render(spec, app, plan, settings);
        self.apply_objects(spec, app, settings, objects).await?;
        Ok(None)
    }

    /// Deletes the instance's Ingress, Services, workloads and setup job (their pods go with
    /// them); its
    /// volumes, Secrets, quota, policies and namespace stay.
    async fn delete_workloads(&self, spec: &Spec, app: &App) -> Result<()> {
        let ns = spec.namespace.as_str();
        let params = DeleteParams::background();
        let gone = |r: Result<(), kube::Error>| match r {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, &[404]) => Ok(()),
            Err(e) => Err(Error::from(e)),
        };
        gone(
            self.namespaced::<Ingress>(ns)
                .delete(render::INGRESS_NAME, &params)
                .await
                .map(drop),
        )?;
        for c in &app.components {
            gone(
                self.namespaced::<Service>(ns)
                    .delete(&c.name, &params)
                    .await
                    .map(drop),
            )?;
            let deleted = match c.kind {
                WorkloadKind::Deployment => self
                    .namespaced::<Deployment>(ns)
                    .delete(&c.name, &params)
                    .await
                    .map(drop),
                WorkloadKind::StatefulSet => self
                    .namespaced::<StatefulSet>(ns)
                    .delete(&c.name, &params)
                    .await
                    .map(drop),
            };
            gone(deleted)?;
        }
        gone(
            self.namespaced::<Job>(ns)
                .delete(render::SETUP_JOB, &params)
                .await
                .map(drop),
        )?;
        Ok(())
    }

    async fn apply_objects(
        &self,
        spec: &Spec,
        app: &App,
        settings: &Settings,
        objects: Objects,
    ) -> Result<()> {
        let ns = spec.namespace.as_str();
        apply(
            &Api::<Namespace>::all(self.client.clone()),
            &objects.namespace,
        )
        .await?;
        // Before any Secret is read: the provisioner may read Secrets only where it bound
        // itself to read them.
        let me = self.me().await?;
        apply(
            &self.namespaced::<RoleBinding>(ns),
            &fence::secrets_role_binding(spec, &settings.partition, &me),
        )
        .await?;
        // Quota and limits before any pod, so admission always sees them.
        apply(&self.namespaced(ns), &objects.quota).await?;
        apply(&self.namespaced(ns), &objects.limits).await?;
        for policy in &objects.network_policies {
            apply(&self.namespaced(ns), policy).await?;
        }
        self.ensure_credentials(spec, app, settings).await?;
        if let Some((source_ns, source_name)) = settings.wildcard_tls_source() {
            // Copied at every convergence: a renewed certificate reaches every namespace by
            // the next resync.
            let source = match self
                .namespaced::<Secret>(source_ns)
                .get_opt(source_name)
                .await
            {
                Err(e) if is_status(&e, &[403]) => {
                    return Err(Error::Internal(format!(
                        "the provisioner may not read the wildcard certificate Secret {source_ns}/{source_name}: grant it with deploy/k3s/optional/wildcard-tls-source.yaml ({e})"
                    )));
                }
                other => other?,
            }
            .ok_or_else(|| {
                    Error::Internal(format!(
                        "the wildcard certificate Secret {source_ns}/{source_name} does not exist"
                    ))
                })?;
            apply(
                &self.namespaced::<Secret>(ns),
                &render::wildcard_tls_copy(spec, settings, &source),
            )
            .await?;
        }
        let volumes: Api<PersistentVolumeClaim> = self.namespaced(ns);
        for desired in objects.volumes {
            let name = desired.metadata.name.clone().unwrap_or_default();
            let existing = volumes.get_opt(&name).await?;
            let adjusted = adjust_volume(desired, existing.as_ref());
            match apply(&volumes, &adjusted).await {
                Ok(_) => {}
                // Growing a volume needs a storage class that can expand; keep the size it has.
                Err(e) if is_status(&e, &[403, 422]) => {
                    let Some(size) = existing.as_ref().and_then(storage_request).cloned() else {
                        return Err(e.into());
                    };
                    tracing::warn!(instance = %spec.instance_id, volume = %name, error = %e, "cannot resize the volume; keeping its size");
                    let mut unchanged = adjusted;
                    if let Some(requests) = unchanged
                        .spec
                        .as_mut()
                        .and_then(|s| s.resources.as_mut())
                        .and_then(|r| r.requests.as_mut())
                    {
                        requests.insert("storage".to_string(), size);
                    }
                    apply(&volumes, &unchanged).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        for service in &objects.services {
            apply(&self.namespaced(ns), service).await?;
        }
        for workload in &objects.workloads {
            match workload {
                Workload::Deployment(d) => {
                    apply(&self.namespaced::<Deployment>(ns), d).await?;
                }
                Workload::StatefulSet(s) => {
                    apply(&self.namespaced::<StatefulSet>(ns), s).await?;
                }
            }
        }
        apply(&self.namespaced(ns), &objects.ingress).await?;
        if let Some(job) = &objects.setup {
            let jobs: Api<Job> = self.namespaced(ns);
            match apply(&jobs, job).await {
                Ok(_) => {}
                // A Job's pod template cannot change: the old one goes, and the next
                // convergence runs the new one (setup jobs are idempotent).
                Err(e) if is_status(&e, &[422]) => {
                    tracing::info!(instance = %spec.instance_id, error = %e, "the setup job changed; replacing it");
                    match jobs
                        .delete(render::SETUP_JOB, &DeleteParams::background())
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_status(&e, &[404]) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Creates the credentials Secret if it does not exist. An existing Secret keeps every
    /// value; only keys the app needs and it lacks (a catalog update) are added.
    async fn ensure_credentials(&self, spec: &Spec, app: &App, settings: &Settings) -> Result<()> {
        let secrets: Api<Secret> = self.namespaced(&spec.namespace);
        let Some(existing) = self
            .instance_secret(&spec.namespace, CREDENTIALS_SECRET)
            .await?
        else {
            let secret = render::credentials_secret(spec, app, settings);
            return match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => Ok(()),
                // Created concurrently: that one stays.
                Err(e) if is_status(&e, &[409]) => Ok(()),
                Err(e) => Err(e.into()),
            };
        };
        let have = existing.data.unwrap_or_default();
        let fresh = render::credentials_secret(spec, app, settings)
            .string_data
            .unwrap_or_default();
        let missing: BTreeMap<String, String> = fresh
            .into_iter()
            .filter(|(k, _)| !have.contains_key(k))
            .collect();
        if !missing.is_empty() {
            tracing::info!(instance = %spec.instance_id, keys = ?missing.keys().collect::<Vec<_>>(), "adding new keys to the credentials");
            let patch = serde_json::json!({ "stringData": missing });
            secrets
                .patch(
                    CREDENTIALS_SECRET,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes the instance's namespace and with it everything in it (only if it is ours).
    async fn delete_namespace(&self, spec: &Spec) -> Result<()> {
        let api = Api::<Namespace>::all(self.client.clone());
        match api
            .delete(&spec.namespace, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, &[404, 409]) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The credentials Secret's values, `None` when it does not exist (or the namespace is not
    /// the instance's).
    pub async fn credentials(&self, spec: &Spec) -> Result<Option<BTreeMap<String, String>>> {
        if !matches!(self.owner(spec).await?, Owner::Ours { .. }) {
            return Ok(None);
        }
        let secret = self
            .instance_secret(&spec.namespace, CREDENTIALS_SECRET)
            .await?;
        Ok(secret.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect()
        }))
    }

    /// Force-deletes the instance's pods that were evicted (they are terminating) from a node
    /// that is not Ready: no kubelet will ever confirm their end, and until they are gone they
    /// hold the namespace's quota (so a Deployment's replacement pod is refused for minutes, until
    /// the quota controller's next full resync) and a StatefulSet never recreates its pod.
    /// Eviction only happens after the node-failure toleration ran out, so the node has been
    /// unreachable for a while; the volume is ReadWriteOnce and the app's only writer is gone.
    /// Returns how many pods were released.
    pub async fn release_stranded_pods(&self, spec: &Spec, pods: &[Pod]) -> Result<usize> {
        let nodes = Api::<Node>::all(self.client.clone());
        let api: Api<Pod> = self.namespaced(&spec.namespace);
        let mut released = 0;
        for pod in pods {
            let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_none() {
                continue;
            }
            let node_ready = nodes.get_opt(node_name).await?.is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if node_ready {
                continue;
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            tracing::warn!(instance = %spec.instance_id, pod = %name, node = node_name, "releasing a pod evicted from a failed node");
            match api
                .delete(
                    &name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::background()
                    },
                )
                .await
            {
                Ok(_) => released += 1,
                Err(e) if is_status(&e, &[404]) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(released)
    }

    /// What the cluster shows of the instance now.
    pub async fn observe(&self, spec: &Spec) -> Result<Observed> {
        let ns = Api::<Namespace>::all(self.client.clone())
            .get_opt(&spec.namespace)
            .await?;
        let ours = matches!(owner_of(ns.as_ref(), spec), Owner::Ours { .. });
        if !ours {
            return Ok(Observed {
                namespace: ns.filter(|_| ours),
                ..Observed::default()
            });
        }
        let lp = ListParams::default().labels(&format!("{LABEL_INSTANCE}={}", spec.instance_id));
        let n = spec.namespace.as_str();
        let (deployments, stateful_sets, pods, volumes) = (
            self.namespaced::<Deployment>(n),
            self.namespaced::<StatefulSet>(n),
            self.namespaced::<Pod>(n),
            self.namespaced::<PersistentVolumeClaim>(n),
        );
        let jobs = self.namespaced::<Job>(n);
        let (deployments, stateful_sets, pods, volumes, setup) = tokio::try_join!(
            deployments.list(&lp),
            stateful_sets.list(&lp),
            pods.list(&lp),
            volumes.list(&lp),
            jobs.list(&lp)
        )?;
        let setup = setup
            .items
            .into_iter()
            .find(|j| j.metadata.name.as_deref() == Some(render::SETUP_JOB));
        Ok(Observed {
            namespace: ns,
            deployments: deployments.items,
            stateful_sets: stateful_sets.items,
            pods: pods.items,
            volumes: volumes.items,
            setup,
            setup_pods: Vec::new(),
        })
    }
}

/// The metrics API's group and version (metrics-server).
const METRICS_GROUP: &str = "metrics.k8s.io";
const METRICS_VERSION: &str = "v1beta1";

/// What the cluster shows of an instance's resource use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU millicores and memory bytes in use, summed over the instance's pods; `None` when the
    /// cluster serves no metrics API.
    pub metrics: Option<(i64, i64)>,
    /// How many pods the metrics API reported.
    pub pods_measured: usize,
    /// Capacity of the instance's bound volumes, bytes.
    pub storage_capacity_bytes: i64,
}

/// A namespace of Kapal's, as the orphan sweep sees it.
#[derive(Clone, Debug)]
pub struct KapalNamespace {
    pub name: String,
    /// The instance it was made for (`None`: the label is missing or not a UUID).
    pub instance: Option<uuid::Uuid>,
    /// When it was first seen orphaned ([`ANNOTATION_ORPHANED_SINCE`]).
    pub orphaned_since: Option<DateTime<Utc>>,
    pub terminating: bool,
}

impl Cluster {
    /// Nodes and the requests of the pods bound to them (GetCapacity), read now.
    pub async fn capacity(&self) -> Result<kapal::proto::v1::Capacity> {
        let nodes = Api::<Node>::all(self.client.clone());
        let pods = Api::<Pod>::all(self.client.clone());
        let unfinished =
            ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
        let all = ListParams::default();
        let (nodes, pods) = tokio::try_join!(nodes.list(&all), list_all(&pods, unfinished))?;
        Ok(crate::capacity::compute(&nodes.items, &pods))
    }

    /// Whether the API server serves the metrics API (`metrics.k8s.io/v1beta1`).
    pub async fn has_metrics_api(&self) -> Result<bool> {
        let groups = self.client.list_api_groups().await?;
        Ok(groups.groups.iter().any(|g| {
            g.name == METRICS_GROUP && g.versions.iter().any(|v| v.version == METRICS_VERSION)
        }))
    }

    /// The instance's CPU and memory in use (from the metrics API, when the cluster has one)
    /// and the capacity of its bound volumes.
    pub async fn usage(&self, spec: &Spec) -> Result<Usage> {
        let mut usage = Usage::default();
        if !matches!(self.owner(spec).await?, Owner::Ours { .. }) {
            return Ok(usage);
        }
        let lp = ListParams::default().labels(&format!("{LABEL_INSTANCE}={}", spec.instance_id));
        let volumes = self
            .namespaced::<PersistentVolumeClaim>(&spec.namespace)
            .list(&lp)
            .await?;
        usage.storage_capacity_bytes = volumes
            .items
            .iter()
            .filter(|v| v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .filter_map(|v| v.status.as_ref()?.capacity.as_ref()?.get("storage"))
            .filter_map(crate::quantity::value)
            .fold(0i64, i64::saturating_add);
        if self.has_metrics_api().await? {
            let resource = ApiResource {
                group: METRICS_GROUP.to_string(),
                version: METRICS_VERSION.to_string(),
                api_version: format!("{METRICS_GROUP}/{METRICS_VERSION}"),
                kind: "PodMetrics".to_string(),
                plural: "pods".to_string(),
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &spec.namespace, &resource);
            let metrics = api.list(&lp).await?;
            let (mut cpu, mut memory) = (0i64, 0i64);
            for pod in &metrics.items {
                for c in pod.data["containers"].as_array().into_iter().flatten() {
                    let q = |key: &str| Quantity(c["usage"][key].as_str().unwrap_or("0").into());
                    cpu = cpu.saturating_add(crate::quantity::milli_value(&q("cpu")).unwrap_or(0));
                    memory =
                        memory.saturating_add(crate::quantity::value(&q("memory")).unwrap_or(0));
                }
            }
            usage.metrics = Some((cpu, memory));
            usage.pods_measured = metrics.items.len();
        }
        Ok(usage)
    }

    /// Kapal's namespaces of `partition` (see [`render::LABEL_PARTITION`]).
    pub async fn partition_namespaces(&self, partition: &str) -> Result<Vec<KapalNamespace>> {
        let lp = ListParams::default().labels(&format!(
            "{LABEL_MANAGED_BY}={MANAGED_BY},{}={partition}",
            render::LABEL_PARTITION
        ));
        let list = Api::<Namespace>::all(self.client.clone()).list(&lp).await?;
        Ok(list
            .items
            .into_iter()
            .map(|ns| KapalNamespace {
                instance: ns
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_INSTANCE))
                    .and_then(|v| uuid::Uuid::parse_str(v).ok()),
                orphaned_since: ns
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_ORPHANED_SINCE))
                    .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                    .map(|t| t.with_timezone(&Utc)),
                terminating: ns.metadata.deletion_timestamp.is_some(),
                name: ns.metadata.name.unwrap_or_default(),
            })
            .collect())
    }

    /// Sets (`Some`) or removes (`None`) a namespace's orphan mark.
    pub async fn mark_orphaned(&self, namespace: &str, since: Option<DateTime<Utc>>) -> Result<()> {
        let value = since.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let patch = serde_json::json!({
            "metadata": { "annotations": { ANNOTATION_ORPHANED_SINCE: value } }
        });
        Api::<Namespace>::all(self.client.clone())
            .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Deletes a namespace of Kapal's by name (the orphan sweep).
    pub async fn delete_namespace_named(&self, namespace: &str) -> Result<()> {
        match Api::<Namespace>::all(self.client.clone())
            .delete(namespace, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, &[404, 409]) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Every object of a list, page by page.
pub async fn list_all<K>(api: &Api<K>, lp: ListParams) -> Result<Vec<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut lp = lp.limit(500);
    let mut items = Vec::new();
    loop {
        let page = api.list(&lp).await?;
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
            _ => return Ok(items),
        }
    }
}

fn owner_of(ns: Option<&Namespace>, spec: &Spec) -> Owner {
    let Some(ns) = ns else { return Owner::Absent };
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    let ours = labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(LABEL_INSTANCE) == Some(&spec.instance_id.to_string());
    if !ours {
        return Owner::Foreign;
    }
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    Owner::Ours { terminating }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pvc(class: Option<&str>, size: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": { "name": "app-data" },
            "spec": { "storageClassName": class, "resources": { "requests": { "storage": size } } },
        }))
        .expect("pvc")
    }

    #[test]
    fn quantities_parse_to_bytes() {
        assert_eq!(quantity_bytes(&Quantity("2Gi".into())), Some(2 << 30));
        assert_eq!(quantity_bytes(&Quantity("2560Mi".into())), Some(2560 << 20));
        assert_eq!(quantity_bytes(&Quantity("1G".into())), Some(1_000_000_000));
        assert_eq!(quantity_bytes(&Quantity("42".into())), Some(42));
        assert_eq!(quantity_bytes(&Quantity("1.5Gi".into())), Some(3 << 29));
        assert_eq!(quantity_bytes(&Quantity("-1".into())), None);
        assert_eq!(quantity_bytes(&Quantity("lots".into())), None);
    }

    #[test]
    fn an_existing_volume_keeps_its_class_and_never_shrinks() {
        let desired = pvc(None, "1Gi");
        assert_eq!(adjust_volume(desired.clone(), None), desired);
        let existing = pvc(Some("local-path"), "2Gi");
        let adjusted = adjust_volume(desired, Some(&existing));
        assert_eq!(
            adjusted
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref()),
            Some("local-path")
        );
        assert_eq!(
            storage_request(&adjusted).map(|q| q.0.as_str()),
            Some("2Gi")
        );
        let grown = adjust_volume(pvc(None, "5Gi"), Some(&existing));
        assert_eq!(storage_request(&grown).map(|q| q.0.as_str()), Some("5Gi"));
    }

    #[test]
    fn only_a_namespace_labelled_for_the_instance_is_ours() {
        let spec = Spec {
            instance_id: uuid::Uuid::new_v4(),
            account_id: uuid::Uuid::new_v4(),
            customer_id: "c1".into(),
            app_id: "n8n".into(),
            plan_id: "trial".into(),
            hostname: "c1.n8n.example".into(),
            namespace: "kapal-c1".into(),
            desired: Desired::Running,
            restart_generation: 0,
            delete_data_after: None,
            suspended_by_billing: false,
        };
        let ns = |labels: serde_json::Value| -> Namespace {
            serde_json::from_value(json!({ "metadata": { "name": "kapal-c1", "labels": labels } }))
                .expect("ns")
        };
        assert_eq!(owner_of(None, &spec), Owner::Absent);
        assert_eq!(owner_of(Some(&ns(json!({}))), &spec), Owner::Foreign);
        let other = ns(
            json!({ LABEL_MANAGED_BY: MANAGED_BY, LABEL_INSTANCE: uuid::Uuid::new_v4().to_string() }),
        );
        assert_eq!(owner_of(Some(&other), &spec), Owner::Foreign);
        let ours = ns(
            json!({ LABEL_MANAGED_BY: MANAGED_BY, LABEL_INSTANCE: spec.instance_id.to_string() }),
        );
        assert_eq!(
            owner_of(Some(&ours), &spec),
            Owner::Ours { terminating: false }
        );
    }
}
