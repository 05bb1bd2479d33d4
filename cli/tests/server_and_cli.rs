//! The `kapal` binary as a user runs it: `kapal server` on a fresh data directory against the
//! local cluster, driven by the `kapal` CLI; then a restart on the same data.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::{KAPAL, Server, cli, free_port, ok};

fn start_server(
    data: &std::path::Path,
    port: u16,
    kubeconfig: &std::path::Path,
    smtp_url: &str,
) -> anyhow::Result<Server> {
    let log = std::fs::File::create(data.with_extension("log"))?;
    let child = Command::new(KAPAL)
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--domain",
            "kapal.test",
        ])
        .arg("--data-dir")
        .arg(data)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--smtp-url")
        .arg(smtp_url)
        // The catalog has priced plans: development payments, said out loud.
        .args(["--payments", "dummy"])
        .env("KAPAL_CATALOG_DIR", kapal::catalog::repo_catalog_dir())
        .env_remove("KAPAL_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(Server(child))
}

fn wait_up(endpoint: &str, config: &std::path::Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if cli(endpoint, config, &["catalog"])?.status.success() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("kapal server did not answer within 60 s")
}

#[tokio::test(flavor = "multi_thread")]
async fn server_and_cli_end_to_end() -> anyhow::Result<()> {
    let cluster = kapal_tests::cluster::cluster().await?;
    let mailpit = kapal_tests::mailpit::Mailpit::get().await?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = dir.path().join("config");
    let port = free_port()?;
    let endpoint = format!("http://127.0.0.1:{port}");

    let mut server = start_server(&data, port, cluster.kubeconfig_path(), &mailpit.smtp_url)?;
    let up = wait_up(&endpoint, &config)
        .with_context(|| std::fs::read_to_string(data.with_extension("log")).unwrap_or_default())?;
    println!("kapal server answered {} ms after start", up.as_millis());

    let catalog = ok(cli(&endpoint, &config, &["catalog"])?)?;
    assert!(
        catalog.contains("n8n") && catalog.contains("Rp 79.000"),
        "{catalog}"
    );

    let email = format!(
        "cli-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    ok(cli(&endpoint, &config, &["signup", "--email", &email])?)?;
    let whoami = ok(cli(&endpoint, &config, &["whoami"])?)?;
    assert!(whoami.contains(&email), "{whoami}");
    assert!(whoami.contains("Email verified:  no"), "{whoami}");

    // Ordering waits for the address to be verified with the code mailed to it.
    let unverified = cli(&endpoint, &config, &["order", "n8n", "--plan", "trial"])?;
    assert!(!unverified.status.success());
    let stderr = String::from_utf8_lossy(&unverified.stderr);
    assert!(stderr.contains("kapal verify-email"), "{stderr}");
    let code = mailpit.wait_for(&email, 1).await?[0].code()?;
    let verified = ok(cli(
        &endpoint,
        &config,
        &["verify-email", "--email", &email, "--code", &code],
    )?)?;
    assert!(verified.contains("Verified"), "{verified}");

    let order = ok(cli(
        &endpoint,
        &config,
        &[
            "order",
            "n8n",
            "--plan",
            "trial",
            "--wait",
            "--timeout",
            "3m",
        ],
    )?)?;
    assert!(order.contains("READY"), "progress is shown: {order}");
    assert!(
        order.contains(".n8n.kapal.test"),
        "the URL is shown: {order}"
    );
    assert!(order.contains("Password"), "credentials are shown: {order}");

    let instances = ok(cli(&endpoint, &config, &["instances", "--output", "json"])?)?;
    let json: serde_json::Value = serde_json::from_str(&instances)?;
    let list = json
        .as_array()
        .or_else(|| json["instances"].as_array())
        .context("instances array")?;
    assert_eq!(list.len(), 1, "{json}");
    let id = list[0]["id"].as_str().context("id")?.to_string();

    // Wrong input gets a readable error and a failing exit code.
    let bad = cli(&endpoint, &config, &["order", "nope", "--plan", "trial"])?;
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("unknown app") && stderr.contains("INVALID_ARGUMENT"),
        "{stderr}"
    );

    // A graceful stop, and a restart on the same data loses nothing.
    #[cfg(unix)]
    {
        let pid = server.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = server.0.try_wait()? {
                break status;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "kapal server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "clean exit on SIGTERM: {status}");
    }
    drop(server);
    let _server = start_server(&data, port, cluster.kubeconfig_path(), &mailpit.smtp_url)?;
    wait_up(&endpoint, &config)?;
    let whoami = ok(cli(&endpoint, &config, &["whoami"])?)?;
    assert!(
        whoami.contains(&email),
        "the stored session still works: {whoami}"
    );
    let instance = ok(cli(&endpoint, &config, &["instance", &id])?)?;
    assert!(instance.contains(".n8n.kapal.test"), "{instance}");

    ok(cli(&endpoint, &config, &["delete", &id, "-y"])?)?;
    Ok(())
}

#[test]
fn invalid_settings_are_all_reported() -> anyhow::Result<()> {
    let out = Command::new(KAPAL)
        .args([
            "server",
            "--database-url",
            "mysql://nope",
            "--listen",
            "nonsense",
            "--catalog-dir",
            "/nonexistent",
        ])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for setting in ["KAPAL_DATABASE_URL", "KAPAL_LISTEN", "KAPAL_CATALOG_DIR"] {
        assert!(stderr.contains(setting), "{setting} in {stderr}");
    }
    Ok(())
}

/// Flags the services' own `Config::validate()` refuses (issue 12) are named with the rest, all
/// at once, by their variable and flag, and the server exits with a failure.
#[test]
fn every_services_problems_are_named_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(KAPAL)
        .args([
            "server",
            "--service",
            "all",
            "--database-url",
            "mysql://nope",
        ])
        // The gateway's: a rate with no burst.
        .args(["--rate-limit", "5", "--rate-burst", "0"])
        // The control-plane's: a ceiling that is no percentage, no instance allowed, a domain
        // that is no DNS name.
        .args([
            "--capacity-ceiling",
            "0",
            "--max-instances-per-account",
            "0",
        ])
        .args(["--domain", "Not_A_Domain"])
        // The provisioner's: a partition that is no label value.
        .arg("--partition=-bad-")
        .arg("--data-dir")
        .arg(dir.path())
        .env("KAPAL_CATALOG_DIR", kapal::catalog::repo_catalog_dir())
        .env("KAPAL_EMAIL_VERIFICATION", "off")
        .env("KAPAL_PAYMENTS", "dummy")
        .env_remove("KAPAL_DATABASE_URL")
        .env_remove("KAPAL_SERVICE")
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for named in [
        "KAPAL_DATABASE_URL (--database-url)",
        "KAPAL_RATE_BURST (--rate-burst)",
        "KAPAL_CAPACITY_CEILING (--capacity-ceiling)",
        "KAPAL_MAX_INSTANCES_PER_ACCOUNT (--max-instances-per-account)",
        "KAPAL_DOMAIN (--domain)",
        "KAPAL_PARTITION (--partition)",
    ] {
        assert!(stderr.contains(named), "{named} in {stderr}");
    }
    Ok(())
}

