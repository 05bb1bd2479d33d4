//! Billing's entitlements and the customer's instance lifecycle, over a real socket: the
//! control-plane from `run()` on SQLite and PostgreSQL, with a fake billing (subscriptions) and a
//! fake provisioner that records every spec it is handed and answers with the status the spec
//! asks for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kapal::auth::{InternalKey, Principal, Role};
use kapal::catalog::Catalog;
use kapal::clock::ManualClock;
use kapal::proto::internal::v1::billing_service_server::BillingServiceServer;
use kapal::proto::internal::v1::entitlement_service_client::EntitlementServiceClient;
use kapal::proto::internal::v1::instance_state_service_client::InstanceStateServiceClient;
use kapal::proto::internal::v1::provisioner_service_server::ProvisionerServiceServer;
use kapal::proto::internal::v1::{
    Entitlement, InstanceSpec, InstanceState, ListDesiredInstancesRequest, SetEntitlementRequest,
};
use kapal::proto::v1::account_service_client::AccountServiceClient;
use kapal::proto::v1::instance_service_client::InstanceServiceClient;
use kapal::proto::v1::order_service_client::OrderServiceClient;
use kapal::proto::v1::{
    CheckoutRequest, DesiredState, GetInstanceRequest, GetOrderRequest, Instance,
    InstanceActionRequest, InstanceStatus, ListInstancesRequest, Order, OrderStatus, SignUpRequest,
    WatchInstanceRequest,
};
use kapal::testing::Backend;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
/// A channel whose calls are signed as the principal each request names
/// ([`kapal::auth::SignWith`]), for the method called, as the gateway signs them.
type Channel = InterceptedService<tonic::transport::Channel, kapal::auth::SignRequested>;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

mod common;
use common::{BillingMode, FakeBilling, FakeProvisioner};

