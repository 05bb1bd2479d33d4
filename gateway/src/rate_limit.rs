//! Per-caller rate limits: a token bucket per account, or per client address for everyone the
//! gateway does not know yet.
//!
//! The layer runs before authentication, so it keys a call by the account of its token only when
//! that token is in the authentication cache. Every other call (anonymous calls like LogIn and
//! SignUp, and the first call of a token in a while) counts against the client's address: a
//! flood of made-up tokens is limited like a flood of logins, and never reaches the identity
//! service faster than the limit. IPv6 clients are keyed by their /64, which one host usually
//! owns whole.
//!
//! Memory is bounded: a bucket that has been idle long enough to be full again is the same as no
//! bucket, so such buckets are swept out every minute; if the map still reaches
//! [`MAX_BUCKETS`], the least recently used half is dropped (a dropped bucket comes back full,
//! so forgetting can only be generous, never lock anyone out).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kapal::cidr::Cidr;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use uuid::Uuid;

use crate::error::Error;
use crate::identity::{Authenticator, bearer_token};
use crate::middleware::{Middleware, Next, Req, Res, forward};

/// At most this many buckets are kept.
pub(crate) const MAX_BUCKETS: usize = 100_000;
/// How often idle buckets are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Whose budget a call spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    Account(Uuid),
    Address(IpAddr),
    /// No address known (not a TCP connection).
    Unknown,
}

