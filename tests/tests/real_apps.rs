//! Customers' apps in real containers (issue 15): through the public API of the real services, a
//! customer orders a WordPress trial; the provisioner places it on the local cluster's real nodes
//! (scripts/real-nodes: kubelet + containerd + runc), running the images built on the machine
//! (scripts/build-images, mapped by deploy/local-cluster/images.map). Then, over HTTPS to Traefik
//! inside the nodes' network (10.213.0.11, a namespace our scripts made; nothing else is
//! contacted):
//!
//! - `https://<customer>.wordpress.<domain>/` answers with WordPress' own page, titled by the
//!   setup Job;
//! - `wp-login.php` with the credentials GetInstance gives logs in (the dashboard shows);
//! - a post made with those credentials (XML-RPC) is still there after RestartInstance, after
//!   StopInstance + StartInstance, and after the node of its database fails and the instance is
//!   moved to another real node (in the SQLite run only: one node fails at a time). The volume
//!   is a host directory every real node mounts (deploy/local-cluster/README.md, "Volumes on real
//!   nodes"), so the move keeps the data here; production's local-path volumes would not move.
//!
//! Skipped, with the reason printed, when no real node is Ready (`scripts/local-cluster up
//! --real-nodes 2`). Missing images are built and imported by `scripts/real-nodes images` first
//! (a cold build takes minutes; see deploy/local-cluster/README.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kapal::proto::v1::*;
use kapal::testing::Backend;
use kapal_tests::app::{Clients, REAL_NODE_LABEL, TestApp, watch_until};
use kapal_tests::cluster::{TestNamespace, wait_for};
use kube::api::{Api, ListParams, PostParams};

/// Traefik of the local cluster's real nodes (scripts/real-nodes: node 1's address).
const INGRESS: &str = "10.213.0.11:443";
/// First start of MariaDB and WordPress (both initialise their volumes), and the setup Job.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
const ACTION_TIMEOUT: Duration = Duration::from_secs(240);
/// A node fails: NotReady after the controller manager's grace period (20 s), the pods' 20 s
/// toleration, a new pod elsewhere, MariaDB's recovery.
const MOVE_TIMEOUT: Duration = Duration::from_secs(420);
const SITE_TITLE: &str = "My WordPress site";

kapal::on_both_backends!(
    worker_threads = 4;
    wordpress_runs_answers_its_url_and_keeps_its_data,
);

async fn wordpress_runs_answers_its_url_and_keeps_its_data(backend: Backend) -> anyhow::Result<()> {
    let kube = kapal_tests::cluster::cluster().await?.client();
    let nodes = kapal_tests::cluster::ready_real_nodes(&kube).await?;
    if nodes.is_empty() {
        eprintln!(
            "SKIPPED real_apps ({backend:?}): no Ready real node (label {}={}); start them with `scripts/local-cluster up --real-nodes 2`",
            REAL_NODE_LABEL.0, REAL_NODE_LABEL.1
        );
        return Ok(());
    }
    import_images().await?;

    // The wildcard certificate Traefik serves for every instance (the provisioner copies it
    // into the instance's namespace); the client trusts exactly it. A domain of this run's own,
    // so Traefik never mixes it up with another stack's certificate.
    let domain = format!(
        "{}.kapal.test",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let certified = rcgen::generate_simple_self_signed(vec![format!("*.wordpress.{domain}")])?;
    let tls_ns = TestNamespace::new("real-apps-tls").await?;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "wildcard" },
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": certified.cert.pem(),
            "tls.key": certified.signing_key.serialize_pem(),
        },
    }))?;
    tls_ns
        .api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await?;

    let app = TestApp::builder()
        .backend(backend)
        .with_domain(&domain)
        .on_real_nodes()
        .with_tls_secret(format!("{}/wildcard", tls_ns.name()))
        .start()
        .await?;
    anyhow::ensure!(app.domain == domain, "the test's domain is {}", app.domain);
    let mut c = app.customer("wp").await?.clients;
    let result = wordpress_on_real_nodes(backend, &kube, &nodes, &mut c, &certified.cert).await;
    // Whatever happened, this stack's instances leave the real nodes (other tests share them):
    // TestApp's Drop deletes its partition's namespaces.
    drop(app);
    tls_ns.cleanup().await?;
    result
}

