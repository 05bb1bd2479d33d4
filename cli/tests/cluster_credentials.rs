//! `kapal server` processes as deploy/k3s runs them, with nothing of a cluster in reach.
//!
//! Only the provisioner holds Kubernetes credentials. The gateway, the control-plane and billing
//! run as separate `kapal server --service X` processes in an environment with no kubeconfig,
//! no `$KUBECONFIG`, no in-cluster ServiceAccount and an empty home, and still serve a customer
//! (sign-up, catalog, checkout accepted); a provisioner in the same environment refuses to
//! start and says what it needs. This is how deploy/k3s runs them: only the provisioner's pod
//! mounts a ServiceAccount token.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use common::{KAPAL, Server, cli, free_port, ok};

const KEY: &str = "a-test-internal-key-of-at-least-32-characters";

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
        .env("RUST_LOG", "warn")
        .env("KAPAL_EMAIL_VERIFICATION", "off")
        .env("KAPAL_PAYMENTS", "dummy");
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

/// The gateway, control-plane and billing as three processes with no cluster in reach, on
/// SQLite in `dir`/data; the gateway's endpoint once it answers.
struct Stack {
    servers: Vec<Server>,
    dir: std::path::PathBuf,
    data: std::path::PathBuf,
    home: std::path::PathBuf,
    endpoint: String,
}

impl Stack {
    fn start(dir: &Path) -> anyhow::Result<Stack> {
        let home = dir.join("home");
        let data = dir.join("data");
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
        let mut stack = Stack {
            servers: Vec::new(),
            dir: dir.to_path_buf(),
            data,
            home: home.clone(),
            endpoint: url(gateway),
        };
        for (service, flag, port) in [
            ("control-plane", "--control-plane-listen", cp),
            ("billing", "--billing-listen", billing),
            ("gateway", "--listen", gateway),
        ] {
            let mut cmd = server(&home, &common);
            cmd.args(["--service", service, flag, &addr(port)]);
            stack
                .servers
                .push(spawn(cmd, &dir.join(format!("{service}.log")))?);
        }
        let config = dir.join("probe-config");
        let start = Instant::now();
        loop {
            if cli(&stack.endpoint, &config, &["catalog"])?
                .status
                .success()
            {
                return Ok(stack);
            }
            stack.check_running()?;
            ensure!(
                start.elapsed() < Duration::from_secs(60),
                "the services did not answer within 60 s:\n{}",
                stack.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        ["control-plane", "billing", "gateway"]
            .iter()
            .map(|s| {
                let log = std::fs::read_to_string(self.dir.join(format!("{s}.log")));
                format!("--- {s}:\n{}", log.unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        for s in &mut self.servers {
            if let Some(status) = s.0.try_wait()? {
                anyhow::bail!(
                    "a service exited ({status}) without a cluster:\n{}",
                    self.logs()
                );
            }
        }
        Ok(())
    }
}

#[test]
fn gateway_control_plane_and_billing_need_no_cluster_credentials() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut stack = Stack::start(dir.path())?;
    let config = dir.path().join("config");
    let endpoint = stack.endpoint.clone();
    let email = format!(
        "nocreds-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    ok(cli(&endpoint, &config, &["signup", "--email", &email])?).with_context(|| stack.logs())?;
    let order = ok(cli(
        &endpoint,
        &config,
        &["order", "n8n", "--plan", "trial"],
    )?)
    .with_context(|| stack.logs())?;
    assert!(order.contains("n8n"), "the order is accepted: {order}");
    stack.check_running()
}

/// Nobody becomes an admin by signing up; `kapal admin grant|revoke` on the server's database
/// makes and unmakes operators, with a reason in the audit log; the old admin list is refused.
#[test]
fn operators_are_made_with_kapal_admin_grant() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut stack = Stack::start(dir.path())?;
    let config = dir.path().join("config");
    let endpoint = stack.endpoint.clone();
    let email = format!(
        "ops-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    ok(cli(&endpoint, &config, &["signup", "--email", &email])?).with_context(|| stack.logs())?;
    let refused = cli(&endpoint, &config, &["admin", "audit"])?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("PERMISSION_DENIED"),
        "{refused:?}"
    );

    let admin = |verb: &str, who: &str| -> anyhow::Result<Output> {
        Ok(Command::new(KAPAL)
            .args(["admin", verb, "--email", who, "--reason", "ticket OPS-1"])
            .arg("--data-dir")
            .arg(&stack.data)
            .env("HOME", &stack.home)
            .env_remove("KAPAL_DATABASE_URL")
            .stdin(Stdio::null())
            .output()?)
    };
    let unknown = admin("grant", "nobody@example.com")?;
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no account has the email nobody@example.com"),
        "{unknown:?}"
    );
    let granted = ok(admin("grant", &email)?)?;
    assert!(granted.contains("is now an admin"), "{granted}");
    let again = ok(admin("grant", &email)?)?;
    assert!(again.contains("nothing changed"), "{again}");

    // The session in use gets the role once the gateway's identity cache forgets it.
    let start = Instant::now();
    let audit = loop {
        let out = cli(&endpoint, &config, &["admin", "audit", "--output", "json"])?;
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the grant did not take effect: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        audit.contains("grant_admin") && audit.contains("ticket OPS-1"),
        "{audit}"
    );
    assert!(
        audit.contains("kapal admin grant (user "),
        "who did it: {audit}"
    );

    ok(admin("revoke", &email)?)?;
    let start = Instant::now();
    while cli(&endpoint, &config, &["admin", "audit"])?
        .status
        .success()
    {
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the revoke did not take effect"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    stack.check_running()?;

    // The old way is refused with what to do instead.
    let out = server(
        &stack.home,
        &["--service", "control-plane", "--admin-emails", &email],
    )
    .arg("--data-dir")
    .arg(dir.path().join("data-old"))
    .stdin(Stdio::null())
    .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("KAPAL_ADMIN_EMAILS") && stderr.contains("kapal admin grant"),
        "{stderr}"
    );
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
