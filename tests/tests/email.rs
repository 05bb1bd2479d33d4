//! Verified email over real SMTP (issue 14, items 1, 4 and 5): the control-plane mails codes
//! through Mailpit (`scripts/mailpit`, a real SMTP server on loopback), and the tests read them
//! through Mailpit's HTTP API, as a person reads their inbox.
//!
//! - An unverified account can browse and log in but not check out; the emailed code verifies it.
//! - Sign-up answers the same for a taken address as for a new one; the owner is told by mail.
//! - A password is reset with an emailed one-time code, which ends the other sessions.
//! - Codes cannot be guessed (a few attempts each) nor used twice.

use std::time::Duration;

use kapal::proto::v1::{
    CheckoutRequest, ListAppsRequest, LogInRequest, RequestPasswordResetRequest,
    ResendVerificationRequest, ResetPasswordRequest, SignUpRequest, VerifyEmailRequest,
    WhoAmIRequest,
};
use kapal::testing::Backend;
use kapal_tests::app::TestApp;
use kapal_tests::mailpit::Mailpit;
use tonic::Code;

fn new_email(name: &str) -> String {
    format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple())
}

async fn app_with_mail(backend: Backend) -> anyhow::Result<(TestApp, Mailpit)> {
    let mailpit = Mailpit::get().await?;
    let app = TestApp::builder()
        .backend(backend)
        .with_mail(mailpit.mail_config())
        .start()
        .await?;
    Ok((app, mailpit))
}

fn trial() -> CheckoutRequest {
    CheckoutRequest {
        app_id: "n8n".into(),
        plan_id: "trial".into(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    }
}

async fn unverified_accounts_browse_but_do_not_check_out(backend: Backend) -> anyhow::Result<()> {
    let (app, mailpit) = app_with_mail(backend).await?;
    let email = new_email("ana");
    let mut ana = app.sign_up_as("Ana", email.clone()).await?;
    assert!(!ana.account.email_verified);

    // Browsing and logging in work.
    let apps = ana.clients.catalog.list_apps(ListAppsRequest {}).await?;
    assert!(!apps.into_inner().apps.is_empty());

    // The attack of item 2: buying trials with an address nobody reads. Refused, with what to do.
    let refused = ana
        .clients
        .orders
        .checkout(trial())
        .await
        .expect_err("an unverified account must not check out");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("verify your email")
            && refused.message().contains("kapal verify-email"),
        "{}",
        refused.message()
    );

    // The code arrives over SMTP.
    let mails = mailpit.wait_for(&email, 1).await?;
    assert!(mails[0].subject.contains("verification code"), "{mails:?}");
    let code = mails[0].code()?;

    // A wrong code is refused; the right one verifies.
    let anonymous = app.clients("");
    let wrong = anonymous
        .accounts
        .clone()
        .verify_email(VerifyEmailRequest {
            email: email.clone(),
            code: if code == "1111-1111" {
                "2222-2222".into()
            } else {
                "1111-1111".into()
            },
        })
        .await
        .expect_err("a wrong code");
    assert_eq!(wrong.code(), Code::InvalidArgument);
    anonymous
        .accounts
        .clone()
        .verify_email(VerifyEmailRequest {
            email: email.clone(),
            code: code.clone(),
        })
        .await?;
    let me = ana.clients.accounts.who_am_i(WhoAmIRequest {}).await?;
    assert!(me.into_inner().email_verified);

    // Now the same account checks out.
    let order = ana.clients.orders.checkout(trial()).await?.into_inner();
    assert!(!order.id.is_empty());

    // Verified: a resend is refused, with why.
    let resend = ana
        .clients
        .accounts
        .resend_verification(ResendVerificationRequest {})
        .await
        .expect_err("verified already");
    assert_eq!(resend.code(), Code::FailedPrecondition);
    Ok(())
}

async fn sign_up_does_not_tell_who_has_an_account(backend: Backend) -> anyhow::Result<()> {
    let (app, mailpit) = app_with_mail(backend).await?;
    let taken = new_email("owner");
    let owner = app.sign_up_as("Owner", taken.clone()).await?;
    let fresh = new_email("fresh");
    let mut anonymous = app.clients("");
    let sign_up = |email: &str| SignUpRequest {
        email: email.to_string(),
        password: "attacker pass 77".into(),
        display_name: String::new(),
    };

    // The attack of item 4: sign up with an address to learn whether it is a customer.
    let on_taken = anonymous.accounts.sign_up(sign_up(&taken)).await;
    let on_fresh = anonymous.accounts.sign_up(sign_up(&fresh)).await;
    let (on_taken, on_fresh) = (on_taken?.into_inner(), on_fresh?.into_inner());
    assert_eq!(on_taken, on_fresh, "the answers must not differ");
    assert!(on_taken.verification_sent && on_taken.token.is_empty() && on_taken.account.is_none());

    // The owner learns of it by mail (after the verification mail of their own sign-up); the
    // new address gets its code.
    let owner_mails = mailpit.wait_for(&taken, 2).await?;
    assert!(
        owner_mails[1].subject.contains("tried to sign up"),
        "{owner_mails:?}"
    );
    assert!(owner_mails[1].code().is_err(), "no code for the attacker");
    let fresh_mails = mailpit.wait_for(&fresh, 1).await?;
    assert!(fresh_mails[0].code().is_ok());

    // The attacker's password opens nothing; the owner's still works.
    let wrong = anonymous
        .accounts
        .log_in(LogInRequest {
            email: taken.clone(),
            password: "attacker pass 77".into(),
        })
        .await
        .expect_err("not the owner's password");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    anonymous
        .accounts
        .log_in(LogInRequest {
            email: taken.clone(),
            password: owner.password.clone(),
        })
        .await?;
    Ok(())
}

