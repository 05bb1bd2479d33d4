//! Signed webhooks: the one way Kapal's services POST their notifications (billing's
//! subscription lifecycle, the control-plane's support tickets) to an operator's HTTP endpoint.
//!
//! Requests follow the Standard Webhooks convention (<https://www.standardwebhooks.com>):
//! `webhook-id` (one per event, the same on every attempt), `webhook-timestamp` (Unix seconds
//! when sent) and `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
//!
//! The key is the configured secret: `whsec_<base64>` is decoded as the Standard Webhooks
//! libraries do; any other secret (16+ bytes) is used as it is. A receiver checks the
//! signature with a constant-time comparison, refuses a timestamp more than 5 minutes from its
//! own clock, and remembers the ids it handled in the last 5 minutes: a captured request
//! replayed later fails the timestamp check, replayed at once it repeats an id.

use std::time::Duration;

use standardwebhooks::Webhook;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub use standardwebhooks::{HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP};

/// The most of a webhook's answer that is read (its status line is all that matters).
const MAX_RESPONSE_BYTES: u64 = 16 * 1024;

/// POSTs JSON bodies to `http://host:port/path`, signed (see the module).
#[derive(Clone)]
pub struct SignedWebhook {
    host: String,
    port: u16,
    path: String,
    signer: std::sync::Arc<Webhook>,
    timeout: Duration,
}

impl std::fmt::Debug for SignedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(
            f,
            "SignedWebhook(http://{}:{}{})",
            self.host, self.port, self.path
        )
    }
}

impl SignedWebhook {
    /// `url` must be `http://host[:port][/path]`.
    pub fn new(url: &str, secret: &[u8]) -> Result<SignedWebhook, String> {
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
        let signer = match secret.strip_prefix(b"whsec_") {
            Some(encoded) => {
                let encoded = std::str::from_utf8(encoded)
                    .map_err(|_| "the webhook secret whsec_... must be base64".to_string())?;
                Webhook::new(encoded)
                    .map_err(|_| "the webhook secret whsec_... must be base64".to_string())?
            }
            None if secret.len() < 16 => {
                return Err("the webhook secret must have at least 16 bytes".to_string());
            }
            None => Webhook::from_bytes(secret.to_vec())
                .map_err(|_| "the webhook secret is not usable".to_string())?,
        };
        Ok(SignedWebhook {
            host: host.to_string(),
            port,
            path: path.to_string(),
            signer: std::sync::Arc::new(signer),
            timeout: Duration::from_secs(10),
        })
    }

    /// POSTs `body` (JSON) as message `id`; an answer other than 2xx within 10 s is an error.
    pub async fn send(&self, id: &str, body: &[u8]) -> Result<(), String> {
        let status = tokio::time::timeout(self.timeout, self.post(id, body))
            .await
            .map_err(|_| "the webhook did not answer in time".to_string())??;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("the webhook answered HTTP {status}"))
        }
    }

    async fn post(&self, id: &str, body: &[u8]) -> Result<u16, String> {
        // The time of sending (not of the event): receivers compare it with their clock.
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self
            .signer
            .sign(id, timestamp, body)
            .map_err(|e| format!("signing the webhook: {e}"))?;
        let mut stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to the webhook: {e}"))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {}:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{HEADER_WEBHOOK_ID}: {id}\r\n{HEADER_WEBHOOK_TIMESTAMP}: {timestamp}\r\n{HEADER_WEBHOOK_SIGNATURE}: {signature}\r\nconnection: close\r\n\r\n",
            self.path,
            self.host,
            self.port,
            body.len(),
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("sending to the webhook: {e}"))?;
        stream
            .write_all(body)
            .await
            .map_err(|e| format!("sending to the webhook: {e}"))?;
        // A receiver that answers endlessly is cut off: only the status line is needed.
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE_BYTES)
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
