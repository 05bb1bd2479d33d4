//! Sessions and API tokens as their owner manages them (issue 14, item 5): ChangePassword,
//! ListSessions, RevokeSession, the rules CreateApiToken follows for scopes and lifetimes, and
//! [`authenticate`] (a bearer token to its principal, for IdentityService).
//!
//! The rules, as `kapal.v1.AccountService` documents them:
//! - an API token has a scope, `full` or `read_only`; the gateway refuses a read-only caller
//!   every call that changes something (`gateway/src/routes.rs`, `READ_ONLY_CALLS`), and this
//!   module refuses it CreateApiToken again, so the rule holds whoever signs the call;
//! - a token lives at most [`MAX_API_TOKEN_DAYS`]; an API token can only create tokens that
//!   expire no later than itself, and never one with a wider scope (a read-only one creates none);
//! - ChangePassword needs the current password and ends every other session of the account
//!   (API tokens stay, as they do on ResetPassword: they are listed and revoked on their own).
//!
//! The gateway drops its cached identities of the caller's account before it forwards
//! ChangePassword or RevokeSession, so on that gateway an ended session fails at once; other
//! gateway replicas notice within their identity cache time.

use kapal::auth::{self, Principal};
use kapal::paging;
use kapal::proto::v1::{
    self as pb, ApiTokenScope, ChangePasswordRequest, ChangePasswordResponse, ListSessionsRequest,
    ListSessionsResponse, RevokeSessionRequest,
};
use kapal::wire::{opt_timestamp, timestamp};
use tonic::metadata::MetadataMap;

use crate::Ctx;
use crate::accounts;
use crate::error::{Error, Result};
use crate::models::{Token, token_kind, token_scope};
use crate::store;

/// The longest life an API token may be given.
pub(crate) const MAX_API_TOKEN_DAYS: u32 = 365;
/// `last_used_at` is written at most this often per token: a token in steady use costs one
/// write per interval, not one per call.
pub(crate) const LAST_USED_PRECISION: chrono::Duration = chrono::Duration::minutes(5);
/// The longest user-agent kept with a session.
const MAX_USER_AGENT: usize = 200;

/// Where a session or token was opened from, as shown in ListSessions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Origin {
    /// See [`user_agent`].
    pub user_agent: String,
    /// See [`client_address`].
    pub address: String,
}

/// The client's user agent and address of a call.
pub(crate) fn origin(metadata: &MetadataMap) -> Origin {
    Origin {
        user_agent: user_agent(metadata),
        address: client_address(metadata),
    }
}

/// The client's IP address as the gateway saw it ([`kapal::auth::CLIENT_ADDRESS_HEADER`]: the
/// gateway replaces whatever a client sends there); '' when the call did not come through a
/// gateway or the value is not an IP address.
pub(crate) fn client_address(metadata: &MetadataMap) -> String {
    metadata
        .get(kapal::auth::CLIENT_ADDRESS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_string())
        .unwrap_or_default()
}

/// The client's `user-agent`, cut to [`MAX_USER_AGENT`] characters and with control
/// characters dropped: it is shown back in ListSessions.
pub(crate) fn user_agent(metadata: &MetadataMap) -> String {
    let Some(raw) = metadata.get("user-agent").and_then(|v| v.to_str().ok()) else {
        return String::new();
    };
    raw.chars()
        .filter(|c| !c.is_control())
        .take(MAX_USER_AGENT)
        .collect::<String>()
        .trim()
        .to_string()
}

/// The stored scope a CreateApiTokenRequest asks for (UNSPECIFIED is FULL).
pub(crate) fn requested_scope(wire: i32) -> Result<&'static str> {
    match ApiTokenScope::try_from(wire) {
        Ok(ApiTokenScope::Unspecified | ApiTokenScope::Full) => Ok(token_scope::FULL),
        Ok(ApiTokenScope::ReadOnly) => Ok(token_scope::READ_ONLY),
        Err(_) => Err(Error::invalid(format!(
            "scope {wire} is not a token scope: use FULL or READ_ONLY"
        ))),
    }
}

/// How long a new API token of `scope` lives when `caller` (the token making the call) asks
/// for `ttl_days` (0: as long as allowed), or why it may not be made.
pub(crate) fn api_token_lifetime(
    caller: &Token,
    scope: &str,
    ttl_days: u32,
    now: chrono::NaiveDateTime,
) -> Result<chrono::Duration> {
    if caller.scope != token_scope::FULL {
        return Err(Error::PermissionDenied(
            "a read-only token cannot create API tokens: log in (kapal login) or use a token with scope FULL".into(),
        ));
    }
    if scope != token_scope::FULL && scope != token_scope::READ_ONLY {
        return Err(Error::invalid("scope must be FULL or READ_ONLY"));
    }
    if ttl_days > MAX_API_TOKEN_DAYS {
        return Err(Error::invalid(format!(
            "ttl_days must be at most {MAX_API_TOKEN_DAYS} (got {ttl_days}); make a new token when it runs out"
        )));
    }
    let max = chrono::Duration::days(i64::from(MAX_API_TOKEN_DAYS));
    let requested = match ttl_days {
        0 => max,
        d => chrono::Duration::days(i64::from(d)),
    };
    if caller.kind != token_kind::API {
        return Ok(requested);
    }
    // An API token makes no token that outlives it.
    let left = caller.expires_at - now;
    if ttl_days == 0 {
        return Ok(requested.min(left));
    }
    if requested > left {
        return Err(Error::invalid(format!(
            "the token making this call expires at {} UTC, and a token cannot create one that outlives it: ask for at most {} days (or 0 for as long as allowed)",
            caller.expires_at.format("%Y-%m-%d %H:%M"),
            left.num_days()
        )));
    }
    Ok(requested)
}

