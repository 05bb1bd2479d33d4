//! Who is calling: bearer tokens in, signed principals out.
//!
//! The gateway is the only place that looks at bearer tokens. It asks the control-plane's
//! internal `IdentityService/Authenticate` what a token stands for, caches the answer briefly,
//! and forwards the caller to the upstream as a principal signed with the deployment's internal
//! key ([`kapal::auth`]). Upstreams never see a bearer token: the `authorization` header is
//! removed from every forwarded call, and a session is identified by `principal.token_id`
//! (which is what the control-plane's LogOut uses).
//!
//! The cache: an answer is kept for [`crate::Config::auth_cache_ttl`] (default 10 s), never past
//! the token's own expiry, for at most [`MAX_CACHED_TOKENS`] tokens (keyed by the token's SHA-256,
//! so the map holds no usable secrets). Unknown tokens are never cached. LogOut drops the
//! caller's cached token, and RevokeApiToken, RevokeSession and ChangePassword drop every cached
//! token of the caller's account before the call is forwarded, so on this gateway they take
//! effect at once. A token revoked any other way (by an admin, an expiring account, or through
//! another gateway replica) keeps working for at most the cache TTL.
//!
//! Scopes: the identity service says whether a token is a READ_ONLY API token; the cache keeps
//! that with the principal, and such a caller is refused (PERMISSION_DENIED) every method that
//! is not [`crate::routes::Route::read_only`], before anything is forwarded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kapal::auth::{InternalKey, PRINCIPAL_HEADER, Principal, Role, SIGNATURE_HEADER};
use kapal::clock::SharedClock;
use kapal::proto::internal::v1 as internal;
use kapal::proto::internal::v1::identity_service_client::IdentityServiceClient;
use kapal::serve::InternalChannel;
use sha2::{Digest as _, Sha256};
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use crate::error::Error;
use crate::middleware::{Middleware, Next, Req, Res, forward};
use crate::routes::{Revokes, Route};

/// At most this many tokens are cached; beyond it the entry closest to expiry makes room.
pub(crate) const MAX_CACHED_TOKENS: usize = 10_000;
/// How long the gateway waits for the identity service.
const AUTHENTICATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes any identity a client tried to send itself: only the gateway signs principals.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StripIdentity;

impl Middleware for StripIdentity {
    async fn call<S: Next>(self, mut req: Req, next: S) -> Res {
        let headers = req.headers_mut();
        // `remove` drops every value of the header, however often the client repeated it.
        headers.remove(PRINCIPAL_HEADER);
        headers.remove(SIGNATURE_HEADER);
        forward(next, req).await
    }
}

/// The bearer token of a request: `None` without an `authorization` header.
pub(crate) fn bearer_token(headers: &http::HeaderMap) -> Result<Option<&str>, Error> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| Error::MalformedAuthorization)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(Error::MalformedAuthorization)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Error::MalformedAuthorization);
    }
    Ok(Some(token))
}

type TokenHash = [u8; 32];

fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

struct Cached {
    caller: Caller,
    valid_until: Instant,
}

/// An authenticated caller: who, and whether its token is read-only.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) principal: Principal,
    /// An API token of scope READ_ONLY: only calls that change nothing
    /// ([`crate::routes::Route::read_only`]).
    pub(crate) read_only: bool,
}

/// Turns tokens into principals, through a short cache.
#[derive(Clone)]
pub(crate) struct Authenticator(Arc<Inner>);

struct Inner {
    client: IdentityServiceClient<InternalChannel>,
    ttl: Duration,
    clock: SharedClock,
    cache: Mutex<HashMap<TokenHash, Cached>>,
}

