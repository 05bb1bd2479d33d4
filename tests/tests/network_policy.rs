//! The tenant boundary as real connections (issue 15): the NetworkPolicies Kapal's provisioner
//! renders for every instance, enforced by the NetworkPolicy engine of the local cluster's real
//! nodes (scripts/real-nodes: kube-router's policy controller, as K3s embeds it, with iptables and
//! ipsets in each node's network namespace), between real containers. Without the engine every
//! connection below opens (checked: the test then fails on "other customer's pod").
//!
//! Two customers order an instance of a small app (`boundary`: two busybox httpd components, "app"
//! and "db", from the image scripts/build-images makes). Then a probe pod in the first customer's
//! namespace (under that instance's policies, like any pod there) opens TCP connections, and the
//! test reads which ones opened:
//!
//! - its own instance's other pod, by IP and by its Service's name (the cluster DNS): opens;
//! - the other customer's pod, by its IP and through its Service: does not;
//! - the kubelets of both real nodes (`real_node_ip`, port 10250): does not;
//!
//! and, as the control that each target listens, the same targets from node 1's network
//! namespace (where Traefik runs, let in by `--ingress-source-cidrs`) do open. Not tried here,
//! because nothing routes there on these nodes with or without a policy: the cloud metadata
//! address and the API server (it listens on the host's loopback; the `kubernetes` Service has
//! no endpoint a pod reaches). The rendered policies deny them too (provisioner unit tests).
//!
//! All traffic goes to addresses inside the network namespaces scripts/real-nodes made. Skipped,
//! saying so, without Ready real nodes (an error with KAPAL_TEST_REQUIRE_REAL_NODES=1).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kapal::catalog::Catalog;
use kapal::proto::v1::*;
use kapal::testing::Backend;
use kapal_tests::app::{
    Clients, REAL_NODE_LABEL, REAL_NODE_TOLERATION, TestApp, real_node_ip, watch_until,
};
use kube::api::{Api, ListParams, LogParams, PostParams};

const READY_TIMEOUT: Duration = Duration::from_secs(240);
const HTTPD_IMAGE: &str = "localhost/kapal/busybox-httpd:1.35";

kapal::on_both_backends!(
    worker_threads = 4;
    the_tenant_boundary_holds_for_real_connections,
);

fn boundary_catalog() -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::load(&kapal::catalog::repo_catalog_dir())?;
    // The setup Job's share of the quota is free once it has run: room for the test's probe pod.
    catalog.add_yaml(
        std::path::Path::new("boundary.yaml"),
        &format!(
            r#"
id: boundary
name: Boundary
description: Two web servers, for the tenant boundary test.
version: "1"
plans: [{{id: trial, name: Free trial, monthly_price_idr: 0, trial_days: 14, cpu_millis: 200, memory_mib: 128, storage_gib: 1}}]
components:
  - {{name: app, kind: Deployment, image: "{HTTPD_IMAGE}", port: 8080, public: true, resource_share: 50, run_as_user: 65534}}
  - {{name: db, kind: Deployment, image: "{HTTPD_IMAGE}", port: 8080, resource_share: 50, run_as_user: 65534}}
setup:
  component: app
  image: "{HTTPD_IMAGE}"
  run_as_user: 65534
  cpu_millis: 100
  memory_mib: 64
  command: ["/bin/sh", "-c", "exit 0"]
credentials: {{username: admin}}
pod_security: restricted
"#
        ),
    )?;
    Ok(catalog)
}

async fn the_tenant_boundary_holds_for_real_connections(backend: Backend) -> anyhow::Result<()> {
    let kube = kapal_tests::cluster::cluster().await?.client();
    if kapal_tests::cluster::ready_real_nodes(&kube)
        .await?
        .is_empty()
    {
        eprintln!(
            "SKIPPED the_tenant_boundary_holds_for_real_connections ({backend:?}): no Ready real node; start them with `scripts/local-cluster up --real-nodes 2`"
        );
        return Ok(());
    }
    let app = TestApp::builder()
        .backend(backend)
        .with_catalog(boundary_catalog()?)
        .on_real_nodes()
        .start()
        .await?;
    let mut a = app.customer("tenant-a").await?;
    let mut b = app.customer("tenant-b").await?;
    let id_a = order_ready(&mut a.clients, "boundary").await?;
    let id_b = order_ready(&mut b.clients, "boundary").await?;
    let ns_a = instance_namespace(&kube, &id_a).await?;
    let ns_b = instance_namespace(&kube, &id_b).await?;
    let a_db = pod_ip(&kube, &ns_a, "db").await?;
    let b_app = pod_ip(&kube, &ns_b, "app").await?;
    let b_service = service_ip(&kube, &ns_b, "app").await?;

    // The control: every target answers a connection from node 1's namespace (Traefik's).
    for (what, ip) in [("A's db pod", &a_db), ("B's app pod", &b_app)] {
        assert!(
            from_node_1(ip, 8080).await?,
            "{what} {ip}:8080 does not answer from node 1: the targets must listen for the test to mean anything"
        );
    }

    let targets = vec![
        ("own db", a_db.clone(), 8080),
        // by its Service's name: the cluster DNS answers through the policies too
        ("own db by name", "db".to_string(), 8080),
        ("other customer's pod", b_app.clone(), 8080),
        ("other customer's Service", b_service.clone(), 8080),
        ("kubelet of node 1", real_node_ip(1), 10250),
        ("kubelet of node 2", real_node_ip(2), 10250),
    ];
    let seen = probe_from(&kube, &ns_a, &targets).await?;
    let open = |what: &str| seen.get(what).map(String::as_str) == Some("open");
    let closed = |what: &str| seen.get(what).map(String::as_str) == Some("closed");
    assert!(
        open("own db"),
        "the instance's own pods reach each other: {seen:?}"
    );
    assert!(
        open("own db by name"),
        "the instance's pods find each other through the cluster DNS: {seen:?}"
    );
    for what in [
        "other customer's pod",
        "other customer's Service",
        "kubelet of node 1",
        "kubelet of node 2",
    ] {
        assert!(
            closed(what),
            "{what} must be out of reach of a customer's pod, but: {seen:?} (is the NetworkPolicy engine, kube-router, running? scripts/real-nodes status)"
        );
    }
    Ok(())
}

