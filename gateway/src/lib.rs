//! Kapal's gateway: the only public door.
//!
//! One port serves native gRPC (HTTP/2) and grpc-web (browsers, HTTP/1.1 and HTTP/2) for Kapal's
//! public API, `kapal.v1.*`. `SubscriptionService` calls go to billing, every other public service
//! to the control-plane; anything else (`kapal.internal.*` included) is UNIMPLEMENTED. The proxy
//! works at the HTTP level from the public descriptors, so a new public method needs no change
//! here. On the way the gateway answers CORS preflights, authenticates bearer tokens and signs the
//! caller into the forwarded call ([`identity`]), limits callers' rates, request sizes and
//! deadlines, and serves its own `grpc.health.v1` and reflection (public API only).
//!
//! Browsers' page requests (GET and HEAD that are not gRPC) get the web console's files from
//! [`Config::console_dir`] on the same port ([`console`]), so the console calls the API from its
//! own origin and needs no CORS.
//!
//! With [`Config::tls`] it speaks TLS (rustls; HTTP/2 by ALPN, as browsers do); otherwise plain
//! HTTP/1.1 and h2c, for running behind a TLS-terminating proxy or on localhost.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::{HeaderName, HeaderValue, Method};
use kapal::auth::InternalKey;
use kapal::config::Problem;
use kapal::proto::internal::v1::identity_service_client::IdentityServiceClient;
use kapal::serve::Upstream;
use tokio::net::TcpListener;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{
    DefaultMakeSpan, DefaultOnFailure, DefaultOnRequest, DefaultOnResponse, TraceLayer,
};
use tracing::Level;

mod console;
mod deadline;
pub mod error;
mod identity;
mod middleware;
mod proxy;
mod rate_limit;
mod routes;
mod size_limit;

pub use error::Error;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the gateway listens unless told otherwise.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:8080";

/// Request headers browsers may send (CORS).
const CORS_ALLOW_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
];
/// Response headers page scripts may read (CORS): a gRPC call's outcome.
const CORS_EXPOSE_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
/// How long browsers may cache a preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(2 * 60 * 60);

/// A certificate chain and its private key, both PEM files.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Everything the gateway needs; [`Config::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// The control-plane (its gRPC endpoint, `http://host:port`, or its routes in this
    /// process; the stack builder `kapal-stack` chooses): most public services and the internal
    /// identity service.
    pub control_plane: Upstream,
    /// Billing: `SubscriptionService`, `BillingAdminService`.
    pub billing: Upstream,
    /// The deployment's internal key: signs callers for the upstreams and the gateway's own
    /// calls to the identity service.
    pub key: InternalKey,
    /// Serve TLS with this certificate; plain HTTP/1.1 and h2c when `None` (default).
    pub tls: Option<TlsConfig>,
    /// Other origins (`https://partner.example.com`) whose pages may call the API; empty
    /// (default) allows none: the console is served by the gateway itself, from the API's own
    /// origin, which needs no CORS. `*` allows any origin (tokens travel in the `authorization`
    /// header, never in cookies, so this lends no page a visitor's session).
    pub cors_allowed_origins: Vec<String>,
    /// The built web console (`console/dist`, with `index.html` at its top): served to browsers
    /// on this port. `None` (default): page requests get a plain 404.
    pub console_dir: Option<PathBuf>,
    /// Calls per second per caller (account, or client address when anonymous); 0 turns rate
    /// limits off. Default [`DEFAULT_RATE_LIMIT_PER_SECOND`].
    pub rate_limit_per_second: u32,
    /// Calls a caller may make at once before the rate applies (at least 1 when limits are
    /// on). Default [`DEFAULT_RATE_LIMIT_BURST`].
    pub rate_limit_burst: u32,
    /// Largest request message accepted. Default 64 KiB. Responses are not limited.
    pub max_message_bytes: usize,
    /// Deadline of unary calls whose client set none. Default 15 s. Streaming calls get none.
    pub default_deadline: Duration,
    /// Longest deadline a unary call may have; longer client deadlines are cut to it.
    /// Default 60 s.
    pub max_deadline: Duration,
    /// How long a token's identity is cached; a token revoked elsewhere than through this
    /// gateway's LogOut / RevokeApiToken keeps working at most this long. Default 10 s; zero
    /// disables the cache.
    pub auth_cache_ttl: Duration,
    /// How long the gateway waits for the control-plane to authenticate a token before the
    /// call ends with DEADLINE_EXCEEDED. Default 10 s.
    pub internal_deadline: Duration,
    /// Proxies (e.g. the cluster's ingress controller) whose `x-forwarded-for` is believed for
    /// the client address of anonymous rate limits: when the TCP peer is one of them, the
    /// client is the right-most address in `x-forwarded-for` that is not one of them (what a
    /// client writes into the header itself stays to the left and is ignored). Default none:
    /// the TCP peer's address, and the header is ignored.
    pub trusted_proxies: Vec<kapal::cidr::Cidr>,
}

