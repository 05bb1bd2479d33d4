//! The command-line client of Kapal's public API: `kapal login`, `kapal catalog`, `kapal order`,
//! `kapal instances`, and so on.
//!
//! Every command talks gRPC to the gateway (`--endpoint`) with the generated `kapal.v1` clients,
//! sending `authorization: Bearer <token>` from `--token`/`KAPAL_TOKEN` or from the session that
//! `kapal login` saved in the user's config directory. Output is an aligned plain table (or a few
//! `Key: value` lines) by default, or JSON with `--output json`. Times are shown in UTC, RFC 3339.
//!
//! Errors: every failure becomes an `anyhow::Error` whose message a person can act on; a gRPC
//! error reads `<message> (<CODE>)`. `main` prints it as `error: ...` and exits with status 1.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use kapal::proto::v1::account_service_client::AccountServiceClient;
use kapal::proto::v1::admin_service_client::AdminServiceClient;
use kapal::proto::v1::billing_admin_service_client::BillingAdminServiceClient;
use kapal::proto::v1::catalog_service_client::CatalogServiceClient;
use kapal::proto::v1::instance_service_client::InstanceServiceClient;
use kapal::proto::v1::order_service_client::OrderServiceClient;
use kapal::proto::v1::subscription_service_client::SubscriptionServiceClient;
use kapal::proto::v1::{
    Account, ApiToken, App, CancelSubscriptionRequest, ChangePlanRequest, CheckoutRequest,
    CreateApiTokenRequest, GetAppRequest, GetInstanceRequest, GetInstanceUsageRequest,
    GetOrderRequest, Instance, InstanceActionRequest, InstanceEvent, InstanceStatus, InstanceUsage,
    Invoice, ListApiTokensRequest, ListAppsRequest, ListInstancesRequest, ListInvoicesRequest,
    ListOrdersRequest, ListSubscriptionEventsRequest, ListSubscriptionsRequest, LogInRequest,
    LogOutRequest, Money, Order, OrderStatus, Plan, RevokeApiTokenRequest, SessionResponse,
    SetAutoRenewRequest, SignUpRequest, Subscription, SubscriptionEvent, SubscriptionStatus,
    WatchInstanceRequest, WhoAmIRequest,
};

mod admin;

/// The gateway used when neither `--endpoint`/`KAPAL_ENDPOINT` nor a saved session names one.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";
/// The file, in the config directory, holding the session saved by `kapal login`.
const SESSION_FILE: &str = "session.json";
/// Deadline of one call (until the response starts, for streams).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a pending order is polled.
const ORDER_POLL: Duration = Duration::from_secs(2);
/// Consecutive failed attempts to (re)open a watch before giving up.
const MAX_WATCH_RETRIES: u32 = 8;
/// Attempts of a checkout that failed with a transient error (safe: the idempotency key is reused).
const CHECKOUT_ATTEMPTS: u32 = 3;
const NOT_LOGGED_IN: &str = "not logged in: run `kapal login` or set KAPAL_TOKEN";

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

// Options every client command takes (no doc comment: clap would use it as the commands' about).
#[derive(Args, Clone, Default)]
pub struct Global {
    /// The Kapal gateway, e.g. https://api.kapal.example [default: the endpoint of the saved
    /// session, else http://127.0.0.1:8080]
    #[arg(long, env = "KAPAL_ENDPOINT", value_name = "URL")]
    endpoint: Option<String>,
    /// A session or API token to call with, instead of the session saved by `kapal login`.
    #[arg(
        long,
        env = "KAPAL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Trust this CA certificate (PEM file) instead of the system's roots, for an https:// endpoint
    /// whose certificate comes from a private CA.
    #[arg(long, env = "KAPAL_CA_CERT", value_name = "PATH")]
    ca_cert: Option<PathBuf>,
    /// How to print results.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// How results are printed.
#[derive(ValueEnum, Clone, Copy, Default, PartialEq, Eq, Debug)]
pub enum Output {
    /// Aligned plain-text tables, for people.
    #[default]
    Table,
    /// JSON, for scripts.
    Json,
}

#[derive(Args, Clone, Default)]
pub struct PasswordArg {
    /// The password. Without it: KAPAL_PASSWORD, else a prompt on a terminal, else one line read
    /// from standard input. (Prefer those: arguments are visible to other local users.)
    #[arg(
        long,
        env = "KAPAL_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    password: Option<String>,
}

/// Kapal's client commands; `main` flattens them into the top-level commands of `kapal`.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create a Kapal account, log in and save the session.
    Signup(SignupArgs),
    /// Log in and save the session in your config directory.
    Login(LoginArgs),
    /// End the session and forget the saved token.
    Logout(Global),
    /// Show the account you are logged in as.
    Whoami(Global),
    /// List the apps you can order, with their plans, prices and resources.
    Catalog(Global),
    /// Show one app of the catalog with its plans.
    App(AppArgs),
    /// Order an app on a plan; with --wait, follow it until the instance is ready.
    Order(OrderArgs),
    /// List your orders, newest first.
    Orders(Global),
    /// List your instances, newest first.
    Instances(Global),
    /// Show one instance with its URL and credentials.
    Instance(InstanceArg),
    /// Follow an instance's status changes until it is deleted (Ctrl-C to stop).
    Watch(InstanceArg),
    /// Stop an instance (scale it to zero); its data is kept.
    Stop(InstanceArg),
    /// Start a stopped instance again.
    Start(InstanceArg),
    /// Restart an instance's workloads.
    Restart(InstanceArg),
    /// Delete an instance: its workloads now, its data after the retention period.
    Delete(DeleteArgs),
    /// List your subscriptions, newest first.
    Subscriptions(Global),
    /// List your invoices, newest first.
    Invoices(InvoicesArgs),
    /// Cancel a subscription at the end of its current period.
    Cancel(SubscriptionArg),
    /// Turn automatic renewal of a subscription on or off.
    AutoRenew(AutoRenewArgs),
    /// Show what an instance uses now: CPU and memory against its plan's limits, and storage.
    Usage(InstanceArg),
    /// Change a subscription's plan from its next renewal on (a trial: converts it to paid).
    ChangePlan(ChangePlanArgs),
    /// List every status change of a subscription, oldest first, with time and cause.
    Events(SubscriptionArg),
    /// Operators' commands (need an admin account): all instances and subscriptions,
    /// capacity, alerts, the audit log and revenue.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Create, list and revoke API tokens for scripts and integrations.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Args)]
pub struct SignupArgs {
    /// Your email address; you log in with it.
    #[arg(long)]
    email: String,
    #[command(flatten)]
    password: PasswordArg,
    /// The name shown in the dashboard [default: the email's local part]
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    global: Global,
}

#[derive(Args)]
pub struct LoginArgs {
    /// The email address of your account.
    #[arg(long)]
    email: String,
    #[command(flatten)]
    password: PasswordArg,
    #[command(flatten)]
    global: Global,
}

#[derive(Args)]
pub struct AppArgs {
    /// The app's id, e.g. n8n (see `kapal catalog`).
    app: String,
    #[command(flatten)]
    global: Global,
}

#[derive(Args)]
pub struct OrderArgs {
    /// The app to order, e.g. n8n (see `kapal catalog`).
    app: String,
    /// The plan, e.g. trial.
    #[arg(long)]
    plan: String,
    /// Makes retrying safe: the same key never places a second order [default: a new UUID, printed
    /// so that you can retry with it]
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Follow the order and the instance until it is ready, then print its URL and credentials.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (e.g. 90s, 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,
    #[command(flatten)]
    global: Global,
}

#[derive(Args)]
pub struct InstanceArg {
    /// The instance's id (see `kapal instances`).
    id: String,
    #[command(flatten)]
    global: Global,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// The instance's id (see `kapal instances`).
    id: String,
    /// Do not ask for confirmation (only asked on a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    #[command(flatten)]
    global: Global,
}

#[derive(Args)]
pub struct InvoicesArgs {
    /// Only the invoices of this subscription.
    #[arg(long, value_name = "ID")]
    subscription: Option<String>,
    #[command(flatten)]
    global: Global,
}

#[derive(Args)]
pub struct SubscriptionArg {
    /// The subscription's id (see `kapal subscriptions`).
    id: String,
    #[command(flatten)]
    global: Global,
}

#[derive(Args)]
pub struct AutoRenewArgs {
    /// The subscription's id (see `kapal subscriptions`).
    id: String,
    /// Whether the subscription renews automatically at the end of each period.
    #[arg(value_enum)]
    state: OnOff,
    #[command(flatten)]
    global: Global,
}

#[derive(Args)]
pub struct ChangePlanArgs {
    /// The subscription's id (see `kapal subscriptions`).
    id: String,
    /// The paid plan of the same app to move to, e.g. starter (see `kapal app <app>`); the
    /// current plan withdraws a pending change.
    #[arg(long)]
    plan: String,
    #[command(flatten)]
    global: Global,
}

/// A switch given as `on` or `off`.
#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token; it is printed once, store it right away.
    Create(TokenCreateArgs),
    /// List your API tokens (never their secret).
    List(Global),
    /// Revoke an API token; calls made with it fail from then on.
    Revoke(TokenRevokeArgs),
}

#[derive(Args)]
pub struct TokenCreateArgs {
    /// A name to recognise the token by (1-64 characters).
    name: String,
    /// Lifetime in days (at most 3650) [default: 365]
    #[arg(long, value_name = "DAYS")]
    ttl_days: Option<u32>,
    #[command(flatten)]
    global: Global,
}

#[derive(Args)]
pub struct TokenRevokeArgs {
    /// The token's id (see `kapal token list`).
    id: String,
    #[command(flatten)]
    global: Global,
}

/// Parses `90`, `90s`, `10m`, `1h`, `1h30m`: whole numbers of hours, minutes and seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration: write e.g. 90s, 10m, 1h or 1h30m");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A duration the way [`parse_duration`] reads it, e.g. `1h30m`, `10m`, `45s`.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------------

/// Runs one client command.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Signup(a) => signup(a).await,
        ClientCommand::Login(a) => login(a).await,
        ClientCommand::Logout(g) => logout(g).await,
        ClientCommand::Whoami(g) => whoami(g).await,
        ClientCommand::Catalog(g) => catalog(g).await,
        ClientCommand::App(a) => app(a).await,
        ClientCommand::Order(a) => order(a).await,
        ClientCommand::Orders(g) => orders(g).await,
        ClientCommand::Instances(g) => instances(g).await,
        ClientCommand::Instance(a) => instance(a).await,
        ClientCommand::Watch(a) => watch(a).await,
        ClientCommand::Stop(a) => instance_action(a, Action::Stop).await,
        ClientCommand::Start(a) => instance_action(a, Action::Start).await,
        ClientCommand::Restart(a) => instance_action(a, Action::Restart).await,
        ClientCommand::Delete(a) => delete(a).await,
        ClientCommand::Subscriptions(g) => subscriptions(g).await,
        ClientCommand::Invoices(a) => invoices(a).await,
        ClientCommand::Cancel(a) => cancel(a).await,
        ClientCommand::AutoRenew(a) => auto_renew(a).await,
        ClientCommand::Usage(a) => usage(a).await,
        ClientCommand::ChangePlan(a) => change_plan(a).await,
        ClientCommand::Events(a) => events(a).await,
        ClientCommand::Admin(cmd) => admin::run(cmd).await,
        ClientCommand::Token(TokenCommand::Create(a)) => token_create(a).await,
        ClientCommand::Token(TokenCommand::List(g)) => token_list(g).await,
        ClientCommand::Token(TokenCommand::Revoke(a)) => token_revoke(a).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Connection, authentication and errors
// ---------------------------------------------------------------------------------------------

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Bearer>;

/// What a command needs to call the gateway: where, with which token, and how to print.
struct Ctx {
    endpoint: String,
    channel: Channel,
    /// The token to call with, or why there is none (a message for the user).
    token: Result<String, String>,
    output: Output,
    store: SessionStore,
}

impl Ctx {
    fn new(g: &Global) -> anyhow::Result<Self> {
        let store = SessionStore::locate();
        let stored = match &store {
            Ok(s) => s.load(),
            Err(e) => Err(format!("{e:#}")),
        };
        let (endpoint, token) = resolve(
            g.endpoint.as_deref(),
            g.token.as_deref(),
            &stored,
            Utc::now(),
        );
        let channel = channel(&endpoint, g.ca_cert.as_deref())?;
        Ok(Ctx {
            endpoint,
            channel,
            token,
            output: g.output,
            store: store.unwrap_or_else(|_| SessionStore::unavailable()),
        })
    }

