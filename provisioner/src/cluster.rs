//! Every call to the Kubernetes API: converging an instance's objects with server-side apply
//! (one field manager), creating its credentials once, deleting its namespace, and reading what
//! the cluster shows of it.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kapal::catalog::{App, Plan};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::render::{
    self, CREDENTIALS_SECRET, FIELD_MANAGER, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, Objects,
    Settings, Workload,
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

/// Bytes of a quantity such as `2Gi`, `2560Mi`, `1G` or `1000000`; `None` when unparseable.
pub fn quantity_bytes(q: &Quantity) -> Option<u128> {
    let s = q.0.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let n: u128 = number.parse().ok()?;
    let factor: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
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
        Cluster { client }
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

    /// Converges the cluster to `spec`: applies every rendered object (or deletes the
    /// namespace when the instance is deleted). Idempotent: when nothing changed, no object
    /// changes either.
    pub async fn converge(
        &self,
        spec: &Spec,
        app: &App,
        plan: &Plan,
        settings: &Settings,
    ) -> Result<()> {
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
                return Ok(());
            }
            Owner::Absent if spec.desired == Desired::Deleted => return Ok(()),
            _ => {}
        }
        if spec.desired == Desired::Deleted {
            return self.delete_namespace(spec).await;
        }
        let objects = render::render(spec, app, plan, settings);
        self.apply_objects(spec, app, objects).await
    }

    async fn apply_objects(&self, spec: &Spec, app: &App, objects: Objects) -> Result<()> {
        let ns = spec.namespace.as_str();
        apply(
            &Api::<Namespace>::all(self.client.clone()),
            &objects.namespace,
        )
        .await?;
        // Quota and limits before any pod, so admission always sees them.
        apply(&self.namespaced(ns), &objects.quota).await?;
        apply(&self.namespaced(ns), &objects.limits).await?;
        for policy in &objects.network_policies {
            apply(&self.namespaced(ns), policy).await?;
        }
        self.ensure_credentials(spec, app).await?;
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
        Ok(())
    }

    /// Creates the credentials Secret if it does not exist. An existing Secret keeps every
    /// value; only keys the app needs and it lacks (a catalog update) are added.
    async fn ensure_credentials(&self, spec: &Spec, app: &App) -> Result<()> {
        let secrets: Api<Secret> = self.namespaced(&spec.namespace);
        let Some(existing) = secrets.get_opt(CREDENTIALS_SECRET).await? else {
            return match secrets
                .create(
                    &PostParams::default(),
                    &render::credentials_secret(spec, app),
                )
                .await
            {
                Ok(_) => Ok(()),
                // Created concurrently: that one stays.
                Err(e) if is_status(&e, &[409]) => Ok(()),
                Err(e) => Err(e.into()),
            };
        };
        let have = existing.data.unwrap_or_default();
        let fresh = render::credentials_secret(spec, app)
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
            .namespaced::<Secret>(&spec.namespace)
            .get_opt(CREDENTIALS_SECRET)
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
        if !ours || spec.desired == Desired::Deleted {
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
        let (deployments, stateful_sets, pods, volumes) = tokio::try_join!(
            deployments.list(&lp),
            stateful_sets.list(&lp),
            pods.list(&lp),
            volumes.list(&lp)
        )?;
        Ok(Observed {
            namespace: ns,
            deployments: deployments.items,
            stateful_sets: stateful_sets.items,
            pods: pods.items,
            volumes: volumes.items,
        })
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
        assert_eq!(quantity_bytes(&Quantity("1.5Gi".into())), None);
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
