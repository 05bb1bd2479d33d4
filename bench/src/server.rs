//! The processes under test: the real release binary `kapal server` (all four services in one
//! process, as deployed) on a temporary data directory, and the echo baseline; both children of
//! the benchmark, so their CPU and memory come from /proc/<pid>.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use kapal::auth::InternalKey;
use kapal::proto::v1::ListAppsRequest;
use kapal::proto::v1::catalog_service_client::CatalogServiceClient;
use kapal::proto::v1::instance_service_client::InstanceServiceClient;
use kapal::testing::Backend;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// A free loopback port (bound and released; the child binds it right after).
pub async fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?)
}

/// Sends SIGTERM (no libc: the workspace forbids unsafe code) and waits up to `grace`, then kills.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Where to find the `kapal` binary: `--kapal-bin`, else next to this benchmark's binary
/// (`cargo build --release -p kapal-cli -p kapal-bench` puts both in target/release).
pub fn default_kapal_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("kapal")))
        .unwrap_or_else(|| PathBuf::from("kapal"))
}

/// A running `kapal server`.
/// The operator account of every `kapal server` the benchmark starts (for the admin listing).
pub const ADMIN_EMAIL: &str = "ops@bench.example.com";

pub struct KapalServer {
    child: Child,
    pub pid: u32,
    pub backend: Backend,
    pub gateway: SocketAddr,
    pub control_plane: SocketAddr,
    pub key: InternalKey,
    pub startup: Duration,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database of this run (dropped at the end).
    pub database_url: Option<String>,
    bin: PathBuf,
    kubeconfig: PathBuf,
    secret: String,
    /// Metrics and trace export (`--observability`).
    observability: Observability,
}

/// What `kapal server` is run with for `--observability`: `--metrics-listen` (its own
/// loopback port) and `--otlp-endpoint` (the benchmark's OTLP receiver), each or neither.
#[derive(Clone, Debug, Default)]
pub struct Observability {
    pub metrics_listen: Option<SocketAddr>,
    pub otlp_endpoint: Option<String>,
}

impl KapalServer {
    /// Starts `kapal server` on a new data directory (SQLite) or a new PostgreSQL database, and
    /// waits for the first successful ListApps through the gateway.
    pub async fn start(
        bin: &Path,
        backend: Backend,
        kubeconfig: &Path,
        observability: Observability,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bin.is_file(),
            "{} not found: build it with `cargo build --release -p kapal-cli` (scripts/bench does) or pass --kapal-bin",
            bin.display()
        );
        let dir = tempfile::Builder::new().prefix("kapal-bench-").tempdir()?;
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(kapal::testing::fresh_postgres_database().await?),
        };
        let secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let key = InternalKey::from_secret(&secret)?;
        let mut server = KapalServer {
            child: Command::new("true").spawn()?,
            pid: 0,
            backend,
            gateway: free_addr().await?,
            control_plane: free_addr().await?,
            key,
            startup: Duration::ZERO,
            dir,
            database_url,
            bin: bin.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            secret: secret.clone(),
            observability,
        };
        let _ = server.child.wait().await;
        server.spawn(&secret).await?;
        Ok(server)
    }

    /// Makes the account of `email` an operator, as an operator does: `kapal admin grant` on
    /// the server's database.
    pub async fn grant_admin(&self, email: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "admin",
            "grant",
            "--email",
            email,
            "--reason",
            "benchmark operator",
        ])
        .arg("--data-dir")
        .arg(self.dir.path().join("data"))
        .env_remove("KAPAL_DATABASE_URL")
        .stdin(Stdio::null());
        if let Some(url) = &self.database_url {
            cmd.env("KAPAL_DATABASE_URL", url);
        }
        let out = cmd.output().await?;
        anyhow::ensure!(
            out.status.success(),
            "kapal admin grant failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    async fn spawn(&mut self, secret: &str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .arg("--listen")
            .arg(self.gateway.to_string())
            .arg("--control-plane-listen")
            .arg(self.control_plane.to_string())
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--catalog-dir")
            .arg(kapal::catalog::repo_catalog_dir())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--domain")
            .arg("kapal.bench")
            // The benchmark signs up and orders at speed: no verification mail.
            .arg("--email-verification")
            .arg("off")
            // The catalog has priced plans: development payments.
            .arg("--payments")
            .arg("dummy")
            // One account orders every instance of the benchmark.
            .arg("--max-instances-per-account")
            .arg("100000")
            // Deleted instances' data goes at once: the benchmark deletes hundreds.
            .arg("--data-retention")
            .arg("1s")
            // The load comes from one client: per-caller limits would measure the limiter.
            .arg("--rate-limit")
            .arg("1000000")
            .arg("--rate-burst")
            .arg("1000000")
            .env("KAPAL_INTERNAL_KEY", secret)
            .env_remove("KAPAL_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(url) = &self.database_url {
            cmd.env("KAPAL_DATABASE_URL", url);
        }
        match &self.observability.metrics_listen {
            Some(addr) => {
                cmd.arg("--metrics-listen").arg(addr.to_string());
            }
            None => {
                cmd.env_remove("KAPAL_METRICS_LISTEN");
            }
        }
        match &self.observability.otlp_endpoint {
            Some(endpoint) => {
                cmd.arg("--otlp-endpoint").arg(endpoint);
            }
            None => {
                cmd.env_remove("KAPAL_OTLP_ENDPOINT");
            }
        }
        let started = Instant::now();
        self.child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.pid = self.child.id().context("kapal server exited at once")?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.gateway))?
            .connect_timeout(Duration::from_millis(200))
            .connect_lazy();
        let mut catalog = CatalogServiceClient::new(channel);
        loop {
            if catalog.list_apps(ListAppsRequest {}).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                anyhow::bail!(
                    "kapal server exited during start-up ({status}); log: {}",
                    self.log_tail()
                );
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "kapal server did not answer within 60 s; log: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.startup = started.elapsed();
        Ok(())
    }

    /// Stops the server (SIGTERM) and starts it again on the same data; returns the start-up.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        terminate(&mut self.child, Duration::from_secs(15)).await;
        let secret = self.secret.clone();
        self.spawn(&secret).await?;
        Ok(self.startup)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the server and drops its PostgreSQL database.
    pub async fn stop(mut self) {
        terminate(&mut self.child, Duration::from_secs(15)).await;
        if let Some(url) = self.database_url.take() {
            let _ = drop_database(&url).await;
        }
    }
}

