//! The local control plane (scripts/local-cluster) does what Kapal relies on: scheduling,
//! dynamic volumes, Services, ResourceQuota and PodSecurity admission, and node-failure eviction.
//! Each test owns its namespace, so they run in parallel.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, ResourceQuota, Service};
use kapal_tests::cluster::{
    INGRESS_CLASS, STORAGE_CLASS, TempNode, TestNamespace, api_status, node_state, wait_for,
};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("test object must deserialize")
}

/// A pod spec: one container, the given requests, extra fields merged in.
fn pod_spec(cpu: &str, memory: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "containers": [{
            "name": "app",
            "image": "docker.io/n8nio/n8n:1.0.0",
            "resources": { "requests": { "cpu": cpu, "memory": memory }, "limits": { "cpu": cpu, "memory": memory } },
        }],
        "terminationGracePeriodSeconds": 1,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    spec
}

fn deployment(name: &str, replicas: i32, spec: serde_json::Value) -> Deployment {
    from_json(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } }, "spec": spec },
        },
    }))
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

async fn pods_of(api: &Api<Pod>, app: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(api
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items)
}

#[tokio::test]
async fn deployment_pod_is_scheduled_and_runs() -> anyhow::Result<()> {
    let ns = TestNamespace::new("deploy").await?;
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 1, pod_spec("250m", "512Mi", json!({}))),
        )
        .await?;

    let pods: Api<Pod> = ns.api();
    let pod = wait_for(
        "the Deployment's pod to be Running",
        Duration::from_secs(60),
        || async {
            Ok(pods_of(&pods, "web")
                .await?
                .into_iter()
                .find(|p| phase(p) == "Running"))
        },
    )
    .await?;
    let node = node_of(&pod);
    assert!(
        !node.is_empty(),
        "a Running pod must have been scheduled to a node"
    );
    let nodes: Api<Node> = Api::all(ns.client());
    let labels = nodes.get(node).await?.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("type").map(String::as_str),
        Some("kwok"),
        "scheduled onto a kwok node, got {node}"
    );
    let status = pod.status.clone().unwrap_or_default();
    assert!(status.pod_ip.is_some(), "kwok gives a Running pod an IP");

    wait_for(
        "the Deployment to report 1 available replica",
        Duration::from_secs(60),
        || async {
            let d = deployments.get("web").await?;
            Ok((d.status.and_then(|s| s.available_replicas) == Some(1)).then_some(()))
        },
    )
    .await?;
    ns.cleanup().await
}

#[tokio::test]
async fn pvc_of_the_default_storage_class_binds() -> anyhow::Result<()> {
    let ns = TestNamespace::new("pvc").await?;
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    // No storageClassName: the DefaultStorageClass admission plugin fills in local-path.
    let pvc: PersistentVolumeClaim = from_json(json!({
        "metadata": { "name": "data" },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
    }));
    let created = pvcs.create(&PostParams::default(), &pvc).await?;
    assert_eq!(
        created
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
        Some(STORAGE_CLASS),
        "the default StorageClass is filled in"
    );

    // local-path is WaitForFirstConsumer (as on K3s): the volume is provisioned once a pod that
    // uses the claim is scheduled.
    let pods: Api<Pod> = ns.api();
    let pod: Pod = from_json(json!({
        "metadata": { "name": "user" },
        "spec": pod_spec("100m", "128Mi", json!({
            "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }],
        })),
    }));
    pods.create(&PostParams::default(), &pod).await?;

    let bound = wait_for("PVC data to be Bound", Duration::from_secs(60), || async {
        let pvc = pvcs.get("data").await?;
        Ok((pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")).then_some(pvc))
    })
    .await?;
    let volume = bound
        .spec
        .and_then(|s| s.volume_name)
        .context("a Bound PVC names its volume")?;
    let pv = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(ns.client())
        .get(&volume)
        .await?;
    let pv_spec = pv.spec.unwrap_or_default();
    assert_eq!(pv_spec.storage_class_name.as_deref(), Some(STORAGE_CLASS));
    assert_eq!(
        pv_spec
            .capacity
            .and_then(|c| c.get("storage").cloned())
            .map(|q| q.0),
        Some("1Gi".to_owned())
    );

    wait_for(
        "the pod using the PVC to be Running",
        Duration::from_secs(60),
        || async { Ok((phase(&pods.get("user").await?) == "Running").then_some(())) },
    )
    .await?;
    ns.cleanup().await
}

#[tokio::test]
async fn ingress_without_a_class_gets_traefik() -> anyhow::Result<()> {
    let ns = TestNamespace::new("ingress").await?;
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> = ns.api();
    let ingress = from_json(json!({
        "metadata": { "name": "web" },
        "spec": { "rules": [{ "host": "c1.n8n.kapal.test", "http": { "paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": "web", "port": { "number": 80 } } },
        }] } }] },
    }));
    let created = ingresses.create(&PostParams::default(), &ingress).await?;
    // The DefaultIngressClass admission plugin fills in the class marked default, as on K3s.
    assert_eq!(
        created.spec.and_then(|s| s.ingress_class_name).as_deref(),
        Some(INGRESS_CLASS)
    );
    ns.cleanup().await
}

