//! Clients of the system under test: native gRPC over a few HTTP/2 connections, grpc-web over
//! HTTP/1.1 like a browser, and calls signed straight to a service like the gateway signs them.

use std::net::SocketAddr;
use std::time::Duration;

use kapal_tests::app::{Clients, WebTransport};
use tonic::transport::{Channel, Endpoint};

/// `n` independent HTTP/2 connections to `addr` (workers spread over them).
pub fn channels(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    (0..n.max(1))
        .map(|_| {
            Ok(Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .connect_lazy())
        })
        .collect()
}

/// The public API's clients over native gRPC, acting with `token` ("" for none).
pub fn grpc(channel: &Channel, token: &str) -> Clients {
    Clients::new(channel.clone(), token)
}

/// The public API's clients over grpc-web (HTTP/1.1 with keep-alive, one connection per
/// call in flight, as browsers do), acting with `token`.
pub fn grpc_web(addr: SocketAddr, token: &str) -> anyhow::Result<Clients<WebTransport>> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let transport = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .service(client);
    Ok(Clients::with_origin(
        transport,
        Some(format!("http://{addr}").parse()?),
        token,
    ))
}

/// Signs every call with a principal, for the method called, exactly as the gateway does for
/// the services behind it.
pub use kapal::auth::SignAs;
