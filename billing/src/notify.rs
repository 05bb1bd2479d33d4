//! Notifications of the subscription lifecycle, as events sent to a [`Notifier`]: a renewal is
//! coming up (once per period, a few days before; see `scheduler::Settings::renewal_notice`),
//! a payment failed, a subscription was suspended, a subscription ended. The scheduler sends
//! one after the step that caused it is committed (best effort: a notifier that fails is
//! logged, the step stands).
//!
//! [`LogNotifier`] writes them to the log; [`WebhookNotifier`] POSTs them as JSON to an HTTP
//! endpoint, signed with HMAC-SHA256 over the body under a shared secret, in the header
//! `x-kapal-signature: sha256=<hex>`, so the receiver can check they come from Kapal.

use std::time::Duration;

use chrono::NaiveDateTime;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A renewal (or the first charge of a converted trial) is a few days away.
    RenewalUpcoming,
    PaymentFailed,
    Suspended,
    Expired,
}

/// One notification.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Notification {
    pub kind: NotificationKind,
    pub subscription_id: String,
    pub account_id: String,
    /// When it happened (UTC).
    pub at: NaiveDateTime,
    /// In words, for the customer.
    pub message: String,
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

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-kapal-signature";

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + bytes.len() * 2);
    hex.push_str("sha256=");
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// POSTs notifications as JSON to `http://host:port/path`, signed (see the module).
#[derive(Clone)]
pub struct WebhookNotifier {
    host: String,
    port: u16,
    path: String,
    secret: Vec<u8>,
    timeout: Duration,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(
            f,
            "WebhookNotifier(http://{}:{}{})",
            self.host, self.port, self.path
        )
    }
}

impl WebhookNotifier {
    /// `url` must be `http://host[:port][/path]`.
    pub fn new(url: &str, secret: &[u8]) -> Result<WebhookNotifier, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("webhook URL {url:?} must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("webhook URL {url:?} has a bad port"))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("webhook URL {url:?} has no host"));
        }
        if secret.len() < 16 {
            return Err("the webhook secret must have at least 16 bytes".to_string());
        }
        Ok(WebhookNotifier {
            host: host.to_string(),
            port,
            path: path.to_string(),
            secret: secret.to_vec(),
            timeout: Duration::from_secs(10),
        })
    }

    async fn post(&self, body: &[u8]) -> Result<u16, String> {
        let mut stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to the webhook: {e}"))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {}:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}: {}\r\nconnection: close\r\n\r\n",
            self.path,
            self.host,
            self.port,
            body.len(),
            SIGNATURE_HEADER,
            signature(&self.secret, body),
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("sending to the webhook: {e}"))?;
        stream
            .write_all(body)
            .await
            .map_err(|e| format!("sending to the webhook: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("reading the webhook's answer: {e}"))?;
        let status_line = response.split(|&b| b == b'\n').next().unwrap_or_default();
        let status = std::str::from_utf8(status_line)
            .ok()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| "the webhook answered something that is not HTTP".to_string())?;
        Ok(status)
    }
}

#[async_trait::async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), String> {
        let body = serde_json::to_vec(n).map_err(|e| e.to_string())?;
        let status = tokio::time::timeout(self.timeout, self.post(&body))
            .await
            .map_err(|_| "the webhook did not answer in time".to_string())??;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("the webhook answered HTTP {status}"))
        }
    }
}
