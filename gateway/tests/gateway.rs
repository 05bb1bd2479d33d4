//! The gateway over real sockets, in front of real tonic servers on free ports that stand in for
//! the control-plane and billing. The stand-ins verify the gateway-signed principal with
//! `kapal::auth::VerifyPrincipal` and echo back what they saw (the caller, and whether any
//! `authorization` or `grpc-timeout` header reached them), so each test checks what an upstream
//! actually receives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kapal::auth::{self, InternalKey, PRINCIPAL_HEADER, Principal, Role, SIGNATURE_HEADER};
use kapal::proto::internal::v1 as internal;
use kapal::proto::internal::v1::identity_service_client::IdentityServiceClient;
use kapal::proto::internal::v1::identity_service_server::{IdentityService, IdentityServiceServer};
use kapal::proto::v1 as pb;
use kapal::proto::v1::account_service_client::AccountServiceClient;
use kapal::proto::v1::account_service_server::{AccountService, AccountServiceServer};
use kapal::proto::v1::catalog_service_client::CatalogServiceClient;
use kapal::proto::v1::catalog_service_server::{CatalogService, CatalogServiceServer};
use kapal::proto::v1::instance_service_client::InstanceServiceClient;
use kapal::proto::v1::instance_service_server::{InstanceService, InstanceServiceServer};
use kapal::proto::v1::subscription_service_client::SubscriptionServiceClient;
use kapal::proto::v1::subscription_service_server::{
    SubscriptionService, SubscriptionServiceServer,
};
use kapal_gateway::{Config, TlsConfig};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

const ALICE_TOKEN: &str = "good-token";
const BOB_TOKEN: &str = "other-token";
/// Alice's token that expires one second after each check.
const SHORT_TOKEN: &str = "short-token";
const ALICE: Uuid = Uuid::from_u128(0xa11ce);
const BOB: Uuid = Uuid::from_u128(0xb0b);
const ALICE_SESSION: Uuid = Uuid::from_u128(0x5e55_a11ce);

// ---------------------------------------------------------------------------------------------
// Stand-ins for the upstreams.

/// What the upstream saw: the verified caller's account id, or "anonymous".
fn caller<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<Principal>()
        .map_or("anonymous".to_string(), |p| p.account_id.to_string())
}

/// A header as the upstream received it, or "-".
fn header<T>(req: &Request<T>, name: &str) -> String {
    req.metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

fn not_needed() -> Status {
    Status::unimplemented("not needed by the gateway's tests")
}

/// The control-plane's identity service: knows three tokens, counts its calls.
#[derive(Clone, Default)]
struct Identity {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl IdentityService for Identity {
    async fn authenticate(
        &self,
        req: Request<internal::AuthenticateRequest>,
    ) -> Result<Response<internal::Principal>, Status> {
        // Only Kapal's own services (the gateway, signing as one) may ask.
        auth::service(&req)?;
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = chrono::Utc::now();
        let (account, token_id, customer_id, expires) = match req.get_ref().token.as_str() {
            ALICE_TOKEN => (
                ALICE,
                ALICE_SESSION,
                "calice01",
                now + chrono::Duration::hours(1),
            ),
            BOB_TOKEN => (
                BOB,
                Uuid::from_u128(2),
                "cbob0001",
                now + chrono::Duration::hours(1),
            ),
            SHORT_TOKEN => (
                ALICE,
                Uuid::from_u128(3),
                "calice01",
                now + chrono::Duration::seconds(1),
            ),
            _ => return Err(Status::unauthenticated("unknown token")),
        };
        Ok(Response::new(internal::Principal {
            account_id: account.to_string(),
            customer_id: customer_id.to_string(),
            role: pb::Role::Customer as i32,
            token_id: token_id.to_string(),
            expires_at: Some(prost_types::Timestamp {
                seconds: expires.timestamp(),
                nanos: 0,
            }),
            scope: pb::ApiTokenScope::Full as i32,
        }))
    }
}

#[derive(Clone, Default)]
struct Accounts;

#[tonic::async_trait]
impl AccountService for Accounts {
    async fn sign_up(
        &self,
        req: Request<pb::SignUpRequest>,
    ) -> Result<Response<pb::SessionResponse>, Status> {
        let email = req.get_ref().email.clone();
        Ok(Response::new(pb::SessionResponse {
            token: ALICE_TOKEN.into(),
            expires_at: None,
            account: Some(pb::Account {
                id: caller(&req),
                email,
                ..Default::default()
            }),
            verification_sent: false,
        }))
    }

    async fn log_in(
        &self,
        req: Request<pb::LogInRequest>,
    ) -> Result<Response<pb::SessionResponse>, Status> {
        Ok(Response::new(pb::SessionResponse {
            token: ALICE_TOKEN.into(),
            expires_at: None,
            account: Some(pb::Account {
                id: caller(&req),
                display_name: header(&req, "authorization"),
                ..Default::default()
            }),
            verification_sent: false,
        }))
    }

    async fn log_out(
        &self,
        req: Request<pb::LogOutRequest>,
    ) -> Result<Response<pb::LogOutResponse>, Status> {
        auth::customer(&req)?;
        Ok(Response::new(pb::LogOutResponse {}))
    }

    /// The caller as the upstream sees it; `display_name` says whether a bearer token got here.
    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let p = auth::customer(&req)?;
        Ok(Response::new(pb::Account {
            id: p.account_id.to_string(),
            customer_id: p.customer_id.clone(),
            email: p.token_id.to_string(),
            display_name: header(&req, "authorization"),
            role: pb::Role::Customer as i32,
            created_at: None,
            email_verified: false,
        }))
    }

    async fn create_api_token(
        &self,
        _: Request<pb::CreateApiTokenRequest>,
    ) -> Result<Response<pb::CreateApiTokenResponse>, Status> {
        Err(not_needed())
    }

    async fn list_api_tokens(
        &self,
        _: Request<pb::ListApiTokensRequest>,
    ) -> Result<Response<pb::ListApiTokensResponse>, Status> {
        Err(not_needed())
    }

    async fn revoke_api_token(
        &self,
        req: Request<pb::RevokeApiTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        auth::customer(&req)?;
        Ok(Response::new(pb::ApiToken {
            id: req.get_ref().id.clone(),
            ..Default::default()
        }))
    }

    async fn verify_email(
        &self,
        _: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        Ok(Response::new(pb::VerifyEmailResponse {}))
    }

    async fn resend_verification(
        &self,
        req: Request<pb::ResendVerificationRequest>,
    ) -> Result<Response<pb::ResendVerificationResponse>, Status> {
        auth::customer(&req)?;
        Ok(Response::new(pb::ResendVerificationResponse {}))
    }

    async fn request_password_reset(
        &self,
        _: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        _: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }

    async fn change_password(
        &self,
        _: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        Err(not_needed())
    }

    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(not_needed())
    }

    async fn revoke_session(
        &self,
        _: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        Err(not_needed())
    }
}

