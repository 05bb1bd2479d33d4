//! Operators' API, the checkout capacity ceiling and the read path, over a real socket: the
//! control-plane from `run()` on SQLite and PostgreSQL, with a fake billing (one subscription per
//! order) and a fake provisioner whose cluster capacity the test sets, which counts credential
//! reads and answers usage with fixed figures.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kapal::auth::{InternalKey, Principal, Role};
use kapal::catalog::Catalog;
use kapal::clock::ManualClock;
use kapal::proto::internal::v1::InstanceState;
use kapal::proto::internal::v1::billing_service_server::BillingServiceServer;
use kapal::proto::internal::v1::instance_state_service_client::InstanceStateServiceClient;
use kapal::proto::internal::v1::provisioner_service_server::ProvisionerServiceServer;
use kapal::proto::v1::account_service_client::AccountServiceClient;
use kapal::proto::v1::admin_service_client::AdminServiceClient;
use kapal::proto::v1::instance_service_client::InstanceServiceClient;
use kapal::proto::v1::order_service_client::OrderServiceClient;
use kapal::proto::v1::{
    AlertSeverity, Capacity, CheckoutRequest, GetCapacityRequest, GetInstanceAsAdminRequest,
    GetInstanceRequest, GetInstanceUsageRequest, InstanceStatus, ListAlertsRequest,
    ListAllInstancesRequest, ListAuditEventsRequest, ListInstancesRequest, ListOrdersRequest,
    NodeCapacity, Order, ResourceAmounts, Role as PbRole, SignUpRequest,
};
use kapal::testing::Backend;
use kapal_control_plane::support::notify::{AlertEvent, AlertNotice, Notice, Notifier};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
/// A channel whose calls are signed as the principal each request names
/// ([`kapal::auth::SignWith`]), for the method called, as the gateway signs them.
type Channel = InterceptedService<tonic::transport::Channel, kapal::auth::SignRequested>;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

mod common;
use common::{FakeBilling, FakeProvisioner, MIB};

const ADMIN_EMAIL: &str = "ops@example.com";

fn amounts(cpu_millis: i64, memory_mib: i64, pods: i64) -> Option<ResourceAmounts> {
    Some(ResourceAmounts {
        cpu_millis,
        memory_bytes: memory_mib * MIB,
        pods,
    })
}

/// A one-node cluster: `cpu` millicores and `memory_mib` allocatable, `others_cpu` requested
/// by pods that are not Kapal's.
fn cluster(cpu: i64, memory_mib: i64, others_cpu: i64) -> Capacity {
    let node = NodeCapacity {
        name: "node-a".into(),
        ready: true,
        schedulable: true,
        allocatable: amounts(cpu, memory_mib, 110),
        requested: amounts(others_cpu, 0, 3),
    };
    Capacity {
        nodes: vec![node],
        allocatable: amounts(cpu, memory_mib, 110),
        requested: amounts(others_cpu, 0, 3),
        requested_by_kapal: amounts(0, 0, 0),
        committed: None,
        ceiling_percent: 0,
        observed_at: None,
    }
}

struct Stack {
    channel: Channel,
    db: kapal::db::DbConfig,
    key: InternalKey,
    clock: Arc<ManualClock>,
    capacity: Arc<Mutex<Option<Capacity>>>,
    credential_reads: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn signed<T>(key: &InternalKey, principal: &Principal, message: T) -> Request<T> {
    kapal::auth::SignWith::request(key, principal, message)
}

async fn start(backend: Backend, capacity: Capacity) -> Stack {
    start_with(backend, capacity, 1, |_| {}).await
}

/// [`start`], with `replicas` control-planes on the one database (the first serves the test's
/// calls), each configured by `configure` too.
async fn start_with(
    backend: Backend,
    capacity: Capacity,
    replicas: usize,
    configure: impl Fn(&mut kapal_control_plane::Config),
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

    let provisioner = FakeProvisioner::new(&cp_url, &key, Some(capacity));
    let (cluster, credential_reads) = (
        provisioner.capacity.clone(),
        provisioner.credential_reads.clone(),
    );
    let fake_provisioner =
        tonic::transport::Server::builder().add_service(ProvisionerServiceServer::new(provisioner));
    let fake_billing = tonic::transport::Server::builder()
        .add_service(BillingServiceServer::new(FakeBilling::default()));
    tokio::spawn(kapal::serve::serve(fake_provisioner, prov, shutdown()));
    tokio::spawn(kapal::serve::serve(fake_billing, billing, shutdown()));

    let config = || {
        let mut config = kapal_control_plane::Config::new(
            db.clone(),
            catalog.clone(),
            key.clone(),
            billing_url.clone(),
            prov_url.clone(),
        );
        config.clock = clock.clone();
        config.domain = "kapal.test".into();
        // Every call sees the cluster as the test set it last.
        config.capacity_cache_ttl = Duration::ZERO;
        // These tests are about capacity and the operators' view, not the per-account cap.
        config.max_instances_per_account = 100;
        configure(&mut config);
        config
    };
    tokio::spawn(kapal_control_plane::run(config(), cp, shutdown()));
    let raw = tonic::transport::Channel::from_shared(cp_url)
        .expect("url")
        .connect_lazy();
    let channel = InterceptedService::new(raw.clone(), kapal::auth::SignRequested);
    if replicas > 1 {
        // The first has migrated the database once it answers.
        let mut health = tonic_health::pb::health_client::HealthClient::new(raw);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "control-plane not up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 1..replicas {
            tokio::spawn(kapal_control_plane::run(
                config(),
                listener().await,
                shutdown(),
            ));
        }
    }
    Stack {
        channel,
        db,
        key,
        clock,
        capacity: cluster,
        credential_reads,
        stop,
        _dir: dir,
    }
}

