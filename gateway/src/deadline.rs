//! Deadlines: every unary call gets one, and none lasts longer than the configured maximum.
//!
//! A unary call's deadline is the client's `grpc-timeout` capped at `max`, or `default` when the
//! client sent none. Calls whose answer is a stream (WatchInstance, health Watch) get no default
//! and no cap: a watch is meant to stay open, and a client that wants it to end sets its own
//! deadline, which is kept as sent. The gateway answers DEADLINE_EXCEEDED itself when the time
//! is up before the answer starts, and the proxy tells the upstream the time that is left.
//!
//! Two small margins make sure the client sees DEADLINE_EXCEEDED, and from the gateway: tonic's
//! server machinery also times a call by the client's `grpc-timeout` and reports that as
//! CANCELLED, both in front of this layer and in the (tonic) upstreams. So the gateway answers
//! [`BEFORE_CLIENT_DEADLINE`] before a client-set deadline, and gives the upstream
//! [`UPSTREAM_GRACE`] more than the time left. An upstream still working when the gateway gives
//! up is cancelled (the gateway drops the call, which resets its HTTP/2 stream).

use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::error::Error;
use crate::middleware::{Middleware, Next, Req, Res, forward};
use crate::routes::Route;

pub(crate) const GRPC_TIMEOUT: &str = "grpc-timeout";
/// The gateway answers this much before the deadline a client set.
const BEFORE_CLIENT_DEADLINE: Duration = Duration::from_millis(5);
/// The upstream is told the time left plus this.
pub(crate) const UPSTREAM_GRACE: Duration = Duration::from_millis(50);

/// When the gateway gives up on a call (in the request's extensions).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(pub(crate) Instant);

impl Deadline {
    /// The time left (plus [`UPSTREAM_GRACE`]), as a `grpc-timeout` value for the upstream.
    pub(crate) fn upstream_header_value(self) -> HeaderValue {
        encode(self.0.saturating_duration_since(Instant::now()) + UPSTREAM_GRACE)
    }
}

/// The deadline layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    pub(crate) default: Duration,
    pub(crate) max: Duration,
}

impl Deadlines {
    /// The time a call may take, if it is limited at all.
    fn budget(&self, route: Option<Route>, client: Option<Duration>) -> Option<Duration> {
        match route {
            Some(r) if r.server_streaming => client,
            _ => Some(client.unwrap_or(self.default).min(self.max)),
        }
    }
}

impl Middleware for Deadlines {
    async fn call<S: Next>(self, mut req: Req, next: S) -> Res {
        let client = req.headers().get(GRPC_TIMEOUT).and_then(parse);
        let route = req.extensions().get::<Route>().copied();
        let Some(budget) = self.budget(route, client) else {
            // Whatever was there did not parse: do not pass it on.
            req.headers_mut().remove(GRPC_TIMEOUT);
            return forward(next, req).await;
        };
        let early = if client.is_some() {
            BEFORE_CLIENT_DEADLINE.min(budget / 2)
        } else {
            Duration::ZERO
        };
        let deadline = Deadline(Instant::now() + budget - early);
        req.extensions_mut().insert(deadline);
        req.headers_mut()
            .insert(GRPC_TIMEOUT, encode(budget - early));
        match tokio::time::timeout_at(deadline.0, forward(next, req)).await {
            Ok(res) => res,
            Err(_) => Error::DeadlineExceeded { deadline: budget }.into_response(),
        }
    }
}

/// Parses a `grpc-timeout` value (at most 8 digits and a unit, as the gRPC spec says).
pub(crate) fn parse(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?;
    if s.len() < 2 || !s.is_char_boundary(s.len() - 1) {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes a duration as a `grpc-timeout` value, rounded up to whole milliseconds (seconds
/// beyond what 8 digits of milliseconds can say).
pub(crate) fn encode(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let millis = d.as_micros().div_ceil(1000).max(1);
    let text = if millis <= MAX {
        format!("{millis}m")
    } else {
        format!("{}S", d.as_secs().min(MAX as u64))
    };
    // Digits and a unit letter are always a valid header value.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("99999999S"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Revokes, Target};

    fn value(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("header")
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse(&value("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(parse(&value("3M")), Some(Duration::from_secs(180)));
        assert_eq!(parse(&value("15S")), Some(Duration::from_secs(15)));
        assert_eq!(parse(&value("250m")), Some(Duration::from_millis(250)));
        assert_eq!(parse(&value("7u")), Some(Duration::from_micros(7)));
        assert_eq!(parse(&value("9n")), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "10", "123456789S", "1.5S", "-1S", "10s", "1 S"] {
            assert_eq!(parse(&value(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn encoding_round_trips_and_rounds_up() {
        assert_eq!(encode(Duration::from_millis(1500)), "1500m");
        assert_eq!(encode(Duration::from_micros(1)), "1m");
        assert_eq!(encode(Duration::ZERO), "1m");
        assert_eq!(encode(Duration::from_secs(200_000)), "200000S");
        let d = Duration::from_millis(42);
        assert_eq!(parse(&encode(d)), Some(d));
    }

    fn route(server_streaming: bool) -> Option<Route> {
        Some(Route {
            target: Target::ControlPlane,
            public: false,
            client_streaming: false,
            server_streaming,
            revokes: Revokes::Nothing,
            read_only: false,
        })
    }

    #[test]
    fn unary_calls_get_a_default_and_a_cap_streams_get_neither() {
        let d = Deadlines {
            default: Duration::from_secs(15),
            max: Duration::from_secs(60),
        };
        let secs = Duration::from_secs;
        assert_eq!(d.budget(route(false), None), Some(secs(15)));
        assert_eq!(d.budget(route(false), Some(secs(5))), Some(secs(5)));
        assert_eq!(d.budget(route(false), Some(secs(3600))), Some(secs(60)));
        assert_eq!(d.budget(route(true), None), None);
        assert_eq!(d.budget(route(true), Some(secs(3600))), Some(secs(3600)));
    }
}
