//! How the client reaches Kapal: the gateway's endpoint and the token to call with (flags, else
//! the session `kapal login` saved), the channel (TLS for https://), the `Bearer` interceptor,
//! the saved session on disk, gRPC errors as messages a person can act on, and the pager that
//! follows a listing's page tokens.
//!
//! Errors: every failure becomes an `anyhow::Error`; a gRPC error reads `<message> (<CODE>)`.
//! `main` prints it as `error: ...` and exits with status 1.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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
use kapal::proto::v1::operator_service_client::OperatorServiceClient;
use kapal::proto::v1::order_service_client::OrderServiceClient;
use kapal::proto::v1::subscription_service_client::SubscriptionServiceClient;
use kapal::proto::v1::support_admin_service_client::SupportAdminServiceClient;
use kapal::proto::v1::support_service_client::SupportServiceClient;

use crate::args::{Global, Output};
use crate::output::{Render, rfc3339};

/// The gateway used when neither `--endpoint`/`KAPAL_ENDPOINT` nor a saved session names one.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";
/// The file, in the config directory, holding the session saved by `kapal login`.
const SESSION_FILE: &str = "session.json";
/// Deadline of one call (until the response starts, for streams).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const NOT_LOGGED_IN: &str = "not logged in: run `kapal login` or set KAPAL_TOKEN";

// ---------------------------------------------------------------------------------------------
// Connection, authentication and errors
// ---------------------------------------------------------------------------------------------

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Svc = InterceptedService<Channel, Bearer>;

/// What a command needs to call the gateway: where, with which token, and how to print.
pub struct Ctx {
    pub endpoint: String,
    pub channel: Channel,
    /// The token to call with, or why there is none (a message for the user).
    pub token: Result<String, String>,
    pub output: Output,
    pub store: SessionStore,
}