    fn json(&self) -> bool {
        self.output == Output::Json
    }

    fn anonymous(&self) -> Svc {
        InterceptedService::new(self.channel.clone(), Bearer(None))
    }

    fn authed(&self) -> anyhow::Result<Svc> {
        let token = self.token.as_ref().map_err(|why| anyhow!("{why}"))?;
        let value = format!("Bearer {token}").parse::<AsciiMetadataValue>().map_err(|_| {
            anyhow!("the token contains characters that cannot be sent in a header: check --token or KAPAL_TOKEN")
        })?;
        Ok(InterceptedService::new(
            self.channel.clone(),
            Bearer(Some(value)),
        ))
    }

    fn accounts(&self) -> anyhow::Result<AccountServiceClient<Svc>> {
        Ok(AccountServiceClient::new(self.authed()?))
    }
    fn orders(&self) -> anyhow::Result<OrderServiceClient<Svc>> {
        Ok(OrderServiceClient::new(self.authed()?))
    }
    fn instances(&self) -> anyhow::Result<InstanceServiceClient<Svc>> {
        Ok(InstanceServiceClient::new(self.authed()?))
    }
    fn subscriptions(&self) -> anyhow::Result<SubscriptionServiceClient<Svc>> {
        Ok(SubscriptionServiceClient::new(self.authed()?))
    }
    fn catalog(&self) -> CatalogServiceClient<Svc> {
        CatalogServiceClient::new(self.anonymous())
    }
    fn admin(&self) -> anyhow::Result<AdminServiceClient<Svc>> {
        Ok(AdminServiceClient::new(self.authed()?))
    }
    fn billing_admin(&self) -> anyhow::Result<BillingAdminServiceClient<Svc>> {
        Ok(BillingAdminServiceClient::new(self.authed()?))
    }

    /// A gRPC error as a message for the user: `<message> (<CODE>)`.
    fn rpc_error(&self, s: &Status) -> anyhow::Error {
        rpc_error(&self.endpoint, s)
    }

