//! The customer journey from a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/run.mjs`), loads `tests/browser/journey.html` from a static server on one
//! loopback port and calls Kapal's gateway on another over grpc-web, with a hand-written client
//! (`journey.js`: protobuf and grpc-web framing by hand, `fetch()`, a streamed WatchInstance).
//! Page and gateway are different origins, so every call goes through the browser's CORS checks
//! (preflights included) against the gateway's default configuration, which allows any origin.
//! Two negative controls show those checks are real: the browser refuses a header the gateway
//! does not allow, and refuses a second gateway whose CORS list names another origin (both
//! reachable, and refused "by CORS policy" in Chromium's own words).
//!
//! Needs `node` and `/usr/bin/chromium` (Debian's package `chromium`); `scripts/test` installs
//! both, and the playwright-core package with `npm ci --prefix tests/browser`. This test runs
//! that `npm ci` itself when `tests/browser/node_modules` is missing, and fails (never skips) when
//! the browser is not there.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use kapal_tests::app::TestApp;
use serde_json::Value;

/// The files the static server serves, with their content types.
const FILES: [(&str, &str); 2] = [
    ("/journey.html", "text/html; charset=utf-8"),
    ("/journey.js", "text/javascript; charset=utf-8"),
];
/// The driver waits 180 s for the page; this leaves it room to report and close the browser.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(240);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A tiny HTTP/1.1 server for the page's files, on its own loopback port (so its origin differs
/// from the gateway's). Counts the files it served.
struct StaticServer {
    port: u16,
    served: Arc<AtomicUsize>,
}

impl StaticServer {
    fn start(dir: PathBuf) -> anyhow::Result<StaticServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        // Blocking threads: a handful of requests, and the listener lives as long as the process.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (dir, counter) = (dir.clone(), counter.clone());
                std::thread::spawn(move || {
                    if let Err(e) = respond(stream, &dir, &counter) {
                        eprintln!("static server: {e:#}");
                    }
                });
            }
        });
        Ok(StaticServer { port, served })
    }
}

fn respond(stream: TcpStream, dir: &Path, served: &AtomicUsize) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The rest of the head; GETs have no body.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let file = FILES.iter().find(|(name, _)| *name == path);
    let (status, content_type, body) = match (method, file) {
        ("GET", Some((name, content_type))) => {
            let body = std::fs::read(dir.join(name.trim_start_matches('/')))
                .with_context(|| format!("reading {name}"))?;
            served.fetch_add(1, Ordering::SeqCst);
            ("200 OK", *content_type, body)
        }
        ("GET", None) => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n".to_vec(),
        ),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()?;
    Ok(())
}

/// Fails with what to do when the browser or node is missing: a test that skips itself would
/// pass on a machine where it proves nothing.
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

    let browser_dir = root.join("tests/browser");
    if !browser_dir.join("node_modules/playwright-core").exists() {
        eprintln!("tests/browser/node_modules missing: npm ci --prefix tests/browser");
        let status = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&browser_dir)
            .status()
            .await
            .context("running npm (needed for playwright-core); run scripts/test")?;
        ensure!(status.success(), "npm ci --prefix tests/browser failed");
    }
    Ok(())
}