/// GETs http://`addr`/metrics every `every`, as Prometheus scrapes (failures, e.g. before the
/// server is up, are ignored).
pub async fn scrape_every(addr: SocketAddr, every: Duration) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let request = "GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n";
            if s.write_all(request.as_bytes()).await.is_ok() {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
            }
        }
    }
}

async fn drop_database(url: &str) -> anyhow::Result<()> {
    use diesel_async::{AsyncConnection as _, AsyncPgConnection, SimpleAsyncConnection as _};
    let admin = std::env::var(kapal::testing::TEST_DATABASE_URL)?;
    let name = url.rsplit('/').next().context("database URL")?;
    anyhow::ensure!(name.starts_with("kapal_test_"), "not a benchmark database");
    let mut conn = AsyncPgConnection::establish(&admin).await?;
    conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    Ok(())
}

/// The echo baseline in a child process.
pub struct EchoServer {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub startup: Duration,
}

impl EchoServer {
    /// `nodelay`: TCP_NODELAY on accepted connections (see [`crate::echo::serve_child`]).
    pub async fn start(nodelay: bool) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let started = Instant::now();
        let mut child = Command::new(exe)
            .arg("echo-server")
            .arg(format!("--nodelay={nodelay}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("echo server exited at once")?;
        let stdout = child.stdout.take().context("echo server stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("echo server did not start within 30 s")??
            .context("echo server exited")?;
        let addr: SocketAddr = line
            .strip_prefix("listening ")
            .context("echo server's first line")?
            .parse()?;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
        let mut client = InstanceServiceClient::new(channel);
        loop {
            let req = kapal::proto::v1::GetInstanceRequest {
                instance_id: "probe".into(),
            };
            if client.get_instance(req).await.is_ok() {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "echo server did not answer"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(EchoServer {
            child,
            pid,
            addr,
            startup: started.elapsed(),
        })
    }

    pub async fn stop(mut self) {
        // Closing its stdin stops it.
        drop(self.child.stdin.take());
        terminate(&mut self.child, Duration::from_secs(5)).await;
    }
}
