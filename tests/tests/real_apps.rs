//! Customers' apps in real containers (issue 15): through the public API of the real services, a
//! customer orders WordPress, n8n or Ghost; the provisioner places it on the local cluster's real
//! nodes (scripts/real-nodes: kubelet + containerd + runc), running the images built on the
//! machine (scripts/build-images, mapped by deploy/local-cluster/images.map), its volumes made by
//! K3s' local-path-provisioner (StorageClass `real-local-path`: a 0777 directory on the node the
//! pod was placed on, bound to that node). Then, over HTTPS to Traefik inside the nodes' network
//! (10.213.0.11, a namespace our scripts made; nothing else is contacted):
//!
//! - at the moment the instance is READY its app is set up: WordPress installed (its page titled
//!   by the setup Job, not the installer), n8n's and Ghost's owner made with the generated
//!   credentials (the setup Job; READY waits for it);
//! - `https://<customer>.<app>.<domain>/` answers with the app's own page;
//! - the credentials GetInstance gives log in (WordPress: wp-login.php and its dashboard; n8n:
//!   `POST /rest/login`; Ghost: an admin session, `POST /ghost/api/admin/session/`), a wrong
//!   password does not;
//! - data made with them (a post, a workflow, a Ghost post) is still there after RestartInstance
//!   and after StopInstance + StartInstance;
//! - WordPress, SQLite run only (one node fails at a time): the node of its database fails. Its
//!   volume is bound to that node (as K3s' local-path volumes are), so the replacement database
//!   waits, unplaced, and the instance is DEGRADED saying so; when the node is back the database
//!   starts there again and the post is there. Moving data to another node needs replicated
//!   storage (deploy/local-cluster/README.md, "Volumes on real nodes").
//!
//! Ghost runs on MariaDB 10.11 here (the local image mapped for the catalog's mysql:8.4.5), not
//! MySQL 8 as in production.
//!
//! Skipped, with the reason printed, when no real node is Ready (`scripts/local-cluster up
//! --real-nodes 2`). Missing images are built and imported by `scripts/real-nodes images n8n
//! ghost` first (a cold build takes long; see deploy/local-cluster/README.md).

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

/// First start of the app and its database (both initialise their volumes), and the setup Job.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
const ACTION_TIMEOUT: Duration = Duration::from_secs(300);
/// A node fails: NotReady after the controller manager's grace period (20 s), the pods' 20 s
/// toleration, the stranded pod released; then the node comes back and MariaDB recovers.
const MOVE_TIMEOUT: Duration = Duration::from_secs(420);
const SITE_TITLE: &str = "My WordPress site";
/// The title Ghost's setup Job gives the site (catalog/ghost.yaml).
const GHOST_TITLE: &str = "My Ghost site";

kapal::on_both_backends!(
    worker_threads = 4;
    wordpress_runs_answers_its_url_and_keeps_its_data,
    n8n_runs_answers_its_url_and_keeps_its_data,
    ghost_runs_answers_its_url_and_keeps_its_data,
);

async fn wordpress_runs_answers_its_url_and_keeps_its_data(backend: Backend) -> anyhow::Result<()> {
    on_real_nodes(backend, "wordpress").await
}

async fn n8n_runs_answers_its_url_and_keeps_its_data(backend: Backend) -> anyhow::Result<()> {
    on_real_nodes(backend, "n8n").await
}

async fn ghost_runs_answers_its_url_and_keeps_its_data(backend: Backend) -> anyhow::Result<()> {
    on_real_nodes(backend, "ghost").await
}

