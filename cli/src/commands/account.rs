//! Accounts and sessions: `kapal signup`, `login`, `logout` and `whoami`. Signing up and
//! logging in save the session (see `connect::SessionStore`); the password comes from
//! --password/KAPAL_PASSWORD, a prompt, or a line of standard input.

use std::io::{BufRead as _, IsTerminal as _};

use std::path::Path;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tonic::Code;

use kapal::proto::v1::account_service_client::AccountServiceClient;

use crate::args::{Global, LoginArgs, ResetPasswordArgs, SignupArgs, VerifyEmailArgs};
use crate::connect::{Ctx, RpcResult as _, Session, normalize_endpoint};
use crate::output::{Render, key_values, rfc3339, short, time, to_utc, ts_json};
use kapal::proto::v1::{
    Account, LogInRequest, LogOutRequest, RequestPasswordResetRequest, ResendVerificationRequest,
    ResetPasswordRequest, SessionResponse, SignUpRequest, VerifyEmailRequest, WhoAmIRequest,
};

/// The password: the flag or KAPAL_PASSWORD, else a prompt on a terminal, else a line of stdin.
fn read_password(given: Option<String>, confirm: bool) -> anyhow::Result<String> {
    if let Some(p) = given.filter(|p| !p.is_empty()) {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        if confirm {
            let again = rpassword::prompt_password("Password again: ")
                .context("cannot read the password")?;
            if again != p {
                bail!("the two passwords differ");
            }
        }
        if p.is_empty() {
            bail!("no password given");
        }
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        bail!(
            "no password given: use --password, set KAPAL_PASSWORD, or write it on standard input"
        );
    }
    Ok(p)
}

pub async fn signup(a: SignupArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    ctx.store.dir()?;
    let password = read_password(a.password.password, true)?;
    let mut accounts = AccountServiceClient::new(ctx.anonymous());
    let resp = accounts
        .sign_up(SignUpRequest {
            email: a.email.clone(),
            password: password.clone(),
            display_name: a.name.unwrap_or_default(),
        })
        .await
        .or_fail(&ctx)?;
    if !resp.verification_sent {
        return save_and_show_session(&ctx, resp, "Signed up");
    }
    // The server mailed the address and opened no session (it answers so whether or not the
    // address had an account): log in with the password, which works if the account is ours.
    let mail = format!(
        "Check the inbox of {}: verify the address with `kapal verify-email --email {} --code CODE` before ordering.",
        a.email, a.email
    );
    match accounts
        .log_in(LogInRequest {
            email: a.email.clone(),
            password,
        })
        .await
    {
        Ok(resp) => {
            save_and_show_session(&ctx, resp.into_inner(), "Signed up")?;
            ctx.output.progress(&mail);
            Ok(())
        }
        Err(s) if s.code() == Code::Unauthenticated => ctx.print(&Done {
            done: "signup",
            message: format!(
                "Mailed {}. If the address already had an account, the mail says so: log in, or `kapal reset-password --email {}`.",
                a.email, a.email
            ),
        }),
        Err(s) => Err(ctx.rpc_error(&s)),
    }
}

/// The answer of commands that only report that they did something.
#[derive(Serialize)]
struct Done {
    done: &'static str,
    message: String,
}

impl Render for Done {
    fn text(&self) -> String {
        format!("{}\n", self.message)
    }

    fn json(&self) -> impl Serialize {
        self
    }
}

pub async fn verify_email(a: VerifyEmailArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    AccountServiceClient::new(ctx.anonymous())
        .verify_email(VerifyEmailRequest {
            email: a.email.clone(),
            code: a.code,
        })
        .await
        .or_fail(&ctx)?;
    ctx.print(&Done {
        done: "verify-email",
        message: format!("Verified {}: you can order now.", a.email),
    })
}

pub async fn resend_verification(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    ctx.accounts()?
        .resend_verification(ResendVerificationRequest {})
        .await
        .or_fail(&ctx)?;
    ctx.print(&Done {
        done: "resend-verification",
        message: "Mailed a new verification code to your address.".into(),
    })
}

pub async fn reset_password(a: ResetPasswordArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut accounts = AccountServiceClient::new(ctx.anonymous());
    let Some(code) = a.code else {
        accounts
            .request_password_reset(RequestPasswordResetRequest {
                email: a.email.clone(),
            })
            .await
            .or_fail(&ctx)?;
        return ctx.print(&Done {
            done: "reset-password",
            message: format!(
                "If {} has an account, a reset code is on its way; then run `kapal reset-password --email {} --code CODE`.",
                a.email, a.email
            ),
        });
    };
    let password = read_password(a.password.password, true)?;
    accounts
        .reset_password(ResetPasswordRequest {
            email: a.email.clone(),
            code,
            new_password: password,
        })
        .await
        .or_fail(&ctx)?;
    ctx.print(&Done {
        done: "reset-password",
        message: format!(
            "New password set for {}; every session was ended. Log in with `kapal login --email {}`.",
            a.email, a.email
        ),
    })
}

pub async fn login(a: LoginArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    ctx.store.dir()?;
    let password = read_password(a.password.password, false)?;
    let resp = AccountServiceClient::new(ctx.anonymous())
        .log_in(LogInRequest {
            email: a.email,
            password,
        })
        .await
        .or_fail(&ctx)?;
    save_and_show_session(&ctx, resp, "Logged in")
}

