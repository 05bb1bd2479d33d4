//! The provisioner against the real local control plane (`scripts/local-cluster`): it is started
//! with `run` on a free port, next to a real tonic server standing in for the control-plane's
//! InstanceStateService (it records reports and serves a desired list), and called over gRPC the
//! way the control-plane calls it. Each test uses its own customer, instance and namespace, so
//! they run in parallel; namespaces are deleted at the end, or on drop after a failure.
//!
//! The provisioner runs as it does in production: as a ServiceAccount with exactly
//! `deploy/k3s`'s ClusterRole and under its admission policy, for the test's partition
//! (`kapal_tests::fence::FencedIdentity`); the tests' own setup and assertions use the admin.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Affinity, LimitRange, Namespace, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service,
    Toleration,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kapal::auth::{InternalKey, Principal, Role, VerifyPrincipal};
use kapal::catalog::Catalog;
use kapal::db::DbConfig;
use kapal::proto::internal::v1::instance_state_service_server::InstanceStateServiceServer;
use kapal::proto::internal::v1::provisioner_service_client::ProvisionerServiceClient;
use kapal::proto::internal::v1::{
    ApplyInstanceRequest, GetCapacityRequest, GetCredentialsRequest, GetInstanceStateRequest,
    GetUsageRequest, InstanceSpec, InstanceState,
};
use kapal::proto::v1::{Credentials, DesiredState, InstanceStatus};
use kapal::serve::InternalChannel;
use kapal_tests::cluster::{TempNode, TestNamespace, cluster, wait_for};
use kapal_tests::fake::{ControlPlane as FakeControlPlane, free_listener, lock};
use kapal_tests::fence::FencedIdentity;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Code, Request, Status};
use uuid::Uuid;

const READY_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// The provisioner under test.

struct Provisioner {
    client: ProvisionerServiceClient<InternalChannel>,
    key: InternalKey,
    endpoint: String,
    control_plane: FakeControlPlane,
    /// Where the (fake) control-plane listens.
    control_plane_endpoint: String,
    kube: Client,
    stop: Vec<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The provisioner's Kubernetes identity (dropped after the provisioner stops).
    _fenced: FencedIdentity,
}

struct Options {
    catalog: Arc<Catalog>,
    data_dir: std::path::PathBuf,
    unschedulable_grace: Duration,
    control_plane: FakeControlPlane,
    resync_interval: Duration,
    extra_tolerations: Vec<Toleration>,
    affinity: Option<Affinity>,
    /// Unique per test: the orphan sweep never sees another test's namespaces.
    partition: String,
    sweep_interval: Duration,
    orphan_safety_delay: Duration,
    tls_secret: Option<String>,
}

impl Options {
    fn new(data_dir: &std::path::Path) -> anyhow::Result<Options> {
        Ok(Options {
            catalog: Arc::new(Catalog::load(&kapal::catalog::repo_catalog_dir())?),
            data_dir: data_dir.to_path_buf(),
            unschedulable_grace: Duration::from_secs(120),
            control_plane: FakeControlPlane::default(),
            resync_interval: Duration::from_secs(2),
            extra_tolerations: Vec::new(),
            affinity: None,
            partition: kapal_tests::cluster::unique_name("test"),
            sweep_interval: Duration::from_secs(60),
            orphan_safety_delay: Duration::from_secs(600),
            tls_secret: None,
        })
    }
}

impl Provisioner {
    /// Runs the provisioner as it runs in production: as a ServiceAccount with exactly
    /// `deploy/k3s`'s ClusterRole, under its admission policy for the test's partition (a
    /// [`FencedIdentity`]), and allowed to read the wildcard certificate when there is one.
    /// The test's own setup and assertions use the admin client ([`Provisioner::kube`]).
    async fn start(options: Options) -> anyhow::Result<Provisioner> {
        kapal::serve::init_tracing(false);
        let cluster = cluster().await?;
        let key = InternalKey::random();
        let fenced = FencedIdentity::new(&options.partition).await?;
        if let Some((ns, name)) = options
            .tls_secret
            .as_deref()
            .and_then(|s| s.split_once('/'))
        {
            fenced.allow_secret_read(ns, name).await?;
        }

        let (cp_listener, cp_endpoint) = free_listener().await?;
        let (cp_stop, cp_stopped) = oneshot::channel::<()>();
        let router =
            tonic::transport::Server::builder().add_service(VerifyPrincipal(key.clone()).wrap(
                InstanceStateServiceServer::new(options.control_plane.clone()),
            ));
        tokio::spawn(kapal::serve::serve(router, cp_listener, async {
            let _ = cp_stopped.await;
        }));
        let control_plane_endpoint = cp_endpoint.clone();

        let mut config = kapal_provisioner::Config::new(
            DbConfig::DataDir(options.data_dir.clone()),
            options.catalog,
            key.clone(),
            fenced.kube_config().await?,
            cp_endpoint,
        );
        config.resync_interval = options.resync_interval;
        config.unschedulable_grace = options.unschedulable_grace;
        config.extra_tolerations = options.extra_tolerations;
        config.affinity = options.affinity;
        config.partition = options.partition;
        config.sweep_interval = options.sweep_interval;
        config.orphan_safety_delay = options.orphan_safety_delay;
        config.tls_secret = options.tls_secret;
        let (listener, endpoint) = free_listener().await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(kapal_provisioner::run(config, listener, async {
            let _ = stopped.await;
        }));
        let client =
            ProvisionerServiceClient::new(kapal::serve::internal_channel(&endpoint, &key)?);
        Ok(Provisioner {
            client,
            key,
            endpoint,
            control_plane: options.control_plane,
            control_plane_endpoint,
            kube: cluster.client(),
            stop: vec![stop, cp_stop],
            task: Some(task),
            _fenced: fenced,
        })
    }

    /// Stops the provisioner (and its control-plane) and returns what `run` returned.
    async fn shutdown(mut self) -> anyhow::Result<()> {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .context("the provisioner did not stop within 10 s")??,
            None => Ok(()),
        }
    }

    async fn apply(&self, spec: &InstanceSpec) -> Result<InstanceState, Status> {
        let req = ApplyInstanceRequest {
            spec: Some(spec.clone()),
        };
        Ok(self.client.clone().apply_instance(req).await?.into_inner())
    }

    async fn state(&self, id: &str) -> Result<InstanceState, Status> {
        let req = GetInstanceStateRequest {
            instance_id: id.to_string(),
        };
        Ok(self
            .client
            .clone()
            .get_instance_state(req)
            .await?
            .into_inner())
    }

    async fn credentials(&self, id: &str) -> Result<Credentials, Status> {
        let req = GetCredentialsRequest {
            instance_id: id.to_string(),
        };
        Ok(self.client.clone().get_credentials(req).await?.into_inner())
    }

    async fn capacity(&self) -> Result<kapal::proto::v1::Capacity, Status> {
        Ok(self
            .client
            .clone()
            .get_capacity(GetCapacityRequest {})
            .await?
            .into_inner())
    }

    async fn usage(&self, id: &str) -> Result<kapal::proto::v1::InstanceUsage, Status> {
        let req = GetUsageRequest {
            instance_id: id.to_string(),
        };
        Ok(self.client.clone().get_usage(req).await?.into_inner())
    }

    async fn wait_status(&self, id: &str, status: InstanceStatus) -> anyhow::Result<InstanceState> {
        let last = Arc::new(Mutex::new(None::<InstanceState>));
        let seen = last.clone();
        wait_for(
            &format!("instance {id} to be {}", status.as_str_name()),
            READY_TIMEOUT,
            || {
                let seen = seen.clone();
                async move {
                    let state = self.state(id).await?;
                    *lock(&seen) = Some(state.clone());
                    Ok((state.status == status as i32).then_some(state))
                }
            },
        )
        .await
        .with_context(|| format!("last state: {:?}", lock(&last)))
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// Deletes an instance's namespace when the test ends, however it ends.
struct Cleanup {
    namespace: String,
    config: kube::Config,
}

impl Cleanup {
    async fn new(namespace: &str) -> anyhow::Result<Cleanup> {
        Ok(Cleanup {
            namespace: namespace.to_string(),
            config: cluster().await?.config().clone(),
        })
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (name, config) = (self.namespace.clone(), self.config.clone());
        // The test's runtime may be shutting down: delete on a thread of its own, best effort.
        kapal_tests::cluster::best_effort(config, move |client| async move {
            let _ = Api::<Namespace>::all(client)
                .delete(&name, &DeleteParams::background())
                .await;
            Ok(())
        });
    }
}

fn spec(app: &str, plan: &str) -> InstanceSpec {
    let instance = Uuid::new_v4();
    let customer = format!("t{}", &Uuid::new_v4().simple().to_string()[..8]);
    InstanceSpec {
        instance_id: instance.to_string(),
        account_id: Uuid::new_v4().to_string(),
        customer_id: customer.clone(),
        app_id: app.to_string(),
        plan_id: plan.to_string(),
        hostname: format!("{customer}.{app}.kapal.test"),
        namespace: format!("kapal-{customer}-{app}"),
        desired_state: DesiredState::Running as i32,
        restart_generation: 0,
        delete_data_after: None,
        suspended_by_billing: false,
    }
}

fn namespaced<K>(client: &Client, ns: &str) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), ns)
}

