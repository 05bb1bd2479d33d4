//! Who is calling, and how services can trust it.
//!
//! Only the gateway authenticates bearer tokens. It forwards the caller's identity to the
//! services in two metadata entries: [`PRINCIPAL_HEADER`] (the identity, encoded) and
//! [`SIGNATURE_HEADER`] (an HMAC-SHA256 of it under the deployment's [`InternalKey`]). Services
//! accept an identity only with a valid, unexpired signature, so a client that reaches a service
//! port directly cannot claim to be someone else. Service-to-service calls sign a
//! [`Role::Service`] principal the same way.
//!
//! A signature covers the gRPC method path it was made for (`/kapal.internal.v1.X/Method`) and
//! expires after a minute: one captured from a call (a log, a proxy, a packet capture) cannot
//! be replayed on another method, and not for long on the same one. Servers verify with
//! [`VerifyPrincipal`], a layer that sees the request's path; clients sign with an interceptor
//! ([`SignAsService`], [`SignAs`]) that reads the method tonic's generated clients record
//! ([`tonic::GrpcMethod`]).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::Either;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{GrpcMethod, Request, Status};
use uuid::Uuid;

/// Metadata key carrying the encoded principal.
pub const PRINCIPAL_HEADER: &str = "x-kapal-principal";
/// Metadata key carrying the principal's signature.
pub const SIGNATURE_HEADER: &str = "x-kapal-signature";
/// Metadata key carrying the client's IP address as the gateway saw it (the connecting
/// address, or behind a trusted proxy the address it forwarded). The gateway removes any value
/// a client sends and sets its own; services use it for display only (ListSessions), never to
/// decide who may do what.
pub const CLIENT_ADDRESS_HEADER: &str = "x-kapal-client-address";
/// How long a signed principal stays valid: a captured one is of use for a minute at most
/// (Kapal's processes need clocks within that of each other, as NTP keeps them).
const SIGNATURE_TTL_SECS: i64 = 60;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Customer,
    Admin,
    /// Another Kapal service.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "customer" => Some(Role::Customer),
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub account_id: Uuid,
    pub customer_id: String,
    pub role: Role,
    /// The session or API token the caller used (nil for services).
    pub token_id: Uuid,
}

impl Principal {
    /// The principal Kapal's services use to call each other.
    pub fn service() -> Principal {
        Principal {
            account_id: Uuid::nil(),
            customer_id: String::new(),
            role: Role::Service,
            token_id: Uuid::nil(),
        }
    }

    /// The principal, the method path it may call and its expiry, as one signed string. A path
    /// never holds a newline (it is a URI path), so the fields cannot run into each other.
    fn encode(&self, method: &str, expires_unix: i64) -> String {
        let raw = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.account_id,
            self.customer_id,
            self.role.as_str(),
            self.token_id,
            expires_unix,
            method
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn decode(encoded: &str) -> Option<(Principal, i64, String)> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(encoded).ok()?).ok()?;
        let mut parts = raw.split('\n');
        let account_id = Uuid::parse_str(parts.next()?).ok()?;
        let customer_id = parts.next()?.to_string();
        let role = Role::parse(parts.next()?)?;
        let token_id = Uuid::parse_str(parts.next()?).ok()?;
        let expires = parts.next()?.parse().ok()?;
        let method = parts.next()?.to_string();
        if parts.next().is_some() {
            return None;
        }
        Some((
            Principal {
                account_id,
                customer_id,
                role,
                token_id,
            },
            expires,
            method,
        ))
    }
}

/// The secret that signs principals between Kapal's processes. All services of one deployment
/// must share it.
#[derive(Clone)]
pub struct InternalKey(Arc<[u8]>);

impl fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InternalKey(<redacted>)")
    }
}

