//! `kapal.v1.AccountService`: sign-up, log-in, sessions and API tokens.
//!
//! Passwords are hashed with argon2id. Bearer tokens are 256-bit random values; only their
//! SHA-256 is stored, so a copy of the database does not let anyone log in.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::auth::{self, Principal};
use kapal::proto::v1::account_service_server::AccountService;
use kapal::proto::v1::{
    self as pb, CreateApiTokenRequest, CreateApiTokenResponse, ListApiTokensRequest,
    ListApiTokensResponse, LogInRequest, LogOutRequest, LogOutResponse, RevokeApiTokenRequest,
    SessionResponse, SignUpRequest, WhoAmIRequest,
};
use kapal::wire::{opt_timestamp, timestamp};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Ctx;
use crate::error::{Error, Result};
use crate::models::{Account, Token, token_kind};
use crate::schema::{accounts, tokens};

pub struct Accounts(pub Ctx);

const MIN_PASSWORD: usize = 10;
const MAX_PASSWORD: usize = 256;

/// Lower-cases and checks an email address: the addr-spec grammar of RFC 5322 in its common
/// dot-atom form (no quoted local parts, no comments, no IP literals), ASCII only (an
/// internationalised domain in its xn-- form), and none of the characters that mean something
/// in HTML (`<>&'"` and backquote): an address is shown in pages and emails.
pub(crate) fn normalize_email(raw: &str) -> Result<String> {
    let email = raw.trim().to_lowercase();
    let bad = || {
        Error::invalid(format!(
            "email {:?} is not a valid address (expected name@example.com: letters, digits and . _ + - before the @, a domain after it)",
            kapal::wire::truncate(raw, 64)
        ))
    };
    if email.is_empty() {
        return Err(Error::invalid("email is required"));
    }
    if email.len() > 254 || !email.is_ascii() {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    // atext of RFC 5322 without the characters that are markup in HTML.
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%*+-/=?^_|~".contains(c);
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext));
    if !local_ok || domain.contains('@') || !domain.contains('.') {
        return Err(bad());
    }
    let labels_ok = domain.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    let tld_ok = domain
        .rsplit('.')
        .next()
        .is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()));
    if !labels_ok || !tld_ok {
        return Err(bad());
    }
    Ok(email)
}

/// Checks a new password's strength.
pub(crate) fn check_password(password: &str, email: &str) -> Result<()> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(Error::invalid(format!(
            "password is too weak: use at least {MIN_PASSWORD} characters (got {n})"
        )));
    }
    if n > MAX_PASSWORD {
        return Err(Error::invalid(format!(
            "password is too long: at most {MAX_PASSWORD} characters"
        )));
    }
    let letters = password.chars().any(char::is_alphabetic);
    let others = password.chars().any(|c| !c.is_alphabetic());
    if !letters || !others {
        return Err(Error::invalid(
            "password is too weak: mix letters with at least one digit or symbol",
        ));
    }
    let distinct: std::collections::BTreeSet<char> = password.chars().collect();
    if distinct.len() < 5
        || password.to_lowercase() == email
        || email.starts_with(&password.to_lowercase())
    {
        return Err(Error::invalid(
            "password is too weak: it is too repetitive or too close to the email",
        ));
    }
    Ok(())
}

/// Argon2id with Kapal's parameters uses 19 MiB and ~one core for tens of milliseconds per
/// hash. At most one hash per core runs at a time: a burst of sign-ups or log-ins queues here
/// instead of starving every other request of CPU and growing memory by 19 MiB per thread.
fn hashing_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    })
}

