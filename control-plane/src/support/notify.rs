//! Notices of support tickets (a ticket was opened, answered by either side, resolved, is at
//! risk of breaching its SLA, or breached it) and of alerts that opened or closed. They go to
//! the control-plane's notifier ([`Config::notifier`](crate::Config::notifier)): the log by
//! default, or the same signed webhook billing uses for its lifecycle notifications (see
//! [`kapal::webhook`]). Sending is
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
        let kind = serde_json::to_string(&self.kind).unwrap_or_default();
        message_id(&[
            &kind,
            &self.ticket_id,
            &self.at.and_utc().timestamp_micros().to_string(),
        ])
    }
}

/// Whether an alert opened or closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// The alert is new, or its severity changed (then `severity` is the new one).
    AlertOpened,
    /// The condition is gone.
    AlertClosed,
}

/// An alert of ListAlerts (the cluster's and instances' alerts; tickets send their own
/// notices) that opened or closed, pushed by [`crate::alerting`]. Sent as JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AlertNotice {
    pub event: AlertEvent,
    /// The alert's kind, as ListAlerts names it (`capacity_high`, `node_not_ready`,
    /// `instance_failed`, ...).
    pub kind: String,
    /// What it is about: `cluster`, a node's name or an instance id.
    pub subject: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// When it opened (UTC); the same in its "closed" notice.
    pub opened_at: NaiveDateTime,
    /// When this notice's event happened (UTC).
    pub at: NaiveDateTime,
    /// In words, for a person (for a closed alert: the message it had while open).
    pub message: String,
}

impl AlertNotice {
    /// The message id (`webhook-id`): the same for the same event however often it is sent.
    pub fn id(&self) -> String {
        let event = serde_json::to_string(&self.event).unwrap_or_default();
        message_id(&[
            "alert",
            &event,
            &self.kind,
            &self.subject,
            &self.severity,
            &self.opened_at.and_utc().timestamp_micros().to_string(),
        ])
    }
}

/// `msg_` and 32 hex digits of SHA-256 over the parts.
fn message_id(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
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

/// Where notices go.
#[tonic::async_trait]
pub trait Notifier: Send + Sync + 'static {
    async fn notify(&self, notice: &Notice) -> Result<(), String>;
    /// An alert opened or closed.
    async fn alert(&self, notice: &AlertNotice) -> Result<(), String>;
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

    async fn alert(&self, n: &AlertNotice) -> Result<(), String> {
        match n.event {
            AlertEvent::AlertOpened => {
                tracing::warn!(kind = %n.kind, subject = %n.subject, severity = %n.severity, message = %n.message, "alert opened");
            }
            AlertEvent::AlertClosed => {
                tracing::info!(kind = %n.kind, subject = %n.subject, opened_at = %n.opened_at, "alert closed");
            }
        }
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

    async fn alert(&self, n: &AlertNotice) -> Result<(), String> {
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
