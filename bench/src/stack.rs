//! Kapal's four services in this process, composed by the stack builder (kapal-stack) like
//! `kapal server` and kapal-tests' TestApp, for what `kapal server` has no flag for: the node-failure scenario needs the provisioner's toleration and affinity
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

pub struct Stack {
    pub gateway: SocketAddr,
    running: kapal_stack::Running,
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
        use kapal_stack::{Listen, Part, Upstream};
        let dir = tempfile::Builder::new().prefix("kapal-bench-").tempdir()?;
        let db: DbConfig = kapal::testing::db_config(backend, dir.path()).await?;
        let catalog = Arc::new(Catalog::load(&kapal::catalog::repo_catalog_dir())?);
        let key = InternalKey::random();
        let kube = kapal_provisioner::kube_config_from(Some(kubeconfig)).await?;
        // Every upstream is set by the stack.
        let mut provisioner = kapal_provisioner::Config::new(
            db.clone(),
            catalog.clone(),
            key.clone(),
            kube,
            Upstream::default(),
        );
        tweak(&mut provisioner);
        let mut gateway =
            kapal_gateway::Config::new(Upstream::default(), Upstream::default(), key.clone());
        gateway.rate_limit_per_second = 1_000_000;
        gateway.rate_limit_burst = 1_000_000;
        let stack = kapal_stack::Stack {
            gateway: Part::Here(gateway, Listen::any_loopback()),
            control_plane: Part::Here(
                kapal_control_plane::Config::new(
                    db.clone(),
                    catalog.clone(),
                    key.clone(),
                    Upstream::default(),
                    Upstream::default(),
                ),
                Listen::any_loopback(),
            ),
            billing: Part::Here(
                kapal_billing::Config::new(db.clone(), catalog.clone(), key.clone()),
                Listen::any_loopback(),
            ),
            provisioner: Part::Here(provisioner, Listen::any_loopback()),
            in_process: true,
            metrics: None,
        };
        let running = stack.start().await?;
        let gateway_addr = running.gateway.context("the gateway's address")?;
        let mut stack = Stack {
            gateway: gateway_addr,
            running,
            _dir: dir,
        };
        let channel = crate::clients::channels(gateway_addr, 1)?
            .pop()
            .context("a channel")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(e) = stack.running.try_failed() {
                return Err(e.context("stopped during start-up"));
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
        let _ = self.running.stop().await;
    }
}