#[tokio::test]
async fn service_gets_a_cluster_ip() -> anyhow::Result<()> {
    let ns = TestNamespace::new("svc").await?;
    let services: Api<Service> = ns.api();
    let svc: Service = from_json(json!({
        "metadata": { "name": "web" },
        "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80, "targetPort": 5678 }] },
    }));
    let created = services.create(&PostParams::default(), &svc).await?;
    let ip = created
        .spec
        .and_then(|s| s.cluster_ip)
        .context("a ClusterIP Service gets an IP on create")?;
    let ip: std::net::Ipv4Addr = ip.parse().with_context(|| format!("cluster IP {ip:?}"))?;
    let [a, b, ..] = ip.octets();
    assert_eq!(
        (a, b),
        (10, 43),
        "cluster IP {ip} comes from the K3s service range 10.43.0.0/16"
    );
    ns.cleanup().await
}

#[tokio::test]
async fn pod_over_resource_quota_is_rejected() -> anyhow::Result<()> {
    let ns = TestNamespace::new("quota").await?;
    let quotas: Api<ResourceQuota> = ns.api();
    let quota: ResourceQuota = from_json(json!({
        "metadata": { "name": "plan" },
        "spec": { "hard": { "requests.cpu": "500m", "requests.memory": "1Gi", "pods": "4" } },
    }));
    quotas.create(&PostParams::default(), &quota).await?;
    // Admission only enforces a quota once the quota controller has computed its status.
    wait_for(
        "ResourceQuota plan to have a status",
        Duration::from_secs(60),
        || async {
            let q = quotas.get("plan").await?;
            Ok(q.status
                .and_then(|s| s.hard)
                .is_some_and(|h| !h.is_empty())
                .then_some(()))
        },
    )
    .await?;

    let pods: Api<Pod> = ns.api();
    let fits: Pod = from_json(
        json!({ "metadata": { "name": "fits" }, "spec": pod_spec("250m", "512Mi", json!({})) }),
    );
    pods.create(&PostParams::default(), &fits)
        .await
        .context("a pod inside the quota is admitted")?;

    let too_big: Pod = from_json(
        json!({ "metadata": { "name": "too-big" }, "spec": pod_spec("500m", "512Mi", json!({})) }),
    );
    let err = pods
        .create(&PostParams::default(), &too_big)
        .await
        .expect_err("a pod over the quota must be rejected");
    let status = api_status(&err).unwrap_or_else(|| panic!("expected an API error, got {err}"));
    assert_eq!(status.code, 403, "quota rejection is Forbidden: {status:?}");
    assert!(
        status.message.contains("exceeded quota"),
        "message names the exceeded quota: {}",
        status.message
    );
    assert!(
        status.message.contains("requests.cpu"),
        "message names the resource: {}",
        status.message
    );
    ns.cleanup().await
}

#[tokio::test]
async fn privileged_pod_is_rejected_by_pod_security_baseline() -> anyhow::Result<()> {
    let ns =
        TestNamespace::with_labels("psa", &[("pod-security.kubernetes.io/enforce", "baseline")])
            .await?;
    let pods: Api<Pod> = ns.api();

    let plain: Pod = from_json(
        json!({ "metadata": { "name": "plain" }, "spec": pod_spec("100m", "128Mi", json!({})) }),
    );
    pods.create(&PostParams::default(), &plain)
        .await
        .context("a baseline-compliant pod is admitted")?;

    let mut spec = pod_spec("100m", "128Mi", json!({}));
    spec["containers"][0]["securityContext"] = json!({ "privileged": true });
    let privileged: Pod = from_json(json!({ "metadata": { "name": "privileged" }, "spec": spec }));
    let err = pods
        .create(&PostParams::default(), &privileged)
        .await
        .expect_err("a privileged pod must be rejected");
    let status = api_status(&err).unwrap_or_else(|| panic!("expected an API error, got {err}"));
    assert_eq!(
        status.code, 403,
        "PodSecurity rejection is Forbidden: {status:?}"
    );
    assert!(
        status.message.contains("violates PodSecurity \"baseline")
            && status.message.contains("privileged"),
        "message names the policy and the violation: {}",
        status.message
    );
    ns.cleanup().await
}