#[derive(Clone, Default)]
struct Catalog;

#[tonic::async_trait]
impl CatalogService for Catalog {
    async fn list_apps(
        &self,
        req: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsResponse>, Status> {
        Ok(Response::new(pb::ListAppsResponse {
            apps: vec![pb::App {
                id: "n8n".into(),
                name: caller(&req),
                description: header(&req, "authorization"),
                ..Default::default()
            }],
        }))
    }

    /// Echoes the app id; "big" answers with a 1 MiB description.
    async fn get_app(&self, req: Request<pb::GetAppRequest>) -> Result<Response<pb::App>, Status> {
        let id = req.get_ref().app_id.clone();
        let description = if id == "big" {
            "x".repeat(1024 * 1024)
        } else {
            header(&req, "authorization")
        };
        Ok(Response::new(pb::App {
            id,
            name: caller(&req),
            description,
            ..Default::default()
        }))
    }
}

#[derive(Clone, Default)]
struct Instances;

#[tonic::async_trait]
impl InstanceService for Instances {
    async fn list_instances(
        &self,
        _: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        Err(not_needed())
    }

    /// `status_reason` is the caller, `hostname` the grpc-timeout the upstream got; instance
    /// "slow" takes five seconds.
    async fn get_instance(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let p = auth::customer(&req)?.clone();
        if req.get_ref().instance_id == "slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok(Response::new(pb::Instance {
            id: req.get_ref().instance_id.clone(),
            status_reason: p.account_id.to_string(),
            hostname: header(&req, "grpc-timeout"),
            ..Default::default()
        }))
    }

    type WatchInstanceStream = ReceiverStream<Result<pb::InstanceEvent, Status>>;

    /// Three events, 300 ms apart.
    async fn watch_instance(
        &self,
        req: Request<pb::WatchInstanceRequest>,
    ) -> Result<Response<Self::WatchInstanceStream>, Status> {
        let p = auth::customer(&req)?.clone();
        let timeout = header(&req, "grpc-timeout");
        let id = req.get_ref().instance_id.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for i in 0..3 {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let event = pb::InstanceEvent {
                    instance: Some(pb::Instance {
                        id: id.clone(),
                        status_reason: format!("event {i} for {}", p.account_id),
                        hostname: timeout.clone(),
                        ..Default::default()
                    }),
                    at: None,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn restart_instance(
        &self,
        _: Request<pb::InstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        Err(not_needed())
    }

    async fn stop_instance(
        &self,
        _: Request<pb::InstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        Err(not_needed())
    }

    async fn start_instance(
        &self,
        _: Request<pb::InstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        Err(not_needed())
    }

    async fn get_instance_usage(
        &self,
        _: Request<pb::GetInstanceUsageRequest>,
    ) -> Result<Response<pb::InstanceUsage>, Status> {
        Err(not_needed())
    }

    async fn list_instance_events(
        &self,
        _: Request<pb::ListInstanceEventsRequest>,
    ) -> Result<Response<pb::ListInstanceEventsResponse>, Status> {
        Err(not_needed())
    }

    async fn get_instance_diagnostics(
        &self,
        _: Request<pb::GetInstanceDiagnosticsRequest>,
    ) -> Result<Response<pb::InstanceDiagnostics>, Status> {
        Err(not_needed())
    }

    async fn delete_instance(
        &self,
        _: Request<pb::InstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        Err(not_needed())
    }
}

/// Billing's subscriptions: `id` is the caller, `app_id` says who answered.
#[derive(Clone, Default)]
struct Subscriptions;

#[tonic::async_trait]
impl SubscriptionService for Subscriptions {
    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let p = auth::customer(&req)?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: vec![pb::Subscription {
                id: p.account_id.to_string(),
                app_id: "billing".into(),
                ..Default::default()
            }],
            next_page_token: String::new(),
        }))
    }

    async fn get_subscription(
        &self,
        _: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        Err(not_needed())
    }

    async fn cancel_subscription(
        &self,
        _: Request<pb::CancelSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        Err(not_needed())
    }

    async fn set_auto_renew(
        &self,
        _: Request<pb::SetAutoRenewRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        Err(not_needed())
    }

    async fn list_invoices(
        &self,
        _: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        Err(not_needed())
    }

    async fn change_plan(
        &self,
        _: Request<pb::ChangePlanRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        Err(not_needed())
    }

    async fn list_subscription_events(
        &self,
        _: Request<pb::ListSubscriptionEventsRequest>,
    ) -> Result<Response<pb::ListSubscriptionEventsResponse>, Status> {
        Err(not_needed())
    }
}

// ---------------------------------------------------------------------------------------------
// The test app: both stand-ins and a gateway in front of them.

struct TestApp {
    addr: SocketAddr,
    key: InternalKey,
    control_plane: String,
    identity_calls: Arc<AtomicUsize>,
}

async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, url)
}

impl TestApp {
    async fn start() -> TestApp {
        TestApp::with(|_| {}).await
    }

    /// Starts the stand-ins and a gateway whose config `adjust` may change. Rate limits are
    /// generous unless a test sets its own.
    async fn with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        kapal::serve::install_crypto_provider();
        let key = InternalKey::random();
        let verify = || auth::VerifyPrincipal(key.clone());
        let identity = Identity::default();
        let identity_calls = identity.calls.clone();

        let (cp_listener, control_plane) = listener().await;
        let cp = Server::builder()
            .add_service(verify().wrap(IdentityServiceServer::new(identity)))
            .add_service(verify().wrap(AccountServiceServer::new(Accounts)))
            .add_service(verify().wrap(CatalogServiceServer::new(Catalog)))
            .add_service(verify().wrap(InstanceServiceServer::new(Instances)));
        tokio::spawn(cp.serve_with_incoming(TcpListenerStream::new(cp_listener)));

        let (billing_listener, billing) = listener().await;
        let billing_server = Server::builder()
            .add_service(verify().wrap(SubscriptionServiceServer::new(Subscriptions)));
        tokio::spawn(billing_server.serve_with_incoming(TcpListenerStream::new(billing_listener)));