    /// Prints a progress line: on stdout for tables, on stderr with JSON (stdout stays JSON).
    fn progress(&self, line: &str) {
        if self.json() {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// Unwraps a unary response or turns its error into a message for the user.
trait RpcResult<T> {
    fn or_fail(self, ctx: &Ctx) -> anyhow::Result<T>;
    /// [`RpcResult::or_fail`] for operators' calls: PERMISSION_DENIED says an admin account is
    /// needed.
    fn or_fail_as_operator(self, ctx: &Ctx) -> anyhow::Result<T>;
}

impl<T> RpcResult<T> for Result<tonic::Response<T>, Status> {
    fn or_fail(self, ctx: &Ctx) -> anyhow::Result<T> {
        self.map(tonic::Response::into_inner)
            .map_err(|s| ctx.rpc_error(&s))
    }
    fn or_fail_as_operator(self, ctx: &Ctx) -> anyhow::Result<T> {
        self.map(tonic::Response::into_inner)
            .map_err(|s| operator_rpc_error(&ctx.endpoint, &s))
    }
}

/// [`rpc_error`] for operators' calls: a PERMISSION_DENIED answer reads `this needs an operator
/// (admin) account: <message> (PERMISSION_DENIED)`.
fn operator_rpc_error(endpoint: &str, s: &Status) -> anyhow::Error {
    let e = rpc_error(endpoint, s);
    if s.code() == Code::PermissionDenied {
        anyhow!("this needs an operator (admin) account: {e}")
    } else {
        e
    }
}

/// `<message> (<CODE>)`; for a failure to reach the gateway, says where and why.
fn rpc_error(endpoint: &str, s: &Status) -> anyhow::Error {
    let code = code_name(s.code());
    let mut message = s.message().trim().to_string();
    if message.is_empty() {
        message = s.code().description().to_string();
    }
    // Transport failures (refused connection, TLS, DNS) carry their cause as the source.
    if let Some(source) = std::error::Error::source(s) {
        let mut chain = vec![message];
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(e) = next {
            let text = e.to_string();
            if !chain.iter().any(|c| c.contains(&text)) {
                chain.push(text);
            }
            next = e.source();
        }
        message = format!("cannot reach Kapal at {endpoint}: {}", chain.join(": "));
    }
    anyhow!("{message} ({code})")
}

/// The canonical name of a gRPC status code, e.g. `NOT_FOUND`.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Errors worth retrying a moment later: the gateway or a service is briefly unreachable, or a
/// long-lived stream was cut.
fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// A lazily connecting channel to the gateway; TLS for https:// endpoints.
fn channel(endpoint: &str, ca_cert: Option<&Path>) -> anyhow::Result<Channel> {
    let invalid = || {
        format!(
            "{endpoint:?} is not a valid endpoint: expected a URL like https://api.kapal.example or http://127.0.0.1:8080"
        )
    };
    let mut ep = Endpoint::from_shared(endpoint.to_string()).map_err(|_| anyhow!(invalid()))?;
    match ep.uri().scheme_str() {
        Some("https") => {
            let tls = match ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path).with_context(|| {
                        format!("cannot read the CA certificate {}", path.display())
                    })?;
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new().with_native_roots(),
            };
            ep = ep
                .tls_config(tls)
                .context("cannot set up TLS for the endpoint")?;
        }
        Some("http") => {
            if ca_cert.is_some() {
                bail!("--ca-cert needs an https:// endpoint, but the endpoint is {endpoint}");
            }
        }
        _ => bail!(invalid()),
    }
    Ok(ep
        .connect_timeout(Duration::from_secs(10))
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// `https://x/` and `https://x` are the same endpoint.
fn normalize_endpoint(e: &str) -> String {
    e.trim().trim_end_matches('/').to_string()
}

/// Which endpoint to call and with which token.
///
/// The endpoint: `--endpoint`/`KAPAL_ENDPOINT`, else the saved session's, else the default.
/// The token: `--token`/`KAPAL_TOKEN`, else the saved session's when it is for that endpoint and
/// has not expired; otherwise a message saying how to log in.
fn resolve(
    endpoint_flag: Option<&str>,
    token_flag: Option<&str>,
    stored: &Result<Option<Session>, String>,
    now: DateTime<Utc>,
) -> (String, Result<String, String>) {
    let given = endpoint_flag
        .map(normalize_endpoint)
        .filter(|e| !e.is_empty());
    let session = stored.as_ref().ok().and_then(Option::as_ref);
    let endpoint = given
        .clone()
        .or_else(|| session.map(|s| normalize_endpoint(&s.endpoint)))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    if let Some(t) = token_flag.map(str::trim).filter(|t| !t.is_empty()) {
        return (endpoint, Ok(t.to_string()));
    }
    let token = match stored {
        Err(why) => Err(format!(
            "not logged in: {why}; run `kapal login` or set KAPAL_TOKEN"
        )),
        Ok(None) => Err(NOT_LOGGED_IN.to_string()),
        Ok(Some(s)) if normalize_endpoint(&s.endpoint) != endpoint => Err(format!(
            "not logged in to {endpoint} (the saved session is for {}): run `kapal login --endpoint {endpoint}` or set KAPAL_TOKEN",
            s.endpoint
        )),
        Ok(Some(s)) if s.expires_at.is_some_and(|t| t <= now) => Err(format!(
            "not logged in: the saved session expired at {}; run `kapal login` or set KAPAL_TOKEN",
            rfc3339(s.expires_at)
        )),
        Ok(Some(s)) => Ok(s.token.clone()),
    };
    (endpoint, token)
}

// ---------------------------------------------------------------------------------------------
// Saved session
// ---------------------------------------------------------------------------------------------

/// The session `kapal login` saves: readable by the user only (file 0600, directory 0700).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Session {
    endpoint: String,
    token: String,
    expires_at: Option<DateTime<Utc>>,
    account_id: String,
    email: String,
}

/// Where sessions are saved: `KAPAL_CONFIG_DIR`, else `<config dir>/kapal`.
struct SessionStore {
    dir: Option<PathBuf>,
    /// Whether the directory is Kapal's own (not one named by KAPAL_CONFIG_DIR), so that its
    /// permissions may be tightened when it already exists.
    own_dir: bool,
}

impl SessionStore {
    fn locate() -> anyhow::Result<Self> {
        if let Some(dir) = std::env::var_os("KAPAL_CONFIG_DIR").filter(|d| !d.is_empty()) {
            return Ok(SessionStore {
                dir: Some(PathBuf::from(dir)),
                own_dir: false,
            });
        }
        let base = dirs::config_dir()
            .ok_or_else(|| anyhow!("cannot find your config directory: set KAPAL_CONFIG_DIR"))?;
        Ok(SessionStore {
            dir: Some(base.join("kapal")),
            own_dir: true,
        })
    }

    #[cfg(test)]
    fn at(dir: &Path) -> Self {
        SessionStore {
            dir: Some(dir.to_path_buf()),
            own_dir: false,
        }
    }

    fn unavailable() -> Self {
        SessionStore {
            dir: None,
            own_dir: false,
        }
    }

    fn dir(&self) -> anyhow::Result<&Path> {
        self.dir
            .as_deref()
            .ok_or_else(|| anyhow!("cannot find your config directory: set KAPAL_CONFIG_DIR"))
    }

    fn path(&self) -> anyhow::Result<PathBuf> {
        Ok(self.dir()?.join(SESSION_FILE))
    }

    /// The saved session, `None` when there is none, or why it cannot be read.
    fn load(&self) -> Result<Option<Session>, String> {
        let path = self.path().map_err(|e| e.to_string())?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{} is not a saved session: {e}", path.display()))
    }

    /// Saves `session`, replacing any other; returns the file's path.
    fn save(&self, session: &Session) -> anyhow::Result<PathBuf> {
        let dir = self.dir()?;
        let created = !dir.exists();
        create_private_dir(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        if created || self.own_dir {
            set_mode(dir, 0o700)
                .with_context(|| format!("cannot restrict access to {}", dir.display()))?;
        }
        let path = dir.join(SESSION_FILE);
        let tmp = dir.join(format!(".{SESSION_FILE}.{}.tmp", std::process::id()));
        let text = serde_json::to_string_pretty(session).context("cannot encode the session")?;
        let write = || -> std::io::Result<()> {
            let mut f = create_private_file(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            // The file may have existed with other permissions.
            set_mode(&tmp, 0o600)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e)
                .with_context(|| format!("cannot save the session to {}", path.display()));
        }
        Ok(path)
    }

    /// Removes the saved session; whether there was one.
    fn remove(&self) -> anyhow::Result<bool> {
        let path = self.path()?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// The password: the flag or KAPAL_PASSWORD, else a prompt on a terminal, else a line of stdin.
fn read_password(given: Option<String>, confirm: bool) -> anyhow::Result<String> {
    if let Some(p) = given.filter(|p| !p.is_empty()) {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        if confirm {
            let again = rpassword::prompt_password("Password again: ")
                .context("cannot read the password")?;
            if again != p {
                bail!("the two passwords differ");
            }
        }
        if p.is_empty() {
            bail!("no password given");
        }
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        bail!(
            "no password given: use --password, set KAPAL_PASSWORD, or write it on standard input"
        );
    }
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------

async fn signup(a: SignupArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    ctx.store.dir()?;
    let password = read_password(a.password.password, true)?;
    let resp = AccountServiceClient::new(ctx.anonymous())
        .sign_up(SignUpRequest {
            email: a.email,
            password,
            display_name: a.name.unwrap_or_default(),
        })
        .await
        .or_fail(&ctx)?;
    save_and_show_session(&ctx, resp, "Signed up")
}

async fn login(a: LoginArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    ctx.store.dir()?;
    let password = read_password(a.password.password, false)?;
    let resp = AccountServiceClient::new(ctx.anonymous())
        .log_in(LogInRequest {
            email: a.email,
            password,
        })
        .await
        .or_fail(&ctx)?;
    save_and_show_session(&ctx, resp, "Logged in")
}

fn save_and_show_session(ctx: &Ctx, resp: SessionResponse, what: &str) -> anyhow::Result<()> {
    let account = resp.account.unwrap_or_default();
    let expires_at = resp.expires_at.as_ref().and_then(to_utc);
    let session = Session {
        endpoint: ctx.endpoint.clone(),
        token: resp.token,
        expires_at,
        account_id: account.id.clone(),
        email: account.email.clone(),
    };
    let path = ctx
        .store
        .save(&session)
        .with_context(|| format!("{what}, but the session could not be saved"))?;
    if ctx.json() {
        return print_json(&json!({
            "account": account_json(&account),
            "endpoint": ctx.endpoint,
            "expires_at": expires_at.map(|t| rfc3339(Some(t))),
            "session_file": path.display().to_string(),
        }));
    }
    println!(
        "{what} to {} as {} (customer id {}).",
        ctx.endpoint, account.email, account.customer_id
    );
    println!(
        "Session saved to {}, valid until {}.",
        path.display(),
        rfc3339(expires_at)
    );
    Ok(())
}

async fn logout(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let server = match ctx.accounts() {
        Ok(mut c) => Some(c.log_out(LogOutRequest {}).await),
        Err(_) => None,
    };
    // Forget the saved session if it is for this endpoint (or unreadable, so useless).
    let forget = match ctx.store.load() {
        Ok(Some(s)) => normalize_endpoint(&s.endpoint) == ctx.endpoint,
        Ok(None) => false,
        Err(_) => true,
    };
    let removed = forget && ctx.store.remove()?;
    match server {
        None if !removed => {
            // Nothing to end and nothing saved: already logged out, which is what was asked.
            if ctx.json() {
                return print_json(&json!({ "logged_out": false, "endpoint": ctx.endpoint }));
            }
            println!("Not logged in to {}: nothing to do.", ctx.endpoint);
            return Ok(());
        }
        Some(Err(s)) if s.code() != Code::Unauthenticated => {
            let err = ctx.rpc_error(&s);
            if removed {
                bail!("forgot the saved session, but the server could not end it: {err}");
            }
            return Err(err);
        }
        _ => {}
    }
    if ctx.json() {
        return print_json(&json!({ "logged_out": true, "endpoint": ctx.endpoint }));
    }
    println!("Logged out of {}.", ctx.endpoint);
    Ok(())
}

async fn whoami(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let a = ctx
        .accounts()?
        .who_am_i(WhoAmIRequest {})
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        let mut v = account_json(&a);
        v["endpoint"] = json!(ctx.endpoint);
        return print_json(&v);
    }
    print!(
        "{}",
        key_values(&[
            ("Email", a.email.clone()),
            ("Name", a.display_name.clone()),
            ("Customer id", a.customer_id.clone()),
            ("Role", role_name(&a).to_string()),
            ("Account id", a.id.clone()),
            ("Created", time(a.created_at.as_ref())),
            ("Endpoint", ctx.endpoint.clone()),
        ])
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------------------------

async fn catalog(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let apps = ctx
        .catalog()
        .list_apps(ListAppsRequest {})
        .await
        .or_fail(&ctx)?
        .apps;
    if ctx.json() {
        return print_json(&json!({ "apps": apps.iter().map(app_json).collect::<Vec<_>>() }));
    }
    if apps.is_empty() {
        println!("The catalog is empty.");
        return Ok(());
    }
    let mut t = Table::new(&[
        "APP", "VERSION", "PLAN", "PRICE", "TRIAL", "CPU", "MEMORY", "STORAGE",
    ]);
    for app in &apps {
        for p in &app.plans {
            t.row(vec![
                app.id.clone(),
                app.version.clone(),
                p.id.clone(),
                format!("{}/month", money(p.monthly_price.as_ref())),
                trial(p),
                cpu(p.cpu_millis),
                memory(p.memory_mib),
                storage(p.storage_gib),
            ]);
        }
    }
    print!("{}", t.render());
    println!("\nOrder one with: kapal order <app> --plan <plan> --wait");
    Ok(())
}

async fn app(a: AppArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let app = ctx
        .catalog()
        .get_app(GetAppRequest { app_id: a.app })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&app_json(&app));
    }
    print!(
        "{}",
        key_values(&[
            ("App", app.id.clone()),
            ("Name", app.name.clone()),
            ("Version", app.version.clone()),
            ("Documentation", app.documentation_url.clone()),
            ("Description", app.description.clone()),
        ])
    );
    println!();
    let mut t = Table::new(&["PLAN", "NAME", "PRICE", "TRIAL", "CPU", "MEMORY", "STORAGE"]);
    for p in &app.plans {
        t.row(vec![
            p.id.clone(),
            p.name.clone(),
            format!("{}/month", money(p.monthly_price.as_ref())),
            trial(p),
            cpu(p.cpu_millis),
            memory(p.memory_mib),
            storage(p.storage_gib),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Orders
// ---------------------------------------------------------------------------------------------

async fn order(a: OrderArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.orders()?;
    let key = match a.idempotency_key {
        Some(k) => k,
        None => {
            let k = uuid::Uuid::new_v4().to_string();
            eprintln!(
                "Idempotency key: {k} (if this command fails, retry with --idempotency-key {k}: no second order will be placed)"
            );
            k
        }
    };
    let started = tokio::time::Instant::now();
    let deadline = started + a.timeout;
    let request = CheckoutRequest {
        app_id: a.app,
        plan_id: a.plan,
        idempotency_key: key,
    };
    let mut attempt = 1;
    let mut order = loop {
        match client.checkout(request.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(s) if transient(&s) && attempt < CHECKOUT_ATTEMPTS => {
                eprintln!(
                    "Checkout failed ({}), retrying with the same idempotency key...",
                    ctx.rpc_error(&s)
                );
                tokio::time::sleep(Duration::from_secs(u64::from(attempt) * 2)).await;
                attempt += 1;
            }
            Err(s) => return Err(ctx.rpc_error(&s)),
        }
    };
    if !a.wait {
        if ctx.json() {
            return print_json(&order_json(&order));
        }
        print!("{}", order_details(&order));
        match order.status() {
            OrderStatus::Failed => bail!("order {} failed: {}", order.id, order.failure_reason),
            OrderStatus::Pending => println!(
                "\nThe order is being processed: see it with `kapal orders`, or order again with --wait and the same --idempotency-key."
            ),
            _ if !order.instance_id.is_empty() => println!(
                "\nFollow the instance with: kapal watch {}",
                order.instance_id
            ),
            _ => {}
        }
        return Ok(());
    }
    ctx.progress(&format!(
        "{}  order {} for {} on plan {} ({}): {}",
        now(),
        order.id,
        order.app_id,
        order.plan_id,
        money(order.amount.as_ref()),
        order_status(&order)
    ));

    // A pending order (e.g. billing briefly down) completes or fails on its own: poll it.
    let mut said_pending = false;
    while order.status() == OrderStatus::Pending
        || (order.status() == OrderStatus::Completed && order.instance_id.is_empty())
    {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "timed out after {} waiting for order {} (still {}); check it later with `kapal orders`",
                format_duration(a.timeout),
                order.id,
                order_status(&order)
            );
        }
        if !said_pending {
            ctx.progress(&format!(
                "{}  order is {}, waiting for it to complete...",
                now(),
                order_status(&order)
            ));
            said_pending = true;
        }
        tokio::time::sleep(ORDER_POLL).await;
        match client
            .get_order(GetOrderRequest {
                order_id: order.id.clone(),
            })
            .await
        {
            Ok(r) => order = r.into_inner(),
            Err(s) if transient(&s) => {}
            Err(s) => return Err(ctx.rpc_error(&s)),
        }
    }
    if order.status() == OrderStatus::Failed {
        bail!("order {} failed: {}", order.id, order.failure_reason);
    }
    ctx.progress(&format!(
        "{}  order completed: instance {}, subscription {}",
        now(),
        order.instance_id,
        order.subscription_id
    ));

    // Follow the instance until it is ready or cannot become so.
    let instance_id = order.instance_id.clone();
    let mut last: Option<(InstanceStatus, String)> = None;
    let mut outcome: Option<Result<(), String>> = None;
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let followed = tokio::time::timeout(
        remaining,
        follow(&ctx, &instance_id, |ev| {
            let Some(inst) = &ev.instance else {
                return Ok(false);
            };
            let state = (inst.status(), inst.status_reason.clone());
            if last.as_ref() != Some(&state) {
                ctx.progress(&event_line(ev.at.as_ref(), inst));
                last = Some(state);
            }
            outcome = match inst.status() {
                InstanceStatus::Ready => Some(Ok(())),
                InstanceStatus::Failed => Some(Err(format!(
                    "instance {} failed: {}",
                    inst.id,
                    reason_or(inst, "no reason given")
                ))),
                InstanceStatus::Deleting | InstanceStatus::Deleted => Some(Err(format!(
                    "instance {} is being deleted: {}",
                    inst.id,
                    reason_or(inst, "no reason given")
                ))),
                _ => None,
            };
            Ok(outcome.is_some())
        }),
    )
    .await;
    match (followed, outcome) {
        (Err(_elapsed), _) => {
            let status = last
                .map(|(s, r)| format!("{}{}", instance_status_name(s), suffix(&r)))
                .unwrap_or_else(|| "unknown".to_string());
            bail!(
                "timed out after {} waiting for instance {instance_id} (last status: {status}); keep following it with `kapal watch {instance_id}`",
                format_duration(a.timeout)
            );
        }
        (Ok(Err(e)), _) => return Err(e),
        (Ok(Ok(())), Some(Err(why))) => bail!(why),
        (Ok(Ok(())), None) => bail!("instance {instance_id} no longer exists"),
        (Ok(Ok(())), Some(Ok(()))) => {}
    }

    let inst = ctx
        .instances()?
        .get_instance(GetInstanceRequest {
            instance_id: instance_id.clone(),
        })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&json!({
            "order": order_json(&order),
            "instance": instance_json(&inst),
        }));
    }
    println!();
    println!(
        "{} is ready at {} (took {}).",
        inst.app_id,
        inst.url,
        format_duration(Duration::from_secs(started.elapsed().as_secs()))
    );
    print!("{}", key_values(&credential_lines(&inst)));
    Ok(())
}

async fn orders(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let mut client = ctx.orders()?;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = client
            .list_orders(ListOrdersRequest {
                page_size: 500,
                page_token: page_token.clone(),
            })
            .await
            .or_fail(&ctx)?;
        all.extend(resp.orders);
        if resp.next_page_token.is_empty() || resp.next_page_token == page_token {
            break;
        }
        page_token = resp.next_page_token;
    }
    if ctx.json() {
        return print_json(&json!({ "orders": all.iter().map(order_json).collect::<Vec<_>>() }));
    }
    if all.is_empty() {
        println!("No orders yet: see `kapal catalog`.");
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID", "CREATED", "APP", "PLAN", "AMOUNT", "STATUS", "INSTANCE", "NOTE",
    ]);
    for o in &all {
        t.row(vec![
            o.id.clone(),
            time(o.created_at.as_ref()),
            o.app_id.clone(),
            o.plan_id.clone(),
            money(o.amount.as_ref()),
            order_status(o).to_string(),
            dash(&o.instance_id),
            o.failure_reason.clone(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

fn order_details(o: &Order) -> String {
    let mut lines = vec![
        ("Order", o.id.clone()),
        ("Status", order_status(o).to_string()),
        ("App", o.app_id.clone()),
        ("Plan", o.plan_id.clone()),
        ("Amount", money(o.amount.as_ref())),
        ("Instance", dash(&o.instance_id)),
        ("Subscription", dash(&o.subscription_id)),
        ("Idempotency key", o.idempotency_key.clone()),
        ("Created", time(o.created_at.as_ref())),
    ];
    if !o.failure_reason.is_empty() {
        lines.push(("Failure", o.failure_reason.clone()));
    }
    key_values(&lines)
}

// ---------------------------------------------------------------------------------------------
// Instances
// ---------------------------------------------------------------------------------------------

async fn instances(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let mut client = ctx.instances()?;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = client
            .list_instances(ListInstancesRequest {
                page_size: 500,
                page_token: page_token.clone(),
            })
            .await
            .or_fail(&ctx)?;
        all.extend(resp.instances);
        if resp.next_page_token.is_empty() || resp.next_page_token == page_token {
            break;
        }
        page_token = resp.next_page_token;
    }
    if ctx.json() {
        return print_json(
            &json!({ "instances": all.iter().map(instance_json).collect::<Vec<_>>() }),
        );
    }
    if all.is_empty() {
        println!("No instances yet: order one with `kapal order <app> --plan <plan> --wait`.");
        return Ok(());
    }
    let mut t = Table::new(&["ID", "APP", "PLAN", "STATUS", "URL", "CREATED"]);
    for i in &all {
        t.row(vec![
            i.id.clone(),
            i.app_id.clone(),
            i.plan_id.clone(),
            instance_status_name(i.status()).to_string(),
            dash(&i.url),
            time(i.created_at.as_ref()),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

async fn instance(a: InstanceArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let i = ctx
        .instances()?
        .get_instance(GetInstanceRequest { instance_id: a.id })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&instance_json(&i));
    }
    let mut lines = instance_lines(&i);
    lines.extend(credential_lines(&i));
    print!("{}", key_values(&lines));
    Ok(())
}

fn instance_lines(i: &Instance) -> Vec<(&'static str, String)> {
    let mut lines = vec![
        ("Instance", i.id.clone()),
        ("App", i.app_id.clone()),
        ("Plan", i.plan_id.clone()),
        ("Status", instance_status_name(i.status()).to_string()),
        ("Reason", dash(&i.status_reason)),
        ("Desired", desired_name(i).to_string()),
        ("URL", dash(&i.url)),
        ("Subscription", dash(&i.subscription_id)),
        ("Order", dash(&i.order_id)),
        ("Created", time(i.created_at.as_ref())),
        ("Ready since", time(i.ready_at.as_ref())),
        ("Updated", time(i.updated_at.as_ref())),
    ];
    if i.suspended_by_billing {
        lines.push((
            "Suspended by billing",
            "yes — pay or reactivate the subscription".to_string(),
        ));
    }
    if i.data_deleted_after.is_some() {
        lines.push(("Data deleted after", time(i.data_deleted_after.as_ref())));
    }
    lines
}

fn credential_lines(i: &Instance) -> Vec<(&'static str, String)> {
    match &i.credentials {
        Some(c) => vec![
            ("Login URL", dash(&c.login_url)),
            ("Username", c.username.clone()),
            ("Password", c.password.clone()),
        ],
        None => vec![(
            "Credentials",
            "not available yet (the instance is not provisioned)".to_string(),
        )],
    }
}

async fn watch(a: InstanceArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut last: Option<(InstanceStatus, String)> = None;
    follow(&ctx, &a.id, |ev| {
        let Some(inst) = &ev.instance else {
            return Ok(false);
        };
        let state = (inst.status(), inst.status_reason.clone());
        if last.as_ref() != Some(&state) {
            if ctx.json() {
                // One JSON object per line, so that a script can read events as they come.
                println!(
                    "{}",
                    json!({ "at": ts_json(ev.at.as_ref()), "instance": instance_json(inst) })
                );
            } else {
                println!("{}", event_line(ev.at.as_ref(), inst));
            }
            let _ = std::io::stdout().flush();
            last = Some(state);
        }
        Ok(inst.status() == InstanceStatus::Deleted)
    })
    .await
}

/// Follows an instance's events, calling `on_event` for each until it returns `true` or the
/// instance is gone. Reopens the stream when it is cut (the server resends the current state).
async fn follow(
    ctx: &Ctx,
    id: &str,
    mut on_event: impl FnMut(&InstanceEvent) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut client = ctx.instances()?;
    let mut failures: u32 = 0;
    let mut seen_any = false;
    loop {
        let opened = client
            .watch_instance(WatchInstanceRequest {
                instance_id: id.to_string(),
            })
            .await;
        match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(ev)) => {
                            failures = 0;
                            seen_any = true;
                            if on_event(&ev)? {
                                return Ok(());
                            }
                        }
                        Ok(None) => break,
                        Err(s) if transient(&s) => break,
                        Err(s) => return Err(ctx.rpc_error(&s)),
                    }
                }
            }
            Err(s) if s.code() == Code::NotFound && seen_any => {
                eprintln!("Instance {id} no longer exists.");
                return Ok(());
            }
            Err(s) if transient(&s) && failures < MAX_WATCH_RETRIES => {
                eprintln!("Watching failed ({}), retrying...", ctx.rpc_error(&s));
            }
            Err(s) => return Err(ctx.rpc_error(&s)),
        }
        failures += 1;
        if failures > MAX_WATCH_RETRIES {
            bail!("the watch of instance {id} keeps being cut off; try again later");
        }
        tokio::time::sleep(Duration::from_secs(u64::from(failures.min(5)) * 2)).await;
    }
}

/// `2025-01-02T03:04:05Z  PROVISIONING  Waiting for the database`.
fn event_line(at: Option<&prost_types::Timestamp>, inst: &Instance) -> String {
    let when = match at {
        Some(t) => time(Some(t)),
        None => now(),
    };
    format!(
        "{when}  {:<12}  {}",
        instance_status_name(inst.status()),
        inst.status_reason
    )
    .trim_end()
    .to_string()
}

#[derive(Clone, Copy)]
enum Action {
    Stop,
    Start,
    Restart,
    Delete,
}

async fn instance_action(a: InstanceArg, action: Action) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.instances()?;
    let req = InstanceActionRequest { instance_id: a.id };
    let (resp, verb) = match action {
        Action::Stop => (client.stop_instance(req).await, "Stopping"),
        Action::Start => (client.start_instance(req).await, "Starting"),
        Action::Restart => (client.restart_instance(req).await, "Restarting"),
        Action::Delete => (client.delete_instance(req).await, "Deleting"),
    };
    let i = resp.or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&instance_json(&i));
    }
    println!(
        "{verb} instance {}: status {}{}.",
        i.id,
        instance_status_name(i.status()),
        suffix(&i.status_reason)
    );
    Ok(())
}

async fn delete(a: DeleteArgs) -> anyhow::Result<()> {
    if !a.yes && std::io::stdin().is_terminal() {
        eprint!(
            "Delete instance {}? Its app stops now and its data is removed after the retention period. [y/N] ",
            a.id
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("cannot read the answer")?;
        if !matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
            bail!("cancelled: the instance was not deleted");
        }
    }
    instance_action(
        InstanceArg {
            id: a.id,
            global: a.global,
        },
        Action::Delete,
    )
    .await
}

async fn usage(a: InstanceArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let u = ctx
        .instances()?
        .get_instance_usage(GetInstanceUsageRequest { instance_id: a.id })
        .await
        .or_fail(&ctx)?;
    print_usage(&ctx, &u)
}

fn print_usage(ctx: &Ctx, u: &InstanceUsage) -> anyhow::Result<()> {
    if ctx.json() {
        return print_json(&usage_json(u));
    }
    print!("{}", key_values(&usage_lines(u)));
    Ok(())
}

/// CPU and memory in use against the plan's limits, or why they are not known (never zeros for
/// missing metrics), and storage: capacity, with what is used when the cluster reports it.
fn usage_lines(u: &InstanceUsage) -> Vec<(&'static str, String)> {
    let cpu = match u.cpu_millis.filter(|_| u.metrics_available) {
        Some(m) => format!(
            "{} of {}{}",
            cpu_amount(m),
            cpu_amount(u.cpu_limit_millis),
            percent(m, u.cpu_limit_millis)
        ),
        None => format!("not known (limit {})", cpu_amount(u.cpu_limit_millis)),
    };
    let memory = match u.memory_bytes.filter(|_| u.metrics_available) {
        Some(b) => format!(
            "{} of {}{}",
            bytes(b),
            bytes(u.memory_limit_bytes),
            percent(b, u.memory_limit_bytes)
        ),
        None => format!("not known (limit {})", bytes(u.memory_limit_bytes)),
    };
    let mut lines = vec![
        ("Instance", u.instance_id.clone()),
        ("CPU", cpu),
        ("Memory", memory),
    ];
    if !u.metrics_available || u.cpu_millis.is_none() || u.memory_bytes.is_none() {
        let note = if u.metrics_note.trim().is_empty() {
            "the cluster did not report the instance's usage".to_string()
        } else {
            u.metrics_note.trim().to_string()
        };
        lines.push(("Metrics", format!("not available: {note}")));
    }
    let storage = match (u.storage_capacity_bytes, u.storage_used_bytes) {
        (0, _) => "no volume bound yet".to_string(),
        (cap, Some(used)) => format!(
            "{} used of {}{}",
            bytes(used),
            bytes(cap),
            percent(used, cap)
        ),
        (cap, None) => format!("{} (use not reported by the cluster)", bytes(cap)),
    };
    lines.push(("Storage", storage));
    lines.push(("Observed", time(u.observed_at.as_ref())));
    lines
}

fn usage_json(u: &InstanceUsage) -> Value {
    // Usage the cluster did not report is null, never 0.
    let reported = |v: Option<i64>| if u.metrics_available { v } else { None };
    json!({
        "instance_id": u.instance_id,
        "metrics_available": u.metrics_available,
        "metrics_note": u.metrics_note,
        "cpu_millis": reported(u.cpu_millis),
        "cpu_limit_millis": u.cpu_limit_millis,
        "memory_bytes": reported(u.memory_bytes),
        "memory_limit_bytes": u.memory_limit_bytes,
        "storage_capacity_bytes": u.storage_capacity_bytes,
        "storage_used_bytes": u.storage_used_bytes,
        "observed_at": ts_json(u.observed_at.as_ref()),
    })
}

// ---------------------------------------------------------------------------------------------
// Subscriptions and invoices
// ---------------------------------------------------------------------------------------------

async fn subscriptions(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let subs = ctx
        .subscriptions()?
        .list_subscriptions(ListSubscriptionsRequest {})
        .await
        .or_fail(&ctx)?
        .subscriptions;
    if ctx.json() {
        return print_json(
            &json!({ "subscriptions": subs.iter().map(subscription_json).collect::<Vec<_>>() }),
        );
    }
    if subs.is_empty() {
        println!("No subscriptions yet.");
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID",
        "APP",
        "PLAN",
        "STATUS",
        "PRICE",
        "PERIOD END",
        "AUTO-RENEW",
        "NOTE",
    ]);
    for s in &subs {
        t.row(vec![
            s.id.clone(),
            s.app_id.clone(),
            s.plan_id.clone(),
            subscription_status(s).to_string(),
            format!("{}/month", money(s.price.as_ref())),
            time(s.current_period_end.as_ref()),
            if s.auto_renew { "on" } else { "off" }.to_string(),
            if s.cancel_at_period_end {
                "cancelled: ends at period end".to_string()
            } else {
                String::new()
            },
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

fn subscription_lines(s: &Subscription) -> String {
    key_values(&[
        ("Subscription", s.id.clone()),
        ("App", s.app_id.clone()),
        ("Plan", s.plan_id.clone()),
        ("Next plan", dash(&s.next_plan_id)),
        ("Instance", dash(&s.instance_id)),
        ("Status", subscription_status(s).to_string()),
        ("Price", format!("{}/month", money(s.price.as_ref()))),
        ("Period start", time(s.current_period_start.as_ref())),
        ("Period end", time(s.current_period_end.as_ref())),
        ("Trial end", time(s.trial_end.as_ref())),
        (
            "Auto-renew",
            if s.auto_renew { "on" } else { "off" }.to_string(),
        ),
        (
            "Cancelled",
            if s.cancel_at_period_end {
                "yes: ends at period end"
            } else {
                "no"
            }
            .to_string(),
        ),
    ])
}

async fn invoices(a: InvoicesArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let invoices = ctx
        .subscriptions()?
        .list_invoices(ListInvoicesRequest {
            subscription_id: a.subscription.unwrap_or_default(),
        })
        .await
        .or_fail(&ctx)?
        .invoices;
    if ctx.json() {
        return print_json(
            &json!({ "invoices": invoices.iter().map(invoice_json).collect::<Vec<_>>() }),
        );
    }
    if invoices.is_empty() {
        println!("No invoices yet.");
        return Ok(());
    }
    let mut t = Table::new(&[
        "NUMBER",
        "PERIOD START",
        "PERIOD END",
        "AMOUNT",
        "STATUS",
        "PAID",
        "SUBSCRIPTION",
    ]);
    for i in &invoices {
        t.row(vec![
            i.number.clone(),
            time(i.period_start.as_ref()),
            time(i.period_end.as_ref()),
            money(i.amount.as_ref()),
            invoice_status(i).to_string(),
            time(i.paid_at.as_ref()),
            i.subscription_id.clone(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

async fn cancel(a: SubscriptionArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let s = ctx
        .subscriptions()?
        .cancel_subscription(CancelSubscriptionRequest {
            subscription_id: a.id,
        })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&subscription_json(&s));
    }
    println!(
        "Subscription {} is cancelled: it ends at {}, and its instance keeps running until then.",
        s.id,
        time(s.current_period_end.as_ref())
    );
    print!("{}", subscription_lines(&s));
    Ok(())
}

async fn auto_renew(a: AutoRenewArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let s = ctx
        .subscriptions()?
        .set_auto_renew(SetAutoRenewRequest {
            subscription_id: a.id,
            auto_renew: a.state == OnOff::On,
        })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&subscription_json(&s));
    }
    println!(
        "Automatic renewal of subscription {} is {}.",
        s.id,
        if s.auto_renew { "on" } else { "off" }
    );
    Ok(())
}

async fn change_plan(a: ChangePlanArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let s = ctx
        .subscriptions()?
        .change_plan(ChangePlanRequest {
            subscription_id: a.id,
            plan_id: a.plan,
        })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&subscription_json(&s));
    }
    println!("{}", plan_change_sentence(&s));
    print!("{}", subscription_lines(&s));
    Ok(())
}

/// What a ChangePlan answer means for the customer.
fn plan_change_sentence(s: &Subscription) -> String {
    if s.next_plan_id.is_empty() || s.next_plan_id == s.plan_id {
        return format!(
            "Subscription {} stays on plan {}: no plan change is pending.",
            s.id, s.plan_id
        );
    }
    if s.status() == SubscriptionStatus::Trialing {
        let end = s.trial_end.as_ref().or(s.current_period_end.as_ref());
        format!(
            "Subscription {} moves to plan {} when the trial ends ({}): it is charged then and renews automatically.",
            s.id,
            s.next_plan_id,
            time(end)
        )
    } else {
        format!(
            "Subscription {} moves from plan {} to plan {} at the next renewal ({}).",
            s.id,
            s.plan_id,
            s.next_plan_id,
            time(s.current_period_end.as_ref())
        )
    }
}

async fn events(a: SubscriptionArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let events = ctx
        .subscriptions()?
        .list_subscription_events(ListSubscriptionEventsRequest {
            subscription_id: a.id.clone(),
        })
        .await
        .or_fail(&ctx)?
        .events;
    print_events(&ctx, &a.id, &events)
}

fn print_events(ctx: &Ctx, id: &str, events: &[SubscriptionEvent]) -> anyhow::Result<()> {
    if ctx.json() {
        return print_json(&json!({
            "subscription_id": id,
            "events": events.iter().map(subscription_event_json).collect::<Vec<_>>(),
        }));
    }
    if events.is_empty() {
        println!("No events of subscription {id}.");
        return Ok(());
    }
    print!("{}", events_table(events));
    Ok(())
}

fn events_table(events: &[SubscriptionEvent]) -> String {
    let mut t = Table::new(&["AT", "CHANGE", "CAUSE"]);
    for e in events {
        t.row(vec![
            time(e.at.as_ref()),
            format!(
                "{} -> {}",
                status_or_dash(e.from_status()),
                status_or_dash(e.to_status())
            ),
            e.cause.clone(),
        ]);
    }
    t.render()
}

/// `TRIALING`, or `-` for UNSPECIFIED (before the subscription existed).
fn status_or_dash(s: SubscriptionStatus) -> &'static str {
    match s {
        SubscriptionStatus::Unspecified => "-",
        s => subscription_status_name(s),
    }
}

fn subscription_event_json(e: &SubscriptionEvent) -> Value {
    let status = |s: SubscriptionStatus| match s {
        SubscriptionStatus::Unspecified => Value::Null,
        s => json!(subscription_status_name(s)),
    };
    json!({
        "at": ts_json(e.at.as_ref()),
        "from_status": status(e.from_status()),
        "to_status": status(e.to_status()),
        "cause": e.cause,
    })
}

// ---------------------------------------------------------------------------------------------
// API tokens
// ---------------------------------------------------------------------------------------------

async fn token_create(a: TokenCreateArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let resp = ctx
        .accounts()?
        .create_api_token(CreateApiTokenRequest {
            name: a.name,
            ttl_days: a.ttl_days.unwrap_or(0),
        })
        .await
        .or_fail(&ctx)?;
    let meta = resp.api_token.unwrap_or_default();
    if ctx.json() {
        let mut v = token_json(&meta);
        v["token"] = json!(resp.token);
        return print_json(&v);
    }
    // The notice goes to stderr so that `TOKEN=$(kapal token create ci)` captures the token only.
    eprintln!(
        "Created API token {} ({}), valid until {}. It is shown only now: store it safely.",
        meta.name,
        meta.id,
        time(meta.expires_at.as_ref())
    );
    println!("{}", resp.token);
    Ok(())
}

async fn token_list(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let tokens = ctx
        .accounts()?
        .list_api_tokens(ListApiTokensRequest {})
        .await
        .or_fail(&ctx)?
        .api_tokens;
    if ctx.json() {
        return print_json(
            &json!({ "api_tokens": tokens.iter().map(token_json).collect::<Vec<_>>() }),
        );
    }
    if tokens.is_empty() {
        println!("No API tokens: create one with `kapal token create <name>`.");
        return Ok(());
    }
    let now = Utc::now();
    let mut t = Table::new(&["ID", "NAME", "PREFIX", "STATE", "CREATED", "EXPIRES"]);
    for k in &tokens {
        t.row(vec![
            k.id.clone(),
            k.name.clone(),
            k.prefix.clone(),
            token_state(k, now).to_string(),
            time(k.created_at.as_ref()),
            time(k.expires_at.as_ref()),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

async fn token_revoke(a: TokenRevokeArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let k = ctx
        .accounts()?
        .revoke_api_token(RevokeApiTokenRequest { id: a.id })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&token_json(&k));
    }
    println!("Revoked API token {} ({}).", k.name, k.id);
    Ok(())
}

fn token_state(k: &ApiToken, now: DateTime<Utc>) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k
        .expires_at
        .as_ref()
        .and_then(to_utc)
        .is_some_and(|t| t <= now)
    {
        "expired"
    } else {
        "active"
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

/// Whole rupiah the Indonesian way: `Rp 79.000`, `Rp 1.250.000`, `Rp 0`.
fn format_rupiah(amount: i64) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    format!("{sign}Rp {}", group_thousands(amount.unsigned_abs()))
}

/// `1250000` -> `1.250.000`.
fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('.');
        }
        out.push(c);
    }
    out
}

/// Money for people: rupiah as `Rp 79.000`, any other currency as `1.000 USD`.
fn money(m: Option<&Money>) -> String {
    match m {
        None => "-".to_string(),
        Some(m) if m.currency.is_empty() || m.currency.eq_ignore_ascii_case("IDR") => {
            format_rupiah(m.amount)
        }
        Some(m) => {
            let sign = if m.amount < 0 { "-" } else { "" };
            format!(
                "{sign}{} {}",
                group_thousands(m.amount.unsigned_abs()),
                m.currency
            )
        }
    }
}

/// `500` -> `0.5 vCPU`, `2000` -> `2 vCPU`.
fn cpu(millis: u32) -> String {
    let (whole, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        format!("{whole} vCPU")
    } else {
        let frac = format!("{frac:03}");
        format!("{whole}.{} vCPU", frac.trim_end_matches('0'))
    }
}

/// `512` -> `512 MiB`, `2048` -> `2 GiB`.
fn memory(mib: u32) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

fn storage(gib: u32) -> String {
    format!("{gib} GiB")
}

/// Millicores as vCPU: `250` -> `0.25 vCPU` (negative amounts, which no one reports, as 0).
fn cpu_amount(millis: i64) -> String {
    cpu(u32::try_from(millis.max(0)).unwrap_or(u32::MAX))
}

/// Bytes in binary units with at most one decimal: `536870912` -> `512 MiB`,
/// `1610612736` -> `1.5 GiB`, `1000` -> `1000 B`.
fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let n = n.max(0);
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// ` (24%)` of `part` in `whole`, or nothing when `whole` is not positive.
fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 {
        return String::new();
    }
    format!(" ({}%)", percent_value(part, whole))
}

/// `part` as a whole percentage of `whole` (rounded; `whole` > 0).
fn percent_value(part: i64, whole: i64) -> i64 {
    let (part, whole) = (i128::from(part), i128::from(whole));
    i64::try_from((part * 100 + whole / 2) / whole).unwrap_or(i64::MAX)
}

fn trial(p: &Plan) -> String {
    match p.trial_days {
        0 => "-".to_string(),
        1 => "1 day".to_string(),
        n => format!("{n} days"),
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// `: <reason>` or nothing.
fn suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

fn reason_or<'a>(i: &'a Instance, default: &'a str) -> &'a str {
    if i.status_reason.is_empty() {
        default
    } else {
        &i.status_reason
    }
}

fn to_utc(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

/// UTC, RFC 3339, whole seconds: `2025-01-02T03:04:05Z`; `-` for none.
fn rfc3339(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".to_string())
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    rfc3339(t.and_then(to_utc))
}

fn now() -> String {
    rfc3339(Some(Utc::now()))
}

fn ts_json(t: Option<&prost_types::Timestamp>) -> Value {
    match t.and_then(to_utc) {
        Some(t) => json!(rfc3339(Some(t))),
        None => Value::Null,
    }
}

/// `INSTANCE_STATUS_READY` -> `READY`.
fn short<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

fn instance_status_name(s: InstanceStatus) -> &'static str {
    short(s.as_str_name(), "INSTANCE_STATUS_")
}

fn desired_name(i: &Instance) -> &'static str {
    short(i.desired_state().as_str_name(), "DESIRED_STATE_")
}

fn order_status(o: &Order) -> &'static str {
    short(o.status().as_str_name(), "ORDER_STATUS_")
}

fn subscription_status(s: &Subscription) -> &'static str {
    subscription_status_name(s.status())
}

