//! Sessions and API tokens (issue 14, item 5), through the gateway against the real services,
//! on SQLite and on PostgreSQL. Each test starts with the attack that worked before:
//!
//! - an API token minted a 10-year token (and so outlived its own revocation plans), and a
//!   token could not be limited to reading: now scopes (FULL, READ_ONLY) and lifetimes (at most
//!   365 days, never past the API token that creates it) hold, and a read-only token neither
//!   mints tokens nor orders, stops, deletes or cancels anything;
//! - a password that leaked could not be changed from inside, and sessions opened with it stayed:
//!   ChangePassword ends every other session within the gateway's identity cache time
//!   (measured here), keeping the caller's;
//! - sessions could not be listed or ended one by one, and another account's session is
//!   NOT_FOUND.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use kapal::proto::v1::*;
use kapal::testing::Backend;
use kapal_tests::app::{Customer, TestApp};
use tonic::Code;

/// The gateway's identity cache time in the test stack (its default).
const AUTH_CACHE_TTL: Duration = Duration::from_secs(10);
/// Scheduling slack on a busy 2-core machine.
const MARGIN: Duration = Duration::from_secs(3);

kapal::on_both_backends!(
    worker_threads = 4;
    tokens_never_mint_more_than_themselves,
    read_only_tokens_cannot_order_or_delete,
    change_password_ends_the_other_sessions,
    sessions_are_listed_and_revoked_by_their_owner_only,
    sessions_show_the_address_and_agent_they_came_from,
);

fn err<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
    match r {
        Ok(v) => panic!("expected an error, got {:?}", v.into_inner()),
        Err(s) => s,
    }
}

async fn api_token(
    c: &mut Customer,
    name: &str,
    scope: ApiTokenScope,
    ttl_days: u32,
) -> anyhow::Result<CreateApiTokenResponse> {
    Ok(c.clients
        .accounts
        .create_api_token(CreateApiTokenRequest {
            name: name.into(),
            ttl_days,
            scope: scope as i32,
        })
        .await?
        .into_inner())
}

fn expires_in_days(t: &CreateApiTokenResponse) -> anyhow::Result<f64> {
    let meta = t.api_token.as_ref().context("api_token")?;
    let at = meta.expires_at.as_ref().context("expires_at")?;
    Ok((at.seconds - chrono::Utc::now().timestamp()) as f64 / 86_400.0)
}