impl InternalKey {
    /// A key from configured text (at least 32 characters).
    pub fn from_secret(secret: &str) -> anyhow::Result<InternalKey> {
        anyhow::ensure!(
            secret.len() >= 32,
            "the internal key must be at least 32 characters long (got {})",
            secret.len()
        );
        Ok(InternalKey(Arc::from(secret.as_bytes())))
    }

    /// A fresh random key (for tests and single-process deployments).
    pub fn random() -> InternalKey {
        let bytes: [u8; 32] = rand::random();
        InternalKey(Arc::from(&bytes[..]))
    }

    /// Reads the key from `path`, creating it (mode 0600) with a random key when it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<InternalKey> {
        use anyhow::Context as _;
        match std::fs::read_to_string(path) {
            Ok(text) => InternalKey::from_secret(text.trim())
                .with_context(|| format!("reading the internal key from {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = hex::encode(rand::random::<[u8; 32]>());
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                write_private(path, &secret)
                    .with_context(|| format!("writing the internal key to {}", path.display()))?;
                InternalKey::from_secret(&secret)
            }
            Err(e) => {
                Err(e).with_context(|| format!("reading the internal key from {}", path.display()))
            }
        }
    }

    fn mac(&self, data: &str) -> Hmac<Sha256> {
        #[expect(clippy::expect_used, reason = "HMAC accepts keys of any length")]
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("hmac key");
        mac.update(data.as_bytes());
        mac
    }

    /// Writes `principal` into `metadata`, signed for one call of `method` (the gRPC path,
    /// `/package.Service/Method`), replacing whatever identity was there.
    pub fn sign_into(&self, principal: &Principal, method: &str, metadata: &mut MetadataMap) {
        let expires = chrono::Utc::now().timestamp() + SIGNATURE_TTL_SECS;
        let encoded = principal.encode(method, expires);
        let signature = hex::encode(self.mac(&encoded).finalize().into_bytes());
        // Both values are base64url / hex, so always valid ASCII metadata.
        if let (Ok(p), Ok(s)) = (encoded.parse(), signature.parse()) {
            metadata.insert(PRINCIPAL_HEADER, p);
            metadata.insert(SIGNATURE_HEADER, s);
        }
    }

    /// The principal in `metadata` if it carries a valid, unexpired signature made for a call
    /// of `method` (the request's path).
    pub fn verify(
        &self,
        metadata: &MetadataMap,
        method: &str,
    ) -> Result<Option<Principal>, Status> {
        let Some(encoded) = metadata.get(PRINCIPAL_HEADER) else {
            return Ok(None);
        };
        let invalid = || Status::unauthenticated("the caller's identity could not be verified");
        let encoded = encoded.to_str().map_err(|_| invalid())?;
        let signature = metadata
            .get(SIGNATURE_HEADER)
            .and_then(|s| s.to_str().ok())
            .and_then(|s| hex::decode(s).ok())
            .ok_or_else(invalid)?;
        self.mac(encoded)
            .verify_slice(&signature)
            .map_err(|_| invalid())?;
        let (principal, expires, signed_for) = Principal::decode(encoded).ok_or_else(invalid)?;
        if expires < chrono::Utc::now().timestamp() {
            return Err(invalid());
        }
        // Constant-time is not needed here: the path is public, only the MAC is secret.
        if signed_for != method {
            return Err(invalid());
        }
        Ok(Some(principal))
    }
}

/// Server side: verifies the signed principal against the called method's path and puts it
/// into the request's extensions, for [`caller`] to read. A request without a principal passes
/// on anonymous; a bad, expired or replayed (signed for another method) one is UNAUTHENTICATED.
///
/// A [`tower::Layer`] rather than a tonic interceptor, because interceptors do not see the
/// path: `VerifyPrincipal(key).wrap(FooServiceServer::new(service))`.
#[derive(Clone, Debug)]
pub struct VerifyPrincipal(pub InternalKey);

impl<S> tower::Layer<S> for VerifyPrincipal {
    type Service = Verified<S>;