async fn hash_password(password: String) -> Result<String> {
    let _permit = hashing_permits()
        .acquire()
        .await
        .map_err(|e| Error::Internal(format!("hashing permits: {e}")))?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .map_err(|e| Error::Internal(format!("salt: {e}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(format!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

async fn verify_password(password: String, hash: String) -> bool {
    let Ok(_permit) = hashing_permits().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// SHA-256 of a bearer token, as stored.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token(kind: &str) -> String {
    let prefix = if kind == token_kind::API {
        "kpt_"
    } else {
        "kps_"
    };
    format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    )
}

/// A short, hostname-safe customer id: a letter and 7 letters or digits.
fn new_customer_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let bytes: [u8; 8] = rand::random();
    let mut id = String::with_capacity(8);
    id.push(char::from(b'a' + bytes[0] % 26));
    for b in &bytes[1..] {
        id.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
    }
    id
}

pub(crate) fn role_to_wire(role: &str) -> pb::Role {
    match role {
        "admin" => pb::Role::Admin,
        "customer" => pb::Role::Customer,
        _ => pb::Role::Unspecified,
    }
}

fn account_to_wire(a: &Account) -> pb::Account {
    pb::Account {
        id: a.id.clone(),
        email: a.email.clone(),
        customer_id: a.customer_id.clone(),
        display_name: a.display_name.clone(),
        role: role_to_wire(&a.role) as i32,
        created_at: Some(timestamp(a.created_at)),
    }
}

fn token_to_wire(t: &Token) -> pb::ApiToken {
    pb::ApiToken {
        id: t.id.clone(),
        name: t.name.clone(),
        created_at: Some(timestamp(t.created_at)),
        expires_at: Some(timestamp(t.expires_at)),
        revoked_at: opt_timestamp(t.revoked_at),
        prefix: t.prefix.clone(),
    }
}

impl Accounts {
    async fn issue(
        &self,
        account_id: &str,
        kind: &str,
        name: &str,
        ttl: chrono::Duration,
    ) -> Result<(Token, String)> {
        let secret = new_token(kind);
        let now = self.0.now();
        let token = Token {
            id: Uuid::new_v4().to_string(),
            account_id: account_id.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
            token_hash: token_hash(&secret),
            prefix: secret.chars().take(8).collect(),
            created_at: now,
            expires_at: now + ttl,
            revoked_at: None,
        };
        let mut conn = self.0.db.get().await?;
        kapal::db!(&mut conn, |c| diesel::insert_into(tokens::table)
            .values(&token)
            .execute(c)
            .await)?;
        Ok((token, secret))
    }

    async fn account(&self, id: &Uuid) -> Result<Account> {
        let mut conn = self.0.db.read().await?;
        kapal::db!(&mut conn, |c| accounts::table
            .find(id.to_string())
            .select(Account::as_select())
            .first(c)
            .await
            .optional())?
        .ok_or_else(|| Error::Unauthenticated("the account of this token no longer exists".into()))
    }

    async fn session(&self, account: Account) -> Result<Response<SessionResponse>> {
        let (token, secret) = self
            .issue(
                &account.id,
                token_kind::SESSION,
                "session",
                self.0.session_ttl,
            )
            .await?;
        Ok(Response::new(SessionResponse {
            token: secret,
            expires_at: Some(timestamp(token.expires_at)),
            account: Some(account_to_wire(&account)),
        }))
    }
}

#[tonic::async_trait]
impl AccountService for Accounts {
    async fn sign_up(
        &self,
        req: Request<SignUpRequest>,
    ) -> Result<Response<SessionResponse>, Status> {
        let req = req.into_inner();
        let email = normalize_email(&req.email)?;
        check_password(&req.password, &email)?;
        let display_name = match req.display_name.trim() {
            "" => email.split('@').next().unwrap_or_default().to_string(),
            name => kapal::wire::display_text("display_name", name, 100)?.to_string(),
        };
        let password_hash = hash_password(req.password).await?;
        // Never admin: operators are made by an operator (`kapal admin grant`, [`crate::operators`]).
        let role = "customer";
        // A customer id collision is astronomically unlikely; retry a few times anyway.
        let mut last_err = None;
        for _ in 0..5 {
            let account = Account {
                id: Uuid::new_v4().to_string(),
                email: email.clone(),
                password_hash: password_hash.clone(),
                customer_id: new_customer_id(),
                display_name: display_name.clone(),
                role: role.to_string(),
                created_at: self.0.now(),
            };
            let mut conn = self.0.db.get().await.map_err(Error::from)?;
            let inserted = kapal::db!(&mut conn, |c| diesel::insert_into(accounts::table)
                .values(&account)
                .execute(c)
                .await);
            drop(conn);
            match inserted.map_err(kapal::db::DbError::from) {
                Ok(_) => {
                    tracing::info!(account_id = %account.id, "account created");
                    return Ok(self.session(account).await?);
                }
                Err(e) if e.is_unique_violation() => {
                    let mut conn = self.0.db.get().await.map_err(Error::from)?;
                    let taken: i64 = kapal::db!(&mut conn, |c| accounts::table
                        .filter(accounts::email.eq(&email))
                        .count()
                        .get_result(c)
                        .await)
                    .map_err(Error::from)?;
                    if taken > 0 {
                        return Err(Error::AlreadyExists(
                            "an account with this email exists already; log in instead".into(),
                        )
                        .into());
                    }
                    last_err = Some(e);
                }
                Err(e) => return Err(Error::from(e).into()),
            }
        }
        Err(Error::from(last_err.unwrap_or(kapal::db::DbError::Pool("no attempt".into()))).into())
    }

    async fn log_in(
        &self,
        req: Request<LogInRequest>,
    ) -> Result<Response<SessionResponse>, Status> {
        let req = req.into_inner();
        let wrong = || Status::unauthenticated("wrong email or password");
        let Ok(email) = normalize_email(&req.email) else {
            return Err(wrong());
        };
        let mut conn = self.0.db.get().await.map_err(Error::from)?;
        let account = kapal::db!(&mut conn, |c| accounts::table
            .filter(accounts::email.eq(&email))
            .select(Account::as_select())
            .first(c)
            .await
            .optional())
        .map_err(Error::from)?;
        drop(conn);
        // Verify against a dummy hash when the account does not exist, so timing does not tell.
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0aN3Ri3IJSdjtq2YQAkvfSBHqDZBzRDHW5XAAULxz1A";
        let hash = account
            .as_ref()
            .map_or(DUMMY.to_string(), |a| a.password_hash.clone());
        let ok = verify_password(req.password, hash).await;
        match account {
            Some(account) if ok => Ok(self.session(account).await?),
            _ => Err(wrong()),
        }
    }

    async fn log_out(
        &self,
        req: Request<LogOutRequest>,
    ) -> Result<Response<LogOutResponse>, Status> {
        let p = auth::customer(&req)?;
        let mut conn = self.0.db.get().await.map_err(Error::from)?;
        let now = self.0.now();
        kapal::db!(&mut conn, |c| diesel::update(
            tokens::table
                .filter(tokens::id.eq(p.token_id.to_string()))
                .filter(tokens::account_id.eq(p.account_id.to_string()))
                .filter(tokens::revoked_at.is_null())
        )
        .set(tokens::revoked_at.eq(now))
        .execute(c)
        .await)
        .map_err(Error::from)?;
        Ok(Response::new(LogOutResponse {}))
    }

    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<pb::Account>, Status> {
        let p = auth::customer(&req)?;
        let account = self.account(&p.account_id).await?;
        Ok(Response::new(account_to_wire(&account)))
    }

    async fn create_api_token(
        &self,
        req: Request<CreateApiTokenRequest>,
    ) -> Result<Response<CreateApiTokenResponse>, Status> {
        let p = auth::customer(&req)?.clone();
        let req = req.into_inner();
        let name = kapal::wire::display_text("name", &req.name, 64)?;
        let days = match req.ttl_days {
            0 => 365,
            d if d > 3650 => return Err(Status::invalid_argument("ttl_days must be at most 3650")),
            d => d,
        };
        let (token, secret) = self
            .issue(
                &p.account_id.to_string(),
                token_kind::API,
                name,
                chrono::Duration::days(i64::from(days)),
            )
            .await?;
        Ok(Response::new(CreateApiTokenResponse {
            api_token: Some(token_to_wire(&token)),
            token: secret,
        }))
    }

    async fn list_api_tokens(
        &self,
        req: Request<ListApiTokensRequest>,
    ) -> Result<Response<ListApiTokensResponse>, Status> {
        let p = auth::customer(&req)?;
        let mut conn = self.0.db.read().await.map_err(Error::from)?;
        let rows = kapal::db!(&mut conn, |c| tokens::table
            .filter(tokens::account_id.eq(p.account_id.to_string()))
            .filter(tokens::kind.eq(token_kind::API))
            .order(tokens::created_at.desc())
            .select(Token::as_select())
            .load(c)
            .await)
        .map_err(Error::from)?;
        Ok(Response::new(ListApiTokensResponse {
            api_tokens: rows.iter().map(token_to_wire).collect(),
        }))
    }

    async fn revoke_api_token(
        &self,
        req: Request<RevokeApiTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        let p = auth::customer(&req)?;
        let id = kapal::wire::uuid("id", &req.get_ref().id)?;
        let now = self.0.now();
        let mut conn = self.0.db.get().await.map_err(Error::from)?;
        let (id, account_id) = (id.to_string(), p.account_id.to_string());
        let mine = || {
            tokens::table
                .filter(tokens::id.eq(id.clone()))
                .filter(tokens::account_id.eq(account_id.clone()))
                .filter(tokens::kind.eq(token_kind::API))
        };
        kapal::db!(&mut conn, |c| diesel::update(
            mine().filter(tokens::revoked_at.is_null())
        )
        .set(tokens::revoked_at.eq(now))
        .execute(c)
        .await)
        .map_err(Error::from)?;
        let token = kapal::db!(&mut conn, |c| mine()
            .select(Token::as_select())
            .first(c)
            .await
            .optional())
        .map_err(Error::from)?
        .ok_or_else(|| Status::not_found("no such API token"))?;
        Ok(Response::new(token_to_wire(&token)))
    }
}

/// The principal of a bearer token, if it is valid now.
pub(crate) async fn authenticate(
    ctx: &Ctx,
    secret: &str,
) -> Result<(Principal, chrono::NaiveDateTime)> {
    let invalid =
        || Error::Unauthenticated("the token is invalid, expired or revoked; log in again".into());
    if secret.is_empty() || secret.len() > 200 {
        return Err(invalid());
    }
    let hash = token_hash(secret);
    let now = ctx.now();
    let mut conn = ctx.db.read().await?;
    let row: Option<(Token, Account)> = kapal::db!(&mut conn, |c| tokens::table
        .inner_join(accounts::table)
        .filter(tokens::token_hash.eq(&hash))
        .filter(tokens::revoked_at.is_null())
        .filter(tokens::expires_at.gt(now))
        .select((Token::as_select(), Account::as_select()))
        .first(c)
        .await
        .optional())?;
    let (token, account) = row.ok_or_else(invalid)?;
    let role = match account.role.as_str() {
        "admin" => auth::Role::Admin,
        _ => auth::Role::Customer,
    };
    let parse =
        |s: &str| Uuid::parse_str(s).map_err(|e| Error::Internal(format!("stored id {s:?}: {e}")));
    Ok((
        Principal {
            account_id: parse(&account.id)?,
            customer_id: account.customer_id,
            role,
            token_id: parse(&token.id)?,
        },
        token.expires_at,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_normalised() {
        assert_eq!(
            normalize_email(" Ana@Example.COM ").ok(),
            Some("ana@example.com".to_string())
        );
        for good in ["a.b+tag@mail.example.co.id", "x_y-z@xn--bcher-kva.example"] {
            assert_eq!(normalize_email(good).ok().as_deref(), Some(good));
        }
        for bad in [
            "",
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "a b@example.com",
            "ana@@example.com",
            "ana@-x.com",
            // Markup and lookalikes: what a page showing the address could trip over.
            "<script>alert(1)</script>@example.com",
            "a<b@example.com",
            "o'brien\"@example.com",
            "a&b@example.com",
            "`x`@example.com",
            "ana@ex<ample.com",
            "ana\u{202e}moc@example.com",
            "an\u{200b}a@example.com",
            "ana@exämple.com",
            ".ana@example.com",
            "ana..b@example.com",
            "ana@1.2.3.4",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn weak_passwords_are_rejected_with_a_reason() {
        let email = "ana@example.com";
        for (bad, why) in [
            ("short1", "at least 10"),
            ("onlyletterslong", "mix letters"),
            ("1234567890", "mix letters"),
            ("aaaaaaaaa1", "repetitive"),
        ] {
            let e = check_password(bad, email).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        assert!(check_password("correct horse 9", email).is_ok());
    }

    #[test]
    fn customer_ids_are_hostname_labels() {
        for _ in 0..100 {
            let id = new_customer_id();
            assert_eq!(id.len(), 8);
            assert!(id.starts_with(|c: char| c.is_ascii_lowercase()));
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            );
        }
    }
}
