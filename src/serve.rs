//! Starting gRPC servers and connecting to peers, the same way in every service: a service's
//! `build(config)` gives a [`Built`] (routes and background work); its calls to other services go
//! through an [`Upstream`] each, over the network or in-process. The `kapal-stack` crate composes
//! them (listeners, shutdown, and the choice of every upstream).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::{InternalKey, SignAsService};

/// A channel to another Kapal service, signing every call as a service, each call with a
/// deadline.
pub type InternalChannel = Deadline<InterceptedService<Transport, SignAsService>>;

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
    Upstream::from(endpoint).internal_channel_with_deadline(key, deadline)
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

/// How a service reaches another Kapal service (an internal edge of the stack): over the
/// network, at an `http://host:port` endpoint, or, when both run in the same process
/// (`kapal server`, [`kapal-stack`]), by handing each call to the other service's routes
/// directly: no loopback socket and no HTTP/2 in between. Everything a call goes through is the
/// same either way: the caller's interceptors and deadline before, the service's metrics, trace
/// spans, interceptors and handlers after; a caller's deadline drops (cancels) a call that runs
/// out of time. The stack builder makes the choice for every edge; a service only sees this.
#[derive(Clone)]
pub enum Upstream {
    /// `http://host:port` (empty: not configured).
    Network(String),
    /// The routes of a service in this process ([`Built::routes`]).
    InProcess(tonic::service::Routes),
}

impl Default for Upstream {
    /// Not configured: an empty endpoint.
    fn default() -> Upstream {
        Upstream::Network(String::new())
    }
}

impl From<String> for Upstream {
    fn from(endpoint: String) -> Upstream {
        Upstream::Network(endpoint)
    }
}

impl From<&str> for Upstream {
    fn from(endpoint: &str) -> Upstream {
        Upstream::Network(endpoint.to_string())
    }
}

impl From<&String> for Upstream {
    fn from(endpoint: &String) -> Upstream {
        Upstream::Network(endpoint.clone())
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Network(endpoint) => write!(f, "{endpoint}"),
            Upstream::InProcess(_) => f.write_str("in-process"),
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl Upstream {
    /// Whether there is somewhere to call: routes, or a non-empty endpoint.
    pub fn is_set(&self) -> bool {
        match self {
            Upstream::Network(endpoint) => !endpoint.trim().is_empty(),
            Upstream::InProcess(_) => true,
        }
    }

    /// The endpoint, when calls go over the network.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Upstream::Network(endpoint) => Some(endpoint),
            Upstream::InProcess(_) => None,
        }
    }

    /// A transport to the service whose network channel is made by `channel` (from the
    /// endpoint) when calls go over the network.
    pub fn transport_with(
        &self,
        channel: impl FnOnce(&str) -> anyhow::Result<Channel>,
    ) -> anyhow::Result<Transport> {
        Ok(match self {
            Upstream::Network(endpoint) => Transport::Network(channel(endpoint)?),
            Upstream::InProcess(routes) => Transport::InProcess(routes.clone()),
        })
    }

    /// A channel to the service signing every call as a service, each call ending with
    /// DEADLINE_EXCEEDED after [`DEFAULT_INTERNAL_DEADLINE`].
    pub fn internal_channel(&self, key: &InternalKey) -> anyhow::Result<InternalChannel> {
        self.internal_channel_with_deadline(key, DEFAULT_INTERNAL_DEADLINE)
    }

    /// Like [`Upstream::internal_channel`], with calls that end after `deadline`.
    pub fn internal_channel_with_deadline(
        &self,
        key: &InternalKey,
        deadline: Duration,
    ) -> anyhow::Result<InternalChannel> {
        anyhow::ensure!(
            deadline > Duration::ZERO,
            "the deadline of internal calls must be longer than zero"
        );
        let transport = self.transport_with(|endpoint| network_channel(endpoint, deadline))?;
        Ok(Deadline::new(
            InterceptedService::new(transport, SignAsService(key.clone())),
            deadline,
        ))
    }
}

