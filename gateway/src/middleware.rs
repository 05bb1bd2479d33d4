//! The shape every gateway concern has: look at a gRPC request, then either answer it (with a
//! trailers-only gRPC error) or pass it on to the rest of the stack.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

/// A request as the gateway sees it (grpc-web already translated to gRPC).
pub(crate) type Req = http::Request<tonic::body::Body>;
/// A response: the upstream's, or a gateway error.
pub(crate) type Res = http::Response<tonic::body::Body>;

/// The rest of the stack below a concern. It never fails: every failure is a gRPC response.
pub(crate) trait Next:
    Service<Req, Response = Res, Error = Infallible, Future: Send> + Send + 'static
{
}

impl<T> Next for T where
    T: Service<Req, Response = Res, Error = Infallible, Future: Send> + Send + 'static
{
}

/// One concern of the gateway. `call` gets the rest of the stack, ready to take `req`.
pub(crate) trait Middleware: Clone + Send + Sync + 'static {
    fn call<S: Next>(self, req: Req, next: S) -> impl Future<Output = Res> + Send;
}

/// Passes `req` to `next`, which must have been polled ready (as [`Middleware::call`] gets it).
pub(crate) async fn forward<S: Next>(mut next: S, req: Req) -> Res {
    match next.call(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

/// The tower layer of a [`Middleware`].
#[derive(Clone, Debug)]
pub(crate) struct MiddlewareLayer<M>(pub(crate) M);

impl<M: Clone, S> Layer<S> for MiddlewareLayer<M> {
    type Service = WithMiddleware<M, S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithMiddleware {
            middleware: self.0.clone(),
            inner,
        }
    }
}

/// A service running a [`Middleware`] in front of `inner`.
#[derive(Clone, Debug)]
pub(crate) struct WithMiddleware<M, S> {
    middleware: M,
    inner: S,
}

impl<M, S> Service<Req> for WithMiddleware<M, S>
where
    M: Middleware,
    S: Next + Clone,
{
    type Response = Res;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Res, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Hand the middleware the instance that was polled ready; keep a fresh clone.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        let middleware = self.middleware.clone();
        Box::pin(async move { Ok(middleware.call(req, ready).await) })
    }
}
