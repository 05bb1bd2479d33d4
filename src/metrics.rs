//! Prometheus metrics: the conventional gRPC server metrics of every service (one tower layer,
//! [`GrpcMetricsLayer`]), Kapal's own figures (gauges read from the databases when Prometheus
//! scrapes, see [`register_collector`]), and the `/metrics` listener that serves them
//! ([`serve`], `--metrics-listen`), apart from the public port.
//!
//! The exposition format is written by `metrics-exporter-prometheus` (the `metrics` facade's
//! Prometheus exporter); nothing here formats it by hand. Recording goes through the `metrics`
//! macros, which cost next to nothing until [`install`] sets the process-wide recorder, so a
//! server without `--metrics-listen` records nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body::{Body, Frame, SizeHint};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Buckets of `grpc_server_handling_seconds`, seconds: from a cached read to a slow checkout.
pub const GRPC_HANDLING_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of `kapal_provisioning_duration_seconds` (order paid to READY), seconds.
pub const PROVISIONING_BUCKETS: &[f64] = &[
    5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle). Until this
/// is called every `metrics::counter!`/`gauge!`/`histogram!` is a no-op.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("grpc_server_handling_seconds".into()),
                    GRPC_HANDLING_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("kapal_provisioning_duration_seconds".into()),
                        PROVISIONING_BUCKETS,
                    )
                });
            // (only an empty bucket list fails, and these are constants)
            let recorder = builder.unwrap_or_default().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        "grpc_server_started_total",
        "Total number of RPCs started on the server."
    );
    describe_counter!(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure."
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server."
    );
    describe_histogram!(
        "kapal_provisioning_duration_seconds",
        Unit::Seconds,
        "Time from an order's payment to its instance's first READY."
    );
    describe_counter!(
        "kapal_webhook_failures_total",
        "Notification webhook deliveries that failed (after their retries)."
    );
}

// ---------------------------------------------------------------------------------------------
// collectors: gauges read when Prometheus scrapes

type CollectFn = dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

static COLLECTORS: Mutex<BTreeMap<u64, (String, Arc<CollectFn>)>> = Mutex::new(BTreeMap::new());
static NEXT_COLLECTOR: AtomicU64 = AtomicU64::new(0);

/// Unregisters its collector when dropped (a service stops).
#[must_use = "the collector is unregistered when this is dropped"]
pub struct CollectorGuard(u64);

impl Drop for CollectorGuard {
    fn drop(&mut self) {
        if let Ok(mut c) = COLLECTORS.lock() {
            c.remove(&self.0);
        }
    }
}

/// Registers `collect`, run before every scrape of `/metrics` (at most 5 s; a collector that
/// fails logs and leaves its gauges as they were). `name` is for the logs.
pub fn register_collector<F, Fut>(name: &str, collect: F) -> CollectorGuard
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let id = NEXT_COLLECTOR.fetch_add(1, Ordering::Relaxed);
    let f: Arc<CollectFn> = Arc::new(move || Box::pin(collect()));
    if let Ok(mut c) = COLLECTORS.lock() {
        c.insert(id, (name.to_string(), f));
    }
    CollectorGuard(id)
}

/// Runs every registered collector (concurrently, 5 s at most each).
pub async fn collect() {
    let collectors: Vec<(String, Arc<CollectFn>)> = match COLLECTORS.lock() {
        Ok(c) => c.values().cloned().collect(),
        Err(_) => return,
    };
    let runs = collectors.into_iter().map(|(name, f)| async move {
        if tokio::time::timeout(Duration::from_secs(5), f())
            .await
            .is_err()
        {
            tracing::warn!(collector = name, "metrics collector took over 5 s; skipped");
        }
    });
    futures::future::join_all(runs).await;
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let handle = install();
    let upkeep = handle.clone();
    // Histograms are drained into their buckets by the upkeep (render does it too).
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                collect().await;
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    tracing::info!(addr = ?listener.local_addr().ok(), "metrics on /metrics");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("metrics listener failed");
    upkeep.abort();
    served
}

// ---------------------------------------------------------------------------------------------
// gRPC server metrics

