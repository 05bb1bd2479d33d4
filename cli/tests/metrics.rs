//! `kapal server --metrics-listen`: Prometheus metrics on a listener of their own, scraped during
//! a customer's journey (the CLI against the whole stack on the local cluster) and parsed with a
//! real Prometheus text-format parser. The gRPC counters move with the calls made, error codes
//! are labelled, the handling histogram has its explicit buckets, and Kapal's own gauges show
//! the instance, its subscription, the nodes and the provisioning time.

mod common;

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::{KAPAL, Server, cli, free_port, ok};
use prometheus_parse::{Sample, Scrape, Value};

/// GET http://127.0.0.1:{port}{path}: status code and body.
fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    Ok((status, body.to_string()))
}

fn scrape(port: u16) -> anyhow::Result<Scrape> {
    let (status, body) = get(port, "/metrics")?;
    anyhow::ensure!(status == 200, "GET /metrics: {status} {body}");
    Ok(Scrape::parse(body.lines().map(|l| Ok(l.to_string())))?)
}

fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect()
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    find(s, name, labels)
        .iter()
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

fn gateway(method: &str) -> [(&'static str, String); 3] {
    let (service, method) = method.split_once('/').unwrap_or((method, ""));
    [
        ("kapal_service", "gateway".to_string()),
        ("grpc_service", service.to_string()),
        ("grpc_method", method.to_string()),
    ]
}

fn labels<'a>(l: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    l.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_scraped_during_a_journey() -> anyhow::Result<()> {
    let cluster = kapal_tests::cluster::cluster().await?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = dir.path().join("config");
    let (port, metrics_port) = (free_port()?, free_port()?);
    let endpoint = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("server.log"))?;
    let _server = Server(
        Command::new(KAPAL)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--domain", "kapal.test"])
            // Signs up and orders at once (email verification has tests of its own).
            .args(["--email-verification", "off"])
            // Priced plans, development payments.
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
    let server_log = || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    let start = Instant::now();
    while !cli(&endpoint, &config, &["catalog"])?.status.success() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "kapal server did not answer: {}",
            server_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let list_apps = gateway("kapal.v1.CatalogService/ListApps");
    let before = scrape(metrics_port)?;
    let started_before = value(&before, "grpc_server_started_total", &labels(&list_apps));
    for _ in 0..3 {
        ok(cli(&endpoint, &config, &["catalog"])?)?;
    }
    let after = scrape(metrics_port)?;
    assert_eq!(
        value(&after, "grpc_server_started_total", &labels(&list_apps)) - started_before,
        3.0,
        "three `kapal catalog` calls, three ListApps started at the gateway"
    );
    let mut ok_labels = labels(&list_apps);
    ok_labels.push(("grpc_code", "OK"));
    assert!(value(&after, "grpc_server_handled_total", &ok_labels) >= 4.0);
    // the same calls as the control-plane answered them
    assert!(
        value(
            &after,
            "grpc_server_handled_total",
            &[
                ("kapal_service", "control-plane"),
                ("grpc_method", "ListApps"),
                ("grpc_code", "OK")
            ]
        ) >= 4.0
    );
    // the handling histogram, with its explicit buckets
    let hist = find(&after, "grpc_server_handling_seconds", &labels(&list_apps));
    let Some(Value::Histogram(buckets)) = hist.first().map(|s| &s.value) else {
        anyhow::bail!("no grpc_server_handling_seconds histogram for ListApps: {hist:?}");
    };
    let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
    for b in kapal::metrics::GRPC_HANDLING_BUCKETS {
        assert!(bounds.contains(b), "bucket {b} missing: {bounds:?}");
    }
    assert!(
        buckets.last().is_some_and(|b| b.count >= 4.0),
        "{buckets:?}"
    );

    // A refused call is counted with its code.
    let email = format!(
        "metrics-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    ok(cli(&endpoint, &config, &["signup", "--email", &email])?)?;
    let missing = uuid::Uuid::new_v4().to_string();
    assert!(
        !cli(&endpoint, &config, &["instance", &missing])?
            .status
            .success()
    );
    let refused = scrape(metrics_port)?;
    assert!(
        value(
            &refused,
            "grpc_server_handled_total",
            &[
                ("kapal_service", "gateway"),
                ("grpc_method", "GetInstance"),
                ("grpc_code", "NotFound")
            ]
        ) >= 1.0,
        "GetInstance of an unknown id: NotFound"
    );

    // The journey: an order becomes READY; Kapal's own figures follow.
    ok(cli(
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
    let ready = scrape(metrics_port)?;
    // `--wait` followed the instance with WatchInstance, a server-streaming call: labelled so
    // at the gateway and at the control-plane; ListApps is unary.
    for service in ["gateway", "control-plane"] {
        assert!(
            value(
                &ready,
                "grpc_server_started_total",
                &[
                    ("kapal_service", service),
                    ("grpc_method", "WatchInstance"),
                    ("grpc_type", "server_stream")
                ]
            ) >= 1.0,
            "{service}: {:?}",
            find(
                &ready,
                "grpc_server_started_total",
                &[("grpc_method", "WatchInstance")]
            )
        );
    }
    assert_eq!(
        value(
            &ready,
            "grpc_server_started_total",
            &[("grpc_method", "WatchInstance"), ("grpc_type", "unary")]
        ),
        0.0
    );
    assert!(
        value(
            &ready,
            "grpc_server_started_total",
            &[("grpc_method", "ListApps"), ("grpc_type", "unary")]
        ) >= 4.0
    );
    assert_eq!(
        value(
            &ready,
            "kapal_instances",
            &[("app", "n8n"), ("status", "ready")]
        ),
        1.0,
        "{:?}",
        find(&ready, "kapal_instances", &[])
    );
    let provisioning = find(
        &ready,
        "kapal_provisioning_duration_seconds",
        &[("app", "n8n")],
    );
    assert!(
        matches!(provisioning.first().map(|s| &s.value), Some(Value::Histogram(b)) if b.last().is_some_and(|b| b.count >= 1.0)),
        "{provisioning:?}"
    );
    assert_eq!(
        value(&ready, "kapal_subscriptions", &[("status", "trialing")]),
        1.0
    );
    assert!(!find(&ready, "kapal_mrr_idr", &[]).is_empty());
    assert!(!find(&ready, "kapal_entitlement_outbox_backlog", &[]).is_empty());
    assert!(!find(&ready, "kapal_scheduler_lag_seconds", &[]).is_empty());
    assert_eq!(value(&ready, "kapal_provisioner_up", &[]), 1.0);
    assert_eq!(
        value(
            &ready,
            "kapal_node_allocatable_cpu_cores",
            &[("node", "kapal-node-1")]
        ),
        7.5
    );
    assert_eq!(
        value(&ready, "kapal_node_ready", &[("node", "kapal-node-1")]),
        1.0
    );
    assert!(value(&ready, "kapal_capacity_committed_cpu_cores", &[]) >= 0.2);
    assert_eq!(value(&ready, "kapal_capacity_ceiling_ratio", &[]), 0.8);

    // A critical support ticket owes an answer, on track (2 h to go).
    let owing = |m: &Scrape, severity: &str, sla: &str| {
        value(
            m,
            "kapal_support_tickets_owing",
            &[("ticket_severity", severity), ("sla", sla)],
        )
    };
    assert_eq!(
        find(&ready, "kapal_support_tickets_owing", &[]).len(),
        12,
        "each severity and SLA state, zero when no ticket"
    );
    assert_eq!(owing(&ready, "critical", "on_track"), 0.0);
    ok(cli(
        &endpoint,
        &config,
        &[
            "support",
            "open",
            "--subject",
            "n8n does not start",
            "--body",
            "It says bad gateway.",
            "--severity",
            "critical",
        ],
    )?)?;
    let ticket = scrape(metrics_port)?;
    assert_eq!(owing(&ticket, "critical", "on_track"), 1.0);
    assert_eq!(owing(&ticket, "critical", "at_risk"), 0.0);
    assert_eq!(owing(&ticket, "low", "on_track"), 0.0);

    // Not on the public port.
    let (status, body) = get(port, "/metrics")?;
    assert!(
        !body.contains("grpc_server_started_total"),
        "the public port serves no metrics ({status})"
    );
    Ok(())
}