async fn wordpress_on_real_nodes(
    backend: Backend,
    kube: &kube::Client,
    nodes: &[String],
    c: &mut Clients,
    cert: &rcgen::Certificate,
) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let instance_id = order_ready(c, "wordpress", "trial").await?;
    eprintln!(
        "real_apps ({backend:?}): WordPress ordered and READY in {:?}",
        started.elapsed()
    );
    let instance = get_instance(c, &instance_id).await?;
    let credentials = instance.credentials.clone().context("credentials")?;
    anyhow::ensure!(credentials.username == "admin", "{credentials:?}");
    anyhow::ensure!(
        instance.url == format!("https://{}", instance.hostname),
        "{instance:?}"
    );
    let namespace = instance_namespace(kube, &instance_id).await?;
    let pods = running_pods(kube, &namespace).await?;
    for (name, node) in &pods {
        anyhow::ensure!(
            nodes.contains(node),
            "{name} runs on {node}, not on a real node ({nodes:?})"
        );
    }
    eprintln!("real_apps ({backend:?}): pods {pods:?}");

    let mut site = Site::new(&instance.hostname, cert)?;
    // WordPress' own page, with the title the setup Job installed it with. The instance is
    // READY when its pods are; the setup Job may still be installing (WordPress says "My Site"
    // until wp_install() sets the title), so this waits for the Job's work.
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let home = loop {
        let home = site.until_ok("/", READY_TIMEOUT).await?;
        if home.body.contains(&format!("<title>{SITE_TITLE}")) {
            break home;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the home page is not WordPress' page titled {SITE_TITLE:?}: {}",
            excerpt(&home.body)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!(
        "real_apps ({backend:?}): WordPress' page with the setup Job's title {:?} after ordering",
        started.elapsed()
    );
    anyhow::ensure!(
        home.body.contains("wp-content/themes/"),
        "{}",
        excerpt(&home.body)
    );

    // The generated credentials log in.
    site.log_in(&credentials.username, &credentials.password)
        .await?;
    let wrong = Site::new(&instance.hostname, cert)?
        .log_in(&credentials.username, "not-the-password")
        .await;
    anyhow::ensure!(wrong.is_err(), "a wrong password logged in");

    // Data: a post made with the credentials.
    let title = format!("Kept by Kapal {}", uuid::Uuid::new_v4().simple());
    let post = site
        .new_post(&credentials.username, &credentials.password, &title)
        .await?;
    site.has_post(&post, &title, ACTION_TIMEOUT).await?;

    // RestartInstance: new pods, the same data.
    let before = pod_uids(kube, &namespace).await?;
    c.instances.restart_instance(action(&instance_id)).await?;
    wait_for("new pods after RestartInstance", ACTION_TIMEOUT, || {
        let (kube, namespace, before) = (kube.clone(), namespace.clone(), before.clone());
        async move {
            let now = pod_uids(&kube, &namespace).await?;
            let ready = running_pods(&kube, &namespace).await.is_ok();
            Ok((ready && now.len() == 2 && now.iter().all(|u| !before.contains(u))).then_some(()))
        }
    })
    .await?;
    watch_until(
        &mut c.instances,
        &instance_id,
        InstanceStatus::Ready,
        ACTION_TIMEOUT,
    )
    .await?;
    site.has_post(&post, &title, ACTION_TIMEOUT).await?;
    eprintln!("real_apps ({backend:?}): the post survived RestartInstance");

    // StopInstance + StartInstance.
    c.instances.stop_instance(action(&instance_id)).await?;
    watch_until(
        &mut c.instances,
        &instance_id,
        InstanceStatus::Suspended,
        ACTION_TIMEOUT,
    )
    .await?;
    wait_for("no pods while stopped", ACTION_TIMEOUT, || {
        let (kube, namespace) = (kube.clone(), namespace.clone());
        async move { Ok(pod_uids(&kube, &namespace).await?.is_empty().then_some(())) }
    })
    .await?;
    c.instances.start_instance(action(&instance_id)).await?;
    watch_until(
        &mut c.instances,
        &instance_id,
        InstanceStatus::Ready,
        READY_TIMEOUT,
    )
    .await?;
    site.has_post(&post, &title, ACTION_TIMEOUT).await?;
    eprintln!("real_apps ({backend:?}): the post survived StopInstance + StartInstance");

    if nodes.len() < 2 {
        eprintln!(
            "real_apps ({backend:?}): node failure not tried: one real node only (scripts/local-cluster up --real-nodes 2)"
        );
    } else if backend == Backend::Postgres {
        // The SQLite run fails a node; two runs failing both nodes at once would leave nowhere to
        // move to (and what happens to the pods does not depend on Kapal's database).
        eprintln!("real_apps ({backend:?}): node failure is tried by the SQLite run");
    } else {
        node_failure_moves_it(c, kube, &mut site, &instance_id, &namespace, &post, &title).await?;
        eprintln!(
            "real_apps ({backend:?}): the post survived the failure of its node and the move"
        );
    }

    c.instances.delete_instance(action(&instance_id)).await?;
    eprintln!("real_apps ({backend:?}): done in {:?}", started.elapsed());
    Ok(())
}

/// The node of the instance's database fails (`scripts/real-nodes node-down`): its pods are
/// evicted and recreated on another real node, where the site answers with the post. The failed
/// node comes back at the end (`node-up`), which also stops the containers its kubelet left
/// running while it was down (the volume is the same host directory on every real node, so the
/// old database must be gone before the new one can lock its files).
async fn node_failure_moves_it(
    c: &mut Clients,
    kube: &kube::Client,
    site: &mut Site,
    instance_id: &str,
    namespace: &str,
    post: &str,
    title: &str,
) -> anyhow::Result<()> {
    let pods = running_pods(kube, namespace).await?;
    let (_, failed) = pods
        .iter()
        .find(|(name, _)| name.starts_with("db-"))
        .cloned()
        .context("the database pod")?;
    let index = failed
        .rsplit('-')
        .next()
        .context("real node index")?
        .to_string();
    real_nodes(&["node-down", &index]).await?;
    // Placed elsewhere; not Ready yet: the old database still runs on the failed node and holds
    // the data directory's lock.
    let result = wait_for(
        &format!("the instance's pods to be placed off {failed}"),
        MOVE_TIMEOUT,
        || {
            let (kube, namespace, failed) = (kube.clone(), namespace.to_string(), failed.clone());
            async move {
                let pods = placed_pods(&kube, &namespace).await?;
                Ok(
                    (pods.len() == 2 && pods.iter().all(|(_, node)| *node != failed))
                        .then_some(pods),
                )
            }
        },
    )
    .await;
    // The node comes back whatever happened: other tests share it.
    let up = real_nodes(&["node-up", &index]).await;
    let moved = result?;
    up?;
    eprintln!("real_apps: moved off {failed}: {moved:?}");
    watch_until(
        &mut c.instances,
        instance_id,
        InstanceStatus::Ready,
        MOVE_TIMEOUT,
    )
    .await?;
    site.has_post(post, title, MOVE_TIMEOUT).await
}

fn action(id: &str) -> InstanceActionRequest {
    InstanceActionRequest {
        instance_id: id.into(),
    }
}

async fn get_instance(c: &mut Clients, id: &str) -> anyhow::Result<Instance> {
    Ok(c.instances
        .get_instance(GetInstanceRequest {
            instance_id: id.into(),
        })
        .await?
        .into_inner())
}

/// Orders `app` on `plan` and waits until the instance is READY; returns its id.
async fn order_ready(c: &mut Clients, app: &str, plan: &str) -> anyhow::Result<String> {
    let order = c
        .orders
        .checkout(CheckoutRequest {
            app_id: app.into(),
            plan_id: plan.into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        })
        .await?
        .into_inner();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let order = loop {
        let o = c
            .orders
            .get_order(GetOrderRequest {
                order_id: order.id.clone(),
            })
            .await?
            .into_inner();
        if !o.instance_id.is_empty() {
            break o;
        }
        anyhow::ensure!(
            o.status != OrderStatus::Failed as i32,
            "order failed: {o:?}"
        );
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "order not done: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    watch_until(
        &mut c.instances,
        &order.instance_id,
        InstanceStatus::Ready,
        READY_TIMEOUT,
    )
    .await?;
    Ok(order.instance_id)
}

/// Names of the real nodes that are Ready.
fn repo_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

/// `scripts/real-nodes ARGS`, its output on the test's stderr.
async fn real_nodes(args: &[&str]) -> anyhow::Result<()> {
    let status = tokio::process::Command::new(repo_script("real-nodes"))
        .args(args)
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .status()
        .await
        .context("running scripts/real-nodes")?;
    anyhow::ensure!(status.success(), "scripts/real-nodes {args:?}: {status}");
    Ok(())
}

/// The local images in every real node's containerd (built first when missing; both backends'
/// tests may ask at once: the scripts take locks).
async fn import_images() -> anyhow::Result<()> {
    real_nodes(&["images"]).await
}

async fn instance_namespace(kube: &kube::Client, instance_id: &str) -> anyhow::Result<String> {
    let list = Api::<Namespace>::all(kube.clone())
        .list(&ListParams::default().labels(&format!(
            "{}={instance_id}",
            kapal_provisioner::render::LABEL_INSTANCE
        )))
        .await?;
    list.items
        .into_iter()
        .find_map(|n| n.metadata.name)
        .context("the instance's namespace")
}

/// The instance's app and database pods, when both are Running and Ready: (pod name, node).
async fn running_pods(
    kube: &kube::Client,
    namespace: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let pods = Api::<Pod>::namespaced(kube.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    let mut out = Vec::new();
    for pod in pods.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if !is_workload_pod(&pod) || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ready = pod.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        anyhow::ensure!(ready, "pod {name} is not Running and Ready");
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        out.push((name, node));
    }
    anyhow::ensure!(
        out.len() == 2,
        "expected the app and db pods, found {out:?}"
    );
    out.sort();
    Ok(out)
}

/// A pod of the app's or the database's workload (not of the setup Job).
fn is_workload_pod(pod: &Pod) -> bool {
    let component = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(kapal_provisioner::render::LABEL_COMPONENT));
    matches!(component.map(String::as_str), Some("app" | "db"))
}

