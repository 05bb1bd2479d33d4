//! Traces: one trace per public call, across the gateway and the services behind it.
//!
//! - **Spans.** Every gRPC call a service (or the gateway) answers gets one server span, made by
//!   [`TraceLayer`] (applied where the gRPC metrics are, [`crate::metrics::instrument`] and the
//!   gateway's stack), named `package.Service/Method`, with `rpc.*` attributes, the answering
//!   service (`kapal.service`), the gRPC status, and the instance, order and subscription ids
//!   where the handler knows them ([`record_instance`], [`record_order`],
//!   [`record_subscription`]). A span ends when the call's response body ends: the whole of a
//!   unary call, and the whole of a stream (WatchInstance's span lasts until its last event
//!   and the stream's close, or until the caller goes away).
//! - **Sampling** is decided once per trace, where it starts (the gateway, or a service called
//!   without a trace context), by [`Sampler`]: `OTEL_TRACES_SAMPLER` and
//!   `OTEL_TRACES_SAMPLER_ARG` as OpenTelemetry defines them, by default
//!   `parentbased_traceidratio` at [`DEFAULT_RATIO`]. A call that is not sampled makes no span
//!   at all (no `tracing` span, no OpenTelemetry span data): it only carries a `traceparent`
//!   whose sampled flag is off, so the services behind it do not sample their part either.
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
//! - **Export** over OTLP/gRPC in batches (the SDK's batch processor; `OTEL_BSP_*` tune it),
//!   only when an endpoint is configured (`kapal server --otlp-endpoint`, [`init`]). Without one no OpenTelemetry layer is installed and the layers
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
use opentelemetry::trace::{
    SpanContext, TraceContextExt as _, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator, SdkTracerProvider};
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
/// How traces are sampled (set with [`ENABLED`]).
static SAMPLER: OnceLock<Sampler> = OnceLock::new();
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
    /// How traces are sampled; `None`: from `OTEL_TRACES_SAMPLER` and
    /// `OTEL_TRACES_SAMPLER_ARG`, by default [`Sampler::default`]. (Tests ask for every call.)
    pub sampler: Option<Sampler>,
}

impl Settings {
    pub fn new(json: bool, default_filter: &str) -> Settings {
        Settings {
            json,
            default_filter: default_filter.to_string(),
            otlp_endpoint: None,
            service_name: "kapal".to_string(),
            sampler: None,
        }
    }
}

/// The share of traces sampled by default when traces are exported: one call in ten
/// (`parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.1`).
pub const DEFAULT_RATIO: f64 = 0.1;

/// Which calls are traced, as OpenTelemetry's `OTEL_TRACES_SAMPLER` names them: a trace
/// starts sampled with probability `ratio`, and, when `parent_based`, a call with a parent
/// (another Kapal service's) is sampled exactly when its parent was.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    pub parent_based: bool,
    /// 0.0 to 1.0.
    pub ratio: f64,
}

impl Default for Sampler {
    /// `parentbased_traceidratio` at [`DEFAULT_RATIO`].
    fn default() -> Sampler {
        Sampler {
            parent_based: true,
            ratio: DEFAULT_RATIO,
        }
    }
}

impl Sampler {
    /// Every call (`always_on`).
    pub const ALWAYS_ON: Sampler = Sampler {
        parent_based: false,
        ratio: 1.0,
    };