/// A stack of this test's own (domain, wildcard certificate, TestApp on real nodes) orders
/// `app_id` as a customer and runs the app's checks; the stack's namespaces go afterwards.
async fn on_real_nodes(backend: Backend, app_id: &str) -> anyhow::Result<()> {
    let kube = kapal_tests::cluster::cluster().await?.client();
    let nodes = kapal_tests::cluster::ready_real_nodes(&kube).await?;
    if nodes.is_empty() {
        eprintln!(
            "SKIPPED real_apps {app_id} ({backend:?}): no Ready real node (label {}={}); start them with `scripts/local-cluster up --real-nodes 2`",
            REAL_NODE_LABEL.0, REAL_NODE_LABEL.1
        );
        return Ok(());
    }
    import_images(app_id).await?;

    // The wildcard certificate Traefik serves for every instance (the provisioner copies it
    // into the instance's namespace); the client trusts exactly it. A domain of this run's own,
    // so Traefik never mixes it up with another stack's certificate.
    let domain = format!(
        "{}.kapal.test",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let certified = rcgen::generate_simple_self_signed(vec![format!("*.{app_id}.{domain}")])?;
    let tls_ns = TestNamespace::new(&format!("real-{app_id}-tls")).await?;
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
    let mut c = app.customer(&app_id[..2]).await?.clients;
    let t = Run {
        backend,
        app_id,
        kube: &kube,
        nodes: &nodes,
        cert: &certified.cert,
    };
    let result = match app_id {
        "wordpress" => wordpress(&t, &mut c).await,
        "n8n" => n8n(&t, &mut c).await,
        _ => ghost(&t, &mut c).await,
    };
    // Whatever happened, this stack's instances leave the real nodes (other tests share them):
    // TestApp's Drop deletes its partition's namespaces.
    drop(app);
    tls_ns.cleanup().await?;
    result
}

/// One app's run.
struct Run<'a> {
    backend: Backend,
    app_id: &'a str,
    kube: &'a kube::Client,
    nodes: &'a [String],
    cert: &'a rcgen::Certificate,
}

/// What an app ordered and READY looks like.
struct Ordered {
    instance_id: String,
    instance: Instance,
    credentials: Credentials,
    namespace: String,
    /// Its app and database pods.
    pods: usize,
    started: tokio::time::Instant,
}

