//! The partner clients in `clients/` against the real services: each client's example
//! (`clients/python/examples/journey.py`, `clients/go/examples/journey`,
//! `clients/typescript/examples/journey.mjs`) signs up a customer,
//! reads the catalog, checks out the n8n trial and watches the instance until READY, over gRPC
//! through the gateway, with the instance made READY by the provisioner on the local cluster.
//! The test reads what the example printed, then logs in as that customer with Kapal's own
//! client and checks that the account, the order and the READY instance are real, and deletes
//! the instance.
//!
//! The Python client is installed with pip from a copy of `clients/python` (so the package, not
//! the source folder, is what runs); the Go example runs with `go run` in `clients/go`; the
//! TypeScript one with node over grpc-web (the console's transport), after `npm ci` in
//! `clients/typescript` when its node_modules is missing. The toolchains come from
//! `scripts/setup` (`kapal_python_clients`: a cached venv with grpcio and protobuf; `kapal_go`;
//! node from the machine or apt), which this test calls itself; it fails, never skips, when one
//! is missing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use kapal::proto::v1::*;
use kapal_tests::app::{TestApp, watch_until};

/// Generous: the Go example is compiled on its first run (connect-go and protobuf, on 2 cores).
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(480);
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const PASSWORD: &str = "partner passphrase 7";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `source scripts/setup; <setup>; echo "$<var>"` and returns the printed value: the way the
/// test finds (and, on a machine without them, installs) the clients' toolchains.
async fn from_setup(setup: &str, print: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source scripts/setup && {setup} && {print}"))
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running bash")?;
    ensure!(
        out.status.success(),
        "`{setup}` from scripts/setup failed ({}): the toolchain for this client is missing",
        out.status
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Runs an example to its end (bounded) and returns its standard output; fails with both of its
/// outputs when it exits non-zero.
async fn run_example(mut cmd: tokio::process::Command, what: &str) -> anyhow::Result<String> {
    cmd.env("KAPAL_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(EXAMPLE_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("{what} did not finish in {EXAMPLE_TIMEOUT:?}"))?
        .with_context(|| format!("starting {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{what} failed ({}):\n{stdout}\n{stderr}", out.status);
    }
    Ok(stdout)
}

/// What an example printed, step by step.
#[derive(Debug)]
struct Journey {
    account_id: String,
    order_id: String,
    instance_id: String,
    statuses: Vec<String>,
    url: String,
}

fn line<'a>(output: &'a str, prefix: &str) -> anyhow::Result<&'a str> {
    output
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .with_context(|| format!("no {prefix:?} line in:\n{output}"))
}

fn field<'a>(text: &'a str, key: &str) -> anyhow::Result<&'a str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .with_context(|| format!("no {key} in {text:?}"))
}

/// Reads the example's output and checks each step's line says what the server did.
fn parse(output: &str, email: &str) -> anyhow::Result<Journey> {
    let signed_up = line(output, "signed up: ")?;
    ensure!(signed_up.starts_with(email), "{signed_up}");
    let catalog = line(output, "catalog: ")?;
    // The catalog has ghost, n8n and wordpress; n8n's trial is free, in rupiah.
    ensure!(
        catalog.contains("n8n trial plan ") && catalog.ends_with(" days, 0 IDR)"),
        "{catalog}"
    );
    let order = line(output, "order: ")?;
    ensure!(order.contains(" ORDER_STATUS_COMPLETED "), "{order}");
    let ready = line(output, "ready: ")?;
    let mut ready_words = ready.split_whitespace();
    let journey = Journey {
        account_id: field(signed_up, "account=")?.to_string(),
        order_id: order
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
        instance_id: field(order, "instance=")?.to_string(),
        statuses: output
            .lines()
            .filter_map(|l| l.strip_prefix("status: "))
            .filter_map(|s| s.split_whitespace().next())
            .map(str::to_string)
            .collect(),
        url: ready_words.nth(1).unwrap_or_default().to_string(),
    };
    ensure!(
        ready.split_whitespace().next() == Some(journey.instance_id.as_str()),
        "{ready} is not the ordered instance {}",
        journey.instance_id
    );
    ensure!(
        journey.statuses.last().map(String::as_str) == Some("INSTANCE_STATUS_READY"),
        "statuses {:?}",
        journey.statuses
    );
    Ok(journey)
}

