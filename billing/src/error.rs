//! Billing's errors and how callers see them.
//!
//! Policy: start-up uses `anyhow`; data access returns [`DbError`]; everything the RPC handlers
//! can fail with is an [`Error`], and the one `From<Error> for Status` below is the only place
//! that turns it into a gRPC status. Errors caused by the caller (bad input, unknown ids,
//! a declined payment) carry a message the caller can act on. Internal errors (database,
//! corrupt rows) are logged here with their whole chain and reach the caller only as a generic
//! INTERNAL message: never internal text, never secrets.

use kapal::db::DbError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or names something that does not exist in the catalog.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller has no such subscription (or it is someone else's).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The order already has a subscription with different details.
    #[error("{0}")]
    OrderConflict(String),
    /// The request is valid but the subscription's state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The first payment did not settle; the reason is fit for the customer.
    #[error("payment failed: {0}")]
    PaymentFailed(String),
    /// Another request is charging the same invoice and did not finish in time.
    #[error("a payment for this order is in progress")]
    PaymentInProgress,
    /// Something billing needs (the audit log, the payment provider, the control-plane) did not
    /// answer; the text says what was and was not done.
    #[error("{0}")]
    Unavailable(String),
    /// A concurrent change won a race; the operation is retried from the start.
    #[error("a concurrent change won; retry")]
    Raced,
    /// The cluster has no room for what was asked (e.g. a bigger plan); fit for the customer.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored row that billing cannot read (e.g. an unknown status).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Error::Db(DbError::Query(e))
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
            Error::InvalidArgument(msg) => Status::invalid_argument(msg),
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::OrderConflict(msg) => Status::already_exists(msg),
            Error::FailedPrecondition(msg) => Status::failed_precondition(msg),
            e @ Error::PaymentFailed(_) => Status::failed_precondition(e.to_string()),
            e @ Error::PaymentInProgress => {
                Status::unavailable(format!("{e}; retry in a few seconds"))
            }
            Error::Unavailable(msg) => Status::unavailable(msg),
            e @ Error::Raced => Status::aborted(e.to_string()),
            Error::ResourceExhausted(msg) => Status::resource_exhausted(msg),
            e @ (Error::Db(_) | Error::Corrupt(_)) => {
                tracing::error!(error = %ErrorChain(&e), "billing request failed");
                Status::internal("billing failed internally; the error was logged")
            }
        }
    }
}

/// Displays an error with its sources: "a: b: c".
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
