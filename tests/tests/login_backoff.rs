//! Abuse-resistant log-in (issue 14, item 3), through the real gateway behind a trusted proxy
//! (`--trusted-proxies`), on both databases: a client flooding LogIn with wrong passwords for
//! one account, from one forwarded address, does not keep another user from another address
//! out; the flooded account waits (RESOURCE_EXHAUSTED with the seconds to wait) instead of
//! having its password guessed at speed, and its owner logs in once the wait has passed. An
//! address without an account waits the same way, so the wait does not tell who has one.

use std::time::Duration;

use chrono::SubsecRound as _;
use futures::StreamExt as _;
use kapal::clock::ManualClock;
use kapal::proto::v1::LogInRequest;
use kapal::proto::v1::account_service_client::AccountServiceClient;
use kapal::testing::Backend;
use kapal_tests::app::TestApp;
use tonic::Code;

/// A LogIn as the trusted proxy forwards it for a client at `from`.
async fn log_in(
    app: &TestApp,
    from: &str,
    email: &str,
    password: &str,
) -> Result<kapal::proto::v1::SessionResponse, tonic::Status> {
    let mut req = tonic::Request::new(LogInRequest {
        email: email.into(),
        password: password.into(),
    });
    req.metadata_mut().insert(
        "x-forwarded-for",
        from.parse()
            .map_err(|_| tonic::Status::internal("bad test address"))?,
    );
    AccountServiceClient::new(app.channel())
        .log_in(req)
        .await
        .map(tonic::Response::into_inner)
}

async fn a_login_flood_holds_back_only_the_flooded_account(backend: Backend) -> anyhow::Result<()> {
    // Whole seconds: both databases keep the times exactly.
    let clock = ManualClock::new(chrono::Utc::now().trunc_subsecs(0));
    let app = TestApp::builder()
        .backend(backend)
        .with_control_plane_clock(clock.clone())
        // The test connects from loopback, as the ingress controller would from its pod.
        .with_trusted_proxies(vec!["127.0.0.0/8".parse()?])
        .with_rate_limit(20, 40)
        .start()
        .await?;
    let ana = app.customer("ana").await?;
    let bob = app.customer("bob").await?;

    // The attack: 100 wrong passwords for Ana's account from one address, four at a time,
    // while Bob logs in from his.
    let flood = {
        let app = &app;
        let email = ana.email.clone();
        futures::stream::iter(0..100)
            .map(move |i| {
                let email = email.clone();
                async move { log_in(app, "203.0.113.7", &email, &format!("guess number {i}")).await }
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
    };
    let bobs = async {
        let mut answers = Vec::new();
        for _ in 0..5 {
            answers.push(log_in(&app, "198.51.100.9", &bob.email, &bob.password).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        answers
    };
    let (flood, bobs) = tokio::join!(flood, bobs);
    for answer in bobs {
        let session = answer.map_err(|s| anyhow::anyhow!("Bob was kept out: {s:?}"))?;
        assert_eq!(session.account.map(|a| a.id), Some(bob.account.id.clone()));
    }
    assert!(flood.iter().all(Result::is_err), "a guess got in");
    let checked = flood
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::Unauthenticated))
        .count();
    let waited = flood
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted && s.message().contains("try again in")))
        .count();
    assert!(
        checked < 20,
        "{checked} of the 100 guesses had their password checked: the account did not wait"
    );
    assert!(waited > 0, "no guess was told to wait: {flood:?}");

    // Ana herself, from another address and with the right password, waits too: the wait is
    // the account's, and it says for how long.
    let refused = log_in(&app, "192.0.2.10", &ana.email, &ana.password)
        .await
        .expect_err("the flooded account waits");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("try again in") && refused.message().contains("reset"),
        "{}",
        refused.message()
    );

    // The wait is bounded (15 minutes at most): once it has passed, the owner is in...
    clock.advance(chrono::Duration::minutes(16));
    let session = log_in(&app, "192.0.2.10", &ana.email, &ana.password)
        .await
        .map_err(|s| anyhow::anyhow!("the owner is still kept out after the wait: {s:?}"))?;
    assert_eq!(session.account.map(|a| a.id), Some(ana.account.id.clone()));
    // ...and the success cleared the count: one typo is just a wrong password again.
    let typo = log_in(&app, "192.0.2.10", &ana.email, "not the password")
        .await
        .expect_err("a wrong password");
    assert_eq!(typo.code(), Code::Unauthenticated, "{typo:?}");

    // An address without an account waits the same way after as many failures.
    let nobody = format!("nobody-{}@example.com", uuid::Uuid::new_v4().simple());
    let mut last = None;
    for i in 0..6 {
        last = Some(
            log_in(&app, "203.0.113.8", &nobody, &format!("guess {i}"))
                .await
                .expect_err("no such account"),
        );
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("no attempt"))?;
    assert_eq!(last.code(), Code::ResourceExhausted, "{last:?}");
    Ok(())
}

kapal::on_both_backends!(
    worker_threads = 4;
    a_login_flood_holds_back_only_the_flooded_account,
);
