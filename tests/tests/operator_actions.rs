//! Operators acting on customers' instances and reading their diagnostics (issue 17), through
//! the real gateway and services on the local cluster.
//!
//! Operator actions, on SQLite and PostgreSQL: a customer (the owner too) calling
//! OperatorService is PERMISSION_DENIED and changes nothing; an operator without a reason is
//! INVALID_ARGUMENT; an operator stops, starts and restarts another customer's instance, the
//! customer sees each effect (status, desired state) and each action in the instance's history
//! with the operator's reason, and the audit log holds who, what, whose and why.
//!
//! Account suspension, on both: customers cannot; an operator's account cannot be suspended;
//! the suspended account's instance stops, its calls are refused with PERMISSION_DENIED saying
//! why (once the gateway's identity cache has seen it), its subscription keeps its state;
//! lifted, its calls work again and the instance runs again; both in history and audit log.
//!
//! Diagnostics: an instance whose pod cannot be scheduled (its plan asks for more CPU than any
//! node has, though the cluster as a whole has room, so the checkout is accepted): the answer
//! carries the scheduler's FailedScheduling event and the pod's PodScheduled=False
//! Unschedulable condition with the scheduler's message, the pod Pending with no node, its
//! volume claim and the instance's history; the owner gets the same without node names, an
//! operator with them, another customer NOT_FOUND.

use std::time::Duration;

use anyhow::Context as _;
use kapal::catalog::Catalog;
use kapal::proto::v1::{
    CheckoutRequest, DesiredState, GetInstanceDiagnosticsRequest, GetInstanceRequest,
    InstanceActionRequest, InstanceDiagnostics, InstanceStatus, ListAuditEventsRequest,
    ListInstanceEventsRequest, OperatorInstanceActionRequest, SuspendAccountRequest,
    UnsuspendAccountRequest,
};
use kapal::testing::Backend;
use kapal_tests::app::{Customer, TestApp, watch_until};
use tonic::Code;

const READY_TIMEOUT: Duration = Duration::from_secs(120);

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

fn action(id: &str, reason: &str) -> OperatorInstanceActionRequest {
    OperatorInstanceActionRequest {
        instance_id: id.into(),
        reason: reason.into(),
        override_capacity: false,
    }
}

async fn order(c: &mut Customer, app: &str, plan: &str) -> anyhow::Result<String> {
    let order = c
        .clients
        .orders
        .checkout(CheckoutRequest {
            app_id: app.into(),
            plan_id: plan.into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        })
        .await?
        .into_inner();
    Ok(order.instance_id)
}

/// The operators' entries of the instance's history, as its owner reads them.
async fn operator_history(c: &mut Customer, id: &str) -> anyhow::Result<Vec<String>> {
    Ok(c.clients
        .instances
        .list_instance_events(ListInstanceEventsRequest {
            instance_id: id.into(),
        })
        .await?
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.actor == "operator")
        .map(|e| e.reason)
        .collect())
}

