//! Only the provisioner holds Kubernetes credentials. The gateway, the control-plane and billing
//! run as separate `kapal server --service X` processes in an environment with no kubeconfig,
//! no `$KUBECONFIG`, no in-cluster ServiceAccount and an empty home, and still serve a customer
//! (sign-up, catalog, checkout accepted); a provisioner in the same environment refuses to
//! start and says what it needs. This is how deploy/k3s runs them: only the provisioner's pod
//! mounts a ServiceAccount token.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

const KAPAL: &str = env!("CARGO_BIN_EXE_kapal");
const KEY: &str = "a-test-internal-key-of-at-least-32-characters";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `kapal server` with nothing of a cluster in reach: every variable kube or Kapal would read
/// credentials from is removed, and home is an empty directory (no ~/.kube/config).
fn server(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(KAPAL);
    cmd.arg("server")
        .args(args)
        .arg("--internal-key")
        .arg(KEY)
        .env("HOME", home)
        .env("KAPAL_CATALOG_DIR", kapal::catalog::repo_catalog_dir())
        .env("RUST_LOG", "warn");
    for var in [
        "KUBECONFIG",
        "KAPAL_KUBECONFIG",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "KAPAL_DATABASE_URL",
        "KAPAL_SERVICE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Server> {
    let log = std::fs::File::create(log)?;
    Ok(Server(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    ))
}

fn cli(endpoint: &str, config: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(KAPAL)
        .args(args)
        .env("KAPAL_ENDPOINT", endpoint)
        .env("KAPAL_CONFIG_DIR", config)
        .env("KAPAL_PASSWORD", "correct horse 42")
        .env_remove("KAPAL_TOKEN")
        .stdin(Stdio::null())
        .output()?)
}

fn ok(out: Output) -> anyhow::Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "kapal failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[test]
fn gateway_control_plane_and_billing_need_no_cluster_credentials() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("home");
    let data = dir.path().join("data");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&home)?;
    let (gateway, cp, billing, provisioner) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let common = [
        "--control-plane-endpoint".to_string(),
        url(cp),
        "--billing-endpoint".to_string(),
        url(billing),
        // Nothing listens there: checkouts are accepted and wait for the provisioner.
        "--provisioner-endpoint".to_string(),
        url(provisioner),
        "--data-dir".to_string(),
        data.display().to_string(),
    ];
    let common: Vec<&str> = common.iter().map(String::as_str).collect();
    let mut servers = Vec::new();
    for (service, flag, port) in [
        ("control-plane", "--control-plane-listen", cp),
        ("billing", "--billing-listen", billing),
        ("gateway", "--listen", gateway),
    ] {
        let mut cmd = server(&home, &common);
        cmd.args(["--service", service, flag, &addr(port)]);
        servers.push(spawn(cmd, &dir.path().join(format!("{service}.log")))?);
    }
    let logs = || {
        ["control-plane", "billing", "gateway"]
            .iter()
            .map(|s| {
                let log = std::fs::read_to_string(dir.path().join(format!("{s}.log")));
                format!("--- {s}:\n{}", log.unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    let endpoint = url(gateway);
    let start = Instant::now();
    loop {
        if cli(&endpoint, &config, &["catalog"])?.status.success() {
            break;
        }
        for s in &mut servers {
            if let Some(status) = s.0.try_wait()? {
                anyhow::bail!("a service exited ({status}) without a cluster:\n{}", logs());
            }
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the services did not answer within 60 s:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let email = format!(
        "nocreds-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    ok(cli(&endpoint, &config, &["signup", "--email", &email])?).with_context(logs)?;
    let order = ok(cli(
        &endpoint,
        &config,
        &["order", "n8n", "--plan", "trial"],
    )?)
    .with_context(logs)?;
    assert!(order.contains("n8n"), "the order is accepted: {order}");
    for s in &mut servers {
        ensure!(
            s.0.try_wait()?.is_none(),
            "every service still runs:\n{}",
            logs()
        );
    }
    Ok(())
}

#[test]
fn a_provisioner_without_cluster_credentials_refuses_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home)?;
    for service in ["provisioner", "all"] {
        let mut cmd = server(&home, &["--service", service]);
        cmd.arg("--data-dir")
            .arg(dir.path().join(format!("data-{service}")))
            .args(["--listen", &format!("127.0.0.1:{}", free_port()?)]);
        let out = cmd.stdin(Stdio::null()).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "--service {service} started without a cluster: {stderr}"
        );
        assert!(
            stderr.contains("invalid configuration")
                && stderr.contains("KAPAL_KUBECONFIG")
                && stderr.contains("the provisioner needs the cluster's credentials"),
            "--service {service}: {stderr}"
        );
    }
    // A kubeconfig that does not exist is named.
    let out = server(
        &home,
        &[
            "--service",
            "provisioner",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ],
    )
    .arg("--data-dir")
    .arg(dir.path().join("data-missing"))
    .stdin(Stdio::null())
    .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");
    Ok(())
}