/// Orders `app`'s trial and waits until the instance is READY; returns its id.
async fn order_ready(c: &mut Clients, app: &str) -> anyhow::Result<String> {
    let order = c
        .orders
        .checkout(CheckoutRequest {
            app_id: app.into(),
            plan_id: "trial".into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        })
        .await?
        .into_inner();
    anyhow::ensure!(!order.instance_id.is_empty(), "no instance: {order:?}");
    watch_until(
        &mut c.instances,
        &order.instance_id,
        InstanceStatus::Ready,
        READY_TIMEOUT,
    )
    .await?;
    Ok(order.instance_id)
}

async fn instance_namespace(kube: &kube::Client, instance_id: &str) -> anyhow::Result<String> {
    Api::<Namespace>::all(kube.clone())
        .list(&ListParams::default().labels(&format!(
            "{}={instance_id}",
            kapal_provisioner::render::LABEL_INSTANCE
        )))
        .await?
        .items
        .into_iter()
        .find_map(|n| n.metadata.name)
        .context("the instance's namespace")
}

/// The IP of the running pod of `component` in `namespace`.
async fn pod_ip(kube: &kube::Client, namespace: &str, component: &str) -> anyhow::Result<String> {
    Api::<Pod>::namespaced(kube.clone(), namespace)
        .list(&ListParams::default().labels(&format!(
            "{}={component}",
            kapal_provisioner::render::LABEL_COMPONENT
        )))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .find_map(|p| p.status?.pod_ip)
        .with_context(|| format!("a running {component} pod in {namespace}"))
}

/// The ClusterIP of the Service in front of `component`.
async fn service_ip(
    kube: &kube::Client,
    namespace: &str,
    component: &str,
) -> anyhow::Result<String> {
    Api::<Service>::namespaced(kube.clone(), namespace)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|sel| sel.get(kapal_provisioner::render::LABEL_COMPONENT))
                .is_some_and(|c| c == component)
        })
        .find_map(|s| s.spec?.cluster_ip.filter(|ip| ip != "None"))
        .with_context(|| format!("the Service of {component} in {namespace}"))
}

/// Whether a TCP connection from node 1's network namespace (where Traefik runs) to `ip:port`
/// opens.
async fn from_node_1(ip: &str, port: u16) -> anyhow::Result<bool> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/real-nodes");
    let out = tokio::process::Command::new(script)
        .args([
            "exec",
            "1",
            "busybox",
            "nc",
            "-w",
            "3",
            ip,
            &port.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("scripts/real-nodes exec")?;
    Ok(out.status.success())
}

/// Runs a pod in `namespace` (under its policies, like any pod there) on a real node that tries
/// a TCP connection to each target and prints `<what>=open|closed`; returns what it printed.
async fn probe_from(
    kube: &kube::Client,
    namespace: &str,
    targets: &[(&str, String, u16)],
) -> anyhow::Result<BTreeMap<String, String>> {
    // The engine learns a new pod's address from the API server: the probe waits until it has
    // had time to, and tries an allowed connection up to 10 times before taking "closed".
    let mut script = String::from("sleep 5\n");
    for (what, ip, port) in targets {
        script.push_str(&format!(
            "r=closed; for i in 1 2 3 4 5 6 7 8 9 10; do if nc -w 3 {ip} {port} </dev/null >/dev/null 2>&1; then r=open; break; fi; case \"{what}\" in \"own db\"*) ;; *) break ;; esac; sleep 1; done; echo \"{what}=$r\"\n"
        ));
    }
    let (key, value) = REAL_NODE_LABEL;
    let toleration = REAL_NODE_TOLERATION;
    let (t_key, t_rest) = toleration.split_once('=').context("toleration")?;
    let (t_value, t_effect) = t_rest.split_once(':').context("toleration")?;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "boundary-probe"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {key: value},
            "tolerations": [{"key": t_key, "operator": "Equal", "value": t_value, "effect": t_effect}],
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe",
                "image": HTTPD_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "resources": {
                    "requests": {"cpu": "50m", "memory": "32Mi", "ephemeral-storage": "16Mi"},
                    "limits": {"cpu": "50m", "memory": "32Mi", "ephemeral-storage": "16Mi"}
                },
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
            }]
        }
    }))?;
    let pods = Api::<Pod>::namespaced(kube.clone(), namespace);
    pods.create(&PostParams::default(), &pod)
        .await
        .context("creating the probe pod in the instance's namespace")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let p = pods.get("boundary-probe").await?;
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the probe pod did not finish: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let log = pods
        .logs("boundary-probe", &LogParams::default())
        .await
        .context("the probe's log (pods/log through the API server and the real node's kubelet)")?;
    Ok(log
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}