impl Run<'_> {
    fn log(&self, what: impl std::fmt::Display) {
        eprintln!("real_apps {} ({:?}): {what}", self.app_id, self.backend);
    }

    /// Orders the app's trial, waits for READY and checks its pods run on real nodes.
    async fn order(&self, c: &mut Clients) -> anyhow::Result<Ordered> {
        let started = tokio::time::Instant::now();
        let instance_id = order_ready(c, self.app_id, "trial").await?;
        self.log(format_args!("ordered and READY in {:?}", started.elapsed()));
        let instance = get_instance(c, &instance_id).await?;
        let credentials = instance.credentials.clone().context("credentials")?;
        anyhow::ensure!(
            instance.url == format!("https://{}", instance.hostname),
            "{instance:?}"
        );
        let namespace = instance_namespace(self.kube, &instance_id).await?;
        let pods = if self.app_id == "n8n" { 1 } else { 2 };
        let running = running_pods(self.kube, &namespace, pods).await?;
        for (name, node) in &running {
            anyhow::ensure!(
                self.nodes.contains(node),
                "{name} runs on {node}, not on a real node ({:?})",
                self.nodes
            );
        }
        self.log(format_args!("pods {running:?}"));
        Ok(Ordered {
            instance_id,
            instance,
            credentials,
            namespace,
            pods,
            started,
        })
    }

    /// RestartInstance: new pods, READY again.
    async fn restart(&self, c: &mut Clients, o: &Ordered) -> anyhow::Result<()> {
        let before = pod_uids(self.kube, &o.namespace).await?;
        c.instances.restart_instance(action(&o.instance_id)).await?;
        wait_for("new pods after RestartInstance", ACTION_TIMEOUT, || {
            let (kube, namespace, before) =
                (self.kube.clone(), o.namespace.clone(), before.clone());
            let pods = o.pods;
            async move {
                let now = pod_uids(&kube, &namespace).await?;
                let ready = running_pods(&kube, &namespace, pods).await.is_ok();
                Ok(
                    (ready && now.len() == pods && now.iter().all(|u| !before.contains(u)))
                        .then_some(()),
                )
            }
        })
        .await?;
        watch_until(
            &mut c.instances,
            &o.instance_id,
            InstanceStatus::Ready,
            ACTION_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// StopInstance (SUSPENDED, no pods) + StartInstance (READY).
    async fn stop_start(&self, c: &mut Clients, o: &Ordered) -> anyhow::Result<()> {
        c.instances.stop_instance(action(&o.instance_id)).await?;
        watch_until(
            &mut c.instances,
            &o.instance_id,
            InstanceStatus::Suspended,
            ACTION_TIMEOUT,
        )
        .await?;
        wait_for("no pods while stopped", ACTION_TIMEOUT, || {
            let (kube, namespace) = (self.kube.clone(), o.namespace.clone());
            async move { Ok(pod_uids(&kube, &namespace).await?.is_empty().then_some(())) }
        })
        .await?;
        c.instances.start_instance(action(&o.instance_id)).await?;
        watch_until(
            &mut c.instances,
            &o.instance_id,
            InstanceStatus::Ready,
            READY_TIMEOUT,
        )
        .await?;
        Ok(())
    }
}

async fn wordpress(t: &Run<'_>, c: &mut Clients) -> anyhow::Result<()> {
    let o = t.order(c).await?;
    anyhow::ensure!(o.credentials.username == "admin", "{:?}", o.credentials);
    let mut site = Site::new(&o.instance.hostname, t.cert, &[])?;
    // READY means installed: the first answer is WordPress' page with the title the setup Job
    // installed it with, not a redirect to wp-admin/install.php.
    let home = site.first_answer("/").await?;
    anyhow::ensure!(
        home.status == 200 && home.body.contains(&format!("<title>{SITE_TITLE}")),
        "at READY the home page is not the installed WordPress titled {SITE_TITLE:?}: HTTP {} to {:?}: {}",
        home.status,
        home.location,
        excerpt(&home.body)
    );
    anyhow::ensure!(
        home.body.contains("wp-content/themes/"),
        "{}",
        excerpt(&home.body)
    );
    t.log("installed when READY: WordPress' page with the setup Job's title");

    // The generated credentials log in.
    let (user, password) = (&o.credentials.username, &o.credentials.password);
    site.wp_log_in(user, password).await?;
    let wrong = Site::new(&o.instance.hostname, t.cert, &[])?
        .wp_log_in(user, "not-the-password")
        .await;
    anyhow::ensure!(wrong.is_err(), "a wrong password logged in");

    // Data: a post made with the credentials.
    let title = format!("Kept by Kapal {}", uuid::Uuid::new_v4().simple());
    let post = site.wp_new_post(user, password, &title).await?;
    site.wp_has_post(&post, &title, ACTION_TIMEOUT).await?;

    t.restart(c, &o).await?;
    site.wp_has_post(&post, &title, ACTION_TIMEOUT).await?;
    t.log("the post survived RestartInstance");
    t.stop_start(c, &o).await?;
    site.wp_has_post(&post, &title, ACTION_TIMEOUT).await?;
    t.log("the post survived StopInstance + StartInstance");

    if t.nodes.len() < 2 {
        t.log(
            "node failure not tried: one real node only (scripts/local-cluster up --real-nodes 2)",
        );
    } else if t.backend == Backend::Postgres {
        // The SQLite run fails a node; two runs failing both nodes at once would leave nothing
        // to run on (and what happens to the pods does not depend on Kapal's database).
        t.log("node failure is tried by the SQLite run");
    } else {
        node_failure_waits_for_its_volume(t, c, &mut site, &o, &post, &title).await?;
        t.log("the post survived the failure of its database's node");
    }

    c.instances.delete_instance(action(&o.instance_id)).await?;
    t.log(format_args!("done in {:?}", o.started.elapsed()));
    Ok(())
}

async fn n8n(t: &Run<'_>, c: &mut Clients) -> anyhow::Result<()> {
    let o = t.order(c).await?;
    let host = o.instance.hostname.clone();
    anyhow::ensure!(
        o.credentials.username == format!("owner@{host}"),
        "{:?}",
        o.credentials
    );
    // n8n binds its session cookie to the browser-id header.
    let headers = [("browser-id", "kapal-real-apps-test")];
    let mut site = Site::new(&host, t.cert, &headers)?;
    // READY means set up: the REST API answers and no longer asks for an owner.
    let settings = site.first_answer("/rest/settings").await?;
    let json = settings.json()?;
    anyhow::ensure!(
        settings.status == 200
            && json["data"]["userManagement"]["showSetupOnFirstLoad"] == serde_json::json!(false),
        "at READY n8n is not set up: HTTP {}: {}",
        settings.status,
        excerpt(&settings.body)
    );
    t.log("set up when READY: /rest/settings says the owner exists");
    let editor = site.until_ok("/", ACTION_TIMEOUT).await?;
    anyhow::ensure!(
        editor
            .body
            .contains("<title>n8n.io - Workflow Automation</title>"),
        "not n8n's editor: {}",
        excerpt(&editor.body)
    );

    let (user, password) = (
        o.credentials.username.clone(),
        o.credentials.password.clone(),
    );
    site.n8n_log_in(&user, &password).await?;
    let wrong = Site::new(&host, t.cert, &headers)?
        .n8n_log_in(&user, "Not-the-password-1")
        .await;
    anyhow::ensure!(wrong.is_err(), "a wrong password logged in");
    // The setup Job's owner is the only one: a second setup is refused.
    let again = site
        .send_json(
            "POST",
            "/rest/owner/setup",
            serde_json::json!({ "email": "intruder@example.test", "firstName": "X", "lastName": "Y", "password": "Intruder-password-1" }),
        )
        .await?;
    anyhow::ensure!(again.status != 200, "a second owner setup was accepted");

    let name = format!("kept-by-kapal-{}", uuid::Uuid::new_v4().simple());
    let made = site
        .send_json(
            "POST",
            "/rest/workflows",
            serde_json::json!({ "name": name, "nodes": [], "connections": {}, "settings": {}, "active": false }),
        )
        .await?;
    let id = made.json()?["data"]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| {
            format!(
                "no workflow id: HTTP {}: {}",
                made.status,
                excerpt(&made.body)
            )
        })?;
    site.n8n_has_workflow(&user, &password, &id, &name).await?;

    t.restart(c, &o).await?;
    site.n8n_has_workflow(&user, &password, &id, &name).await?;
    t.log("the workflow survived RestartInstance");
    t.stop_start(c, &o).await?;
    site.n8n_has_workflow(&user, &password, &id, &name).await?;
    t.log("the workflow survived StopInstance + StartInstance");

    c.instances.delete_instance(action(&o.instance_id)).await?;
    t.log(format_args!("done in {:?}", o.started.elapsed()));
    Ok(())
}