impl Caller {
    fn address(ip: IpAddr) -> Caller {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Caller::Address(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Caller::Address(v4),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets: `per_second` calls a second, up to `burst` at once.
#[derive(Debug)]
pub(crate) struct Limiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<Caller, Bucket>,
    next_sweep: Instant,
}

impl Limiter {
    pub(crate) fn new(per_second: u32, burst: u32) -> Limiter {
        Limiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                next_sweep: Instant::now() + SWEEP_EVERY,
            }),
        }
    }

    /// Takes one call from `caller`'s bucket, or says how long until one is there.
    pub(crate) fn check(&self, caller: Caller, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.map.len() >= MAX_BUCKETS || now >= buckets.next_sweep {
            self.sweep(&mut buckets, now);
        }
        let bucket = buckets.map.entry(caller).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    fn sweep(&self, buckets: &mut Buckets, now: Instant) {
        buckets.next_sweep = now + SWEEP_EVERY;
        // An empty bucket is full again after this long, and then it is as good as none.
        let refill = Duration::from_secs_f64(self.burst / self.per_second);
        buckets
            .map
            .retain(|_, b| now.saturating_duration_since(b.updated) < refill);
        if buckets.map.len() >= MAX_BUCKETS {
            let mut updated: Vec<Instant> = buckets.map.values().map(|b| b.updated).collect();
            let middle = updated.len() / 2;
            let (_, median, _) = updated.select_nth_unstable(middle);
            let median = *median;
            buckets.map.retain(|_, b| b.updated > median);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }
}

/// The client's address: the TCP peer's, unless the peer is a trusted proxy; then the
/// right-most address of `x-forwarded-for` (each proxy appends the address it saw) that is not
/// a trusted proxy itself. Entries left of it were written by the client and are ignored.
fn client_address(req: &Req, trusted: &[Cidr]) -> Option<IpAddr> {
    let ext = req.extensions();
    let peer = ext
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map(|a| a.ip());
    forwarded_client(peer, req.headers(), trusted)
}

fn forwarded_client(
    peer: Option<IpAddr>,
    headers: &http::HeaderMap,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        trusted.iter().any(|c| c.contains(ip))
    };
    let mut client = peer?;
    if !is_trusted(client) {
        return Some(client);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let Some(ip) = hop
            .parse::<IpAddr>()
            .ok()
            .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        else {
            // Garbage in the chain: the last address we could trust is the client.
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(client)
}

/// Tells the services who connected: sets [`kapal::auth::CLIENT_ADDRESS_HEADER`] to the
/// client's address ([`client_address`], honouring the trusted proxies), after removing every
/// value the client sent itself. The control-plane shows it with sessions (ListSessions).
#[derive(Clone)]
pub(crate) struct ClientAddress {
    pub(crate) trusted_proxies: Arc<[Cidr]>,
}

impl Middleware for ClientAddress {
    async fn call<S: Next>(self, mut req: Req, next: S) -> Res {
        let client = client_address(&req, &self.trusted_proxies);
        let headers = req.headers_mut();
        headers.remove(kapal::auth::CLIENT_ADDRESS_HEADER);
        if let Some(value) = client.and_then(|ip| {
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            http::HeaderValue::from_str(&ip.to_string()).ok()
        }) {
            headers.insert(kapal::auth::CLIENT_ADDRESS_HEADER, value);
        }
        forward(next, req).await
    }
}

/// The rate-limit layer; `limiter` is `None` when rate limits are off.
#[derive(Clone)]
pub(crate) struct RateLimit {
    pub(crate) limiter: Option<Arc<Limiter>>,
    pub(crate) authenticator: Authenticator,
    pub(crate) trusted_proxies: Arc<[Cidr]>,
}

impl Middleware for RateLimit {
    async fn call<S: Next>(self, req: Req, next: S) -> Res {
        let Some(limiter) = &self.limiter else {
            return forward(next, req).await;
        };
        let account = bearer_token(req.headers())
            .ok()
            .flatten()
            .and_then(|token| self.authenticator.cached(token))
            .map(|p| Caller::Account(p.account_id));
        let caller = account.unwrap_or_else(|| {
            client_address(&req, &self.trusted_proxies).map_or(Caller::Unknown, Caller::address)
        });
        match limiter.check(caller, Instant::now()) {
            Ok(()) => forward(next, req).await,
            Err(retry_after) => {
                tracing::debug!(?caller, ?retry_after, "rate limited");
                Error::RateLimited { retry_after }.into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_right_most_untrusted_hop() {
        let trusted: Vec<Cidr> = vec!["10.42.0.0/16".parse().expect("cidr")];
        let peer = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        let xff = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("x-forwarded-for", v.parse().expect("header"));
            h
        };
        let client = |p: &str, h: &http::HeaderMap, t: &[Cidr]| {
            forwarded_client(peer(p), h, t).map(|ip| ip.to_string())
        };
        let none = http::HeaderMap::new();
        // No trusted proxy: the header is ignored, whoever sends it.
        assert_eq!(
            client("203.0.113.9", &xff("198.51.100.1"), &[]).as_deref(),
            Some("203.0.113.9")
        );
        // A peer that is not a trusted proxy cannot claim another address.
        assert_eq!(
            client("203.0.113.9", &xff("198.51.100.1"), &trusted).as_deref(),
            Some("203.0.113.9")
        );
        // Behind the ingress: the address it saw.
        assert_eq!(
            client("10.42.0.7", &xff("198.51.100.1"), &trusted).as_deref(),
            Some("198.51.100.1")
        );
        // A client that writes its own header: the proxy appended the real address.
        assert_eq!(
            client(
                "10.42.0.7",
                &xff("1.1.1.1, 2.2.2.2, 198.51.100.1"),
                &trusted
            )
            .as_deref(),
            Some("198.51.100.1")
        );
        // Two trusted hops (ingress behind a load balancer in the cluster).
        assert_eq!(
            client("10.42.0.7", &xff("198.51.100.1, 10.42.3.3"), &trusted).as_deref(),
            Some("198.51.100.1")
        );
        // Nothing forwarded, or garbage: the trusted peer itself / the last trusted hop.
        assert_eq!(
            client("10.42.0.7", &none, &trusted).as_deref(),
            Some("10.42.0.7")
        );
        assert_eq!(
            client("10.42.0.7", &xff("not-an-ip"), &trusted).as_deref(),
            Some("10.42.0.7")
        );
        assert_eq!(
            client("::ffff:10.42.0.7", &xff("198.51.100.1"), &trusted).as_deref(),
            Some("198.51.100.1")
        );
    }

    fn ip(s: &str) -> Caller {
        Caller::address(s.parse().expect("ip"))
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let limiter = Limiter::new(2, 3);
        let t0 = Instant::now();
        let alice = Caller::Account(Uuid::new_v4());
        for _ in 0..3 {
            assert!(limiter.check(alice, t0).is_ok());
        }
        let wait = limiter.check(alice, t0).expect_err("over the burst");
        assert_eq!(wait, Duration::from_millis(500));
        // Another caller has its own bucket.
        assert!(limiter.check(ip("192.0.2.1"), t0).is_ok());
        assert!(
            limiter
                .check(alice, t0 + Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            limiter
                .check(alice, t0 + Duration::from_millis(500))
                .is_err()
        );
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
    }

    #[test]
    fn idle_buckets_are_swept_and_memory_stays_bounded() {
        let limiter = Limiter::new(10, 10);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            assert!(
                limiter
                    .check(Caller::Address(IpAddr::from(i.to_be_bytes())), t0)
                    .is_ok()
            );
        }
        assert_eq!(limiter.len(), 1000);
        // A minute later every one of them is full again: the sweep drops them all.
        let later = t0 + SWEEP_EVERY + Duration::from_secs(1);
        assert!(limiter.check(ip("198.51.100.1"), later).is_ok());
        assert_eq!(limiter.len(), 1);

        // Busy buckets at the cap: the older half goes.
        let limiter = Limiter::new(1, 1000);
        for i in 0..MAX_BUCKETS as u32 {
            let t = t0 + Duration::from_micros(u64::from(i));
            let _ = limiter.check(Caller::Address(IpAddr::from(i.to_be_bytes())), t);
        }
        assert_eq!(limiter.len(), MAX_BUCKETS);
        let t = t0 + Duration::from_secs(1);
        assert!(limiter.check(ip("2001:db8::1"), t).is_ok());
        assert!(limiter.len() <= MAX_BUCKETS / 2 + 1);
    }
}
