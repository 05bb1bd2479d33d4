//! The provisioner's errors and the one place they become gRPC statuses.
//!
//! Policy: start-up and background loops use `anyhow` and log; data access returns
//! [`DbError`]; the Kubernetes layer returns [`kube::Error`]; everything that reaches the API edge
//! is an [`Error`]. Its conversion into [`tonic::Status`] (the only one in this crate) logs
//! internal failures with their whole chain and answers with a safe, fixed message: never the
//! internal text, never a secret. Bad input becomes `INVALID_ARGUMENT` with a message the caller
//! can act on.

use kapal::db::DbError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message says what to fix.
    #[error("{0}")]
    InvalidArgument(String),
    /// The instance (or its credentials) does not exist yet.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what exists (e.g. a namespace that belongs to someone else).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("database error")]
    Db(#[from] DbError),
    #[error("Kubernetes API error")]
    Kube(#[from] kube::Error),
    /// A broken invariant (e.g. a stored instance whose app left the catalog).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::InvalidArgument(msg.into())
    }

    /// Whether this failure is worth retrying later (the cluster or database may recover).
    pub fn is_transient(&self) -> bool {
        !matches!(self, Error::InvalidArgument(_) | Error::NotFound(_))
    }
}

/// The full chain of an error, for logs.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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
            Error::InvalidArgument(msg) => Status::invalid_argument(msg),
            Error::NotFound(msg) => Status::not_found(msg),
            Error::FailedPrecondition(msg) => Status::failed_precondition(msg),
            Error::Db(ref inner) => {
                tracing::error!(error = %chain(inner), "database failure");
                Status::unavailable("the provisioner's database is unavailable; try again")
            }
            Error::Kube(ref inner) => {
                tracing::error!(error = %chain(inner), "Kubernetes API failure");
                match inner {
                    kube::Error::Api(_) => Status::internal(
                        "the cluster rejected a change; it is logged and will be retried",
                    ),
                    _ => Status::unavailable("the cluster is not reachable right now; try again"),
                }
            }
            Error::Internal(ref msg) => {
                tracing::error!(error = %msg, "internal error");
                Status::internal("internal error in the provisioner")
            }
        }
    }
}