struct Stack {
    channel: Channel,
    billing: FakeBilling,
    key: InternalKey,
    clock: Arc<ManualClock>,
    specs: Arc<Mutex<Vec<InstanceSpec>>>,
    catalog: Arc<Catalog>,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A customer with one checked-out instance.
struct Customer {
    principal: Principal,
    instance_id: String,
    subscription_id: String,
}

fn signed<T>(key: &InternalKey, principal: &Principal, message: T) -> Request<T> {
    kapal::auth::SignWith::request(key, principal, message)
}

async fn start(backend: Backend) -> Stack {
    start_with(backend, |_| {}).await
}

async fn start_with(
    backend: Backend,
    configure: impl FnOnce(&mut kapal_control_plane::Config),
) -> Stack {
    kapal::serve::init_tracing_with_default(false, "warn");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = kapal::testing::db_config(backend, dir.path())
        .await
        .expect("test database");
    let catalog = Arc::new(Catalog::load(&kapal::catalog::repo_catalog_dir()).expect("catalog"));
    let key = InternalKey::random();
    let start = DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now");
    let clock = ManualClock::new(start);
    let (stop, stop_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let listener = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
    let (cp, billing, prov) = (listener().await, listener().await, listener().await);
    let url = |l: &TcpListener| format!("http://{}", l.local_addr().expect("addr"));
    let (cp_url, billing_url, prov_url) = (url(&cp), url(&billing), url(&prov));

    let provisioner = FakeProvisioner::new(&cp_url, &key, None);
    let specs = provisioner.specs.clone();
    let fake_provisioner =
        tonic::transport::Server::builder().add_service(ProvisionerServiceServer::new(provisioner));
    let billing_fake = FakeBilling::default();
    let fake_billing = tonic::transport::Server::builder()
        .add_service(BillingServiceServer::new(billing_fake.clone()));
    tokio::spawn(kapal::serve::serve(fake_provisioner, prov, shutdown()));
    tokio::spawn(kapal::serve::serve(fake_billing, billing, shutdown()));

    let mut config =
        kapal_control_plane::Config::new(db, catalog.clone(), key.clone(), billing_url, prov_url);
    config.clock = clock.clone();
    config.domain = "kapal.test".into();
    configure(&mut config);
    tokio::spawn(kapal_control_plane::run(config, cp, shutdown()));
    let channel = InterceptedService::new(
        tonic::transport::Channel::from_shared(cp_url)
            .expect("url")
            .connect_lazy(),
        kapal::auth::SignRequested,
    );
    Stack {
        channel,
        billing: billing_fake,
        key,
        clock,
        specs,
        catalog,
        stop,
        _dir: dir,
    }
}

impl Stack {
    fn service(&self) -> Principal {
        Principal::service()
    }

    async fn customer(&self) -> Customer {
        let email = format!("c{}@example.com", Uuid::new_v4().simple());
        let mut accounts = AccountServiceClient::new(self.channel.clone());
        // The control-plane may still be starting (migrations): retry until it answers.
        let mut tries = 0;
        let session = loop {
            let req = SignUpRequest {
                email: email.clone(),
                password: "correct horse battery staple".into(),
                display_name: String::new(),
            };
            match accounts.sign_up(req).await {
                Ok(r) => break r.into_inner(),
                Err(s) if s.code() == Code::Unavailable && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => panic!("sign up: {s:?}"),
            }
        };
        let account = session.account.expect("account");
        let principal = Principal {
            account_id: account.id.parse().expect("account id"),
            customer_id: account.customer_id,
            role: Role::Customer,
            token_id: Uuid::new_v4(),
        };
        let app = self.catalog.apps().next().expect("an app");
        let order = OrderServiceClient::new(self.channel.clone())
            .checkout(signed(
                &self.key,
                &principal,
                CheckoutRequest {
                    app_id: app.id.clone(),
                    plan_id: app.plans[0].id.clone(),
                    idempotency_key: Uuid::new_v4().to_string(),
                },
            ))
            .await
            .expect("checkout")
            .into_inner();
        assert!(!order.instance_id.is_empty(), "order completed: {order:?}");
        Customer {
            principal,
            instance_id: order.instance_id,
            subscription_id: order.subscription_id,
        }
    }

    /// Signs up and checks out, returning the order as checkout answered it (PENDING while
    /// billing is down).
    async fn order(&self) -> (Principal, Order) {
        let email = format!("c{}@example.com", Uuid::new_v4().simple());
        let mut accounts = AccountServiceClient::new(self.channel.clone());
        let mut tries = 0;
        let session = loop {
            let req = SignUpRequest {
                email: email.clone(),
                password: "correct horse battery staple".into(),
                display_name: String::new(),
            };
            match accounts.sign_up(req).await {
                Ok(r) => break r.into_inner(),
                Err(s) if s.code() == Code::Unavailable && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => panic!("sign up: {s:?}"),
            }
        };
        let account = session.account.expect("account");
        let principal = Principal {
            account_id: account.id.parse().expect("account id"),
            customer_id: account.customer_id,
            role: Role::Customer,
            token_id: Uuid::new_v4(),
        };
        let app = self.catalog.apps().next().expect("an app");
        let order = OrderServiceClient::new(self.channel.clone())
            .checkout(signed(
                &self.key,
                &principal,
                CheckoutRequest {
                    app_id: app.id.clone(),
                    plan_id: app.plans[0].id.clone(),
                    idempotency_key: Uuid::new_v4().to_string(),
                },
            ))
            .await
            .expect("checkout")
            .into_inner();
        (principal, order)
    }

    async fn get_order(&self, principal: &Principal, id: &str) -> Order {
        OrderServiceClient::new(self.channel.clone())
            .get_order(signed(
                &self.key,
                principal,
                GetOrderRequest {
                    order_id: id.to_string(),
                },
            ))
            .await
            .expect("get order")
            .into_inner()
    }

    fn instances(&self) -> InstanceServiceClient<Channel> {
        InstanceServiceClient::new(self.channel.clone())
    }

    async fn get(&self, c: &Customer) -> Instance {
        self.instances()
            .get_instance(signed(
                &self.key,
                &c.principal,
                GetInstanceRequest {
                    instance_id: c.instance_id.clone(),
                },
            ))
            .await
            .expect("get instance")
            .into_inner()
    }

    async fn action(&self, c: &Customer, name: &str) -> Result<Instance, Status> {
        let req = signed(
            &self.key,
            &c.principal,
            InstanceActionRequest {
                instance_id: c.instance_id.clone(),
            },
        );
        let mut client = self.instances();
        let r = match name {
            "start" => client.start_instance(req).await,
            "stop" => client.stop_instance(req).await,
            "restart" => client.restart_instance(req).await,
            "delete" => client.delete_instance(req).await,
            other => panic!("no action {other}"),
        };
        r.map(Response::into_inner)
    }

    async fn set(
        &self,
        c: &Customer,
        entitlement: Entitlement,
        sequence: i64,
    ) -> Result<bool, Status> {
        self.set_as(&self.service(), c, entitlement, sequence).await
    }

    async fn set_as(
        &self,
        principal: &Principal,
        c: &Customer,
        entitlement: Entitlement,
        sequence: i64,
    ) -> Result<bool, Status> {
        self.set_full(principal, c, entitlement, sequence, "").await
    }

    /// An entitlement change naming the plan the subscription pays for from now on.
    async fn set_plan(
        &self,
        c: &Customer,
        entitlement: Entitlement,
        sequence: i64,
        plan_id: &str,
    ) -> Result<bool, Status> {
        self.set_full(&self.service(), c, entitlement, sequence, plan_id)
            .await
    }

    async fn set_full(
        &self,
        principal: &Principal,
        c: &Customer,
        entitlement: Entitlement,
        sequence: i64,
        plan_id: &str,
    ) -> Result<bool, Status> {
        EntitlementServiceClient::new(self.channel.clone())
            .set_entitlement(signed(
                &self.key,
                principal,
                SetEntitlementRequest {
                    instance_id: c.instance_id.clone(),
                    subscription_id: c.subscription_id.clone(),
                    entitlement: entitlement as i32,
                    sequence,
                    at: Some(kapal::wire::timestamp(self.clock_now().naive_utc())),
                    cause: "test".into(),
                    plan_id: plan_id.into(),
                },
            ))
            .await
            .map(|r| r.into_inner().applied)
    }

    fn clock_now(&self) -> DateTime<Utc> {
        use kapal::clock::Clock as _;
        self.clock.now()
    }

    /// Waits until the provisioner was handed a spec of the instance matching `want` (the
    /// control-plane pushes in the background); returns it.
    async fn pushed(&self, c: &Customer, want: impl Fn(&InstanceSpec) -> bool) -> InstanceSpec {
        for _ in 0..200 {
            let last = self
                .specs
                .lock()
                .expect("lock")
                .iter()
                .rev()
                .find(|s| s.instance_id == c.instance_id)
                .cloned();
            if let Some(spec) = last
                && want(&spec)
            {
                return spec;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let specs = self.specs.lock().expect("lock").clone();
        panic!("no matching spec pushed; got {specs:#?}");
    }

    /// Waits until the instance's status is `status` (the fake provisioner's answer is
    /// recorded in the background).
    async fn wait_status(&self, c: &Customer, status: InstanceStatus) -> Instance {
        for _ in 0..200 {
            let i = self.get(c).await;
            if i.status == status as i32 {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("instance never became {status:?}: {:?}", self.get(c).await);
    }

    async fn desired_ids(&self) -> Vec<String> {
        self.desired_specs()
            .await
            .into_iter()
            .map(|s| s.instance_id)
            .collect()
    }

    /// What the provisioner's resync reads (everything, in one answer).
    async fn desired_specs(&self) -> Vec<InstanceSpec> {
        self.desired_spec_page(0, "").await.0
    }

    /// One page of ListDesiredInstances: the ids and the next page's token.
    async fn desired_page(&self, page_size: u32, page_token: &str) -> (Vec<String>, String) {
        let (specs, next) = self.desired_spec_page(page_size, page_token).await;
        (specs.into_iter().map(|s| s.instance_id).collect(), next)
    }

    /// One page of ListDesiredInstances: the specs and the next page's token.
    async fn desired_spec_page(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> (Vec<InstanceSpec>, String) {
        let page = InstanceStateServiceClient::new(self.channel.clone())
            .list_desired_instances(signed(
                &self.key,
                &self.service(),
                ListDesiredInstancesRequest {
                    page_size,
                    page_token: page_token.to_string(),
                },
            ))
            .await
            .expect("list desired")
            .into_inner();
        (page.instances, page.next_page_token)
    }
}

fn desired(spec: &InstanceSpec) -> DesiredState {
    DesiredState::try_from(spec.desired_state).expect("desired state")
}

async fn suspension_and_reactivation(backend: Backend) {
    let stack = start(backend).await;
    let c = stack.customer().await;
    stack
        .pushed(&c, |s| desired(s) == DesiredState::Running)
        .await;
    stack.wait_status(&c, InstanceStatus::Ready).await;

    // Suspended: scaled to zero by billing, and the customer cannot start it.
    assert_eq!(
        stack
            .set(&c, Entitlement::Suspended, 1)
            .await
            .map_err(|s| s.code()),
        Ok(true)
    );
    let spec = stack
        .pushed(&c, |s| desired(s) == DesiredState::Stopped)
        .await;
    assert!(spec.suspended_by_billing, "{spec:?}");
    let i = stack.wait_status(&c, InstanceStatus::Suspended).await;
    assert!(i.suspended_by_billing);
    assert_eq!(
        i.desired_state,
        DesiredState::Running as i32,
        "the customer's wish is kept"
    );
    // Listings and the status stream say so too.
    let listed = stack
        .instances()
        .list_instances(signed(
            &stack.key,
            &c.principal,
            ListInstancesRequest::default(),
        ))
        .await
        .expect("list")
        .into_inner()
        .instances;
    assert!(listed.iter().all(|i| i.suspended_by_billing), "{listed:?}");
    let mut events = stack
        .instances()
        .watch_instance(signed(
            &stack.key,
            &c.principal,
            WatchInstanceRequest {
                instance_id: c.instance_id.clone(),
            },
        ))
        .await
        .expect("watch")
        .into_inner();
    let first = events.message().await.expect("event").expect("an event");
    assert!(first.instance.expect("instance").suspended_by_billing);
    for action in ["start", "restart"] {
        let refused = stack.action(&c, action).await.expect_err(action);
        assert_eq!(
            refused.code(),
            Code::FailedPrecondition,
            "{action}: {refused:?}"
        );
        assert!(
            refused.message().contains(&c.subscription_id)
                && refused.message().contains("pay or reactivate"),
            "{}",
            refused.message()
        );
    }
    // The same sequence again with another value, and an invalid one.
    assert_eq!(
        stack
            .set(&c, Entitlement::Active, 1)
            .await
            .map_err(|s| s.code()),
        Ok(false)
    );
    let invalid = stack
        .set(&c, Entitlement::Active, 0)
        .await
        .expect_err("seq 0");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let invalid = stack
        .set(&c, Entitlement::Unspecified, 9)
        .await
        .expect_err("unspecified");
    assert_eq!(invalid.code(), Code::InvalidArgument);

    // Active again: it runs again, as the customer had not stopped it.
    assert_eq!(
        stack
            .set(&c, Entitlement::Active, 2)
            .await
            .map_err(|s| s.code()),
        Ok(true)
    );
    let spec = stack
        .pushed(&c, |s| desired(s) == DesiredState::Running)
        .await;
    assert!(!spec.suspended_by_billing);
    let i = stack.wait_status(&c, InstanceStatus::Ready).await;
    assert!(!i.suspended_by_billing);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event in time")
            .expect("event")
            .expect("stream open");
        if !event.instance.expect("instance").suspended_by_billing {
            break;
        }
    }
    drop(events);

    // Stopped by the customer, suspended, reactivated: it stays stopped.
    stack.action(&c, "stop").await.expect("stop");
    stack
        .pushed(&c, |s| {
            desired(s) == DesiredState::Stopped && !s.suspended_by_billing
        })
        .await;
    assert_eq!(
        stack
            .set(&c, Entitlement::Suspended, 3)
            .await
            .map_err(|s| s.code()),
        Ok(true)
    );
    stack
        .pushed(&c, |s| {
            desired(s) == DesiredState::Stopped && s.suspended_by_billing
        })
        .await;
    // Stopping a suspended instance still works.
    let stopped = stack
        .action(&c, "stop")
        .await
        .expect("stop while suspended");
    assert!(stopped.suspended_by_billing);
    assert_eq!(
        stack
            .set(&c, Entitlement::Active, 4)
            .await
            .map_err(|s| s.code()),
        Ok(true)
    );
    stack
        .pushed(&c, |s| {
            desired(s) == DesiredState::Stopped && !s.suspended_by_billing
        })
        .await;
    let i = stack.get(&c).await;
    assert_eq!(i.desired_state, DesiredState::Stopped as i32);
    assert!(!i.suspended_by_billing);

    // A late delivery of an older change is acknowledged and ignored; a redelivery of the one
    // applied is acknowledged as applied.
    assert_eq!(
        stack
            .set(&c, Entitlement::Suspended, 3)
            .await
            .map_err(|s| s.code()),
        Ok(false)
    );
    assert!(!stack.get(&c).await.suspended_by_billing);
    assert_eq!(
        stack
            .set(&c, Entitlement::Active, 4)
            .await
            .map_err(|s| s.code()),
        Ok(true)
    );
    assert!(stack.desired_ids().await.contains(&c.instance_id));

    // The customer can start it again.
    let started = stack.action(&c, "start").await.expect("start");
    assert_eq!(started.desired_state, DesiredState::Running as i32);
    stack
        .pushed(&c, |s| desired(s) == DesiredState::Running)
        .await;
}

async fn expiry_deletes_with_its_data(backend: Backend) {
    let stack = start(backend).await;
    let c = stack.customer().await;
    stack
        .pushed(&c, |s| desired(s) == DesiredState::Running)
        .await;
    assert!(
        stack.get(&c).await.credentials.is_some(),
        "read (and cached)"
    );
    let now = stack.clock_now();

    assert_eq!(
        stack
            .set(&c, Entitlement::Expired, 7)
            .await
            .map_err(|s| s.code()),
        Ok(true)
    );
    let spec = stack
        .pushed(&c, |s| desired(s) == DesiredState::Deleted)
        .await;
    let after = spec.delete_data_after.as_ref().expect("delete_data_after");
    assert_eq!(kapal::wire::from_timestamp(after), Some(now));
    let i = stack.wait_status(&c, InstanceStatus::Deleted).await;
    assert_eq!(i.data_deleted_after.as_ref(), Some(after));
    assert!(i.suspended_by_billing);
    assert!(i.credentials.is_none());

    // Final: nothing brings it back, neither the customer nor billing.
    for action in ["start", "stop", "delete"] {
        let refused = stack.action(&c, action).await.expect_err(action);
        assert_eq!(refused.code(), Code::FailedPrecondition, "{action}");
    }
    assert_eq!(
        stack
            .set(&c, Entitlement::Active, 8)
            .await
            .map_err(|s| s.code()),
        Ok(false)
    );
    assert!(stack.get(&c).await.suspended_by_billing);
    // Reported deleted and its data is due: the provisioner need not keep anything.
    assert!(!stack.desired_ids().await.contains(&c.instance_id));
}

async fn set_entitlement_refusals(backend: Backend) {
    let stack = start(backend).await;
    let c = stack.customer().await;

    // Only Kapal's services may call it: a customer's principal is refused.
    let denied = stack
        .set_as(&c.principal, &c, Entitlement::Suspended, 1)
        .await
        .expect_err("customer");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(!stack.get(&c).await.suspended_by_billing);

    let unknown = Customer {
        principal: c.principal.clone(),
        instance_id: Uuid::new_v4().to_string(),
        subscription_id: c.subscription_id.clone(),
    };
    let missing = stack
        .set(&unknown, Entitlement::Suspended, 1)
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);

    let bad = Customer {
        principal: c.principal.clone(),
        instance_id: "not-a-uuid".into(),
        subscription_id: c.subscription_id.clone(),
    };
    let invalid = stack
        .set(&bad, Entitlement::Suspended, 1)
        .await
        .expect_err("bad id");
    assert_eq!(invalid.code(), Code::InvalidArgument);

    let other = Customer {
        principal: c.principal.clone(),
        instance_id: c.instance_id.clone(),
        subscription_id: Uuid::new_v4().to_string(),
    };
    let wrong = stack
        .set(&other, Entitlement::Suspended, 1)
        .await
        .expect_err("another subscription");
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    assert!(!stack.get(&c).await.suspended_by_billing);
}

async fn customer_delete_keeps_data_for_the_retention(backend: Backend) {
    let stack = start(backend).await;
    let c = stack.customer().await;
    stack
        .pushed(&c, |s| desired(s) == DesiredState::Running)
        .await;
    let now = stack.clock_now();
    let retention = chrono::Duration::days(7);

    let deleted = stack.action(&c, "delete").await.expect("delete");
    assert_eq!(deleted.desired_state, DesiredState::Deleted as i32);
    let after = deleted
        .data_deleted_after
        .as_ref()
        .and_then(kapal::wire::from_timestamp);
    assert_eq!(after, Some(now + retention));
    let spec = stack
        .pushed(&c, |s| desired(s) == DesiredState::Deleted)
        .await;
    assert_eq!(
        spec.delete_data_after
            .as_ref()
            .and_then(kapal::wire::from_timestamp),
        Some(now + retention)
    );
    let i = stack.wait_status(&c, InstanceStatus::Deleted).await;
    assert_eq!(i.data_deleted_after, deleted.data_deleted_after);
    assert!(!i.suspended_by_billing);

    // Reported deleted, but its data is kept: still listed until the retention ends.
    assert!(stack.desired_ids().await.contains(&c.instance_id));
    stack
        .clock
        .advance(retention - chrono::Duration::seconds(1));
    assert!(stack.desired_ids().await.contains(&c.instance_id));
    stack.clock.advance(chrono::Duration::seconds(2));
    assert!(!stack.desired_ids().await.contains(&c.instance_id));
}

/// Deliveries racing each other (billing replicas, retries): whatever the order they land in,
/// the change with the highest sequence is the one that stays.
async fn concurrent_changes_keep_the_newest(backend: Backend) {
    let stack = Arc::new(start(backend).await);
    let c = Arc::new(stack.customer().await);
    stack
        .pushed(&c, |s| desired(s) == DesiredState::Running)
        .await;
    let mut tasks = tokio::task::JoinSet::new();
    // Highest sequence first, so later (lower) ones must all be ignored.
    for sequence in (10..30).rev() {
        let (stack, c) = (stack.clone(), c.clone());
        let value = if sequence % 2 == 0 {
            Entitlement::Active
        } else {
            Entitlement::Suspended
        };
        tasks.spawn(async move { (sequence, stack.set(&c, value, sequence).await) });
    }
    let mut applied = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (sequence, result) = done.expect("task");
        if result.expect("set entitlement") {
            applied.push(sequence);
        }
    }
    assert!(
        applied.contains(&29),
        "nothing is newer than 29: {applied:?}"
    );
    // 29 is odd: suspended.
    let i = stack.get(&c).await;
    assert!(
        i.suspended_by_billing,
        "the newest change stays: {applied:?}"
    );
    stack
        .pushed(&c, |s| {
            desired(s) == DesiredState::Stopped && s.suspended_by_billing
        })
        .await;
    assert_eq!(
        stack
            .set(&c, Entitlement::Active, 28)
            .await
            .map_err(|s| s.code()),
        Ok(false)
    );
}

/// Statuses arrive one way, the provisioner's reports, but reports can still cross (a retry, two
/// connections): one whose sequence is not above the stored one is ignored, whatever order they
/// land in; ApplyInstance's answer is never recorded.
async fn late_statuses_never_replace_newer_ones(backend: Backend) {
    let stack = start(backend).await;
    let c = stack.customer().await;
    stack.wait_status(&c, InstanceStatus::Ready).await;
    // Above what the fake provisioner has reported so far.
    let base = 1_000_000;
    let report = |status: InstanceStatus, reason: &str, sequence: u64| {
        let state = InstanceState {
            instance_id: c.instance_id.clone(),
            status: status as i32,
            reason: reason.into(),
            observed_at: None,
            sequence,
        };
        let req = signed(&stack.key, &stack.service(), state);
        let mut client = InstanceStateServiceClient::new(stack.channel.clone());
        async move { client.report_instance_state(req).await.map(|_| ()) }
    };
    let shown = |i: &Instance| (InstanceStatus::try_from(i.status), i.status_reason.clone());
    let starting = "Starting the app (0 of 1 components ready).";
    let running = "The app is running.";

    report(InstanceStatus::Provisioning, starting, base + 2)
        .await
        .expect("report");
    assert_eq!(
        shown(&stack.get(&c).await),
        (Ok(InstanceStatus::Provisioning), starting.into())
    );
    // Made before the stored one: it arrived late, and is ignored.
    report(InstanceStatus::Ready, running, base + 1)
        .await
        .expect("a late report is acknowledged");
    assert_eq!(
        shown(&stack.get(&c).await),
        (Ok(InstanceStatus::Provisioning), starting.into())
    );
    report(InstanceStatus::Ready, running, base + 3)
        .await
        .expect("report");
    assert_eq!(
        shown(&stack.get(&c).await),
        (Ok(InstanceStatus::Ready), running.into())
    );
    // The same status reported again later moves the line: what was made in between is late.
    report(InstanceStatus::Ready, running, base + 5)
        .await
        .expect("report");
    report(InstanceStatus::Provisioning, starting, base + 4)
        .await
        .expect("report");
    assert_eq!(
        shown(&stack.get(&c).await),
        (Ok(InstanceStatus::Ready), running.into())
    );

    let bad = report(InstanceStatus::Provisioning, starting, u64::MAX)
        .await
        .expect_err("a sequence beyond what is stored is refused");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("sequence"), "{bad:?}");
    assert_eq!(
        shown(&stack.get(&c).await),
        (Ok(InstanceStatus::Ready), running.into())
    );
}

/// Billing names the plan the subscription pays for: the instance takes it (what customers
/// see, what the provisioner is asked to render); an unknown plan or none keeps the plan.
async fn a_plan_change_reaches_the_provisioner(backend: Backend) {
    let stack = start(backend).await;
    let c = stack.customer().await;
    let before = stack.get(&c).await;
    let app = stack.catalog.app(&before.app_id).expect("app");
    let other = app
        .plans
        .iter()
        .find(|p| p.id != before.plan_id && p.trial_days == 0)
        .expect("another plan")
        .id
        .clone();

    assert!(
        stack
            .set_plan(&c, Entitlement::Active, 1, &other)
            .await
            .expect("plan change")
    );
    let spec = stack.pushed(&c, |s| s.plan_id == other).await;
    assert_eq!(desired(&spec), DesiredState::Running);
    assert_eq!(stack.get(&c).await.plan_id, other);
    assert!(
        stack
            .desired_specs()
            .await
            .iter()
            .any(|s| s.instance_id == c.instance_id && s.plan_id == other),
        "the resync lists the new plan too"
    );

    // A plan that is not in the catalog, or none at all: the entitlement applies, the plan stays.
    assert!(
        stack
            .set_plan(&c, Entitlement::Suspended, 2, "gold")
            .await
            .expect("unknown plan")
    );
    assert!(stack.get(&c).await.suspended_by_billing);
    assert!(
        stack
            .set_plan(&c, Entitlement::Active, 3, "")
            .await
            .expect("no plan")
    );
    let after = stack.get(&c).await;
    assert!(!after.suspended_by_billing);
    assert_eq!(after.plan_id, other);
}

/// ListDesiredInstances pages in the order of instance ids: every instance once, and a page
/// token that is not the control-plane's is INVALID_ARGUMENT. A caller that sends no page size
/// (one from before paging) still gets everything in one answer.
async fn the_desired_list_comes_in_pages(backend: Backend) {
    let stack = start(backend).await;
    for _ in 0..5 {
        let c = stack.customer().await;
        stack
            .pushed(&c, |s| desired(s) == DesiredState::Running)
            .await;
    }
    let mut everything = stack.desired_ids().await;
    assert_eq!(everything.len(), 5, "{everything:?}");
    everything.sort();

    let mut paged = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let (ids, next) = stack.desired_page(2, &token).await;
        assert!(ids.len() <= 2, "{ids:?}");
        paged.extend(ids);
        pages += 1;
        if next.is_empty() {
            break;
        }
        assert!(pages < 10, "the pages never end");
        token = next;
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, everything, "each instance once, in id order");

    let bad = InstanceStateServiceClient::new(stack.channel.clone())
        .list_desired_instances(signed(
            &stack.key,
            &stack.service(),
            ListDesiredInstancesRequest {
                page_size: 2,
                page_token: "not-a-token".into(),
            },
        ))
        .await
        .expect_err("a made-up token");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("page_token"), "{bad:?}");
}

/// Orders left pending (billing was down) are recovered concurrently, each with a timeout:
/// one whose billing call never returns holds neither the other orders nor the loop.
async fn a_stuck_pending_order_does_not_hold_the_others(backend: Backend) {
    let stack = start_with(backend, |config| {
        config.recovery_interval = Duration::from_millis(200);
        config.recovery_order_timeout = Duration::from_secs(3);
        // Longer than the test waits: only concurrency lets the others through in time.
        config.internal_deadline = Duration::from_secs(60);
    })
    .await;
    *stack.billing.0.lock().expect("lock") = BillingMode::Unavailable;
    let mut orders = Vec::new();
    for _ in 0..4 {
        let (principal, order) = stack.order().await;
        assert_eq!(order.status, OrderStatus::Pending as i32, "{order:?}");
        orders.push((principal, order));
        // Each order older than the next, so the recovery's order is known.
        stack.clock.advance(chrono::Duration::seconds(1));
    }
    // The oldest order is the one billing never answers; the recovery takes oldest first.
    *stack.billing.0.lock().expect("lock") = BillingMode::StuckOn(vec![orders[0].1.id.clone()]);
    // Orders are recovered once they have been pending for a few seconds.
    stack.clock.advance(chrono::Duration::seconds(10));

    let started = std::time::Instant::now();
    for (principal, order) in &orders[1..] {
        loop {
            let now = stack.get_order(principal, &order.id).await;
            if now.status == OrderStatus::Completed as i32 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "order {} still {:?} after {:?}: held behind the stuck one",
                order.id,
                now.status,
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The stuck one stays pending (it is retried every round, each try cut off in time), and
    // completes as soon as billing answers it.
    let stuck = stack.get_order(&orders[0].0, &orders[0].1.id).await;
    assert_eq!(stuck.status, OrderStatus::Pending as i32);
    *stack.billing.0.lock().expect("lock") = BillingMode::Answers;
    let started = std::time::Instant::now();
    loop {
        let now = stack.get_order(&orders[0].0, &orders[0].1.id).await;
        if now.status == OrderStatus::Completed as i32 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the stuck order never completed: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

kapal::on_both_backends!(
    a_plan_change_reaches_the_provisioner,
    a_stuck_pending_order_does_not_hold_the_others,
    the_desired_list_comes_in_pages,
    late_statuses_never_replace_newer_ones,
    concurrent_changes_keep_the_newest,
    suspension_and_reactivation,
    expiry_deletes_with_its_data,
    set_entitlement_refusals,
    customer_delete_keeps_data_for_the_retention,
);