fn subscription_status_name(s: SubscriptionStatus) -> &'static str {
    short(s.as_str_name(), "SUBSCRIPTION_STATUS_")
}

fn invoice_status(i: &Invoice) -> &'static str {
    short(i.status().as_str_name(), "INVOICE_STATUS_")
}

fn role_name(a: &Account) -> &'static str {
    short(a.role().as_str_name(), "ROLE_")
}

/// An aligned plain-text table: columns separated by two spaces, no trailing spaces.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate().take(columns) {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < columns {
                    line.push_str(&" ".repeat(w - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `Key:   value` lines with the values aligned.
fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let pad = " ".repeat(width - k.chars().count());
        out.push_str(format!("{k}:{pad}  {v}").trim_end());
        out.push('\n');
    }
    out
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("cannot encode JSON")?
    );
    Ok(())
}

fn money_json(m: Option<&Money>) -> Value {
    match m {
        Some(m) => json!({ "amount": m.amount, "currency": m.currency, "display": money(Some(m)) }),
        None => Value::Null,
    }
}

fn account_json(a: &Account) -> Value {
    json!({
        "id": a.id,
        "email": a.email,
        "customer_id": a.customer_id,
        "display_name": a.display_name,
        "role": role_name(a),
        "created_at": ts_json(a.created_at.as_ref()),
    })
}