/// The token that made the call (session or API token) of the caller's account.
pub(crate) async fn caller_token(ctx: &Ctx, p: &Principal) -> Result<Token> {
    store::tokens::owned(&ctx.db, &p.account_id.to_string(), &p.token_id.to_string())
        .await?
        .ok_or_else(|| Error::Unauthenticated("the token of this call no longer exists".into()))
}

/// Records that `token` authenticated a call now, unless it was recorded less than
/// [`LAST_USED_PRECISION`] ago. In the background: authentication does not wait for a write.
pub(crate) fn touch(ctx: &Ctx, token: &Token, now: chrono::NaiveDateTime) {
    if token
        .last_used_at
        .is_some_and(|at| now - at < LAST_USED_PRECISION)
    {
        return;
    }
    let (ctx, id) = (ctx.clone(), token.id.clone());
    tokio::spawn(async move {
        let written = store::tokens::set_last_used(&ctx.db, &id, now).await;
        if let Err(e) = written {
            tracing::warn!(token_id = %id, error = %e, "recording when a token was last used");
        }
    });
}

fn session_to_wire(t: &Token, current: &str) -> pb::Session {
    pb::Session {
        id: t.id.clone(),
        created_at: Some(timestamp(t.created_at)),
        expires_at: Some(timestamp(t.expires_at)),
        last_used_at: opt_timestamp(t.last_used_at),
        user_agent: t.user_agent.clone(),
        current: t.id == current,
        revoked_at: opt_timestamp(t.revoked_at),
        client_address: t.client_address.clone(),
    }
}

/// ChangePassword: checks the current password, sets the new one and ends every other session.
pub(crate) async fn change_password(
    ctx: &Ctx,
    p: &Principal,
    req: ChangePasswordRequest,
) -> Result<ChangePasswordResponse> {
    let account_id = p.account_id.to_string();
    let account = store::accounts::get_read(&ctx.db, &account_id)
        .await?
        .ok_or_else(|| {
            Error::Unauthenticated("the account of this token no longer exists".into())
        })?;
    if req.current_password.is_empty() {
        return Err(Error::invalid(
            "current_password is required: the password you log in with now",
        ));
    }
    // The cheap checks first: a weak new password costs no hashing.
    accounts::check_password(&req.new_password, &account.email)?;
    if req.new_password == req.current_password {
        return Err(Error::invalid(
            "the new password is the same as the current one: choose another",
        ));
    }
    if !accounts::verify_password(req.current_password, account.password_hash.clone()).await? {
        return Err(Error::PermissionDenied(
            "the current password is wrong; if you forgot it, reset it with `kapal reset-password --email E`".into(),
        ));
    }
    let hash = accounts::hash_password(req.new_password).await?;
    let now = ctx.now();
    let current = p.token_id.to_string();
    // Whoever else holds a session (perhaps the one who learned the old password) is out.
    let ended = store::tokens::set_password_ending_sessions(
        &ctx.db,
        &account_id,
        &hash,
        Some(&current),
        now,
    )
    .await?;
    tracing::info!(account_id = %account_id, sessions_ended = ended, "password changed; other sessions ended");
    Ok(ChangePasswordResponse {
        sessions_ended: u32::try_from(ended).unwrap_or(u32::MAX),
    })
}

/// ListSessions: the caller's live sessions, newest first, in keyset pages.
pub(crate) async fn list_sessions(
    ctx: &Ctx,
    p: &Principal,
    req: &ListSessionsRequest,
) -> Result<ListSessionsResponse> {
    let limit = kapal::wire::page_size(req.page_size);
    let cursor = paging::parse(&req.page_token)?;
    let now = ctx.now();
    let account_id = p.account_id.to_string();
    let rows = store::tokens::page(
        &ctx.db,
        &account_id,
        token_kind::SESSION,
        Some(now),
        cursor.as_ref(),
        limit + 1,
    )
    .await?;
    let (page, next) = paging::split(rows, limit, |t| (t.created_at, t.id.as_str()));
    let current = p.token_id.to_string();
    Ok(ListSessionsResponse {
        sessions: page.iter().map(|t| session_to_wire(t, &current)).collect(),
        next_page_token: next,
    })
}