/// Where a call to another service goes: a network channel, or the service's routes in this
/// process ([`Upstream`]).
#[derive(Clone)]
pub enum Transport {
    Network(Channel),
    InProcess(tonic::service::Routes),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Network(channel) => channel.fmt(f),
            Transport::InProcess(_) => f.write_str("in-process"),
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Transport::Network(channel) => {
                tower::Service::poll_ready(channel, cx).map_err(Into::into)
            }
            // Each call takes its own clone of the routes (below).
            Transport::InProcess(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        match self {
            Transport::Network(channel) => {
                let call = tower::Service::call(channel, req);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
            Transport::InProcess(routes) => {
                let routes = routes.clone();
                Box::pin(async move {
                    match tower::ServiceExt::oneshot(routes, req).await {
                        Ok(response) => Ok(response),
                        Err(never) => match never {},
                    }
                })
            }
        }
    }
}

fn network_channel(endpoint: &str, deadline: Duration) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(endpoint.to_string())
        .with_context(|| {
            format!("{endpoint:?} is not a valid endpoint URL (expected http://host:port)")
        })?
        .connect_timeout(Duration::from_secs(5).min(deadline))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}

/// A service built and ready to serve (each service crate's `build(config)`): the routes it
/// answers, for its listener and for callers in the same process ([`Upstream::InProcess`]),
/// and the work it runs in the background. The stack builder (`kapal-stack`) serves it.
pub struct Built {
    /// Which service, for logs and errors (`control-plane`, `billing`, ...).
    pub name: &'static str,
    /// The service's gRPC routes, instrumented ([`crate::metrics::instrument`]).
    pub routes: tonic::service::Routes,
    /// Background work (loops, pollers); stops after the server.
    pub tasks: Background,
    /// A server of the service's own (the gateway's layers, TLS, HTTP/1.1); `None`: a plain
    /// gRPC server of `routes`.
    server: Option<ServeFn>,
}

/// Serves on a listener until the shutdown future completes.
pub type ServeFn = Box<
    dyn FnOnce(
            TcpListener,
            Pin<Box<dyn Future<Output = ()> + Send>>,
        ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
        + Send,
>;

impl Built {
    /// A service served as a plain gRPC server of `routes`.
    pub fn new(name: &'static str, routes: tonic::service::Routes, tasks: Background) -> Built {
        Built {
            name,
            routes,
            tasks,
            server: None,
        }
    }

    /// The service is served by `server` instead (the gateway: its layers, TLS, HTTP/1.1).
    pub fn with_server(mut self, server: ServeFn) -> Built {
        self.server = Some(server);
        self
    }

    /// Serves on `listener` until `shutdown` completes, then stops the background work.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Built {
            routes,
            tasks,
            server,
            ..
        } = self;
        let served = match server {
            Some(server) => server(listener, Box::pin(shutdown)).await,
            None => {
                let router = tonic::transport::Server::builder().add_routes(routes);
                serve(router, listener, shutdown).await
            }
        };
        tasks.stop().await;
        served
    }
}

/// A service's background work: tasks that watch [`Background::stopping`] and end when it
/// turns true, and tasks that are aborted.
pub struct Background {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    aborted: Vec<tokio::task::JoinHandle<()>>,
}

impl Default for Background {
    fn default() -> Background {
        Background::new()
    }
}

impl Background {
    pub fn new() -> Background {
        Background {
            stop: tokio::sync::watch::channel(false).0,
            tasks: tokio::task::JoinSet::new(),
            aborted: Vec::new(),
        }
    }

    /// Turns true when the work should stop.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Completes when the work should stop.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stopping();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }

    /// Runs `task`, which ends on its own once [`Background::stopping`] turns true.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Keeps `task` to abort when the work stops.
    pub fn abort_on_stop(&mut self, task: tokio::task::JoinHandle<()>) {
        self.aborted.push(task);
    }

    /// Signals the stop and waits for the tasks to end (aborting those kept to abort).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in &self.aborted {
            task.abort();
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Background {
    /// Dropped without [`Background::stop`] (a service task aborted): every task ends.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.aborted {
            task.abort();
        }
        self.tasks.abort_all();
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
