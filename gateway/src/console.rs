//! The web console's files on the gateway's own port, next to the API.
//!
//! A request is a gRPC call (native or grpc-web) when its `content-type` is `application/grpc*`;
//! those, CORS preflights and every other method than GET and HEAD go on to the gRPC stack as
//! before. Other GETs and HEADs are a browser asking for a page: they are answered from the
//! console's directory (the built `console/dist`) by tower-http's [`ServeDir`] (which refuses
//! `..`, absolute and drive-letter segments, so nothing outside the directory is reachable by
//! its path), or with a plain 404 when no directory is configured.
//!
//! The console routes by the URL's fragment (`/#/instances/…`, see console/TESTING.md), so the
//! server only ever serves `/` (its `index.html`) and the files beside it; anything else is a
//! plain 404, and a missing script is never answered with HTML.
//!
//! Every answer carries a strict Content-Security-Policy (same-origin scripts, styles and calls
//! only; no inline script or style, no eval, no framing, no `<base>`, no plugins),
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`. Files under `/assets/`
//! are named by their content's hash by the build (Vite's convention), so they are cached for a
//! year as immutable; everything else (`index.html` above all) is `no-cache`: revalidated on
//! every load, so a new release is picked up at once. Answers are gzip-compressed when the
//! browser accepts it.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tonic::body::Body;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt as _};
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;

use crate::BoxError;

/// What the console's pages may load and call: their own origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; font-src 'self'; connect-src 'self'; manifest-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";
/// Cache of files named by their content's hash.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache of everything else: keep, but ask the server before each use.
const NO_CACHE: &str = "no-cache";
/// Where the build puts hashed files.
const HASHED_PREFIX: &str = "/assets/";

type Files = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Puts the console in front of the gRPC stack; `dir` is the built console, or `None` for a
/// plain 404 to every page request.
#[derive(Clone)]
pub(crate) struct ConsoleLayer {
    files: Files,
}

impl ConsoleLayer {
    pub(crate) fn new(dir: Option<&Path>) -> ConsoleLayer {
        let dir = dir.map(|d| Arc::new(d.to_path_buf()));
        let files = ServiceBuilder::new()
            .layer(CompressionLayer::new())
            .service_fn(move |req| serve(dir.clone(), req))
            .map_response(|res| res.map(Body::new));
        ConsoleLayer {
            files: BoxCloneSyncService::new(files),
        }
    }
}

impl<S> Layer<S> for ConsoleLayer {
    type Service = Console<S>;

    fn layer(&self, grpc: S) -> Console<S> {
        Console {
            grpc,
            files: self.files.clone(),
        }
    }
}

/// The gRPC stack, with page requests answered beside it.
#[derive(Clone)]
pub(crate) struct Console<S> {
    grpc: S,
    files: Files,
}

/// A browser asking for a page or a file (not a gRPC or grpc-web call, not a preflight).
fn is_page_request<B>(req: &Request<B>) -> bool {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    (req.method() == Method::GET || req.method() == Method::HEAD) && !grpc
}

impl<S, B> Service<Request<Body>> for Console<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.grpc.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if is_page_request(&req) {
            let files = self.files.clone();
            return Box::pin(async move {
                match files.oneshot(req).await {
                    Ok(res) => Ok(res),
                    Err(never) => match never {},
                }
            });
        }
        let call = self.grpc.call(req);
        Box::pin(async move { call.await.map(|res| res.map(Body::new)).map_err(Into::into) })
    }
}

async fn serve(
    dir: Option<Arc<PathBuf>>,
    req: Request<Body>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let res = match dir {
        Some(dir) => match ServeDir::new(dir.as_path())
            .append_index_html_on_directories(true)
            .oneshot(req)
            .await
        {
            // ServeDir's 404 is empty; say it in words.
            Ok(res) if res.status() == StatusCode::NOT_FOUND => plain_not_found(),
            Ok(res) => res.map(Body::new),
            Err(never) => match never {},
        },
        None => plain_not_found(),
    };
    Ok(secured(res, &path))
}

fn plain_not_found() -> Response<Body> {
    let mut res = Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(
        b"not found\n",
    ))));
    *res.status_mut() = StatusCode::NOT_FOUND;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// The security and cache headers every page answer carries.
fn secured(mut res: Response<Body>, path: &str) -> Response<Body> {
    let immutable = (res.status().is_success() || res.status() == StatusCode::NOT_MODIFIED)
        && path.starts_with(HASHED_PREFIX);
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable { IMMUTABLE } else { NO_CACHE }),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_and_preflights_are_not_pages() {
        let req = |method: Method, ct: Option<&str>| {
            let mut b = Request::builder().method(method).uri("/x");
            if let Some(ct) = ct {
                b = b.header(header::CONTENT_TYPE, ct);
            }
            b.body(()).expect("request")
        };
        assert!(is_page_request(&req(Method::GET, None)));
        assert!(is_page_request(&req(Method::HEAD, Some("text/html"))));
        assert!(!is_page_request(&req(
            Method::GET,
            Some("application/grpc-web+proto")
        )));
        assert!(!is_page_request(&req(Method::POST, None)));
        assert!(!is_page_request(&req(Method::OPTIONS, None)));
    }
}
