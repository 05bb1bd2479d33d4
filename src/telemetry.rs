//! Traces: one trace per public call, across the gateway and the services behind it.
//!
//! - **Spans.** Every gRPC call a service (or the gateway) answers gets one server span, made by
//!   [`TraceLayer`] (applied where the gRPC metrics are, [`crate::metrics::instrument`] and the
//!   gateway's stack), named `package.Service/Method`, with `rpc.*` attributes, the answering
//!   service (`kapal.service`), the gRPC status, and the instance, order and subscription ids
//!   where the handler knows them ([`record_instance`], [`record_order`],
//!   [`record_subscription`]). A span ends when the call's response starts: the whole of a
//!   unary call, the opening of a stream (WatchInstance's later events are not in it).
//! - **Propagation.** W3C trace context (`traceparent`, `tracestate`) in gRPC metadata: every
//!   call one Kapal service makes to another carries the caller's current span
//!   ([`inject_current`], called by [`crate::auth::SignAsService`], the one interceptor of every
//!   internal channel), and every service's [`TraceLayer`] continues it. The gateway writes its
//!   own span's context into the call it forwards.
//! - **A public caller's `traceparent` is not continued.** The gateway starts a new trace for
//!   every public call and drops the caller's `traceparent` and `tracestate` (always, tracing on
//!   or off, so the services behind never see them). Continuing it would let anyone on the
//!   internet pick the trace ids of Kapal's spans (joining their calls to another caller's trace
//!   whose id they learned, or colliding with it), decide the sampling of each call, and send up
//!   to 512 bytes of `tracestate` to every internal hop. A well-formed caller's context is kept
//!   as a span *link* on the gateway's span: a client that traces its own calls can still find
//!   Kapal's trace from its own, and nothing of it becomes Kapal's parent.
//! - **Export** over OTLP/gRPC, only when an endpoint is configured (`kapal server
//!   --otlp-endpoint`, [`init`]). Without one no OpenTelemetry layer is installed and the layers
//!   here pass calls through after one atomic load: the spans they create are disabled
//!   `tracing` spans, which cost what any disabled span costs. OpenTelemetry's own
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` does not turn export on.
//!
//! The tracer provider, like the `tracing` subscriber, is process-wide: [`init`] sets both up
//! once per process (the first call wins); `kapal server` calls it at start and [`shutdown`] at
//! the end, which exports what is still buffered.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The `tracing` target of the spans that are exported (the gRPC server spans); nothing else
/// (log events, other libraries' spans) goes to the OTLP endpoint.
pub const TARGET: &str = "kapal::trace";
/// The W3C trace context headers.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Whether spans are exported (an OTLP endpoint was configured and the layer installed).
static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// The exporter's own runtime: its channel and batches live as long as the process, whatever
/// runtime (a test's) called [`init`].
static EXPORT_RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// How the process logs and traces.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Log lines as JSON.
    pub json: bool,
    /// The log filter when `RUST_LOG` is unset (`info`; tests use `warn`).
    pub default_filter: String,
    /// Export spans to this OTLP/gRPC endpoint (`http://host:4317`); `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans (`kapal`, or `kapal-<service>` when
    /// `kapal server` runs one service).
    pub service_name: String,
}

