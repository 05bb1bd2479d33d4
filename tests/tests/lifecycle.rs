//! Billing drives instances, end to end: the real gateway, control-plane, billing (on a manual
//! clock, its scheduler running) and provisioner against the local Kubernetes control plane, on
//! SQLite and on PostgreSQL. A failed renewal suspends the instance after the grace period (scaled
//! to zero in Kubernetes, data kept, the customer cannot start it), paying brings it back; an
//! ended trial is suspended, then removed with its data. And the operators' view of all of it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kapal::clock::ManualClock;
use kapal::proto::v1::*;
use kapal::testing::Backend;
use kapal_billing::DummyProvider;
use kapal_tests::app::{Clients, TestApp, watch_until};
use kube::api::{Api, ListParams};
use tonic::Code;

const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long billing's effects may take to show: the scheduler runs every 200 ms, delivery to
/// the control-plane and the provisioner's convergence follow.
const EFFECT_TIMEOUT: Duration = Duration::from_secs(60);

kapal::on_both_backends!(
    worker_threads = 4;
    unpaid_renewal_suspends_and_payment_resumes,
    ended_trial_is_suspended_then_removed,
    operators_see_everything,
    a_downgrade_lowers_the_deployment_at_renewal,
);

fn checkout(app: &str, plan: &str) -> CheckoutRequest {
    CheckoutRequest {
        app_id: app.into(),
        plan_id: plan.into(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    }
}

fn days(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

async fn kube() -> anyhow::Result<kube::Client> {
    Ok(kapal_tests::cluster::cluster().await?.client())
}

/// Orders `app` on `plan` and waits until the instance is ready; returns (instance, subscription).
async fn order_ready(c: &mut Clients, app: &str, plan: &str) -> anyhow::Result<(String, String)> {
    let order = c.orders.checkout(checkout(app, plan)).await?.into_inner();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let order = loop {
        let o = c
            .orders
            .get_order(GetOrderRequest {
                order_id: order.id.clone(),
            })
            .await?
            .into_inner();
        if !o.instance_id.is_empty() && !o.subscription_id.is_empty() {
            break o;
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
    };
    watch_until(
        &mut c.instances,
        &order.instance_id,
        InstanceStatus::Ready,
        READY_TIMEOUT,
    )
    .await?;
    Ok((order.instance_id, order.subscription_id))
}

async fn instance(c: &mut Clients, id: &str) -> anyhow::Result<Instance> {
    Ok(c.instances
        .get_instance(GetInstanceRequest {
            instance_id: id.into(),
        })
        .await?
        .into_inner())
}

async fn subscription(c: &mut Clients, id: &str) -> anyhow::Result<Subscription> {
    Ok(c.subscriptions
        .get_subscription(GetSubscriptionRequest {
            subscription_id: id.into(),
        })
        .await?
        .into_inner())
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_subscription_status(
    c: &Clients,
    id: &str,
    want: SubscriptionStatus,
) -> anyhow::Result<Subscription> {
    eventually(&format!("subscription {want:?}"), EFFECT_TIMEOUT, || {
        let mut c = c.clone();
        async move {
            let s = subscription(&mut c, id).await?;
            Ok((s.status == want as i32).then_some(s))
        }
    })
    .await
}

/// Waits until the instance is scaled to zero because of billing (SUSPENDED, flagged).
async fn wait_billing_suspended(c: &Clients, id: &str) -> anyhow::Result<Instance> {
    eventually("instance suspended by billing", EFFECT_TIMEOUT, || {
        let mut c = c.clone();
        async move {
            let i = instance(&mut c, id).await?;
            Ok(
                (i.suspended_by_billing && i.status == InstanceStatus::Suspended as i32)
                    .then_some(i),
            )
        }
    })
    .await
}

/// The namespace of an instance, through the operators' API.
async fn namespace_of(admin: &mut Clients, id: &str) -> anyhow::Result<String> {
    Ok(admin
        .admin
        .get_instance_as_admin(GetInstanceAsAdminRequest {
            instance_id: id.into(),
            include_credentials: false,
            reason: String::new(),
        })
        .await?
        .into_inner()
        .namespace)
}

/// Total desired replicas of the instance's Deployments and StatefulSets.
async fn replicas(ns: &str) -> anyhow::Result<i32> {
    let client = kube().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let statefulsets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client, ns);
    let mut total = 0;
    for d in deployments.list(&ListParams::default()).await? {
        total += d.spec.and_then(|s| s.replicas).unwrap_or(1);
    }
    for s in statefulsets.list(&ListParams::default()).await? {
        total += s.spec.and_then(|s| s.replicas).unwrap_or(1);
    }
    Ok(total)
}

async fn unpaid_renewal_suspends_and_payment_resumes(backend: Backend) -> anyhow::Result<()> {
    let clock = ManualClock::new(Utc::now());
    let payments = Arc::new(DummyProvider::new());
    let app = TestApp::builder()
        .backend(backend)
        .with_billing_clock(clock.clone(), Duration::from_millis(200))
        .with_payments(payments.clone())
        .start()
        .await?;
    let mut c = app.customer("sari").await?.clients;
    let mut ops = app.admin().await?.clients;

    // A paid plan: Rp 79.000 charged through the dummy provider.
    let (instance_id, sub_id) = order_ready(&mut c, "n8n", "starter").await?;
    let sub = subscription(&mut c, &sub_id).await?;
    assert_eq!(sub.status, SubscriptionStatus::Active as i32);
    assert_eq!(sub.instance_id, instance_id);
    let ns = namespace_of(&mut ops, &instance_id).await?;
    assert_eq!(replicas(&ns).await?, 1);

    // The renewal a month later fails: PAST_DUE, and the instance keeps running through grace.
    payments.set_fail(true);
    let period_end = sub
        .current_period_end
        .as_ref()
        .context("period end")?
        .seconds;
    let to_end = period_end - clock_now_secs(&clock);
    clock.advance(chrono::Duration::seconds(to_end) + chrono::Duration::hours(1));
    wait_subscription_status(&c, &sub_id, SubscriptionStatus::PastDue).await?;
    let i = instance(&mut c, &instance_id).await?;
    assert!(!i.suspended_by_billing, "running through grace: {i:?}");
    assert_eq!(replicas(&ns).await?, 1);

    // Grace over: SUSPENDED; the instance is scaled to zero in Kubernetes, its data kept.
    clock.advance(days(3));
    wait_subscription_status(&c, &sub_id, SubscriptionStatus::Suspended).await?;
    let suspended = wait_billing_suspended(&c, &instance_id).await?;
    assert!(
        suspended
            .status_reason
            .to_lowercase()
            .contains("subscription"),
        "reason says why: {:?}",
        suspended.status_reason
    );
    eventually("scaled to zero", EFFECT_TIMEOUT, || {
        let ns = ns.clone();
        async move { Ok((replicas(&ns).await? == 0).then_some(())) }
    })
    .await?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(kube().await?, &ns);
    assert!(
        !pvcs.list(&ListParams::default()).await?.items.is_empty(),
        "data kept while suspended"
    );

    // The customer cannot start it while the subscription is unpaid, and is told why.
    let refused = c
        .instances
        .start_instance(InstanceActionRequest {
            instance_id: instance_id.clone(),
        })
        .await
        .expect_err("start refused while suspended");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(&sub_id),
        "names the subscription: {}",
        refused.message()
    );

    // The card works again: the next retry pays, ACTIVE, and the instance comes back by itself.
    payments.set_fail(false);
    clock.advance(days(1));
    wait_subscription_status(&c, &sub_id, SubscriptionStatus::Active).await?;
    watch_until(
        &mut c.instances,
        &instance_id,
        InstanceStatus::Ready,
        READY_TIMEOUT,
    )
    .await?;
    let i = instance(&mut c, &instance_id).await?;
    assert!(!i.suspended_by_billing, "{i:?}");
    assert_eq!(replicas(&ns).await?, 1);

    // Exactly one invoice per period, both paid; every step is in the subscription's history.
    let invoices = c
        .subscriptions
        .list_invoices(ListInvoicesRequest {
            subscription_id: sub_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .invoices;
    assert_eq!(invoices.len(), 2, "{invoices:?}");
    assert!(
        invoices
            .iter()
            .all(|i| i.status == InvoiceStatus::Paid as i32),
        "{invoices:?}"
    );
    let events = c
        .subscriptions
        .list_subscription_events(ListSubscriptionEventsRequest {
            subscription_id: sub_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    let path: Vec<i32> = events.iter().map(|e| e.to_status).collect();
    for want in [
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Suspended,
        SubscriptionStatus::Active,
    ] {
        assert!(path.contains(&(want as i32)), "{want:?} in {events:?}");
    }

    // Operators see the same money: MRR of one starter plan, two invoices collected.
    let report = ops
        .billing_admin
        .get_revenue_report(GetRevenueReportRequest::default())
        .await?
        .into_inner();
    assert_eq!(report.mrr.as_ref().map(|m| m.amount), Some(79_000));
    let collected: i64 = invoices
        .iter()
        .filter_map(|i| i.amount.as_ref().map(|m| m.amount))
        .sum();
    assert_eq!(
        report.collected_total.as_ref().map(|m| m.amount),
        Some(collected),
        "{report:?}"
    );
    Ok(())
}

fn clock_now_secs(clock: &ManualClock) -> i64 {
    use kapal::clock::Clock as _;
    clock.now().timestamp()
}

async fn ended_trial_is_suspended_then_removed(backend: Backend) -> anyhow::Result<()> {
    let clock = ManualClock::new(Utc::now());
    let app = TestApp::builder()
        .backend(backend)
        .with_billing_clock(clock.clone(), Duration::from_millis(200))
        .start()
        .await?;
    let mut c = app.customer("budi").await?.clients;
    let mut ops = app.admin().await?.clients;
    let (instance_id, sub_id) = order_ready(&mut c, "n8n", "trial").await?;
    let ns = namespace_of(&mut ops, &instance_id).await?;

    // The trial ends without a paid plan: EXPIRED, the instance scaled to zero, data kept.
    clock.advance(days(14) + chrono::Duration::hours(1));
    wait_subscription_status(&c, &sub_id, SubscriptionStatus::Expired).await?;
    wait_billing_suspended(&c, &instance_id).await?;
    assert_eq!(replicas(&ns).await?, 0);

    // After billing's retention it is cleaned up: the instance is deleted with its data.
    clock.advance(days(8));
    watch_until(
        &mut c.instances,
        &instance_id,
        InstanceStatus::Deleted,
        EFFECT_TIMEOUT,
    )
    .await?;
    let namespaces: Api<Namespace> = Api::all(kube().await?);
    eventually("namespace removed", EFFECT_TIMEOUT, || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move {
            Ok(match namespaces.get_opt(&ns).await? {
                None => Some(()),
                // Terminating is as good as gone: the namespace controller finishes it.
                Some(n) if n.metadata.deletion_timestamp.is_some() => Some(()),
                Some(_) => None,
            })
        }
    })
    .await?;
    Ok(())
}

async fn operators_see_everything(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::builder().backend(backend).start().await?;
    let mut a = app.customer("citra").await?.clients;
    let mut b = app.customer("dewi").await?.clients;
    let mut ops = app.admin().await?.clients;
    let (instance_id, _) = order_ready(&mut a, "n8n", "trial").await?;

    // Customers get PERMISSION_DENIED on every operator call.
    assert_eq!(
        a.admin
            .list_all_instances(ListAllInstancesRequest::default())
            .await
            .expect_err("customer")
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        a.admin
            .get_capacity(GetCapacityRequest {})
            .await
            .expect_err("customer")
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        a.billing_admin
            .get_revenue_report(GetRevenueReportRequest::default())
            .await
            .expect_err("customer")
            .code(),
        Code::PermissionDenied
    );

    // Every instance, with its owner.
    let all = ops
        .admin
        .list_all_instances(ListAllInstancesRequest::default())
        .await?
        .into_inner()
        .instances;
    let listed = all
        .iter()
        .find(|i| i.instance.as_ref().is_some_and(|i| i.id == instance_id))
        .context("operator sees A's instance")?;
    assert!(listed.email.starts_with("citra-"), "{listed:?}");
    assert!(
        listed
            .instance
            .as_ref()
            .is_some_and(|i| i.credentials.is_none()),
        "no credentials in listings"
    );

    // Credentials: only with a reason, and the read is audited.
    let no_reason = ops
        .admin
        .get_instance_as_admin(GetInstanceAsAdminRequest {
            instance_id: instance_id.clone(),
            include_credentials: true,
            reason: String::new(),
        })
        .await
        .expect_err("reason required");
    assert_eq!(no_reason.code(), Code::InvalidArgument, "{no_reason:?}");
    let read = ops
        .admin
        .get_instance_as_admin(GetInstanceAsAdminRequest {
            instance_id: instance_id.clone(),
            include_credentials: true,
            reason: "support ticket 4711".into(),
        })
        .await?
        .into_inner();
    let owner_view = instance(&mut a, &instance_id).await?;
    assert_eq!(
        read.instance.and_then(|i| i.credentials),
        owner_view.credentials,
        "operator reads the owner's credentials"
    );
    let audit = ops
        .admin
        .list_audit_events(ListAuditEventsRequest::default())
        .await?
        .into_inner()
        .events;
    assert!(
        audit.iter().any(|e| e.instance_id == instance_id
            && e.reason == "support ticket 4711"
            && e.action == "read_credentials"),
        "{audit:?}"
    );

    // Capacity of the real cluster: its nodes, and this instance committed against the ceiling.
    let capacity = ops
        .admin
        .get_capacity(GetCapacityRequest {})
        .await?
        .into_inner();
    assert!(capacity.nodes.len() >= 3, "{capacity:?}");
    let allocatable = capacity.allocatable.as_ref().context("allocatable")?;
    assert!(allocatable.cpu_millis >= 3 * 7_000, "{capacity:?}");
    let committed = capacity.committed.as_ref().context("committed")?;
    assert!(
        committed.cpu_millis >= 200,
        "the trial's 200m: {capacity:?}"
    );
    assert_eq!(capacity.ceiling_percent, 80);
    ops.admin.list_alerts(ListAlertsRequest {}).await?;

    // Usage, measured: the local cluster runs metrics-server over the usage kwok simulates; the
    // customer's answer follows what is simulated for the instance's pod. The volume's size is
    // real.
    let ns = namespace_of(&mut ops, &instance_id).await?;
    kapal_tests::cluster::simulate_usage(&kube().await?, &ns, "120m", "256Mi").await?;
    let usage = eventually(
        "usage to follow the simulated 120m / 256Mi",
        EFFECT_TIMEOUT,
        || {
            let mut instances = a.instances.clone();
            let instance_id = instance_id.clone();
            async move {
                let usage = instances
                    .get_instance_usage(GetInstanceUsageRequest { instance_id })
                    .await?
                    .into_inner();
                // CPU is a rate metrics-server works out between two scrapes
                let cpu_close = usage.cpu_millis.is_some_and(|c| (118..=122).contains(&c));
                Ok(
                    (usage.metrics_available && cpu_close && usage.memory_bytes == Some(256 << 20))
                        .then_some(usage),
                )
            }
        },
    )
    .await?;
    assert_eq!(usage.cpu_limit_millis, 200);
    assert_eq!(usage.storage_capacity_bytes, 2 << 30, "{usage:?}");
    assert_eq!(
        b.instances
            .get_instance_usage(GetInstanceUsageRequest {
                instance_id: instance_id.clone(),
            })
            .await
            .expect_err("not B's")
            .code(),
        Code::NotFound
    );
    Ok(())
}

/// A checkout that would push the cluster over the ceiling is refused up front, with a message
/// that says so, and nothing is written; the customer is not left with a Pending pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkout_over_the_capacity_ceiling_is_refused() -> anyhow::Result<()> {
    let app = TestApp::builder().with_capacity_ceiling(1).start().await?;
    let mut c = app.customer("eko").await?.clients;
    let before = c.counts().await?;
    let refused = c
        .orders
        .checkout(checkout("n8n", "pro"))
        .await
        .expect_err("over the ceiling");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("capacity"),
        "{}",
        refused.message()
    );
    assert_eq!(c.counts().await?, before, "nothing written");
    Ok(())
}

/// The CPU and memory limits and requests of the instance's Deployment containers:
/// `[(limit cpu, limit memory, request cpu, request memory)]`.
async fn deployment_resources(ns: &str) -> anyhow::Result<Vec<[String; 4]>> {
    let deployments: Api<Deployment> = Api::namespaced(kube().await?, ns);
    let mut out = Vec::new();
    for d in deployments.list(&ListParams::default()).await? {
        let containers = d
            .spec
            .and_then(|s| s.template.spec)
            .map(|s| s.containers)
            .unwrap_or_default();
        for c in containers {
            let r = c.resources.unwrap_or_default();
            let (limits, requests) = (r.limits.unwrap_or_default(), r.requests.unwrap_or_default());
            let q =
                |m: &std::collections::BTreeMap<
                    String,
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity,
                >,
                 k: &str| { m.get(k).map(|q| q.0.clone()).unwrap_or_default() };
            out.push([
                q(&limits, "cpu"),
                q(&limits, "memory"),
                q(&requests, "cpu"),
                q(&requests, "memory"),
            ]);
        }
    }
    Ok(out)
}

/// A downgrade chosen with ChangePlan takes effect at renewal: billing charges the new plan and
/// sends it with the entitlement, the control-plane records it, and the provisioner re-renders
/// the Deployment with the smaller plan's CPU and memory. The catalog is the repository's with
/// n8n's Pro volume as small as Starter's (the shipped Pro volume is larger, and volumes cannot
/// shrink: that downgrade is refused at ChangePlan, see billing's tests).
async fn a_downgrade_lowers_the_deployment_at_renewal(backend: Backend) -> anyhow::Result<()> {
    let catalog = tempfile::tempdir()?;
    let n8n = std::fs::read_to_string(kapal::catalog::repo_catalog_dir().join("n8n.yaml"))?;
    let pro_line = n8n
        .lines()
        .find(|l| l.contains("{id: pro,"))
        .context("n8n has a pro plan")?;
    let n8n = n8n.replace(
        pro_line,
        &pro_line.replace("storage_gib: 10}", "storage_gib: 5}"),
    );
    anyhow::ensure!(
        n8n.contains("cpu_millis: 500, memory_mib: 1024, storage_gib: 5}"),
        "{n8n}"
    );
    std::fs::write(catalog.path().join("n8n.yaml"), n8n)?;

    let clock = ManualClock::new(Utc::now());
    let app = TestApp::builder()
        .backend(backend)
        .with_catalog_dir(catalog.path())
        .with_billing_clock(clock.clone(), Duration::from_millis(200))
        .with_payments(Arc::new(DummyProvider::new()))
        .start()
        .await?;
    let mut c = app.customer("dewi").await?.clients;
    let mut ops = app.admin().await?.clients;

    let (instance_id, sub_id) = order_ready(&mut c, "n8n", "pro").await?;
    let ns = namespace_of(&mut ops, &instance_id).await?;
    let pro = ["500m", "1Gi", "500m", "1Gi"].map(String::from);
    let starter = ["200m", "400Mi", "200m", "400Mi"].map(String::from);
    assert_eq!(deployment_resources(&ns).await?, vec![pro.clone()]);

    // The downgrade is accepted for the next renewal; until then nothing changes.
    let changed = c
        .subscriptions
        .change_plan(ChangePlanRequest {
            subscription_id: sub_id.clone(),
            plan_id: "starter".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (changed.plan_id.as_str(), changed.next_plan_id.as_str()),
        ("pro", "starter")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(deployment_resources(&ns).await?, vec![pro]);
    assert_eq!(instance(&mut c, &instance_id).await?.plan_id, "pro");

    // Renewal: Starter is charged, and the Deployment gets Starter's resources.
    let period_end = changed
        .current_period_end
        .as_ref()
        .context("period end")?
        .seconds;
    let to_end = period_end - clock_now_secs(&clock);
    clock.advance(chrono::Duration::seconds(to_end) + chrono::Duration::hours(1));
    let renewed = eventually("renewed on starter", EFFECT_TIMEOUT, || {
        let mut c = c.clone();
        let id = sub_id.clone();
        async move {
            let s = subscription(&mut c, &id).await?;
            Ok((s.plan_id == "starter").then_some(s))
        }
    })
    .await?;
    assert_eq!(renewed.status, SubscriptionStatus::Active as i32);
    assert_eq!(renewed.next_plan_id, "");
    eventually(
        "the Deployment has starter's resources",
        EFFECT_TIMEOUT,
        || {
            let ns = ns.clone();
            let starter = starter.clone();
            async move { Ok((deployment_resources(&ns).await? == vec![starter]).then_some(())) }
        },
    )
    .await?;
    let i = instance(&mut c, &instance_id).await?;
    assert_eq!(i.plan_id, "starter");
    assert!(!i.suspended_by_billing, "{i:?}");
    watch_until(
        &mut c.instances,
        &instance_id,
        InstanceStatus::Ready,
        READY_TIMEOUT,
    )
    .await?;
    Ok(())
}
