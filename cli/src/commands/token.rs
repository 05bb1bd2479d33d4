//! API tokens: `kapal token create`, `token list` and `token revoke`.

use chrono::{DateTime, Utc};
use serde_json::json;

use kapal::proto::v1::{
    ApiToken, CreateApiTokenRequest, ListApiTokensRequest, RevokeApiTokenRequest,
};

use crate::args::{Global, TokenCreateArgs, TokenRevokeArgs};
use crate::connect::{Ctx, RpcResult as _};
use crate::output::{Table, print_json, time, to_utc, token_json};

pub async fn token_create(a: TokenCreateArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let resp = ctx
        .accounts()?
        .create_api_token(CreateApiTokenRequest {
            name: a.name,
            ttl_days: a.ttl_days.unwrap_or(0),
        })
        .await
        .or_fail(&ctx)?;
    let meta = resp.api_token.unwrap_or_default();
    if ctx.json() {
        let mut v = token_json(&meta);
        v["token"] = json!(resp.token);
        return print_json(&v);
    }
    // The notice goes to stderr so that `TOKEN=$(kapal token create ci)` captures the token only.
    eprintln!(
        "Created API token {} ({}), valid until {}. It is shown only now: store it safely.",
        meta.name,
        meta.id,
        time(meta.expires_at.as_ref())
    );
    println!("{}", resp.token);
    Ok(())
}

pub async fn token_list(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let tokens = ctx
        .accounts()?
        .list_api_tokens(ListApiTokensRequest {})
        .await
        .or_fail(&ctx)?
        .api_tokens;
    if ctx.json() {
        return print_json(
            &json!({ "api_tokens": tokens.iter().map(token_json).collect::<Vec<_>>() }),
        );
    }
    if tokens.is_empty() {
        println!("No API tokens: create one with `kapal token create <name>`.");
        return Ok(());
    }
    let now = Utc::now();
    let mut t = Table::new(&["ID", "NAME", "PREFIX", "STATE", "CREATED", "EXPIRES"]);
    for k in &tokens {
        t.row(vec![
            k.id.clone(),
            k.name.clone(),
            k.prefix.clone(),
            token_state(k, now).to_string(),
            time(k.created_at.as_ref()),
            time(k.expires_at.as_ref()),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

pub async fn token_revoke(a: TokenRevokeArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let k = ctx
        .accounts()?
        .revoke_api_token(RevokeApiTokenRequest { id: a.id })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&token_json(&k));
    }
    println!("Revoked API token {} ({}).", k.name, k.id);
    Ok(())
}

pub fn token_state(k: &ApiToken, now: DateTime<Utc>) -> &'static str {
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
