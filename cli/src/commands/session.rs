//! Sessions and the password: `kapal password change`, `kapal sessions list` and
//! `kapal sessions revoke`.

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::{Context as _, bail};
use serde::Serialize;

use kapal::proto::v1::{
    ChangePasswordRequest, ListSessionsRequest, RevokeSessionRequest, Session as SessionInfo,
};

use crate::args::{Global, PasswordChangeArgs, SessionRevokeArgs};
use crate::connect::{Ctx, NO_LIMIT, RpcResult as _, collect_pages};
use crate::output::{Render, Table, dash, time, ts_json};

/// A secret from its flag or environment variable, else a prompt on a terminal, else one line
/// of standard input (so a script can pipe the current and the new password, one per line).
fn read_secret(given: Option<String>, prompt: &str, confirm: bool) -> anyhow::Result<String> {
    if let Some(p) = given.filter(|p| !p.is_empty()) {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password(format!("{prompt}: "))
            .context("cannot read the password")?;
        if confirm {
            let again = rpassword::prompt_password(format!("{prompt} again: "))
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
            "no {} given: use its flag, its environment variable, or write it on standard input",
            prompt.to_lowercase()
        );
    }
    Ok(p)
}

pub async fn password_change(a: PasswordChangeArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let current = read_secret(a.current_password, "Current password", false)?;
    let new = read_secret(a.new_password, "New password", true)?;
    let resp = ctx
        .accounts()?
        .change_password(ChangePasswordRequest {
            current_password: current,
            new_password: new,
        })
        .await
        .or_fail(&ctx)?;
    ctx.print(&Changed {
        done: "password-change",
        sessions_ended: resp.sessions_ended,
    })
}

pub async fn sessions_list(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let mut client = ctx.accounts()?;
    let (all, _) = collect_pages(NO_LIMIT, async |page_size, page_token| {
        let resp = client
            .list_sessions(ListSessionsRequest {
                page_size,
                page_token,
            })
            .await
            .or_fail(&ctx)?;
        Ok((resp.sessions, resp.next_page_token))
    })
    .await?;
    ctx.print(&Sessions(all))
}

pub async fn sessions_revoke(a: SessionRevokeArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let s = ctx
        .accounts()?
        .revoke_session(RevokeSessionRequest { id: a.id })
        .await
        .or_fail(&ctx)?;
    ctx.print(&Revoked(s))
}

/// The answer to `kapal password change`.
#[derive(Serialize)]
struct Changed {
    done: &'static str,
    sessions_ended: u32,
}

impl Render for Changed {
    fn text(&self) -> String {
        let sessions = match self.sessions_ended {
            0 => "no other session was open".to_string(),
            1 => "1 other session was ended".to_string(),
            n => format!("{n} other sessions were ended"),
        };
        format!("Password changed; {sessions}. This session and your API tokens stay.\n")
    }

    fn json(&self) -> impl Serialize {
        self
    }
}

/// The answer to `kapal sessions list`.
struct Sessions(Vec<SessionInfo>);

#[derive(Serialize)]
struct SessionsJson<'a> {
    sessions: Vec<SessionJson<'a>>,
}

impl Render for Sessions {
    fn text(&self) -> String {
        let mut t = Table::new(&[
            "ID",
            "",
            "CREATED",
            "LAST USED",
            "EXPIRES",
            "ADDRESS",
            "CLIENT",
        ]);
        for s in &self.0 {
            t.row(vec![
                s.id.clone(),
                if s.current { "this one" } else { "" }.to_string(),
                time(s.created_at.as_ref()),
                time(s.last_used_at.as_ref()),
                time(s.expires_at.as_ref()),
                dash(&s.client_address),
                s.user_agent.clone(),
            ]);
        }
        t.render()
    }

    fn json(&self) -> impl Serialize {
        SessionsJson {
            sessions: self.0.iter().map(SessionJson::from).collect(),
        }
    }
}

/// The answer to `kapal sessions revoke`.
struct Revoked(SessionInfo);

impl Render for Revoked {
    fn text(&self) -> String {
        if self.0.current {
            format!(
                "Ended session {} (the one this command used: log in again).\n",
                self.0.id
            )
        } else {
            format!("Ended session {}.\n", self.0.id)
        }
    }

    fn json(&self) -> impl Serialize {
        SessionJson::from(&self.0)
    }
}

/// A session in JSON.
#[derive(Serialize)]
struct SessionJson<'a> {
    id: &'a str,
    current: bool,
    client_address: &'a str,
    user_agent: &'a str,
    created_at: Option<String>,
    last_used_at: Option<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
}

impl<'a> From<&'a SessionInfo> for SessionJson<'a> {
    fn from(s: &'a SessionInfo) -> Self {
        SessionJson {
            id: &s.id,
            current: s.current,
            client_address: &s.client_address,
            user_agent: &s.user_agent,
            created_at: ts_json(s.created_at.as_ref()),
            last_used_at: ts_json(s.last_used_at.as_ref()),
            expires_at: ts_json(s.expires_at.as_ref()),
            revoked_at: ts_json(s.revoked_at.as_ref()),
        }
    }
}
