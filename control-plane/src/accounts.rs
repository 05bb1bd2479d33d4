//! `kapal.v1.AccountService`: sign-up, log-in, sessions and API tokens.
//!
//! Passwords are hashed with argon2id. Bearer tokens are 256-bit random values; only their
//! SHA-256 is stored, so a copy of the database does not let anyone log in.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kapal::auth;
use kapal::proto::v1::account_service_server::AccountService;
use kapal::proto::v1::{
    self as pb, ChangePasswordRequest, ChangePasswordResponse, CreateApiTokenRequest,
    CreateApiTokenResponse, ListApiTokensRequest, ListApiTokensResponse, LogInRequest,
    LogOutRequest, LogOutResponse, RequestPasswordResetRequest, RequestPasswordResetResponse,
    ResendVerificationRequest, ResendVerificationResponse, ResetPasswordRequest,
    ResetPasswordResponse, RevokeApiTokenRequest, SessionResponse, SignUpRequest,
    VerifyEmailRequest, VerifyEmailResponse, WhoAmIRequest,
};
use kapal::proto::v1::{ListSessionsRequest, ListSessionsResponse, RevokeSessionRequest};
use kapal::wire::{opt_timestamp, timestamp};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Ctx;
use crate::error::{Error, Result};
use crate::models::{Account, EmailCode, Token, code_purpose, token_kind, token_scope};
use crate::{sessions, store};

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

pub(crate) async fn hash_password(password: String) -> Result<String> {
    // A bounded queue: a burst of sign-ups or log-ins is refused fast instead of piling up.
    let _permit = crate::login::hash_queue().turn().await?;
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

/// Whether `password` matches `hash`; `RESOURCE_EXHAUSTED` when too many hashes are queued.
pub(crate) async fn verify_password(password: String, hash: String) -> Result<bool> {
    let _permit = crate::login::hash_queue().turn().await?;
    Ok(tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false))
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
        email_verified: a.email_verified_at.is_some(),
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
        scope: token_scope::to_wire(&t.scope) as i32,
    }
}

/// How long a verification code and a password-reset code are good for.
const VERIFY_CODE_TTL: chrono::Duration = chrono::Duration::hours(24);
const RESET_CODE_TTL: chrono::Duration = chrono::Duration::minutes(30);
/// Wrong guesses a code survives: 5 guesses at a 10^8 space are no way in.
const CODE_ATTEMPTS: i64 = 5;
/// A new code of the same purpose is mailed at most this often per account.
const CODE_INTERVAL: chrono::Duration = chrono::Duration::seconds(60);

/// SignUp's answer when the server mailed the address (whether the account is new or not).
fn verification_sent() -> SessionResponse {
    SessionResponse {
        token: String::new(),
        expires_at: None,
        account: None,
        verification_sent: true,
    }
}

fn verification_mail(email: &str, code: &str) -> String {
    format!(
        "Welcome to Kapal.\n\nYour verification code for {email} is:\n\n    {code}\n\n\
         To verify the address, run:\n\n    kapal verify-email --email {email} --code {code}\n\n\
         The code is good for 24 hours. If you did not sign up, ignore this email: without the code \
         nobody can buy anything with this address.\n"
    )
}

fn existing_account_mail(email: &str) -> String {
    format!(
        "Someone just tried to sign up to Kapal with {email}, which already has an account.\n\n\
         If it was you: log in instead. If you forgot your password, reset it with\n\n    \
         kapal reset-password --email {email}\n\n\
         If it was not you, nothing changed and you need not do anything.\n"
    )
}

fn reset_mail(email: &str, code: &str) -> String {
    format!(
        "Someone (hopefully you) asked to reset the password of the Kapal account {email}.\n\n\
         Your reset code is:\n\n    {code}\n\n\
         Run:\n\n    kapal reset-password --email {email} --code {code}\n\n\
         The code is good for 30 minutes. If you did not ask for it, ignore this email: your \
         password stays as it is.\n"
    )
}

/// A new one-time code: 8 random digits, shown as `1234-5678`.
fn new_code() -> String {
    let n = rand::random_range(0..100_000_000u32);
    format!("{:04}-{:04}", n / 10_000, n % 10_000)
}

/// The digits of a code as typed (spaces and dashes dropped).
fn code_digits(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_digit()).collect()
}