/// `--rate-limit 0` turns rate limits off, as the gateway documents; the server accepts it.
#[tokio::test]
async fn a_rate_limit_of_zero_is_off_and_accepted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("server.log");
    let port = free_port()?;
    let child = Command::new(KAPAL)
        .args([
            "server",
            "--service",
            "gateway",
            "--rate-limit",
            "0",
            "--rate-burst",
            "0",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("KAPAL_CATALOG_DIR", kapal::catalog::repo_catalog_dir())
        .env("KAPAL_EMAIL_VERIFICATION", "off")
        .env_remove("KAPAL_DATABASE_URL")
        .env_remove("KAPAL_SERVICE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let mut server = Server(child);
    // The gateway answers its own health checks (no upstream needed) once it runs.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))?.connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.0.try_wait()? {
            anyhow::bail!(
                "the server exited ({status}): {}",
                std::fs::read_to_string(&log)?
            );
        }
        let check = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        if health.check(check).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway did not come up: {}",
            std::fs::read_to_string(&log)?
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server that would sell priced plans through the dummy provider (which charges nobody)
/// refuses to start unless told `--payments dummy` (issue 14, item 7), and says so.
#[test]
fn priced_plans_need_a_payment_provider() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("server.log");
    let mut child = Command::new(KAPAL)
        .args([
            "server",
            "--service",
            "billing",
            "--email-verification",
            "off",
        ])
        .args(["--billing-listen", &format!("127.0.0.1:{}", free_port()?)])
        .arg("--data-dir")
        .arg(dir.path())
        .env("KAPAL_CATALOG_DIR", kapal::catalog::repo_catalog_dir())
        .env_remove("KAPAL_PAYMENTS")
        .env_remove("KAPAL_DATABASE_URL")
        .env_remove("KAPAL_SERVICE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    // A server that starts keeps running: give it a few seconds to refuse, then stop it.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&log)?;
    let status = status
        .ok_or_else(|| anyhow::anyhow!("it started with priced plans and no provider: {stderr}"))?;
    assert!(!status.success(), "it exited successfully: {stderr}");
    assert!(
        stderr.contains("KAPAL_PAYMENTS (--payments)") && stderr.contains("--payments dummy"),
        "{stderr}"
    );
    assert!(
        stderr.contains("n8n starter"),
        "names the priced plans: {stderr}"
    );
    Ok(())
}

/// The four services as four processes (`kapal server --service X`), sharing one internal key
/// and finding each other through their endpoints, as in a split deployment.
#[tokio::test(flavor = "multi_thread")]
async fn services_in_separate_processes() -> anyhow::Result<()> {
    let cluster = kapal_tests::cluster::cluster().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let key = "a-shared-internal-key-of-at-least-32-characters";
    let [gw, cp, billing, prov] = [free_port()?, free_port()?, free_port()?, free_port()?];
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let mut servers = Vec::new();
    for (service, listen_flag, port) in [
        ("billing", "--billing-listen", billing),
        ("provisioner", "--provisioner-listen", prov),
        ("control-plane", "--control-plane-listen", cp),
        ("gateway", "--listen", gw),
    ] {
        let log = std::fs::File::create(dir.path().join(format!("{service}.log")))?;
        let child = Command::new(KAPAL)
            .args(["server", "--service", service, "--domain", "kapal.test"])
            .args([listen_flag, &format!("127.0.0.1:{port}")])
            .args(["--control-plane-endpoint", &url(cp)])
            .args(["--billing-endpoint", &url(billing)])
            .args(["--provisioner-endpoint", &url(prov)])
            .arg("--data-dir")
            .arg(dir.path().join(service))
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig_path())
            .env("KAPAL_INTERNAL_KEY", key)
            // Signs up and orders at once (the single-process test verifies through Mailpit).
            .env("KAPAL_EMAIL_VERIFICATION", "off")
            .env("KAPAL_PAYMENTS", "dummy")
            .env("KAPAL_CATALOG_DIR", kapal::catalog::repo_catalog_dir())
            .env_remove("KAPAL_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        servers.push(Server(child));
    }
    let endpoint = url(gw);
    wait_up(&endpoint, &config).with_context(|| {
        std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default()
    })?;
    let email = format!(
        "split-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    ok(cli(&endpoint, &config, &["signup", "--email", &email])?)?;
    let order = ok(cli(
        &endpoint,
        &config,
        &[
            "order",
            "ghost",
            "--plan",
            "trial",
            "--wait",
            "--timeout",
            "3m",
        ],
    )?)?;
    assert!(order.contains(".ghost.kapal.test"), "{order}");
    let subs = ok(cli(&endpoint, &config, &["subscriptions"])?)?;
    assert!(subs.contains("TRIALING"), "{subs}");
    let instances = ok(cli(&endpoint, &config, &["instances", "--output", "json"])?)?;
    let json: serde_json::Value = serde_json::from_str(&instances)?;
    let list = json
        .as_array()
        .or_else(|| json["instances"].as_array())
        .context("instances array")?;
    let id = list[0]["id"].as_str().context("id")?.to_string();
    ok(cli(&endpoint, &config, &["delete", &id, "-y"])?)?;
    Ok(())
}
