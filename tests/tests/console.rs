//! The web console in a real browser: Kapal's four services (TestApp) with the gateway serving
//! the built console (`console/dist`) on its own port, email verification on and sending to
//! Mailpit (the specs read the codes through its API), and Playwright (`console/tests`, driving
//! Debian's `/usr/bin/chromium`) going through the console as customers and an operator do. The
//! specs check the CSP and the other headers of the page, the customer journey to a READY n8n
//! trial and back, that a second customer sees none of it, a customer's sessions, password
//! change and API token scopes, and the operator pages, operator actions on an instance and an
//! account (with reasons the audit log then shows) and diagnostics, and a credit note an operator
//! issues on a paid invoice that the customer then sees; axe-core runs on every page,
//! and the main pages are photographed at 1280x800 and 390x844.
//!
//! Needs `node`, `/usr/bin/chromium` (Debian's package `chromium`; KAPAL_CHROMIUM overrides it)
//! and a built console: `scripts/test` builds it and installs Playwright (`npm ci` in console/
//! and console/tests). This test fails, never skips, when any of them is missing or when the
//! console was built before its latest source change. It runs `npm ci` in console/tests itself
//! when Playwright is not installed there.
//!
//! Runs on SQLite; `KAPAL_CONSOLE_BACKEND=postgres` runs it on PostgreSQL (KAPAL_TEST_DATABASE_URL).
//!
//! `KAPAL_UPDATE_SCREENSHOTS=1` writes the screenshots into docs/screenshots (checked in, linked
//! from the README); otherwise they go to a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, ensure};
use kapal::proto::v1::ListAuditEventsRequest;
use kapal::testing::Backend;
use kapal_tests::app::TestApp;
use kapal_tests::mailpit::Mailpit;

/// Two waits for READY (a trial, then a start after a stop) dominate; the specs' own timeouts
/// are shorter, so a stuck step fails with Playwright's report before this.
const PLAYWRIGHT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The screenshots the specs take (each at two sizes).
const SCREENSHOTS: [&str; 18] = [
    "catalog",
    "log-in",
    "checkout",
    "instance",
    "subscriptions",
    "invoices",
    "instances",
    "admin-instances",
    "admin-instance",
    "admin-audit",
    "admin-capacity",
    "admin-revenue",
    "account",
    "tokens",
    "admin-diagnostics",
    "admin-account",
    "admin-credit-note",
    "invoices-credited",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The newest modification time of any file under `dir`.
fn newest(dir: &Path) -> anyhow::Result<SystemTime> {
    let mut latest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let t = if meta.is_dir() {
            newest(&entry.path())?
        } else {
            meta.modified()?
        };
        latest = latest.max(t);
    }
    Ok(latest)
}

/// Fails with what to do when something the test needs is missing: a test that skips itself
/// would pass on a machine where it proves nothing.
async fn check_tools(root: &Path) -> anyhow::Result<()> {
    let chromium = std::env::var("KAPAL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    ensure!(
        Path::new(&chromium).exists(),
        "{chromium} not found: this test needs Debian's chromium package; run scripts/test \
         (which installs it) or `apt-get install chromium`"
    );
    let node = tokio::process::Command::new("node")
        .arg("--version")
        .output()
        .await
        .context("node not found: this test needs Node.js and npm; run scripts/test")?;
    ensure!(node.status.success(), "node --version failed");

    let console = root.join("console");
    let index = console.join("dist/index.html");
    ensure!(
        index.is_file(),
        "{} is missing: build the console first (scripts/test does; or \
         `cd console && npm ci && npm run build`)",
        index.display()
    );
    let built = std::fs::metadata(&index)?.modified()?;
    let source = newest(&console.join("src"))?
        .max(std::fs::metadata(console.join("index.html"))?.modified()?);
    ensure!(
        built >= source,
        "console/dist is older than console/src: rebuild it (`cd console && npm run build`) so \
         the browser tests test the source"
    );

    let tests = console.join("tests");
    if !tests.join("node_modules/@playwright/test").exists() {
        eprintln!("console/tests/node_modules missing: npm ci --prefix console/tests");
        let status = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&tests)
            .status()
            .await
            .context("running npm (needed for @playwright/test); run scripts/test")?;
        ensure!(status.success(), "npm ci --prefix console/tests failed");
    }
    Ok(())
}

