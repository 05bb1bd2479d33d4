//! An instance's history (its status changes and the actions on it) and its diagnostics (what
//! Kubernetes says about it, read by the provisioner, with that history added), for its owner
//! (InstanceService) and for operators (OperatorService).

use kapal::proto::internal::v1::GetDiagnosticsRequest;
use kapal::proto::v1::{InstanceDiagnostics, InstanceHistoryEntry};
use kapal::wire::timestamp;

use crate::error::{Error, Result};
use crate::models::instance_state;
use crate::{Ctx, store};

/// At most this many entries of history are returned (the newest).
const MAX_HISTORY: i64 = 500;
/// Log lines per container when the caller does not say.
const DEFAULT_LOG_LINES: u32 = 50;
const MAX_LOG_LINES: u32 = 500;

/// The instance's history, oldest first (the newest [`MAX_HISTORY`] entries).
pub(crate) async fn history(ctx: &Ctx, instance_id: &str) -> Result<Vec<InstanceHistoryEntry>> {
    let mut rows = store::instance_events::newest(&ctx.db, instance_id, MAX_HISTORY).await?;
    rows.reverse();
    Ok(rows
        .iter()
        .map(|e| InstanceHistoryEntry {
            status: instance_state::status_to_wire(&e.status) as i32,
            reason: e.reason.clone(),
            at: Some(timestamp(e.at)),
            actor: e.actor.clone(),
        })
        .collect())
}

/// Checks the number of log lines asked for: 0 is the default, at most [`MAX_LOG_LINES`].
pub(crate) fn log_lines(n: u32) -> Result<u32> {
    match n {
        0 => Ok(DEFAULT_LOG_LINES),
        n if n <= MAX_LOG_LINES => Ok(n),
        _ => Err(Error::invalid(format!(
            "log_lines is at most {MAX_LOG_LINES} (0 for the default of {DEFAULT_LOG_LINES})"
        ))),
    }
}

/// The diagnostics of `instance_id` from the provisioner, with its history. Node names are
/// left out unless `with_nodes` (operators only: the cluster's layout is not the customer's).
pub(crate) async fn diagnostics(
    ctx: &Ctx,
    instance_id: &str,
    log_lines: u32,
    with_nodes: bool,
) -> Result<InstanceDiagnostics> {
    let log_lines = self::log_lines(log_lines)?;
    let history = history(ctx, instance_id).await?;
    let mut d = match ctx
        .provisioner
        .clone()
        .get_diagnostics(GetDiagnosticsRequest {
            instance_id: instance_id.to_string(),
            log_lines,
        })
        .await
    {
        Ok(d) => d.into_inner(),
        // Nothing in the cluster yet (or any more): the history alone says what happened.
        Err(s) if s.code() == tonic::Code::NotFound => InstanceDiagnostics {
            instance_id: instance_id.to_string(),
            ..Default::default()
        },
        Err(s) => {
            tracing::warn!(instance_id, code = ?s.code(), message = s.message(), "diagnostics unavailable");
            return Err(Error::Unavailable(
                "the instance's diagnostics cannot be read from the cluster now; retry shortly"
                    .into(),
            ));
        }
    };
    if !with_nodes {
        for p in &mut d.pods {
            p.node.clear();
        }
    }
    d.history = history;
    Ok(d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_are_bounded() {
        assert_eq!(super::log_lines(0).ok(), Some(50));
        assert_eq!(super::log_lines(500).ok(), Some(500));
        assert!(super::log_lines(501).is_err());
    }
}
