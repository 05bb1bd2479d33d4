//! Notices of support tickets: a ticket was opened, answered by either side, resolved, is at
//! risk of breaching its SLA, or breached it. They go to the control-plane's notifier
//! ([`Config::notifier`](crate::Config::notifier)): the log by default, or the same signed
//! webhook billing uses for its lifecycle notifications (see [`kapal::webhook`]). Sending is
//! best effort, after the change is committed: a notifier that fails is logged, the change
//! stands.

use chrono::NaiveDateTime;
use sha2::{Digest as _, Sha256};

use super::store::Ticket;
use crate::Ctx;

/// What happened to a ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    TicketOpened,
    CustomerReplied,
    OperatorReplied,
    TicketResolved,
    SlaAtRisk,
    SlaBreached,
}

/// One notice, sent as JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Notice {
    pub kind: Kind,
    pub ticket_id: String,
    /// The ticket's customer.
    pub account_id: String,
    pub severity: String,
    /// When it happened (UTC).
    pub at: NaiveDateTime,
    /// In words, for a person.
    pub message: String,
}

impl Notice {
    /// The message id (`webhook-id`): the same for the same event however often it is sent.
    pub fn id(&self) -> String {
        let mut hash = Sha256::new();
        for part in [
            serde_json::to_string(&self.kind)
                .unwrap_or_default()
                .as_str(),
            &self.ticket_id,
            &self.at.and_utc().timestamp_micros().to_string(),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let hex: String = hash
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("msg_{hex}")
    }
}

/// Where notices go.
#[tonic::async_trait]
pub trait Notifier: Send + Sync + 'static {
    async fn notify(&self, notice: &Notice) -> Result<(), String>;
}

/// Writes notices to the log.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogNotifier;

#[tonic::async_trait]
impl Notifier for LogNotifier {
    async fn notify(&self, n: &Notice) -> Result<(), String> {
        tracing::info!(kind = ?n.kind, ticket = %n.ticket_id, account = %n.account_id, severity = %n.severity, at = %n.at, message = %n.message, "support notice");
        Ok(())
    }
}

/// POSTs notices as JSON to the operators' endpoint, signed as Standard Webhooks (the same
/// endpoint and secret as billing's notifications; see [`kapal::webhook`]).
#[derive(Clone, Debug)]
pub struct WebhookNotifier(kapal::webhook::SignedWebhook);

impl WebhookNotifier {
    /// `url` must be `http://host[:port][/path]`; see [`kapal::webhook::SignedWebhook::new`].
    pub fn new(url: &str, secret: &[u8]) -> Result<WebhookNotifier, String> {
        kapal::webhook::SignedWebhook::new(url, secret).map(WebhookNotifier)
    }
}

#[tonic::async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, n: &Notice) -> Result<(), String> {
        let body = serde_json::to_vec(n).map_err(|e| e.to_string())?;
        self.0.send(&n.id(), &body).await
    }
}

/// Sends the notice of `kind` about `t`; failures are logged.
pub(crate) async fn send(ctx: &Ctx, kind: Kind, t: &Ticket, at: NaiveDateTime, message: String) {
    let notice = Notice {
        kind,
        ticket_id: t.id.clone(),
        account_id: t.account_id.clone(),
        severity: t.severity.clone(),
        at,
        message,
    };
    if let Err(e) = ctx.notifier.notify(&notice).await {
        tracing::warn!(ticket = %notice.ticket_id, kind = ?notice.kind, error = %e, "support notice not delivered");
    }
}