/// `Kind/name` -> resourceVersion of every object Kapal manages in `ns` (and the namespace).
async fn versions(client: &Client, ns: &str) -> anyhow::Result<BTreeMap<String, String>> {
    async fn add<K>(
        client: &Client,
        ns: &str,
        out: &mut BTreeMap<String, String>,
    ) -> anyhow::Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        for obj in namespaced::<K>(client, ns)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kapal"))
            .await?
        {
            out.insert(
                format!("{}/{}", K::kind(&()), obj.name_any()),
                obj.resource_version().unwrap_or_default(),
            );
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    let namespace = Api::<Namespace>::all(client.clone()).get(ns).await?;
    out.insert(
        "Namespace".to_string(),
        namespace.resource_version().unwrap_or_default(),
    );
    add::<Secret>(client, ns, &mut out).await?;
    add::<PersistentVolumeClaim>(client, ns, &mut out).await?;
    add::<Service>(client, ns, &mut out).await?;
    add::<Deployment>(client, ns, &mut out).await?;
    add::<StatefulSet>(client, ns, &mut out).await?;
    add::<Ingress>(client, ns, &mut out).await?;
    add::<ResourceQuota>(client, ns, &mut out).await?;
    add::<LimitRange>(client, ns, &mut out).await?;
    add::<NetworkPolicy>(client, ns, &mut out).await?;
    Ok(out)
}

/// [`versions`] once the cluster's own controllers are done with the objects (the volume
/// binder and quota controller update them for a while after the app is ready): two readings
/// three seconds (more than a resync) apart agree.
async fn settled_versions(client: &Client, ns: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut last = versions(client, ns).await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = versions(client, ns).await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    bail!("the objects in {ns} keep changing: {last:?}")
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The pods of the instance's components (not of its setup Job, whose finished pod stays).
async fn pods(client: &Client, ns: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(namespaced::<Pod>(client, ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.labels().get("kapal.dev/component").map(String::as_str) != Some("setup"))
        .collect())
}

async fn pvc_phase(client: &Client, ns: &str, name: &str) -> anyhow::Result<String> {
    let pvc = namespaced::<PersistentVolumeClaim>(client, ns)
        .get(name)
        .await?;
    Ok(pvc
        .status
        .and_then(|s| s.phase)
        .unwrap_or_else(|| "Pending".into()))
}

fn code(result: Result<impl Debug, Status>) -> Code {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_n8n_instance_lives_its_whole_life() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = Provisioner::start(Options::new(dir.path())?).await?;
    let mut spec = spec("n8n", "trial");
    let id = spec.instance_id.clone();
    let ns = spec.namespace.clone();
    let _cleanup = Cleanup::new(&ns).await?;
    let kube = p.kube.clone();

    // Apply: every object exists, labelled, and the app comes up.
    let applied = p.apply(&spec).await?;
    assert_eq!(applied.instance_id, id);
    assert!(
        [
            InstanceStatus::Provisioning as i32,
            InstanceStatus::Ready as i32
        ]
        .contains(&applied.status),
        "{applied:?}"
    );
    let ready = p.wait_status(&id, InstanceStatus::Ready).await?;
    assert_eq!(ready.reason, "The app is running.");
    p.control_plane
        .wait_reported(&id, InstanceStatus::Ready, READY_TIMEOUT)
        .await?;

    let namespace = Api::<Namespace>::all(kube.clone()).get(&ns).await?;
    let labels = namespace.labels();
    for (k, v) in [
        ("app.kubernetes.io/managed-by", "kapal"),
        ("kapal.dev/instance", id.as_str()),
        ("kapal.dev/customer", spec.customer_id.as_str()),
        ("kapal.dev/app", "n8n"),
        ("pod-security.kubernetes.io/enforce", "restricted"),
    ] {
        assert_eq!(
            labels.get(k).map(String::as_str),
            Some(v),
            "namespace label {k}"
        );
    }
    let deployment = namespaced::<Deployment>(&kube, &ns).get("app").await?;
    assert_eq!(
        deployment.status.as_ref().and_then(|s| s.ready_replicas),
        Some(1)
    );
    let running = pods(&kube, &ns).await?;
    assert_eq!(running.len(), 1, "one pod");
    assert_eq!(phase(&running[0]), "Running");
    // The namespace enforces the restricted Pod Security Standard (n8n runs as uid 1000, its pod
    // above was admitted): a privileged pod, or one running as root that baseline would take, is
    // refused.
    for (what, pod) in [
        (
            "privileged",
            serde_json::json!({ "name": "c", "image": "busybox:1.37", "securityContext": { "privileged": true } }),
        ),
        (
            "root",
            serde_json::json!({ "name": "c", "image": "busybox:1.37" }),
        ),
    ] {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": format!("psa-{what}") },
            "spec": { "containers": [pod] },
        }))?;
        let refused = namespaced::<Pod>(&kube, &ns)
            .create(
                &kube::api::PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &pod,
            )
            .await
            .expect_err(what);
        assert!(
            matches!(&refused, kube::Error::Api(s) if s.code == 403 && s.message.contains("violates PodSecurity \"restricted")),
            "{what}: {refused:?}"
        );
    }
    assert_eq!(
        running[0].labels().get("kapal.dev/instance"),
        Some(&id),
        "pods carry the instance label"
    );
    assert_eq!(pvc_phase(&kube, &ns, "app-data").await?, "Bound");
    let service = namespaced::<Service>(&kube, &ns).get("app").await?;
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    assert!(
        cluster_ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "ClusterIP {cluster_ip:?}"
    );
    let ingress = namespaced::<Ingress>(&kube, &ns).get("kapal-web").await?;
    let ingress_spec = ingress.spec.unwrap_or_default();
    assert_eq!(ingress_spec.ingress_class_name.as_deref(), Some("traefik"));
    assert_eq!(
        ingress_spec.rules.unwrap_or_default()[0].host.as_deref(),
        Some(spec.hostname.as_str())
    );
    let quota = namespaced::<ResourceQuota>(&kube, &ns)
        .get("kapal-quota")
        .await?;
    let used = quota.status.and_then(|s| s.used).unwrap_or_default();
    assert_eq!(
        used.get("pods").map(|q| q.0.as_str()),
        Some("1"),
        "{used:?}"
    );
    // The tenant boundary as the API server stored it (it validates every ipBlock's except
    // list lies inside its CIDR): all traffic in and out denied but for the allowed kinds.
    let policies = namespaced::<NetworkPolicy>(&kube, &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let mut names: Vec<_> = policies.iter().map(|p| p.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "kapal-allow-cluster-dns",
            "kapal-allow-ingress-controller",
            "kapal-allow-internet",
            "kapal-allow-same-namespace",
            "kapal-default-deny"
        ]
    );
    let deny = policies
        .iter()
        .find(|p| p.name_any() == "kapal-default-deny")
        .and_then(|p| p.spec.clone())
        .context("the default-deny policy")?;
    assert_eq!(
        deny.policy_types.unwrap_or_default(),
        ["Ingress", "Egress"],
        "both directions denied by default"
    );
    let internet = policies
        .iter()
        .find(|p| p.name_any() == "kapal-allow-internet")
        .and_then(|p| p.spec.clone())
        .and_then(|s| s.egress)
        .context("the internet policy's egress")?;
    let blocks: Vec<_> = internet[0]
        .to
        .iter()
        .flatten()
        .filter_map(|peer| peer.ip_block.clone())
        .collect();
    assert_eq!(blocks[0].cidr, "0.0.0.0/0");
    let except = blocks[0].except.clone().unwrap_or_default();
    for denied in [
        "10.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "100.64.0.0/10",
    ] {
        assert!(except.iter().any(|e| e == denied), "{denied} in {except:?}");
    }
    assert_eq!(blocks[1].cidr, "::/0");

    // Credentials are generated once and stay.
    let credentials = p.credentials(&id).await?;
    assert_eq!(credentials.username, format!("owner@{}", spec.hostname));
    assert_eq!(credentials.password.len(), 24);
    assert_eq!(
        credentials.login_url,
        format!("https://{}/signin", spec.hostname)
    );

    // Applying the same spec again, and the resync loop running over it, change nothing.
    let before = settled_versions(&kube, &ns).await?;
    assert!(
        before.len() >= 10,
        "namespace, secret, volume, service, deployment, ingress, quota, limits, 3 policies: {before:?}"
    );
    let again = p.apply(&spec).await?;
    assert_eq!(again.status, InstanceStatus::Ready as i32);
    tokio::time::sleep(Duration::from_secs(5)).await; // two resyncs
    assert_eq!(
        versions(&kube, &ns).await?,
        before,
        "re-applying changed objects"
    );
    assert_eq!(p.credentials(&id).await?, credentials);
    let ready_reports = p
        .control_plane
        .reported(&id)
        .into_iter()
        .filter(|(s, _)| *s == InstanceStatus::Ready as i32)
        .count();
    assert_eq!(ready_reports, 1, "a status is reported once, on change");

    // A restart rolls the pod.
    let old_pod = running[0].uid();
    spec.restart_generation = 1;
    p.apply(&spec).await?;
    let template = namespaced::<Deployment>(&kube, &ns)
        .get("app")
        .await?
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert_eq!(
        template
            .get("kapal.dev/restart-generation")
            .map(String::as_str),
        Some("1")
    );
    wait_for("a new pod after the restart", READY_TIMEOUT, || async {
        let pods = pods(&kube, &ns).await?;
        Ok(pods
            .iter()
            .any(|p| {
                p.uid() != old_pod
                    && phase(p) == "Running"
                    && p.metadata.deletion_timestamp.is_none()
            })
            .then_some(()))
    })
    .await?;
    p.wait_status(&id, InstanceStatus::Ready).await?;
    assert_eq!(
        p.credentials(&id).await?,
        credentials,
        "a restart keeps the credentials"
    );

    // Stop: scaled to zero, data kept.
    spec.desired_state = DesiredState::Stopped as i32;
    p.apply(&spec).await?;
    let deployment = namespaced::<Deployment>(&kube, &ns).get("app").await?;
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(0));
    let suspended = p.wait_status(&id, InstanceStatus::Suspended).await?;
    wait_for("the pods to be gone", READY_TIMEOUT, || async {
        Ok(pods(&kube, &ns).await?.is_empty().then_some(()))
    })
    .await?;
    assert!(suspended.reason.contains("data is kept"), "{suspended:?}");
    assert_eq!(
        p.wait_status(&id, InstanceStatus::Suspended).await?.reason,
        "Stopped; the app's data is kept."
    );
    assert_eq!(
        pvc_phase(&kube, &ns, "app-data").await?,
        "Bound",
        "the volume stays"
    );
    p.control_plane
        .wait_reported(&id, InstanceStatus::Suspended, READY_TIMEOUT)
        .await?;

    // Start again.
    spec.desired_state = DesiredState::Running as i32;
    p.apply(&spec).await?;
    p.wait_status(&id, InstanceStatus::Ready).await?;
    assert_eq!(
        p.credentials(&id).await?,
        credentials,
        "the same credentials after a stop"
    );

    // Delete: the namespace goes, and with it everything.
    spec.desired_state = DesiredState::Deleted as i32;
    let deleting = p.apply(&spec).await?;
    assert!(
        [
            InstanceStatus::Deleting as i32,
            InstanceStatus::Deleted as i32
        ]
        .contains(&deleting.status),
        "{deleting:?}"
    );
    p.wait_status(&id, InstanceStatus::Deleted).await?;
    assert!(
        Api::<Namespace>::all(kube.clone())
            .get_opt(&ns)
            .await?
            .is_none(),
        "namespace removed"
    );
    p.control_plane
        .wait_reported(&id, InstanceStatus::Deleted, READY_TIMEOUT)
        .await?;
    assert_eq!(code(p.credentials(&id).await), Code::NotFound);
    // Only changes are reported: never what the control-plane holds already (the last report,
    // or ApplyInstance's answer since).
    // Only changes are reported, each with a larger sequence than the one before, in the
    // order they were made.
    let seen = p.control_plane.seen(&id);
    for pair in seen.windows(2) {
        assert!(pair[0].0 < pair[1].0, "sequences increase: {seen:?}");
        assert_ne!(pair[0].1, pair[1].1, "only changes are reported: {seen:?}");
    }
    assert_eq!(
        seen.iter()
            .map(|(sequence, _)| *sequence)
            .collect::<Vec<_>>(),
        lock(&p.control_plane.reports)
            .iter()
            .filter(|r| r.instance_id == id)
            .map(|r| r.sequence)
            .collect::<Vec<_>>(),
        "reports arrive in the order they were made"
    );
    // The control-plane saw the whole life by report, the end included.
    let statuses: Vec<i32> = seen.iter().map(|(_, r)| r.0).collect();
    for status in [
        InstanceStatus::Provisioning,
        InstanceStatus::Ready,
        InstanceStatus::Suspended,
        InstanceStatus::Deleted,
    ] {
        assert!(statuses.contains(&(status as i32)), "{seen:?}");
    }
    assert_eq!(
        seen.last().map(|(_, r)| r.0),
        Some(InstanceStatus::Deleted as i32),
        "{seen:?}"
    );
    p.shutdown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ghost_instance_runs_its_database_as_a_stateful_set() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = Provisioner::start(Options::new(dir.path())?).await?;
    let mut spec = spec("ghost", "trial");
    let (id, ns) = (spec.instance_id.clone(), spec.namespace.clone());
    let _cleanup = Cleanup::new(&ns).await?;
    let kube = p.kube.clone();

    p.apply(&spec).await?;
    p.wait_status(&id, InstanceStatus::Ready).await?;
    let db = namespaced::<StatefulSet>(&kube, &ns).get("db").await?;
    assert_eq!(db.status.and_then(|s| s.ready_replicas), Some(1));
    assert_eq!(pvc_phase(&kube, &ns, "db-data").await?, "Bound");
    assert_eq!(pvc_phase(&kube, &ns, "app-data").await?, "Bound");
    let app = namespaced::<Deployment>(&kube, &ns).get("app").await?;
    let env = app
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    let host = env
        .iter()
        .find(|e| e.name == "database__connection__host")
        .and_then(|e| e.value.clone());
    assert_eq!(host.as_deref(), Some("db"));
    namespaced::<Service>(&kube, &ns).get("db").await?;
    let secret = namespaced::<Secret>(&kube, &ns)
        .get("kapal-credentials")
        .await?;
    let keys: Vec<String> = secret.data.unwrap_or_default().into_keys().collect();
    assert_eq!(
        keys,
        ["db_password", "db_root_password", "password", "username"]
    );

    spec.desired_state = DesiredState::Deleted as i32;
    p.apply(&spec).await?;
    p.wait_status(&id, InstanceStatus::Deleted).await?;
    p.shutdown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn desired_instances_come_from_the_control_plane_and_survive_a_restart() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut spec = spec("n8n", "starter");
    let (id, ns) = (spec.instance_id.clone(), spec.namespace.clone());
    let _cleanup = Cleanup::new(&ns).await?;

    // Never applied over gRPC: the reconcile loop finds it in the control-plane's list.
    let options = Options::new(dir.path())?;
    let partition = options.partition.clone();
    lock(&options.control_plane.desired).push(spec.clone());
    let p = Provisioner::start(options).await?;
    let kube = p.kube.clone();
    p.control_plane
        .wait_reported(&id, InstanceStatus::Ready, READY_TIMEOUT)
        .await?;
    assert_eq!(p.state(&id).await?.status, InstanceStatus::Ready as i32);
    let credentials = p.credentials(&id).await?;
    p.shutdown().await?;

    // While the provisioner is down, its deployment is lost. Restarted with a control-plane
    // that lists nothing, it rebuilds it from its own record.
    namespaced::<Deployment>(&kube, &ns)
        .delete("app", &DeleteParams::foreground())
        .await?;
    wait_for("the deployment to be gone", READY_TIMEOUT, || async {
        Ok(namespaced::<Deployment>(&kube, &ns)
            .get_opt("app")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    // The same deployment of Kapal again: its partition is the one its instances are labelled
    // with (the admission policy lets a provisioner change only those of its own partition).
    let mut options = Options::new(dir.path())?;
    options.partition = partition;
    let p = Provisioner::start(options).await?;
    wait_for("the deployment to be recreated", READY_TIMEOUT, || async {
        Ok(namespaced::<Deployment>(&kube, &ns)
            .get_opt("app")
            .await?
            .map(|_| ()))
    })
    .await?;
    p.wait_status(&id, InstanceStatus::Ready).await?;
    assert_eq!(p.credentials(&id).await?, credentials);

    // And a newer spec from the control-plane wins over the record.
    spec.desired_state = DesiredState::Stopped as i32;
    *lock(&p.control_plane.desired) = vec![spec.clone()];
    p.wait_status(&id, InstanceStatus::Suspended).await?;
    // The control-plane records the deletion, then tells the provisioner.
    spec.desired_state = DesiredState::Deleted as i32;
    *lock(&p.control_plane.desired) = vec![spec.clone()];
    p.apply(&spec).await?;
    p.wait_status(&id, InstanceStatus::Deleted).await?;
    p.shutdown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_and_strangers_are_turned_away() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = Provisioner::start(Options::new(dir.path())?).await?;

    let mut unknown_app = spec("n8n", "trial");
    unknown_app.app_id = "minecraft".into();
    let status = p.apply(&unknown_app).await.expect_err("unknown app");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("app_id"), "{status:?}");
    let mut bad_host = spec("n8n", "trial");
    bad_host.hostname = "Not A Host".into();
    assert_eq!(code(p.apply(&bad_host).await), Code::InvalidArgument);
    let mut bad_plan = spec("n8n", "gold");
    bad_plan.plan_id = "gold".into();
    assert_eq!(code(p.apply(&bad_plan).await), Code::InvalidArgument);
    let mut bad_id = spec("n8n", "trial");
    bad_id.instance_id = "42".into();
    assert_eq!(code(p.apply(&bad_id).await), Code::InvalidArgument);
    let mut system = spec("n8n", "trial");
    system.namespace = "kube-system".into();
    assert_eq!(code(p.apply(&system).await), Code::InvalidArgument);

    // Never applied: PENDING, and no credentials.
    let never = Uuid::new_v4().to_string();
    assert_eq!(
        p.state(&never).await?.status,
        InstanceStatus::Pending as i32
    );
    assert_eq!(code(p.credentials(&never).await), Code::NotFound);

    // A namespace that is not the instance's own is never taken over.
    let foreign = TestNamespace::new("foreign").await?;
    let mut takeover = spec("n8n", "trial");
    takeover.namespace = foreign.name().to_string();
    assert_eq!(code(p.apply(&takeover).await), Code::FailedPrecondition);
    let ns = Api::<Namespace>::all(p.kube.clone())
        .get(foreign.name())
        .await?;
    assert!(!ns.labels().contains_key("kapal.dev/instance"), "untouched");
    foreign.cleanup().await?;

    // Only Kapal's services may call.
    let mut client = ProvisionerServiceClient::connect(p.endpoint.clone()).await?;
    let anonymous = client
        .get_instance_state(GetInstanceStateRequest {
            instance_id: never.clone(),
        })
        .await;
    assert_eq!(code(anonymous), Code::Unauthenticated);
    let customer = Principal {
        account_id: Uuid::new_v4(),
        customer_id: "c1234567".into(),
        role: Role::Customer,
        token_id: Uuid::new_v4(),
    };
    let mut as_customer = ProvisionerServiceClient::with_interceptor(
        tonic::transport::Channel::from_shared(p.endpoint.clone())?.connect_lazy(),
        kapal::auth::SignAs {
            key: p.key.clone(),
            principal: customer,
        },
    );
    let req = GetCredentialsRequest {
        instance_id: never.clone(),
    };
    assert_eq!(
        code(as_customer.get_credentials(req).await),
        Code::PermissionDenied
    );
    p.shutdown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_too_big_for_the_cluster_fails_with_a_reason() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = Options::new(dir.path())?;
    let mut catalog = Catalog::load(&kapal::catalog::repo_catalog_dir())?;
    catalog.add_yaml(
        std::path::Path::new("huge.yaml"),
        r#"
id: huge
name: Huge
description: Needs more CPU than any node has.
version: "1"
plans: [{id: max, name: Max, monthly_price_idr: 1000, cpu_millis: 64000, memory_mib: 1024, storage_gib: 1}]
components:
  - {name: app, kind: Deployment, image: "nginx:1.27.5", port: 80, public: true, resource_share: 100}
credentials: {username: admin}
"#,
    )?;
    options.catalog = Arc::new(catalog);
    options.unschedulable_grace = Duration::ZERO;
    let p = Provisioner::start(options).await?;
    let mut spec = spec("huge", "max");
    let (id, ns) = (spec.instance_id.clone(), spec.namespace.clone());
    let _cleanup = Cleanup::new(&ns).await?;

    p.apply(&spec).await?;
    let failed = p.wait_status(&id, InstanceStatus::Failed).await?;
    if !failed
        .reason
        .starts_with("There is not enough free capacity in the cluster")
    {
        bail!("unexpected reason: {failed:?}");
    }
    assert!(failed.reason.contains("Insufficient cpu"), "{failed:?}");
    p.control_plane
        .wait_reported(&id, InstanceStatus::Failed, READY_TIMEOUT)
        .await?;

    spec.desired_state = DesiredState::Deleted as i32;
    p.apply(&spec).await?;
    p.wait_status(&id, InstanceStatus::Deleted).await?;
    p.shutdown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_on_a_failed_node_moves_and_is_ready_again() -> anyhow::Result<()> {
    // The instance's pod lands on a node of its own (only this test's pods tolerate its taint),
    // so stopping it disturbs no other test.
    let node = TempNode::create("kapal-failing").await?;
    let dir = tempfile::tempdir()?;
    let mut options = Options::new(dir.path())?;
    options.extra_tolerations = vec![serde_json::from_value(node.toleration())?];
    options.affinity = Some(serde_json::from_value(node.preferred_affinity())?);
    let p = Provisioner::start(options).await?;
    let mut spec = spec("n8n", "trial");
    let (id, ns) = (spec.instance_id.clone(), spec.namespace.clone());
    let _cleanup = Cleanup::new(&ns).await?;
    let kube = p.kube.clone();

    p.apply(&spec).await?;
    p.wait_status(&id, InstanceStatus::Ready).await?;
    let running = pods(&kube, &ns).await?;
    assert_eq!(running.len(), 1);
    let pod = &running[0];
    let pod_spec = pod.spec.clone().unwrap_or_default();
    if pod_spec.node_name.as_deref() != Some(node.name()) {
        bail!(
            "the pod was scheduled on {:?}, not on the test's node {} despite its affinity",
            pod_spec.node_name,
            node.name()
        );
    }
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let seconds = pod_spec
            .tolerations
            .iter()
            .flatten()
            .find(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some("NoExecute"))
            .and_then(|t| t.toleration_seconds);
        assert_eq!(seconds, Some(20), "toleration of {key}");
    }
    let first_pod = pod.uid();

    let stopped = std::time::Instant::now();
    node.stop().await?;
    p.wait_status(&id, InstanceStatus::Degraded).await?;
    let degraded_after = stopped.elapsed();
    p.control_plane
        .wait_reported(&id, InstanceStatus::Degraded, READY_TIMEOUT)
        .await?;
    let moved = wait_for(
        "a replacement pod Running on another node",
        Duration::from_secs(240),
        || async {
            let pods = pods(&kube, &ns).await?;
            Ok(pods
                .into_iter()
                .find(|p| {
                    p.uid() != first_pod
                        && phase(p) == "Running"
                        && p.metadata.deletion_timestamp.is_none()
                })
                .and_then(|p| p.spec.and_then(|s| s.node_name)))
        },
    )
    .await?;
    assert_ne!(moved, node.name());
    let ready = p.wait_status(&id, InstanceStatus::Ready).await?;
    let recovered_after = stopped.elapsed();
    println!(
        "node failure: node stopped -> instance DEGRADED after {:.1} s, READY again on {moved} after {:.1} s",
        degraded_after.as_secs_f64(),
        recovered_after.as_secs_f64()
    );
    assert_eq!(ready.reason, "The app is running.");
    wait_for("READY reported after DEGRADED", READY_TIMEOUT, || async {
        let statuses: Vec<i32> = p.control_plane.reported(&id).iter().map(|r| r.0).collect();
        let degraded = statuses
            .iter()
            .rposition(|s| *s == InstanceStatus::Degraded as i32);
        Ok(degraded
            .is_some_and(|d| statuses[d..].contains(&(InstanceStatus::Ready as i32)))
            .then_some(()))
    })
    .await?;

    spec.desired_state = DesiredState::Deleted as i32;
    p.apply(&spec).await?;
    // The evicted pod stays Terminating on the stopped node until the node goes.
    node.delete().await?;
    p.wait_status(&id, InstanceStatus::Deleted).await?;
    p.shutdown().await
}

/// Stopped and started again before its pod went (a suspension lifted at once, a customer's
/// stop and start): the status in between is reported before each ApplyInstance answers, so
/// the provisioner reports the new spec's READY afresh.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_and_start_in_quick_succession_is_reported_afresh() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = Options::new(dir.path())?;
    // Far beyond the test: the report must follow the apply, not a resync.
    options.resync_interval = Duration::from_secs(3600);
    let p = Provisioner::start(options).await?;
    let mut spec = spec("n8n", "trial");
    let id = spec.instance_id.clone();
    let _cleanup = Cleanup::new(&spec.namespace).await?;
    p.apply(&spec).await?;
    p.control_plane
        .wait_reported(&id, InstanceStatus::Ready, READY_TIMEOUT)
        .await?;
    let before = p.control_plane.reported(&id).len();

    spec.desired_state = DesiredState::Stopped as i32;
    let stopping = p.apply(&spec).await?;
    assert_ne!(
        stopping.status,
        InstanceStatus::Ready as i32,
        "{stopping:?}"
    );
    spec.desired_state = DesiredState::Running as i32;
    p.apply(&spec).await?;
    wait_for(
        "a READY report after the restart",
        READY_TIMEOUT,
        || async {
            Ok(p.control_plane.reported(&id)[before..]
                .iter()
                .any(|(s, _)| *s == InstanceStatus::Ready as i32)
                .then_some(()))
        },
    )
    .await
    .with_context(|| format!("reports: {:?}", p.control_plane.reported(&id)))?;
    p.shutdown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_service_and_a_scaled_down_workload_come_back_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = Options::new(dir.path())?;
    // Far beyond the test: only the watchers can repair in time.
    options.resync_interval = Duration::from_secs(3600);
    let p = Provisioner::start(options).await?;
    let mut spec = spec("ghost", "trial");
    let (id, ns) = (spec.instance_id.clone(), spec.namespace.clone());
    let _cleanup = Cleanup::new(&ns).await?;
    let kube = p.kube.clone();
    const REPAIR: Duration = Duration::from_secs(20);

    p.apply(&spec).await?;
    p.wait_status(&id, InstanceStatus::Ready).await?;

    // A Service deleted by hand is recreated.
    let services = namespaced::<Service>(&kube, &ns);
    let old = services.get("app").await?.uid();
    services.delete("app", &DeleteParams::default()).await?;
    let started = std::time::Instant::now();
    wait_for("the Service to come back", REPAIR, || async {
        Ok(services
            .get_opt("app")
            .await?
            .filter(|s| s.uid() != old)
            .map(|_| ()))
    })
    .await?;
    println!(
        "drift: deleted Service recreated after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A Deployment and a StatefulSet scaled to zero by hand are scaled back.
    let scale_to_zero = serde_json::json!({ "spec": { "replicas": 0 } });
    namespaced::<Deployment>(&kube, &ns)
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&scale_to_zero),
        )
        .await?;
    namespaced::<StatefulSet>(&kube, &ns)
        .patch("db", &PatchParams::default(), &Patch::Merge(&scale_to_zero))
        .await?;
    let started = std::time::Instant::now();
    wait_for("the workloads to be scaled back", REPAIR, || async {
        let app = namespaced::<Deployment>(&kube, &ns).get("app").await?;
        let db = namespaced::<StatefulSet>(&kube, &ns).get("db").await?;
        Ok((app.spec.and_then(|s| s.replicas) == Some(1)
            && db.spec.and_then(|s| s.replicas) == Some(1))
        .then_some(()))
    })
    .await?;
    println!(
        "drift: scaled-down workloads restored after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    p.wait_status(&id, InstanceStatus::Ready).await?;

    // A deleted Deployment comes back too.
    namespaced::<Deployment>(&kube, &ns)
        .delete("app", &DeleteParams::background())
        .await?;
    wait_for("the Deployment to come back", REPAIR, || async {
        Ok(namespaced::<Deployment>(&kube, &ns)
            .get_opt("app")
            .await?
            .filter(|d| d.metadata.deletion_timestamp.is_none())
            .map(|_| ()))
    })
    .await?;
    p.wait_status(&id, InstanceStatus::Ready).await?;

    spec.desired_state = DesiredState::Deleted as i32;
    p.apply(&spec).await?;
    p.wait_status(&id, InstanceStatus::Deleted).await?;
    p.shutdown().await
}