/// Calls per second per caller unless configured otherwise (`kapal server --rate-limit`; 0:
/// off).
pub const DEFAULT_RATE_LIMIT_PER_SECOND: u32 = 50;
/// Calls a caller may make at once unless configured otherwise (`kapal server --rate-burst`).
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 100;

impl Config {
    /// A configuration with the defaults for everything but the upstreams and the key.
    pub fn new(
        control_plane: impl Into<Upstream>,
        billing: impl Into<Upstream>,
        key: InternalKey,
    ) -> Config {
        Config {
            control_plane: control_plane.into(),
            billing: billing.into(),
            key,
            tls: None,
            cors_allowed_origins: Vec::new(),
            console_dir: None,
            rate_limit_per_second: DEFAULT_RATE_LIMIT_PER_SECOND,
            rate_limit_burst: DEFAULT_RATE_LIMIT_BURST,
            max_message_bytes: 64 * 1024,
            default_deadline: Duration::from_secs(15),
            max_deadline: Duration::from_secs(60),
            auth_cache_ttl: Duration::from_secs(10),
            internal_deadline: kapal::serve::DEFAULT_INTERNAL_DEADLINE,
            trusted_proxies: Vec::new(),
        }
    }

    /// Every invalid setting, named, with what was expected.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            problems.push(Problem::new(
                "rate_limit_burst",
                "must be at least 1 when rate limits are on (rate_limit_per_second > 0; 0 turns them off)",
            ));
        }
        if self.max_message_bytes == 0 {
            problems.push(Problem::new("max_message_bytes", "must be at least 1"));
        }
        if self.max_deadline.is_zero() {
            problems.push(Problem::new("max_deadline", "must be longer than zero"));
        }
        if self.default_deadline.is_zero() {
            problems.push(Problem::new("default_deadline", "must be longer than zero"));
        }
        if self.internal_deadline.is_zero() {
            problems.push(Problem::new(
                "internal_deadline",
                "must be longer than zero",
            ));
        }
        if self.default_deadline > self.max_deadline {
            problems.push(Problem::new(
                "default_deadline",
                format!(
                    "{:?} must not be longer than max_deadline ({:?})",
                    self.default_deadline, self.max_deadline
                ),
            ));
        }
        if let Err(e) = allowed_origins(&self.cors_allowed_origins) {
            problems.push(Problem::new("cors_allowed_origins", format!("{e:#}")));
        }
        if let Some(dir) = &self.console_dir
            && !dir.join("index.html").is_file()
        {
            problems.push(Problem::new(
                "console_dir",
                format!(
                    "{} has no index.html (build the console: npm ci && npm run build in console/)",
                    dir.display()
                ),
            ));
        }
        if let Some(tls) = &self.tls {
            for (setting, path) in [
                ("tls.cert_path", &tls.cert_path),
                ("tls.key_path", &tls.key_path),
            ] {
                if !path.is_file() {
                    problems.push(Problem::new(
                        setting,
                        format!("{} is not a file", path.display()),
                    ));
                }
            }
        }
        problems
    }
}

/// The configured origins (none when empty), or `None` for any origin (`*`).
fn allowed_origins(origins: &[String]) -> anyhow::Result<Option<Vec<HeaderValue>>> {
    if origins.iter().any(|o| o == "*") {
        return Ok(None);
    }
    let mut values = Vec::new();
    for origin in origins {
        let uri: http::Uri = origin.parse().with_context(|| {
            format!(
                "cors_allowed_origins: {origin:?} is not an origin like https://console.example.com"
            )
        })?;
        let bare = match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}") == *origin,
            _ => false,
        };
        anyhow::ensure!(
            bare,
            "cors_allowed_origins: {origin:?} must be scheme://host[:port] with no path or trailing slash"
        );
        values.push(HeaderValue::from_str(origin).with_context(|| {
            format!("cors_allowed_origins: {origin:?} is not a valid header value")
        })?);
    }
    Ok(Some(values))
}

