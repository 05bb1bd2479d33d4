//! Accounts and sessions: `kapal signup`, `login`, `logout` and `whoami`. Signing up and
//! logging in save the session (see `connect::SessionStore`); the password comes from
//! --password/KAPAL_PASSWORD, a prompt, or a line of standard input.

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::{Context as _, bail};
use serde_json::json;
use tonic::Code;

use kapal::proto::v1::account_service_client::AccountServiceClient;

use crate::args::{Global, LoginArgs, SignupArgs};
use crate::connect::{Ctx, RpcResult as _, Session, normalize_endpoint};
use crate::output::{account_json, key_values, print_json, rfc3339, role_name, time, to_utc};
use kapal::proto::v1::{
    LogInRequest, LogOutRequest, SessionResponse, SignUpRequest, WhoAmIRequest,
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
    let resp = AccountServiceClient::new(ctx.anonymous())
        .sign_up(SignUpRequest {
            email: a.email,
            password,
            display_name: a.name.unwrap_or_default(),
        })
        .await
        .or_fail(&ctx)?;
    save_and_show_session(&ctx, resp, "Signed up")
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
    if ctx.json() {
        return print_json(&json!({
            "account": account_json(&account),
            "endpoint": ctx.endpoint,
            "expires_at": expires_at.map(|t| rfc3339(Some(t))),
            "session_file": path.display().to_string(),
        }));
    }
    println!(
        "{what} to {} as {} (customer id {}).",
        ctx.endpoint, account.email, account.customer_id
    );
    println!(
        "Session saved to {}, valid until {}.",
        path.display(),
        rfc3339(expires_at)
    );
    Ok(())
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
            if ctx.json() {
                return print_json(&json!({ "logged_out": false, "endpoint": ctx.endpoint }));
            }
            println!("Not logged in to {}: nothing to do.", ctx.endpoint);
            return Ok(());
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
    if ctx.json() {
        return print_json(&json!({ "logged_out": true, "endpoint": ctx.endpoint }));
    }
    println!("Logged out of {}.", ctx.endpoint);
    Ok(())
}

pub async fn whoami(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let a = ctx
        .accounts()?
        .who_am_i(WhoAmIRequest {})
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        let mut v = account_json(&a);
        v["endpoint"] = json!(ctx.endpoint);
        return print_json(&v);
    }
    print!(
        "{}",
        key_values(&[
            ("Email", a.email.clone()),
            ("Name", a.display_name.clone()),
            ("Customer id", a.customer_id.clone()),
            ("Role", role_name(&a).to_string()),
            ("Account id", a.id.clone()),
            ("Created", time(a.created_at.as_ref())),
            ("Endpoint", ctx.endpoint.clone()),
        ])
    );
    Ok(())
}