/// The conventional gRPC server metrics (as go-grpc-prometheus names them) of every call a
/// service answers: `grpc_server_started_total`, `grpc_server_handled_total` (with
/// `grpc_code`) and `grpc_server_handling_seconds`, labelled `grpc_service`, `grpc_method`,
/// `grpc_type` and `kapal_service` (which of Kapal's services answered: `kapal server` runs
/// them all in one process, and a public call is counted by the gateway and by the service).
///
/// The handles of a method's metrics are made once, at its first call, and kept (per layer,
/// for the methods Kapal serves): a call costs a lookup by its path, two counter increments
/// and a histogram sample, no labels built. Nothing at all while no recorder is installed.
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    component: &'static str,
    methods: Arc<MethodCache>,
}

impl GrpcMetricsLayer {
    pub fn new(component: &'static str) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            component,
            methods: Arc::default(),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            component: self.component,
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
    component: &'static str,
    methods: Arc<MethodCache>,
}

/// `routes` with [`GrpcMetricsLayer`] and the trace spans ([`crate::telemetry::TraceLayer`])
/// around every service: what a service publishes as its
/// [`crate::serve::Built::routes`], which callers in the same process call directly
/// ([`crate::serve::Upstream::InProcess`]), so calls handed over in-process are counted
/// the same as calls over the network.
pub fn instrument(
    routes: tonic::service::Routes,
    component: &'static str,
) -> tonic::service::Routes {
    tonic::service::Routes::from(
        routes
            .into_axum_router()
            .layer(GrpcMetricsLayer::new(component))
            .layer(crate::telemetry::TraceLayer::internal(component)),
    )
}

/// The kind of a method, as go-grpc-prometheus labels it (`grpc_type`): `unary`,
/// `client_stream`, `server_stream` or `bidi_stream`, from the descriptors of every service
/// Kapal serves (its own, health, reflection). An unknown method (refused by the gateway) is
/// `unary`.
pub fn grpc_type(service: &str, method: &str) -> &'static str {
    known_type(&format!("{service}/{method}")).unwrap_or("unary")
}

/// The kind of the method at `path` (`package.Service/Method`), if Kapal serves it.
fn known_type(path: &str) -> Option<&'static str> {
    static TYPES: OnceLock<std::collections::HashMap<String, &'static str>> = OnceLock::new();
    let types = TYPES.get_or_init(|| {
        use prost::Message as _;
        let mut types = std::collections::HashMap::new();
        for set in [
            crate::proto::DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                let package = file.package().to_string();
                for svc in &file.service {
                    for m in &svc.method {
                        let kind = match (m.client_streaming(), m.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        let full = if package.is_empty() {
                            format!("{}/{}", svc.name(), m.name())
                        } else {
                            format!("{package}.{}/{}", svc.name(), m.name())
                        };
                        types.insert(full, kind);
                    }
                }
            }
        }
        types
    });
    types.get(path).copied()
}

/// The `grpc_code` names, by `grpc-status` value.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;
const INTERNAL: usize = 13;
const UNAVAILABLE: usize = 14;

/// The metric handles of one method at one service.
struct MethodMetrics {
    labels: [metrics::Label; 4],
    started: metrics::Counter,
    handling: metrics::Histogram,
    /// `grpc_server_handled_total` by code, each made at its first use.
    handled: [OnceLock<metrics::Counter>; 17],
}

impl MethodMetrics {
    fn new(component: &'static str, path: &str, kind: &'static str) -> MethodMetrics {
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let labels = [
            metrics::Label::new("grpc_service", service.to_string()),
            metrics::Label::new("grpc_method", method.to_string()),
            metrics::Label::new("grpc_type", kind),
            metrics::Label::new("kapal_service", component),
        ];
        MethodMetrics {
            started: metrics::counter!("grpc_server_started_total", labels.to_vec()),
            handling: metrics::histogram!("grpc_server_handling_seconds", labels.to_vec()),
            handled: Default::default(),
            labels,
        }
    }

    fn handled(&self, code: usize) -> &metrics::Counter {
        let code = code.min(CODE_NAMES.len() - 1);
        self.handled[code].get_or_init(|| {
            let mut labels = self.labels.to_vec();
            labels.push(metrics::Label::new("grpc_code", CODE_NAMES[code]));
            metrics::counter!("grpc_server_handled_total", labels)
        })
    }
}