async fn operators_act_on_any_instance_with_a_reason(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::builder().backend(backend).start().await?;
    let mut admin = app.admin().await?;
    let mut owner = app.customer("owner").await?;
    let mut other = app.customer("other").await?;
    let id = order(&mut owner, "n8n", "trial").await?;
    watch_until(
        &mut owner.clients.instances,
        &id,
        InstanceStatus::Ready,
        READY_TIMEOUT,
    )
    .await?;

    // Customers, the owner included, cannot use the operators' service.
    for c in [&mut owner, &mut other] {
        let op = &mut c.clients.operator;
        let reason = "I would like it stopped";
        assert_eq!(
            code(op.stop_instance_as_operator(action(&id, reason)).await),
            Code::PermissionDenied
        );
        assert_eq!(
            code(op.restart_instance_as_operator(action(&id, reason)).await),
            Code::PermissionDenied
        );
        assert_eq!(
            code(op.start_instance_as_operator(action(&id, reason)).await),
            Code::PermissionDenied
        );
        assert_eq!(
            code(
                op.get_instance_diagnostics_as_operator(GetInstanceDiagnosticsRequest {
                    instance_id: id.clone(),
                    log_lines: 0,
                    reason: reason.into(),
                })
                .await
            ),
            Code::PermissionDenied
        );
    }
    // An operator must say why; an unknown instance is NOT_FOUND.
    let op = &mut admin.clients.operator;
    let s = op
        .stop_instance_as_operator(action(&id, " "))
        .await
        .expect_err("no reason");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("reason"), "{s:?}");
    assert_eq!(
        code(
            op.stop_instance_as_operator(action(&uuid::Uuid::new_v4().to_string(), "T-1 check"))
                .await
        ),
        Code::NotFound
    );
    let get = GetInstanceRequest {
        instance_id: id.clone(),
    };
    let now = owner
        .clients
        .instances
        .get_instance(get.clone())
        .await?
        .into_inner();
    assert_eq!(now.desired_state, DesiredState::Running as i32);
    assert!(operator_history(&mut owner, &id).await?.is_empty());

    // Stop: the customer sees it stopped, and why.
    let stop_reason = "T-17: stopped while its volume is checked";
    let stopped = op
        .stop_instance_as_operator(action(&id, stop_reason))
        .await?
        .into_inner();
    assert_eq!(stopped.desired_state, DesiredState::Stopped as i32);
    watch_until(
        &mut owner.clients.instances,
        &id,
        InstanceStatus::Suspended,
        READY_TIMEOUT,
    )
    .await?;
    let seen = owner
        .clients
        .instances
        .get_instance(get.clone())
        .await?
        .into_inner();
    assert_eq!(seen.desired_state, DesiredState::Stopped as i32);
    assert!(!seen.suspended_by_billing, "{seen:?}");
    assert_eq!(
        operator_history(&mut owner, &id).await?,
        vec![format!("Stopped by Kapal support: {stop_reason}")]
    );

    // Start: running again for the customer.
    let start_reason = "T-17: volume checked, started again";
    let started = op
        .start_instance_as_operator(action(&id, start_reason))
        .await?
        .into_inner();
    assert_eq!(started.desired_state, DesiredState::Running as i32);
    watch_until(
        &mut owner.clients.instances,
        &id,
        InstanceStatus::Ready,
        READY_TIMEOUT,
    )
    .await?;

    // Restart: the restart is rolled out (a new generation) and shows in the history.
    let restart_reason = "T-18: restart to pick up the new certificate";
    op.restart_instance_as_operator(action(&id, restart_reason))
        .await?;
    let history = operator_history(&mut owner, &id).await?;
    assert_eq!(
        history,
        vec![
            format!("Stopped by Kapal support: {stop_reason}"),
            format!("Started by Kapal support: {start_reason}"),
            format!("Restarted by Kapal support: {restart_reason}"),
        ]
    );
    // The customer's own actions still work on it.
    owner
        .clients
        .instances
        .restart_instance(InstanceActionRequest {
            instance_id: id.clone(),
        })
        .await?;

    // Another customer sees neither the instance nor its history.
    assert_eq!(
        code(
            other
                .clients
                .instances
                .list_instance_events(ListInstanceEventsRequest {
                    instance_id: id.clone()
                })
                .await
        ),
        Code::NotFound
    );

    // The audit log: who, what, whose, why, for each action (newest first).
    let audit = admin
        .clients
        .admin
        .list_audit_events(ListAuditEventsRequest::default())
        .await?
        .into_inner()
        .events;
    let ours: Vec<_> = audit
        .iter()
        .filter(|e| e.instance_id == id)
        .map(|e| {
            (
                e.action.as_str(),
                e.reason.as_str(),
                e.actor_email.as_str(),
                e.actor_account_id.as_str(),
                e.instance_account_id.as_str(),
            )
        })
        .collect();
    let who = (admin.email.as_str(), admin.account.id.as_str());
    let whose = owner.account.id.as_str();
    assert_eq!(
        ours,
        vec![
            ("restart_instance", restart_reason, who.0, who.1, whose),
            ("start_instance", start_reason, who.0, who.1, whose),
            ("stop_instance", stop_reason, who.0, who.1, whose),
        ],
        "{audit:?}"
    );
    Ok(())
}

/// A catalog with one more app whose single pod asks for more CPU than any node of the local
/// cluster has (7500m allocatable each) while the cluster as a whole has room for it.
fn catalog_with_an_unschedulable_app() -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::load(&kapal::catalog::repo_catalog_dir())?;
    catalog.add_yaml(
        std::path::Path::new("wide.yaml"),
        r#"
id: wide
name: Wide
description: Needs more CPU than any one node has.
version: "1"
plans: [{id: trial, name: Free trial, monthly_price_idr: 0, trial_days: 14, cpu_millis: 7600, memory_mib: 256, storage_gib: 1}]
components:
  - name: app
    kind: Deployment
    image: "nginx:1.27.5"
    port: 80
    public: true
    resource_share: 100
    volume: {mount_path: /usr/share/nginx/html, storage_share: 100}
credentials: {username: admin}
"#,
    )?;
    Ok(catalog)
}