impl Stack {
    /// Makes every write to the audit log fail (the table is renamed away).
    async fn break_audit_log(&self) {
        const SQL: &str = "ALTER TABLE audit_log RENAME TO audit_log_gone";
        match &self.db {
            kapal::db::DbConfig::DataDir(dir) => {
                use diesel::connection::SimpleConnection as _;
                let mut conn =
                    kapal::db::sqlite_sync(&dir.join("control-plane.db")).expect("sqlite");
                conn.batch_execute(SQL).expect("rename");
            }
            kapal::db::DbConfig::Postgres(url) => {
                use diesel_async::{AsyncConnection as _, SimpleAsyncConnection as _};
                let mut conn = diesel_async::AsyncPgConnection::establish(url)
                    .await
                    .expect("postgres");
                conn.batch_execute(&format!("SET search_path TO kapal_control_plane; {SQL}"))
                    .await
                    .expect("rename");
            }
        }
    }

    fn set_capacity(&self, capacity: Option<Capacity>) {
        *self.capacity.lock().expect("lock") = capacity;
    }

    async fn sign_up(&self, email: &str) -> (Principal, String) {
        let mut accounts = AccountServiceClient::new(self.channel.clone());
        // The control-plane may still be starting (migrations): retry until it answers.
        let mut tries = 0;
        let session = loop {
            let req = SignUpRequest {
                email: email.into(),
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
        let role = if account.role == PbRole::Admin as i32 {
            Role::Admin
        } else {
            Role::Customer
        };
        let principal = Principal {
            account_id: account.id.parse().expect("account id"),
            customer_id: account.customer_id,
            role,
            token_id: Uuid::new_v4(),
        };
        (principal, account.email)
    }

    async fn customer(&self) -> Principal {
        let (p, _) = self
            .sign_up(&format!("c{}@example.com", Uuid::new_v4().simple()))
            .await;
        assert_eq!(p.role, Role::Customer);
        p
    }

    /// Signs up ADMIN_EMAIL (a customer, like anyone signing up) and makes it an operator the
    /// way `kapal admin grant` does.
    async fn admin(&self) -> Principal {
        let (mut p, email) = self.sign_up(ADMIN_EMAIL).await;
        assert_eq!(p.role, Role::Customer, "nobody signs up as an admin");
        let db = kapal_control_plane::operators::connect(&self.db)
            .await
            .expect("the control-plane's database");
        let change = kapal_control_plane::operators::set_admin(
            &db,
            &email,
            true,
            "test operator",
            "kapal admin grant (test)",
            // Before anything the test does on its clock: the oldest audit event.
            (kapal::clock::Clock::now(&*self.clock) - chrono::Duration::minutes(1)).naive_utc(),
        )
        .await
        .expect("grant");
        assert!(change.changed);
        p.role = Role::Admin;
        p
    }

    async fn checkout(&self, p: &Principal, app: &str, key: &str) -> Result<Order, Status> {
        OrderServiceClient::new(self.channel.clone())
            .checkout(signed(
                &self.key,
                p,
                CheckoutRequest {
                    app_id: app.into(),
                    // A paid plan (the trial's size): one account orders an app many times here,
                    // and only one trial per app is allowed.
                    plan_id: "starter".into(),
                    idempotency_key: key.into(),
                },
            ))
            .await
            .map(Response::into_inner)
    }

    async fn order(&self, p: &Principal, app: &str) -> String {
        let order = self
            .checkout(p, app, &Uuid::new_v4().to_string())
            .await
            .expect("checkout");
        assert!(!order.instance_id.is_empty(), "completed: {order:?}");
        order.instance_id
    }

    fn admin_client(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    fn instances(&self) -> InstanceServiceClient<Channel> {
        InstanceServiceClient::new(self.channel.clone())
    }

    async fn report(&self, instance_id: &str, status: InstanceStatus, reason: &str) {
        InstanceStateServiceClient::new(self.channel.clone())
            .report_instance_state(signed(
                &self.key,
                &Principal::service(),
                InstanceState {
                    instance_id: instance_id.into(),
                    status: status as i32,
                    reason: reason.into(),
                    observed_at: None,
                    sequence: 0,
                },
            ))
            .await
            .expect("report state");
    }

    /// Every instance through ListAllInstances, page by page.
    async fn all_instances(
        &self,
        admin: &Principal,
        filter: ListAllInstancesRequest,
        page_size: u32,
    ) -> Vec<kapal::proto::v1::AdminInstance> {
        let mut out = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = self
                .admin_client()
                .list_all_instances(signed(
                    &self.key,
                    admin,
                    ListAllInstancesRequest {
                        page_size,
                        page_token: token.clone(),
                        ..filter.clone()
                    },
                ))
                .await
                .expect("list all instances")
                .into_inner();
            assert!(page.instances.len() <= page_size as usize);
            out.extend(page.instances);
            pages += 1;
            assert!(pages < 1000, "paging does not end");
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
    }

    /// Waits until `n` instances are READY (the provisioner's answers are recorded in the
    /// background).
    async fn wait_ready(&self, admin: &Principal, n: usize) {
        for _ in 0..400 {
            let ready = self
                .all_instances(
                    admin,
                    ListAllInstancesRequest {
                        status: InstanceStatus::Ready as i32,
                        ..Default::default()
                    },
                    500,
                )
                .await;
            if ready.len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("instances did not all become READY");
    }

    async fn count_orders(&self, p: &Principal) -> usize {
        OrderServiceClient::new(self.channel.clone())
            .list_orders(signed(
                &self.key,
                p,
                ListOrdersRequest {
                    page_size: 500,
                    page_token: String::new(),
                },
            ))
            .await
            .expect("list orders")
            .into_inner()
            .orders
            .len()
    }
}

async fn customers_are_denied_every_admin_call(backend: Backend) {
    let stack = start(backend, cluster(10_000, 20_000, 0)).await;
    let c = stack.customer().await;
    let id = stack.order(&c, "n8n").await;
    let mut admin = stack.admin_client();
    let k = &stack.key;
    let denied = |r: Result<(), Status>, call: &str| {
        let s = r.expect_err(call);
        assert_eq!(s.code(), Code::PermissionDenied, "{call}: {s:?}");
    };
    denied(
        admin
            .list_all_instances(signed(k, &c, ListAllInstancesRequest::default()))
            .await
            .map(drop),
        "ListAllInstances",
    );
    denied(
        admin
            .get_instance_as_admin(signed(
                k,
                &c,
                GetInstanceAsAdminRequest {
                    instance_id: id.clone(),
                    include_credentials: true,
                    reason: "curious".into(),
                },
            ))
            .await
            .map(drop),
        "GetInstanceAsAdmin",
    );
    denied(
        admin
            .get_capacity(signed(k, &c, GetCapacityRequest {}))
            .await
            .map(drop),
        "GetCapacity",
    );
    denied(
        admin
            .list_alerts(signed(k, &c, ListAlertsRequest {}))
            .await
            .map(drop),
        "ListAlerts",
    );
    denied(
        admin
            .get_instance_usage(signed(
                k,
                &c,
                GetInstanceUsageRequest {
                    instance_id: id.clone(),
                },
            ))
            .await
            .map(drop),
        "GetInstanceUsage",
    );
    denied(
        admin
            .list_audit_events(signed(k, &c, ListAuditEventsRequest::default()))
            .await
            .map(drop),
        "ListAuditEvents",
    );
    // Unsigned calls are not even authenticated.
    let s = admin
        .list_alerts(ListAlertsRequest {})
        .await
        .expect_err("unsigned");
    assert_eq!(s.code(), Code::Unauthenticated);
}

async fn all_instances_filter_and_page(backend: Backend) {
    let stack = start(backend, cluster(1_000_000, 4_000_000, 0)).await;
    let admin = stack.admin().await;
    let customers = [
        stack.customer().await,
        stack.customer().await,
        stack.customer().await,
    ];
    let apps = ["n8n", "ghost", "wordpress"];
    let mut ids = Vec::new();
    for n in 0..120 {
        // Some instances share a creation time: the id breaks the tie.
        if n % 7 == 0 {
            stack.clock.advance(chrono::Duration::milliseconds(1));
        }
        let c = &customers[n % 3];
        let app = apps[n / 40];
        ids.push((c.account_id, app, stack.order(c, app).await));
    }
    stack.wait_ready(&admin, 120).await;

    for page_size in [7, 50, 500] {
        let all = stack
            .all_instances(&admin, ListAllInstancesRequest::default(), page_size)
            .await;
        let seen: HashSet<_> = all
            .iter()
            .map(|a| a.instance.as_ref().expect("instance").id.clone())
            .collect();
        assert_eq!(all.len(), 120, "page size {page_size}: no duplicates");
        assert_eq!(seen.len(), 120, "page size {page_size}: no gaps");
        // Newest first.
        let keys: Vec<_> = all
            .iter()
            .map(|a| {
                let i = a.instance.as_ref().expect("instance");
                let t = i.created_at.expect("created_at");
                ((t.seconds, t.nanos), i.id.clone())
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(keys, sorted, "page size {page_size}: newest first");
    }

    // Owners are joined in.
    let c0 = &customers[0];
    let mine = stack
        .all_instances(
            &admin,
            ListAllInstancesRequest {
                account_id: c0.account_id.to_string(),
                ..Default::default()
            },
            9,
        )
        .await;
    assert_eq!(mine.len(), 40);
    for a in &mine {
        assert_eq!(a.account_id, c0.account_id.to_string());
        assert_eq!(a.customer_id, c0.customer_id);
        assert!(a.email.ends_with("@example.com"), "{a:?}");
        assert!(
            a.namespace
                .starts_with(&format!("kapal-{}", c0.customer_id))
        );
        assert!(a.instance.as_ref().expect("instance").credentials.is_none());
    }
    for app in apps {
        let of_app = stack
            .all_instances(
                &admin,
                ListAllInstancesRequest {
                    app_id: app.into(),
                    ..Default::default()
                },
                11,
            )
            .await;
        assert_eq!(of_app.len(), 40, "{app}");
        assert!(
            of_app
                .iter()
                .all(|a| a.instance.as_ref().expect("instance").app_id == app)
        );
    }
    // Three failed ones; one of them also filtered by account and app.
    for (_, _, id) in &ids[..3] {
        stack
            .report(id, InstanceStatus::Failed, "Image pull failed")
            .await;
    }
    let failed = stack
        .all_instances(
            &admin,
            ListAllInstancesRequest {
                status: InstanceStatus::Failed as i32,
                ..Default::default()
            },
            2,
        )
        .await;
    assert_eq!(failed.len(), 3);
    let (account, app, id) = &ids[1];
    let one = stack
        .all_instances(
            &admin,
            ListAllInstancesRequest {
                status: InstanceStatus::Failed as i32,
                app_id: (*app).into(),
                account_id: account.to_string(),
                ..Default::default()
            },
            50,
        )
        .await;
    assert_eq!(one.len(), 1);
    assert_eq!(&one[0].instance.as_ref().expect("instance").id, id);

    // A customer's own listing pages the same way (keyset tokens).
    let mut token = String::new();
    let mut own = HashSet::new();
    loop {
        let page = stack
            .instances()
            .list_instances(signed(
                &stack.key,
                c0,
                ListInstancesRequest {
                    page_size: 6,
                    page_token: token.clone(),
                },
            ))
            .await
            .expect("list instances")
            .into_inner();
        for i in page.instances {
            assert!(own.insert(i.id), "duplicate in customer listing");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(own.len(), 40);
    let bad = stack
        .admin_client()
        .list_all_instances(signed(
            &stack.key,
            &admin,
            ListAllInstancesRequest {
                page_token: "50".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), Code::InvalidArgument);
}

async fn credential_reads_are_audited(backend: Backend) {
    let stack = start(backend, cluster(10_000, 20_000, 0)).await;
    let admin = stack.admin().await;
    let c = stack.customer().await;
    let id = stack.order(&c, "ghost").await;
    let get = |include_credentials: bool, reason: &str| {
        let mut client = stack.admin_client();
        let req = signed(
            &stack.key,
            &admin,
            GetInstanceAsAdminRequest {
                instance_id: id.clone(),
                include_credentials,
                reason: reason.into(),
            },
        );
        async move {
            client
                .get_instance_as_admin(req)
                .await
                .map(Response::into_inner)
        }
    };
    let audit = |page_size: u32, page_token: String| {
        let mut client = stack.admin_client();
        let req = signed(
            &stack.key,
            &admin,
            ListAuditEventsRequest {
                page_size,
                page_token,
            },
        );
        async move {
            client
                .list_audit_events(req)
                .await
                .expect("audit")
                .into_inner()
        }
    };

    // Without credentials: the owner, no secret, nothing audited.
    let plain = get(false, "").await.expect("get");
    assert_eq!(plain.account_id, c.account_id.to_string());
    assert_eq!(plain.customer_id, c.customer_id);
    assert!(
        plain
            .instance
            .as_ref()
            .expect("instance")
            .credentials
            .is_none()
    );
    // Credentials without a (good) reason: refused, nothing audited.
    for reason in ["", "  x ", &"y".repeat(501)] {
        let s = get(true, reason).await.expect_err("no reason");
        assert_eq!(s.code(), Code::InvalidArgument, "{reason:?}: {s:?}");
    }
    assert!(
        audit(50, String::new())
            .await
            .events
            .iter()
            .all(|e| e.action == "grant_admin" && e.instance_id.is_empty()),
        "nothing but the operator's own grant"
    );

    // With a reason: the credentials, and the audit row with actor and reason.
    let reads_before = stack.credential_reads.load(Ordering::SeqCst);
    let with = get(true, "ticket T-1234: customer locked out")
        .await
        .expect("credentials");
    let creds = with
        .instance
        .as_ref()
        .and_then(|i| i.credentials.clone())
        .expect("credentials returned");
    assert_eq!(creds.password, format!("pw-{id}"));
    let events = audit(50, String::new()).await.events;
    assert_eq!(events.len(), 2, "the read, and before it the grant");
    assert_eq!(events[1].action, "grant_admin");
    assert_eq!(events[1].reason, "test operator");
    assert_eq!(events[1].instance_account_id, admin.account_id.to_string());
    let e = &events[0];
    assert_eq!(e.actor_account_id, admin.account_id.to_string());
    assert_eq!(e.actor_email, ADMIN_EMAIL);
    assert_eq!(e.action, "read_credentials");
    assert_eq!(e.instance_id, id);
    assert_eq!(e.instance_account_id, c.account_id.to_string());
    assert_eq!(e.reason, "ticket T-1234: customer locked out");
    assert!(e.at.is_some());

    // Two more reads; the audit log pages newest first without gaps.
    stack.clock.advance(chrono::Duration::seconds(1));
    get(true, "second look").await.expect("credentials");
    get(true, "third look").await.expect("credentials");
    let first = audit(2, String::new()).await;
    assert_eq!(
        first
            .events
            .iter()
            .map(|e| e.reason.as_str())
            .collect::<Vec<_>>(),
        ["third look", "second look"]
    );
    assert!(!first.next_page_token.is_empty());
    let second = audit(2, first.next_page_token).await;
    assert_eq!(second.events.len(), 2);
    assert_eq!(second.events[1].action, "grant_admin");
    assert_eq!(
        second.events[0].reason,
        "ticket T-1234: customer locked out"
    );
    assert!(second.next_page_token.is_empty());

    // The read path: the customer's GetInstance answers from the cached credentials.
    for _ in 0..5 {
        let i = stack
            .instances()
            .get_instance(signed(
                &stack.key,
                &c,
                GetInstanceRequest {
                    instance_id: id.clone(),
                },
            ))
            .await
            .expect("get instance")
            .into_inner();
        assert_eq!(
            i.credentials.as_ref().map(|c| c.password.clone()),
            Some(format!("pw-{id}"))
        );
    }
    assert_eq!(
        stack.credential_reads.load(Ordering::SeqCst),
        reads_before + 1,
        "credentials are read from the cluster once"
    );
}

/// Trial plans need 200m CPU / 400 MiB. 10,000m allocatable at 80% is 8,000m; other pods
/// request 7,000m: room for exactly 5 trials.
fn room_for_five() -> Capacity {
    cluster(10_000, 1_000_000, 7_000)
}

async fn checkout_stops_at_the_ceiling(backend: Backend) {
    let stack = start(backend, room_for_five()).await;
    let admin = stack.admin().await;
    let c = stack.customer().await;
    let mut keys = Vec::new();
    for n in 0..5 {
        let key = Uuid::new_v4().to_string();
        let app = ["n8n", "ghost", "wordpress"][n % 3];
        let order = stack.checkout(&c, app, &key).await.expect("room left");
        keys.push((key, app, order.id));
    }
    let orders_before = stack.count_orders(&c).await;
    let refused = stack
        .checkout(&c, "n8n", &Uuid::new_v4().to_string())
        .await
        .expect_err("full");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.message(),
        "The cluster is at capacity: this plan needs 200m CPU / 400 MiB and only 0m / 798000 MiB \
         remain under the 80% ceiling. Try again later or contact support."
    );
    // Nothing written for the refused checkout.
    assert_eq!(stack.count_orders(&c).await, orders_before);
    assert_eq!(
        stack
            .all_instances(&admin, ListAllInstancesRequest::default(), 500)
            .await
            .len(),
        5
    );
    // A retry of an accepted order is answered, full or not.
    let (key, app, id) = &keys[2];
    let again = stack
        .checkout(&c, app, key)
        .await
        .expect("idempotent retry");
    assert_eq!(&again.id, id);

    // Capacity shows what is committed against the ceiling.
    let cap = stack
        .admin_client()
        .get_capacity(signed(&stack.key, &admin, GetCapacityRequest {}))
        .await
        .expect("capacity")
        .into_inner();
    assert_eq!(cap.ceiling_percent, 80);
    let committed = cap.committed.expect("committed");
    assert_eq!(committed.cpu_millis, 7_000 + 5 * 200);
    assert_eq!(committed.memory_bytes, 5 * 400 * MIB);
    assert_eq!(cap.nodes.len(), 1);

    // Stopping an instance frees its share: one more fits.
    let stopped = stack
        .all_instances(&admin, ListAllInstancesRequest::default(), 1)
        .await;
    let victim = stopped[0].instance.as_ref().expect("instance").id.clone();
    stack
        .instances()
        .stop_instance(signed(
            &stack.key,
            &c,
            kapal::proto::v1::InstanceActionRequest {
                instance_id: victim.clone(),
            },
        ))
        .await
        .expect("stop");
    stack
        .checkout(&c, "ghost", &Uuid::new_v4().to_string())
        .await
        .expect("room after a stop");
    // Order, stop, order, start: starting the stopped one again would overshoot the ceiling,
    // so it is refused as a checkout would be, and it stays stopped.
    let start = |id: String| {
        signed(
            &stack.key,
            &c,
            kapal::proto::v1::InstanceActionRequest { instance_id: id },
        )
    };
    let refused = stack
        .instances()
        .start_instance(start(victim.clone()))
        .await
        .expect_err("no room to start it again");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().starts_with("The cluster is at capacity"),
        "{refused:?}"
    );
    let still = stack
        .all_instances(&admin, ListAllInstancesRequest::default(), 500)
        .await
        .into_iter()
        .filter_map(|a| a.instance)
        .find(|i| i.id == victim)
        .expect("the victim");
    assert_eq!(
        still.desired_state,
        kapal::proto::v1::DesiredState::Stopped as i32,
        "nothing changed"
    );
    // Restarting a running instance adds nothing and is not refused.
    let running = stack
        .all_instances(&admin, ListAllInstancesRequest::default(), 500)
        .await
        .into_iter()
        .filter_map(|a| a.instance)
        .find(|i| i.desired_state == kapal::proto::v1::DesiredState::Running as i32)
        .expect("a running instance");
    stack
        .instances()
        .restart_instance(start(running.id))
        .await
        .expect("a restart needs no room");

    // The provisioner unreachable: its last snapshot (under a minute old) still counts.
    stack.set_capacity(None);
    let s = stack
        .checkout(&c, "wordpress", &Uuid::new_v4().to_string())
        .await
        .expect_err("full by the last snapshot");
    assert_eq!(s.code(), Code::ResourceExhausted);
}

async fn no_audit_row_no_credentials(backend: Backend) {
    let stack = start(backend, cluster(10_000, 20_000, 0)).await;
    let admin = stack.admin().await;
    let c = stack.customer().await;
    let id = stack.order(&c, "wordpress").await;
    stack.break_audit_log().await;
    let reads = stack.credential_reads.load(Ordering::SeqCst);
    let s = stack
        .admin_client()
        .get_instance_as_admin(signed(
            &stack.key,
            &admin,
            GetInstanceAsAdminRequest {
                instance_id: id.clone(),
                include_credentials: true,
                reason: "ticket T-77".into(),
            },
        ))
        .await
        .expect_err("the audit row cannot be written");
    assert_eq!(s.code(), Code::Internal, "{s:?}");
    assert!(
        !s.message().contains("audit_log"),
        "no internal detail: {s:?}"
    );
    assert_eq!(
        stack.credential_reads.load(Ordering::SeqCst),
        reads,
        "the credentials were not even read"
    );
    // Without credentials the instance is still shown.
    stack
        .admin_client()
        .get_instance_as_admin(signed(
            &stack.key,
            &admin,
            GetInstanceAsAdminRequest {
                instance_id: id,
                include_credentials: false,
                reason: String::new(),
            },
        ))
        .await
        .expect("plain read");
}

async fn unknown_capacity_accepts_orders(backend: Backend) {
    let stack = start(backend, cluster(1_000, 1_000, 1_000)).await;
    // The provisioner cannot tell the capacity and has never told it: orders are accepted
    // (a warning is logged), not refused.
    stack.set_capacity(None);
    let c = stack.customer().await;
    stack.order(&c, "n8n").await;
    stack.order(&c, "ghost").await;
    // Once it answers again (a full cluster), checkouts are checked again.
    stack.set_capacity(Some(cluster(1_000, 1_000, 1_000)));
    let s = stack
        .checkout(&c, "wordpress", &Uuid::new_v4().to_string())
        .await
        .expect_err("full");
    assert_eq!(s.code(), Code::ResourceExhausted);
}

async fn concurrent_checkouts_fill_exactly(backend: Backend) {
    let stack = start(backend, room_for_five()).await;
    let admin = stack.admin().await;
    let mut customers = Vec::new();
    for _ in 0..10 {
        customers.push(stack.customer().await);
    }
    let stack = Arc::new(stack);
    let mut tasks = tokio::task::JoinSet::new();
    for (n, c) in customers.iter().enumerate() {
        let (stack, c) = (stack.clone(), c.clone());
        tasks.spawn(async move {
            let app = ["n8n", "ghost", "wordpress"][n % 3];
            stack.checkout(&c, app, &Uuid::new_v4().to_string()).await
        });
    }
    let (mut accepted, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(_) => accepted += 1,
            Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert_eq!((accepted, refused), (5, 5));
    assert_eq!(
        stack
            .all_instances(&admin, ListAllInstancesRequest::default(), 500)
            .await
            .len(),
        5
    );
    let mut orders = 0;
    for c in &customers {
        orders += stack.count_orders(c).await;
    }
    assert_eq!(orders, 5, "refused checkouts left no order");
}

async fn alerts_show_what_needs_attention(backend: Backend) {
    let stack = start(backend, room_for_five()).await;
    let admin = stack.admin().await;
    let c = stack.customer().await;
    let alerts = || {
        let mut client = stack.admin_client();
        let req = signed(&stack.key, &admin, ListAlertsRequest {});
        async move {
            client
                .list_alerts(req)
                .await
                .expect("alerts")
                .into_inner()
                .alerts
        }
    };
    let kinds = |alerts: &[kapal::proto::v1::Alert]| {
        alerts
            .iter()
            .map(|a| {
                (
                    a.kind.clone(),
                    AlertSeverity::try_from(a.severity).expect("severity"),
                    a.subject.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    // Other pods request 7,000m of 10,000m: 70%, not above the warning line (80 - 10).
    assert!(alerts().await.is_empty(), "{:?}", alerts().await);

    let a = stack.order(&c, "n8n").await;
    let b = stack.order(&c, "ghost").await;
    stack.wait_ready(&admin, 2).await;
    // 7,400m = 74% > 70%: a warning.
    assert_eq!(
        kinds(&alerts().await),
        [(
            "capacity_high".into(),
            AlertSeverity::Warning,
            "cluster".into()
        )]
    );

    // A node down, capacity over the ceiling (other pods grew), a failed and a degraded instance.
    let mut cap = room_for_five();
    cap.requested = amounts(7_900, 0, 3);
    cap.nodes.push(NodeCapacity {
        name: "node-b".into(),
        ready: false,
        schedulable: false,
        allocatable: amounts(4_000, 8_000, 110),
        requested: amounts(0, 0, 0),
    });
    stack.set_capacity(Some(cap));
    stack
        .report(&a, InstanceStatus::Failed, "Image pull failed")
        .await;
    stack
        .report(&b, InstanceStatus::Degraded, "mysql is not ready")
        .await;
    let now = kinds(&alerts().await);
    assert_eq!(
        now,
        [
            (
                "capacity_high".into(),
                AlertSeverity::Critical,
                "cluster".into()
            ),
            ("instance_failed".into(), AlertSeverity::Critical, a.clone()),
            (
                "node_not_ready".into(),
                AlertSeverity::Critical,
                "node-b".into()
            ),
        ],
        "degraded for less than 5 minutes is no alert yet"
    );
    stack.clock.advance(chrono::Duration::minutes(6));
    let later = alerts().await;
    let degraded = later
        .iter()
        .find(|x| x.kind == "instance_degraded")
        .expect("degraded alert after 5 minutes");
    assert_eq!(degraded.severity, AlertSeverity::Warning as i32);
    assert_eq!(degraded.subject, b);
    assert!(
        degraded.message.contains("mysql is not ready"),
        "{}",
        degraded.message
    );
    assert!(degraded.since.is_some());
    // Critical first.
    assert_eq!(
        later.last().map(|x| x.kind.as_str()),
        Some("instance_degraded")
    );

    // The provisioner unreachable: a critical alert (the other cluster alerts come from its
    // last answer, kept for a minute).
    stack.set_capacity(None);
    let down = kinds(&alerts().await);
    assert!(
        down.contains(&(
            "provisioner_unreachable".into(),
            AlertSeverity::Critical,
            "cluster".into()
        )),
        "{down:?}"
    );
}

/// Keeps the alert notices the control-planes push (support notices are not looked at here).
#[derive(Default)]
struct AlertInbox(Mutex<Vec<AlertNotice>>);

#[tonic::async_trait]
impl Notifier for AlertInbox {
    async fn notify(&self, _: &Notice) -> Result<(), String> {
        Ok(())
    }

    async fn alert(&self, n: &AlertNotice) -> Result<(), String> {
        self.0.lock().map_err(|e| e.to_string())?.push(n.clone());
        Ok(())
    }
}

impl AlertInbox {
    /// (event, kind, subject, severity) of every notice so far, in order.
    fn seen(&self) -> Vec<(AlertEvent, String, String, String)> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .map(|n| {
                (
                    n.event,
                    n.kind.clone(),
                    n.subject.clone(),
                    n.severity.clone(),
                )
            })
            .collect()
    }

    /// Waits until `n` notices have arrived; fails after 10 s.
    async fn wait_for(&self, n: usize) -> Vec<(AlertEvent, String, String, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} alert notices within 10 s, got {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Alerts are pushed to the notifier as they open, change severity and close, once each though
/// two control-planes evaluate them, and node alerts stay open while the cluster is unknown.
async fn alerts_are_pushed_when_they_open_and_close(backend: Backend) {
    const TICK: Duration = Duration::from_millis(50);
    let inbox = Arc::new(AlertInbox::default());
    let notifier: Arc<dyn Notifier> = inbox.clone();
    let idle = || cluster(10_000, 1_000_000, 0);
    let stack = start_with(backend, idle(), 2, move |config| {
        config.notifier = notifier.clone();
        config.alert_interval = TICK;
    })
    .await;
    let admin = stack.admin().await;
    let c = stack.customer().await;
    let opened = |kind: &str, subject: &str, severity: &str| {
        (
            AlertEvent::AlertOpened,
            kind.to_string(),
            subject.to_string(),
            severity.to_string(),
        )
    };
    let closed = |kind: &str, subject: &str, severity: &str| {
        (
            AlertEvent::AlertClosed,
            kind.to_string(),
            subject.to_string(),
            severity.to_string(),
        )
    };
    // Settled: several passes of both replicas with nothing to say.
    let settle = || tokio::time::sleep(TICK * 8);

    settle().await;
    assert_eq!(inbox.seen(), [], "nothing needs attention yet");

    // A node goes down.
    let mut cap = idle();
    cap.nodes.push(NodeCapacity {
        name: "node-b".into(),
        ready: false,
        schedulable: false,
        allocatable: amounts(4_000, 8_000, 110),
        requested: amounts(0, 0, 0),
    });
    stack.set_capacity(Some(cap.clone()));
    inbox.wait_for(1).await;
    settle().await;
    assert_eq!(
        inbox.seen(),
        [opened("node_not_ready", "node-b", "critical")]
    );

    // An instance fails.
    let a = stack.order(&c, "n8n").await;
    stack.wait_ready(&admin, 1).await;
    stack
        .report(&a, InstanceStatus::Failed, "Image pull failed")
        .await;
    inbox.wait_for(2).await;

    // The provisioner cannot be reached: that opens; the node's alert is unknown, not closed.
    stack.set_capacity(None);
    inbox.wait_for(3).await;
    settle().await;
    assert_eq!(
        inbox.seen(),
        [
            opened("node_not_ready", "node-b", "critical"),
            opened("instance_failed", &a, "critical"),
            opened("provisioner_unreachable", "cluster", "critical"),
        ]
    );

    // It answers again, the node is back and other pods grew: three closings, and capacity
    // opens as a warning (7,400m + the instance's of 10,000m: over 80% - 10), then turns
    // critical (8,500m + the instance's: over 80%).
    let mut cap = idle();
    cap.requested = amounts(7_400, 0, 3);
    stack.set_capacity(Some(cap.clone()));
    inbox.wait_for(5).await;
    settle().await;
    let mut seen = inbox.seen().split_off(3);
    seen.sort();
    let mut want = vec![
        opened("capacity_high", "cluster", "warning"),
        closed("node_not_ready", "node-b", "critical"),
        closed("provisioner_unreachable", "cluster", "critical"),
    ];
    want.sort();
    assert_eq!(seen, want);
    cap.requested = amounts(8_500, 0, 3);
    stack.set_capacity(Some(cap.clone()));
    inbox.wait_for(7).await;
    settle().await;
    let seen = inbox.seen();
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(seen[6], opened("capacity_high", "cluster", "critical"));

    // The instance recovers.
    stack.report(&a, InstanceStatus::Ready, "Running").await;
    inbox.wait_for(8).await;
    settle().await;
    let seen = inbox.seen();
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert_eq!(seen[7], closed("instance_failed", &a, "critical"));

    // Each notice has its own webhook id; a closing names when its alert opened.
    let all = inbox.0.lock().expect("lock").clone();
    let ids: HashSet<String> = all.iter().map(AlertNotice::id).collect();
    assert_eq!(ids.len(), all.len());
    let node_open = all
        .iter()
        .find(|n| n.kind == "node_not_ready" && n.event == AlertEvent::AlertOpened)
        .expect("opened");
    let node_closed = all
        .iter()
        .find(|n| n.kind == "node_not_ready" && n.event == AlertEvent::AlertClosed)
        .expect("closed");
    assert_eq!(node_open.opened_at, node_closed.opened_at);
    assert!(
        node_closed.message.contains("node-b"),
        "{}",
        node_closed.message
    );
}

async fn usage_is_the_owners(backend: Backend) {
    let stack = start(backend, cluster(10_000, 20_000, 0)).await;
    let admin = stack.admin().await;
    let owner = stack.customer().await;
    let other = stack.customer().await;
    let id = stack.order(&owner, "n8n").await;
    let usage = |p: &Principal, id: String| {
        let mut client = stack.instances();
        let req = signed(&stack.key, p, GetInstanceUsageRequest { instance_id: id });
        async move {
            client
                .get_instance_usage(req)
                .await
                .map(Response::into_inner)
        }
    };
    let mine = usage(&owner, id.clone()).await.expect("own usage");
    assert_eq!(mine.instance_id, id);
    assert_eq!(mine.cpu_millis, Some(42));
    let s = usage(&other, id.clone()).await.expect_err("not theirs");
    assert_eq!(s.code(), Code::NotFound);
    let s = usage(&owner, Uuid::new_v4().to_string())
        .await
        .expect_err("no such instance");
    assert_eq!(s.code(), Code::NotFound);
    // Operators see any instance's usage.
    let any = stack
        .admin_client()
        .get_instance_usage(signed(
            &stack.key,
            &admin,
            GetInstanceUsageRequest {
                instance_id: id.clone(),
            },
        ))
        .await
        .expect("admin usage")
        .into_inner();
    assert_eq!(any.memory_bytes, Some(100 * MIB));
}

kapal::on_both_backends!(
    customers_are_denied_every_admin_call,
    all_instances_filter_and_page,
    credential_reads_are_audited,
    checkout_stops_at_the_ceiling,
    concurrent_checkouts_fill_exactly,
    alerts_show_what_needs_attention,
    alerts_are_pushed_when_they_open_and_close,
    usage_is_the_owners,
    unknown_capacity_accepts_orders,
    no_audit_row_no_credentials,
);