fn plan_json(p: &Plan) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "monthly_price": money_json(p.monthly_price.as_ref()),
        "trial_days": p.trial_days,
        "cpu_millis": p.cpu_millis,
        "memory_mib": p.memory_mib,
        "storage_gib": p.storage_gib,
    })
}

fn app_json(a: &App) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "description": a.description,
        "version": a.version,
        "documentation_url": a.documentation_url,
        "plans": a.plans.iter().map(plan_json).collect::<Vec<_>>(),
    })
}

fn order_json(o: &Order) -> Value {
    json!({
        "id": o.id,
        "app_id": o.app_id,
        "plan_id": o.plan_id,
        "status": order_status(o),
        "failure_reason": o.failure_reason,
        "amount": money_json(o.amount.as_ref()),
        "subscription_id": o.subscription_id,
        "instance_id": o.instance_id,
        "idempotency_key": o.idempotency_key,
        "created_at": ts_json(o.created_at.as_ref()),
        "updated_at": ts_json(o.updated_at.as_ref()),
    })
}

fn instance_json(i: &Instance) -> Value {
    json!({
        "id": i.id,
        "app_id": i.app_id,
        "plan_id": i.plan_id,
        "status": instance_status_name(i.status()),
        "status_reason": i.status_reason,
        "desired_state": desired_name(i),
        "url": i.url,
        "hostname": i.hostname,
        "subscription_id": i.subscription_id,
        "order_id": i.order_id,
        "credentials": i.credentials.as_ref().map(|c| json!({
            "username": c.username,
            "password": c.password,
            "login_url": c.login_url,
        })),
        "created_at": ts_json(i.created_at.as_ref()),
        "updated_at": ts_json(i.updated_at.as_ref()),
        "ready_at": ts_json(i.ready_at.as_ref()),
        "suspended_by_billing": i.suspended_by_billing,
        "data_deleted_after": ts_json(i.data_deleted_after.as_ref()),
    })
}

