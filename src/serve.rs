//! Starting gRPC servers and connecting to peers, the same way in every service.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::{InternalKey, SignAsService};

/// A channel to another Kapal service, signing every call as a service.
pub type InternalChannel = InterceptedService<Channel, SignAsService>;

/// A lazily connecting channel to `endpoint` (`http://host:port`), signed with `key`.
pub fn internal_channel(endpoint: &str, key: &InternalKey) -> anyhow::Result<InternalChannel> {
    let channel = Endpoint::from_shared(endpoint.to_string())
        .with_context(|| {
            format!("{endpoint:?} is not a valid endpoint URL (expected http://host:port)")
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy();
    Ok(InterceptedService::new(channel, SignAsService(key.clone())))
}

/// A service's gRPC routes, shared with a gateway in the same process (`kapal server` running
/// the whole stack): the gateway then hands calls to the service directly, with no loopback
/// socket and no HTTP/2 in between. The service sets its routes once they are built; until then
/// (and when it runs elsewhere) the gateway uses the network. Everything a call goes through is
/// the same either way: the gateway's layers before, the service's interceptors and handlers
/// after; the gateway's deadline drops (cancels) a call that runs out of time.
#[derive(Clone, Default)]
pub struct LocalRoutes(Arc<OnceLock<tonic::service::Routes>>);

impl LocalRoutes {
    /// Publishes the service's routes (the first call wins).
    pub fn set(&self, routes: tonic::service::Routes) {
        let _ = self.0.set(routes);
    }

    /// The routes, once the service published them.
    pub fn get(&self) -> Option<&tonic::service::Routes> {
        self.0.get()
    }
}

impl std::fmt::Debug for LocalRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRoutes")
            .field("ready", &self.0.get().is_some())
            .finish()
    }
}

/// Binds a TCP listener, saying which address failed.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// The accepted connections of `listener`, with `TCP_NODELAY` set on each. tonic's
/// `Server::tcp_nodelay` only applies to listeners tonic binds itself; without it every small
/// response waits for the peer's delayed ACK (about 40 ms on Linux).
pub fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    router
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .context("gRPC server failed")
}

/// The gRPC reflection service for the given encoded descriptor set.
pub fn reflection(
    descriptors: &[u8],
) -> anyhow::Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(descriptors)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")
}

/// Installs the tracing subscriber: `RUST_LOG` filters (default `info`), JSON when `json`.
pub fn init_tracing(json: bool) {
    init_tracing_with_default(json, "info");
}

/// Like [`init_tracing`], with another filter when `RUST_LOG` is unset (tests use `warn`).
pub fn init_tracing_with_default(json: bool, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    // A second call (tests start many services in one process) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs rustls' process-wide crypto provider (ring). Call first thing in `main`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