/// Reads the diagnostics until `ready` accepts them (events reach the API a little after the
/// pod is made).
async fn diagnostics_until(
    mut read: impl AsyncFnMut() -> anyhow::Result<InstanceDiagnostics>,
    ready: impl Fn(&InstanceDiagnostics) -> bool,
) -> anyhow::Result<InstanceDiagnostics> {
    let started = std::time::Instant::now();
    loop {
        let d = read().await?;
        if ready(&d) {
            return Ok(d);
        }
        if started.elapsed() > READY_TIMEOUT {
            anyhow::bail!("diagnostics never showed what was expected; last: {d:#?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn unschedulable_is_explained(d: &InstanceDiagnostics) -> bool {
    let event = d.events.iter().any(|e| {
        e.reason == "FailedScheduling"
            && e.r#type == "Warning"
            && e.message.contains("Insufficient cpu")
            && e.object.starts_with("Pod/")
    });
    let pod = d.pods.iter().any(|p| {
        p.phase == "Pending"
            && p.conditions.iter().any(|c| {
                c.r#type == "PodScheduled"
                    && c.status == "False"
                    && c.reason == "Unschedulable"
                    && c.message.contains("Insufficient cpu")
            })
    });
    event && pod
}

async fn diagnostics_explain_an_unschedulable_instance(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::builder()
        .backend(backend)
        .with_catalog(catalog_with_an_unschedulable_app()?)
        .with_capacity_ceiling(100)
        .start()
        .await?;
    let mut admin = app.admin().await?;
    let mut owner = app.customer("owner").await?;
    let mut other = app.customer("other").await?;
    let id = order(&mut owner, "wide", "trial").await?;
    let result = async {
        let request = |reason: &str| GetInstanceDiagnosticsRequest {
            instance_id: id.clone(),
            log_lines: 20,
            reason: reason.into(),
        };
        // The owner: the scheduler's event and the pod's condition, no node names.
        let mine = owner.clients.instances.clone();
        let d = diagnostics_until(
            async || {
                Ok(mine
                    .clone()
                    .get_instance_diagnostics(request(""))
                    .await?
                    .into_inner())
            },
            |d| unschedulable_is_explained(d) && !d.history.is_empty(),
        )
        .await?;
        assert_eq!(d.instance_id, id);
        assert!(!d.namespace.is_empty());
        assert!(d.pods.iter().all(|p| p.node.is_empty()), "{d:#?}");
        let pod = &d.pods[0];
        let c = pod
            .containers
            .iter()
            .find(|c| !c.init)
            .context("app container")?;
        assert_eq!(c.image, "nginx:1.27.5");
        assert!(c.log_tail.is_empty() && !c.log_note.is_empty(), "{c:?}");
        assert_eq!(d.volumes.len(), 1, "{d:#?}");
        assert!(!d.volumes[0].claim.is_empty() && !d.volumes[0].phase.is_empty());
        assert_eq!(d.volumes[0].requested_bytes, 1 << 30);
        assert!(!d.history.is_empty(), "{d:#?}");
        assert!(d.observed_at.is_some());

        // Another customer: NOT_FOUND. An operator: the same answer, with a reason, audited.
        let s = other
            .clients
            .instances
            .get_instance_diagnostics(request(""))
            .await
            .expect_err("not theirs");
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
        let s = admin
            .clients
            .operator
            .get_instance_diagnostics_as_operator(request(""))
            .await
            .expect_err("no reason");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        let reason = "T-19: why is it not starting";
        let d = admin
            .clients
            .operator
            .get_instance_diagnostics_as_operator(request(reason))
            .await?
            .into_inner();
        assert!(unschedulable_is_explained(&d), "{d:#?}");
        let audit = admin
            .clients
            .admin
            .list_audit_events(ListAuditEventsRequest::default())
            .await?
            .into_inner()
            .events;
        assert!(
            audit.iter().any(|e| e.action == "read_diagnostics"
                && e.instance_id == id
                && e.reason == reason),
            "{audit:?}"
        );
        anyhow::Ok(())
    }
    .await;
    // The pod's CPU is committed on the shared cluster: delete it at once, whatever happened.
    owner
        .clients
        .instances
        .delete_instance(InstanceActionRequest {
            instance_id: id.clone(),
        })
        .await?;
    result
}

/// The gateway's identity cache (10 s) plus room for a slow machine: how long a suspension or
/// its lifting may take to reach a session in use.
const IDENTITY_CHANGE_LIMIT: Duration = Duration::from_secs(30);

async fn operators_suspend_and_unsuspend_an_account(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::builder().backend(backend).start().await?;
    let mut admin = app.admin().await?;
    let mut owner = app.customer("owner").await?;
    let mut other = app.customer("other").await?;
    let id = order(&mut owner, "n8n", "trial").await?;
    watch_until(
        &mut owner.clients.instances,
        &id,
        InstanceStatus::Ready,
        READY_TIMEOUT,
    )
    .await?;
    let account_id = owner.account.id.clone();
    let suspend = |account_id: &str, reason: &str| SuspendAccountRequest {
        account_id: account_id.into(),
        reason: reason.into(),
    };
    let unsuspend = |account_id: &str, reason: &str| UnsuspendAccountRequest {
        account_id: account_id.into(),
        reason: reason.into(),
    };

    // Customers cannot; an operator needs a reason and cannot suspend an operator.
    for c in [&mut owner, &mut other] {
        assert_eq!(
            code(
                c.clients
                    .operator
                    .suspend_account(suspend(&account_id, "T-20: abuse"))
                    .await
            ),
            Code::PermissionDenied
        );
        assert_eq!(
            code(
                c.clients
                    .operator
                    .unsuspend_account(unsuspend(&account_id, "T-20: abuse"))
                    .await
            ),
            Code::PermissionDenied
        );
    }
    let op = &mut admin.clients.operator;
    assert_eq!(
        code(op.suspend_account(suspend(&account_id, "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            op.suspend_account(suspend(&admin.account.id, "T-20: abuse"))
                .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            op.unsuspend_account(unsuspend(&account_id, "T-20: not yet"))
                .await
        ),
        Code::FailedPrecondition
    );

    // Suspended: its instance stops, its calls are refused saying why.
    let reason = "T-20: phishing pages reported on the instance";
    let s = op
        .suspend_account(suspend(&account_id, reason))
        .await?
        .into_inner();
    assert!(s.suspended);
    assert_eq!(s.instance_ids, vec![id.clone()]);
    assert_eq!(
        code(op.suspend_account(suspend(&account_id, reason)).await),
        Code::FailedPrecondition
    );
    let started = std::time::Instant::now();
    let refused = loop {
        match owner
            .clients
            .instances
            .list_instances(kapal::proto::v1::ListInstancesRequest::default())
            .await
        {
            Err(s) => break s,
            Ok(_) => {
                assert!(
                    started.elapsed() < IDENTITY_CHANGE_LIMIT,
                    "the suspension did not reach the gateway"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("suspended") && refused.message().contains(reason),
        "{refused:?}"
    );
    let s = owner
        .clients
        .instances
        .start_instance(InstanceActionRequest {
            instance_id: id.clone(),
        })
        .await
        .expect_err("suspended");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let as_admin = |admin: &mut Customer| {
        let mut a = admin.clients.admin.clone();
        let id = id.clone();
        async move {
            anyhow::Ok(
                a.get_instance_as_admin(kapal::proto::v1::GetInstanceAsAdminRequest {
                    instance_id: id,
                    include_credentials: false,
                    reason: String::new(),
                })
                .await?
                .into_inner()
                .instance
                .context("instance")?,
            )
        }
    };
    let started = std::time::Instant::now();
    loop {
        let i = as_admin(&mut admin).await?;
        assert_eq!(i.desired_state, DesiredState::Stopped as i32);
        if i.status == InstanceStatus::Suspended as i32 {
            break;
        }
        assert!(started.elapsed() < READY_TIMEOUT, "not stopped: {i:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Its subscription keeps its state.
    let subs = admin
        .clients
        .billing_admin
        .list_all_subscriptions(kapal::proto::v1::ListAllSubscriptionsRequest {
            account_id: account_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .subscriptions;
    assert_eq!(subs.len(), 1);
    assert_eq!(
        subs[0].status,
        kapal::proto::v1::SubscriptionStatus::Trialing as i32,
        "{subs:?}"
    );

    // Lifted: calls accepted again, the instance runs again.
    let lifted_reason = "T-20: pages removed by the customer";
    let s = admin
        .clients
        .operator
        .unsuspend_account(unsuspend(&account_id, lifted_reason))
        .await?
        .into_inner();
    assert!(!s.suspended);
    assert_eq!(s.instance_ids, vec![id.clone()]);
    assert!(s.not_started.is_empty(), "{s:?}");
    let started = std::time::Instant::now();
    while let Err(s) = owner
        .clients
        .instances
        .list_instances(kapal::proto::v1::ListInstancesRequest::default())
        .await
    {
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        assert!(
            started.elapsed() < IDENTITY_CHANGE_LIMIT,
            "the lifting did not reach the gateway"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watch_until(
        &mut owner.clients.instances,
        &id,
        InstanceStatus::Ready,
        READY_TIMEOUT,
    )
    .await?;
    assert_eq!(
        operator_history(&mut owner, &id).await?,
        vec![
            format!("Stopped by Kapal support: account suspended: {reason}"),
            format!("Started by Kapal support: account suspension lifted: {lifted_reason}"),
        ]
    );
    let audit = admin
        .clients
        .admin
        .list_audit_events(ListAuditEventsRequest::default())
        .await?
        .into_inner()
        .events;
    let ours: Vec<_> = audit
        .iter()
        .filter(|e| e.instance_account_id == account_id && e.action.ends_with("account"))
        .map(|e| (e.action.as_str(), e.reason.as_str(), e.actor_email.as_str()))
        .collect();
    assert_eq!(
        ours,
        vec![
            ("unsuspend_account", lifted_reason, admin.email.as_str()),
            ("suspend_account", reason, admin.email.as_str()),
        ],
        "{audit:?}"
    );
    Ok(())
}

kapal::on_both_backends!(
    worker_threads = 4;
    operators_act_on_any_instance_with_a_reason,
    operators_suspend_and_unsuspend_an_account,
    diagnostics_carry_the_container_log,
    diagnostics_explain_an_unschedulable_instance,
    diagnostics_explain_an_image_that_cannot_be_pulled
);

/// The log lines kwok serves for every container on the local cluster's fake nodes
/// (deploy/local-cluster/kwok/container.log, through the API server's pods/log).
const KWOK_LOG_LINES: [&str; 2] = [
    "kapal local cluster: kwok serves this file as the log of every container of its fake nodes",
    "app listening on :8080",
];

fn log_is_shown(d: &InstanceDiagnostics) -> bool {
    d.pods.iter().any(|p| {
        p.containers.iter().any(|c| {
            !c.init
                && KWOK_LOG_LINES
                    .iter()
                    .all(|line| c.log_tail.iter().any(|l| l == line))
        })
    })
}

async fn diagnostics_carry_the_container_log(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::builder().backend(backend).start().await?;
    let mut owner = app.customer("owner").await?;
    let mut admin = app.admin().await?;
    let id = order(&mut owner, "n8n", "trial").await?;
    let result =
        async {
            watch_until(
                &mut owner.clients.instances,
                &id,
                InstanceStatus::Ready,
                READY_TIMEOUT,
            )
            .await?;
            let request = |reason: &str| GetInstanceDiagnosticsRequest {
                instance_id: id.clone(),
                log_lines: 20,
                reason: reason.into(),
            };
            // The owner reads the tail of the app container's log, as the cluster serves it.
            let mine = owner.clients.instances.clone();
            let d = diagnostics_until(
                async || {
                    Ok(mine
                        .clone()
                        .get_instance_diagnostics(request(""))
                        .await?
                        .into_inner())
                },
                log_is_shown,
            )
            .await?;
            let c = d
                .pods
                .iter()
                .flat_map(|p| &p.containers)
                .find(|c| !c.init && !c.log_tail.is_empty())
                .context("a container with a log")?;
            assert!(c.log_note.is_empty(), "{c:?}");
            // An operator too; asking for one line gets the last one only.
            let mut one = request("T-21: what does the app log");
            one.log_lines = 1;
            let d = admin
                .clients
                .operator
                .get_instance_diagnostics_as_operator(one)
                .await?
                .into_inner();
            let tails: Vec<&Vec<String>> = d
                .pods
                .iter()
                .flat_map(|p| &p.containers)
                .filter(|c| !c.init)
                .map(|c| &c.log_tail)
                .collect();
            assert!(
                tails.iter().any(|t| t.len() == 1
                    && t[0].starts_with("warning: this is a simulated container log")),
                "{tails:?}"
            );
            anyhow::Ok(())
        }
        .await;
    owner
        .clients
        .instances
        .delete_instance(InstanceActionRequest {
            instance_id: id.clone(),
        })
        .await?;
    result
}

/// An image no registry serves: `127.0.0.1:1` is the loopback of the real node's own network
/// namespace (made by scripts/real-nodes), where nothing listens, so the pull is refused at once
/// and no traffic leaves the node.
const UNPULLABLE_IMAGE: &str = "127.0.0.1:1/kapal/missing:1";

/// A catalog with one more app whose image cannot be pulled.
fn catalog_with_an_unpullable_app() -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::load(&kapal::catalog::repo_catalog_dir())?;
    catalog.add_yaml(
        std::path::Path::new("unpullable.yaml"),
        &format!(
            r#"
id: unpullable
name: Unpullable
description: Its image is in no registry.
version: "1"
plans: [{{id: trial, name: Free trial, monthly_price_idr: 0, trial_days: 14, cpu_millis: 100, memory_mib: 64, storage_gib: 1}}]
components:
  - name: app
    kind: Deployment
    image: "{UNPULLABLE_IMAGE}"
    port: 80
    public: true
    resource_share: 100
    volume: {{mount_path: /data, storage_share: 100}}
credentials: {{username: admin}}
"#
        ),
    )?;
    Ok(catalog)
}

fn unpullable_is_explained(d: &InstanceDiagnostics) -> bool {
    let event = d.events.iter().any(|e| {
        e.r#type == "Warning"
            && (e.reason == "Failed" || e.reason == "BackOff")
            && e.message.contains(UNPULLABLE_IMAGE)
    });
    let waiting = d.pods.iter().any(|p| {
        !p.node.is_empty()
            && p.containers.iter().any(|c| {
                !c.init
                    && c.image == UNPULLABLE_IMAGE
                    && c.state == "waiting"
                    && (c.state_reason == "ErrImagePull" || c.state_reason == "ImagePullBackOff")
            })
    });
    event && waiting
}

/// Diagnostics of an instance whose image cannot be pulled, on a real node of the local cluster
/// (kwok's nodes pull nothing): the kubelet's pull failure event naming the image, and the
/// container waiting in ErrImagePull / ImagePullBackOff on its node. Skipped, saying so, when no
/// real node runs.
async fn diagnostics_explain_an_image_that_cannot_be_pulled(
    backend: Backend,
) -> anyhow::Result<()> {
    let kube = kapal_tests::cluster::cluster().await?.client();
    if kapal_tests::cluster::ready_real_nodes(&kube)
        .await?
        .is_empty()
    {
        eprintln!(
            "SKIPPED diagnostics_explain_an_image_that_cannot_be_pulled ({backend:?}): no Ready real node; start them with `scripts/local-cluster up --real-nodes 2`"
        );
        return Ok(());
    }
    let app = TestApp::builder()
        .backend(backend)
        .with_catalog(catalog_with_an_unpullable_app()?)
        .on_real_nodes()
        .start()
        .await?;
    let mut admin = app.admin().await?;
    let mut owner = app.customer("owner").await?;
    let id = order(&mut owner, "unpullable", "trial").await?;
    let reason = "T-20: the app never starts";
    let d = diagnostics_until(
        async || {
            Ok(admin
                .clients
                .operator
                .get_instance_diagnostics_as_operator(GetInstanceDiagnosticsRequest {
                    instance_id: id.clone(),
                    log_lines: 20,
                    reason: reason.into(),
                })
                .await?
                .into_inner())
        },
        unpullable_is_explained,
    )
    .await?;
    let c = d
        .pods
        .iter()
        .flat_map(|p| &p.containers)
        .find(|c| !c.init && c.image == UNPULLABLE_IMAGE)
        .context("the app's container")?;
    assert!(
        c.state_message.contains(UNPULLABLE_IMAGE)
            || c.state_reason == "ErrImagePull"
            || c.state_reason == "ImagePullBackOff",
        "{c:?}"
    );
    assert!(!c.ready, "{c:?}");
    // The owner sees the same explanation (without node names).
    let mine = owner
        .clients
        .instances
        .get_instance_diagnostics(GetInstanceDiagnosticsRequest {
            instance_id: id.clone(),
            log_lines: 0,
            reason: String::new(),
        })
        .await?
        .into_inner();
    assert!(
        mine.events
            .iter()
            .any(|e| e.message.contains(UNPULLABLE_IMAGE)),
        "{mine:#?}"
    );
    assert!(mine.pods.iter().all(|p| p.node.is_empty()), "{mine:#?}");
    Ok(())
}