/// Makes a new code of `purpose` for the account (earlier unused ones stop working) and returns
/// it, to be mailed.
async fn issue_code(ctx: &Ctx, account_id: &str, purpose: &str) -> Result<String> {
    let code = new_code();
    let now = ctx.now();
    let ttl = if purpose == code_purpose::RESET {
        RESET_CODE_TTL
    } else {
        VERIFY_CODE_TTL
    };
    let row = EmailCode {
        id: Uuid::new_v4().to_string(),
        account_id: account_id.to_string(),
        purpose: purpose.to_string(),
        code_hash: token_hash(&code_digits(&code)),
        created_at: now,
        expires_at: now + ttl,
        attempts: 0,
        used_at: None,
    };
    store::email_codes::replace(&ctx.db, &row, now).await?;
    Ok(code)
}

/// Whether a code of `purpose` was mailed to the account less than [`CODE_INTERVAL`] ago.
async fn code_sent_recently(ctx: &Ctx, account_id: &str, purpose: &str) -> Result<bool> {
    let since = ctx.now() - CODE_INTERVAL;
    let n = store::email_codes::made_since(&ctx.db, account_id, purpose, since).await?;
    Ok(n > 0)
}

/// Uses up the account's live code of `purpose` if `code` is it. Every guess counts against
/// the code's attempts, so it cannot be guessed.
async fn use_code(ctx: &Ctx, account_id: &str, purpose: &str, code: &str) -> Result<()> {
    let wrong = || {
        Error::invalid(if purpose == code_purpose::RESET {
            "the code is wrong, expired or used up; ask for a new one with RequestPasswordReset (kapal reset-password --email E)"
        } else {
            "the code is wrong, expired or used up; ask for a new one with ResendVerification (kapal resend-verification)"
        })
    };
    let digits = code_digits(code);
    if digits.len() != 8 {
        return Err(wrong());
    }
    let now = ctx.now();
    let hash = token_hash(&digits);
    if !store::email_codes::spend(&ctx.db, account_id, purpose, &hash, CODE_ATTEMPTS, now).await? {
        return Err(wrong());
    }
    Ok(())
}

async fn account_by_email(ctx: &Ctx, email: &str) -> Result<Option<Account>> {
    store::accounts::by_email(&ctx.db, email).await
}

async fn mark_verified(ctx: &Ctx, account_id: &str) -> Result<()> {
    store::accounts::mark_verified(&ctx.db, account_id, ctx.now()).await
}

fn require_mailer(ctx: &Ctx) -> Result<&crate::mail::Mailer> {
    ctx.mailer.as_ref().ok_or_else(|| {
        Error::FailedPrecondition(
            "this server sends no email (email verification is off); ask its operator".into(),
        )
    })
}

impl Accounts {
    async fn issue(
        &self,
        account_id: &str,
        kind: &str,
        name: &str,
        ttl: chrono::Duration,
        scope: &str,
        origin: &sessions::Origin,
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
            scope: scope.to_string(),
            last_used_at: None,
            user_agent: origin.user_agent.clone(),
            client_address: origin.address.clone(),
        };
        store::tokens::insert(&self.0.db, &token).await?;
        Ok((token, secret))
    }

    async fn account(&self, id: &Uuid) -> Result<Account> {
        store::accounts::get_read(&self.0.db, &id.to_string())
            .await?
            .ok_or_else(|| {
                Error::Unauthenticated("the account of this token no longer exists".into())
            })
    }

    async fn session(
        &self,
        account: Account,
        origin: &sessions::Origin,
    ) -> Result<Response<SessionResponse>> {
        let (token, secret) = self
            .issue(
                &account.id,
                token_kind::SESSION,
                "session",
                self.0.session_ttl,
                token_scope::FULL,
                origin,
            )
            .await?;
        Ok(Response::new(SessionResponse {
            token: secret,
            expires_at: Some(timestamp(token.expires_at)),
            account: Some(account_to_wire(&account)),
            verification_sent: false,
        }))
    }
}