fn subscription_json(s: &Subscription) -> Value {
    json!({
        "id": s.id,
        "app_id": s.app_id,
        "plan_id": s.plan_id,
        "status": subscription_status(s),
        "price": money_json(s.price.as_ref()),
        "current_period_start": ts_json(s.current_period_start.as_ref()),
        "current_period_end": ts_json(s.current_period_end.as_ref()),
        "auto_renew": s.auto_renew,
        "cancel_at_period_end": s.cancel_at_period_end,
        "order_id": s.order_id,
        "created_at": ts_json(s.created_at.as_ref()),
        "trial_end": ts_json(s.trial_end.as_ref()),
        "next_plan_id": s.next_plan_id,
        "instance_id": s.instance_id,
    })
}

fn invoice_json(i: &Invoice) -> Value {
    json!({
        "id": i.id,
        "number": i.number,
        "subscription_id": i.subscription_id,
        "period_start": ts_json(i.period_start.as_ref()),
        "period_end": ts_json(i.period_end.as_ref()),
        "amount": money_json(i.amount.as_ref()),
        "status": invoice_status(i),
        "created_at": ts_json(i.created_at.as_ref()),
        "paid_at": ts_json(i.paid_at.as_ref()),
        "payment_provider": i.payment_provider,
        "payment_reference": i.payment_reference,
    })
}