    fn layer(&self, inner: S) -> Verified<S> {
        Verified {
            inner,
            key: self.0.clone(),
        }
    }
}

impl VerifyPrincipal {
    /// `inner` (a generated `FooServiceServer`) with its callers' principals verified.
    pub fn wrap<S>(&self, inner: S) -> Verified<S> {
        tower::Layer::layer(self, inner)
    }
}

/// A gRPC service whose callers' principals are verified (see [`VerifyPrincipal`]).
#[derive(Clone, Debug)]
pub struct Verified<S> {
    inner: S,
    key: InternalKey,
}

impl<S: NamedService> NamedService for Verified<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Verified<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Either<S::Future, std::future::Ready<Result<Self::Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let metadata = MetadataMap::from_headers(std::mem::take(req.headers_mut()));
        let verified = self.key.verify(&metadata, req.uri().path());
        *req.headers_mut() = metadata.into_headers();
        match verified {
            Ok(principal) => {
                // Whatever a caller put there, only a verified principal is read.
                req.extensions_mut().remove::<Principal>();
                if let Some(principal) = principal {
                    req.extensions_mut().insert(principal);
                }
                Either::Left(self.inner.call(req))
            }
            Err(status) => Either::Right(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// The gRPC path of the method a client call is for, as tonic's generated clients record it.
fn called_method<T>(req: &Request<T>) -> Result<String, Status> {
    req.extensions()
        .get::<GrpcMethod>()
        .map(|m| format!("/{}/{}", m.service(), m.method()))
        .ok_or_else(|| {
            Status::internal("cannot sign a call without its method (use a generated client)")
        })
}

/// Client-side interceptor for calls between Kapal's services: signs every call as
/// [`Role::Service`], for the method called, and carries the caller's trace context
/// (`traceparent`, when traces are exported; [`crate::telemetry`]).
#[derive(Clone, Debug)]
pub struct SignAsService(pub InternalKey);

impl tonic::service::Interceptor for SignAsService {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let method = called_method(&req)?;
        self.0
            .sign_into(&Principal::service(), &method, req.metadata_mut());
        crate::telemetry::inject_current(req.metadata_mut());
        Ok(req)
    }
}

/// Client-side interceptor that signs every call as `principal`, for the method called, as the
/// gateway does for the services behind it (tests and benchmarks call services directly).
#[derive(Clone, Debug)]
pub struct SignAs {
    pub key: InternalKey,
    pub principal: Principal,
}

impl tonic::service::Interceptor for SignAs {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let method = called_method(&req)?;
        self.key
            .sign_into(&self.principal, &method, req.metadata_mut());
        Ok(req)
    }
}

/// Client-side interceptor that signs calls carrying a [`SignWith`] extension with its key and
/// principal, for the method called; other calls pass unsigned. For tests that call one
/// service as several principals over one channel.
#[derive(Clone, Debug, Default)]
pub struct SignRequested;

/// Asks [`SignRequested`] to sign this request as `principal` with `key`.
#[derive(Clone, Debug)]
pub struct SignWith {
    pub key: InternalKey,
    pub principal: Principal,
}

impl SignWith {
    /// `message` in a request that [`SignRequested`] signs as `principal`.
    pub fn request<T>(key: &InternalKey, principal: &Principal, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.extensions_mut().insert(SignWith {
            key: key.clone(),
            principal: principal.clone(),
        });
        req
    }
}