        let mut config = Config::new(control_plane.clone(), billing, key.clone());
        config.rate_limit_per_second = 1000;
        config.rate_limit_burst = 1000;
        adjust(&mut config);
        let gateway = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = gateway.local_addr().expect("addr");
        tokio::spawn(async move {
            kapal_gateway::run(config, gateway, std::future::pending())
                .await
                .expect("gateway");
        });
        TestApp {
            addr,
            key,
            control_plane,
            identity_calls,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A native gRPC (HTTP/2) channel to the gateway.
    async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to the gateway")
    }

    fn identity_calls(&self) -> usize {
        self.identity_calls.load(Ordering::SeqCst)
    }
}

type WebService = tonic_web::GrpcWebClientService<
    Client<HttpConnector, tonic_web::GrpcWebCall<tonic::body::Body>>,
>;

/// A grpc-web client as a browser library would be: HTTP/1.1 (or HTTP/2 when `http2`).
fn web(app: &TestApp, http2: bool) -> (WebService, http::Uri) {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(http2);
    let client = builder.build_http();
    let service = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .service(client);
    (service, app.url().parse().expect("uri"))
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req
}

fn alice() -> Principal {
    Principal {
        account_id: ALICE,
        customer_id: "calice01".into(),
        role: Role::Customer,
        token_id: ALICE_SESSION,
    }
}

fn bob_as_admin() -> Principal {
    Principal {
        account_id: BOB,
        customer_id: "cbob0001".into(),
        role: Role::Admin,
        token_id: Uuid::nil(),
    }
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            status
        }
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
    }
}

/// The milliseconds of a `grpc-timeout` value in `NNNm` form, as the gateway writes them.
fn millis(grpc_timeout: &str) -> u64 {
    grpc_timeout
        .strip_suffix('m')
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("grpc-timeout {grpc_timeout:?} is not in milliseconds"))
}

// ---------------------------------------------------------------------------------------------
// Routing and protocols.

#[tokio::test]
async fn routes_the_public_api_to_both_upstreams_over_native_grpc() {
    let app = TestApp::start().await;
    let channel = app.channel().await;

    // Control-plane, anonymous and public.
    let apps = CatalogServiceClient::new(channel.clone())
        .list_apps(pb::ListAppsRequest {})
        .await
        .expect("list apps")
        .into_inner()
        .apps;
    assert_eq!(apps[0].id, "n8n");
    assert_eq!(apps[0].name, "anonymous");

    // Control-plane, authenticated: the upstream sees Alice, verified, and no bearer token.
    let me = AccountServiceClient::new(channel.clone())
        .who_am_i(bearer(pb::WhoAmIRequest {}, ALICE_TOKEN))
        .await
        .expect("who am i")
        .into_inner();
    assert_eq!(me.id, ALICE.to_string());
    assert_eq!(me.customer_id, "calice01");
    assert_eq!(
        me.email,
        ALICE_SESSION.to_string(),
        "token id travels in the principal"
    );
    assert_eq!(
        me.display_name, "-",
        "the bearer token must not reach the upstream"
    );

    let instance = InstanceServiceClient::new(channel.clone())
        .get_instance(bearer(
            pb::GetInstanceRequest {
                instance_id: "i-1".into(),
            },
            BOB_TOKEN,
        ))
        .await
        .expect("get instance")
        .into_inner();
    assert_eq!(instance.status_reason, BOB.to_string());

    // Billing.
    let subscriptions = SubscriptionServiceClient::new(channel)
        .list_subscriptions(bearer(pb::ListSubscriptionsRequest::default(), ALICE_TOKEN))
        .await
        .expect("list subscriptions")
        .into_inner()
        .subscriptions;
    assert_eq!(subscriptions[0].app_id, "billing");
    assert_eq!(subscriptions[0].id, ALICE.to_string());
}

#[tokio::test]
async fn server_streaming_watch_streams_through_with_no_default_deadline() {
    // A default deadline shorter than the watch: it must not apply to a stream.
    let app = TestApp::with(|c| c.default_deadline = Duration::from_millis(200)).await;
    let mut client = InstanceServiceClient::new(app.channel().await);
    let started = Instant::now();
    let mut stream = client
        .watch_instance(bearer(
            pb::WatchInstanceRequest {
                instance_id: "i-9".into(),
            },
            ALICE_TOKEN,
        ))
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await {
        let instance = event.expect("event").instance.expect("instance");
        seen.push((started.elapsed(), instance));
    }
    assert_eq!(seen.len(), 3);
    for (i, (_, instance)) in seen.iter().enumerate() {
        assert_eq!(instance.status_reason, format!("event {i} for {ALICE}"));
        assert_eq!(instance.hostname, "-", "no grpc-timeout on a watch");
    }
    // Events arrive as they happen, not all at the end.
    assert!(
        seen[2].0 - seen[0].0 >= Duration::from_millis(500),
        "{seen:?}"
    );
}