async fn ghost(t: &Run<'_>, c: &mut Clients) -> anyhow::Result<()> {
    let o = t.order(c).await?;
    let host = o.instance.hostname.clone();
    anyhow::ensure!(
        o.credentials.username == format!("owner@{host}"),
        "{:?}",
        o.credentials
    );
    // Ghost's admin API takes a session cookie only with the site's Origin.
    let origin = format!("https://{host}");
    let headers = [("origin", origin.as_str())];
    let mut site = Site::new(&host, t.cert, &headers)?;
    // READY means set up: Ghost says its setup is done.
    let state = site
        .first_answer("/ghost/api/admin/authentication/setup/")
        .await?;
    anyhow::ensure!(
        state.status == 200 && state.json()?["setup"][0]["status"] == serde_json::json!(true),
        "at READY Ghost is not set up: HTTP {}: {}",
        state.status,
        excerpt(&state.body)
    );
    t.log("set up when READY: Ghost's setup is done");
    let home = site.until_ok("/", ACTION_TIMEOUT).await?;
    anyhow::ensure!(
        home.body
            .contains("<meta name=\"generator\" content=\"Ghost")
            && home.body.contains(&format!("<title>{GHOST_TITLE}</title>")),
        "not Ghost's site titled {GHOST_TITLE:?}: {}",
        excerpt(&home.body)
    );

    let (user, password) = (
        o.credentials.username.clone(),
        o.credentials.password.clone(),
    );
    site.ghost_session(&user, &password).await?;
    let wrong = Site::new(&host, t.cert, &headers)?
        .ghost_session(&user, "not-the-password")
        .await;
    anyhow::ensure!(wrong.is_err(), "a wrong password made a session");

    let title = format!("Kept by Kapal {}", uuid::Uuid::new_v4().simple());
    let made = site
        .send_json(
            "POST",
            "/ghost/api/admin/posts/",
            serde_json::json!({ "posts": [{ "title": title, "status": "published" }] }),
        )
        .await?;
    let slug = made.json()?["posts"][0]["slug"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no post: HTTP {}: {}", made.status, excerpt(&made.body)))?;
    let path = format!("/{slug}/");
    site.has_page(&path, &title, ACTION_TIMEOUT).await?;

    t.restart(c, &o).await?;
    site.has_page(&path, &title, ACTION_TIMEOUT).await?;
    site.ghost_session(&user, &password).await?;
    t.log("the post survived RestartInstance");
    t.stop_start(c, &o).await?;
    site.has_page(&path, &title, ACTION_TIMEOUT).await?;
    site.ghost_session(&user, &password).await?;
    t.log("the post survived StopInstance + StartInstance");

    c.instances.delete_instance(action(&o.instance_id)).await?;
    t.log(format_args!("done in {:?}", o.started.elapsed()));
    Ok(())
}

/// The node of the instance's database fails (`scripts/real-nodes node-down`). Its volume is a
/// local-path directory bound to that node (as on K3s), so its evicted pod's replacement cannot
/// go elsewhere: it waits unplaced ("didn't match PersistentVolume's node affinity") and the instance is
/// DEGRADED saying its storage is not ready. The node comes back (`node-up`): the database
/// starts there again, READY, and the post is there.
async fn node_failure_waits_for_its_volume(
    t: &Run<'_>,
    c: &mut Clients,
    site: &mut Site,
    o: &Ordered,
    post: &str,
    title: &str,
) -> anyhow::Result<()> {
    let pods = running_pods(t.kube, &o.namespace, o.pods).await?;
    let (db, failed) = pods
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
    let waited = async {
        let waiting = wait_for(
            "the database's replacement waiting for its volume's node",
            MOVE_TIMEOUT,
            || {
                let (kube, namespace, db) = (t.kube.clone(), o.namespace.clone(), db.clone());
                async move { unplaced_for_volume(&kube, &namespace, &db).await }
            },
        )
        .await?;
        t.log(format_args!(
            "{failed} down; the new database pod waits: {waiting}"
        ));
        let seen = watch_until(
            &mut c.instances,
            &o.instance_id,
            InstanceStatus::Degraded,
            MOVE_TIMEOUT,
        )
        .await?;
        let reason = get_instance(c, &o.instance_id).await?.status_reason;
        t.log(format_args!("statuses {seen:?}; DEGRADED: {reason}"));
        anyhow::Ok(())
    }
    .await;
    // The node comes back whatever happened: other tests share it.
    let up = real_nodes(&["node-up", &index]).await;
    waited?;
    up?;
    watch_until(
        &mut c.instances,
        &o.instance_id,
        InstanceStatus::Ready,
        MOVE_TIMEOUT,
    )
    .await?;
    let back = running_pods(t.kube, &o.namespace, o.pods).await?;
    anyhow::ensure!(
        back.iter()
            .any(|(name, node)| name.starts_with("db-") && *node == failed),
        "the database is not back on {failed}, where its volume is: {back:?}"
    );
    site.wp_has_post(post, title, MOVE_TIMEOUT).await
}

/// The database's pod `db` (the StatefulSet's replacement: not being deleted, on no node) when
/// the scheduler cannot place it because of its volume's node affinity: the scheduler's message.
async fn unplaced_for_volume(
    kube: &kube::Client,
    namespace: &str,
    db: &str,
) -> anyhow::Result<Option<String>> {
    let pods = Api::<Pod>::namespaced(kube.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    Ok(pods.items.into_iter().find_map(|p| {
        if p.metadata.name.as_deref() != Some(db) || p.metadata.deletion_timestamp.is_some() {
            return None;
        }
        if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
            return None;
        }
        p.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .and_then(|c| c.message)
            // (kube-scheduler 1.36: "didn't match PersistentVolume's node affinity"; older
            // ones: "volume node affinity conflict")
            .filter(|m| {
                m.contains("PersistentVolume's node affinity")
                    || m.contains("volume node affinity conflict")
            })
    }))
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

/// The local images in every real node's containerd, n8n's or Ghost's too when `app_id` is one
/// of them (built first when missing; tests may ask at once: the scripts take locks).
async fn import_images(app_id: &str) -> anyhow::Result<()> {
    match app_id {
        "n8n" | "ghost" => real_nodes(&["images", app_id]).await,
        _ => real_nodes(&["images"]).await,
    }
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

/// The instance's `count` app and database pods, when all are Running and Ready: (pod name,
/// node).
async fn running_pods(
    kube: &kube::Client,
    namespace: &str,
    count: usize,
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
        out.len() == count,
        "expected {count} app and db pods, found {out:?}"
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

/// A page the app answered.
struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Page {
    fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("not JSON: HTTP {}: {}", self.status, excerpt(&self.body)))
    }
}

/// A browser of one site: HTTPS to Traefik's address with the site's name (SNI and Host),
/// trusting only the test's certificate, keeping cookies, sending `headers` with every request.
struct Site {
    host: String,
    ingress: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    cookies: BTreeMap<String, String>,
    headers: Vec<(String, String)>,
}

impl Site {
    fn new(
        host: &str,
        cert: &rcgen::Certificate,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Site> {
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
            // Traefik of the real nodes: node 1's address, port 443
            ingress: format!("{}:443", kapal_tests::app::real_node_ip(1)).parse()?,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            cookies: BTreeMap::new(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
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
            for (name, value) in &self.headers {
                req = req.header(name.as_str(), value.as_str());
            }
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

    /// A JSON request.
    async fn send_json(
        &mut self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<Page> {
        self.send(method, path, Some(("application/json", body.to_string())))
            .await
    }

    /// The app's first answer to GET `path`: retried only while the ingress does not reach the
    /// app yet (no connection, or Traefik's own 404/502/503 while it picks up the endpoints);
    /// whatever the app answers is returned, redirects included.
    async fn first_answer(&mut self, path: &str) -> anyhow::Result<Page> {
        let deadline = tokio::time::Instant::now() + ACTION_TIMEOUT;
        loop {
            let last = match self.send("GET", path, None).await {
                Ok(page) if !matches!(page.status, 404 | 502 | 503) => return Ok(page),
                Ok(page) => format!("HTTP {}: {}", page.status, excerpt(&page.body)),
                Err(e) => format!("{e:#}"),
            };
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "GET https://{}{path}: no answer from the app; last: {last}",
                self.host
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
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
    async fn wp_log_in(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
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
    async fn wp_new_post(
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
    async fn wp_has_post(
        &mut self,
        id: &str,
        title: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.has_page(&format!("/?p={id}"), title, timeout).await
    }

    /// `path` answers 200 with `text` in it (retrying while the site comes back).
    async fn has_page(&mut self, path: &str, text: &str, timeout: Duration) -> anyhow::Result<()> {
        let page = self.until_ok(path, timeout).await?;
        anyhow::ensure!(
            page.body.contains(text),
            "{path} lost {text:?}: {}",
            excerpt(&page.body)
        );
        Ok(())
    }

    /// n8n's owner login (`POST /rest/login`): the owner's email answers, the session cookie
    /// `n8n-auth` is kept.
    async fn n8n_log_in(&mut self, email: &str, password: &str) -> anyhow::Result<()> {
        let res = self
            .send_json(
                "POST",
                "/rest/login",
                serde_json::json!({ "emailOrLdapLoginId": email, "password": password }),
            )
            .await?;
        anyhow::ensure!(
            res.status == 200 && res.json()?["data"]["email"] == serde_json::json!(email),
            "n8n login refused: HTTP {}: {}",
            res.status,
            excerpt(&res.body)
        );
        anyhow::ensure!(
            self.cookies.contains_key("n8n-auth"),
            "no n8n-auth cookie: {:?}",
            self.cookies.keys()
        );
        Ok(())
    }

    /// After n8n (re)started: its REST API is up, the owner logs in and the workflow is there.
    async fn n8n_has_workflow(
        &mut self,
        email: &str,
        password: &str,
        id: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        // Ready (its /healthz) some seconds before its REST API is there.
        self.until_ok("/rest/settings", ACTION_TIMEOUT).await?;
        self.n8n_log_in(email, password).await?;
        let list = self.until_ok("/rest/workflows", ACTION_TIMEOUT).await?;
        let found = list.json()?["data"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["id"] == *id && w["name"] == *name));
        anyhow::ensure!(
            found,
            "workflow {id} {name:?} is gone: {}",
            excerpt(&list.body)
        );
        Ok(())
    }

    /// Ghost's admin session (`POST /ghost/api/admin/session/`): the session cookie is kept and
    /// `users/me` is the owner.
    async fn ghost_session(&mut self, email: &str, password: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + ACTION_TIMEOUT;
        let res = loop {
            let res = self
                .send_json(
                    "POST",
                    "/ghost/api/admin/session/",
                    serde_json::json!({ "username": email, "password": password }),
                )
                .await?;
            // Ghost still booting behind a Ready pod, or the ingress not there yet.
            if !matches!(res.status, 404 | 502 | 503) || tokio::time::Instant::now() >= deadline {
                break res;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        anyhow::ensure!(
            res.status == 201 || res.status == 200,
            "Ghost session refused: HTTP {}: {}",
            res.status,
            excerpt(&res.body)
        );
        let me = self.send("GET", "/ghost/api/admin/users/me/", None).await?;
        anyhow::ensure!(
            me.status == 200 && me.json()?["users"][0]["email"] == serde_json::json!(email),
            "users/me with the session: HTTP {}: {}",
            me.status,
            excerpt(&me.body)
        );
        Ok(())
    }
}