impl tonic::service::Interceptor for SignRequested {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(sign) = req.extensions_mut().remove::<SignWith>() {
            let method = called_method(&req)?;
            sign.key
                .sign_into(&sign.principal, &method, req.metadata_mut());
        }
        Ok(req)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// The verified caller of a request, or UNAUTHENTICATED.
pub fn caller<T>(req: &Request<T>) -> Result<&Principal, Status> {
    req.extensions().get::<Principal>().ok_or_else(|| {
        Status::unauthenticated("sign in first: this call needs a session or API token")
    })
}

/// The caller, who must be a customer or an admin acting for themselves.
pub fn customer<T>(req: &Request<T>) -> Result<&Principal, Status> {
    let p = caller(req)?;
    match p.role {
        Role::Customer | Role::Admin => Ok(p),
        Role::Service => Err(Status::permission_denied("this call is for customers")),
    }
}

/// The caller, who must be another Kapal service.
pub fn service<T>(req: &Request<T>) -> Result<&Principal, Status> {
    let p = caller(req)?;
    if p.role == Role::Service {
        Ok(p)
    } else {
        Err(Status::permission_denied(
            "this call is for Kapal's own services",
        ))
    }
}

/// The caller, who must have the admin role.
pub fn admin<T>(req: &Request<T>) -> Result<&Principal, Status> {
    let p = caller(req)?;
    if p.role == Role::Admin {
        Ok(p)
    } else {
        Err(Status::permission_denied("this call needs the admin role"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "/kapal.internal.v1.InstanceStateService/ListDesiredInstances";
    const CREDENTIALS: &str = "/kapal.internal.v1.ProvisionerService/GetCredentials";

    fn alice() -> Principal {
        Principal {
            account_id: Uuid::new_v4(),
            customer_id: "c1234567".into(),
            role: Role::Customer,
            token_id: Uuid::new_v4(),
        }
    }

    #[test]
    fn signed_principal_round_trips() {
        let key = InternalKey::random();
        let mut md = MetadataMap::new();
        key.sign_into(&alice(), LIST, &mut md);
        let got = key.verify(&md, LIST).ok().flatten();
        assert_eq!(got.map(|p| p.customer_id), Some("c1234567".to_string()));
    }

    #[test]
    fn another_key_or_a_tampered_principal_is_rejected() {
        let key = InternalKey::random();
        let mut md = MetadataMap::new();
        key.sign_into(&alice(), LIST, &mut md);
        assert!(InternalKey::random().verify(&md, LIST).is_err());

        let mut admin = alice();
        admin.role = Role::Admin;
        let forged = admin.encode(LIST, chrono::Utc::now().timestamp() + 60);
        md.insert(PRINCIPAL_HEADER, forged.parse().expect("ascii"));
        assert!(key.verify(&md, LIST).is_err());
    }

    #[test]
    fn a_signature_is_valid_for_its_method_only() {
        let key = InternalKey::random();
        let mut md = MetadataMap::new();
        key.sign_into(&Principal::service(), LIST, &mut md);
        assert!(key.verify(&md, LIST).is_ok_and(|p| p.is_some()));
        let replayed = key.verify(&md, CREDENTIALS);
        assert_eq!(
            replayed.err().map(|s| s.code()),
            Some(tonic::Code::Unauthenticated)
        );
    }

    #[test]
    fn a_signature_is_valid_for_a_minute_at_most() {
        let key = InternalKey::random();
        let mut md = MetadataMap::new();
        key.sign_into(&alice(), LIST, &mut md);
        let encoded = md
            .get(PRINCIPAL_HEADER)
            .and_then(|v| v.to_str().ok())
            .expect("principal");
        let (_, expires, _) = Principal::decode(encoded).expect("decodes");
        assert!(expires <= chrono::Utc::now().timestamp() + 60, "{expires}");
        // One that expired a second ago, correctly signed, is refused.
        let stale = alice().encode(LIST, chrono::Utc::now().timestamp() - 1);
        let signature = hex::encode(key.mac(&stale).finalize().into_bytes());
        md.insert(PRINCIPAL_HEADER, stale.parse().expect("ascii"));
        md.insert(SIGNATURE_HEADER, signature.parse().expect("ascii"));
        assert!(key.verify(&md, LIST).is_err());
    }

    #[test]
    fn no_principal_is_anonymous() {
        let key = InternalKey::random();
        assert_eq!(key.verify(&MetadataMap::new(), LIST).ok(), Some(None));
    }
}
