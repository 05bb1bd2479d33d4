//! Errors the gateway itself answers with, and their one mapping to gRPC statuses.
//!
//! Policy: start-up uses `anyhow` (with the name of the bad setting); everything that goes wrong
//! while serving a call is an [`Error`], and `From<Error> for Status` is the only place one becomes
//! a status. Caller mistakes (no token, too big, too fast, too slow) keep their message, which is
//! written for the caller. Failures inside Kapal (an upstream that cannot be reached, an identity
//! service that misbehaves) are logged with their whole chain and answered with a generic message,
//! so no internal detail, address or secret reaches a client. A gateway error is sent as a
//! trailers-only gRPC response (HTTP 200, `grpc-status` in the headers), which tonic-web turns
//! into the grpc-web form for browsers.

use std::time::Duration;

use tonic::Status;
use tonic::body::Body;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a method of Kapal's public API (internal services included).
    #[error("{path} is not a method of the Kapal API")]
    UnknownMethod { path: String },
    /// The call needs a token and has none.
    #[error(
        "this call needs a session or API token: send the header `authorization: Bearer <token>` (LogIn or SignUp returns one)"
    )]
    MissingToken,
    /// The authorization header is not `Bearer <token>`.
    #[error("the authorization header must have the form `Bearer <token>`")]
    MalformedAuthorization,
    /// The identity service does not know the token.
    #[error("the token is invalid, expired or revoked: log in again")]
    InvalidToken,
    /// A READ_ONLY API token tried a call that changes something.
    #[error(
        "this API token is read-only and {method} changes something: use a session (kapal login) or an API token with scope FULL"
    )]
    ReadOnlyToken { method: String },
    /// The identity service refused the token's account (suspended by an operator); the
    /// message is the control-plane's, written for the caller.
    #[error("{0}")]
    AccountRefused(String),
    /// The caller is over its rate limit.
    #[error("rate limit exceeded: try again in {} ms", retry_after.as_millis().max(1))]
    RateLimited { retry_after: Duration },
    /// The request message is larger than the configured limit.
    #[error("request message is larger than the {} limit", human_size(*limit))]
    MessageTooLarge { limit: usize },
    /// The request body could not be read (the client went away, or sent broken grpc-web).
    #[error("the request body could not be read")]
    RequestBody(#[source] crate::BoxError),
    /// The call did not finish in time.
    #[error("the call did not finish within its deadline of {} ms", deadline.as_millis())]
    DeadlineExceeded { deadline: Duration },
    /// An upstream service could not be reached.
    #[error("cannot reach the {upstream} service")]
    Upstream {
        upstream: &'static str,
        #[source]
        source: crate::BoxError,
    },
    /// The identity service failed (other than by rejecting the token).
    #[error("the identity service failed: {0}")]
    Identity(Status),
    /// The identity service answered with a principal the gateway cannot use.
    #[error("the identity service returned an unusable principal: {0}")]
    BadPrincipal(String),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        match e {
            Error::UnknownMethod { .. } => Status::unimplemented(message),
            Error::MissingToken | Error::MalformedAuthorization | Error::InvalidToken => {
                Status::unauthenticated(message)
            }
            Error::ReadOnlyToken { .. } => Status::permission_denied(message),
            Error::AccountRefused(_) => Status::permission_denied(message),
            Error::RateLimited { .. } => Status::resource_exhausted(message),
            Error::MessageTooLarge { .. } | Error::RequestBody(_) => {
                Status::invalid_argument(message)
            }
            Error::DeadlineExceeded { .. } => Status::deadline_exceeded(message),
            Error::Upstream { .. } | Error::Identity(_) | Error::BadPrincipal(_) => {
                tracing::error!(error = %chain(&e), "gateway call failed");
                Status::unavailable("Kapal is temporarily unavailable; try again shortly")
            }
        }
    }
}

impl Error {
    /// The trailers-only gRPC response carrying this error.
    pub fn into_response(self) -> http::Response<Body> {
        Status::from(self).into_http()
    }
}

/// The error with all its sources, for logs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `65536` as "64 KiB", `1048576` as "1 MiB", other sizes in bytes.
pub(crate) fn human_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_person_would_write_them() {
        assert_eq!(human_size(64 * 1024), "64 KiB");
        assert_eq!(human_size(4 * 1024 * 1024), "4 MiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }

    #[test]
    fn internal_failures_say_nothing_about_the_inside() {
        let status = Status::from(Error::Identity(Status::internal(
            "db at 10.0.0.7:5432 refused",
        )));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(!status.message().contains("10.0.0.7"));
    }

    #[test]
    fn a_suspended_account_is_told_why() {
        let status = Status::from(Error::AccountRefused(
            "This account was suspended by Kapal support: T-9".into(),
        ));
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "This account was suspended by Kapal support: T-9"
        );
    }

    #[test]
    fn caller_mistakes_keep_their_message() {
        let status = Status::from(Error::MessageTooLarge { limit: 64 * 1024 });
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "request message is larger than the 64 KiB limit"
        );
        let status = Status::from(Error::RateLimited {
            retry_after: Duration::from_millis(250),
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "rate limit exceeded: try again in 250 ms");
    }
}