/// Stops a node and measures how long its pods take to be evicted and running elsewhere, with
/// the default tolerations (300 s, added by the DefaultTolerationSeconds admission plugin) and
/// with tuned ones (10 s). Uses a temporary node tainted for this test only, so other tests
/// running in parallel never see their pods evicted.
#[tokio::test]
async fn stopped_node_pods_are_evicted_and_rescheduled() -> anyhow::Result<()> {
    let ns = TestNamespace::new("node-failure").await?;
    let client = ns.client();
    let node = TempNode::create("failure").await?;
    let tuned_tolerations = json!([
        node.toleration(),
        { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10 },
        { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10 },
    ]);
    let cases = [
        ("default-tolerations", json!([node.toleration()])),
        ("tuned-tolerations", tuned_tolerations),
    ];
    let deployments: Api<Deployment> = ns.api();
    for (name, tolerations) in &cases {
        let spec = pod_spec(
            "100m",
            "128Mi",
            json!({ "tolerations": tolerations, "affinity": node.preferred_affinity() }),
        );
        deployments
            .create(&PostParams::default(), &deployment(name, 2, spec))
            .await?;
    }

    // Every replica Running; remember which pods sit on the temporary node.
    let pods: Api<Pod> = ns.api();
    let mut on_node: BTreeMap<&str, HashSet<String>> = BTreeMap::new();
    for (name, _) in &cases {
        let running = wait_for(
            &format!("2 Running pods of {name}"),
            Duration::from_secs(60),
            || async {
                let ps = pods_of(&pods, name).await?;
                Ok((ps.len() == 2 && ps.iter().all(|p| phase(p) == "Running")).then_some(ps))
            },
        )
        .await?;
        let here: HashSet<String> = running
            .iter()
            .filter(|p| node_of(p) == node.name())
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        assert!(
            !here.is_empty(),
            "{name}: preferred affinity should put pods on {}: {:?}",
            node.name(),
            running
                .iter()
                .map(|p| (p.metadata.name.clone(), node_of(p).to_owned()))
                .collect::<Vec<_>>()
        );
        on_node.insert(name, here);
    }

    let stopped_at = Instant::now();
    node.stop().await?;
    let (client_ref, node_name) = (&client, node.name());
    wait_for(
        &format!("node {node_name} to leave Ready"),
        Duration::from_secs(90),
        || async {
            Ok(
                (node_state(client_ref, node_name).await?.ready.as_deref() != Some("True"))
                    .then_some(()),
            )
        },
    )
    .await?;
    let not_ready_after = stopped_at.elapsed();

    // A case is done when all 2 replicas run on other nodes and none of the evicted pods is
    // counted any more (they may stay Terminating: no kubelet confirms their end).
    let mut rescheduled_after = BTreeMap::new();
    let mut pending: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !pending.is_empty() {
        let mut still = Vec::new();
        for name in pending {
            let ps = pods_of(&pods, name).await?;
            let live: Vec<&Pod> = ps
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let moved = live.len() == 2
                && live.iter().all(|p| {
                    phase(p) == "Running" && !node_of(p).is_empty() && node_of(p) != node_name
                })
                && on_node[name]
                    .iter()
                    .all(|old| !live.iter().any(|p| p.metadata.name.as_ref() == Some(old)));
            if moved {
                rescheduled_after.insert(name, stopped_at.elapsed());
            } else {
                still.push(name);
            }
        }
        pending = still;
        if !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "pods of {pending:?} were not rescheduled within 10 minutes of stopping {node_name}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    println!("node failure on {node_name} (--node-monitor-grace-period 20s):");
    println!(
        "  node left Ready after                 {:>6.1}s",
        not_ready_after.as_secs_f64()
    );
    for (name, after) in &rescheduled_after {
        println!(
            "  {name:<22} pods rescheduled after {:>6.1}s",
            after.as_secs_f64()
        );
    }
    assert!(
        rescheduled_after["tuned-tolerations"] < rescheduled_after["default-tolerations"],
        "tuned tolerations (10s) must move pods before the default ones (300s): {rescheduled_after:?}"
    );

    // Bring the node back (exercises node-up), then remove it.
    node.start().await?;
    node.delete().await?;
    ns.cleanup().await
}
