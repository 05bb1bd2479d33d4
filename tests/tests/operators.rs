//! Operators (role ADMIN) are made by an operator, never by signing up (issue 14, item 1).
//! Whoever registered an address listed for admins used to get the role, and with it every
//! tenant's credentials. Through the real gateway, on SQLite and PostgreSQL: the address an
//! operator means to use is registered by someone else first and gets nothing; the grant
//! (as `kapal admin grant` does it, on the control-plane's database) gives the role; the revoke
//! takes it away from the live session within the gateway's identity cache time.

use std::time::{Duration, Instant};

use kapal::proto::v1::{ListAllInstancesRequest, Role};
use kapal::testing::Backend;
use kapal_tests::app::TestApp;
use tonic::Code;

/// The gateway's identity cache (`auth_cache_ttl`, 10 s by default) plus room for a slow
/// machine: how long a role change may take to reach a session already in use.
const ROLE_CHANGE_LIMIT: Duration = Duration::from_secs(30);

async fn can_list_everything(c: &mut kapal_tests::app::Customer) -> Result<(), tonic::Status> {
    c.clients
        .admin
        .list_all_instances(ListAllInstancesRequest::default())
        .await
        .map(|_| ())
}

async fn admin_is_granted_by_an_operator_never_by_signing_up(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::builder().backend(backend).start().await?;
    // Someone registers the operator's address first.
    let mut squatter = app.sign_up_as("Squatter", app.admin_email.clone()).await?;
    assert_eq!(squatter.account.role, Role::Customer as i32);
    let s = can_list_everything(&mut squatter)
        .await
        .expect_err("a customer");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    // Asking again changes nothing either.
    let s = can_list_everything(&mut squatter)
        .await
        .expect_err("still a customer");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // The operator grants the role to the account it trusts: its session becomes an admin's.
    app.set_admin(&squatter.email, true).await?;
    let started = Instant::now();
    while let Err(s) = can_list_everything(&mut squatter).await {
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        assert!(
            started.elapsed() < ROLE_CHANGE_LIMIT,
            "the grant did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("grant took effect after {:?}", started.elapsed());

    // Revoked: the same live session loses access within the identity cache time.
    app.set_admin(&squatter.email, false).await?;
    let started = Instant::now();
    while can_list_everything(&mut squatter).await.is_ok() {
        assert!(
            started.elapsed() < ROLE_CHANGE_LIMIT,
            "the revoke did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("revoke took effect after {:?}", started.elapsed());
    let s = can_list_everything(&mut squatter)
        .await
        .expect_err("revoked");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_is_granted_by_an_operator_never_by_signing_up_sqlite() -> anyhow::Result<()> {
    admin_is_granted_by_an_operator_never_by_signing_up(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_is_granted_by_an_operator_never_by_signing_up_postgres() -> anyhow::Result<()> {
    admin_is_granted_by_an_operator_never_by_signing_up(Backend::Postgres).await
}
