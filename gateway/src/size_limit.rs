//! The request size limit: the one request message of a call is read into memory, up to the
//! limit, before the call is forwarded. A bigger one is INVALID_ARGUMENT, answered before any
//! upstream sees a byte of it. Responses are not limited here.
//!
//! Calls whose client sends a stream of messages (none in the public API today; the gateway's
//! own reflection service) are passed on unbuffered: buffering would wait for the end of a stream
//! that may never end. For those the serving side's own decoding limit applies.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use tonic::body::Body;

use crate::error::Error;
use crate::middleware::{Middleware, Next, Req, Res, forward};
use crate::routes::Route;

/// A gRPC message is framed by a 1-byte compression flag and a 4-byte length.
const FRAME_HEADER_BYTES: usize = 5;

#[derive(Clone, Copy, Debug)]
pub(crate) struct SizeLimit {
    pub(crate) max_message_bytes: usize,
}

impl Middleware for SizeLimit {
    async fn call<S: Next>(self, req: Req, next: S) -> Res {
        let streaming = req
            .extensions()
            .get::<Route>()
            .is_some_and(|r| r.client_streaming);
        if streaming {
            return forward(next, req).await;
        }
        let (parts, body) = req.into_parts();
        let limit = self.max_message_bytes.saturating_add(FRAME_HEADER_BYTES);
        match Limited::new(body, limit).collect().await {
            Ok(collected) => {
                let body = Body::new(Full::<Bytes>::new(collected.to_bytes()));
                forward(next, Req::from_parts(parts, body)).await
            }
            Err(e) if e.is::<LengthLimitError>() => Error::MessageTooLarge {
                limit: self.max_message_bytes,
            }
            .into_response(),
            Err(e) => Error::RequestBody(e).into_response(),
        }
    }
}
