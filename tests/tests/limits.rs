//! What one account may hold of the server at once, through the real gateway (issue 14, item
//! 9): WatchInstance streams are bounded per account; the next one is RESOURCE_EXHAUSTED with
//! what to do, other accounts are not affected, and a closed stream frees its slot.

use std::time::{Duration, Instant};

use kapal::proto::v1::{CheckoutRequest, WatchInstanceRequest};
use kapal::testing::Backend;
use kapal_tests::app::TestApp;
use tonic::Code;

/// kapal_control_plane::Config's default.
const MAX_WATCHES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_streams_are_bounded_per_account() -> anyhow::Result<()> {
    let app = TestApp::builder().backend(Backend::Sqlite).start().await?;
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
    let watch = || WatchInstanceRequest {
        instance_id: order.instance_id.clone(),
    };
    let mut streams = Vec::new();
    for _ in 0..MAX_WATCHES {
        let mut s = ana
            .clients
            .instances
            .watch_instance(watch())
            .await?
            .into_inner();
        // Each stream is live: its first event arrives.
        s.message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("no first event"))?;
        streams.push(s);
    }
    let refused = ana
        .clients
        .instances
        .watch_instance(watch())
        .await
        .expect_err("one stream too many");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("close a watch"), "{refused:?}");
    // Another customer is not held back by Ana's streams.
    let mut bob = app.customer("bob").await?;
    let bobs = bob
        .clients
        .orders
        .checkout(CheckoutRequest {
            app_id: "n8n".into(),
            plan_id: "trial".into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        })
        .await?
        .into_inner();
    let mut s = bob
        .clients
        .instances
        .watch_instance(WatchInstanceRequest {
            instance_id: bobs.instance_id.clone(),
        })
        .await?
        .into_inner();
    s.message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("bob's first event"))?;

    // Closing a stream gives its slot back.
    drop(streams.pop());
    let started = Instant::now();
    loop {
        match ana.clients.instances.watch_instance(watch()).await {
            Ok(_) => break,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the closed stream's slot was not given back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}