fn cors_layer(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let allow_origin = match allowed_origins(origins)? {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list),
    };
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST])
        .allow_headers(CORS_ALLOW_HEADERS.map(HeaderName::from_static))
        .expose_headers(CORS_EXPOSE_HEADERS.map(HeaderName::from_static))
        .max_age(CORS_MAX_AGE))
}

fn tls_config(tls: &TlsConfig) -> anyhow::Result<ServerTlsConfig> {
    let cert = std::fs::read(&tls.cert_path).with_context(|| {
        format!(
            "reading the TLS certificate from {}",
            tls.cert_path.display()
        )
    })?;
    let key = std::fs::read(&tls.key_path)
        .with_context(|| format!("reading the TLS key from {}", tls.key_path.display()))?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}

/// Serves the gateway on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    build(config).await?.serve(listener, shutdown).await
}

/// Builds the gateway: its own routes (health, reflection, the proxy to its upstreams) and the
/// server that serves them behind its layers (TLS, grpc-web, CORS, rate limits, identities,
/// deadlines, size limits). It has no background work.
pub async fn build(config: Config) -> anyhow::Result<kapal::serve::Built> {
    kapal::serve::install_crypto_provider();
    kapal::config::check("gateway", config.validate())?;

    let table = routes::RouteTable::new(kapal::proto::PUBLIC_DESCRIPTOR_SET)?;
    let identity_channel = config
        .control_plane
        .internal_channel_with_deadline(&config.key, config.internal_deadline)
        .context("control_plane")?;
    let authenticator = identity::Authenticator::new(
        IdentityServiceClient::new(identity_channel),
        config.auth_cache_ttl,
        kapal::clock::system(),
    );
    let proxy = proxy::Proxy::new(
        proxy::Upstream::new(routes::Target::ControlPlane.name(), &config.control_plane)?,
        proxy::Upstream::new(routes::Target::Billing.name(), &config.billing)?,
    );

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let health = health.max_decoding_message_size(config.max_message_bytes);
    let reflection = kapal::serve::reflection(kapal::proto::PUBLIC_DESCRIPTOR_SET)?
        .max_decoding_message_size(config.max_message_bytes);
    // The gateway's own services have their routes; every other path falls to the proxy.
    let services = tonic::service::Routes::from(axum::Router::new().fallback_service(proxy))
        .add_service(health)
        .add_service(reflection);
    let own_routes = services.clone();

    let limiter = (config.rate_limit_per_second > 0).then(|| {
        Arc::new(rate_limit::Limiter::new(
            config.rate_limit_per_second,
            config.rate_limit_burst,
        ))
    });
    let stack = ServiceBuilder::new()
        // Page requests (GET/HEAD that are not gRPC) go to the console's files, before anything
        // else: none of the gRPC concerns below apply to them.
        .layer(console::ConsoleLayer::new(config.console_dir.as_deref()))
        // Access log, outermost: failed calls at WARN, every call with its outcome at DEBUG,
        // including those the layers below turn away. Headers are not logged: they carry
        // bearer tokens.
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_request(DefaultOnRequest::new().level(Level::DEBUG))
                // A line per answered call only with RUST_LOG=tower_http=debug: at INFO the read
                // benchmark wrote ~2,000 lines a second.
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(Level::WARN)),
        )
        // CORS, before grpc-web: browsers' preflights (OPTIONS) are not grpc-web and would be
        // refused by it, so they are answered here. Every response gets the CORS headers, the
        // gateway's own errors included, so page scripts can read their grpc-status.
        .layer(cors_layer(&config.cors_allowed_origins)?)
        // grpc-web <-> gRPC: below this point every call is plain gRPC whatever the client
        // spoke, and every answer from below (gateway errors too) goes back in its dialect.
        .layer(tonic_web::GrpcWebLayer::new())
        // gRPC server metrics (grpc_server_*), of every call as gRPC, the gateway's own
        // refusals below included.
        .layer(kapal::metrics::GrpcMetricsLayer::new("gateway"))
        // One trace per public call: this call's span, a new trace whatever `traceparent` the
        // caller sent (dropped here; kept as a link), its context written into the call the
        // proxy forwards, so the services' spans are its children (kapal::telemetry).
        .layer(kapal::telemetry::TraceLayer::public("gateway"))
        // Forged identities out, first thing after translation: nothing below, and no upstream,
        // sees an identity the gateway did not sign itself.
        .layer(middleware::MiddlewareLayer(identity::StripIdentity))
        // The client's address for the services (sessions show it), replacing any the client
        // claimed itself.
        .layer(middleware::MiddlewareLayer(rate_limit::ClientAddress {
            trusted_proxies: config.trusted_proxies.clone().into(),
        }))
        // Routing: unknown and internal methods are turned away before they cost anything (no
        // rate-limit token, no token check, no body read). The layers below read its Route.
        .layer(middleware::MiddlewareLayer(routes::Routing(table)))
        // Rate limits, before authentication: a flood of made-up tokens is limited per client
        // address and never reaches the identity service faster than the limit.
        .layer(middleware::MiddlewareLayer(rate_limit::RateLimit {
            limiter,
            authenticator: authenticator.clone(),
            trusted_proxies: config.trusted_proxies.clone().into(),
        }))
        // Deadlines, before anything that takes time: the token check, reading the body and the
        // upstream call all count against the call's deadline.
        .layer(middleware::MiddlewareLayer(deadline::Deadlines {
            default: config.default_deadline,
            max: config.max_deadline,
        }))
        // Authentication, before the body is read: an anonymous caller of a private method
        // cannot make the gateway buffer anything. Signs the caller into the forwarded call.
        .layer(middleware::MiddlewareLayer(identity::Authenticate {
            authenticator,
            key: config.key.clone(),
        }))
        // Size limit, last: reads the one request message (up to the limit) just before the
        // call goes to its service.
        .layer(middleware::MiddlewareLayer(size_limit::SizeLimit {
            max_message_bytes: config.max_message_bytes,
        }))
        .into_inner();

    let mut server = Server::builder();
    if let Some(tls) = &config.tls {
        server = server
            .tls_config(tls_config(tls)?)
            .context("the TLS certificate or key is not valid PEM of a matching pair")?;
    }
    let router = server
        .accept_http1(true)
        // Watches stay open through idle minutes: keep their connections known to be alive.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(stack)
        .add_routes(services);

    let tls = config.tls.is_some();
    let (control_plane, billing) = (config.control_plane.clone(), config.billing.clone());
    let serve: kapal::serve::ServeFn = Box::new(move |listener, shutdown| {
        Box::pin(async move {
            tracing::info!(
                addr = ?listener.local_addr().ok(),
                tls,
                %control_plane,
                %billing,
                "gateway listening"
            );
            router
                .serve_with_incoming_shutdown(kapal::serve::incoming(listener), shutdown)
                .await
                .context("the gateway server failed")
        })
    });
    Ok(
        kapal::serve::Built::new("gateway", own_routes, kapal::serve::Background::new())
            .with_server(serve),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            InternalKey::random(),
        )
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(config().validate(), Vec::new());
    }

    #[test]
    fn a_rate_limit_of_zero_is_off_and_valid() {
        let mut c = config();
        c.rate_limit_per_second = 0;
        c.rate_limit_burst = 0;
        assert_eq!(c.validate(), Vec::new());
    }

    #[test]
    fn every_bad_setting_is_named() {
        let mut c = config();
        c.rate_limit_burst = 0;
        c.max_message_bytes = 0;
        c.default_deadline = Duration::from_secs(120);
        c.cors_allowed_origins = vec!["https://console.example.com/".into()];
        let named: Vec<&str> = c.validate().iter().map(|p| p.setting).collect();
        for setting in [
            "rate_limit_burst",
            "max_message_bytes",
            "default_deadline",
            "cors_allowed_origins",
        ] {
            assert!(named.contains(&setting), "{setting} in {named:?}");
        }
    }

    #[test]
    fn a_console_dir_needs_an_index() {
        let mut c = config();
        c.console_dir = Some(PathBuf::from("/nonexistent/console/dist"));
        let named: Vec<&str> = c.validate().iter().map(|p| p.setting).collect();
        assert_eq!(named, ["console_dir"]);
    }

    #[test]
    fn origins_are_checked() {
        // None by default: the console is served from the API's own origin.
        assert!(allowed_origins(&[]).is_ok_and(|o| o.is_some_and(|l| l.is_empty())));
        assert!(allowed_origins(&["*".into()]).is_ok_and(|o| o.is_none()));
        assert!(
            allowed_origins(&[
                "https://console.example.com".into(),
                "http://localhost:5173".into()
            ])
            .is_ok_and(|o| o.is_some_and(|l| l.len() == 2))
        );
        assert!(allowed_origins(&["console.example.com".into()]).is_err());
        assert!(allowed_origins(&["https://console.example.com/app".into()]).is_err());
    }
}
