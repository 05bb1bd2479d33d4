//! `kapal server --otlp-endpoint`: traces go to an OTLP/gRPC receiver this test runs on
//! loopback (the collector's generated `TraceService`) only when the flag is given. Without it
//! nothing is exported, even with OpenTelemetry's own `OTEL_EXPORTER_OTLP_ENDPOINT` pointing
//! at the receiver; with it the calls made are there once the server has stopped (a graceful
//! stop exports what is still buffered), the gateway's span the parent of the control-plane's.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KAPAL, Server, cli, free_port, ok};
use kapal_tests::otlp::Receiver;

/// Runs `kapal server` (with `extra` arguments), makes three `kapal catalog` calls, and stops
/// it with SIGTERM, waiting for its clean exit.
fn serve_three_calls(
    kubeconfig: &std::path::Path,
    receiver: &Receiver,
    extra: &[&str],
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("config");
    let log_path = dir.path().join("server.log");
    let mut server = Server(
        Command::new(KAPAL)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--domain", "kapal.test"])
            .args(["--email-verification", "off", "--payments", "dummy"])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env("KAPAL_CATALOG_DIR", kapal::catalog::repo_catalog_dir())
            .env_remove("KAPAL_DATABASE_URL")
            .env_remove("KAPAL_OTLP_ENDPOINT")
            // OpenTelemetry's standard variable does not turn export on.
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
            .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &receiver.endpoint)
            // Every call traced (the default is a share of them).
            .env("OTEL_TRACES_SAMPLER", "always_on")
            .env_remove("OTEL_TRACES_SAMPLER_ARG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?,
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let start = Instant::now();
    while !cli(&endpoint, &config, &["catalog"])?.status.success() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "kapal server did not answer: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..3 {
        ok(cli(&endpoint, &config, &["catalog"])?)?;
    }
    let pid = server.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.0.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "kapal server did not stop on SIGTERM: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    anyhow::ensure!(status.success(), "clean exit: {status}\n{}", log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_are_exported_only_with_an_otlp_endpoint() -> anyhow::Result<()> {
    let cluster = kapal_tests::cluster::cluster().await?;
    let receiver = Receiver::start().await?;
    let kubeconfig = cluster.kubeconfig_path().to_path_buf();

    // Off by default: calls made, the server stopped, nothing arrived.
    let r = tokio::task::block_in_place(|| serve_three_calls(&kubeconfig, &receiver, &[]));
    r?;
    assert_eq!(
        receiver.requests(),
        0,
        "exported without --otlp-endpoint: {:?}",
        receiver.spans()
    );

    // On: the calls are there by the time the server has stopped.
    let endpoint = receiver.endpoint.clone();
    tokio::task::block_in_place(|| {
        serve_three_calls(&kubeconfig, &receiver, &["--otlp-endpoint", &endpoint])
    })?;
    let spans = receiver.spans();
    let list_apps = |service: &str| {
        spans
            .iter()
            .filter(|s| {
                s.name() == "kapal.v1.CatalogService/ListApps"
                    && s.attr("kapal.service").as_deref() == Some(service)
            })
            .collect::<Vec<_>>()
    };
    let (gateway, cp) = (list_apps("gateway"), list_apps("control-plane"));
    assert!(gateway.len() >= 3, "{spans:?}");
    assert!(
        gateway.iter().all(|s| s.service_name == "kapal"),
        "service.name"
    );
    for g in &gateway {
        assert!(
            cp.iter()
                .any(|c| c.trace_id() == g.trace_id() && c.parent_span_id() == g.span_id()),
            "the control-plane's ListApps is the gateway's child in trace {}",
            g.trace_id()
        );
    }
    Ok(())
}
