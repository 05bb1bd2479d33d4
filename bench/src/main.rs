//! `kapal-bench`: Kapal's benchmarks (BENCHMARKS.md). Run it with `scripts/bench`, which builds
//! it and `kapal` in release mode and starts PostgreSQL and the local cluster.

mod clients;
mod echo;
mod load;
mod procstat;
mod report;
mod scenarios;
mod seed;
mod server;
mod stack;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kapal::testing::Backend;

use crate::report::Report;
use crate::scenarios::{Bench, Settings, backend_name};
use crate::server::KapalServer;

#[derive(Parser, Debug)]
#[command(
    name = "kapal-bench",
    about = "Kapal's benchmarks: load against the real `kapal server`, each figure next to a bare gRPC echo baseline measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Scenarios to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    scenario: Vec<Scenario>,
    /// Storage backends for the scenarios where storage matters. `both` needs
    /// KAPAL_TEST_DATABASE_URL (scripts/postgres up prints it; scripts/bench sets it).
    #[arg(long, value_enum, default_value = "both")]
    backend: BackendChoice,
    /// Recorded seconds of each load.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Unrecorded warm-up seconds before each load.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Calls in flight in closed-loop ("max") loads.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Workers of open-loop loads (enough that a slow answer never delays the schedule).
    #[arg(long, default_value_t = 128)]
    open_workers: usize,
    /// HTTP/2 connections per gRPC client (workers spread over them).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls per second of open-loop loads.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Simultaneous orders of the provisioning scenario.
    #[arg(long, default_value_t = 80)]
    orders: usize,
    /// New orders of the checkout scenario (each is a real instance in the local cluster).
    #[arg(long, default_value_t = 40)]
    checkout_orders: usize,
    /// Instances seeded for the listing scenario.
    #[arg(long, default_value_t = 10_000)]
    instances: u32,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// `on`: `kapal server` runs with Prometheus metrics (--metrics-listen, scraped every
    /// 15 s as Prometheus would) and trace export (--otlp-endpoint, to an OTLP receiver in this
    /// process, with the server's default sampler unless OTEL_TRACES_SAMPLER is set), to
    /// measure what they cost; `metrics` or `traces`: one of them; `off` (default): neither.
    #[arg(long, value_enum, default_value = "off")]
    observability: Observability,
    /// The `kapal` binary (default: next to this one, i.e. target/release/kapal).
    #[arg(long)]
    kapal_bin: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The echo baseline server (started by the benchmark itself).
    #[command(hide = true)]
    EchoServer {
        /// TCP_NODELAY on accepted connections.
        #[arg(long, action = clap::ArgAction::Set, default_value_t = true)]
        nodelay: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    /// 1. bare tonic echo over gRPC and grpc-web
    Baseline,
    /// 2. GetInstance direct, via the gateway over gRPC and grpc-web
    Read,
    /// 3. ListInstances with 10,000 instances in the database
    List,
    /// 4. checkout throughput, idempotent retries included
    Checkout,
    /// 5. N simultaneous orders until all READY
    Provisioning,
    /// 6. node-failure recovery of instances, next to Kubernetes alone
    NodeFailure,
    /// 7. start-up, idle and loaded memory of `kapal server`
    Memory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Observability {
    Off,
    Metrics,
    Traces,
    On,
}

impl Observability {
    fn metrics(self) -> bool {
        matches!(self, Observability::Metrics | Observability::On)
    }
    fn traces(self) -> bool {
        matches!(self, Observability::Traces | Observability::On)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    Both,
    Sqlite,
    Postgres,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::EchoServer { nodelay }) => runtime.block_on(echo::serve_child(nodelay)),
        None => runtime.block_on(run(cli)),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let wants = |s: Scenario| cli.scenario.contains(&Scenario::All) || cli.scenario.contains(&s);
    let backends: Vec<Backend> = match cli.backend {
        BackendChoice::Sqlite => vec![Backend::Sqlite],
        BackendChoice::Postgres => vec![Backend::Postgres],
        BackendChoice::Both => vec![Backend::Sqlite, Backend::Postgres],
    };
    if backends.contains(&Backend::Postgres) {
        std::env::var(kapal::testing::TEST_DATABASE_URL).with_context(|| {
            format!("{} is not set: run `scripts/postgres up` and export the URL it prints, or pass --backend sqlite", kapal::testing::TEST_DATABASE_URL)
        })?;
    }
    let settings = Settings {
        duration: Duration::from_secs_f64(cli.duration),
        warmup: Duration::from_secs_f64(cli.warmup),
        concurrency: cli.concurrency,
        open_workers: cli.open_workers,
        connections: cli.connections,
        rate: cli.rate,
        orders: cli.orders,
        checkout_orders: cli.checkout_orders,
        instances: cli.instances,
        kapal_bin: cli
            .kapal_bin
            .clone()
            .unwrap_or_else(server::default_kapal_bin),
    };
    let mut shown = BTreeMap::new();
    for (k, v) in [
        ("scenarios", format!("{:?}", cli.scenario)),
        ("backends", format!("{:?}", cli.backend)),
        ("duration_s", cli.duration.to_string()),
        ("warmup_s", cli.warmup.to_string()),
        ("concurrency", cli.concurrency.to_string()),
        ("open_workers", cli.open_workers.to_string()),
        ("connections", cli.connections.to_string()),
        ("rate", cli.rate.to_string()),
        ("orders", cli.orders.to_string()),
        ("checkout_orders", cli.checkout_orders.to_string()),
        ("instances", cli.instances.to_string()),
        ("kapal_bin", settings.kapal_bin.display().to_string()),
        (
            "observability",
            format!("{:?}", cli.observability).to_lowercase(),
        ),
        (
            "otel_traces_sampler",
            match (
                std::env::var("OTEL_TRACES_SAMPLER"),
                std::env::var("OTEL_TRACES_SAMPLER_ARG"),
            ) {
                (Ok(s), Ok(a)) => format!("{s} {a}"),
                (Ok(s), Err(_)) => s,
                _ => "(unset: the server's default)".into(),
            },
        ),
        (
            "rust_log",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "(unset: info)".into()),
        ),
    ] {
        shown.insert(k.to_string(), v);
    }
    let mut bench = Bench::new(settings.clone(), Report::new(shown));

    // The baseline runs first, always: every other figure is given relative to it.
    bench.baseline().await?;

    let needs_server = [
        Scenario::Read,
        Scenario::List,
        Scenario::Checkout,
        Scenario::Provisioning,
        Scenario::Memory,
    ]
    .into_iter()
    .any(wants);
    if needs_server {
        kapal::serve::install_crypto_provider();
        let cluster = kapal_tests::cluster::cluster().await?;
        // The OTLP receiver spans are exported to (traces or on), in this process.
        let receiver = if cli.observability.traces() {
            Some(kapal_tests::otlp::Receiver::start().await?)
        } else {
            None
        };
        for backend in backends {
            let b = backend_name(backend);
            eprintln!("== starting kapal server [{b}]");
            let observability = server::Observability {
                metrics_listen: if cli.observability.metrics() {
                    Some(server::free_addr().await?)
                } else {
                    None
                },
                otlp_endpoint: receiver.as_ref().map(|r| r.endpoint.clone()),
            };
            let scraper = observability
                .metrics_listen
                .map(|addr| tokio::spawn(server::scrape_every(addr, Duration::from_secs(15))));
            let mut server = KapalServer::start(
                &settings.kapal_bin,
                backend,
                cluster.kubeconfig_path(),
                observability,
            )
            .await?;
            let result: anyhow::Result<()> = async {
                if wants(Scenario::Memory) {
                    bench.memory_idle(&server).await;
                }
                if wants(Scenario::Read) {
                    bench.read(&server).await?;
                }
                if wants(Scenario::List) {
                    bench.list(&server).await?;
                }
                if wants(Scenario::Checkout) {
                    bench.checkout(&server).await?;
                }
                if wants(Scenario::Provisioning) {
                    bench.provisioning(&server, cluster.client()).await?;
                }
                if wants(Scenario::Memory) {
                    bench.memory_loaded(&mut server).await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = &result {
                eprintln!("[{b}] failed: {e:#}\nserver log:\n{}", server.log_tail());
            }
            server.stop().await;
            if let Some(scraper) = scraper {
                scraper.abort();
            }
            if let Some(r) = &receiver {
                eprintln!(
                    "[{b}] OTLP receiver: {} spans in {} exports",
                    r.span_count(),
                    r.requests()
                );
            }
            result?;
        }
    }
    if wants(Scenario::NodeFailure) {
        let cluster = kapal_tests::cluster::cluster().await?;
        bench.node_failure(cluster.kubeconfig_path()).await?;
    }

    bench.report.print();
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&bench.report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}
