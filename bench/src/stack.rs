//! Kapal's four services in this process (like kapal-tests' TestApp), for what `kapal server`
//! has no flag for: the node-failure scenario needs the provisioner's toleration and affinity
//! that put instance pods on a temporary node (so stopping it disturbs no one else's pods on
//! the shared local cluster).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kapal::auth::InternalKey;
use kapal::catalog::Catalog;
use kapal::db::DbConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Stack {
    pub gateway: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// Starts the services on SQLite in a temporary directory, the provisioner configured by
    /// `tweak`, and waits until the gateway answers.
    pub async fn start(
        kubeconfig: &Path,
        backend: kapal::testing::Backend,
        tweak: impl FnOnce(&mut kapal_provisioner::Config),
    ) -> anyhow::Result<Stack> {
        let dir = tempfile::Builder::new().prefix("kapal-bench-").tempdir()?;
        let db: DbConfig = kapal::testing::db_config(backend, dir.path()).await?;
        let catalog = Arc::new(Catalog::load(&kapal::catalog::repo_catalog_dir())?);
        let key = InternalKey::random();
        let (stop, stop_rx) = watch::channel(false);
        let shutdown = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (cp, billing, prov, gateway) =
            (bind().await?, bind().await?, bind().await?, bind().await?);
        let url = |l: &TcpListener| -> anyhow::Result<String> {
            Ok(format!("http://{}", l.local_addr()?))
        };
        let (cp_url, billing_url, prov_url) = (url(&cp)?, url(&billing)?, url(&prov)?);
        let gateway_addr = gateway.local_addr()?;
        let mut tasks = JoinSet::new();

        let config = kapal_billing::Config::new(db.clone(), catalog.clone(), key.clone());
        let s = shutdown();
        tasks.spawn(async move { ("billing", kapal_billing::run(config, billing, s).await) });

        let kube = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        let mut config = kapal_provisioner::Config::new(
            db.clone(),
            catalog.clone(),
            key.clone(),
            kube,
            cp_url.clone(),
        );
        tweak(&mut config);
        let s = shutdown();
        tasks.spawn(async move { ("provisioner", kapal_provisioner::run(config, prov, s).await) });

        let config = kapal_control_plane::Config::new(
            db.clone(),
            catalog.clone(),
            key.clone(),
            billing_url.clone(),
            prov_url,
        );
        let s = shutdown();
        tasks.spawn(async move {
            (
                "control-plane",
                kapal_control_plane::run(config, cp, s).await,
            )
        });

        let mut config = kapal_gateway::Config::new(cp_url, billing_url, key.clone());
        config.rate_limit_per_second = 1_000_000;
        config.rate_limit_burst = 1_000_000;
        let s = shutdown();
        tasks.spawn(async move { ("gateway", kapal_gateway::run(config, gateway, s).await) });

        let mut stack = Stack {
            gateway: gateway_addr,
            stop,
            tasks,
            _dir: dir,
        };
        let channel = crate::clients::channels(gateway_addr, 1)?
            .pop()
            .context("a channel")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(done) = stack.tasks.try_join_next() {
                let (name, result) = done?;
                anyhow::bail!("{name} stopped during start-up: {:?}", result.err());
            }
            let mut catalog = crate::clients::grpc(&channel, "").catalog;
            if catalog
                .list_apps(kapal::proto::v1::ListAppsRequest {})
                .await
                .is_ok()
            {
                return Ok(stack);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "services did not come up in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