impl Ctx {
    pub fn new(g: &Global) -> anyhow::Result<Self> {
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

    /// Whether `--output json` was asked for. Printing goes through [`Ctx::print`]; this is for
    /// what the format changes besides the printing (an exit status, a notice on stderr).
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    pub fn anonymous(&self) -> Svc {
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

    pub fn accounts(&self) -> anyhow::Result<AccountServiceClient<Svc>> {
        Ok(AccountServiceClient::new(self.authed()?))
    }
    pub fn orders(&self) -> anyhow::Result<OrderServiceClient<Svc>> {
        Ok(OrderServiceClient::new(self.authed()?))
    }
    pub fn instances(&self) -> anyhow::Result<InstanceServiceClient<Svc>> {
        Ok(InstanceServiceClient::new(self.authed()?))
    }
    pub fn subscriptions(&self) -> anyhow::Result<SubscriptionServiceClient<Svc>> {
        Ok(SubscriptionServiceClient::new(self.authed()?))
    }
    pub fn catalog(&self) -> CatalogServiceClient<Svc> {
        CatalogServiceClient::new(self.anonymous())
    }
    pub fn admin(&self) -> anyhow::Result<AdminServiceClient<Svc>> {
        Ok(AdminServiceClient::new(self.authed()?))
    }
    pub fn operator(&self) -> anyhow::Result<OperatorServiceClient<Svc>> {
        Ok(OperatorServiceClient::new(self.authed()?))
    }
    pub fn billing_admin(&self) -> anyhow::Result<BillingAdminServiceClient<Svc>> {
        Ok(BillingAdminServiceClient::new(self.authed()?))
    }
    pub fn support(&self) -> anyhow::Result<SupportServiceClient<Svc>> {
        Ok(SupportServiceClient::new(self.authed()?))
    }
    pub fn support_admin(&self) -> anyhow::Result<SupportAdminServiceClient<Svc>> {
        Ok(SupportAdminServiceClient::new(self.authed()?))
    }

    /// A gRPC error as a message for the user: `<message> (<CODE>)`.
    pub fn rpc_error(&self, s: &Status) -> anyhow::Error {
        rpc_error(&self.endpoint, s)
    }

    /// Prints a command's answer, as text or JSON as `--output` says.
    pub fn print(&self, r: &impl Render) -> anyhow::Result<()> {
        self.output.print(r)
    }

    /// Prints a progress line: on stdout for tables, on stderr with JSON (stdout stays JSON).
    pub fn progress(&self, line: &str) {
        self.output.progress(line);
    }
}

/// Unwraps a unary response or turns its error into a message for the user.
pub trait RpcResult<T> {
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
pub fn operator_rpc_error(endpoint: &str, s: &Status) -> anyhow::Error {
    let e = rpc_error(endpoint, s);
    if s.code() == Code::PermissionDenied {
        anyhow!("this needs an operator (admin) account: {e}")
    } else {
        e
    }
}

/// `<message> (<CODE>)`; for a failure to reach the gateway, says where and why.
pub fn rpc_error(endpoint: &str, s: &Status) -> anyhow::Error {
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
pub fn transient(s: &Status) -> bool {
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
pub fn normalize_endpoint(e: &str) -> String {
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
pub struct Session {
    pub endpoint: String,
    pub token: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub account_id: String,
    pub email: String,
}

/// Where sessions are saved: `KAPAL_CONFIG_DIR`, else `<config dir>/kapal`.
pub struct SessionStore {
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

    pub fn dir(&self) -> anyhow::Result<&Path> {
        self.dir
            .as_deref()
            .ok_or_else(|| anyhow!("cannot find your config directory: set KAPAL_CONFIG_DIR"))
    }

    fn path(&self) -> anyhow::Result<PathBuf> {
        Ok(self.dir()?.join(SESSION_FILE))
    }

    /// The saved session, `None` when there is none, or why it cannot be read.
    pub fn load(&self) -> Result<Option<Session>, String> {
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
    pub fn save(&self, session: &Session) -> anyhow::Result<PathBuf> {
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
    pub fn remove(&self) -> anyhow::Result<bool> {
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

// ---------------------------------------------------------------------------------------------
// Paging
// ---------------------------------------------------------------------------------------------

/// The most a list call returns per page (the services' maximum).
const MAX_PAGE: u32 = 500;
/// The `limit` of [`collect_pages`] for a listing read to its end.
pub const NO_LIMIT: u32 = u32::MAX;

/// The size of the next page when `have` of at most `limit` rows are in.
fn next_page_size(limit: u32, have: usize) -> u32 {
    let have = u32::try_from(have).unwrap_or(u32::MAX);
    limit.saturating_sub(have).min(MAX_PAGE)
}

/// Up to `limit` rows of a paged listing. `fetch(page_size, page_token)` returns one page and the
/// next page's token (empty on the last page). Also says whether the listing was cut at `limit`
/// while the server offered another page.
pub async fn collect_pages<T>(
    limit: u32,
    mut fetch: impl AsyncFnMut(u32, String) -> anyhow::Result<(Vec<T>, String)>,
) -> anyhow::Result<(Vec<T>, bool)> {
    let limit_rows = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let (rows, next) = fetch(next_page_size(limit, all.len()), page_token.clone()).await?;
        all.extend(rows);
        // A server that hands back the same token would have us loop forever.
        if next.is_empty() || next == page_token {
            let cut = all.len() > limit_rows;
            all.truncate(limit_rows);
            return Ok((all, cut));
        }
        if all.len() >= limit_rows {
            all.truncate(limit_rows);
            return Ok((all, true));
        }
        page_token = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapal::proto::v1::ListAppsRequest;

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
    fn pages_stop_at_the_limit() {
        assert_eq!(next_page_size(200, 0), 200);
        assert_eq!(next_page_size(1200, 0), 500);
        assert_eq!(next_page_size(1200, 1000), 200);
        assert_eq!(next_page_size(10, 10), 0);
    }

    /// A listing of `total` rows served in pages of at most `max_page`, recording each request.
    async fn list(
        total: u32,
        max_page: u32,
        limit: u32,
        requests: &mut Vec<(u32, String)>,
    ) -> (Vec<u32>, bool) {
        collect_pages(limit, async |page_size, page_token: String| {
            requests.push((page_size, page_token.clone()));
            let start: u32 = if page_token.is_empty() {
                0
            } else {
                page_token.parse().expect("token")
            };
            let end = (start + page_size.min(max_page)).min(total);
            let next = if end < total {
                end.to_string()
            } else {
                String::new()
            };
            Ok(((start..end).collect(), next))
        })
        .await
        .expect("list")
    }

    #[tokio::test]
    async fn paging_follows_tokens_up_to_the_limit() {
        // Everything fits in one page.
        let mut requests = Vec::new();
        assert_eq!(
            list(3, 500, 200, &mut requests).await,
            (vec![0, 1, 2], false)
        );
        assert_eq!(requests, vec![(200, String::new())]);

        // The server pages by 2: three calls, each asking only for what is still wanted.
        let mut requests = Vec::new();
        let (rows, cut) = list(10, 2, 5, &mut requests).await;
        assert_eq!(rows, vec![0, 1, 2, 3, 4]);
        assert!(cut, "there were more rows than the limit");
        assert_eq!(
            requests,
            vec![
                (5, String::new()),
                (3, "2".to_string()),
                (1, "4".to_string())
            ]
        );

        // Exactly the limit, and nothing after it.
        let mut requests = Vec::new();
        assert_eq!(
            list(4, 2, 4, &mut requests).await,
            ((0..4).collect(), false)
        );

        // A server that keeps returning the same token is not followed forever.
        let mut calls = 0;
        let (rows, cut) = collect_pages(100, async |_, _| {
            calls += 1;
            Ok((vec![calls], "same".to_string()))
        })
        .await
        .expect("list");
        assert_eq!((rows, cut), (vec![1, 2], false));

        // A failed page fails the listing.
        let e = collect_pages::<u32>(10, async |_, _| Err(anyhow!("boom (UNAVAILABLE)")))
            .await
            .expect_err("fails");
        assert_eq!(e.to_string(), "boom (UNAVAILABLE)");
    }
}