    /// From `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub fn from_env() -> anyhow::Result<Sampler> {
        let name = std::env::var("OTEL_TRACES_SAMPLER").ok();
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
        Sampler::parse(name.as_deref(), arg.as_deref())
    }

    /// `name` and `arg` as OpenTelemetry's variables: `always_on`, `always_off`,
    /// `traceidratio`, `parentbased_always_on`, `parentbased_always_off`,
    /// `parentbased_traceidratio` (the default, with `arg` or [`DEFAULT_RATIO`]); a ratio
    /// sampler named without `arg` samples everything, as the specification says.
    pub fn parse(name: Option<&str>, arg: Option<&str>) -> anyhow::Result<Sampler> {
        let ratio = |default: f64| -> anyhow::Result<f64> {
            match arg.map(str::trim).filter(|a| !a.is_empty()) {
                None => Ok(default),
                Some(a) => match a.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => anyhow::bail!(
                        "OTEL_TRACES_SAMPLER_ARG={a:?} is not a ratio from 0 to 1 (e.g. 0.1 for one trace in ten)"
                    ),
                },
            }
        };
        let (parent_based, ratio) = match name.map(str::trim).filter(|n| !n.is_empty()) {
            None => (true, ratio(DEFAULT_RATIO)?),
            Some("always_on") => (false, 1.0),
            Some("always_off") => (false, 0.0),
            Some("traceidratio") => (false, ratio(1.0)?),
            Some("parentbased_always_on") => (true, 1.0),
            Some("parentbased_always_off") => (true, 0.0),
            Some("parentbased_traceidratio") => (true, ratio(1.0)?),
            Some(other) => anyhow::bail!(
                "OTEL_TRACES_SAMPLER={other:?} is not supported: use always_on, always_off, \
                 traceidratio, parentbased_always_on, parentbased_always_off or \
                 parentbased_traceidratio (with OTEL_TRACES_SAMPLER_ARG, a ratio from 0 to 1)"
            ),
        };
        Ok(Sampler {
            parent_based,
            ratio,
        })
    }

    /// Whether a call in trace `trace_id` is sampled, given its parent's sampled flag (`None`:
    /// it starts the trace). The ratio is decided on the trace id, as OpenTelemetry's
    /// `TraceIdRatioBased` does, so every root deciding alone decides the same for one trace.
    pub fn sampled(&self, trace_id: opentelemetry::trace::TraceId, parent: Option<bool>) -> bool {
        match parent {
            Some(sampled) if self.parent_based => sampled,
            _ => {
                if self.ratio >= 1.0 {
                    true
                } else if self.ratio <= 0.0 {
                    false
                } else {
                    let low = u128::from_be_bytes(trace_id.to_bytes()) as u64 >> 1;
                    low < (self.ratio * (1u64 << 63) as f64) as u64
                }
            }
        }
    }
}

