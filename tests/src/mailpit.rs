//! The real SMTP server of the tests: Mailpit (`scripts/mailpit`), on loopback. Services send
//! mail to it over SMTP; tests read what arrived through its HTTP API.
//!
//! Environment: `KAPAL_TEST_SMTP_URL` and `KAPAL_TEST_MAILPIT_API` point at a running Mailpit
//! (scripts/test sets them); otherwise [`Mailpit::get`] runs `scripts/mailpit up` (idempotent:
//! quick when it is up; the first run on a machine builds Mailpit from the Go module proxy).

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A running Mailpit.
#[derive(Clone, Debug)]
pub struct Mailpit {
    /// `smtp://127.0.0.1:PORT`
    pub smtp_url: String,
    /// `127.0.0.1:PORT` of the HTTP API.
    api: String,
}

/// A mail as Mailpit received it.
#[derive(Clone, Debug)]
pub struct Mail {
    pub subject: String,
    pub text: String,
}

impl Mail {
    /// The one-time code in the mail (`1234-5678`).
    pub fn code(&self) -> anyhow::Result<String> {
        self.text
            .split_whitespace()
            .find(|w| {
                w.len() == 9
                    && w.as_bytes()[4] == b'-'
                    && w.chars().filter(char::is_ascii_digit).count() == 8
            })
            .map(str::to_string)
            .with_context(|| format!("no code in the mail {:?}", self.subject))
    }
}

fn script(arg: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mailpit");
    let out = std::process::Command::new(&path)
        .arg(arg)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/mailpit {arg} failed ({})",
        out.status
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn host_port(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_string()
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Mailpit {
    /// The tests' Mailpit, started if needed.
    pub async fn get() -> anyhow::Result<Mailpit> {
        if let (Ok(smtp), Ok(api)) = (
            std::env::var("KAPAL_TEST_SMTP_URL"),
            std::env::var("KAPAL_TEST_MAILPIT_API"),
        ) {
            return Ok(Mailpit {
                smtp_url: smtp,
                api: host_port(&api),
            });
        }
        tokio::task::spawn_blocking(|| {
            let smtp_url = script("up")?;
            let api = host_port(&script("api")?);
            Ok(Mailpit { smtp_url, api })
        })
        .await?
    }

    /// The base URL of Mailpit's HTTP API (`http://127.0.0.1:PORT`), for readers outside Rust
    /// (the console's browser tests).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// A control-plane mail configuration sending to this Mailpit.
    pub fn mail_config(&self) -> kapal_control_plane::MailConfig {
        kapal_control_plane::MailConfig {
            smtp_url: self.smtp_url.clone(),
            username: Some("kapal".into()),
            password: Some("test-smtp-password".into()),
            from: "Kapal <no-reply@kapal.test>".into(),
        }
    }

    /// GET on the API (HTTP/1.0 over loopback); the body as JSON.
    async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let mut s = tokio::net::TcpStream::connect(&self.api).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.api).as_bytes())
            .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let raw = String::from_utf8(raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP body")?;
        anyhow::ensure!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "GET {path}: {}",
            head.lines().next().unwrap_or_default()
        );
        Ok(serde_json::from_str(body)?)
    }

    /// Every mail sent to `to` so far, oldest first.
    pub async fn mails_to(&self, to: &str) -> anyhow::Result<Vec<Mail>> {
        let query = encode(&format!("to:\"{to}\""));
        let list = self
            .get_json(&format!("/api/v1/search?query={query}&limit=50"))
            .await?;
        let mut mails = Vec::new();
        for m in list["messages"].as_array().into_iter().flatten().rev() {
            let id = m["ID"].as_str().context("message without ID")?;
            let full = self.get_json(&format!("/api/v1/message/{id}")).await?;
            mails.push(Mail {
                subject: full["Subject"].as_str().unwrap_or_default().to_string(),
                text: full["Text"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(mails)
    }

    /// Waits until `to` has received `n` mails; returns them, oldest first.
    pub async fn wait_for(&self, to: &str, n: usize) -> anyhow::Result<Vec<Mail>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mails = self.mails_to(to).await?;
            if mails.len() >= n {
                return Ok(mails);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{to} received {} mail(s) in 20 s, expected {n}: {:?}",
                    mails.len(),
                    mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