fn token_json(k: &ApiToken) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "state": token_state(k, Utc::now()),
        "created_at": ts_json(k.created_at.as_ref()),
        "expires_at": ts_json(k.expires_at.as_ref()),
        "revoked_at": ts_json(k.revoked_at.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};

    #[derive(Parser)]
    #[command(name = "kapal")]
    struct TestCli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("kapal").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("kapal-cli-test-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn session(endpoint: &str, token: &str, expires_at: Option<DateTime<Utc>>) -> Session {
        Session {
            endpoint: endpoint.to_string(),
            token: token.to_string(),
            expires_at,
            account_id: "a1".to_string(),
            email: "sari@example.com".to_string(),
        }
    }

    #[test]
    fn rupiah_is_formatted_the_indonesian_way() {
        assert_eq!(format_rupiah(0), "Rp 0");
        assert_eq!(format_rupiah(999), "Rp 999");
        assert_eq!(format_rupiah(1_000), "Rp 1.000");
        assert_eq!(format_rupiah(79_000), "Rp 79.000");
        assert_eq!(format_rupiah(149_000), "Rp 149.000");
        assert_eq!(format_rupiah(1_250_000), "Rp 1.250.000");
        assert_eq!(format_rupiah(-5_000), "-Rp 5.000");
        assert_eq!(format_rupiah(i64::MIN), "-Rp 9.223.372.036.854.775.808");
        assert_eq!(money(Some(&kapal::wire::idr(79_000))), "Rp 79.000");
        assert_eq!(
            money(Some(&Money {
                amount: 12_500,
                currency: "USD".to_string()
            })),
            "12.500 USD"
        );
        assert_eq!(money(None), "-");
    }

    #[test]
    fn resources_read_like_a_person_would_say_them() {
        assert_eq!(cpu(500), "0.5 vCPU");
        assert_eq!(cpu(250), "0.25 vCPU");
        assert_eq!(cpu(1000), "1 vCPU");
        assert_eq!(cpu(1500), "1.5 vCPU");
        assert_eq!(memory(512), "512 MiB");
        assert_eq!(memory(2048), "2 GiB");
        assert_eq!(memory(1536), "1536 MiB");
        assert_eq!(storage(5), "5 GiB");
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5m3").is_err());
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(5430)), "1h30m30s");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
    }

    #[test]
    fn tables_are_aligned_without_trailing_spaces() {
        let mut t = Table::new(&["ID", "STATUS", "NOTE"]);
        t.row(vec!["1".into(), "READY".into(), String::new()]);
        t.row(vec!["22".into(), "PROVISIONING".into(), "pulling".into()]);
        assert_eq!(
            t.render(),
            "ID  STATUS        NOTE\n1   READY\n22  PROVISIONING  pulling\n"
        );
        assert_eq!(
            key_values(&[("URL", "https://x".into()), ("Password", "p".into())]),
            "URL:       https://x\nPassword:  p\n"
        );
    }

    #[test]
    fn session_is_saved_readable_by_the_user_only() {
        let tmp = TempDir::new();
        let dir = tmp.0.join("kapal");
        let store = SessionStore::at(&dir);
        assert_eq!(store.load(), Ok(None));
        let s = session("https://api.kapal.example", "secret-1", None);
        let path = store.save(&s).expect("save");
        assert_eq!(path, dir.join(SESSION_FILE));
        assert_eq!(store.load(), Ok(Some(s)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let file_mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(file_mode & 0o777, 0o600);
            let dir_mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
            assert_eq!(dir_mode & 0o777, 0o700);
            // A file that exists with looser permissions is replaced by a private one.
            set_mode(&path, 0o644).expect("chmod");
            let s2 = session("https://api.kapal.example", "secret-2", None);
            store.save(&s2).expect("save again");
            let file_mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(file_mode & 0o777, 0o600);
            assert_eq!(store.load(), Ok(Some(s2)));
        }
        // Only the session file is left: no temporary files.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SESSION_FILE)]);
        assert!(store.remove().expect("remove"));
        assert!(!store.remove().expect("remove again"));
        assert_eq!(store.load(), Ok(None));
    }

    #[test]
    fn unreadable_session_says_where_it_is() {
        let tmp = TempDir::new();
        std::fs::write(tmp.0.join(SESSION_FILE), "not json").expect("write");
        let stored = SessionStore::at(&tmp.0).load();
        let why = stored.clone().expect_err("corrupt file");
        assert!(why.contains(SESSION_FILE), "{why}");
        let (endpoint, token) = resolve(None, None, &stored, Utc::now());
        assert_eq!(endpoint, DEFAULT_ENDPOINT);
        let msg = token.expect_err("no token");
        assert!(msg.starts_with("not logged in"), "{msg}");
        assert!(msg.contains("kapal login"), "{msg}");
    }

    #[test]
    fn token_precedence() {
        let now = Utc::now();
        let later = Some(now + chrono::Duration::hours(1));
        let stored = Ok(Some(session("https://api.kapal.example/", "saved", later)));

        // The flag (or KAPAL_TOKEN, which clap puts there) wins over the saved session.
        let (endpoint, token) = resolve(None, Some("flag"), &stored, now);
        assert_eq!(endpoint, "https://api.kapal.example");
        assert_eq!(token, Ok("flag".to_string()));

        // No endpoint given: the saved session's endpoint and token.
        let (endpoint, token) = resolve(None, None, &stored, now);
        assert_eq!(endpoint, "https://api.kapal.example");
        assert_eq!(token, Ok("saved".to_string()));

        // The same endpoint given (trailing slash aside): the saved token.
        let (_, token) = resolve(Some("https://api.kapal.example"), None, &stored, now);
        assert_eq!(token, Ok("saved".to_string()));

        // Another endpoint: the saved token is not sent there.
        let (endpoint, token) = resolve(Some("http://127.0.0.1:8080"), None, &stored, now);
        assert_eq!(endpoint, "http://127.0.0.1:8080");
        let msg = token.expect_err("other endpoint");
        assert!(
            msg.starts_with("not logged in to http://127.0.0.1:8080"),
            "{msg}"
        );

        // But a token flag works for any endpoint.
        let (_, token) = resolve(Some("http://127.0.0.1:8080"), Some("flag"), &stored, now);
        assert_eq!(token, Ok("flag".to_string()));

        // An empty flag counts as none.
        let (_, token) = resolve(None, Some("  "), &stored, now);
        assert_eq!(token, Ok("saved".to_string()));

        // Nothing saved, nothing given.
        let (endpoint, token) = resolve(None, None, &Ok(None), now);
        assert_eq!(endpoint, DEFAULT_ENDPOINT);
        assert_eq!(token, Err(NOT_LOGGED_IN.to_string()));

        // An expired session is not used.
        let expired = Ok(Some(session(
            DEFAULT_ENDPOINT,
            "old",
            Some(now - chrono::Duration::minutes(1)),
        )));
        let msg = resolve(None, None, &expired, now).1.expect_err("expired");
        assert!(msg.contains("expired"), "{msg}");
    }

    #[test]
    fn bearer_interceptor_adds_the_header() {
        let mut with = Bearer(Some("Bearer abc".parse().expect("header value")));
        let req = with.call(Request::new(())).expect("intercept");
        assert_eq!(
            req.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer abc")
        );
        let mut without = Bearer(None);
        let req = without.call(Request::new(())).expect("intercept");
        assert!(req.metadata().get("authorization").is_none());
    }

    #[test]
    fn grpc_errors_read_message_and_code() {
        let e = rpc_error("http://x", &Status::not_found("no instance abc"));
        assert_eq!(e.to_string(), "no instance abc (NOT_FOUND)");
        let e = rpc_error("http://x", &Status::new(Code::Unauthenticated, ""));
        assert_eq!(
            e.to_string(),
            format!("{} (UNAUTHENTICATED)", Code::Unauthenticated.description())
        );
    }

    #[tokio::test]
    async fn unreachable_gateway_is_a_readable_error() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let g = Global {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            token: Some("t".to_string()),
            ..Global::default()
        };
        let ctx = Ctx::new(&g).expect("ctx");
        let err = ctx
            .catalog()
            .list_apps(ListAppsRequest {})
            .await
            .or_fail(&ctx)
            .expect_err("nothing listens");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("cannot reach Kapal at http://127.0.0.1:{port}")),
            "{msg}"
        );
        assert!(msg.ends_with("(UNAVAILABLE)"), "{msg}");
    }

    #[test]
    fn invalid_endpoints_are_refused() {
        assert!(channel("ftp://x", None).is_err());
        assert!(channel("not a url", None).is_err());
        let e = channel("http://127.0.0.1:8080", Some(Path::new("/nonexistent.pem")))
            .expect_err("ca-cert with http");
        assert!(e.to_string().contains("https://"), "{e}");
        let e = channel("https://x.example", Some(Path::new("/nonexistent.pem")))
            .expect_err("missing CA file");
        assert!(format!("{e:#}").contains("/nonexistent.pem"), "{e:#}");
    }

    fn at(rfc: &str) -> Option<prost_types::Timestamp> {
        let t = DateTime::parse_from_rfc3339(rfc).expect("time");
        Some(prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: 0,
        })
    }

    const GIB: i64 = 1024 * 1024 * 1024;
    const MIB: i64 = 1024 * 1024;

    #[test]
    fn bytes_and_percentages_read_like_a_person_would_say_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1000), "1000 B");
        assert_eq!(bytes(512 * MIB), "512 MiB");
        assert_eq!(bytes(3 * GIB / 2), "1.5 GiB");
        assert_eq!(bytes(5 * GIB), "5 GiB");
        assert_eq!(bytes(123_456_789), "117.7 MiB");
        assert_eq!(bytes(-1), "0 B");
        assert_eq!(cpu_amount(250), "0.25 vCPU");
        assert_eq!(cpu_amount(4000), "4 vCPU");
        assert_eq!(cpu_amount(-3), "0 vCPU");
        assert_eq!(percent(120, 500), " (24%)");
        assert_eq!(percent(1, 3), " (33%)");
        assert_eq!(percent(2, 3), " (67%)");
        assert_eq!(percent(5, 0), "", "no limit: no percentage");
        assert_eq!(percent_value(i64::MAX, 1), i64::MAX);
    }

    fn usage_with_metrics() -> InstanceUsage {
        InstanceUsage {
            instance_id: "i1".to_string(),
            metrics_available: true,
            metrics_note: String::new(),
            cpu_millis: Some(120),
            memory_bytes: Some(300 * MIB),
            cpu_limit_millis: 500,
            memory_limit_bytes: 512 * MIB,
            storage_capacity_bytes: 5 * GIB,
            storage_used_bytes: Some(GIB + GIB / 5),
            observed_at: at("2026-11-25T10:00:00Z"),
        }
    }

    #[test]
    fn usage_shows_use_against_the_plan_limits() {
        assert_eq!(
            key_values(&usage_lines(&usage_with_metrics())),
            "Instance:  i1\n\
             CPU:       0.12 vCPU of 0.5 vCPU (24%)\n\
             Memory:    300 MiB of 512 MiB (59%)\n\
             Storage:   1.2 GiB used of 5 GiB (24%)\n\
             Observed:  2026-11-25T10:00:00Z\n"
        );
        let v = usage_json(&usage_with_metrics());
        assert_eq!(v["cpu_millis"], json!(120));
        assert_eq!(v["memory_bytes"], json!(300 * MIB));
        assert_eq!(v["storage_used_bytes"], json!(GIB + GIB / 5));
        assert_eq!(v["observed_at"], json!("2026-11-25T10:00:00Z"));
    }

    #[test]
    fn usage_without_metrics_says_why_and_never_shows_zeros() {
        let u = InstanceUsage {
            metrics_available: false,
            metrics_note: "the cluster has no metrics API".to_string(),
            cpu_millis: None,
            memory_bytes: None,
            storage_used_bytes: None,
            ..usage_with_metrics()
        };
        let text = key_values(&usage_lines(&u));
        assert_eq!(
            text,
            "Instance:  i1\n\
             CPU:       not known (limit 0.5 vCPU)\n\
             Memory:    not known (limit 512 MiB)\n\
             Metrics:   not available: the cluster has no metrics API\n\
             Storage:   5 GiB (use not reported by the cluster)\n\
             Observed:  2026-11-25T10:00:00Z\n"
        );
        let v = usage_json(&u);
        assert_eq!(v["cpu_millis"], Value::Null);
        assert_eq!(v["memory_bytes"], Value::Null);
        assert_eq!(v["storage_used_bytes"], Value::Null);
        assert_eq!(v["metrics_note"], json!("the cluster has no metrics API"));

        // A server that sets a figure but says metrics are unavailable: the figure is not shown.
        let odd = InstanceUsage {
            cpu_millis: Some(0),
            metrics_note: String::new(),
            storage_capacity_bytes: 0,
            ..u
        };
        let text = key_values(&usage_lines(&odd));
        assert!(
            text.contains("CPU:       not known (limit 0.5 vCPU)"),
            "{text}"
        );
        assert!(
            text.contains("Metrics:   not available: the cluster did not report"),
            "{text}"
        );
        assert!(text.contains("Storage:   no volume bound yet"), "{text}");
        assert!(!text.contains("0 vCPU of"), "{text}");
        assert_eq!(usage_json(&odd)["cpu_millis"], Value::Null);
    }

    fn instance() -> Instance {
        Instance {
            id: "i1".to_string(),
            app_id: "n8n".to_string(),
            plan_id: "starter".to_string(),
            status: InstanceStatus::Suspended as i32,
            created_at: at("2026-11-01T08:00:00Z"),
            ..Instance::default()
        }
    }

    #[test]
    fn instance_shows_billing_suspension_and_data_deletion() {
        let plain = key_values(&instance_lines(&instance()));
        assert!(!plain.contains("Suspended by billing"), "{plain}");
        assert!(!plain.contains("Data deleted after"), "{plain}");
        let v = instance_json(&instance());
        assert_eq!(v["suspended_by_billing"], json!(false));
        assert_eq!(v["data_deleted_after"], Value::Null);

        let i = Instance {
            suspended_by_billing: true,
            data_deleted_after: at("2026-12-25T08:00:00Z"),
            ..instance()
        };
        let text = key_values(&instance_lines(&i));
        assert!(
            text.contains("Suspended by billing:  yes — pay or reactivate the subscription\n"),
            "{text}"
        );
        assert!(
            text.contains("Data deleted after:    2026-12-25T08:00:00Z\n"),
            "{text}"
        );
        let v = instance_json(&i);
        assert_eq!(v["suspended_by_billing"], json!(true));
        assert_eq!(v["data_deleted_after"], json!("2026-12-25T08:00:00Z"));
    }

    fn subscription() -> Subscription {
        Subscription {
            id: "s1".to_string(),
            app_id: "n8n".to_string(),
            plan_id: "starter".to_string(),
            status: SubscriptionStatus::Active as i32,
            price: Some(kapal::wire::idr(79_000)),
            current_period_end: at("2026-12-01T00:00:00Z"),
            instance_id: "i1".to_string(),
            ..Subscription::default()
        }
    }

    #[test]
    fn subscriptions_show_their_instance_and_pending_plan() {
        let s = Subscription {
            next_plan_id: "pro".to_string(),
            ..subscription()
        };
        let v = subscription_json(&s);
        assert_eq!(v["instance_id"], json!("i1"));
        assert_eq!(v["next_plan_id"], json!("pro"));
        let text = subscription_lines(&s);
        assert!(text.contains("Instance:      i1\n"), "{text}");
        assert!(text.contains("Next plan:     pro\n"), "{text}");
        assert!(subscription_lines(&subscription()).contains("Next plan:     -\n"));
    }

    #[test]
    fn plan_changes_say_when_they_take_effect() {
        let paid = Subscription {
            next_plan_id: "pro".to_string(),
            ..subscription()
        };
        assert_eq!(
            plan_change_sentence(&paid),
            "Subscription s1 moves from plan starter to plan pro at the next renewal (2026-12-01T00:00:00Z)."
        );
        let trial = Subscription {
            plan_id: "trial".to_string(),
            status: SubscriptionStatus::Trialing as i32,
            trial_end: at("2026-11-30T00:00:00Z"),
            next_plan_id: "starter".to_string(),
            ..subscription()
        };
        assert_eq!(
            plan_change_sentence(&trial),
            "Subscription s1 moves to plan starter when the trial ends (2026-11-30T00:00:00Z): it is charged then and renews automatically."
        );
        assert_eq!(
            plan_change_sentence(&subscription()),
            "Subscription s1 stays on plan starter: no plan change is pending."
        );
    }

    #[test]
    fn subscription_events_read_from_to_and_cause() {
        let events = vec![
            SubscriptionEvent {
                at: at("2026-11-01T08:00:00Z"),
                from_status: SubscriptionStatus::Unspecified as i32,
                to_status: SubscriptionStatus::Trialing as i32,
                cause: "checkout".to_string(),
            },
            SubscriptionEvent {
                at: at("2026-11-15T08:00:00Z"),
                from_status: SubscriptionStatus::Trialing as i32,
                to_status: SubscriptionStatus::PastDue as i32,
                cause: "renewal payment failed: declined".to_string(),
            },
        ];
        assert_eq!(
            events_table(&events),
            "AT                    CHANGE                CAUSE\n\
             2026-11-01T08:00:00Z  - -> TRIALING         checkout\n\
             2026-11-15T08:00:00Z  TRIALING -> PAST_DUE  renewal payment failed: declined\n"
        );
        let v = subscription_event_json(&events[0]);
        assert_eq!(
            v,
            json!({
                "at": "2026-11-01T08:00:00Z",
                "from_status": null,
                "to_status": "TRIALING",
                "cause": "checkout",
            })
        );
    }

    #[test]
    fn operators_calls_say_an_admin_account_is_needed() {
        let e = operator_rpc_error(
            "http://x",
            &Status::permission_denied("admin role required"),
        );
        assert_eq!(
            e.to_string(),
            "this needs an operator (admin) account: admin role required (PERMISSION_DENIED)"
        );
        let e = operator_rpc_error("http://x", &Status::not_found("no instance i9"));
        assert_eq!(e.to_string(), "no instance i9 (NOT_FOUND)");
        // Customers' calls are unchanged.
        let e = rpc_error("http://x", &Status::permission_denied("nope"));
        assert_eq!(e.to_string(), "nope (PERMISSION_DENIED)");
    }

    #[test]
    fn usage_plan_change_and_events_parse() {
        assert!(matches!(
            parse(&["usage", "i1", "-o", "json"]),
            Ok(ClientCommand::Usage(a)) if a.id == "i1" && a.global.output == Output::Json
        ));
        assert!(matches!(
            parse(&["change-plan", "s1", "--plan", "pro"]),
            Ok(ClientCommand::ChangePlan(a)) if a.id == "s1" && a.plan == "pro"
        ));
        assert!(parse(&["change-plan", "s1"]).is_err(), "--plan is required");
        assert!(matches!(
            parse(&["events", "s1"]),
            Ok(ClientCommand::Events(a)) if a.id == "s1"
        ));
        assert!(parse(&["usage"]).is_err(), "the id is required");
    }

    #[test]
    fn commands_are_well_formed() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn order_parses_with_defaults_and_options() {
        match parse(&["order", "n8n", "--plan", "trial"]).expect("parse") {
            ClientCommand::Order(a) => {
                assert_eq!(a.app, "n8n");
                assert_eq!(a.plan, "trial");
                assert!(!a.wait);
                assert_eq!(a.timeout, Duration::from_secs(600));
                assert!(a.idempotency_key.is_none());
            }
            _ => panic!("not an order"),
        }
        match parse(&[
            "order",
            "ghost",
            "--plan",
            "starter",
            "--wait",
            "--timeout",
            "90s",
            "--idempotency-key",
            "key-12345",
            "--endpoint",
            "https://api.kapal.example",
            "--token",
            "tok",
            "-o",
            "json",
        ])
        .expect("parse")
        {
            ClientCommand::Order(a) => {
                assert!(a.wait);
                assert_eq!(a.timeout, Duration::from_secs(90));
                assert_eq!(a.idempotency_key.as_deref(), Some("key-12345"));
                assert_eq!(
                    a.global.endpoint.as_deref(),
                    Some("https://api.kapal.example")
                );
                assert_eq!(a.global.token.as_deref(), Some("tok"));
                assert_eq!(a.global.output, Output::Json);
            }
            _ => panic!("not an order"),
        }
        assert!(parse(&["order", "n8n"]).is_err(), "--plan is required");
        assert!(parse(&["order", "n8n", "--plan", "trial", "--timeout", "soon"]).is_err());
        assert!(parse(&["orders", "--output", "yaml"]).is_err());
    }

    #[test]
    fn other_commands_parse() {
        assert!(matches!(
            parse(&["login", "--email", "a@b.c", "--password", "pw"]),
            Ok(ClientCommand::Login(a)) if a.email == "a@b.c" && a.password.password.as_deref() == Some("pw")
        ));
        assert!(matches!(
            parse(&["signup", "--email", "a@b.c", "--name", "Sari"]),
            Ok(ClientCommand::Signup(a)) if a.name.as_deref() == Some("Sari")
        ));
        assert!(parse(&["login"]).is_err(), "--email is required");
        assert!(matches!(parse(&["logout"]), Ok(ClientCommand::Logout(_))));
        assert!(matches!(parse(&["whoami"]), Ok(ClientCommand::Whoami(_))));
        assert!(matches!(
            parse(&["catalog", "-o", "json"]),
            Ok(ClientCommand::Catalog(g)) if g.output == Output::Json
        ));
        assert!(matches!(parse(&["app", "n8n"]), Ok(ClientCommand::App(a)) if a.app == "n8n"));
        assert!(matches!(
            parse(&["instances"]),
            Ok(ClientCommand::Instances(_))
        ));
        assert!(
            matches!(parse(&["instance", "i1"]), Ok(ClientCommand::Instance(a)) if a.id == "i1")
        );
        assert!(matches!(
            parse(&["watch", "i1"]),
            Ok(ClientCommand::Watch(_))
        ));
        assert!(matches!(parse(&["stop", "i1"]), Ok(ClientCommand::Stop(_))));
        assert!(matches!(
            parse(&["start", "i1"]),
            Ok(ClientCommand::Start(_))
        ));
        assert!(matches!(
            parse(&["restart", "i1"]),
            Ok(ClientCommand::Restart(_))
        ));
        assert!(matches!(
            parse(&["delete", "i1", "--yes"]),
            Ok(ClientCommand::Delete(a)) if a.yes && a.id == "i1"
        ));
        assert!(parse(&["stop"]).is_err(), "the id is required");
        assert!(matches!(
            parse(&["subscriptions"]),
            Ok(ClientCommand::Subscriptions(_))
        ));
        assert!(matches!(
            parse(&["invoices", "--subscription", "s1"]),
            Ok(ClientCommand::Invoices(a)) if a.subscription.as_deref() == Some("s1")
        ));
        assert!(matches!(parse(&["cancel", "s1"]), Ok(ClientCommand::Cancel(a)) if a.id == "s1"));
        assert!(matches!(
            parse(&["auto-renew", "s1", "off"]),
            Ok(ClientCommand::AutoRenew(a)) if a.state == OnOff::Off
        ));
        assert!(matches!(
            parse(&["auto-renew", "s1", "on"]),
            Ok(ClientCommand::AutoRenew(a)) if a.state == OnOff::On
        ));
        assert!(parse(&["auto-renew", "s1", "maybe"]).is_err());
        assert!(matches!(
            parse(&["token", "create", "ci", "--ttl-days", "30"]),
            Ok(ClientCommand::Token(TokenCommand::Create(a))) if a.name == "ci" && a.ttl_days == Some(30)
        ));
        assert!(matches!(
            parse(&["token", "list"]),
            Ok(ClientCommand::Token(TokenCommand::List(_)))
        ));
        assert!(matches!(
            parse(&["token", "revoke", "t1"]),
            Ok(ClientCommand::Token(TokenCommand::Revoke(a))) if a.id == "t1"
        ));
    }
}