impl Settings {
    pub fn new(json: bool, default_filter: &str) -> Settings {
        Settings {
            json,
            default_filter: default_filter.to_string(),
            otlp_endpoint: None,
            service_name: "kapal".to_string(),
        }
    }
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Installs the process' `tracing` subscriber: log lines (`RUST_LOG` filters them, default
/// `settings.default_filter`) and, with an OTLP endpoint, the OpenTelemetry layer that exports
/// the gRPC spans. Once per process: later calls change nothing (a later call that asks for an
/// endpoint the first did not set up is an error, so a test cannot silently trace nothing).
pub fn init(settings: &Settings) -> anyhow::Result<()> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Registry};

    type BoxedLayer = Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>;
    static INSTALLED: OnceLock<Option<String>> = OnceLock::new();
    // Services started at once (tests on both backends) set up one subscriber and one
    // provider between them.
    static SETTING_UP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _setting_up = SETTING_UP.lock().unwrap_or_else(|e| e.into_inner());

    if let Some(installed) = INSTALLED.get() {
        return match (&settings.otlp_endpoint, installed) {
            (Some(wanted), Some(have)) if wanted != have => anyhow::bail!(
                "this process already exports traces to {have}; it cannot also export to {wanted}"
            ),
            (Some(wanted), None) => anyhow::bail!(
                "this process set up its logging without trace export; it cannot export to {wanted} now"
            ),
            _ => Ok(()),
        };
    }

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(&settings.default_filter));
    let fmt = tracing_subscriber::fmt::layer().with_target(true);
    let mut layers: Vec<BoxedLayer> = vec![if settings.json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    }];
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let provider = provider(endpoint, &settings.service_name)?;
            let tracer = provider.tracer("kapal");
            // Only Kapal's gRPC spans, whatever RUST_LOG says about the log lines.
            let only_ours = tracing_subscriber::filter::Targets::new()
                .with_target(TARGET, tracing::Level::INFO);
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(only_ours)
                    .boxed(),
            );
            Some(provider)
        }
        None => None,
    };
    // Another subscriber already installed (a library's test, say): keep it, export nothing.
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    let _ = INSTALLED.set(settings.otlp_endpoint.clone().filter(|_| installed));
    if let Some(provider) = provider {
        if installed {
            let _ = PROVIDER.set(provider);
            ENABLED.store(true, Ordering::Relaxed);
            tracing::info!(
                endpoint = settings.otlp_endpoint.as_deref().unwrap_or_default(),
                "exporting traces over OTLP"
            );
        } else {
            let _ = provider.shutdown();
            anyhow::bail!("a tracing subscriber was installed before; traces cannot be exported");
        }
    }
    Ok(())
}

fn provider(endpoint: &str, service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let uri: http::Uri = endpoint.parse().with_context(|| {
        format!("the OTLP endpoint {endpoint:?} is not a URL like http://127.0.0.1:4317")
    })?;
    anyhow::ensure!(
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some(),
        "the OTLP endpoint {endpoint:?} is not a URL like http://127.0.0.1:4317"
    );
    // (Built once, under init's lock; never dropped.)
    let runtime = match EXPORT_RUNTIME.get() {
        Some(rt) => rt,
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-export")
                .enable_all()
                .build()
                .context("starting the OTLP exporter's runtime")?;
            EXPORT_RUNTIME.get_or_init(|| rt)
        }
    };
    // The exporter's channel is built (and later connects) on its own runtime.
    let _entered = runtime.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .with_context(|| format!("setting up the OTLP exporter to {endpoint}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_string())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Exports every finished span now (tests, before they look at what arrived). Blocks until
/// the export ends: call it from a blocking context (`spawn_blocking`).
pub fn flush() -> anyhow::Result<()> {
    if let Some(p) = PROVIDER.get() {
        p.force_flush().context("exporting traces")?;
    }
    Ok(())
}

/// Exports what is left and stops the exporter (at the end of `kapal server`). Blocks, like
/// [`flush`].
pub fn shutdown() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.shutdown()
    {
        tracing::warn!(error = %e, "the last traces could not be exported");
    }
}

// ---------------------------------------------------------------------------------------------
// ids on the current call's span

/// Records the instance a call is about on its server span (no-op when not traced).
pub fn record_instance(id: impl std::fmt::Display) {
    tracing::Span::current().record("kapal.instance_id", tracing::field::display(id));
}

/// Records the order a call is about on its server span.
pub fn record_order(id: impl std::fmt::Display) {
    tracing::Span::current().record("kapal.order_id", tracing::field::display(id));
}

/// Records the subscription a call is about on its server span.
pub fn record_subscription(id: impl std::fmt::Display) {
    tracing::Span::current().record("kapal.subscription_id", tracing::field::display(id));
}

// ---------------------------------------------------------------------------------------------
// propagation

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Writes the current span's trace context into the metadata of an outgoing call (replacing
/// any there), when traces are exported and there is a current span. Used by the interceptor
/// that signs every call between Kapal's services.
pub fn inject_current(metadata: &mut MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
    }
}