async fn grpc_web_works(http2: bool) {
    let app = TestApp::with(|c| c.max_message_bytes = 1024).await;
    let (web, origin) = web(&app, http2);

    let app_reply = CatalogServiceClient::with_origin(web.clone(), origin.clone())
        .get_app(pb::GetAppRequest {
            app_id: "ghost".into(),
        })
        .await
        .expect("grpc-web get app")
        .into_inner();
    assert_eq!(app_reply.id, "ghost");
    assert_eq!(app_reply.name, "anonymous");

    let me = AccountServiceClient::with_origin(web.clone(), origin.clone())
        .who_am_i(bearer(pb::WhoAmIRequest {}, ALICE_TOKEN))
        .await
        .expect("grpc-web who am i")
        .into_inner();
    assert_eq!(me.id, ALICE.to_string());

    let subscriptions = SubscriptionServiceClient::with_origin(web.clone(), origin.clone())
        .list_subscriptions(bearer(pb::ListSubscriptionsRequest::default(), ALICE_TOKEN))
        .await
        .expect("grpc-web list subscriptions")
        .into_inner();
    assert_eq!(subscriptions.subscriptions[0].app_id, "billing");

    let mut stream = InstanceServiceClient::with_origin(web.clone(), origin.clone())
        .watch_instance(bearer(
            pb::WatchInstanceRequest {
                instance_id: "i-7".into(),
            },
            ALICE_TOKEN,
        ))
        .await
        .expect("grpc-web watch")
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(
            event
                .expect("event")
                .instance
                .expect("instance")
                .status_reason,
        );
    }
    assert_eq!(
        events,
        (0..3)
            .map(|i| format!("event {i} for {ALICE}"))
            .collect::<Vec<_>>()
    );

    // The gateway's own errors reach grpc-web clients as proper statuses.
    let status = assert_code(
        AccountServiceClient::with_origin(web.clone(), origin.clone())
            .who_am_i(pb::WhoAmIRequest {})
            .await,
        Code::Unauthenticated,
    );
    assert!(status.message().contains("Bearer"), "{status:?}");
    let status = assert_code(
        CatalogServiceClient::with_origin(web.clone(), origin.clone())
            .get_app(pb::GetAppRequest {
                app_id: "x".repeat(2000),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        status.message(),
        "request message is larger than the 1 KiB limit"
    );
    assert_code(
        IdentityServiceClient::with_origin(web, origin)
            .authenticate(internal::AuthenticateRequest {
                token: ALICE_TOKEN.into(),
            })
            .await,
        Code::Unimplemented,
    );
}

#[tokio::test]
async fn grpc_web_over_http1_serves_unary_streaming_and_errors() {
    grpc_web_works(false).await;
}

#[tokio::test]
async fn grpc_web_over_http2_serves_unary_streaming_and_errors() {
    grpc_web_works(true).await;
}

// ---------------------------------------------------------------------------------------------
// Identity.

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let app = TestApp::start().await;
    let channel = app.channel().await;
    let mut accounts = AccountServiceClient::new(channel.clone());

    let status = assert_code(
        accounts.who_am_i(pb::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
    assert!(
        status.message().contains("authorization: Bearer <token>"),
        "{status:?}"
    );
    let status = assert_code(
        accounts
            .who_am_i(bearer(pb::WhoAmIRequest {}, "made-up"))
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(
        status.message(),
        "the token is invalid, expired or revoked: log in again"
    );
    let mut basic = Request::new(pb::WhoAmIRequest {});
    basic.metadata_mut().insert(
        "authorization",
        "Basic YWxpY2U6cHc=".parse().expect("header"),
    );
    let status = assert_code(accounts.who_am_i(basic).await, Code::Unauthenticated);
    assert!(status.message().contains("Bearer <token>"), "{status:?}");

    assert_code(
        SubscriptionServiceClient::new(channel.clone())
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await,
        Code::Unauthenticated,
    );
    assert_code(
        InstanceServiceClient::new(channel.clone())
            .watch_instance(pb::WatchInstanceRequest {
                instance_id: "i-1".into(),
            })
            .await,
        Code::Unauthenticated,
    );
    // Only the made-up token was worth asking the identity service about.
    assert_eq!(app.identity_calls(), 1);

    // The public calls need no token, and a token sent anyway is not passed on.
    let session = accounts
        .log_in(pb::LogInRequest {
            email: "alice@example.com".into(),
            password: "correct horse 1".into(),
        })
        .await
        .expect("log in")
        .into_inner();
    assert_eq!(session.token, ALICE_TOKEN);
    let session = accounts
        .log_in(bearer(pb::LogInRequest::default(), "anything"))
        .await
        .expect("log in with a stray token")
        .into_inner();
    assert_eq!(session.account.expect("account").display_name, "-");
    accounts
        .sign_up(pb::SignUpRequest {
            email: "new@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("sign up");
    let mut catalog = CatalogServiceClient::new(channel);
    catalog
        .list_apps(pb::ListAppsRequest {})
        .await
        .expect("list apps");
    catalog
        .get_app(pb::GetAppRequest {
            app_id: "n8n".into(),
        })
        .await
        .expect("get app");
}

#[tokio::test]
async fn identity_headers_from_clients_are_stripped() {
    let app = TestApp::start().await;
    let channel = app.channel().await;
    // The worst case: a correctly signed principal (say, replayed from a leak).
    let mut forged = tonic::metadata::MetadataMap::new();
    app.key.sign_into(
        &bob_as_admin(),
        "/kapal.v1.CatalogService/GetApp",
        &mut forged,
    );
    let with_forgery = |mut req: Request<pb::GetAppRequest>| {
        for name in [PRINCIPAL_HEADER, SIGNATURE_HEADER] {
            req.metadata_mut()
                .insert(name, forged.get(name).expect("signed").clone());
        }
        req
    };
    let get_app = || pb::GetAppRequest {
        app_id: "n8n".into(),
    };

    // The test can fail: straight to the upstream, the forgery is believed.
    let direct = Endpoint::from_shared(app.control_plane.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect to the control-plane");
    let believed = CatalogServiceClient::new(direct)
        .get_app(with_forgery(Request::new(get_app())))
        .await
        .expect("direct get app")
        .into_inner();
    assert_eq!(believed.name, BOB.to_string());

    // Through the gateway, a public call arrives anonymous.
    let mut catalog = CatalogServiceClient::new(channel.clone());
    let seen = catalog
        .get_app(with_forgery(Request::new(get_app())))
        .await
        .expect("get app")
        .into_inner();
    assert_eq!(seen.name, "anonymous");

    // A garbage identity is dropped too, not refused.
    let mut garbage = Request::new(get_app());
    garbage
        .metadata_mut()
        .insert(PRINCIPAL_HEADER, "Ym9ndXM".parse().expect("header"));
    garbage
        .metadata_mut()
        .insert(SIGNATURE_HEADER, "00".parse().expect("header"));
    assert_eq!(
        catalog
            .get_app(garbage)
            .await
            .expect("get app")
            .into_inner()
            .name,
        "anonymous"
    );

    // An authenticated call arrives as the token's owner, whatever else was sent.
    let mut who = bearer(pb::WhoAmIRequest {}, ALICE_TOKEN);
    for name in [PRINCIPAL_HEADER, SIGNATURE_HEADER] {
        who.metadata_mut()
            .insert(name, forged.get(name).expect("signed").clone());
    }
    let me = AccountServiceClient::new(channel)
        .who_am_i(who)
        .await
        .expect("who am i")
        .into_inner();
    assert_eq!(me.id, ALICE.to_string());
    assert_eq!(me.customer_id, alice().customer_id);
}

#[tokio::test]
async fn tokens_are_cached_briefly_and_never_past_their_expiry() {
    let app = TestApp::with(|c| c.auth_cache_ttl = Duration::from_millis(400)).await;
    let mut accounts = AccountServiceClient::new(app.channel().await);
    let who = |token| bearer(pb::WhoAmIRequest {}, token);

    accounts.who_am_i(who(ALICE_TOKEN)).await.expect("first");
    accounts.who_am_i(who(ALICE_TOKEN)).await.expect("cached");
    assert_eq!(
        app.identity_calls(),
        1,
        "the second call is served from the cache"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    accounts
        .who_am_i(who(ALICE_TOKEN))
        .await
        .expect("after the ttl");
    assert_eq!(app.identity_calls(), 2, "checked again after the TTL");

    // A long TTL does not outlive the token: this one expires a second after each check.
    let app = TestApp::with(|c| c.auth_cache_ttl = Duration::from_secs(60)).await;
    let mut accounts = AccountServiceClient::new(app.channel().await);
    accounts.who_am_i(who(SHORT_TOKEN)).await.expect("first");
    accounts.who_am_i(who(SHORT_TOKEN)).await.expect("cached");
    assert_eq!(app.identity_calls(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    accounts
        .who_am_i(who(SHORT_TOKEN))
        .await
        .expect("re-checked");
    assert_eq!(
        app.identity_calls(),
        2,
        "the cache must not outlive the token"
    );
}

#[tokio::test]
async fn logging_out_and_revoking_drop_cached_tokens_at_once() {
    let app = TestApp::with(|c| c.auth_cache_ttl = Duration::from_secs(60)).await;
    let mut accounts = AccountServiceClient::new(app.channel().await);

    accounts
        .who_am_i(bearer(pb::WhoAmIRequest {}, ALICE_TOKEN))
        .await
        .expect("who am i");
    assert_eq!(app.identity_calls(), 1);
    accounts
        .log_out(bearer(pb::LogOutRequest {}, ALICE_TOKEN))
        .await
        .expect("log out");
    assert_eq!(
        app.identity_calls(),
        1,
        "log out itself uses the cached identity"
    );
    accounts
        .who_am_i(bearer(pb::WhoAmIRequest {}, ALICE_TOKEN))
        .await
        .expect("who am i");
    assert_eq!(
        app.identity_calls(),
        2,
        "after LogOut the token is checked again"
    );

    // Revoking an API token re-checks every cached token of the account, not of others.
    accounts
        .who_am_i(bearer(pb::WhoAmIRequest {}, BOB_TOKEN))
        .await
        .expect("bob");
    accounts
        .who_am_i(bearer(pb::WhoAmIRequest {}, SHORT_TOKEN))
        .await
        .expect("alice's other token");
    assert_eq!(app.identity_calls(), 4);
    accounts
        .revoke_api_token(bearer(
            pb::RevokeApiTokenRequest {
                id: Uuid::from_u128(3).to_string(),
            },
            ALICE_TOKEN,
        ))
        .await
        .expect("revoke");
    for token in [ALICE_TOKEN, SHORT_TOKEN, BOB_TOKEN] {
        accounts
            .who_am_i(bearer(pb::WhoAmIRequest {}, token))
            .await
            .expect("who am i");
    }
    assert_eq!(
        app.identity_calls(),
        6,
        "both of Alice's tokens are checked again, Bob's is still cached"
    );
}

// ---------------------------------------------------------------------------------------------
// What the gateway refuses.

#[tokio::test]
async fn internal_services_and_unknown_methods_are_unimplemented() {
    let app = TestApp::start().await;
    let channel = app.channel().await;
    let ask = || {
        bearer(
            internal::AuthenticateRequest {
                token: ALICE_TOKEN.into(),
            },
            ALICE_TOKEN,
        )
    };

    // The control-plane does serve it, to Kapal's services...
    let direct = Endpoint::from_shared(app.control_plane.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut signed = ask();
    app.key.sign_into(
        &Principal::service(),
        "/kapal.internal.v1.IdentityService/Authenticate",
        signed.metadata_mut(),
    );
    IdentityServiceClient::new(direct)
        .authenticate(signed)
        .await
        .expect("direct authenticate");

    // ...but never through the gateway, with or without a token or a forged service identity.
    let mut identity = IdentityServiceClient::new(channel.clone());
    let status = assert_code(identity.authenticate(ask()).await, Code::Unimplemented);
    assert!(
        status.message().contains("not a method of the Kapal API"),
        "{status:?}"
    );
    let mut forged = ask();
    app.key.sign_into(
        &Principal::service(),
        "/kapal.internal.v1.IdentityService/Authenticate",
        forged.metadata_mut(),
    );
    assert_code(identity.authenticate(forged).await, Code::Unimplemented);

    // A made-up method of a public service.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let made_up: Result<Response<pb::ListAppsResponse>, Status> = grpc
        .unary(
            Request::new(pb::ListAppsRequest {}),
            http::uri::PathAndQuery::from_static("/kapal.v1.CatalogService/DeleteEverything"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_code(made_up, Code::Unimplemented);
}

#[tokio::test]
async fn oversized_messages_are_invalid_argument_and_responses_are_not_limited() {
    let app = TestApp::start().await;
    let mut catalog = CatalogServiceClient::new(app.channel().await);

    let status = assert_code(
        catalog
            .get_app(pb::GetAppRequest {
                app_id: "x".repeat(65 * 1024),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        status.message(),
        "request message is larger than the 64 KiB limit"
    );
    // Just under the limit passes, and comes back whole.
    let id = "y".repeat(60 * 1024);
    let echoed = catalog
        .get_app(pb::GetAppRequest { app_id: id.clone() })
        .await
        .expect("under the limit")
        .into_inner();
    assert_eq!(echoed.id, id);
    // A response far over the request limit passes.
    let big = catalog
        .get_app(pb::GetAppRequest {
            app_id: "big".into(),
        })
        .await
        .expect("big response")
        .into_inner();
    assert_eq!(big.description.len(), 1024 * 1024);

    // Authenticated calls are limited the same way.
    let status = assert_code(
        InstanceServiceClient::new(app.channel().await)
            .get_instance(bearer(
                pb::GetInstanceRequest {
                    instance_id: "z".repeat(100 * 1024),
                },
                ALICE_TOKEN,
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("64 KiB"), "{status:?}");
}

#[tokio::test]
async fn rate_limits_apply_per_account_and_per_client_address() {
    let app = TestApp::with(|c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 3;
    })
    .await;
    let channel = app.channel().await;
    let mut accounts = AccountServiceClient::new(channel.clone());
    let mut catalog = CatalogServiceClient::new(channel);
    let who = |token| bearer(pb::WhoAmIRequest {}, token);

    // First use of each token: not yet known, so it counts against the address (2 of 3).
    accounts.who_am_i(who(ALICE_TOKEN)).await.expect("alice");
    accounts.who_am_i(who(BOB_TOKEN)).await.expect("bob");

    // Anonymous calls share the address's bucket: one left, then refused.
    catalog
        .list_apps(pb::ListAppsRequest {})
        .await
        .expect("last of the burst");
    let status = assert_code(
        catalog.list_apps(pb::ListAppsRequest {}).await,
        Code::ResourceExhausted,
    );
    let message = status.message();
    let wait: u64 = message
        .strip_prefix("rate limit exceeded: try again in ")
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected message {message:?}"));
    assert!((1..=1000).contains(&wait), "{message}");

    // Known accounts have buckets of their own: Alice's burst of three, then refused...
    for _ in 0..3 {
        accounts
            .who_am_i(who(ALICE_TOKEN))
            .await
            .expect("alice's burst");
    }
    assert_code(
        accounts.who_am_i(who(ALICE_TOKEN)).await,
        Code::ResourceExhausted,
    );
    // ...while Bob still has his.
    accounts
        .who_am_i(who(BOB_TOKEN))
        .await
        .expect("bob's own bucket");
}

/// Behind an ingress every anonymous caller arrives from the proxy's address: without trusted
/// proxies one client flooding LogIn (here: any anonymous call) locks everyone out. With the
/// proxy trusted, each client has its own bucket, and what a client writes into
/// `x-forwarded-for` itself changes nothing.
#[tokio::test]
async fn behind_a_trusted_proxy_one_flooding_client_does_not_lock_out_another() {
    let app = TestApp::with(|c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 3;
        // The test connects from loopback: it plays the ingress controller.
        c.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
    })
    .await;
    let mut catalog = CatalogServiceClient::new(app.channel().await);
    let from = |forwarded: &str| {
        let mut req = tonic::Request::new(pb::ListAppsRequest {});
        req.metadata_mut()
            .insert("x-forwarded-for", forwarded.parse().expect("header"));
        req
    };
    // The attacker floods, rotating what it writes in front of the address the proxy saw.
    let mut refused = 0;
    for i in 0..10 {
        let spoofed = format!("198.51.100.{i}, 203.0.113.66");
        if let Err(s) = catalog.list_apps(from(&spoofed)).await {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
            refused += 1;
        }
    }
    assert!(
        refused >= 6,
        "the flood is limited by its real address: {refused} of 10 refused"
    );
    // Another customer behind the same proxy is not.
    for _ in 0..3 {
        catalog
            .list_apps(from("192.0.2.10"))
            .await
            .expect("another client has its own bucket");
    }
}

/// Without trusted proxies the header is ignored: a client cannot escape its bucket by
/// claiming other addresses.
#[tokio::test]
async fn an_untrusted_x_forwarded_for_is_ignored() {
    let app = TestApp::with(|c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 3;
    })
    .await;
    let mut catalog = CatalogServiceClient::new(app.channel().await);
    let mut refused = 0;
    for i in 0..8 {
        let mut req = tonic::Request::new(pb::ListAppsRequest {});
        req.metadata_mut().insert(
            "x-forwarded-for",
            format!("198.51.100.{i}").parse().expect("header"),
        );
        if catalog.list_apps(req).await.is_err() {
            refused += 1;
        }
    }
    assert!(refused >= 4, "{refused} of 8 refused");
}

#[tokio::test]
async fn deadlines_are_defaulted_capped_and_enforced() {
    let app = TestApp::with(|c| {
        c.default_deadline = Duration::from_millis(500);
        c.max_deadline = Duration::from_secs(1);
    })
    .await;
    let mut instances = InstanceServiceClient::new(app.channel().await);
    let get = |id: &str, timeout: Option<Duration>| {
        let mut req = bearer(
            pb::GetInstanceRequest {
                instance_id: id.into(),
            },
            ALICE_TOKEN,
        );
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    };
    // The upstream is told the time left plus the gateway's 50 ms grace.
    let grace = 50;

    let seen = instances
        .get_instance(get("i-1", None))
        .await
        .expect("default");
    let told = millis(&seen.into_inner().hostname);
    assert!(
        told > 0 && told <= 500 + grace,
        "default deadline, told {told} ms"
    );

    let seen = instances
        .get_instance(get("i-1", Some(Duration::from_secs(3600))))
        .await
        .expect("capped");
    let told = millis(&seen.into_inner().hostname);
    assert!(
        told > 500 && told <= 1000 + grace,
        "capped deadline, told {told} ms"
    );

    let seen = instances
        .get_instance(get("i-1", Some(Duration::from_millis(200))))
        .await
        .expect("short");
    let told = millis(&seen.into_inner().hostname);
    assert!(told <= 200 + grace, "client's own deadline, told {told} ms");

    // A slow upstream: the capped deadline ends the call.
    let started = Instant::now();
    let status = assert_code(
        instances
            .get_instance(get("slow", Some(Duration::from_secs(3600))))
            .await,
        Code::DeadlineExceeded,
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert!(status.message().contains("1000 ms"), "{status:?}");

    // And the client's shorter deadline. A tonic channel would enforce that deadline itself, so
    // this client sends the header over a bare HTTP/2 connection: only the gateway times it.
    let bare: Client<HttpConnector, tonic::body::Body> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut bare = InstanceServiceClient::with_origin(bare, app.url().parse().expect("uri"));
    let started = Instant::now();
    let status = assert_code(
        bare.get_instance(get("slow", Some(Duration::from_millis(300))))
            .await,
        Code::DeadlineExceeded,
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(status.message().contains("300 ms"), "{status:?}");

    // No client deadline: the default ends it.
    let started = Instant::now();
    assert_code(
        instances.get_instance(get("slow", None)).await,
        Code::DeadlineExceeded,
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "took {took:?}"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable_and_says_nothing_more() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let app = TestApp::with(|c| c.billing = closed.clone().into()).await;
    let status = assert_code(
        SubscriptionServiceClient::new(app.channel().await)
            .list_subscriptions(bearer(pb::ListSubscriptionsRequest::default(), ALICE_TOKEN))
            .await,
        Code::Unavailable,
    );
    assert!(!status.message().contains("127.0.0.1"), "{status:?}");
}

// ---------------------------------------------------------------------------------------------
// Browsers, TLS, health.

/// One plain HTTP/1.1 request, as a browser would send it.
async fn raw(req: http::Request<Full<Bytes>>) -> http::Response<Bytes> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let res = client.request(req).await.expect("http request");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    http::Response::from_parts(parts, body)
}

fn preflight(app: &TestApp, origin: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(http::Method::OPTIONS)
        .uri(format!("{}/kapal.v1.AccountService/WhoAmI", app.url()))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout",
        )
        .body(Full::default())
        .expect("request")
}

fn header_text(res: &http::Response<Bytes>, name: &str) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// An empty WhoAmI over grpc-web from a page of `origin`.
fn who_am_i_from(app: &TestApp, origin: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("{}/kapal.v1.AccountService/WhoAmI", app.url()))
        .header("origin", origin)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        // An empty WhoAmIRequest: one uncompressed frame of zero bytes.
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("request")
}

#[tokio::test]
async fn cors_allows_no_other_origin_by_default() {
    // The console is served by the gateway itself, from the API's own origin: by default no
    // other origin's page may call the API (issue 14, item 12: it used to be `*`).
    let app = TestApp::start().await;
    for origin in ["https://console.kapal.example", "https://evil.example"] {
        let res = raw(preflight(&app, origin)).await;
        assert_eq!(
            header_text(&res, "access-control-allow-origin"),
            "",
            "{origin}"
        );
        let res = raw(who_am_i_from(&app, origin)).await;
        assert_eq!(
            header_text(&res, "access-control-allow-origin"),
            "",
            "{origin}"
        );
    }
}

#[tokio::test]
async fn cors_preflights_of_a_configured_origin_are_answered_and_grpc_status_is_exposed() {
    let app = TestApp::with(|c| {
        c.cors_allowed_origins = vec!["https://console.kapal.example".into()];
    })
    .await;
    let res = raw(preflight(&app, "https://console.kapal.example")).await;
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(
        header_text(&res, "access-control-allow-origin"),
        "https://console.kapal.example"
    );
    assert!(header_text(&res, "access-control-allow-methods").contains("post"));
    let allowed = header_text(&res, "access-control-allow-headers");
    for h in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
    ] {
        assert!(allowed.contains(h), "{h} in {allowed:?}");
    }

    // An actual grpc-web call from the page: CORS headers on the answer, grpc-status readable.
    let res = raw(who_am_i_from(&app, "https://console.kapal.example")).await;
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(
        header_text(&res, "access-control-allow-origin"),
        "https://console.kapal.example"
    );
    let exposed = header_text(&res, "access-control-expose-headers");
    for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(h), "{h} in {exposed:?}");
    }
    // No token: UNAUTHENTICATED (16), readable by the page.
    assert_eq!(header_text(&res, "grpc-status"), "16");

    // Another origin gets nothing a browser would accept.
    let res = raw(preflight(&app, "https://evil.example")).await;
    assert_eq!(header_text(&res, "access-control-allow-origin"), "");
    let res = raw(who_am_i_from(&app, "https://evil.example")).await;
    assert_eq!(header_text(&res, "access-control-allow-origin"), "");
}

#[tokio::test]
async fn cors_any_origin_is_an_explicit_choice() {
    let app = TestApp::with(|c| c.cors_allowed_origins = vec!["*".into()]).await;
    let res = raw(preflight(&app, "https://partner.example")).await;
    assert_eq!(header_text(&res, "access-control-allow-origin"), "*");
}

/// A built console (as `npm run build` leaves console/dist) inside a directory that also holds a
/// secret beside it, which no request may reach.
struct ConsoleDir {
    root: tempfile::TempDir,
}

const INDEX_HTML: &str = "<!doctype html><title>Kapal</title><script type=module src=./assets/index-Bx3k9_aQ.js></script>";
const SECRET: &str = "outside the console: never served";

impl ConsoleDir {
    fn new() -> ConsoleDir {
        let root = tempfile::tempdir().expect("tempdir");
        let dist = root.path().join("dist");
        std::fs::create_dir_all(dist.join("assets")).expect("mkdir");
        std::fs::write(dist.join("index.html"), INDEX_HTML).expect("index");
        // Big enough to be worth compressing.
        let script = "console.log('kapal');\n".repeat(500);
        std::fs::write(dist.join("assets/index-Bx3k9_aQ.js"), script).expect("script");
        std::fs::write(
            dist.join("favicon.svg"),
            "<svg xmlns='http://www.w3.org/2000/svg'/>",
        )
        .expect("icon");
        std::fs::write(root.path().join("secret.txt"), SECRET).expect("secret");
        ConsoleDir { root }
    }

    fn dist(&self) -> std::path::PathBuf {
        self.root.path().join("dist")
    }
}

fn get(app: &TestApp, path: &str) -> http::request::Builder {
    http::Request::builder()
        .method(http::Method::GET)
        .uri(format!("{}{path}", app.url()))
}

/// The headers every answer to a browser's page request carries.
fn assert_secured(res: &http::Response<Bytes>, what: &str) {
    let csp = header_text(res, "content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "{what}: {directive} in {csp:?}");
    }
    assert!(!csp.contains("unsafe"), "{what}: {csp:?}");
    assert!(!csp.contains('*'), "{what}: {csp:?}");
    assert_eq!(
        header_text(res, "x-content-type-options"),
        "nosniff",
        "{what}"
    );
    assert_eq!(header_text(res, "referrer-policy"), "no-referrer", "{what}");
}

#[tokio::test]
async fn the_console_is_served_beside_the_api_on_one_port() {
    let console = ConsoleDir::new();
    let dist = console.dist();
    let app = TestApp::with(move |c| c.console_dir = Some(dist)).await;

    // The page: HTML, revalidated on every load so a release shows at once.
    let res = raw(get(&app, "/").body(Full::default()).expect("request")).await;
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(res.body(), INDEX_HTML.as_bytes());
    assert!(header_text(&res, "content-type").starts_with("text/html"));
    assert_eq!(header_text(&res, "cache-control"), "no-cache");
    assert_secured(&res, "/");
    let res = raw(get(&app, "/index.html")
        .body(Full::default())
        .expect("request"))
    .await;
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(header_text(&res, "cache-control"), "no-cache");
    // HEAD: the headers, no body.
    let head = http::Request::builder()
        .method(http::Method::HEAD)
        .uri(format!("{}/", app.url()))
        .body(Full::default())
        .expect("request");
    let res = raw(head).await;
    assert_eq!(res.status(), http::StatusCode::OK);
    assert!(res.body().is_empty());
    assert_secured(&res, "HEAD /");

    // A hashed asset: its type, cached for good, gzip when the browser takes it.
    let res = raw(get(&app, "/assets/index-Bx3k9_aQ.js")
        .header("accept-encoding", "gzip")
        .body(Full::default())
        .expect("request"))
    .await;
    assert_eq!(res.status(), http::StatusCode::OK);
    assert!(header_text(&res, "content-type").starts_with("text/javascript"));
    assert_eq!(
        header_text(&res, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header_text(&res, "content-encoding"), "gzip");
    assert!(res.body().len() < 1000, "gzip: {} bytes", res.body().len());
    assert_secured(&res, "/assets/index-Bx3k9_aQ.js");
    let res = raw(get(&app, "/favicon.svg")
        .body(Full::default())
        .expect("request"))
    .await;
    assert_eq!(header_text(&res, "content-type"), "image/svg+xml");
    assert_eq!(header_text(&res, "cache-control"), "no-cache");

    // Missing files are a plain 404, never the page in their place.
    for path in [
        "/assets/gone-12345678.js",
        "/instances/abc",
        "/kapal.v1.CatalogService/ListApps",
    ] {
        let res = raw(get(&app, path).body(Full::default()).expect("request")).await;
        assert_eq!(res.status(), http::StatusCode::NOT_FOUND, "{path}");
        assert!(
            header_text(&res, "content-type").starts_with("text/plain"),
            "{path}"
        );
        assert_eq!(res.body(), "not found\n".as_bytes(), "{path}");
        assert_secured(&res, path);
    }

    // The API on the same port, as before: grpc-web from the page, native gRPC from the CLI.
    let res = raw(who_am_i_from(&app, &app.url())).await;
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(header_text(&res, "grpc-status"), "16");
    assert_eq!(header_text(&res, "content-security-policy"), "");
    let apps = CatalogServiceClient::new(app.channel().await)
        .list_apps(pb::ListAppsRequest {})
        .await
        .expect("native gRPC beside the console");
    assert!(!apps.into_inner().apps.is_empty());
}

/// One request exactly as written (no client normalises the path), and the whole answer.
async fn raw_request_line(app: &TestApp, target: &str) -> String {
    let addr = app.addr;
    let target = target.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        )
        .expect("write");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("request thread")
}

#[tokio::test]
async fn no_path_leads_out_of_the_console_directory() {
    let console = ConsoleDir::new();
    let dist = console.dist();
    let app = TestApp::with(move |c| c.console_dir = Some(dist)).await;
    // The request line itself is the attack; each answer is read raw.
    let secret = console.root.path().join("secret.txt");
    let absolute = secret.display().to_string();
    let targets = [
        "/../secret.txt".to_string(),
        "/assets/../../secret.txt".to_string(),
        "/%2e%2e/secret.txt".to_string(),
        "/%2E%2E%2Fsecret.txt".to_string(),
        "/assets/..%2f..%2fsecret.txt".to_string(),
        "/..%5csecret.txt".to_string(),
        "/.%2e/.%2e/secret.txt".to_string(),
        format!("/{absolute}"),
        format!("/{}", absolute.replace('/', "%2f")),
        format!("/%2f{}", absolute.trim_start_matches('/')),
        "/../../../../../../etc/passwd".to_string(),
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd".to_string(),
        "//etc/passwd".to_string(),
    ];
    for target in &targets {
        let answer = raw_request_line(&app, target).await;
        let status = answer.lines().next().unwrap_or_default().to_string();
        assert!(
            status.contains(" 404 ") || status.contains(" 400 "),
            "{target}: {status}"
        );
        assert!(
            !answer.contains(SECRET),
            "{target} leaked the secret: {answer}"
        );
        assert!(
            !answer.contains("root:"),
            "{target} leaked /etc/passwd: {answer}"
        );
    }
    // The same file through the front door is served, so the attacks above were well aimed.
    let answer = raw_request_line(&app, "/assets/index-Bx3k9_aQ.js").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

#[tokio::test]
async fn without_a_console_pages_are_a_plain_404() {
    let app = TestApp::start().await;
    for path in ["/", "/index.html", "/assets/index-Bx3k9_aQ.js"] {
        let res = raw(get(&app, path).body(Full::default()).expect("request")).await;
        assert_eq!(res.status(), http::StatusCode::NOT_FOUND, "{path}");
        assert_eq!(res.body(), "not found\n".as_bytes(), "{path}");
        assert_secured(&res, path);
    }
    let res = raw(who_am_i_from(&app, &app.url())).await;
    assert_eq!(header_text(&res, "grpc-status"), "16");
}

#[tokio::test]
async fn tls_with_a_self_signed_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("self-signed certificate");
    let cert_pem = certified.cert.pem();
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("gateway.crt");
    let key_path = dir.path().join("gateway.key");
    std::fs::write(&cert_path, &cert_pem).expect("write cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");

    let app = TestApp::with(|c| {
        c.tls = Some(TlsConfig {
            cert_path,
            key_path,
        });
    })
    .await;
    let channel = Endpoint::from_shared(format!("https://localhost:{}", app.addr.port()))
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&cert_pem))
                .domain_name("localhost"),
        )
        .expect("client tls")
        .connect()
        .await
        .expect("TLS connection to the gateway");
    let apps = CatalogServiceClient::new(channel.clone())
        .list_apps(pb::ListAppsRequest {})
        .await
        .expect("list apps over TLS")
        .into_inner();
    assert_eq!(apps.apps[0].id, "n8n");
    let me = AccountServiceClient::new(channel)
        .who_am_i(bearer(pb::WhoAmIRequest {}, ALICE_TOKEN))
        .await
        .expect("who am i over TLS")
        .into_inner();
    assert_eq!(me.id, ALICE.to_string());

    // Plain text on the TLS port gets nowhere.
    let plain = InstanceServiceClient::new(app.channel().await)
        .get_instance(bearer(pb::GetInstanceRequest::default(), ALICE_TOKEN))
        .await;
    assert!(plain.is_err());
}

#[tokio::test]
async fn health_and_reflection_show_the_public_api_only() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = TestApp::start().await;
    let channel = app.channel().await;
    let health = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection is a bidirectional stream: it must not be buffered like unary requests.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    })
    .await
    .expect("send");
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(ReceiverStream::new(rx))
        .await
        .expect("reflection")
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .expect("an answer while the request stream is still open")
        .expect("one answer")
        .expect("ok");
    drop(tx);
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for public in [
        "kapal.v1.CatalogService",
        "kapal.v1.AccountService",
        "kapal.v1.SubscriptionService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == public), "{public} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("kapal.internal")),
        "{names:?}"
    );
}
