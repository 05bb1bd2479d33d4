//! Starting gRPC servers and connecting to peers, the same way in every service.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::{InternalKey, SignAsService};

/// A channel to another Kapal service, signing every call as a service, each call with a
/// deadline.
pub type InternalChannel = Deadline<InterceptedService<Channel, SignAsService>>;

/// How long a call to another Kapal service may take unless configured otherwise
/// ([`internal_channel_with_deadline`]; `kapal server --internal-deadline`).
pub const DEFAULT_INTERNAL_DEADLINE: Duration = Duration::from_secs(10);

/// A lazily connecting channel to `endpoint` (`http://host:port`), signed with `key`, whose
/// calls end with DEADLINE_EXCEEDED after [`DEFAULT_INTERNAL_DEADLINE`].
pub fn internal_channel(endpoint: &str, key: &InternalKey) -> anyhow::Result<InternalChannel> {
    internal_channel_with_deadline(endpoint, key, DEFAULT_INTERNAL_DEADLINE)
}

/// Like [`internal_channel`], with calls that end with DEADLINE_EXCEEDED after `deadline` (or
/// a shorter one the caller set with [`tonic::Request::set_timeout`]).
pub fn internal_channel_with_deadline(
    endpoint: &str,
    key: &InternalKey,
    deadline: Duration,
) -> anyhow::Result<InternalChannel> {
    anyhow::ensure!(
        deadline > Duration::ZERO,
        "the deadline of internal calls must be longer than zero"
    );
    let channel = Endpoint::from_shared(endpoint.to_string())
        .with_context(|| {
            format!("{endpoint:?} is not a valid endpoint URL (expected http://host:port)")
        })?
        .connect_timeout(Duration::from_secs(5).min(deadline))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy();
    Ok(Deadline::new(
        InterceptedService::new(channel, SignAsService(key.clone())),
        deadline,
    ))
}

/// A client-side gRPC service whose calls end with DEADLINE_EXCEEDED when the peer has not
/// answered (response headers) within the deadline: a peer that accepts and stalls cannot
/// hold a task, a lease or a loop forever. It also tells the peer (`grpc-timeout`), so the
/// peer stops working on a call nobody waits for.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    deadline: Duration,
}

impl<S> Deadline<S> {
    pub fn new(inner: S, deadline: Duration) -> Deadline<S> {
        Deadline { inner, deadline }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn deadline_exceeded(deadline: Duration) -> BoxError {
    Box::new(tonic::Status::deadline_exceeded(format!(
        "no answer from the Kapal service called within {} ms",
        deadline.as_millis()
    )))
}

impl<S, B> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let deadline = self.deadline;
        // A caller's own, shorter deadline stays (tonic's channel enforces it, see below).
        if !req.headers().contains_key("grpc-timeout") {
            // At most 8 digits, as the gRPC spec allows.
            let millis = deadline.as_millis().clamp(1, 99_999_999);
            if let Ok(value) = format!("{millis}m").parse() {
                req.headers_mut().insert("grpc-timeout", value);
            }
        }
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(deadline, call).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => {
                    let e: BoxError = e.into();
                    // tonic's channel ends a call past its grpc-timeout with `TimeoutExpired`,
                    // which it would report as CANCELLED: it is a deadline.
                    let timed_out = std::iter::successors(
                        Some(&*e as &(dyn std::error::Error + 'static)),
                        |e| e.source(),
                    )
                    .any(|e| e.is::<tonic::TimeoutExpired>());
                    if timed_out {
                        Err(deadline_exceeded(deadline))
                    } else {
                        Err(e)
                    }
                }
                Err(_elapsed) => Err(deadline_exceeded(deadline)),
            }
        })
    }
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

/// Like [`init_tracing`], with another filter when `RUST_LOG` is unset (tests use `warn`). No
/// trace export; [`crate::telemetry::init`] sets that up too.
pub fn init_tracing_with_default(json: bool, default_filter: &str) {
    // A second call (tests start many services in one process) keeps the first subscriber;
    // without an OTLP endpoint nothing here can fail.
    let _ = crate::telemetry::init(&crate::telemetry::Settings::new(json, default_filter));
}

/// Installs rustls' process-wide crypto provider (ring). Call first thing in `main`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::proto::internal::v1::ListDesiredInstancesRequest;
    use crate::proto::internal::v1::instance_state_service_client::InstanceStateServiceClient;

    /// A peer that accepts connections and never answers (not even the HTTP/2 handshake).
    async fn stalling_peer() -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn a_call_to_a_peer_that_never_answers_ends_at_the_deadline() {
        let (endpoint, peer) = stalling_peer().await;
        let key = InternalKey::random();
        let channel = internal_channel_with_deadline(&endpoint, &key, Duration::from_millis(700))
            .expect("channel");
        let mut client = InstanceStateServiceClient::new(channel);
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            client.list_desired_instances(ListDesiredInstancesRequest::default()),
        )
        .await
        .expect("the call ended on its own, well before 20 s");
        let elapsed = started.elapsed();
        assert_eq!(
            result.err().map(|s| s.code()),
            Some(tonic::Code::DeadlineExceeded)
        );
        assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        peer.abort();
    }

    #[tokio::test]
    async fn a_callers_shorter_deadline_is_a_deadline_too() {
        let (endpoint, peer) = stalling_peer().await;
        let key = InternalKey::random();
        let mut client =
            InstanceStateServiceClient::new(internal_channel(&endpoint, &key).expect("channel"));
        let mut req = tonic::Request::new(ListDesiredInstancesRequest::default());
        req.set_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let result = client.list_desired_instances(req).await;
        assert_eq!(
            result.err().map(|s| s.code()),
            Some(tonic::Code::DeadlineExceeded)
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        peer.abort();
    }
}