/// The handles of every method a layer has seen (only methods Kapal serves: the gateway
/// also counts made-up paths it refuses, and those are not kept).
#[derive(Default)]
struct MethodCache(std::sync::RwLock<std::collections::HashMap<Box<str>, Arc<MethodMetrics>>>);

impl std::fmt::Debug for MethodCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MethodCache")
    }
}

impl MethodCache {
    fn get(&self, component: &'static str, path: &str) -> Arc<MethodMetrics> {
        if let Ok(methods) = self.0.read()
            && let Some(m) = methods.get(path)
        {
            return m.clone();
        }
        match known_type(path) {
            Some(kind) => {
                let m = Arc::new(MethodMetrics::new(component, path, kind));
                if let Ok(mut methods) = self.0.write() {
                    methods.insert(path.into(), m.clone());
                }
                m
            }
            None => Arc::new(MethodMetrics::new(component, path, "unary")),
        }
    }
}

/// One call being counted.
struct Call {
    metrics: Arc<MethodMetrics>,
    start: Instant,
}

impl Call {
    fn of<B>(
        req: &http::Request<B>,
        component: &'static str,
        methods: &MethodCache,
    ) -> Option<Call> {
        // No recorder: nothing would be recorded (and handles made now would stay no-ops).
        HANDLE.get()?;
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !is_grpc {
            return None;
        }
        let path = req.uri().path().trim_start_matches('/');
        path.split_once('/')?;
        let metrics = methods.get(component, path);
        metrics.started.increment(1);
        Some(Call {
            metrics,
            start: Instant::now(),
        })
    }

    fn done(self, code: usize) {
        let elapsed = self.start.elapsed().as_secs_f64();
        self.metrics.handled(code).increment(1);
        self.metrics.handling.record(elapsed);
    }
}

/// The name Prometheus' gRPC metrics give a `grpc-status` value.
pub fn code_name(status: &str) -> &'static str {
    CODE_NAMES[code_index(status)]
}

/// The `grpc-status` value `status` (`Unknown` if it is none).
fn code_index(status: &str) -> usize {
    match status.trim().parse::<usize>() {
        Ok(i) if i < CODE_NAMES.len() => i,
        _ => UNKNOWN,
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<usize> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(code_index)
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body + Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let call = Call::of(&req, self.component, &self.methods);
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(res) => {
                    let (parts, body) = res.into_parts();
                    let pending = match call {
                        // Trailers-only answers (errors) carry the status in the headers.
                        Some(call) => match status_of(&parts.headers) {
                            Some(code) => {
                                call.done(code);
                                None
                            }
                            None => Some(call),
                        },
                        None => None,
                    };
                    Ok(http::Response::from_parts(
                        parts,
                        MeteredBody {
                            inner: body,
                            call: pending,
                        },
                    ))
                }
                Err(e) => {
                    if let Some(call) = call {
                        call.done(UNAVAILABLE);
                    }
                    Err(e)
                }
            }
        })
    }
}

/// A response body that records its call when the trailers (with `grpc-status`) pass, or as
/// `Canceled` when it is dropped before they do (the client went away).
pub struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.done(CANCELED);
        }
    }
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    call.done(status_of(trailers).unwrap_or(UNKNOWN));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.done(INTERNAL);
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    // a body that ended without trailers: a gRPC answer without a status
                    call.done(UNKNOWN);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::grpc_type;

    #[test]
    fn the_type_of_a_call_comes_from_its_method() {
        assert_eq!(grpc_type("kapal.v1.CatalogService", "ListApps"), "unary");
        assert_eq!(
            grpc_type("kapal.v1.InstanceService", "WatchInstance"),
            "server_stream"
        );
        assert_eq!(grpc_type("grpc.health.v1.Health", "Watch"), "server_stream");
        assert_eq!(
            grpc_type(
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo"
            ),
            "bidi_stream"
        );
        // what the gateway refuses still gets a label
        assert_eq!(grpc_type("no.Such", "Method"), "unary");
    }
}
