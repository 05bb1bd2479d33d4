//! The customer journey over grpc-web (what browsers speak) through the gateway.

use std::time::Duration;

use anyhow::Context as _;
use kapal::proto::v1::*;
use kapal_tests::app::{TestApp, watch_until};
use tonic::Code;

async fn journey_over_grpc_web(http2: bool) -> anyhow::Result<()> {
    let app = TestApp::builder().start().await?;
    let mut anon = app.web_clients("", http2)?;
    let apps = anon
        .catalog
        .list_apps(ListAppsRequest {})
        .await?
        .into_inner()
        .apps;
    assert!(apps.iter().any(|a| a.id == "wordpress"));

    let session = anon
        .accounts
        .sign_up(SignUpRequest {
            email: format!("web-{}@example.com", uuid::Uuid::new_v4().simple()),
            password: "correct horse 42".into(),
            display_name: "Web".into(),
        })
        .await?
        .into_inner();
    let mut c = app.web_clients(&session.token, http2)?;
    let order = c
        .orders
        .checkout(CheckoutRequest {
            app_id: "wordpress".into(),
            plan_id: "trial".into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        })
        .await?
        .into_inner();
    assert_eq!(order.status, OrderStatus::Completed as i32);
    // The server-streaming watch works over grpc-web too.
    let seen = watch_until(
        &mut c.instances,
        &order.instance_id,
        InstanceStatus::Ready,
        Duration::from_secs(180),
    )
    .await?;
    assert_eq!(seen.last(), Some(&InstanceStatus::Ready));
    let instance = c
        .instances
        .get_instance(GetInstanceRequest {
            instance_id: order.instance_id.clone(),
        })
        .await?
        .into_inner();
    assert!(instance.credentials.context("credentials")?.password.len() >= 16);
    let invoices = c
        .subscriptions
        .list_invoices(ListInvoicesRequest::default())
        .await?
        .into_inner()
        .invoices;
    assert_eq!(invoices.len(), 1);

    // Errors arrive as gRPC statuses over grpc-web as well.
    let err = anon
        .orders
        .list_orders(ListOrdersRequest::default())
        .await
        .expect_err("needs a token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c
        .orders
        .checkout(CheckoutRequest {
            app_id: "nope".into(),
            plan_id: "trial".into(),
            idempotency_key: "k-123456789".into(),
        })
        .await
        .expect_err("unknown app");
    assert_eq!(err.code(), Code::InvalidArgument);

    c.instances
        .delete_instance(InstanceActionRequest {
            instance_id: order.instance_id.clone(),
        })
        .await?;
    watch_until(
        &mut c.instances,
        &order.instance_id,
        InstanceStatus::Deleted,
        Duration::from_secs(180),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn journey_over_grpc_web_http1() -> anyhow::Result<()> {
    journey_over_grpc_web(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn journey_over_grpc_web_http2() -> anyhow::Result<()> {
    journey_over_grpc_web(true).await
}
