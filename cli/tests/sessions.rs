//! `kapal password change`, `kapal sessions list|revoke` and `kapal token create --scope
//! --expires-in` as a user runs them, against a `kapal server` process (SQLite, email
//! verification off) on loopback: two "devices" (config directories) of one account.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::{KAPAL, Server, cli, free_port, ok};

const PASSWORD: &str = "correct horse 42";
const NEW_PASSWORD: &str = "a brand new horse 7";

/// Runs the CLI with the endpoint, a config directory and extra environment.
fn kapal(endpoint: &str, config: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(KAPAL);
    cmd.args(args)
        .env("KAPAL_ENDPOINT", endpoint)
        .env("KAPAL_CONFIG_DIR", config)
        .env("KAPAL_PASSWORD", PASSWORD)
        .env_remove("KAPAL_TOKEN")
        .env_remove("KAPAL_NEW_PASSWORD")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    #[expect(clippy::expect_used, reason = "the binary was built for this test")]
    cmd.output().expect("kapal runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_passwords_and_scoped_tokens_from_the_cli() -> anyhow::Result<()> {
    let cluster = kapal_tests::cluster::cluster().await?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (laptop, phone) = (dir.path().join("laptop"), dir.path().join("phone"));
    let port = free_port()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(data.with_extension("log"))?;
    let _server = Server(
        Command::new(KAPAL)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--domain", "kapal.test", "--email-verification", "off"])
            .args(["--payments", "dummy"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig_path())
            .env("KAPAL_CATALOG_DIR", kapal::catalog::repo_catalog_dir())
            .env_remove("KAPAL_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let start = Instant::now();
    while !cli(&endpoint, &laptop, &["catalog"])?.status.success() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "kapal server did not answer within 60 s: {}",
            std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let email = format!(
        "sessions-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let run =
        |config: &Path, env: &[(&str, &str)], args: &[&str]| kapal(&endpoint, config, env, args);
    ok(run(&laptop, &[], &["signup", "--email", &email]))?;
    ok(run(&phone, &[], &["login", "--email", &email]))?;

    // Two sessions, the laptop's marked as the one in use.
    let listed: serde_json::Value =
        serde_json::from_str(&ok(run(&laptop, &[], &["sessions", "list", "-o", "json"]))?)?;
    let sessions = listed["sessions"].as_array().context("sessions")?;
    assert_eq!(sessions.len(), 2, "{listed}");
    let phone_id = sessions
        .iter()
        .find(|s| s["current"] == false)
        .and_then(|s| s["id"].as_str())
        .context("the phone's session")?
        .to_string();
    let table = ok(run(&laptop, &[], &["sessions", "list"]))?;
    assert!(
        table.contains("this one") && table.contains(&phone_id),
        "{table}"
    );

    // A read-only token for a dashboard, for 30 days: it reads, and is refused the rest.
    let created = run(
        &laptop,
        &[],
        &[
            "token",
            "create",
            "dashboard",
            "--scope",
            "read-only",
            "--expires-in",
            "30d",
        ],
    );
    let token = ok(created)?.trim().to_string();
    assert!(
        token.starts_with("kpt_"),
        "only the token on stdout: {token}"
    );
    let tokens: serde_json::Value =
        serde_json::from_str(&ok(run(&laptop, &[], &["token", "list", "-o", "json"]))?)?;
    assert_eq!(tokens["api_tokens"][0]["scope"], "read-only", "{tokens}");
    let reader = [("KAPAL_TOKEN", token.as_str())];
    ok(run(&laptop, &reader, &["instances"]))?;
    ok(run(&laptop, &reader, &["whoami"]))?;
    for args in [
        &["order", "n8n", "--plan", "trial"][..],
        &["token", "create", "escalate", "--expires-in", "1d"][..],
    ] {
        let refused = run(&laptop, &reader, args);
        assert!(!refused.status.success(), "{args:?} must be refused");
        let e = stderr(&refused);
        assert!(
            e.contains("read-only") && e.contains("FULL"),
            "{args:?}: {e}"
        );
    }
    // More than a year is refused before anything is made.
    let too_long = run(
        &laptop,
        &[],
        &["token", "create", "ci", "--expires-in", "2y"],
    );
    assert!(!too_long.status.success());
    assert!(
        stderr(&too_long).contains("at most 365"),
        "{}",
        stderr(&too_long)
    );

    // The password changes; the phone's session ends, the laptop's stays.
    let wrong = run(
        &laptop,
        &[
            ("KAPAL_PASSWORD", "not it at all 1"),
            ("KAPAL_NEW_PASSWORD", NEW_PASSWORD),
        ],
        &["password", "change"],
    );
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("current password is wrong"),
        "{}",
        stderr(&wrong)
    );
    let changed = ok(run(
        &laptop,
        &[("KAPAL_NEW_PASSWORD", NEW_PASSWORD)],
        &["password", "change"],
    ))?;
    assert!(changed.contains("1 other session was ended"), "{changed}");
    let phone_out = run(&phone, &[], &["whoami"]);
    assert!(!phone_out.status.success(), "the phone's session ended");
    ok(run(&laptop, &[], &["whoami"]))?;

    // The phone logs in with the new password; the laptop ends that session too.
    ok(run(
        &phone,
        &[("KAPAL_PASSWORD", NEW_PASSWORD)],
        &["login", "--email", &email],
    ))?;
    let listed: serde_json::Value =
        serde_json::from_str(&ok(run(&laptop, &[], &["sessions", "list", "-o", "json"]))?)?;
    let phone_id = listed["sessions"]
        .as_array()
        .context("sessions")?
        .iter()
        .find(|s| s["current"] == false)
        .and_then(|s| s["id"].as_str())
        .context("the phone's new session")?
        .to_string();
    let revoked = ok(run(&laptop, &[], &["sessions", "revoke", &phone_id]))?;
    assert!(revoked.contains(&phone_id), "{revoked}");
    assert!(!run(&phone, &[], &["whoami"]).status.success());
    let unknown = run(
        &laptop,
        &[],
        &["sessions", "revoke", &uuid::Uuid::new_v4().to_string()],
    );
    assert!(
        stderr(&unknown).contains("NOT_FOUND") || stderr(&unknown).contains("no session"),
        "{}",
        stderr(&unknown)
    );
    Ok(())
}