/// The database the services use: SQLite, or PostgreSQL (KAPAL_TEST_DATABASE_URL) with
/// `KAPAL_CONSOLE_BACKEND=postgres`. One browser run at a time: the specs take minutes and the
/// server-side rules they reach are tested on both databases by the other targets.
fn backend() -> anyhow::Result<Backend> {
    match std::env::var("KAPAL_CONSOLE_BACKEND").as_deref() {
        Err(_) | Ok("" | "sqlite") => Ok(Backend::Sqlite),
        Ok("postgres") => Ok(Backend::Postgres),
        Ok(other) => anyhow::bail!("KAPAL_CONSOLE_BACKEND={other}: expected sqlite or postgres"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_in_a_browser_for_customers_and_operators() -> anyhow::Result<()> {
    let root = repo_root();
    check_tools(&root).await?;

    // Email verification on, as in production: new customers verify through the code Mailpit
    // received before they can check out.
    let mailpit = Mailpit::get().await?;
    let app = TestApp::builder()
        .backend(backend()?)
        .with_console_dir(root.join("console/dist"))
        .with_mail(mailpit.mail_config())
        .start()
        .await?;
    // The operator, made as `kapal admin grant` makes one; the browser logs in with its password.
    let admin = app.admin().await?;
    let reason = format!(
        "support ticket {}: the customer cannot log in",
        uuid::Uuid::new_v4().simple()
    );

    let scratch = tempfile::tempdir()?;
    let screenshots = if std::env::var("KAPAL_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        root.join("docs/screenshots")
    } else {
        scratch.path().join("screenshots")
    };
    let url = app.endpoint();
    let mut playwright = tokio::process::Command::new("node");
    playwright
        .arg("node_modules/@playwright/test/cli.js")
        .arg("test")
        .current_dir(root.join("console/tests"))
        .env("KAPAL_URL", &url)
        .env("KAPAL_ADMIN_EMAIL", &admin.email)
        .env("KAPAL_ADMIN_PASSWORD", &admin.password)
        .env("KAPAL_AUDIT_REASON", &reason)
        .env("KAPAL_MAILPIT_API", mailpit.api_url())
        .env("KAPAL_SCREENSHOTS", &screenshots)
        .env("KAPAL_PLAYWRIGHT_OUTPUT", scratch.path().join("results"))
        // Plain output: this test prints it.
        .env("FORCE_COLOR", "0")
        .env("CI", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(PLAYWRIGHT_TIMEOUT, playwright.output())
        .await
        .with_context(|| format!("Playwright did not finish within {PLAYWRIGHT_TIMEOUT:?}"))?
        .context("starting node console/tests/node_modules/@playwright/test/cli.js")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("--- playwright test (KAPAL_URL={url})\n{stdout}");
    if !stderr.trim().is_empty() {
        println!("--- stderr\n{stderr}");
    }
    ensure!(
        output.status.success(),
        "the console's browser tests failed ({}): see Playwright's report above",
        output.status
    );
    // Every spec ran (a filtered or skipped spec would also exit 0).
    ensure!(
        !stdout.contains("skipped") && stdout.contains("14 passed"),
        "expected the 14 specs to pass, none skipped: see Playwright's report above"
    );

    // What the operator did in the browser is in the audit log, with the reason typed there.
    let events = admin
        .clients
        .admin
        .clone()
        .list_audit_events(ListAuditEventsRequest::default())
        .await?
        .into_inner()
        .events;
    ensure!(
        events.iter().any(|e| e.reason == reason),
        "no audit event with the reason the operator typed: {events:?}"
    );
    for name in SCREENSHOTS {
        for size in ["desktop", "phone"] {
            let file = screenshots.join(format!("{name}-{size}.png"));
            ensure!(file.is_file(), "no screenshot {}", file.display());
        }
    }
    Ok(())
}
