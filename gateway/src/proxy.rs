//! The proxy at the bottom of the stack: forwards a routed gRPC call, as HTTP/2, to the service
//! that serves it, and streams the answer back as it comes (server-streaming calls included).
//! When the service runs in the same process ([`kapal::serve::Upstream::InProcess`], chosen by
//! the stack builder), the call goes to its routes directly instead. It knows nothing about
//! individual methods.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use http::header::{self, HeaderName};
use kapal::serve::Transport;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt as _};

use crate::deadline::{Deadline, GRPC_TIMEOUT};
use crate::error::Error;
use crate::middleware::Res;
use crate::routes::{Route, Target};

/// Headers that belong to one connection, not to the call (RFC 9110 §7.6.1), and `host`, which
/// HTTP/2 carries as `:authority`.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
    header::CONTENT_LENGTH,
];

/// The two upstreams.
#[derive(Clone, Debug)]
pub(crate) struct Proxy {
    control_plane: Upstream,
    billing: Upstream,
}

impl Proxy {
    pub(crate) fn new(control_plane: Upstream, billing: Upstream) -> Proxy {
        Proxy {
            control_plane,
            billing,
        }
    }
}

/// One upstream: a lazily connecting HTTP/2 channel, or its routes when it runs in this process.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    name: &'static str,
    transport: Transport,
}

impl Upstream {
    pub(crate) fn new(
        name: &'static str,
        upstream: &kapal::serve::Upstream,
    ) -> anyhow::Result<Upstream> {
        Ok(Upstream {
            name,
            transport: upstream.transport_with(|endpoint| channel(name, endpoint))?,
        })
    }

    async fn call(self, req: http::Request<Body>) -> Res {
        let answer = match self.transport.ready_oneshot().await {
            Ok(mut transport) => transport.call(req).await,
            Err(e) => Err(e),
        };
        answer.unwrap_or_else(|e| {
            Error::Upstream {
                upstream: self.name,
                source: e,
            }
            .into_response()
        })
    }
}

fn channel(name: &str, endpoint: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(endpoint.to_string())
        .with_context(|| {
            format!(
                "the {name} endpoint {endpoint:?} is not a valid URL (expected http://host:port)"
            )
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Long watches cross idle periods: keep the connection known to be alive.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl Service<http::Request<axum::body::Body>> for Proxy {
    type Response = Res;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Res, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each call takes its own clone of a channel and waits for it to be ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let route = parts.extensions.get::<Route>().copied();
        let target = route.map(|r| r.target);
        let upstream = match target {
            Some(Target::ControlPlane) => self.control_plane.clone(),
            Some(Target::Billing) => self.billing.clone(),
            // Local calls are served by their own routes; nothing else gets here unrouted.
            Some(Target::Local) | None => {
                let error = Error::UnknownMethod {
                    path: kapal::wire::truncate(parts.uri.path(), 200).to_string(),
                };
                return Box::pin(async move { Ok(error.into_response()) });
            }
        };
        if let Some(listed) = parts.headers.get(header::CONNECTION).cloned() {
            for name in listed.to_str().unwrap_or_default().split(',') {
                parts.headers.remove(name.trim());
            }
        }
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        // Tell the upstream the time that is actually left.
        if let Some(deadline) = parts.extensions.get::<Deadline>().copied() {
            parts
                .headers
                .insert(GRPC_TIMEOUT, deadline.upstream_header_value());
        }
        parts.version = http::Version::HTTP_2;
        let req = http::Request::from_parts(parts, Body::new(body));
        Box::pin(async move { Ok(upstream.call(req).await) })
    }
}