async fn passwords_are_reset_by_an_emailed_code(backend: Backend) -> anyhow::Result<()> {
    let (app, mailpit) = app_with_mail(backend).await?;
    let email = new_email("reset");
    let mut ana = app.sign_up_as("Ana", email.clone()).await?;
    mailpit.wait_for(&email, 1).await?; // the verification mail
    let mut anonymous = app.clients("");

    // Asking for an address without an account answers the same, and mails nothing.
    let nobody = new_email("nobody");
    anonymous
        .accounts
        .request_password_reset(RequestPasswordResetRequest {
            email: nobody.clone(),
        })
        .await?;
    anonymous
        .accounts
        .request_password_reset(RequestPasswordResetRequest {
            email: email.clone(),
        })
        .await?;
    let mails = mailpit.wait_for(&email, 2).await?;
    assert!(mails[1].subject.contains("reset"), "{mails:?}");
    let code = mails[1].code()?;
    assert!(mailpit.mails_to(&nobody).await?.is_empty());

    let reset = |code: &str, password: &str| ResetPasswordRequest {
        email: email.clone(),
        code: code.to_string(),
        new_password: password.to_string(),
    };
    // A weak new password is refused before the code is spent.
    let weak = anonymous
        .accounts
        .reset_password(reset(&code, "short1"))
        .await
        .expect_err("weak");
    assert_eq!(weak.code(), Code::InvalidArgument);
    anonymous
        .accounts
        .reset_password(reset(&code, "brand new pass 5"))
        .await?;
    // Once only.
    let again = anonymous
        .accounts
        .reset_password(reset(&code, "another pass 66"))
        .await
        .expect_err("a used code");
    assert_eq!(again.code(), Code::InvalidArgument);

    // The old password no longer logs in; the new one does. The code proved the address.
    let old = anonymous
        .accounts
        .log_in(LogInRequest {
            email: email.clone(),
            password: ana.password.clone(),
        })
        .await
        .expect_err("the old password");
    assert_eq!(old.code(), Code::Unauthenticated);
    let session = anonymous
        .accounts
        .log_in(LogInRequest {
            email: email.clone(),
            password: "brand new pass 5".into(),
        })
        .await?
        .into_inner();
    assert!(session.account.is_some_and(|a| a.email_verified));

    // The session opened before the reset ends (within the gateway's auth cache TTL).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match ana.clients.accounts.who_am_i(WhoAmIRequest {}).await {
            Err(s) if s.code() == Code::Unauthenticated => break,
            Err(s) => return Err(s.into()),
            Ok(_) => {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the old session still works 30 s after the reset"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}

async fn codes_cannot_be_guessed(backend: Backend) -> anyhow::Result<()> {
    let (app, mailpit) = app_with_mail(backend).await?;
    let email = new_email("guess");
    app.sign_up_as("Ana", email.clone()).await?;
    let code = mailpit.wait_for(&email, 1).await?[0].code()?;
    let mut anonymous = app.clients("");
    let verify = |code: &str| VerifyEmailRequest {
        email: email.clone(),
        code: code.to_string(),
    };
    let wrong = if code.starts_with('0') {
        "1000-0000"
    } else {
        "0000-0000"
    };
    for _ in 0..5 {
        let e = anonymous
            .accounts
            .verify_email(verify(wrong))
            .await
            .expect_err("wrong");
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    // Five guesses spent the code: the right one no longer works, and says how to get another.
    let spent = anonymous
        .accounts
        .verify_email(verify(&code))
        .await
        .expect_err("the code is used up");
    assert_eq!(spent.code(), Code::InvalidArgument);
    assert!(spent.message().contains("ResendVerification"));
    Ok(())
}

kapal::on_both_backends!(
    worker_threads = 4;
    unverified_accounts_browse_but_do_not_check_out,
    sign_up_does_not_tell_who_has_an_account,
    passwords_are_reset_by_an_emailed_code,
    codes_cannot_be_guessed,
);