/// RevokeSession: ends one of the caller's sessions; another account's is NOT_FOUND.
pub(crate) async fn revoke_session(
    ctx: &Ctx,
    p: &Principal,
    req: &RevokeSessionRequest,
) -> Result<pb::Session> {
    let id = kapal::wire::uuid("id", &req.id)?.to_string();
    let account_id = p.account_id.to_string();
    let now = ctx.now();
    let session = store::tokens::revoke_of_kind(
        &ctx.db,
        &account_id,
        &id,
        token_kind::SESSION,
        now,
    )
    .await?
    .ok_or_else(|| {
        Error::not_found(format!(
            "no session {id} on your account; list yours with ListSessions (kapal sessions list)"
        ))
    })?;
    tracing::info!(account_id = %account_id, session_id = %id, "session revoked");
    Ok(session_to_wire(&session, &p.token_id.to_string()))
}

/// The principal of a bearer token, if it is valid now.
pub(crate) async fn authenticate(
    ctx: &Ctx,
    secret: &str,
) -> Result<(Principal, chrono::NaiveDateTime, pb::ApiTokenScope)> {
    let invalid =
        || Error::Unauthenticated("the token is invalid, expired or revoked; log in again".into());
    if secret.is_empty() || secret.len() > 200 {
        return Err(invalid());
    }
    let hash = accounts::token_hash(secret);
    let now = ctx.now();
    let row = store::tokens::valid_with_account(&ctx.db, &hash, now).await?;
    let (token, account) = row.ok_or_else(invalid)?;
    touch(ctx, &token, now);
    let scope = match token.kind.as_str() {
        token_kind::API => token_scope::to_wire(&token.scope),
        _ => pb::ApiTokenScope::Full,
    };
    let role = match account.role.as_str() {
        "admin" => auth::Role::Admin,
        _ => auth::Role::Customer,
    };
    let parse = |s: &str| {
        uuid::Uuid::parse_str(s).map_err(|e| Error::Internal(format!("stored id {s:?}: {e}")))
    };
    Ok((
        Principal {
            account_id: parse(&account.id)?,
            customer_id: account.customer_id,
            role,
            token_id: parse(&token.id)?,
        },
        token.expires_at,
        scope,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(kind: &str, scope: &str, days_left: i64, now: chrono::NaiveDateTime) -> Token {
        Token {
            id: "t".into(),
            account_id: "a".into(),
            kind: kind.into(),
            name: "n".into(),
            token_hash: String::new(),
            prefix: String::new(),
            created_at: now,
            expires_at: now + chrono::Duration::days(days_left),
            revoked_at: None,
            scope: scope.into(),
            last_used_at: None,
            user_agent: String::new(),
            client_address: String::new(),
        }
    }

    #[test]
    fn a_token_never_mints_more_than_itself() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0)
            .expect("valid")
            .naive_utc();
        let days = chrono::Duration::days;
        let session = token(token_kind::SESSION, token_scope::FULL, 30, now);
        // A session (the password's owner) may make any scope for up to a year.
        assert_eq!(
            api_token_lifetime(&session, token_scope::FULL, 0, now).ok(),
            Some(days(365))
        );
        assert_eq!(
            api_token_lifetime(&session, token_scope::READ_ONLY, 365, now).ok(),
            Some(days(365))
        );
        assert!(matches!(
            api_token_lifetime(&session, token_scope::FULL, 366, now),
            Err(Error::InvalidArgument(_))
        ));

        // A full API token: either scope, never past its own expiry.
        let full = token(token_kind::API, token_scope::FULL, 30, now);
        assert_eq!(
            api_token_lifetime(&full, token_scope::READ_ONLY, 10, now).ok(),
            Some(days(10))
        );
        assert_eq!(
            api_token_lifetime(&full, token_scope::FULL, 0, now).ok(),
            Some(days(30))
        );
        let longer = api_token_lifetime(&full, token_scope::FULL, 31, now);
        assert!(
            matches!(&longer, Err(Error::InvalidArgument(m)) if m.contains("at most 30 days")),
            "{longer:?}"
        );

        // A read-only API token makes nothing.
        let read_only = token(token_kind::API, token_scope::READ_ONLY, 30, now);
        for scope in [token_scope::READ_ONLY, token_scope::FULL] {
            assert!(matches!(
                api_token_lifetime(&read_only, scope, 1, now),
                Err(Error::PermissionDenied(_))
            ));
        }
    }

    #[test]
    fn scopes_come_from_the_wire_with_full_as_the_default() {
        assert_eq!(requested_scope(0).ok(), Some(token_scope::FULL));
        assert_eq!(
            requested_scope(ApiTokenScope::ReadOnly as i32).ok(),
            Some(token_scope::READ_ONLY)
        );
        assert!(requested_scope(99).is_err());
    }

    #[test]
    fn user_agents_are_cut_and_cleaned() {
        let mut m = MetadataMap::new();
        assert_eq!(user_agent(&m), "");
        m.insert(
            "user-agent",
            "kapal-cli/1.0\ttonic".parse().expect("ascii header"),
        );
        assert_eq!(user_agent(&m), "kapal-cli/1.0tonic");
        m.insert("user-agent", "x".repeat(500).parse().expect("ascii header"));
        assert_eq!(user_agent(&m).len(), MAX_USER_AGENT);
    }
}