impl Authenticator {
    pub(crate) fn new(
        client: IdentityServiceClient<InternalChannel>,
        ttl: Duration,
        clock: SharedClock,
    ) -> Authenticator {
        Authenticator(Arc::new(Inner {
            client,
            ttl,
            clock,
            cache: Mutex::new(HashMap::new()),
        }))
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<TokenHash, Cached>> {
        // The map stays consistent whatever panicked while holding it.
        self.0.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The principal of `token` if it is cached and still fresh.
    pub(crate) fn cached(&self, token: &str) -> Option<Principal> {
        let now = Instant::now();
        self.cache()
            .get(&hash(token))
            .filter(|c| c.valid_until > now)
            .map(|c| c.caller.principal.clone())
    }

    /// The caller of `token`, from the cache or the identity service.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Caller, Error> {
        let now = Instant::now();
        if let Some(cached) = self
            .cache()
            .get(&hash(token))
            .filter(|c| c.valid_until > now)
        {
            return Ok(cached.caller.clone());
        }
        let mut request = tonic::Request::new(internal::AuthenticateRequest {
            token: token.to_string(),
        });
        request.set_timeout(AUTHENTICATE_TIMEOUT);
        let mut client = self.0.client.clone();
        let answer = tokio::time::timeout(AUTHENTICATE_TIMEOUT, client.authenticate(request))
            .await
            .map_err(|_| {
                Error::Identity(tonic::Status::deadline_exceeded(
                    "no answer from the identity service",
                ))
            })?;
        let wire = match answer {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                return Err(Error::InvalidToken);
            }
            // The account is suspended: the control-plane's message says so, for the caller.
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                return Err(Error::AccountRefused(status.message().to_string()));
            }
            Err(status) => return Err(Error::Identity(status)),
        };
        let (caller, expires_at) = principal_from_wire(wire)?;
        let left = (expires_at - self.0.clock.now())
            .to_std()
            .map_err(|_| Error::InvalidToken)?;
        let keep = self.0.ttl.min(left);
        if !keep.is_zero() {
            let now = Instant::now();
            let mut cache = self.cache();
            make_room(&mut cache, now);
            cache.insert(
                hash(token),
                Cached {
                    caller: caller.clone(),
                    valid_until: now + keep,
                },
            );
        }
        Ok(caller)
    }

    /// Forgets `token`, so its next use is checked again.
    pub(crate) fn forget_token(&self, token: &str) {
        self.cache().remove(&hash(token));
    }

    /// Forgets every cached token of `account_id`.
    pub(crate) fn forget_account(&self, account_id: Uuid) {
        self.cache()
            .retain(|_, c| c.caller.principal.account_id != account_id);
    }
}

/// Keeps the cache under [`MAX_CACHED_TOKENS`] before an insert.
fn make_room(cache: &mut HashMap<TokenHash, Cached>, now: Instant) {
    if cache.len() < MAX_CACHED_TOKENS {
        return;
    }
    cache.retain(|_, c| c.valid_until > now);
    if cache.len() >= MAX_CACHED_TOKENS {
        let soonest = cache
            .iter()
            .min_by_key(|(_, c)| c.valid_until)
            .map(|(k, _)| *k);
        if let Some(key) = soonest {
            cache.remove(&key);
        }
    }
}

/// The identity service's principal as the gateway signs it (with the token's scope), and the
/// token's expiry.
fn principal_from_wire(
    p: internal::Principal,
) -> Result<(Caller, chrono::DateTime<chrono::Utc>), Error> {
    let bad = |what: &str| Error::BadPrincipal(what.to_string());
    let account_id = Uuid::parse_str(&p.account_id).map_err(|_| bad("account_id is not a UUID"))?;
    let token_id = Uuid::parse_str(&p.token_id).map_err(|_| bad("token_id is not a UUID"))?;
    let role = match kapal::proto::v1::Role::try_from(p.role) {
        Ok(kapal::proto::v1::Role::Customer) => Role::Customer,
        Ok(kapal::proto::v1::Role::Admin) => Role::Admin,
        _ => return Err(bad("role is neither customer nor admin")),
    };
    let expires_at = p
        .expires_at
        .as_ref()
        .and_then(kapal::wire::from_timestamp)
        .ok_or_else(|| bad("expires_at is missing or invalid"))?;
    // UNSPECIFIED is an older control-plane's answer: every token was full then.
    let read_only = match kapal::proto::v1::ApiTokenScope::try_from(p.scope) {
        Ok(kapal::proto::v1::ApiTokenScope::ReadOnly) => true,
        Ok(_) => false,
        Err(_) => return Err(bad("scope is not a token scope")),
    };
    Ok((
        Caller {
            principal: Principal {
                account_id,
                customer_id: p.customer_id,
                role,
                token_id,
            },
            read_only,
        },
        expires_at,
    ))
}

/// Authenticates calls that need it and signs the caller into the forwarded request.
#[derive(Clone)]
pub(crate) struct Authenticate {
    pub(crate) authenticator: Authenticator,
    pub(crate) key: InternalKey,
}

impl Middleware for Authenticate {
    async fn call<S: Next>(self, req: Req, next: S) -> Res {
        match self.sign(req).await {
            Ok(req) => forward(next, req).await,
            Err(e) => e.into_response(),
        }
    }
}