impl std::fmt::Display for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = if self.parent_based {
            "parentbased_"
        } else {
            ""
        };
        if self.ratio >= 1.0 {
            write!(f, "{prefix}always_on")
        } else if self.ratio <= 0.0 {
            write!(f, "{prefix}always_off")
        } else {
            write!(f, "{prefix}traceidratio {}", self.ratio)
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
    // The log lines do not show the trace spans (their fields would be formatted into a string
    // at every call for the lines' context); the gateway's access-log span gives that context.
    let filter = filter.add_directive(
        format!("{TARGET}=off")
            .parse()
            .context("the trace target's log directive")?,
    );
    let fmt = tracing_subscriber::fmt::layer().with_target(true);
    let mut layers: Vec<BoxedLayer> = vec![if settings.json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    }];
    let sampler = match settings.sampler {
        Some(s) => s,
        None if settings.otlp_endpoint.is_some() => Sampler::from_env()?,
        None => Sampler::default(),
    };
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
                    // The span's own attributes only: no source file and line, thread, target
                    // or busy/idle times (each an attribute of every span, some allocated),
                    // and no OpenTelemetry context attached at every poll (nothing reads it;
                    // propagation asks the span itself, `inject_current`).
                    .with_location(false)
                    .with_threads(false)
                    .with_target(false)
                    .with_tracked_inactivity(false)
                    .with_context_activation(false)
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
            let _ = SAMPLER.set(sampler);
            ENABLED.store(true, Ordering::Relaxed);
            tracing::info!(
                endpoint = settings.otlp_endpoint.as_deref().unwrap_or_default(),
                sampler = %sampler,
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
        // Sampling is decided before a span is made (Traced::call): every span that reaches
        // the SDK is one to record. (Without this the SDK would read OTEL_TRACES_SAMPLER
        // itself and sample a second time.)
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
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

/// Writes the current call's trace context into the metadata of an outgoing call (replacing
/// any there), when traces are exported: the current span's, or, in a call that is not
/// sampled, its unsampled context (so the service called does not sample its part either).
/// Used by the interceptor that signs every call between Kapal's services.
pub fn inject_current(metadata: &mut MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
        return;
    }
    let cx = opentelemetry::Context::current();
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

/// One server span per sampled gRPC call (see the module documentation).
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

/// The context of a new trace `trace_id` that is not sampled, as if received from a caller.
fn unsampled_trace(trace_id: opentelemetry::trace::TraceId) -> opentelemetry::Context {
    let sc = SpanContext::new(
        trace_id,
        RandomIdGenerator::default().new_span_id(),
        TraceFlags::default(),
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(sc)
}

/// What [`Traced`] decided for one call.
enum Decision {
    /// Traced: this span, made with `parent` (an internal caller's context) as its parent.
    Sampled {
        parent: Option<opentelemetry::Context>,
    },
    /// Not traced: no span; this (unsampled) context is the call's, for the calls it makes.
    Unsampled(opentelemetry::Context),
}

impl<S> Traced<S> {
    /// Whether `req` is sampled: at the gateway a new trace (the caller's context dropped and,
    /// when sampled, kept as a link by [`Traced::span_for`]); at a service its caller's
    /// decision (parent-based) or a new one.
    fn decide<B>(&self, req: &mut http::Request<B>, sampler: &Sampler) -> Decision {
        let parent = match self.origin {
            Origin::Public => None,
            Origin::Internal => {
                let caller = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
                let valid = caller.span().span_context().is_valid();
                valid.then_some(caller)
            }
        };
        let (trace_id, parent_sampled) = match &parent {
            Some(cx) => {
                let sc = cx.span().span_context().clone();
                (sc.trace_id(), Some(sc.is_sampled()))
            }
            None => (RandomIdGenerator::default().new_trace_id(), None),
        };
        if sampler.sampled(trace_id, parent_sampled) {
            return Decision::Sampled { parent };
        }
        let cx = match parent {
            Some(cx) => cx,
            None => unsampled_trace(trace_id),
        };
        if self.origin == Origin::Public {
            // The services behind see that this call is not sampled (and do not decide anew).
            strip_trace_context(req.headers_mut());
            TraceContextPropagator::new()
                .inject_context(&cx, &mut HeaderInjector(req.headers_mut()));
        }
        Decision::Unsampled(cx)
    }

    /// The span of a sampled `req`, its parent set (services) or its caller's context linked
    /// (gateway), and, at the gateway, the span's own context written into the forwarded
    /// headers.
    fn span_for<B>(
        &self,
        req: &mut http::Request<B>,
        parent: Option<opentelemetry::Context>,
    ) -> tracing::Span {
        let path = req.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let span = tracing::info_span!(
            target: TARGET,
            parent: None,
            "grpc.server",
            otel.name = path,
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
        match self.origin {
            Origin::Internal => {
                if let Some(parent) = parent {
                    let _ = span.set_parent(parent);
                }
            }
            Origin::Public => {
                let propagator = TraceContextPropagator::new();
                let caller = propagator.extract(&HeaderExtractor(req.headers()));
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

/// Records a `grpc-status` on `span`.
fn record_status(span: &tracing::Span, code: &str) {
    span.record("rpc.grpc.status_code", code);
    if code != "0" {
        span.record("otel.status_code", "error");
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Traced<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let sampler = match SAMPLER.get() {
            Some(s) if enabled() && is_grpc(&req) => s,
            _ => {
                if self.origin == Origin::Public {
                    // Not continued, traced or not: the services behind never see a caller's.
                    strip_trace_context(req.headers_mut());
                }
                let fut = self.inner.call(req);
                return Box::pin(async move { fut.await.map(|res| res.map(TracedBody::untraced)) });
            }
        };
        let parent = match self.decide(&mut req, sampler) {
            Decision::Sampled { parent } => parent,
            Decision::Unsampled(cx) => {
                use opentelemetry::context::FutureExt as _;
                // No span: the call runs in its unsampled context, which the calls it makes to
                // other services carry on (inject_current).
                let fut = {
                    let _attached = cx.clone().attach();
                    self.inner.call(req)
                };
                return Box::pin(
                    async move { fut.await.map(|res| res.map(TracedBody::untraced)) }
                        .with_context(cx),
                );
            }
        };
        let span = self.span_for(&mut req, parent);
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        let in_span = span.clone();
        Box::pin(
            async move {
                let res = match fut.await {
                    Ok(res) => res,
                    Err(e) => return Err(e),
                };
                // Errors come trailers-only, their status in the headers; an answer whose
                // status is in its trailers records it when they pass (TracedBody).
                let status = res
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok());
                if let Some(code) = status {
                    record_status(&span, code);
                }
                let status_pending = status.is_none();
                Ok(res.map(|inner| TracedBody {
                    inner,
                    span: Some(span),
                    status_pending,
                }))
            }
            .instrument(in_span),
        )
    }
}

/// The response body of a traced call: it holds the call's span until the body ends (the
/// trailers of a unary answer, the end of a stream) or is dropped (the caller went away), so
/// the span covers all of it, and records the status the trailers carry.
pub struct TracedBody<B> {
    inner: B,
    span: Option<tracing::Span>,
    /// The status is still to come, in the trailers.
    status_pending: bool,
}

impl<B> TracedBody<B> {
    fn untraced(inner: B) -> TracedBody<B> {
        TracedBody {
            inner,
            span: None,
            status_pending: false,
        }
    }
}

impl<B> Drop for TracedBody<B> {
    fn drop(&mut self) {
        if let Some(span) = self.span.take()
            && self.status_pending
        {
            // Dropped before its status: the caller went away (CANCELLED).
            let _entered = span.enter();
            record_status(&span, "1");
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let Some(span) = &this.span else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        // Polled in the span: its end is the last poll, the one that ends the body.
        let entered = span.enter();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.trailers_ref() {
                Some(trailers) => {
                    if this.status_pending {
                        let code = trailers
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("2");
                        record_status(span, code);
                    }
                    true
                }
                None => false,
            },
            Poll::Ready(Some(Err(_))) => {
                if this.status_pending {
                    record_status(span, "13");
                }
                true
            }
            Poll::Ready(None) => {
                if this.status_pending {
                    // a body that ended without trailers: a gRPC answer without a status
                    record_status(span, "2");
                }
                true
            }
            Poll::Pending => false,
        };
        drop(entered);
        if ended {
            this.status_pending = false;
            this.span = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A future that runs in the current span (a task a handler spawns, so its calls join the
/// handler's trace), or in the current unsampled context of a call that is not traced.
/// Costs nothing beyond `tracing`'s own when traces are off.
pub fn in_current_span<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    use opentelemetry::context::FutureExt as _;
    fut.in_current_span().with_current_context()
}

#[cfg(test)]
mod tests {
    use super::Sampler;
    use opentelemetry::trace::TraceId;

    #[test]
    fn the_sampler_comes_from_opentelemetry_variables() {
        assert_eq!(
            Sampler::parse(None, None).expect("a valid sampler"),
            Sampler::default()
        );
        assert_eq!(
            Sampler::parse(None, Some("0.25")).expect("a valid sampler"),
            Sampler {
                parent_based: true,
                ratio: 0.25
            }
        );
        assert_eq!(
            Sampler::parse(Some("always_on"), None).expect("a valid sampler"),
            Sampler::ALWAYS_ON
        );
        assert_eq!(
            Sampler::parse(Some("parentbased_traceidratio"), None)
                .expect("a valid sampler")
                .ratio,
            1.0
        );
        assert_eq!(
            Sampler::parse(Some("traceidratio"), Some("0.5")).expect("a valid sampler"),
            Sampler {
                parent_based: false,
                ratio: 0.5
            }
        );
        assert!(Sampler::parse(Some("xray"), None).is_err());
        assert!(Sampler::parse(Some("traceidratio"), Some("2")).is_err());
        assert!(Sampler::parse(Some("traceidratio"), Some("a tenth")).is_err());
    }

    #[test]
    fn a_parent_decides_and_a_root_samples_its_share() {
        let s = Sampler::default();
        let id = TraceId::from_bytes([0xff; 16]);
        assert!(s.sampled(id, Some(true)));
        assert!(!s.sampled(TraceId::from_bytes([0; 16]), Some(false)));
        let sampled = (0..10_000u128)
            .filter(|i| {
                let id = TraceId::from_bytes(
                    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).to_be_bytes(),
                );
                s.sampled(id, None)
            })
            .count();
        assert!((700..1300).contains(&sampled), "{sampled} of 10,000");
        assert!(
            !Sampler::parse(Some("always_off"), None)
                .expect("a valid sampler")
                .sampled(id, None)
        );
    }
}