/// A second gateway, whose CORS list names only another origin than the page's: the page checks
/// that the browser refuses it. Its upstreams are never reached (the refusal happens at the
/// preflight), so they point nowhere. Runs until the returned sender is dropped.
async fn restricted_gateway(
    app: &TestApp,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let mut config =
        kapal_gateway::Config::new("http://127.0.0.1:1", "http://127.0.0.1:1", app.key.clone());
    config.cors_allowed_origins = vec!["https://console.example.com".into()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = kapal_gateway::run(config, listener, shutdown).await {
            eprintln!("restricted gateway: {e:#}");
        }
    });
    // Up before the page asks (the page also checks that something answers there).
    let url = format!("http://{addr}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok((url, stop));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the restricted gateway did not come up at {url}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn customer_journey_from_a_browser_over_grpc_web_and_cors() -> anyhow::Result<()> {
    let root = repo_root();
    check_tools(&root).await?;

    let app = TestApp::builder().start().await?;
    let gateway = app.endpoint();
    let site = StaticServer::start(root.join("tests/browser"))?;
    ensure!(
        site.port != app.gateway_addr.port(),
        "page and gateway share a port"
    );
    let page_origin = format!("http://127.0.0.1:{}", site.port);
    let (restricted, _stop_restricted) = restricted_gateway(&app).await?;
    let page = format!("{page_origin}/journey.html?restricted={restricted}");

    let mut driver = tokio::process::Command::new("node");
    driver
        .arg(root.join("tests/browser/run.mjs"))
        .args([&page, &gateway])
        .current_dir(&root)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(DRIVER_TIMEOUT, driver.output())
        .await
        .with_context(|| format!("run.mjs did not finish within {DRIVER_TIMEOUT:?}"))?
        .context("starting node tests/browser/run.mjs")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("--- node tests/browser/run.mjs {page} {gateway}\n{stdout}");
    if !stderr.trim().is_empty() {
        println!("--- stderr\n{stderr}");
    }
    ensure!(
        output.status.success(),
        "the journey failed in the browser ({}): see the output above",
        output.status
    );

    // What the driver saw, checked here too (the exit status alone is the driver's word).
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("KAPAL_BROWSER_RESULT "))
        .context("no KAPAL_BROWSER_RESULT line from run.mjs")?;
    let report: Value = serde_json::from_str(line).context("parsing KAPAL_BROWSER_RESULT")?;
    let result = &report["result"];
    ensure!(
        report["title"] == "PASS" && result["pass"] == true,
        "not PASS: {line}"
    );
    ensure!(
        site.served.load(Ordering::SeqCst) >= 2,
        "the static server did not serve the page and its script"
    );

    // CORS for real: the page ran on its own origin and called the gateway's.
    ensure!(
        result["pageOrigin"] == page_origin.as_str(),
        "page origin {}",
        result["pageOrigin"]
    );
    ensure!(
        result["gatewayOrigin"] == gateway.as_str(),
        "gateway origin {}",
        result["gatewayOrigin"]
    );
    ensure!(
        page_origin != gateway,
        "same origin: CORS would not be exercised"
    );
    for prefix in ["CORS is enforced", "a gateway whose CORS list"] {
        let step = result["steps"]
            .as_array()
            .context("steps")?
            .iter()
            .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .with_context(|| format!("the step \"{prefix}...\" did not run"))?;
        ensure!(step["ok"] == true, "{step}");
    }
    // Refused for CORS, as Chromium says it, not for anything else.
    for (url, why) in [
        (&gateway, "is not allowed by Access-Control-Allow-Headers"),
        (
            &restricted,
            "No 'Access-Control-Allow-Origin' header is present",
        ),
    ] {
        let blocked = format!(
            "Access to fetch at '{url}/kapal.v1.CatalogService/ListApps' from origin \
             '{page_origin}' has been blocked by CORS policy"
        );
        ensure!(
            stdout
                .lines()
                .any(|l| l.contains(&blocked) && l.contains(why)),
            "the browser console does not say: {blocked} ... {why}"
        );
    }
    let answers = report["network"].as_array().context("network")?;
    let allowed: Vec<&Value> = answers
        .iter()
        .filter(|n| n["method"] == "POST" && n["status"] == 200)
        .collect();
    ensure!(
        allowed.len() >= 8,
        "too few gateway answers seen by the browser: {answers:?}"
    );
    for answer in &allowed {
        let origin = answer["accessControlAllowOrigin"].as_str();
        ensure!(
            origin == Some("*") || origin == Some(page_origin.as_str()),
            "a gateway answer without a CORS allow-origin for the page: {answer}"
        );
    }

    // The journey's checkpoints, as the page recorded them.
    for id in ["n8n", "ghost", "wordpress"] {
        ensure!(
            result["apps"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == id)),
            "{id} not in the catalog the browser saw"
        );
    }
    ensure!(
        result["unauthenticated"]["code"] == 16,
        "unauthenticated: {}",
        result["unauthenticated"]
    );
    ensure!(
        result["unknownApp"]["code"] == 3,
        "unknown app: {}",
        result["unknownApp"]
    );
    ensure!(
        result["order"]["appId"] == "n8n",
        "order: {}",
        result["order"]
    );
    let seen = result["watch"]["seen"].as_array().context("watch.seen")?;
    ensure!(
        seen.last().is_some_and(|s| s == "READY"),
        "watch saw {seen:?}"
    );
    ensure!(
        result["instance"]["credentials"]["passwordLength"].as_u64() >= Some(16),
        "credentials: {}",
        result["instance"]["credentials"]
    );
    let invoices = result["invoices"].as_array().context("invoices")?;
    ensure!(
        invoices.len() == 1 && invoices[0]["amount"] == 0,
        "invoices: {invoices:?}"
    );
    if result["deleted"]["seen"].as_array().and_then(|s| s.last()) != Some(&Value::from("DELETED"))
    {
        bail!("the instance was not deleted: {}", result["deleted"]);
    }
    Ok(())
}
