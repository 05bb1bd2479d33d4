//! Errors of the control-plane and their one mapping to gRPC statuses.
//!
//! Policy: start-up and background jobs use `anyhow`; data access returns [`DbError`]; the API
//! edge returns [`Error`]. `From<Error> for Status` is the only place an error becomes a status:
//! caller mistakes keep their message (it is written for the caller), everything internal is
//! logged with its whole chain and answered with a generic message, so no internal detail or
//! secret reaches a client.

use kapal::db::DbError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message says how to fix it.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller could not be authenticated.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this (e.g. a read-only token creating tokens, a wrong current
    /// password); the message says what would be allowed.
    #[error("{0}")]
    PermissionDenied(String),
    /// The thing does not exist, or is not the caller's.
    #[error("{0}")]
    NotFound(String),
    /// The thing exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but not now (e.g. restarting a stopped instance).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The platform has no room for this.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A peer Kapal needs (e.g. the provisioner) cannot be reached now; retrying later helps.
    #[error("{0}")]
    Unavailable(String),
    /// A peer service said no with a status meant for the caller.
    #[error("{0}")]
    Peer(Status),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Internal(String),
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Error::Db(DbError::Query(e))
    }
}

/// Statuses made by the shared wire helpers (invalid arguments) pass through as they are.
impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::Peer(s)
    }
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
}

/// A field the shared wire helpers refused.
impl From<kapal::wire::Invalid> for Error {
    fn from(e: kapal::wire::Invalid) -> Self {
        Error::InvalidArgument(e.0)
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Peer(s) => Status::new(s.code(), s.message().to_string()),
            Error::Db(e) => {
                tracing::error!(error = %e, "database error");
                Status::internal("internal error; please retry")
            }
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error; please retry")
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
