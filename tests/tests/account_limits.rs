//! What one account may order (issue 14, item 2), through the real gateway on both databases:
//! one free trial per app per account, however its instances are deleted and re-ordered, and a
//! cap on the live instances of one account. Each refusal says what to do instead.

use kapal::proto::v1::{CheckoutRequest, InstanceActionRequest};
use kapal::testing::Backend;
use kapal_tests::app::TestApp;
use tonic::Code;

fn order(app: &str, plan: &str) -> CheckoutRequest {
    CheckoutRequest {
        app_id: app.into(),
        plan_id: plan.into(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    }
}

async fn one_trial_per_app_per_account(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::builder().backend(backend).start().await?;
    let mut ana = app.customer("ana").await?.clients;
    let first = ana
        .orders
        .checkout(order("n8n", "trial"))
        .await?
        .into_inner();

    // The attack: trial after trial of the same app from one account.
    let again = ana
        .orders
        .checkout(order("n8n", "trial"))
        .await
        .expect_err("a second n8n trial");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(
        again.message().contains("free trial") && again.message().contains("paid plan"),
        "{}",
        again.message()
    );

    // Deleting the trial's instance does not give a new trial.
    ana.instances
        .delete_instance(InstanceActionRequest {
            instance_id: first.instance_id.clone(),
        })
        .await?;
    let after_delete = ana
        .orders
        .checkout(order("n8n", "trial"))
        .await
        .expect_err("a trial after deleting the first");
    assert_eq!(after_delete.code(), Code::FailedPrecondition);

    // Another app's trial, a paid plan of the same app, and another account's trial are fine.
    ana.orders.checkout(order("ghost", "trial")).await?;
    ana.orders.checkout(order("n8n", "starter")).await?;
    let mut bob = app.customer("bob").await?.clients;
    bob.orders.checkout(order("n8n", "trial")).await?;
    Ok(())
}

async fn live_instances_per_account_are_capped(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::builder()
        .backend(backend)
        .with_max_instances_per_account(2)
        .start()
        .await?;
    let mut ana = app.customer("ana").await?.clients;
    let first = ana
        .orders
        .checkout(order("n8n", "trial"))
        .await?
        .into_inner();
    ana.orders.checkout(order("ghost", "trial")).await?;

    // The third is refused, and says how to get room.
    let third = ana
        .orders
        .checkout(order("wordpress", "trial"))
        .await
        .expect_err("over the cap");
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    assert!(
        third.message().contains("kapal delete") && third.message().contains("(2)"),
        "{}",
        third.message()
    );

    // Another account is not affected.
    let mut bob = app.customer("bob").await?.clients;
    bob.orders.checkout(order("wordpress", "trial")).await?;

    // A deleted instance frees its place.
    ana.instances
        .delete_instance(InstanceActionRequest {
            instance_id: first.instance_id.clone(),
        })
        .await?;
    ana.orders.checkout(order("wordpress", "trial")).await?;
    Ok(())
}

kapal::on_both_backends!(
    worker_threads = 4;
    one_trial_per_app_per_account,
    live_instances_per_account_are_capped,
);
