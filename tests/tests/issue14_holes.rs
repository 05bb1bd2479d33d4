//! The last holes of issue 14, through the real gateway(s) against the real services on the
//! local cluster, on SQLite and on PostgreSQL. Each test starts with what worked before:
//!
//! - ListSubscriptions, ListInvoices and ListApiTokens answered everything in one message: now
//!   they page like every other listing (page_size, page_token, next_page_token; a token not
//!   made by the service is INVALID_ARGUMENT);
//! - every WatchInstance stream read the database every 3 s on its own: now a stream wakes only
//!   on a change of its instance, from one notifier per process, and a change made through
//!   another control-plane replica still reaches it;
//! - ChangePlan to a bigger plan was not checked against the cluster's capacity ceiling (a
//!   checkout and StartInstance are): now it is RESOURCE_EXHAUSTED with what to do, and nothing
//!   changes.

use std::time::Duration;

use anyhow::Context as _;
use diesel_async::SimpleAsyncConnection as _;
use kapal::proto::v1::*;
use kapal::testing::Backend;
use kapal_tests::app::{Clients, TestApp, watch_until};
use tonic::Code;

const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a change may take to show on a stream on a busy 2-core machine (it is seen about a
/// poll interval after it was made).
const EFFECT_TIMEOUT: Duration = Duration::from_secs(60);

kapal::on_both_backends!(
    worker_threads = 4;
    subscriptions_invoices_and_tokens_are_listed_in_pages,
    a_watch_on_one_replica_sees_a_change_made_through_another,
    an_upgrade_past_the_capacity_ceiling_is_refused_and_changes_nothing,
);

fn checkout(app: &str, plan: &str) -> CheckoutRequest {
    CheckoutRequest {
        app_id: app.into(),
        plan_id: plan.into(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    }
}

/// Orders `app`/`plan` and waits until the order has its instance and subscription.
async fn order(c: &mut Clients, app: &str, plan: &str) -> anyhow::Result<Order> {
    let order = c.orders.checkout(checkout(app, plan)).await?.into_inner();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let o = c
            .orders
            .get_order(GetOrderRequest {
                order_id: order.id.clone(),
            })
            .await?
            .into_inner();
        if !o.instance_id.is_empty() && !o.subscription_id.is_empty() {
            return Ok(o);
        }
        anyhow::ensure!(
            o.status != OrderStatus::Failed as i32,
            "order failed: {o:?}"
        );
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "order not done: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn delete(c: &mut Clients, instance_id: &str) -> anyhow::Result<()> {
    c.instances
        .delete_instance(InstanceActionRequest {
            instance_id: instance_id.to_string(),
        })
        .await?;
    Ok(())
}

async fn subscriptions_invoices_and_tokens_are_listed_in_pages(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::builder().backend(backend).start().await?;
    let mut ana = app.customer("ana").await?.clients;
    let mut orders = Vec::new();
    for plan in ["starter", "pro", "starter"] {
        orders.push(order(&mut ana, "n8n", plan).await?);
    }

    // Subscriptions: two pages of 2 and 1, newest first, no repeats.
    let first = ana
        .subscriptions
        .list_subscriptions(ListSubscriptionsRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(first.subscriptions.len(), 2, "{first:?}");
    assert!(!first.next_page_token.is_empty(), "{first:?}");
    let second = ana
        .subscriptions
        .list_subscriptions(ListSubscriptionsRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(second.subscriptions.len(), 1, "{second:?}");
    assert_eq!(second.next_page_token, "");
    let mut ids: Vec<&str> = first
        .subscriptions
        .iter()
        .chain(&second.subscriptions)
        .map(|s| s.id.as_str())
        .collect();
    let newest_first: Vec<&str> = orders
        .iter()
        .rev()
        .map(|o| o.subscription_id.as_str())
        .collect();
    assert_eq!(ids, newest_first);
    ids.dedup();
    assert_eq!(ids.len(), 3);
    // The default page holds them all.
    let all = ana
        .subscriptions
        .list_subscriptions(ListSubscriptionsRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        (all.subscriptions.len(), all.next_page_token.as_str()),
        (3, "")
    );

    // Invoices (one per paid checkout): the same, and of one subscription.
    let first = ana
        .subscriptions
        .list_invoices(ListInvoicesRequest {
            subscription_id: String::new(),
            page_size: 2,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(first.invoices.len(), 2, "{first:?}");
    assert!(!first.next_page_token.is_empty());
    let second = ana
        .subscriptions
        .list_invoices(ListInvoicesRequest {
            subscription_id: String::new(),
            page_size: 2,
            page_token: first.next_page_token.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(second.invoices.len(), 1, "{second:?}");
    assert_eq!(second.next_page_token, "");
    let mut numbers: Vec<&str> = first
        .invoices
        .iter()
        .chain(&second.invoices)
        .map(|i| i.number.as_str())
        .collect();
    let listed = numbers.clone();
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    numbers.dedup();
    assert_eq!(listed, numbers, "newest first, no repeats");
    assert_eq!(numbers.len(), 3);
    let one = ana
        .subscriptions
        .list_invoices(ListInvoicesRequest {
            subscription_id: orders[1].subscription_id.clone(),
            page_size: 1,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!((one.invoices.len(), one.next_page_token.as_str()), (1, ""));

    // API tokens: the same.
    for name in ["one", "two", "three"] {
        ana.accounts
            .create_api_token(CreateApiTokenRequest {
                name: name.into(),
                scope: ApiTokenScope::ReadOnly as i32,
                ttl_days: 1,
            })
            .await?;
    }
    let first = ana
        .accounts
        .list_api_tokens(ListApiTokensRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(first.api_tokens.len(), 2, "{first:?}");
    let second = ana
        .accounts
        .list_api_tokens(ListApiTokensRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
        })
        .await?
        .into_inner();
    let names: Vec<&str> = first
        .api_tokens
        .iter()
        .chain(&second.api_tokens)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["three", "two", "one"]);
    assert_eq!(second.next_page_token, "");

    // A page token the service did not make: INVALID_ARGUMENT, saying what to do.
    let bad = ana
        .subscriptions
        .list_subscriptions(ListSubscriptionsRequest {
            page_size: 2,
            page_token: "not-a-token".into(),
        })
        .await
        .expect_err("a made-up token");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("start again"), "{bad:?}");
    // A subscription listing's token names no invoice number.
    let foreign = first_subscription_token(&mut ana).await?;
    let bad = ana
        .subscriptions
        .list_invoices(ListInvoicesRequest {
            subscription_id: String::new(),
            page_size: 2,
            page_token: foreign,
        })
        .await
        .expect_err("another listing's token");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let bad = ana
        .accounts
        .list_api_tokens(ListApiTokensRequest {
            page_size: 2,
            page_token: "%%%".into(),
        })
        .await
        .expect_err("a made-up token");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    for o in &orders {
        delete(&mut ana, &o.instance_id).await?;
    }
    Ok(())
}

async fn first_subscription_token(c: &mut Clients) -> anyhow::Result<String> {
    let page = c
        .subscriptions
        .list_subscriptions(ListSubscriptionsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    anyhow::ensure!(!page.next_page_token.is_empty(), "{page:?}");
    Ok(page.next_page_token)
}

async fn a_watch_on_one_replica_sees_a_change_made_through_another(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut app = TestApp::builder().backend(backend).start().await?;
    let other = app.replica().await?;
    let ana = app.customer("ana").await?;
    let mut on_a = ana.clients.clone();
    let mut on_b = app.clients_at(other, &ana.token)?;
    let o = order(&mut on_a, "n8n", "trial").await?;
    watch_until(
        &mut on_a.instances,
        &o.instance_id,
        InstanceStatus::Ready,
        READY_TIMEOUT,
    )
    .await?;
    let db = kapal_control_plane::operators::connect(&app.db).await?;
    let mut stream = on_a
        .instances
        .watch_instance(WatchInstanceRequest {
            instance_id: o.instance_id.clone(),
        })
        .await?
        .into_inner();
    let first = stream.message().await?.context("the first event")?;
    let first = first.instance.context("instance")?;
    assert_eq!(first.desired_state, DesiredState::Running as i32);

    // The change poller of replica A reads back what A itself wrote (Ready, just now) within a
    // poll interval (1 s) and wakes the stream once for it; that finds nothing new. Let it pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // No stream reads the database on its own any more: a row changed behind Kapal's back
    // (without moving updated_at, as no Kapal writer does) is not noticed by the stream while
    // nothing changes. Before, each stream read its instance every 3 s and sent it.
    {
        let mut conn = db.get().await?;
        let sql = format!(
            "UPDATE instances SET data_deleted_after = created_at WHERE id = '{}'",
            o.instance_id
        );
        kapal::db!(&mut conn, |c| c.batch_execute(&sql).await)?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Stopped through replica B: the stream on A hears it, and that is its next event.
    on_b.instances
        .stop_instance(InstanceActionRequest {
            instance_id: o.instance_id.clone(),
        })
        .await?;
    let next = tokio::time::timeout(EFFECT_TIMEOUT, stream.message())
        .await
        .context("the change made through the other replica never reached the stream")??
        .context("the stream ended")?;
    let next = next.instance.context("instance")?;
    assert_eq!(
        next.desired_state,
        DesiredState::Stopped as i32,
        "the first event after the stream opened is the stop made through the other replica: {next:?}"
    );

    // The per-account stream limit still holds on each replica.
    let mut streams = Vec::new();
    let limit = 20;
    for _ in 0..limit - 1 {
        let mut s = on_a
            .instances
            .watch_instance(WatchInstanceRequest {
                instance_id: o.instance_id.clone(),
            })
            .await?
            .into_inner();
        s.message().await?.context("the first event")?;
        streams.push(s);
    }
    let refused = on_a
        .instances
        .watch_instance(WatchInstanceRequest {
            instance_id: o.instance_id.clone(),
        })
        .await
        .expect_err("one stream too many");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    drop(streams);
    drop(stream);
    delete(&mut on_a, &o.instance_id).await?;
    Ok(())
}

async fn an_upgrade_past_the_capacity_ceiling_is_refused_and_changes_nothing(
    backend: Backend,
) -> anyhow::Result<()> {
    // The repository's catalog with one more n8n plan, far bigger than the cluster: whatever
    // else runs on the shared cluster, it never fits under the ceiling; Pro fits (other tests
    // order it under the same ceiling).
    let catalog = tempfile::tempdir()?;
    let n8n = std::fs::read_to_string(kapal::catalog::repo_catalog_dir().join("n8n.yaml"))?;
    let pro_line = n8n
        .lines()
        .find(|l| l.contains("{id: pro,"))
        .context("n8n has a pro plan")?;
    let giant = pro_line
        .replace("id: pro, name: Pro", "id: giant, name: Giant")
        .replace("cpu_millis: 500", "cpu_millis: 4000000");
    anyhow::ensure!(giant.contains("cpu_millis: 4000000"), "{giant}");
    let n8n = n8n.replace(pro_line, &format!("{pro_line}\n{giant}"));
    std::fs::write(catalog.path().join("n8n.yaml"), n8n)?;
    let app = TestApp::builder()
        .backend(backend)
        .with_catalog_dir(catalog.path())
        .start()
        .await?;
    let mut c = app.customer("eko").await?.clients;
    let o = order(&mut c, "n8n", "starter").await?;
    let before = c
        .subscriptions
        .get_subscription(GetSubscriptionRequest {
            subscription_id: o.subscription_id.clone(),
        })
        .await?
        .into_inner();

    let refused = c
        .subscriptions
        .change_plan(ChangePlanRequest {
            subscription_id: o.subscription_id.clone(),
            plan_id: "giant".into(),
        })
        .await
        .expect_err("the giant plan does not fit the cluster");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    for words in ["capacity", "giant", "starter", "Nothing was changed"] {
        assert!(refused.message().contains(words), "{words}: {refused:?}");
    }
    let after = c
        .subscriptions
        .get_subscription(GetSubscriptionRequest {
            subscription_id: o.subscription_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(after, before, "nothing changed");
    assert_eq!(after.next_plan_id, "");

    // An upgrade that fits is accepted for the renewal, and a downgrade back needs no room.
    let pro = c
        .subscriptions
        .change_plan(ChangePlanRequest {
            subscription_id: o.subscription_id.clone(),
            plan_id: "pro".into(),
        })
        .await?
        .into_inner();
    assert_eq!(pro.next_plan_id, "pro");
    delete(&mut c, &o.instance_id).await?;
    Ok(())
}