/// The instance's app and database pods that are placed on a node and not being deleted, Ready
/// or not: (pod name, node).
async fn placed_pods(
    kube: &kube::Client,
    namespace: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let pods = Api::<Pod>::namespaced(kube.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    let mut out: Vec<(String, String)> = pods
        .items
        .into_iter()
        .filter(|p| is_workload_pod(p) && p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name?, p.spec?.node_name?)))
        .collect();
    out.sort();
    Ok(out)
}

/// UIDs of the instance's app and database pods (setup Job pods aside).
async fn pod_uids(kube: &kube::Client, namespace: &str) -> anyhow::Result<Vec<String>> {
    let pods = Api::<Pod>::namespaced(kube.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(is_workload_pod)
        .filter_map(|p| p.metadata.uid)
        .collect())
}

fn excerpt(s: &str) -> String {
    s.chars().take(600).collect()
}

/// Percent-encoding of a form value (application/x-www-form-urlencoded).
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A page WordPress answered.
struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

/// A browser of one site: HTTPS to Traefik's address with the site's name (SNI and Host),
/// trusting only the test's certificate, keeping cookies.
struct Site {
    host: String,
    ingress: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    cookies: BTreeMap<String, String>,
}

impl Site {
    fn new(host: &str, cert: &rcgen::Certificate) -> anyhow::Result<Site> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone())?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Site {
            host: host.to_string(),
            ingress: INGRESS.parse()?,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            cookies: BTreeMap::new(),
        })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<(&str, String)>,
    ) -> anyhow::Result<Page> {
        let fut = async {
            let tcp = tokio::net::TcpStream::connect(self.ingress).await?;
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())?;
            let tls = self.tls.connect(name, tcp).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            let mut req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, &self.host)
                .header(http::header::USER_AGENT, "kapal-tests/real_apps");
            if !self.cookies.is_empty() {
                let cookie: Vec<String> = self
                    .cookies
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                req = req.header(http::header::COOKIE, cookie.join("; "));
            }
            let data = match body {
                Some((content_type, data)) => {
                    req = req.header(http::header::CONTENT_TYPE, content_type);
                    data
                }
                None => String::new(),
            };
            let res = sender
                .send_request(req.body(Full::new(Bytes::from(data)))?)
                .await?;
            for value in res.headers().get_all(http::header::SET_COOKIE) {
                let Some((name, value)) = value
                    .to_str()?
                    .split(';')
                    .next()
                    .and_then(|kv| kv.split_once('='))
                else {
                    continue;
                };
                if value.is_empty() || value == "deleted" {
                    self.cookies.remove(name.trim());
                } else {
                    self.cookies
                        .insert(name.trim().to_string(), value.to_string());
                }
            }
            let status = res.status().as_u16();
            let location = res
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = res.into_body().collect().await?.to_bytes();
            anyhow::Ok(Page {
                status,
                location,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
        };
        tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .with_context(|| format!("{method} https://{}{path}: no answer in 60 s", self.host))?
            .with_context(|| format!("{method} https://{}{path}", self.host))
    }

    /// GETs `path` until it answers 200 (the ingress may not route to new pods at once).
    async fn until_ok(&mut self, path: &str, timeout: Duration) -> anyhow::Result<Page> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match self.send("GET", path, None).await {
                Ok(page) if page.status == 200 => return Ok(page),
                Ok(page) => format!("HTTP {}: {}", page.status, excerpt(&page.body)),
                Err(e) => format!("{e:#}"),
            };
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "GET https://{}{path} did not answer 200 within {timeout:?}; last: {last}",
                self.host
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Logs in at wp-login.php as a browser does and opens the dashboard.
    async fn log_in(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        // WordPress refuses logins from browsers without cookies: this sets its test cookie.
        let form = self.until_ok("/wp-login.php", ACTION_TIMEOUT).await?;
        anyhow::ensure!(
            form.body.contains("user_login"),
            "no login form: {}",
            excerpt(&form.body)
        );
        let admin = format!("https://{}/wp-admin/", self.host);
        let body = format!(
            "log={}&pwd={}&wp-submit=Log+In&redirect_to={}&testcookie=1",
            form_encode(user),
            form_encode(password),
            form_encode(&admin)
        );
        let res = self
            .send(
                "POST",
                "/wp-login.php",
                Some(("application/x-www-form-urlencoded", body)),
            )
            .await?;
        anyhow::ensure!(
            res.status == 302 && res.location.as_deref() == Some(admin.as_str()),
            "login refused: HTTP {} to {:?}: {}",
            res.status,
            res.location,
            excerpt(&res.body)
        );
        anyhow::ensure!(
            self.cookies
                .keys()
                .any(|k| k.starts_with("wordpress_logged_in_")),
            "no logged-in cookie: {:?}",
            self.cookies.keys()
        );
        let dashboard = self.send("GET", "/wp-admin/", None).await?;
        anyhow::ensure!(
            dashboard.status == 200 && dashboard.body.contains("<title>Dashboard"),
            "the dashboard: HTTP {}: {}",
            dashboard.status,
            excerpt(&dashboard.body)
        );
        Ok(())
    }

    /// Publishes a post through XML-RPC (`wp.newPost`) with the credentials; returns its id.
    async fn new_post(
        &mut self,
        user: &str,
        password: &str,
        title: &str,
    ) -> anyhow::Result<String> {
        let call = format!(
            "<?xml version=\"1.0\"?><methodCall><methodName>wp.newPost</methodName><params>\
             <param><value><int>1</int></value></param>\
             <param><value><string>{}</string></value></param>\
             <param><value><string>{}</string></value></param>\
             <param><value><struct>\
             <member><name>post_title</name><value><string>{}</string></value></member>\
             <member><name>post_content</name><value><string>Written through XML-RPC by the test.</string></value></member>\
             <member><name>post_status</name><value><string>publish</string></value></member>\
             </struct></value></param></params></methodCall>",
            xml_escape(user),
            xml_escape(password),
            xml_escape(title)
        );
        let res = self
            .send("POST", "/xmlrpc.php", Some(("text/xml", call)))
            .await?;
        anyhow::ensure!(
            res.status == 200 && !res.body.contains("<fault>"),
            "wp.newPost: HTTP {}: {}",
            res.status,
            excerpt(&res.body)
        );
        let id = res
            .body
            .split("<string>")
            .nth(1)
            .and_then(|s| s.split("</string>").next())
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            .with_context(|| format!("no post id in {}", excerpt(&res.body)))?;
        Ok(id.to_string())
    }

    /// The post's page answers with its title (retrying while the site comes back).
    async fn has_post(&mut self, id: &str, title: &str, timeout: Duration) -> anyhow::Result<()> {
        let page = self.until_ok(&format!("/?p={id}"), timeout).await?;
        anyhow::ensure!(
            page.body.contains(title),
            "post {id} lost its title {title:?}: {}",
            excerpt(&page.body)
        );
        Ok(())
    }
}