impl Authenticate {
    async fn sign(&self, req: Req) -> Result<Req, Error> {
        let (mut parts, body) = req.into_parts();
        let route =
            parts
                .extensions
                .get::<Route>()
                .copied()
                .ok_or_else(|| Error::UnknownMethod {
                    path: parts.uri.path().to_string(),
                })?;
        let token = bearer_token(&parts.headers)?.map(str::to_string);
        // The bearer secret stops here, for public calls too.
        parts.headers.remove(http::header::AUTHORIZATION);
        if route.public {
            return Ok(Req::from_parts(parts, body));
        }
        let token = token.ok_or(Error::MissingToken)?;
        let Caller {
            principal,
            read_only,
        } = self.authenticator.authenticate(&token).await?;
        if read_only && !route.read_only {
            return Err(Error::ReadOnlyToken {
                method: kapal::wire::truncate(parts.uri.path().trim_start_matches('/'), 200)
                    .to_string(),
            });
        }
        match route.revokes {
            Revokes::Nothing => {}
            Revokes::CallersToken => self.authenticator.forget_token(&token),
            Revokes::AccountTokens => self.authenticator.forget_account(principal.account_id),
        }
        let mut metadata = MetadataMap::from_headers(std::mem::take(&mut parts.headers));
        // Signed for this method only: a service refuses it on any other.
        self.key
            .sign_into(&principal, parts.uri.path(), &mut metadata);
        parts.headers = metadata.into_headers();
        Ok(Req::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            authorization.parse().expect("header"),
        );
        h
    }

    #[test]
    fn bearer_tokens_are_read_and_other_schemes_refused() {
        assert_eq!(
            bearer_token(&headers("Bearer abc.def")).ok().flatten(),
            Some("abc.def")
        );
        assert_eq!(
            bearer_token(&headers("bearer  abc ")).ok().flatten(),
            Some("abc")
        );
        assert!(bearer_token(&http::HeaderMap::new()).is_ok_and(|t| t.is_none()));
        assert!(bearer_token(&headers("Basic dXNlcjpwYXNz")).is_err());
        assert!(bearer_token(&headers("Bearer")).is_err());
        assert!(bearer_token(&headers("Bearer ")).is_err());
    }

    #[test]
    fn a_wire_principal_needs_ids_a_role_and_an_expiry() {
        let good = internal::Principal {
            account_id: Uuid::new_v4().to_string(),
            customer_id: "c1234567".into(),
            role: kapal::proto::v1::Role::Customer as i32,
            token_id: Uuid::new_v4().to_string(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 2_000_000_000,
                nanos: 0,
            }),
            scope: kapal::proto::v1::ApiTokenScope::Unspecified as i32,
        };
        let (c, _) = principal_from_wire(good.clone()).expect("valid");
        assert_eq!(c.principal.role, Role::Customer);
        assert_eq!(c.principal.customer_id, "c1234567");
        assert!(
            !c.read_only,
            "an older control-plane's answer is a full token"
        );
        let mut read_only = good.clone();
        read_only.scope = kapal::proto::v1::ApiTokenScope::ReadOnly as i32;
        assert!(principal_from_wire(read_only).is_ok_and(|(c, _)| c.read_only));
        let mut bad_scope = good.clone();
        bad_scope.scope = 42;
        assert!(principal_from_wire(bad_scope).is_err());

        let mut no_role = good.clone();
        no_role.role = 0;
        assert!(principal_from_wire(no_role).is_err());
        let mut no_expiry = good.clone();
        no_expiry.expires_at = None;
        assert!(principal_from_wire(no_expiry).is_err());
        let mut bad_id = good;
        bad_id.account_id = "alice".into();
        assert!(principal_from_wire(bad_id).is_err());
    }

    #[test]
    fn a_full_cache_drops_expired_entries_then_the_soonest_to_expire() {
        let now = Instant::now();
        let principal = Principal::service();
        let mut cache = HashMap::new();
        for i in 0..MAX_CACHED_TOKENS {
            let valid_until = if i == 0 {
                now - Duration::from_secs(1)
            } else {
                now + Duration::from_secs(60) + Duration::from_millis(i as u64)
            };
            cache.insert(
                hash(&i.to_string()),
                Cached {
                    caller: Caller {
                        principal: principal.clone(),
                        read_only: false,
                    },
                    valid_until,
                },
            );
        }
        make_room(&mut cache, now);
        assert_eq!(cache.len(), MAX_CACHED_TOKENS - 1);
        assert!(!cache.contains_key(&hash("0")));

        cache.insert(
            hash("new"),
            Cached {
                caller: Caller {
                    principal,
                    read_only: false,
                },
                valid_until: now + Duration::from_secs(600),
            },
        );
        make_room(&mut cache, now);
        assert_eq!(cache.len(), MAX_CACHED_TOKENS - 1);
        assert!(
            !cache.contains_key(&hash("1")),
            "the soonest to expire goes"
        );
        assert!(cache.contains_key(&hash("new")));
    }
}