/// Logs in as the customer the example signed up and checks, with Kapal's own client, that what
/// it printed is so; then deletes the instance (the cluster is shared) and waits until it is gone.
async fn check_and_clean_up(app: &TestApp, email: &str, j: &Journey) -> anyhow::Result<()> {
    let session = app
        .clients("")
        .accounts
        .log_in(LogInRequest {
            email: email.to_string(),
            password: PASSWORD.to_string(),
        })
        .await?
        .into_inner();
    let mut c = app.clients(&session.token);
    let me = c.accounts.who_am_i(WhoAmIRequest {}).await?.into_inner();
    assert_eq!(me.id, j.account_id);
    let order = c
        .orders
        .get_order(GetOrderRequest {
            order_id: j.order_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(order.instance_id, j.instance_id);
    assert_eq!(
        (order.app_id.as_str(), order.amount.map(|m| m.amount)),
        ("n8n", Some(0))
    );
    let instance = c
        .instances
        .get_instance(GetInstanceRequest {
            instance_id: j.instance_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        instance.status,
        InstanceStatus::Ready as i32,
        "{instance:?}"
    );
    assert_eq!(instance.url, j.url);
    assert!(
        instance.url.starts_with("https://") && instance.url.contains(".n8n."),
        "{}",
        instance.url
    );

    c.instances
        .delete_instance(InstanceActionRequest {
            instance_id: j.instance_id.clone(),
        })
        .await?;
    watch_until(
        &mut c.instances,
        &j.instance_id,
        InstanceStatus::Deleted,
        READY_TIMEOUT,
    )
    .await?;
    Ok(())
}

fn email(client: &str) -> String {
    format!("{client}-{}@example.com", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_client_journey() -> anyhow::Result<()> {
    let python = from_setup("kapal_python_clients", "echo \"$KAPAL_CLIENTS_PYTHON\"").await?;
    // pip builds in the folder it installs from: install from a copy, into a folder of its own.
    let tmp = tempfile::tempdir()?;
    let (src, site) = (tmp.path().join("python"), tmp.path().join("site"));
    let copy = tokio::process::Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("clients/python"))
        .arg(&src)
        .status()
        .await?;
    ensure!(copy.success(), "copying clients/python");
    let pip = tokio::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        // The venv has grpcio and protobuf; the build uses its setuptools, offline.
        .args([
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
        ])
        .arg(&site)
        .arg(&src)
        .status()
        .await?;
    ensure!(pip.success(), "pip install clients/python failed");
    ensure!(
        site.join("kapal/v1/instance_pb2.pyi").exists() && site.join("kapal/py.typed").exists(),
        "the installed package has no typed stubs"
    );

    let app = TestApp::builder().start().await?;
    let email = email("python");
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(src.join("examples/journey.py"))
        .args(["--target", &app.gateway_addr.to_string(), "--email", &email])
        .env("PYTHONPATH", &site)
        .current_dir(tmp.path());
    let output = run_example(cmd, "the Python example").await?;
    let journey = parse(&output, &email)?;
    check_and_clean_up(&app, &email, &journey).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn go_client_journey() -> anyhow::Result<()> {
    let go = from_setup("kapal_go", "command -v go").await?;
    let app = TestApp::builder().start().await?;
    let email = email("go");
    let mut cmd = tokio::process::Command::new(&go);
    cmd.args([
        "run",
        "./examples/journey",
        "-url",
        &app.endpoint(),
        "-email",
        &email,
    ])
    .current_dir(repo_root().join("clients/go"));
    let output = run_example(cmd, "the Go example").await?;
    let journey = parse(&output, &email)?;
    check_and_clean_up(&app, &email, &journey).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typescript_client_journey() -> anyhow::Result<()> {
    let node = from_setup(
        "{ command -v node >/dev/null || kapal_apt nodejs npm; }",
        "command -v node",
    )
    .await?;
    let dir = repo_root().join("clients/typescript");
    if !dir.join("node_modules").exists() {
        let npm = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .await
            .context("running npm")?;
        ensure!(npm.success(), "npm ci in clients/typescript failed");
    }
    let app = TestApp::builder().start().await?;
    let email = email("typescript");
    let mut cmd = tokio::process::Command::new(&node);
    cmd.arg("examples/journey.mjs")
        .args(["--url", &app.endpoint(), "--email", &email])
        .current_dir(&dir);
    let output = run_example(cmd, "the TypeScript example").await?;
    let journey = parse(&output, &email)?;
    check_and_clean_up(&app, &email, &journey).await
}