/// Runs the provisioner on a runtime of its own, on its own thread; [`Killable::kill`] drops
/// that runtime, which cancels every task at its next await: a crash, not a graceful shutdown.
struct Killable {
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Killable {
    fn start(config: kapal_provisioner::Config, listener: std::net::TcpListener) -> Killable {
        let (kill, killed) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    _ = kapal_provisioner::run(config, listener, std::future::pending()) => {}
                    _ = killed => {}
                }
            });
            rt.shutdown_background();
        });
        Killable {
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provisioner_killed_mid_provisioning_converges_after_a_restart() -> anyhow::Result<()> {
    kapal::serve::init_tracing(false);
    let cluster = cluster().await?;
    let kube = cluster.client();
    let dir = tempfile::tempdir()?;
    let key = InternalKey::random();
    let control_plane = FakeControlPlane::default();
    let mut spec = spec("wordpress", "trial");
    let (id, ns) = (spec.instance_id.clone(), spec.namespace.clone());
    let _cleanup = Cleanup::new(&ns).await?;
    // The control-plane records the instance before it asks for it.
    lock(&control_plane.desired).push(spec.clone());
    let (cp_listener, cp_endpoint) = free_listener().await?;
    tokio::spawn(kapal::serve::serve(
        tonic::transport::Server::builder().add_service(
            VerifyPrincipal(key.clone())
                .wrap(InstanceStateServiceServer::new(control_plane.clone())),
        ),
        cp_listener,
        std::future::pending(),
    ));
    // Fenced like every provisioner of these tests (see Provisioner::start).
    let partition = kapal_tests::cluster::unique_name("test");
    let fenced = FencedIdentity::new(&partition).await?;
    let kube_config = fenced.kube_config().await?;
    let config = || -> anyhow::Result<kapal_provisioner::Config> {
        let mut config = kapal_provisioner::Config::new(
            DbConfig::DataDir(dir.path().to_path_buf()),
            Arc::new(Catalog::load(&kapal::catalog::repo_catalog_dir())?),
            key.clone(),
            kube_config.clone(),
            cp_endpoint.clone(),
        );
        config.partition = partition.clone();
        config.resync_interval = Duration::from_secs(2);
        Ok(config)
    };

    // Killed as soon as the first objects exist.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let mut first = Killable::start(config()?, listener);
    wait_for("the namespace to be created", READY_TIMEOUT, || async {
        Ok(Api::<Namespace>::all(kube.clone())
            .get_opt(&ns)
            .await?
            .map(|_| ()))
    })
    .await?;
    first.kill();
    let partial = versions(&kube, &ns).await?;
    println!("killed with {} objects applied: {partial:?}", partial.len());

    // Restarted on the same data: it finishes the job.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let _second = Killable::start(config()?, listener);
    let client = ProvisionerServiceClient::new(kapal::serve::internal_channel(&endpoint, &key)?);
    wait_for(&format!("instance {id} READY"), READY_TIMEOUT, || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let state = client
                .get_instance_state(GetInstanceStateRequest { instance_id: id })
                .await?
                .into_inner();
            Ok((state.status == InstanceStatus::Ready as i32).then_some(()))
        }
    })
    .await?;

    // Exactly one of everything, and the credentials in the Secret are what the API returns.
    let all = versions(&kube, &ns).await?;
    let kinds = |kind: &str| all.keys().filter(|k| k.starts_with(kind)).count();
    assert_eq!(
        (
            kinds("Secret/"),
            kinds("Deployment/"),
            kinds("StatefulSet/"),
            kinds("Service/"),
            kinds("PersistentVolumeClaim/"),
            kinds("Ingress/"),
            kinds("NetworkPolicy/")
        ),
        // Five NetworkPolicies: deny, same namespace, ingress controller, cluster DNS, internet.
        (1, 1, 1, 2, 2, 1, 5),
        "{all:?}"
    );
    let live: Vec<Pod> = pods(&kube, &ns)
        .await?
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.labels().get("kapal.dev/component").map(String::as_str) != Some("setup"))
        .collect();
    assert_eq!(live.len(), 2, "one pod per component");
    // And one setup job, which installs WordPress with the admin of those credentials.
    let jobs = namespaced::<k8s_openapi::api::batch::v1::Job>(&kube, &ns)
        .list(&ListParams::default())
        .await?;
    assert_eq!(
        jobs.items.iter().map(|j| j.name_any()).collect::<Vec<_>>(),
        ["kapal-setup"]
    );
    let secret = namespaced::<Secret>(&kube, &ns)
        .get("kapal-credentials")
        .await?;
    let password = secret
        .data
        .unwrap_or_default()
        .get("password")
        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
    let credentials = client
        .clone()
        .get_credentials(GetCredentialsRequest {
            instance_id: id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(Some(credentials.password), password);

    spec.desired_state = DesiredState::Deleted as i32;
    *lock(&control_plane.desired) = vec![spec.clone()];
    client
        .clone()
        .apply_instance(ApplyInstanceRequest { spec: Some(spec) })
        .await?;
    wait_for("the namespace to be gone", READY_TIMEOUT, || async {
        Ok(Api::<Namespace>::all(kube.clone())
            .get_opt(&ns)
            .await?
            .is_none()
            .then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn capacity_and_usage_come_from_the_cluster() -> anyhow::Result<()> {
    use kapal_provisioner::quantity;
    let dir = tempfile::tempdir()?;
    let p = Provisioner::start(Options::new(dir.path())?).await?;
    let spec = spec("n8n", "trial");
    let (id, ns) = (spec.instance_id.clone(), spec.namespace.clone());
    let _cleanup = Cleanup::new(&ns).await?;
    let kube = p.kube.clone();
    p.apply(&spec).await?;
    p.wait_status(&id, InstanceStatus::Ready).await?;

    // Capacity: every node, its allocatable as the API server reports it; the instance's pod
    // counted on its node and in Kapal's share.
    let capacity = p.capacity().await?;
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(kube.clone())
        .list(&ListParams::default())
        .await?
        .items;
    // Other tests add and remove nodes of their own meanwhile: the cluster's fixed nodes are
    // all there, with what the API server reports.
    for name in kapal_tests::cluster::NODES {
        let node = nodes
            .iter()
            .find(|n| n.name_any() == name)
            .expect("a fixed node");
        let ours = capacity
            .nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("{name} in {capacity:?}"));
        let alloc = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .expect("allocatable");
        assert_eq!(
            ours.allocatable
                .map(|a| (a.cpu_millis, a.memory_bytes, a.pods)),
            Some((
                quantity::milli_value(&alloc["cpu"]).expect("cpu"),
                quantity::value(&alloc["memory"]).expect("memory"),
                quantity::value(&alloc["pods"]).expect("pods"),
            )),
            "{name}"
        );
    }
    let mut sorted: Vec<&str> = capacity.nodes.iter().map(|n| n.name.as_str()).collect();
    sorted.sort();
    assert_eq!(
        sorted,
        capacity
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
    );
    // The totals are the schedulable nodes'.
    let schedulable: Vec<_> = capacity.nodes.iter().filter(|n| n.schedulable).collect();
    assert!(!schedulable.is_empty(), "{capacity:?}");
    assert!(schedulable.iter().all(|n| n.ready));
    assert_eq!(
        capacity.allocatable.map(|a| a.cpu_millis),
        Some(
            schedulable
                .iter()
                .filter_map(|n| n.allocatable.map(|a| a.cpu_millis))
                .sum()
        )
    );
    assert_eq!(
        capacity.requested.map(|a| a.pods),
        Some(
            schedulable
                .iter()
                .filter_map(|n| n.requested.map(|a| a.pods))
                .sum()
        )
    );
    let pod = pods(&kube, &ns).await?.remove(0);
    let node = pod.spec.and_then(|s| s.node_name).expect("bound");
    let on_node = capacity
        .nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.requested)
        .expect("requested");
    // n8n's trial plan: 200m and 400 MiB, all for its one container.
    assert!(
        on_node.cpu_millis >= 200 && on_node.memory_bytes >= 400 << 20 && on_node.pods >= 1,
        "{on_node:?}"
    );
    let kapal = capacity.requested_by_kapal.expect("kapal's share");
    let all = capacity.requested.expect("requested");
    assert!(kapal.cpu_millis >= 200 && kapal.pods >= 1, "{kapal:?}");
    assert!(
        all.cpu_millis >= kapal.cpu_millis && all.pods >= kapal.pods,
        "{all:?}"
    );
    assert_eq!(capacity.committed, None, "the control-plane's to fill");
    assert!(capacity.observed_at.is_some());

    // Usage: the local cluster runs metrics-server over the usage kwok simulates, so CPU and
    // memory are measured, and they follow what is simulated for the instance's pod.
    let groups = kube.list_api_groups().await?;
    assert!(
        groups.groups.iter().any(|g| g.name == "metrics.k8s.io"),
        "the local cluster serves the metrics API (metrics-server)"
    );
    for (cpu, memory, cpu_millis, memory_bytes) in [
        ("250m", "300Mi", 250, 300 << 20),
        ("600m", "700Mi", 600, 700 << 20),
    ] {
        let annotated = kapal_tests::cluster::simulate_usage(&kube, &ns, cpu, memory).await?;
        assert_eq!(annotated, 1, "n8n runs one pod");
        let usage = wait_for(
            &format!("usage to follow the simulated {cpu} CPU / {memory}"),
            Duration::from_secs(90),
            || async {
                let usage = p.usage(&id).await?;
                // CPU is a rate metrics-server works out between two scrapes: within 2%
                let close = usage
                    .cpu_millis
                    .is_some_and(|c| (c - cpu_millis).abs() <= cpu_millis / 50);
                Ok(
                    (usage.metrics_available && close && usage.memory_bytes == Some(memory_bytes))
                        .then_some(usage),
                )
            },
        )
        .await?;
        assert_eq!(usage.metrics_note, "", "{usage:?}");
        assert_eq!(
            (usage.cpu_limit_millis, usage.memory_limit_bytes),
            (200, 400 << 20)
        );
    }
    let usage = p.usage(&id).await?;
    assert_eq!(usage.instance_id, id);
    let pvc = namespaced::<PersistentVolumeClaim>(&kube, &ns)
        .get("app-data")
        .await?;
    let bound = pvc
        .status
        .and_then(|s| s.capacity)
        .and_then(|c| c.get("storage").and_then(quantity::value))
        .expect("a bound volume has a capacity");
    assert_eq!(usage.storage_capacity_bytes, bound);
    assert!(bound >= 2 << 30, "the trial's 2 GiB: {bound}");
    assert_eq!(usage.storage_used_bytes, None);
    assert!(usage.observed_at.is_some());

    assert_eq!(
        code(p.usage(&Uuid::new_v4().to_string()).await),
        Code::NotFound
    );
    assert_eq!(code(p.usage("nope").await), Code::InvalidArgument);
    p.shutdown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_instance_keeps_its_data_until_the_retention_runs_out() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = Provisioner::start(Options::new(dir.path())?).await?;
    let mut spec = spec("n8n", "trial");
    let (id, ns) = (spec.instance_id.clone(), spec.namespace.clone());
    let _cleanup = Cleanup::new(&ns).await?;
    let kube = p.kube.clone();
    p.apply(&spec).await?;
    p.wait_status(&id, InstanceStatus::Ready).await?;

    // Deleted, its data kept for 4 more seconds: the workloads, Service and Ingress go at
    // once; the volume, the credentials and the namespace stay.
    let until = chrono::Utc::now() + chrono::TimeDelta::seconds(4);
    spec.desired_state = DesiredState::Deleted as i32;
    spec.delete_data_after = Some(kapal::wire::timestamp(until.naive_utc()));
    p.apply(&spec).await?;
    assert!(
        namespaced::<Deployment>(&kube, &ns)
            .get_opt("app")
            .await?
            .is_none()
    );
    assert!(
        namespaced::<Service>(&kube, &ns)
            .get_opt("app")
            .await?
            .is_none()
    );
    assert!(
        namespaced::<Ingress>(&kube, &ns)
            .get_opt("kapal-web")
            .await?
            .is_none()
    );
    assert_eq!(pvc_phase(&kube, &ns, "app-data").await?, "Bound");
    namespaced::<Secret>(&kube, &ns)
        .get("kapal-credentials")
        .await?;
    // The reports say when the data goes (once the pod is gone).
    p.control_plane
        .wait_reported(&id, InstanceStatus::Deleted, READY_TIMEOUT)
        .await?;
    let (_, reason) = p
        .control_plane
        .reported(&id)
        .into_iter()
        .find(|(s, _)| *s == InstanceStatus::Deleted as i32)
        .expect("reported");
    assert!(
        reason.starts_with("Deleted; its data is kept until ")
            && reason.ends_with(" UTC, then removed."),
        "{reason}"
    );
    assert!(
        chrono::Utc::now() < until,
        "DELETED was reported before the data went ({reason})"
    );
    assert!(
        Api::<Namespace>::all(kube.clone())
            .get_opt(&ns)
            .await?
            .is_some(),
        "the data is kept"
    );

    // Then the namespace goes, without another request.
    wait_for("the namespace to be gone", READY_TIMEOUT, || async {
        Ok(Api::<Namespace>::all(kube.clone())
            .get_opt(&ns)
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    wait_for("DELETED with its data", READY_TIMEOUT, || async {
        Ok(p.control_plane
            .reported(&id)
            .contains(&(
                InstanceStatus::Deleted as i32,
                "Deleted with its data.".to_string(),
            ))
            .then_some(()))
    })
    .await
    .with_context(|| format!("reports: {:?}", p.control_plane.reported(&id)))?;
    let state = p.state(&id).await?;
    assert_eq!(
        (state.status, state.reason.as_str()),
        (InstanceStatus::Deleted as i32, "Deleted with its data.")
    );
    p.shutdown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn orphaned_namespaces_of_the_partition_go_after_the_safety_delay() -> anyhow::Result<()> {
    const ORPHANED_SINCE: &str = "kapal.dev/orphaned-since";
    let dir = tempfile::tempdir()?;
    let mut options = Options::new(dir.path())?;
    options.sweep_interval = Duration::from_secs(1);
    options.orphan_safety_delay = Duration::from_secs(2);
    let partition = options.partition.clone();
    let kube = cluster().await?.client();
    let namespaces = Api::<Namespace>::all(kube.clone());
    let make = |partition: &str, instance: &str, orphaned_since: Option<&str>| {
        let name = kapal_tests::cluster::unique_name("kapal-sweep");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": {
                    "app.kubernetes.io/managed-by": "kapal",
                    "kapal.dev/partition": partition,
                    "kapal.dev/instance": instance,
                    // As the provisioner makes them: the admission policy lets it change no
                    // namespace of its without Pod Security.
                    "pod-security.kubernetes.io/enforce": "baseline",
                },
                "annotations": orphaned_since.map(|t| serde_json::json!({ ORPHANED_SINCE: t })),
            }
        }))
        .expect("namespace");
        (name, ns)
    };
    // Nobody's instance, in this partition: goes.
    let (orphan, orphan_ns) = make(&partition, &Uuid::new_v4().to_string(), None);
    // The same in another partition: never touched.
    let (foreign, foreign_ns) = make("another-partition", &Uuid::new_v4().to_string(), None);
    // An instance only the control-plane lists (deleted, its data kept for an hour), marked by
    // an earlier sweep: the mark goes, the namespace stays.
    let listed = Uuid::new_v4();
    let (wanted, wanted_ns) = make(
        &partition,
        &listed.to_string(),
        Some("2020-01-01T00:00:00Z"),
    );
    let mut cleanups = Vec::new();
    for (name, ns) in [
        (&orphan, &orphan_ns),
        (&foreign, &foreign_ns),
        (&wanted, &wanted_ns),
    ] {
        cleanups.push(Cleanup::new(name).await?);
        namespaces.create(&Default::default(), ns).await?;
    }
    let mut listed_spec = spec("n8n", "trial");
    listed_spec.instance_id = listed.to_string();
    listed_spec.namespace = wanted.clone();
    listed_spec.desired_state = DesiredState::Deleted as i32;
    listed_spec.delete_data_after = Some(kapal::wire::timestamp(
        (chrono::Utc::now() + chrono::TimeDelta::hours(1)).naive_utc(),
    ));
    lock(&options.control_plane.desired).push(listed_spec);

    let p = Provisioner::start(options).await?;
    // A live instance of this partition (known from ApplyInstance only).
    let live = spec("n8n", "trial");
    cleanups.push(Cleanup::new(&live.namespace).await?);
    p.apply(&live).await?;

    let marked = wait_for("the orphan to be marked", READY_TIMEOUT, || async {
        Ok(namespaces
            .get_opt(&orphan)
            .await?
            .and_then(|ns| ns.annotations().get(ORPHANED_SINCE).cloned()))
    })
    .await?;
    let marked_at = chrono::DateTime::parse_from_rfc3339(&marked)?;
    wait_for(
        "the orphan to be deleted after the safety delay",
        READY_TIMEOUT,
        || async {
            Ok(namespaces
                .get_opt(&orphan)
                .await?
                .is_none_or(|ns| ns.metadata.deletion_timestamp.is_some())
                .then_some(()))
        },
    )
    .await?;
    assert!(
        chrono::Utc::now() >= marked_at + chrono::TimeDelta::seconds(2),
        "not before the safety delay"
    );
    wait_for(
        "the listed instance's mark to go",
        READY_TIMEOUT,
        || async {
            Ok(namespaces
                .get(&wanted)
                .await?
                .annotations()
                .get(ORPHANED_SINCE)
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    // A few more sweeps change nothing for the others.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in [&foreign, &wanted, &live.namespace] {
        let ns = namespaces.get(name).await?;
        assert!(ns.metadata.deletion_timestamp.is_none(), "{name} kept");
        assert!(
            ns.annotations().get(ORPHANED_SINCE).is_none(),
            "{name} not marked"
        );
    }
    assert_eq!(
        namespaces
            .get(&live.namespace)
            .await?
            .labels()
            .get("kapal.dev/partition"),
        Some(&partition)
    );
    p.shutdown().await
}

/// A self-signed certificate for `*.<domain>` from the openssl command: (`tls.crt`, `tls.key`).
fn self_signed(domain: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir()?;
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .arg("-subj")
        .arg(format!("/CN=*.{domain}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .context("running openssl")?;
    anyhow::ensure!(out.status.success(), "openssl: {:?}", out);
    Ok((std::fs::read(crt)?, std::fs::read(key)?))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_certificate_is_copied_into_each_instance_and_kept_in_sync() -> anyhow::Result<()>
{
    use k8s_openapi::ByteString;
    let kube = cluster().await?.client();
    // The wildcard certificate, in a namespace of its own.
    let source_ns = kapal_tests::cluster::unique_name("kapal-tls-source");
    let _source_cleanup = Cleanup::new(&source_ns).await?;
    Api::<Namespace>::all(kube.clone())
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({ "metadata": { "name": source_ns } }))?,
        )
        .await?;
    let tls_secret = |(crt, key): (Vec<u8>, Vec<u8>)| -> anyhow::Result<Secret> {
        Ok(Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("wildcard".into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_string(), ByteString(crt)),
                ("tls.key".to_string(), ByteString(key)),
            ])),
            ..Default::default()
        })
    };
    let sources = namespaced::<Secret>(&kube, &source_ns);
    let first = tls_secret(self_signed("n8n.kapal.test")?)?;
    sources.create(&Default::default(), &first).await?;

    let dir = tempfile::tempdir()?;
    let mut options = Options::new(dir.path())?;
    options.tls_secret = Some(format!("{source_ns}/wildcard"));
    let p = Provisioner::start(options).await?;
    let spec = spec("n8n", "trial");
    let ns = spec.namespace.clone();
    let _cleanup = Cleanup::new(&ns).await?;
    p.apply(&spec).await?;

    // Applied with the instance: the copy and the Ingress' TLS section naming it.
    let copies = namespaced::<Secret>(&kube, &ns);
    let copy = copies.get("kapal-wildcard-tls").await?;
    assert_eq!(copy.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(copy.data, first.data);
    assert_eq!(
        copy.labels().get("kapal.dev/instance"),
        Some(&spec.instance_id)
    );
    let ingress = namespaced::<Ingress>(&kube, &ns).get("kapal-web").await?;
    let tls = ingress
        .spec
        .and_then(|s| s.tls)
        .expect("a TLS section")
        .remove(0);
    assert_eq!(tls.secret_name.as_deref(), Some("kapal-wildcard-tls"));
    assert_eq!(tls.hosts, Some(vec![spec.hostname.clone()]));

    // A renewed certificate reaches the instance at the next resync (2 s here).
    let renewed = tls_secret(self_signed("n8n.kapal.test")?)?;
    assert_ne!(renewed.data, first.data);
    sources
        .replace("wildcard", &Default::default(), &renewed)
        .await?;
    wait_for(
        "the renewed certificate in the instance",
        Duration::from_secs(30),
        || async {
            Ok((copies.get("kapal-wildcard-tls").await?.data == renewed.data).then_some(()))
        },
    )
    .await?;
    p.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// Internal trust between the services.

/// `message` in a request carrying exactly the identity headers of `captured`.
fn replayed<T>(captured: &tonic::metadata::MetadataMap, message: T) -> Request<T> {
    use kapal::auth::{PRINCIPAL_HEADER, SIGNATURE_HEADER};
    let mut req = Request::new(message);
    for name in [PRINCIPAL_HEADER, SIGNATURE_HEADER] {
        if let Some(value) = captured.get(name) {
            req.metadata_mut().insert(name, value.clone());
        }
    }
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_signature_captured_from_one_method_is_refused_on_another() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let spec = spec("n8n", "trial");
    let _cleanup = Cleanup::new(&spec.namespace).await?;
    let p = Provisioner::start(Options::new(dir.path())?).await?;
    p.apply(&spec).await?;

    // The provisioner's resync calls ListDesiredInstances, signed as a service: whoever sits
    // between the services (a proxy, a packet capture, a log of headers) sees these headers.
    let captured = wait_for("a ListDesiredInstances call", READY_TIMEOUT, || async {
        Ok(lock(&p.control_plane.list_calls)
            .first()
            .map(|(metadata, _)| metadata.clone()))
    })
    .await?;

    // Replayed on the method it was made for, within its minute, it still works (this is
    // what the capture is worth)...
    let channel = tonic::transport::Channel::from_shared(p.control_plane_endpoint.clone())?
        .connect()
        .await?;
    use kapal::proto::internal::v1::ListDesiredInstancesRequest;
    use kapal::proto::internal::v1::instance_state_service_client::InstanceStateServiceClient;
    InstanceStateServiceClient::new(channel)
        .list_desired_instances(replayed(&captured, ListDesiredInstancesRequest::default()))
        .await
        .context("the captured signature, on its own method")?;

    // ...but it opens no other door: not the instance's credentials, not a change of its spec.
    let mut direct = ProvisionerServiceClient::connect(p.endpoint.clone()).await?;
    let credentials = direct
        .get_credentials(replayed(
            &captured,
            GetCredentialsRequest {
                instance_id: spec.instance_id.clone(),
            },
        ))
        .await;
    assert_eq!(code(credentials), Code::Unauthenticated);
    let mut deleted = spec.clone();
    deleted.desired_state = DesiredState::Deleted as i32;
    let apply = direct
        .apply_instance(replayed(
            &captured,
            ApplyInstanceRequest {
                spec: Some(deleted),
            },
        ))
        .await;
    let status = apply.expect_err("a replayed signature applies nothing");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("could not be verified"),
        "{status:?}"
    );
    // The instance is as it was: still wanted, its credentials there for the real services.
    assert_ne!(
        p.state(&spec.instance_id).await?.status,
        InstanceStatus::Deleted as i32
    );
    p.credentials(&spec.instance_id).await?;
    p.shutdown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_resync_follows_every_page_of_the_desired_list() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = Options::new(dir.path())?;
    // Five stopped instances (namespace, volume and secrets; no pods), two per page.
    let mut specs = Vec::new();
    let mut cleanups = Vec::new();
    for _ in 0..5 {
        let mut s = spec("n8n", "trial");
        s.desired_state = DesiredState::Stopped as i32;
        cleanups.push(Cleanup::new(&s.namespace).await?);
        specs.push(s);
    }
    *lock(&options.control_plane.desired) = specs.clone();
    *lock(&options.control_plane.page_limit) = Some(2);
    let p = Provisioner::start(options).await?;

    // Never applied over gRPC: each one, on every page, is found in the list and converged.
    for s in &specs {
        p.control_plane
            .wait_reported(&s.instance_id, InstanceStatus::Suspended, READY_TIMEOUT)
            .await?;
    }
    let tokens: Vec<String> = lock(&p.control_plane.list_calls)
        .iter()
        .map(|(_, token)| token.clone())
        .collect();
    for page in ["2", "4"] {
        assert!(
            tokens.iter().any(|t| t == page),
            "the provisioner asked for the page at {page}: {tokens:?}"
        );
    }
    for s in &mut specs {
        s.desired_state = DesiredState::Deleted as i32;
    }
    *lock(&p.control_plane.desired) = specs.clone();
    for s in &specs {
        p.apply(s).await?;
    }
    drop(cleanups);
    p.shutdown().await
}