// ---------------------------------------------------------------------------------------------
// server spans

/// Where a [`TraceLayer`] serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The public gateway: callers' trace context is dropped, every call starts a trace.
    Public,
    /// A Kapal service: the caller's trace context (another Kapal service's) is continued.
    Internal,
}

/// One server span per gRPC call (see the module documentation).
#[derive(Clone, Debug)]
pub struct TraceLayer {
    component: &'static str,
    origin: Origin,
}

impl TraceLayer {
    /// The layer of a service (`component`: `control-plane`, `billing`, ...).
    pub fn internal(component: &'static str) -> TraceLayer {
        TraceLayer {
            component,
            origin: Origin::Internal,
        }
    }

    /// The gateway's layer.
    pub fn public(component: &'static str) -> TraceLayer {
        TraceLayer {
            component,
            origin: Origin::Public,
        }
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Traced<S>;
    fn layer(&self, inner: S) -> Traced<S> {
        Traced {
            inner,
            component: self.component,
            origin: self.origin,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
    component: &'static str,
    origin: Origin,
}

fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl<S> Traced<S> {
    /// The span of `req`, its parent set (services) or its caller's context linked (gateway),
    /// and, at the gateway, the span's own context written into the forwarded headers.
    fn span_for<B>(&self, req: &mut http::Request<B>) -> tracing::Span {
        let path = req.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let span = tracing::info_span!(
            target: TARGET,
            parent: None,
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            kapal.service = self.component,
            kapal.instance_id = tracing::field::Empty,
            kapal.order_id = tracing::field::Empty,
            kapal.subscription_id = tracing::field::Empty,
        );
        let propagator = TraceContextPropagator::new();
        let caller = propagator.extract(&HeaderExtractor(req.headers()));
        match self.origin {
            Origin::Internal => {
                if caller.span().span_context().is_valid() {
                    let _ = span.set_parent(caller);
                }
            }
            Origin::Public => {
                let caller = caller.span().span_context().clone();
                if caller.is_valid() {
                    span.add_link(caller);
                }
                strip_trace_context(req.headers_mut());
                propagator.inject_context(&span.context(), &mut HeaderInjector(req.headers_mut()));
            }
        }
        span
    }
}

/// Drops a caller's W3C trace context (every value of each header).
pub fn strip_trace_context(headers: &mut http::HeaderMap) {
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Traced<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        if !enabled() || !is_grpc(&req) {
            if self.origin == Origin::Public {
                // Not continued, traced or not: the services behind never see a caller's.
                strip_trace_context(req.headers_mut());
            }
            return Box::pin(self.inner.call(req));
        }
        let span = self.span_for(&mut req);
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let res = fut.await;
                if let Ok(res) = &res {
                    // Errors come trailers-only, their status in the headers; an answer whose
                    // status is in its trailers is OK or failed mid-stream.
                    let span = tracing::Span::current();
                    match res
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                    {
                        Some(code) => {
                            span.record("rpc.grpc.status_code", code);
                            if code != "0" {
                                span.record("otel.status_code", "error");
                            }
                        }
                        None => {
                            span.record("rpc.grpc.status_code", "0");
                        }
                    }
                }
                res
            }
            .instrument(span),
        )
    }
}

/// A future that runs in the current span (a task a handler spawns, so its calls join the
/// handler's trace). Costs nothing beyond `tracing`'s own when traces are off.
pub fn in_current_span<F: Future>(fut: F) -> tracing::instrument::Instrumented<F> {
    fut.in_current_span()
}