#[tonic::async_trait]
impl AccountService for Accounts {
    async fn sign_up(
        &self,
        req: Request<SignUpRequest>,
    ) -> Result<Response<SessionResponse>, Status> {
        let origin = sessions::origin(req.metadata());
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
                email_verified_at: None,
            };
            let inserted = store::accounts::insert(&self.0.db, &account).await;
            match inserted {
                Ok(_) => {
                    tracing::info!(account_id = %account.id, "account created");
                    let Some(mailer) = &self.0.mailer else {
                        return Ok(self.session(account, &origin).await?);
                    };
                    let code = issue_code(&self.0, &account.id, code_purpose::VERIFY).await?;
                    mailer.send_later(
                        &account.email,
                        "Your Kapal verification code",
                        verification_mail(&account.email, &code),
                    );
                    return Ok(Response::new(verification_sent()));
                }
                Err(e) if e.is_unique_violation() => {
                    let taken = store::accounts::count_with_email(&self.0.db, &email).await?;
                    if taken > 0 {
                        // The same answer as for a new account; the owner learns of it by mail.
                        if let Some(mailer) = &self.0.mailer {
                            tracing::info!("sign-up with an address that has an account");
                            mailer.send_later(
                                &email,
                                "Someone tried to sign up to Kapal with your address",
                                existing_account_mail(&email),
                            );
                            return Ok(Response::new(verification_sent()));
                        }
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
        let origin = sessions::origin(req.metadata());
        let req = req.into_inner();
        let wrong = || Status::unauthenticated("wrong email or password");
        let Ok(email) = normalize_email(&req.email) else {
            return Err(wrong());
        };
        // An address that failed too often waits, whoever tries it: checked before any hashing,
        // so a flood of wrong passwords costs the server almost nothing.
        if let Some(secs) = crate::login::waiting(&self.0, &email).await? {
            return Err(crate::login::refusal(secs).into());
        }
        let account = store::accounts::by_email(&self.0.db, &email).await?;
        // Verify against a dummy hash when the account does not exist, so timing does not tell.
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0aN3Ri3IJSdjtq2YQAkvfSBHqDZBzRDHW5XAAULxz1A";
        let hash = account
            .as_ref()
            .map_or(DUMMY.to_string(), |a| a.password_hash.clone());
        let ok = verify_password(req.password, hash).await?;
        match account {
            Some(account) if ok => {
                crate::login::succeeded(&self.0, &email).await?;
                Ok(self.session(account, &origin).await?)
            }
            _ => {
                crate::login::failed(&self.0, &email).await?;
                Err(wrong())
            }
        }
    }

    async fn log_out(
        &self,
        req: Request<LogOutRequest>,
    ) -> Result<Response<LogOutResponse>, Status> {
        let p = auth::customer(&req)?;
        let now = self.0.now();
        store::tokens::revoke(
            &self.0.db,
            &p.account_id.to_string(),
            &p.token_id.to_string(),
            now,
        )
        .await?;
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
        let origin = sessions::origin(req.metadata());
        let req = req.into_inner();
        let name = kapal::wire::display_text("name", &req.name, 64)?;
        let scope = sessions::requested_scope(req.scope)?;
        // Never more than the token making the call: see [`sessions::api_token_lifetime`].
        let caller = sessions::caller_token(&self.0, &p).await?;
        let ttl = sessions::api_token_lifetime(&caller, scope, req.ttl_days, self.0.now())?;
        let (token, secret) = self
            .issue(
                &p.account_id.to_string(),
                token_kind::API,
                name,
                ttl,
                scope,
                &origin,
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
        let limit = kapal::wire::page_size(req.get_ref().page_size);
        let cursor = kapal::paging::parse(req.get_ref().page_token.trim())?;
        let rows = store::tokens::page(
            &self.0.db,
            &p.account_id.to_string(),
            token_kind::API,
            None,
            cursor.as_ref(),
            limit + 1,
        )
        .await?;
        let (page, next_page_token) =
            kapal::paging::split(rows, limit, |t| (t.created_at, t.id.as_str()));
        Ok(Response::new(ListApiTokensResponse {
            api_tokens: page.iter().map(token_to_wire).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_token(
        &self,
        req: Request<RevokeApiTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        let p = auth::customer(&req)?;
        let id = kapal::wire::uuid("id", &req.get_ref().id)?;
        let now = self.0.now();
        let token = store::tokens::revoke_of_kind(
            &self.0.db,
            &p.account_id.to_string(),
            &id.to_string(),
            token_kind::API,
            now,
        )
        .await?
        .ok_or_else(|| Status::not_found("no such API token"))?;
        Ok(Response::new(token_to_wire(&token)))
    }

    async fn verify_email(
        &self,
        req: Request<VerifyEmailRequest>,
    ) -> Result<Response<VerifyEmailResponse>, Status> {
        let req = req.into_inner();
        let ctx = &self.0;
        let wrong = || {
            Status::invalid_argument(
                "the code is wrong, expired or used up; ask for a new one with ResendVerification (kapal resend-verification)",
            )
        };
        let Ok(email) = normalize_email(&req.email) else {
            return Err(wrong());
        };
        // An address that failed too often waits, whoever tries it: checked before any hashing,
        // so a flood of wrong passwords costs the server almost nothing.
        if let Some(secs) = crate::login::waiting(&self.0, &email).await? {
            return Err(crate::login::refusal(secs).into());
        }
        let Some(account) = account_by_email(ctx, &email).await? else {
            return Err(wrong());
        };
        if account.email_verified_at.is_some() {
            return Ok(Response::new(VerifyEmailResponse {}));
        }
        use_code(ctx, &account.id, code_purpose::VERIFY, &req.code).await?;
        mark_verified(ctx, &account.id).await?;
        tracing::info!(account_id = %account.id, "email verified");
        Ok(Response::new(VerifyEmailResponse {}))
    }

    async fn resend_verification(
        &self,
        req: Request<ResendVerificationRequest>,
    ) -> Result<Response<ResendVerificationResponse>, Status> {
        let p = auth::customer(&req)?;
        let ctx = &self.0;
        let mailer = require_mailer(ctx)?;
        let account = self.account(&p.account_id).await?;
        if account.email_verified_at.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "{} is verified already; nothing to do",
                account.email
            ))
            .into());
        }
        if code_sent_recently(ctx, &account.id, code_purpose::VERIFY).await? {
            return Err(Error::ResourceExhausted(
                "a code was mailed less than a minute ago; check the inbox (and the spam folder), or try again in a minute".into(),
            )
            .into());
        }
        let code = issue_code(ctx, &account.id, code_purpose::VERIFY).await?;
        mailer.send_later(
            &account.email,
            "Your Kapal verification code",
            verification_mail(&account.email, &code),
        );
        Ok(Response::new(ResendVerificationResponse {}))
    }

    async fn request_password_reset(
        &self,
        req: Request<RequestPasswordResetRequest>,
    ) -> Result<Response<RequestPasswordResetResponse>, Status> {
        let ctx = &self.0;
        let mailer = require_mailer(ctx)?;
        let email = normalize_email(&req.get_ref().email)?;
        // The same answer whether or not the address has an account, and at most one mail a
        // minute to it: the API cannot be used to tell who is a customer, nor to flood an inbox.
        if let Some(account) = account_by_email(ctx, &email).await?
            && !code_sent_recently(ctx, &account.id, code_purpose::RESET).await?
        {
            let code = issue_code(ctx, &account.id, code_purpose::RESET).await?;
            mailer.send_later(
                &account.email,
                "Your Kapal password reset code",
                reset_mail(&account.email, &code),
            );
            tracing::info!(account_id = %account.id, "password reset code mailed");
        }
        Ok(Response::new(RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        req: Request<ResetPasswordRequest>,
    ) -> Result<Response<ResetPasswordResponse>, Status> {
        let req = req.into_inner();
        let ctx = &self.0;
        require_mailer(ctx)?;
        let wrong = || {
            Status::invalid_argument(
                "the code is wrong, expired or used up; ask for a new one with RequestPasswordReset (kapal reset-password --email E)",
            )
        };
        let Ok(email) = normalize_email(&req.email) else {
            return Err(wrong());
        };
        // An address that failed too often waits, whoever tries it: checked before any hashing,
        // so a flood of wrong passwords costs the server almost nothing.
        if let Some(secs) = crate::login::waiting(&self.0, &email).await? {
            return Err(crate::login::refusal(secs).into());
        }
        check_password(&req.new_password, &email)?;
        let Some(account) = account_by_email(ctx, &email).await? else {
            return Err(wrong());
        };
        use_code(ctx, &account.id, code_purpose::RESET, &req.code).await?;
        let hash = hash_password(req.new_password).await?;
        let now = ctx.now();
        // Whoever had the old password (or a stolen session) is logged out.
        store::tokens::set_password_ending_sessions(&ctx.db, &account.id, &hash, None, now).await?;
        mark_verified(ctx, &account.id).await?;
        tracing::info!(account_id = %account.id, "password reset; sessions ended");
        Ok(Response::new(ResetPasswordResponse {}))
    }

    async fn change_password(
        &self,
        req: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let p = auth::customer(&req)?.clone();
        let answer = sessions::change_password(&self.0, &p, req.into_inner()).await?;
        Ok(Response::new(answer))
    }

    async fn list_sessions(
        &self,
        req: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let p = auth::customer(&req)?;
        let answer = sessions::list_sessions(&self.0, p, req.get_ref()).await?;
        Ok(Response::new(answer))
    }

    async fn revoke_session(
        &self,
        req: Request<RevokeSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let p = auth::customer(&req)?;
        let session = sessions::revoke_session(&self.0, p, req.get_ref()).await?;
        Ok(Response::new(session))
    }
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
