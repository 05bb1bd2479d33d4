//! Email to customers over SMTP (verification and password-reset codes), with `lettre`.
//!
//! Mail is sent in the background: an answer never waits for the SMTP server, and takes as long
//! whatever mail it caused (so timing does not tell whether an address has an account). A send
//! that fails is logged without its content (the codes are secrets).

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};

/// Where and how to send mail.
#[derive(Clone)]
pub struct MailConfig {
    /// The SMTP server: `smtp://host:port` (plain, for a server on loopback only),
    /// `smtp://host:587?tls=required` (STARTTLS) or `smtps://host:465` (TLS from the start).
    /// Credentials may be in the URL (`smtp://user:pass@host`) or below.
    pub smtp_url: String,
    /// SMTP AUTH user name and password, if the server wants them (override the URL's).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sender, e.g. `Kapal <no-reply@example.com>`.
    pub from: String,
}

impl std::fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the password nor a URL that may hold one is printed.
        f.debug_struct("MailConfig")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl MailConfig {
    /// Checks the settings without connecting: the URL and the sender parse, and mail in clear
    /// text (plain `smtp://` without `?tls=`) goes to a loopback server only, since the SMTP
    /// password and the codes would otherwise cross the network readable.
    pub fn check(&self) -> anyhow::Result<()> {
        Mailer::new(self)?;
        let (scheme, rest) = self
            .smtp_url
            .split_once("://")
            .ok_or_else(|| anyhow::anyhow!("the SMTP URL has no scheme (smtp:// or smtps://)"))?;
        if scheme == "smtp" && !rest.contains("tls=") {
            let authority = rest.split(['/', '?']).next().unwrap_or_default();
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            let loopback = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            anyhow::ensure!(
                loopback,
                "plain smtp:// to {host:?} would send the password and the codes in clear text: use smtp://{host}:587?tls=required (STARTTLS) or smtps://{host}:465"
            );
        }
        Ok(())
    }
}

/// Sends mail through one SMTP server.
#[derive(Clone)]
pub(crate) struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(config: &MailConfig) -> anyhow::Result<Mailer> {
        let from: Mailbox = config.from.parse().map_err(|e| {
            anyhow::anyhow!(
                "the mail sender {:?} is not an address like Kapal <no-reply@example.com>: {e}",
                config.from
            )
        })?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
            .map_err(|e| {
                anyhow::anyhow!(
                    "the SMTP URL is not like smtp://host:port, smtp://host:587?tls=required or smtps://host:465: {e}"
                )
            })?
            .timeout(Some(std::time::Duration::from_secs(20)));
        if let Some(user) = &config.username {
            builder =
                builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
                    user.clone(),
                    config.password.clone().unwrap_or_default(),
                ));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
        })
    }

    /// Sends a plain-text mail to `to` in the background.
    pub fn send_later(&self, to: &str, subject: &str, body: String) {
        let message = match to
            .parse::<Mailbox>()
            .map_err(|e| e.to_string())
            .and_then(|to| {
                Message::builder()
                    .from(self.from.clone())
                    .to(to)
                    .subject(subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(body)
                    .map_err(|e| e.to_string())
            }) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "could not build an email");
                return;
            }
        };
        let transport = self.transport.clone();
        let subject = subject.to_string();
        tokio::spawn(async move {
            if let Err(e) = transport.send(message).await {
                tracing::warn!(error = %e, subject, "sending an email failed");
            }
        });
    }
}