fn save_and_show_session(ctx: &Ctx, resp: SessionResponse, what: &str) -> anyhow::Result<()> {
    let account = resp.account.unwrap_or_default();
    let expires_at = resp.expires_at.as_ref().and_then(to_utc);
    let session = Session {
        endpoint: ctx.endpoint.clone(),
        token: resp.token,
        expires_at,
        account_id: account.id.clone(),
        email: account.email.clone(),
    };
    let path = ctx
        .store
        .save(&session)
        .with_context(|| format!("{what}, but the session could not be saved"))?;
    ctx.print(&SessionSaved {
        what,
        endpoint: &ctx.endpoint,
        account: &account,
        expires_at,
        path: &path,
    })
}

/// The answer to `kapal signup` and `kapal login`.
struct SessionSaved<'a> {
    /// `Signed up` or `Logged in`.
    what: &'a str,
    endpoint: &'a str,
    account: &'a Account,
    expires_at: Option<DateTime<Utc>>,
    path: &'a Path,
}

#[derive(Serialize)]
struct SessionSavedJson<'a> {
    account: AccountJson<'a>,
    endpoint: &'a str,
    expires_at: Option<String>,
    session_file: String,
}

impl Render for SessionSaved<'_> {
    fn text(&self) -> String {
        format!(
            "{} to {} as {} (customer id {}).\nSession saved to {}, valid until {}.\n",
            self.what,
            self.endpoint,
            self.account.email,
            self.account.customer_id,
            self.path.display(),
            rfc3339(self.expires_at)
        )
    }

    fn json(&self) -> impl Serialize {
        SessionSavedJson {
            account: AccountJson::from(self.account),
            endpoint: self.endpoint,
            expires_at: self.expires_at.map(|t| rfc3339(Some(t))),
            session_file: self.path.display().to_string(),
        }
    }
}

pub async fn logout(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let server = match ctx.accounts() {
        Ok(mut c) => Some(c.log_out(LogOutRequest {}).await),
        Err(_) => None,
    };
    // Forget the saved session if it is for this endpoint (or unreadable, so useless).
    let forget = match ctx.store.load() {
        Ok(Some(s)) => normalize_endpoint(&s.endpoint) == ctx.endpoint,
        Ok(None) => false,
        Err(_) => true,
    };
    let removed = forget && ctx.store.remove()?;
    match server {
        None if !removed => {
            // Nothing to end and nothing saved: already logged out, which is what was asked.
            return ctx.print(&LoggedOut {
                logged_out: false,
                endpoint: &ctx.endpoint,
            });
        }
        Some(Err(s)) if s.code() != Code::Unauthenticated => {
            let err = ctx.rpc_error(&s);
            if removed {
                bail!("forgot the saved session, but the server could not end it: {err}");
            }
            return Err(err);
        }
        _ => {}
    }
    ctx.print(&LoggedOut {
        logged_out: true,
        endpoint: &ctx.endpoint,
    })
}

/// The answer to `kapal logout`: whether there was a session to end.
#[derive(Serialize)]
struct LoggedOut<'a> {
    logged_out: bool,
    endpoint: &'a str,
}

impl Render for LoggedOut<'_> {
    fn text(&self) -> String {
        if self.logged_out {
            format!("Logged out of {}.\n", self.endpoint)
        } else {
            format!("Not logged in to {}: nothing to do.\n", self.endpoint)
        }
    }

    fn json(&self) -> impl Serialize {
        self
    }
}

pub async fn whoami(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let account = ctx
        .accounts()?
        .who_am_i(WhoAmIRequest {})
        .await
        .or_fail(&ctx)?;
    ctx.print(&WhoAmI {
        account: &account,
        endpoint: &ctx.endpoint,
    })
}

/// The answer to `kapal whoami`: the account and the endpoint it is on.
struct WhoAmI<'a> {
    account: &'a Account,
    endpoint: &'a str,
}

#[derive(Serialize)]
struct WhoAmIJson<'a> {
    #[serde(flatten)]
    account: AccountJson<'a>,
    endpoint: &'a str,
}

impl Render for WhoAmI<'_> {
    fn text(&self) -> String {
        let a = self.account;
        key_values(&[
            ("Email", a.email.clone()),
            ("Name", a.display_name.clone()),
            ("Customer id", a.customer_id.clone()),
            ("Role", role_name(a).to_string()),
            (
                "Email verified",
                if a.email_verified { "yes" } else { "no" }.to_string(),
            ),
            ("Account id", a.id.clone()),
            ("Created", time(a.created_at.as_ref())),
            ("Endpoint", self.endpoint.to_string()),
        ])
    }

    fn json(&self) -> impl Serialize {
        WhoAmIJson {
            account: AccountJson::from(self.account),
            endpoint: self.endpoint,
        }
    }
}

/// An account in JSON.
#[derive(Serialize)]
struct AccountJson<'a> {
    id: &'a str,
    email: &'a str,
    customer_id: &'a str,
    display_name: &'a str,
    role: &'static str,
    created_at: Option<String>,
}

impl<'a> From<&'a Account> for AccountJson<'a> {
    fn from(a: &'a Account) -> Self {
        AccountJson {
            id: &a.id,
            email: &a.email,
            customer_id: &a.customer_id,
            display_name: &a.display_name,
            role: role_name(a),
            created_at: ts_json(a.created_at.as_ref()),
        }
    }
}

/// `ROLE_ADMIN` -> `ADMIN`.
fn role_name(a: &Account) -> &'static str {
    short(a.role().as_str_name(), "ROLE_")
}
