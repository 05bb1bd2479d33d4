//! Notifications of the subscription lifecycle, as events sent to a [`Notifier`]: a renewal is
//! coming up (once per period, a few days before; see `scheduler::Settings::renewal_notice`),
//! a payment failed, a subscription was suspended, a subscription ended; and, for operators, a
//! credit note's refund that failed (see [`crate::refunds`]). The scheduler sends
//! one after the step that caused it is committed (best effort: a notifier that fails is
//! logged, the step stands).
//!
//! [`LogNotifier`] writes them to the log; [`WebhookNotifier`] POSTs them as JSON to an HTTP
//! endpoint, signed as Standard Webhooks ([`kapal::webhook`], shared with the control-plane's
//! support notices).

use chrono::NaiveDateTime;
use kapal::webhook::SignedWebhook;
use sha2::{Digest as _, Sha256};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A renewal (or the first charge of a converted trial) is a few days away.
    RenewalUpcoming,
    PaymentFailed,
    Suspended,
    Expired,
    /// For operators: a credit note's refund failed (the provider declined it, or did not
    /// answer billing's last attempt); the note is FAILED and its amount released. Someone
    /// checks with the provider whether the money moved, and credits again if it did not.
    RefundFailed,
}

/// One notification.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Notification {
    pub kind: NotificationKind,
    pub subscription_id: String,
    pub account_id: String,
    /// When it happened (UTC).
    pub at: NaiveDateTime,
    /// In words, for the customer (for operators: `refund_failed`).
    pub message: String,
    /// The credit note, for `refund_failed` (absent from the JSON otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_note_id: Option<String>,
}

/// Where notifications go.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync + 'static {
    async fn notify(&self, notification: &Notification) -> Result<(), String>;
}

/// Writes notifications to the log.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogNotifier;

#[async_trait::async_trait]
impl Notifier for LogNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), String> {
        tracing::info!(kind = ?n.kind, subscription = %n.subscription_id, account = %n.account_id, at = %n.at, message = %n.message, "notification");
        Ok(())
    }
}

pub use kapal::webhook::{HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP};

impl Notification {
    /// The message id (`webhook-id`): the same for the same event however often it is sent,
    /// so a receiver that remembers ids handles each event once.
    pub fn id(&self) -> String {
        let mut hash = Sha256::new();
        for part in [
            serde_json::to_string(&self.kind)
                .unwrap_or_default()
                .as_str(),
            &self.subscription_id,
            &self.account_id,
            &self.at.and_utc().timestamp_micros().to_string(),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        // Two notes of one subscription may fail at the same moment.
        if let Some(note) = &self.credit_note_id {
            hash.update(note.as_bytes());
            hash.update([0]);
        }
        let digest = hash.finalize();
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("msg_{hex}")
    }
}

/// POSTs notifications as JSON to `http://host:port/path`, signed (see [`kapal::webhook`]).
#[derive(Clone, Debug)]
pub struct WebhookNotifier(SignedWebhook);

impl WebhookNotifier {
    /// `url` must be `http://host[:port][/path]`; see [`SignedWebhook::new`] for the secret.
    pub fn new(url: &str, secret: &[u8]) -> Result<WebhookNotifier, String> {
        SignedWebhook::new(url, secret).map(WebhookNotifier)
    }
}

#[async_trait::async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), String> {
        let body = serde_json::to_vec(n).map_err(|e| e.to_string())?;
        self.0.send(&n.id(), &body).await
    }
}