async fn tokens_never_mint_more_than_themselves(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::builder().backend(backend).start().await?;
    let mut ana = app.customer("ana").await?;

    // The attack: a short-lived API token mints a 10-year one. Refused, with what is allowed.
    let short = api_token(&mut ana, "ci", ApiTokenScope::Full, 30).await?;
    let mut with_short = app.clients(&short.token);
    let ten_years = err(with_short
        .accounts
        .create_api_token(CreateApiTokenRequest {
            name: "forever".into(),
            ttl_days: 3650,
            scope: ApiTokenScope::Full as i32,
        })
        .await);
    assert_eq!(ten_years.code(), Code::InvalidArgument, "{ten_years:?}");
    assert!(
        ten_years.message().contains("at most 365"),
        "{}",
        ten_years.message()
    );
    // Nor one a day longer than itself.
    let longer = err(with_short
        .accounts
        .create_api_token(CreateApiTokenRequest {
            name: "longer".into(),
            ttl_days: 31,
            scope: ApiTokenScope::ReadOnly as i32,
        })
        .await);
    assert_eq!(longer.code(), Code::InvalidArgument, "{longer:?}");
    assert!(
        longer.message().contains("outlives"),
        "{}",
        longer.message()
    );
    // Within its life it may, and "as long as allowed" ends with it.
    let child = with_short
        .accounts
        .create_api_token(CreateApiTokenRequest {
            name: "child".into(),
            ttl_days: 0,
            scope: ApiTokenScope::ReadOnly as i32,
        })
        .await?
        .into_inner();
    let days = expires_in_days(&child)?;
    assert!(days <= 30.0 && days > 29.9, "child lives {days} days");
    assert_eq!(
        child.api_token.as_ref().map(|t| t.scope),
        Some(ApiTokenScope::ReadOnly as i32)
    );

    // A read-only token mints nothing, of either scope.
    let reader = api_token(&mut ana, "dashboard", ApiTokenScope::ReadOnly, 7).await?;
    let mut with_reader = app.clients(&reader.token);
    for scope in [ApiTokenScope::ReadOnly, ApiTokenScope::Full] {
        let refused = err(with_reader
            .accounts
            .create_api_token(CreateApiTokenRequest {
                name: "escalate".into(),
                ttl_days: 1,
                scope: scope as i32,
            })
            .await);
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("read-only"),
            "{}",
            refused.message()
        );
    }

    // A session may make a year at most; a token asked for without a scope (as clients older
    // than scopes ask) is FULL.
    let year = err(ana
        .clients
        .accounts
        .create_api_token(CreateApiTokenRequest {
            name: "too long".into(),
            ttl_days: 366,
            ..Default::default()
        })
        .await);
    assert_eq!(year.code(), Code::InvalidArgument);
    let old_style = ana
        .clients
        .accounts
        .create_api_token(CreateApiTokenRequest {
            name: "old client".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(expires_in_days(&old_style)? > 364.9);
    let listed = ana
        .clients
        .accounts
        .list_api_tokens(ListApiTokensRequest::default())
        .await?
        .into_inner()
        .api_tokens;
    let scope_of = |name: &str| listed.iter().find(|t| t.name == name).map(|t| t.scope);
    assert_eq!(scope_of("old client"), Some(ApiTokenScope::Full as i32));
    assert_eq!(scope_of("dashboard"), Some(ApiTokenScope::ReadOnly as i32));
    assert_eq!(listed.len(), 4, "no token was made by the refused calls");
    Ok(())
}

async fn read_only_tokens_cannot_order_or_delete(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::builder().backend(backend).start().await?;
    let mut ana = app.customer("ana").await?;
    let order = ana
        .clients
        .orders
        .checkout(CheckoutRequest {
            app_id: "n8n".into(),
            plan_id: "trial".into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        })
        .await?
        .into_inner();
    let reader = api_token(&mut ana, "dashboard", ApiTokenScope::ReadOnly, 7).await?;
    let mut r = app.clients(&reader.token);

    // It reads what the dashboard shows.
    r.accounts.who_am_i(WhoAmIRequest {}).await?;
    let instances = r
        .instances
        .list_instances(ListInstancesRequest::default())
        .await?
        .into_inner()
        .instances;
    assert_eq!(instances.len(), 1);
    r.instances
        .get_instance(GetInstanceRequest {
            instance_id: order.instance_id.clone(),
        })
        .await?;
    r.orders.list_orders(ListOrdersRequest::default()).await?;
    let subs = r
        .subscriptions
        .list_subscriptions(ListSubscriptionsRequest::default())
        .await?
        .into_inner()
        .subscriptions;
    let sub_id = subs.first().context("a subscription")?.id.clone();

    // The attack: a leaked read-only token orders, deletes, stops, cancels. Each refused with
    // PERMISSION_DENIED and a message that says why and what would work.
    let action = || InstanceActionRequest {
        instance_id: order.instance_id.clone(),
    };
    let refusals = [
        err(r
            .orders
            .checkout(CheckoutRequest {
                app_id: "ghost".into(),
                plan_id: "trial".into(),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
            })
            .await),
        err(r.instances.delete_instance(action()).await),
        err(r.instances.stop_instance(action()).await),
        err(r
            .subscriptions
            .cancel_subscription(CancelSubscriptionRequest {
                subscription_id: sub_id.clone(),
            })
            .await),
        err(r
            .accounts
            .change_password(ChangePasswordRequest {
                current_password: ana.password.clone(),
                new_password: "another horse 43".into(),
            })
            .await),
        err(r.accounts.log_out(LogOutRequest {}).await),
    ];
    for refused in refusals {
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("read-only") && refused.message().contains("FULL"),
            "{}",
            refused.message()
        );
    }

    // Nothing changed: one order, the instance not deleted, the subscription not cancelled.
    let orders = ana
        .clients
        .orders
        .list_orders(ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders;
    assert_eq!(orders.len(), 1);
    let instance = ana
        .clients
        .instances
        .get_instance(GetInstanceRequest {
            instance_id: order.instance_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(instance.desired_state, DesiredState::Running as i32);
    let sub = ana
        .clients
        .subscriptions
        .get_subscription(GetSubscriptionRequest {
            subscription_id: sub_id,
        })
        .await?
        .into_inner();
    assert!(!sub.cancel_at_period_end, "{sub:?}");

    // The owner's session deletes it (and cleans up the shared cluster).
    ana.clients.instances.delete_instance(action()).await?;
    Ok(())
}

async fn log_in(app: &TestApp, c: &Customer, password: &str) -> Result<String, tonic::Status> {
    Ok(app
        .clients("")
        .accounts
        .log_in(LogInRequest {
            email: c.email.clone(),
            password: password.into(),
        })
        .await?
        .into_inner()
        .token)
}

async fn change_password_ends_the_other_sessions(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::builder().backend(backend).start().await?;
    let mut ana = app.customer("ana").await?;
    // The thief logged in with the leaked password; ana keeps a script's API token.
    let thief_token = log_in(&app, &ana, &ana.password).await?;
    let mut thief = app.clients(&thief_token);
    let script = api_token(&mut ana, "script", ApiTokenScope::Full, 30).await?;
    // The thief's session is in use, so the gateway has it cached.
    thief.accounts.who_am_i(WhoAmIRequest {}).await?;

    // A wrong current password changes nothing.
    let wrong = err(ana
        .clients
        .accounts
        .change_password(ChangePasswordRequest {
            current_password: "not my password 1".into(),
            new_password: "a brand new horse 7".into(),
        })
        .await);
    assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
    let weak = err(ana
        .clients
        .accounts
        .change_password(ChangePasswordRequest {
            current_password: ana.password.clone(),
            new_password: "short".into(),
        })
        .await);
    assert_eq!(weak.code(), Code::InvalidArgument, "{weak:?}");
    thief.accounts.who_am_i(WhoAmIRequest {}).await?;

    let new_password = "a brand new horse 7";
    let changed = ana
        .clients
        .accounts
        .change_password(ChangePasswordRequest {
            current_password: ana.password.clone(),
            new_password: new_password.into(),
        })
        .await?
        .into_inner();
    let started = Instant::now();
    assert_eq!(changed.sessions_ended, 1);

    // The thief's session ends within the identity cache time (measured).
    let ended_after = loop {
        match thief.accounts.who_am_i(WhoAmIRequest {}).await {
            Err(s) if s.code() == Code::Unauthenticated => break started.elapsed(),
            Err(s) => anyhow::bail!("unexpected {s:?}"),
            Ok(_) if started.elapsed() > AUTH_CACHE_TTL + MARGIN => {
                anyhow::bail!(
                    "the other session still works {:?} after ChangePassword",
                    started.elapsed()
                )
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    eprintln!("the other session ended {ended_after:?} after ChangePassword");
    assert!(ended_after <= AUTH_CACHE_TTL + MARGIN);

    // The caller's session and the API token stay; the passwords are swapped.
    ana.clients.accounts.who_am_i(WhoAmIRequest {}).await?;
    app.clients(&script.token)
        .accounts
        .who_am_i(WhoAmIRequest {})
        .await?;
    let old = log_in(&app, &ana, &ana.password.clone())
        .await
        .expect_err("the old password no longer logs in");
    assert_eq!(old.code(), Code::Unauthenticated);
    log_in(&app, &ana, new_password).await?;
    let sessions = ana
        .clients
        .accounts
        .list_sessions(ListSessionsRequest::default())
        .await?
        .into_inner()
        .sessions;
    assert_eq!(
        sessions.len(),
        2,
        "ana's own and the new log-in: {sessions:?}"
    );
    assert_eq!(sessions.iter().filter(|s| s.current).count(), 1);
    Ok(())
}

async fn sessions_are_listed_and_revoked_by_their_owner_only(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::builder().backend(backend).start().await?;
    let mut ana = app.customer("ana").await?;
    let mut bob = app.customer("bob").await?;
    let laptop = log_in(&app, &ana, &ana.password.clone()).await?;
    let mut with_laptop = app.clients(&laptop);
    with_laptop.accounts.who_am_i(WhoAmIRequest {}).await?;

    let sessions = ana
        .clients
        .accounts
        .list_sessions(ListSessionsRequest::default())
        .await?
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let (current, other): (Vec<_>, Vec<_>) = sessions.into_iter().partition(|s| s.current);
    let laptop_id = other.first().context("the laptop's session")?.id.clone();
    assert_eq!(current.len(), 1);
    for s in current.iter().chain(&other) {
        assert!(s.created_at.is_some() && s.expires_at.is_some(), "{s:?}");
        assert!(s.user_agent.contains("tonic"), "{s:?}");
    }
    // Paged like every listing.
    let first = ana
        .clients
        .accounts
        .list_sessions(ListSessionsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(first.sessions.len(), 1);
    let second = ana
        .clients
        .accounts
        .list_sessions(ListSessionsRequest {
            page_size: 1,
            page_token: first.next_page_token.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(second.sessions.len(), 1);
    assert_ne!(first.sessions[0].id, second.sessions[0].id);

    // The attack: bob ends ana's session by its id. NOT_FOUND, as if it did not exist, and it
    // keeps working.
    let refused = err(bob
        .clients
        .accounts
        .revoke_session(RevokeSessionRequest {
            id: laptop_id.clone(),
        })
        .await);
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    with_laptop.accounts.who_am_i(WhoAmIRequest {}).await?;
    // An API token's id is not a session either, nor is garbage.
    let token = api_token(&mut ana, "script", ApiTokenScope::Full, 1).await?;
    let token_id = token.api_token.context("api_token")?.id;
    let not_a_session = err(ana
        .clients
        .accounts
        .revoke_session(RevokeSessionRequest { id: token_id })
        .await);
    assert_eq!(not_a_session.code(), Code::NotFound);
    let garbage = err(ana
        .clients
        .accounts
        .revoke_session(RevokeSessionRequest {
            id: "../../etc".into(),
        })
        .await);
    assert_eq!(garbage.code(), Code::InvalidArgument);
    // Bob sees only his own.
    let bobs = bob
        .clients
        .accounts
        .list_sessions(ListSessionsRequest::default())
        .await?
        .into_inner()
        .sessions;
    assert_eq!(bobs.len(), 1);
    assert!(bobs.iter().all(|s| s.id != laptop_id));

    // Ana ends the laptop's session: it stops working at once on this gateway.
    let revoked = ana
        .clients
        .accounts
        .revoke_session(RevokeSessionRequest {
            id: laptop_id.clone(),
        })
        .await?
        .into_inner();
    assert!(revoked.revoked_at.is_some());
    let gone = err(with_laptop.accounts.who_am_i(WhoAmIRequest {}).await);
    assert_eq!(gone.code(), Code::Unauthenticated);
    let left = ana
        .clients
        .accounts
        .list_sessions(ListSessionsRequest::default())
        .await?
        .into_inner()
        .sessions;
    assert_eq!(left.len(), 1);
    assert!(left[0].current);
    Ok(())
}

/// A LogIn as a trusted proxy (the ingress) forwards it for a client at `from`.
async fn log_in_from(
    app: &TestApp,
    c: &Customer,
    from: &str,
    agent: &str,
) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(LogInRequest {
        email: c.email.clone(),
        password: c.password.clone(),
    });
    let xff = format!("203.0.113.250, {from}");
    req.metadata_mut()
        .insert("x-forwarded-for", xff.parse().expect("ascii"));
    req.metadata_mut()
        .insert("user-agent", agent.parse().expect("ascii"));
    // A client that claims an address of its own in the gateway's header is not believed.
    req.metadata_mut().insert(
        "x-kapal-client-address",
        "192.0.2.66".parse().expect("ascii"),
    );
    Ok(app
        .clients("")
        .accounts
        .log_in(req)
        .await?
        .into_inner()
        .token)
}

/// Sessions show where they came from: the client's address as the gateway saw it (behind a
/// trusted proxy, the address it forwarded; never one the client claims itself) and its user
/// agent, recorded when the session was opened.
async fn sessions_show_the_address_and_agent_they_came_from(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::builder()
        .backend(backend)
        .with_trusted_proxies(vec!["127.0.0.0/8".parse()?])
        .start()
        .await?;
    let mut ana = app.customer("ana").await?;
    let phone = log_in_from(&app, &ana, "198.51.100.7", "KapalPhone/2.1").await?;
    app.clients(&phone)
        .accounts
        .who_am_i(WhoAmIRequest {})
        .await?;
    let sessions = ana
        .clients
        .accounts
        .list_sessions(ListSessionsRequest::default())
        .await?
        .into_inner()
        .sessions;
    let from_phone = sessions
        .iter()
        .find(|s| !s.current)
        .context("the phone's session")?;
    assert_eq!(from_phone.client_address, "198.51.100.7", "{from_phone:?}");
    assert!(
        from_phone.user_agent.starts_with("KapalPhone/2.1"),
        "{from_phone:?}"
    );
    // The sign-up's session came straight from the test over loopback (no forwarded header).
    let own = sessions
        .iter()
        .find(|s| s.current)
        .context("the current session")?;
    assert_eq!(own.client_address, "127.0.0.1", "{own:?}");
    Ok(())
}
