//! API tokens: `kapal token create`, `token list` and `token revoke`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use kapal::proto::v1::{
    ApiToken, ApiTokenScope, CreateApiTokenRequest, ListApiTokensRequest, RevokeApiTokenRequest,
};

use crate::args::{Global, TokenCreateArgs, TokenRevokeArgs, TokenScope};
use crate::connect::{Ctx, RpcResult as _, collect_pages};
use crate::output::{Render, Table, time, to_utc, ts_json};

pub async fn token_create(a: TokenCreateArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let resp = ctx
        .accounts()?
        .create_api_token(CreateApiTokenRequest {
            name: a.name,
            ttl_days: a.expires_in.or(a.ttl_days).unwrap_or(0),
            scope: match a.scope {
                TokenScope::Full => ApiTokenScope::Full,
                TokenScope::ReadOnly => ApiTokenScope::ReadOnly,
            } as i32,
        })
        .await
        .or_fail(&ctx)?;
    let meta = resp.api_token.unwrap_or_default();
    // As text the notice goes to stderr so that `TOKEN=$(kapal token create ci)` captures the
    // token only; JSON carries everything on stdout.
    if !ctx.json() {
        eprintln!(
            "Created {} API token {} ({}), valid until {}. It is shown only now: store it safely.",
            scope_name(meta.scope),
            meta.name,
            meta.id,
            time(meta.expires_at.as_ref())
        );
    }
    ctx.print(&Created {
        token: &resp.token,
        meta: &meta,
    })
}

pub async fn token_list(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let mut client = ctx.accounts()?;
    // Every token, newest first, a page at a time.
    let (tokens, _) = collect_pages(u32::MAX, async |page_size, page_token| {
        let resp = client
            .list_api_tokens(ListApiTokensRequest {
                page_size,
                page_token,
            })
            .await
            .or_fail(&ctx)?;
        Ok((resp.api_tokens, resp.next_page_token))
    })
    .await?;
    ctx.print(&Tokens(tokens))
}

pub async fn token_revoke(a: TokenRevokeArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let k = ctx
        .accounts()?
        .revoke_api_token(RevokeApiTokenRequest { id: a.id })
        .await
        .or_fail(&ctx)?;
    ctx.print(&Revoked(&k))
}

/// The answer to `kapal token create`: the secret (shown only now) and what it is.
struct Created<'a> {
    token: &'a str,
    meta: &'a ApiToken,
}

#[derive(Serialize)]
struct CreatedJson<'a> {
    #[serde(flatten)]
    meta: TokenJson<'a>,
    token: &'a str,
}

impl Render for Created<'_> {
    fn text(&self) -> String {
        format!("{}\n", self.token)
    }

    fn json(&self) -> impl Serialize {
        CreatedJson {
            meta: TokenJson::from(self.meta),
            token: self.token,
        }
    }
}

/// The answer to `kapal token list`.
struct Tokens(Vec<ApiToken>);

#[derive(Serialize)]
struct TokensJson<'a> {
    api_tokens: Vec<TokenJson<'a>>,
}

impl Render for Tokens {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "No API tokens: create one with `kapal token create <name>`.\n".to_string();
        }
        let now = Utc::now();
        let mut t = Table::new(&[
            "ID", "NAME", "PREFIX", "SCOPE", "STATE", "CREATED", "EXPIRES",
        ]);
        for k in &self.0 {
            t.row(vec![
                k.id.clone(),
                k.name.clone(),
                k.prefix.clone(),
                scope_name(k.scope).to_string(),
                token_state(k, now).to_string(),
                time(k.created_at.as_ref()),
                time(k.expires_at.as_ref()),
            ]);
        }
        t.render()
    }

    fn json(&self) -> impl Serialize {
        TokensJson {
            api_tokens: self.0.iter().map(TokenJson::from).collect(),
        }
    }
}

/// The answer to `kapal token revoke`.
struct Revoked<'a>(&'a ApiToken);

impl Render for Revoked<'_> {
    fn text(&self) -> String {
        format!("Revoked API token {} ({}).\n", self.0.name, self.0.id)
    }

    fn json(&self) -> impl Serialize {
        TokenJson::from(self.0)
    }
}

/// An API token in JSON (never its secret).
#[derive(Serialize)]
struct TokenJson<'a> {
    id: &'a str,
    name: &'a str,
    prefix: &'a str,
    scope: &'static str,
    state: &'static str,
    created_at: Option<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
}

impl<'a> From<&'a ApiToken> for TokenJson<'a> {
    fn from(k: &'a ApiToken) -> Self {
        TokenJson {
            id: &k.id,
            name: &k.name,
            prefix: &k.prefix,
            scope: scope_name(k.scope),
            state: token_state(k, Utc::now()),
            created_at: ts_json(k.created_at.as_ref()),
            expires_at: ts_json(k.expires_at.as_ref()),
            revoked_at: ts_json(k.revoked_at.as_ref()),
        }
    }
}

/// `revoked`, `expired` or `active`.
fn token_state(k: &ApiToken, now: DateTime<Utc>) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k
        .expires_at
        .as_ref()
        .and_then(to_utc)
        .is_some_and(|t| t <= now)
    {
        "expired"
    } else {
        "active"
    }
}

/// `full` or `read-only`, as `--scope` takes it.
fn scope_name(scope: i32) -> &'static str {
    match ApiTokenScope::try_from(scope) {
        Ok(ApiTokenScope::ReadOnly) => "read-only",
        Ok(ApiTokenScope::Full) => "full",
        _ => "unknown",
    }
}
