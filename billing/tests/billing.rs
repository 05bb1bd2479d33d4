//! Billing over a real socket, on SQLite and on PostgreSQL: `run` serves on 127.0.0.1:0 and the
//! generated clients call it with principals signed the way the gateway and the control-plane
//! sign them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use kapal::auth::{InternalKey, Principal, Role};
use kapal::catalog::Catalog;
use kapal::clock::ManualClock;
use kapal::db::{Db, DbConfig};
use kapal::proto::internal::v1::billing_service_client::BillingServiceClient;
use kapal::proto::internal::v1::{CreateSubscriptionRequest, CreateSubscriptionResponse};
use kapal::proto::v1 as pb;
use kapal::proto::v1::subscription_service_client::SubscriptionServiceClient;
use kapal::testing::Backend;
use kapal_billing::schema::{invoices, payments, subscription_events, subscriptions};
use kapal_billing::{
    ChargeRequest, Config, DummyProvider, PaymentError, PaymentProvider, PaymentReceipt,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
/// A channel whose calls are signed as the principal each request names
/// ([`kapal::auth::SignWith`]), for the method called, as the gateway signs them.
type Channel = InterceptedService<tonic::transport::Channel, kapal::auth::SignRequested>;
use tonic::{Code, Request};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// The dummy provider, counting every charge billing sends, optionally slow.
#[derive(Debug, Default)]
struct CountingProvider {
    inner: DummyProvider,
    charges: AtomicUsize,
    delay: Option<Duration>,
    /// When set, the first charge waits for this before it settles.
    hold_first: Option<Arc<tokio::sync::Notify>>,
    keys: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl PaymentProvider for CountingProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn charge(&self, request: ChargeRequest) -> Result<PaymentReceipt, PaymentError> {
        let earlier = self.charges.fetch_add(1, Ordering::SeqCst);
        self.keys
            .lock()
            .expect("keys lock")
            .push(request.idempotency_key.clone());
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        if let (Some(gate), 0) = (&self.hold_first, earlier) {
            gate.notified().await;
        }
        self.inner.charge(request).await
    }
}

impl CountingProvider {
    fn charges(&self) -> usize {
        self.charges.load(Ordering::SeqCst)
    }
}

/// One billing deployment: its database, key, clock and payment provider. Can be started,
/// stopped and started again on the same data.
struct Setup {
    db: DbConfig,
    key: InternalKey,
    clock: Arc<ManualClock>,
    provider: Arc<CountingProvider>,
    catalog: Arc<Catalog>,
    _dir: tempfile::TempDir,
}

/// 2025-01-31 10:00:00.123456 UTC: a month later is 2025-02-28.
fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 31, 10, 0, 0)
        .single()
        .expect("valid time")
        + chrono::Duration::microseconds(123_456)
}

impl Setup {
    async fn new(backend: Backend) -> Setup {
        Setup::with_provider(backend, CountingProvider::default()).await
    }

    async fn with_provider(backend: Backend, provider: CountingProvider) -> Setup {
        kapal::serve::init_tracing(false);
        let dir = tempfile::tempdir().expect("tempdir");
        let db = kapal::testing::db_config(backend, dir.path())
            .await
            .expect("test database");
        let catalog = Catalog::load(&kapal::catalog::repo_catalog_dir()).expect("catalog");
        Setup {
            db,
            key: InternalKey::random(),
            clock: ManualClock::new(start_time()),
            provider: Arc::new(provider),
            catalog: Arc::new(catalog),
            _dir: dir,
        }
    }

    async fn start(&self) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut config = Config::new(self.db.clone(), self.catalog.clone(), self.key.clone());
        config.clock = self.clock.clone();
        config.payments = self.provider.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(kapal_billing::run(config, listener, async {
            let _ = stopped.await;
        }));
        let channel = InterceptedService::new(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect_lazy(),
            kapal::auth::SignRequested,
        );
        Running {
            addr,
            key: self.key.clone(),
            channel,
            stop,
            task,
        }
    }

    /// A second connection to billing's database, to look at what the API does not show.
    async fn inspect(&self) -> Db {
        Db::connect(
            &self.db,
            kapal_billing::DB_NAME,
            kapal_billing::migrations(),
        )
        .await
        .expect("open billing's database")
    }
}

struct Running {
    addr: SocketAddr,
    key: InternalKey,
    channel: Channel,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("billing task")
            .expect("billing stops cleanly");
    }

    fn internal(&self) -> BillingServiceClient<Channel> {
        BillingServiceClient::new(self.channel.clone())
    }

    fn public(&self) -> SubscriptionServiceClient<Channel> {
        SubscriptionServiceClient::new(self.channel.clone())
    }

    fn signed<T>(&self, principal: &Principal, message: T) -> Request<T> {
        kapal::auth::SignWith::request(&self.key, principal, message)
    }

    /// CreateSubscription as the control-plane calls it.
    async fn create(
        &self,
        req: &CreateSubscriptionRequest,
    ) -> Result<CreateSubscriptionResponse, tonic::Status> {
        self.internal()
            .create_subscription(self.signed(&Principal::service(), req.clone()))
            .await
            .map(|r| r.into_inner())
    }

    async fn list_subscriptions(&self, who: &Principal) -> Vec<pb::Subscription> {
        self.public()
            .list_subscriptions(self.signed(who, pb::ListSubscriptionsRequest::default()))
            .await
            .expect("list subscriptions")
            .into_inner()
            .subscriptions
    }

    async fn get(&self, who: &Principal, id: &str) -> Result<pb::Subscription, tonic::Status> {
        let req = pb::GetSubscriptionRequest {
            subscription_id: id.to_string(),
        };
        self.public()
            .get_subscription(self.signed(who, req))
            .await
            .map(|r| r.into_inner())
    }

    async fn cancel(&self, who: &Principal, id: &str) -> Result<pb::Subscription, tonic::Status> {
        let req = pb::CancelSubscriptionRequest {
            subscription_id: id.to_string(),
        };
        self.public()
            .cancel_subscription(self.signed(who, req))
            .await
            .map(|r| r.into_inner())
    }

    async fn set_auto_renew(
        &self,
        who: &Principal,
        id: &str,
        on: bool,
    ) -> Result<pb::Subscription, tonic::Status> {
        let req = pb::SetAutoRenewRequest {
            subscription_id: id.to_string(),
            auto_renew: on,
        };
        self.public()
            .set_auto_renew(self.signed(who, req))
            .await
            .map(|r| r.into_inner())
    }

    async fn invoices(
        &self,
        who: &Principal,
        subscription_id: &str,
    ) -> Result<Vec<pb::Invoice>, tonic::Status> {
        let req = pb::ListInvoicesRequest {
            subscription_id: subscription_id.to_string(),
            ..Default::default()
        };
        self.public()
            .list_invoices(self.signed(who, req))
            .await
            .map(|r| r.into_inner().invoices)
    }
}

/// Opens `n` database connections in billing's pool (by `n` concurrent reads), so concurrent
/// calls in a test do not wait for PostgreSQL connections to be established one by one.
async fn warm_up(billing: &Arc<Running>, n: usize) {
    let reader = customer("cwarmup1");
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let billing = billing.clone();
            let reader = reader.clone();
            tokio::spawn(async move { billing.list_subscriptions(&reader).await })
        })
        .collect();
    for call in calls {
        call.await.expect("warm-up read");
    }
}

fn customer(name: &str) -> Principal {
    Principal {
        account_id: Uuid::new_v4(),
        customer_id: name.to_string(),
        role: Role::Customer,
        token_id: Uuid::new_v4(),
    }
}

fn order(who: &Principal, app: &str, plan: &str) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        order_id: Uuid::new_v4().to_string(),
        account_id: who.account_id.to_string(),
        app_id: app.to_string(),
        plan_id: plan.to_string(),
        instance_id: Uuid::new_v4().to_string(),
    }
}

fn ts(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

fn idr(amount: i64) -> Option<pb::Money> {
    Some(kapal::wire::idr(amount))
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code) -> tonic::Status {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
    }
}

/// Queries for looking into billing's tables (scoped: diesel-async's `load` would shadow
/// atomics' `load` elsewhere).
mod peek {
    pub use diesel::{ExpressionMethods as _, QueryDsl as _};
    pub use diesel_async::RunQueryDsl as _;
}

/// (from_status, to_status, cause) of a subscription's events, oldest first.
async fn events(db: &Db, subscription_id: &str) -> Vec<(Option<String>, String, String)> {
    use peek::*;
    let mut conn = db.get().await.expect("connection");
    kapal::db!(&mut conn, |c| {
        subscription_events::table
            .filter(subscription_events::subscription_id.eq(subscription_id))
            .order(subscription_events::id.asc())
            .select((
                subscription_events::from_status,
                subscription_events::to_status,
                subscription_events::cause,
            ))
            .load(c)
            .await
    })
    .expect("events")
}

/// (attempt, idempotency_key, status) of an invoice's payments, oldest first.
async fn payment_rows(db: &Db, invoice_id: &str) -> Vec<(i32, String, String)> {
    use peek::*;
    let mut conn = db.get().await.expect("connection");
    kapal::db!(&mut conn, |c| {
        payments::table
            .filter(payments::invoice_id.eq(invoice_id))
            .order(payments::attempt.asc())
            .select((
                payments::attempt,
                payments::idempotency_key,
                payments::status,
            ))
            .load(c)
            .await
    })
    .expect("payments")
}

/// Rows in (subscriptions, invoices, payments).
async fn counts(db: &Db) -> (i64, i64, i64) {
    use peek::*;
    let mut conn = db.get().await.expect("connection");
    kapal::db!(&mut conn, |c| {
        async {
            let s: i64 = subscriptions::table.count().get_result(c).await?;
            let i: i64 = invoices::table.count().get_result(c).await?;
            let p: i64 = payments::table.count().get_result(c).await?;
            Ok::<_, diesel::result::Error>((s, i, p))
        }
        .await
    })
    .expect("counts")
}

kapal::on_both_backends!(
    trial_checkout_settles_an_rp0_invoice,
    paid_plan_runs_a_month_and_invoice_numbers_are_sequential,
    retries_return_the_same_subscription_and_charge_once,
    concurrent_retries_create_one_subscription_and_charge_once,
    concurrent_retries_of_a_failing_payment_charge_once,
    a_charge_whose_lease_ran_out_is_taken_over_with_the_same_key,
    customers_only_see_and_change_their_own,
    callers_must_be_signed_and_in_the_right_role,
    bad_input_is_invalid_argument,
    failed_payment_is_charged_again_on_retry,
    cancel_and_auto_renew_change_how_it_ends,
    restart_loses_nothing,
    health_and_reflection_are_served,
);

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

async fn trial_checkout_settles_an_rp0_invoice(backend: Backend) {
    let setup = Setup::new(backend).await;
    let billing = setup.start().await;
    let alice = customer("calice01");
    let req = order(&alice, "n8n", "trial");

    let created = billing.create(&req).await.expect("trial checkout");

    let sub = created.subscription.expect("subscription");
    let trial_end = start_time() + chrono::Duration::days(14);
    assert_eq!(sub.status(), pb::SubscriptionStatus::Trialing);
    assert_eq!(
        (sub.app_id.as_str(), sub.plan_id.as_str()),
        ("n8n", "trial")
    );
    assert_eq!(sub.order_id, req.order_id);
    assert_eq!(sub.price, idr(0));
    assert_eq!(sub.created_at, ts(start_time()));
    assert_eq!(sub.current_period_start, ts(start_time()));
    assert_eq!(sub.current_period_end, ts(trial_end));
    assert_eq!(sub.trial_end, ts(trial_end));
    assert!(!sub.auto_renew, "a trial does not renew by itself");
    assert!(!sub.cancel_at_period_end);
    Uuid::parse_str(&sub.id).expect("subscription id is a UUID");

    let invoice = created.invoice.expect("invoice");
    assert_eq!(invoice.number, "KPL-000001");
    assert_eq!(invoice.subscription_id, sub.id);
    assert_eq!(invoice.amount, idr(0));
    assert_eq!(invoice.status(), pb::InvoiceStatus::Paid);
    assert_eq!(invoice.payment_provider, "dummy");
    assert!(
        invoice.payment_reference.starts_with("dummy-"),
        "{}",
        invoice.payment_reference
    );
    assert_eq!(invoice.period_start, sub.current_period_start);
    assert_eq!(invoice.period_end, sub.current_period_end);
    assert_eq!(invoice.paid_at, ts(start_time()));
    assert_eq!(setup.provider.charges(), 1);

    // The customer sees exactly this.
    assert_eq!(billing.list_subscriptions(&alice).await, vec![sub.clone()]);
    assert_eq!(billing.get(&alice, &sub.id).await.expect("get"), sub);
    assert_eq!(
        billing.invoices(&alice, "").await.expect("invoices"),
        vec![invoice.clone()]
    );
    assert_eq!(
        billing
            .invoices(&alice, &sub.id)
            .await
            .expect("invoices of the subscription"),
        vec![invoice.clone()]
    );

    // Every transition is on record, and the charge carried the invoice's idempotency key.
    let db = setup.inspect().await;
    let history = events(&db, &sub.id).await;
    let statuses: Vec<_> = history
        .iter()
        .map(|(f, t, _)| (f.as_deref(), t.as_str()))
        .collect();
    assert_eq!(
        statuses,
        vec![(None, "incomplete"), (Some("incomplete"), "trialing")]
    );
    assert!(history[0].2.contains(&req.order_id), "{:?}", history[0]);
    assert!(history[1].2.contains("KPL-000001"), "{:?}", history[1]);
    let key = format!("kapal-invoice-{}", invoice.id);
    assert_eq!(
        payment_rows(&db, &invoice.id).await,
        vec![(1, key.clone(), "succeeded".to_string())]
    );
    assert_eq!(*setup.provider.keys.lock().expect("keys"), vec![key]);

    billing.stop().await;
}

async fn paid_plan_runs_a_month_and_invoice_numbers_are_sequential(backend: Backend) {
    let setup = Setup::new(backend).await;
    let billing = setup.start().await;
    let alice = customer("calice01");
    let bob = customer("cbob0001");

    let first = billing
        .create(&order(&alice, "n8n", "starter"))
        .await
        .expect("paid checkout");
    let sub = first.subscription.expect("subscription");
    assert_eq!(sub.status(), pb::SubscriptionStatus::Active);
    assert_eq!(sub.price, idr(79_000));
    assert_eq!(sub.trial_end, None);
    assert!(sub.auto_renew);
    assert_eq!(sub.current_period_start, ts(start_time()));
    // One calendar month from 31 January is the end of February.
    let feb_28 = Utc
        .with_ymd_and_hms(2025, 2, 28, 10, 0, 0)
        .single()
        .expect("valid time")
        + chrono::Duration::microseconds(123_456);
    assert_eq!(sub.current_period_end, ts(feb_28));
    let invoice = first.invoice.expect("invoice");
    assert_eq!(invoice.number, "KPL-000001");
    assert_eq!(invoice.amount, idr(79_000));
    assert_eq!(invoice.status(), pb::InvoiceStatus::Paid);

    setup.clock.advance(chrono::Duration::minutes(1));
    let second = billing
        .create(&order(&bob, "ghost", "trial"))
        .await
        .expect("bob's trial");
    assert_eq!(second.invoice.expect("invoice").number, "KPL-000002");

    setup.clock.advance(chrono::Duration::minutes(1));
    let third = billing
        .create(&order(&alice, "wordpress", "pro"))
        .await
        .expect("alice's second");
    let third_invoice = third.invoice.expect("invoice");
    assert_eq!(third_invoice.number, "KPL-000003");
    assert_eq!(third_invoice.amount, idr(169_000));

    // Newest first, and only alice's.
    let alice_subs = billing.list_subscriptions(&alice).await;
    let plans: Vec<_> = alice_subs
        .iter()
        .map(|s| format!("{}/{}", s.app_id, s.plan_id))
        .collect();
    assert_eq!(plans, vec!["wordpress/pro", "n8n/starter"]);
    let numbers: Vec<_> = billing
        .invoices(&alice, "")
        .await
        .expect("invoices")
        .into_iter()
        .map(|i| i.number)
        .collect();
    assert_eq!(numbers, vec!["KPL-000003", "KPL-000001"]);

    let db = setup.inspect().await;
    let statuses: Vec<_> = events(&db, &sub.id)
        .await
        .into_iter()
        .map(|(f, t, _)| (f, t))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (None, "incomplete".to_string()),
            (Some("incomplete".to_string()), "active".to_string())
        ]
    );
    billing.stop().await;
}

async fn retries_return_the_same_subscription_and_charge_once(backend: Backend) {
    let setup = Setup::new(backend).await;
    let billing = setup.start().await;
    let alice = customer("calice01");
    let req = order(&alice, "ghost", "trial");

    let first = billing.create(&req).await.expect("first call");
    setup.clock.advance(chrono::Duration::seconds(30));
    let again = billing.create(&req).await.expect("retry");
    assert_eq!(
        again, first,
        "a retry returns the same subscription and invoice"
    );
    assert_eq!(setup.provider.charges(), 1);

    // The same order id with other details is a conflict, not a second subscription.
    let other_plan = CreateSubscriptionRequest {
        plan_id: "pro".to_string(),
        ..req.clone()
    };
    let status = assert_code(billing.create(&other_plan).await, Code::AlreadyExists);
    assert!(
        status.message().contains(&req.order_id),
        "{}",
        status.message()
    );
    let other_account = CreateSubscriptionRequest {
        account_id: Uuid::new_v4().to_string(),
        ..req.clone()
    };
    assert_code(billing.create(&other_account).await, Code::AlreadyExists);

    assert_eq!(billing.list_subscriptions(&alice).await.len(), 1);
    assert_eq!(
        billing.invoices(&alice, "").await.expect("invoices").len(),
        1
    );
    assert_eq!(counts(&setup.inspect().await).await, (1, 1, 1));
    assert_eq!(setup.provider.charges(), 1);
    billing.stop().await;
}

async fn concurrent_retries_create_one_subscription_and_charge_once(backend: Backend) {
    // A slow provider keeps the first charge running while the other calls arrive.
    let provider = CountingProvider {
        delay: Some(Duration::from_millis(300)),
        ..CountingProvider::default()
    };
    let setup = Setup::with_provider(backend, provider).await;
    let billing = Arc::new(setup.start().await);
    let alice = customer("calice01");
    let req = order(&alice, "n8n", "starter");
    warm_up(&billing, 10).await;

    let calls: Vec<_> = (0..10)
        .map(|_| {
            let billing = billing.clone();
            let req = req.clone();
            tokio::spawn(async move { billing.create(&req).await })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.expect("task").expect("every call succeeds"));
    }
    let first = results[0].clone();
    assert!(results.iter().all(|r| *r == first), "{results:#?}");
    let sub = first.subscription.expect("subscription");
    assert_eq!(sub.status(), pb::SubscriptionStatus::Active);
    assert_eq!(first.invoice.expect("invoice").number, "KPL-000001");
    assert_eq!(setup.provider.charges(), 1, "charged exactly once");

    assert_eq!(billing.list_subscriptions(&alice).await, vec![sub]);
    assert_eq!(
        billing.invoices(&alice, "").await.expect("invoices").len(),
        1
    );
    assert_eq!(counts(&setup.inspect().await).await, (1, 1, 1));
    Arc::into_inner(billing).expect("last handle").stop().await;
}

async fn concurrent_retries_of_a_failing_payment_charge_once(backend: Backend) {
    // While one call's charge is failing, the others wait for it and report its failure
    // instead of charging again.
    let provider = CountingProvider {
        inner: DummyProvider::failing(),
        delay: Some(Duration::from_millis(1500)),
        ..CountingProvider::default()
    };
    let setup = Setup::with_provider(backend, provider).await;
    let billing = Arc::new(setup.start().await);
    let alice = customer("calice01");
    let req = order(&alice, "ghost", "starter");
    warm_up(&billing, 10).await;

    let calls: Vec<_> = (0..10)
        .map(|_| {
            let billing = billing.clone();
            let req = req.clone();
            tokio::spawn(async move { billing.create(&req).await })
        })
        .collect();
    for call in calls {
        let status = assert_code(call.await.expect("task"), Code::FailedPrecondition);
        assert!(
            status.message().starts_with("payment failed: "),
            "{}",
            status.message()
        );
    }
    assert_eq!(setup.provider.charges(), 1);
    assert_eq!(counts(&setup.inspect().await).await, (1, 1, 1));
    Arc::into_inner(billing).expect("last handle").stop().await;
}

async fn a_charge_whose_lease_ran_out_is_taken_over_with_the_same_key(backend: Backend) {
    // The first charge hangs (as if its process died mid-call); after the lease has run out
    // a retry charges again with the same idempotency key, and the provider settles it once.
    let gate = Arc::new(tokio::sync::Notify::new());
    let provider = CountingProvider {
        hold_first: Some(gate.clone()),
        ..CountingProvider::default()
    };
    let setup = Setup::with_provider(backend, provider).await;
    let billing = Arc::new(setup.start().await);
    let alice = customer("calice01");
    let req = order(&alice, "wordpress", "starter");

    let hung = {
        let billing = billing.clone();
        let req = req.clone();
        tokio::spawn(async move { billing.create(&req).await })
    };
    while setup.provider.charges() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    setup.clock.advance(chrono::Duration::minutes(3));
    let taken_over = billing
        .create(&req)
        .await
        .expect("retry after the lease ran out");
    assert_eq!(
        taken_over
            .subscription
            .as_ref()
            .expect("subscription")
            .status(),
        pb::SubscriptionStatus::Active
    );
    let invoice = taken_over.invoice.clone().expect("invoice");
    assert_eq!(invoice.status(), pb::InvoiceStatus::Paid);
    assert_eq!(setup.provider.charges(), 2);

    // The hung charge comes back with the provider's answer to the same key.
    gate.notify_one();
    let late = hung.await.expect("task").expect("the hung call completes");
    assert_eq!(late, taken_over);

    let db = setup.inspect().await;
    let key = format!("kapal-invoice-{}", invoice.id);
    assert_eq!(
        payment_rows(&db, &invoice.id).await,
        vec![
            (1, key.clone(), "duplicate".to_string()),
            (2, key.clone(), "succeeded".to_string()),
        ]
    );
    assert_eq!(counts(&db).await, (1, 1, 2));
    Arc::into_inner(billing).expect("last handle").stop().await;
}

async fn customers_only_see_and_change_their_own(backend: Backend) {
    let setup = Setup::new(backend).await;
    let billing = setup.start().await;
    let alice = customer("calice01");
    let bob = customer("cbob0001");
    let created = billing
        .create(&order(&alice, "n8n", "starter"))
        .await
        .expect("alice's subscription");
    let sub = created.subscription.expect("subscription");

    assert_code(billing.get(&bob, &sub.id).await, Code::NotFound);
    assert_code(billing.cancel(&bob, &sub.id).await, Code::NotFound);
    assert_code(
        billing.set_auto_renew(&bob, &sub.id, false).await,
        Code::NotFound,
    );
    assert_code(billing.invoices(&bob, &sub.id).await, Code::NotFound);
    assert!(billing.list_subscriptions(&bob).await.is_empty());
    assert!(
        billing
            .invoices(&bob, "")
            .await
            .expect("bob's invoices")
            .is_empty()
    );

    // An id that exists nowhere is NOT_FOUND too.
    let nowhere = Uuid::new_v4().to_string();
    assert_code(billing.get(&alice, &nowhere).await, Code::NotFound);
    assert_code(billing.cancel(&alice, &nowhere).await, Code::NotFound);

    // Bob's attempts changed nothing.
    assert_eq!(billing.get(&alice, &sub.id).await.expect("alice's"), sub);
    let db = setup.inspect().await;
    assert_eq!(events(&db, &sub.id).await.len(), 2);
    billing.stop().await;
}

async fn callers_must_be_signed_and_in_the_right_role(backend: Backend) {
    let setup = Setup::new(backend).await;
    let billing = setup.start().await;
    let alice = customer("calice01");
    let req = order(&alice, "n8n", "trial");

    // No identity at all.
    let unsigned = billing.internal().create_subscription(req.clone()).await;
    assert_code(unsigned, Code::Unauthenticated);
    let unsigned = billing
        .public()
        .list_subscriptions(pb::ListSubscriptionsRequest::default())
        .await;
    assert_code(unsigned, Code::Unauthenticated);
    // An identity signed with another deployment's key.
    let forged =
        kapal::auth::SignWith::request(&InternalKey::random(), &Principal::service(), req.clone());
    assert_code(
        billing.internal().create_subscription(forged).await,
        Code::Unauthenticated,
    );

    // A customer may not call the internal service, a service may not act as a customer.
    let as_customer = billing.signed(&alice, req.clone());
    assert_code(
        billing.internal().create_subscription(as_customer).await,
        Code::PermissionDenied,
    );
    let as_service = billing.signed(
        &Principal::service(),
        pb::ListSubscriptionsRequest::default(),
    );
    assert_code(
        billing.public().list_subscriptions(as_service).await,
        Code::PermissionDenied,
    );

    assert_eq!(setup.provider.charges(), 0);
    assert_eq!(counts(&setup.inspect().await).await, (0, 0, 0));
    billing.stop().await;
}

async fn bad_input_is_invalid_argument(backend: Backend) {
    let setup = Setup::new(backend).await;
    let billing = setup.start().await;
    let alice = customer("calice01");
    let good = order(&alice, "n8n", "trial");

    let cases = [
        (
            CreateSubscriptionRequest {
                plan_id: "platinum".into(),
                ..good.clone()
            },
            "plan_id",
        ),
        (
            CreateSubscriptionRequest {
                app_id: "minecraft".into(),
                ..good.clone()
            },
            "app_id",
        ),
        (
            CreateSubscriptionRequest {
                order_id: "order-1".into(),
                ..good.clone()
            },
            "order_id",
        ),
        (
            CreateSubscriptionRequest {
                account_id: String::new(),
                ..good.clone()
            },
            "account_id",
        ),
        (
            CreateSubscriptionRequest {
                instance_id: "not-a-uuid".into(),
                ..good.clone()
            },
            "instance_id",
        ),
        (
            CreateSubscriptionRequest {
                plan_id: "  ".into(),
                ..good.clone()
            },
            "plan_id",
        ),
    ];
    for (req, field) in cases {
        let status = assert_code(billing.create(&req).await, Code::InvalidArgument);
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let status = assert_code(billing.get(&alice, "42").await, Code::InvalidArgument);
    assert!(
        status.message().contains("subscription_id"),
        "{}",
        status.message()
    );
    assert_code(billing.cancel(&alice, "").await, Code::InvalidArgument);
    assert_code(
        billing.set_auto_renew(&alice, "x", true).await,
        Code::InvalidArgument,
    );
    assert_code(
        billing.invoices(&alice, "nope").await,
        Code::InvalidArgument,
    );

    assert_eq!(setup.provider.charges(), 0);
    assert_eq!(counts(&setup.inspect().await).await, (0, 0, 0));
    billing.stop().await;
}

async fn failed_payment_is_charged_again_on_retry(backend: Backend) {
    let provider = CountingProvider {
        inner: DummyProvider::failing(),
        ..CountingProvider::default()
    };
    let setup = Setup::with_provider(backend, provider).await;
    let billing = setup.start().await;
    let alice = customer("calice01");
    let req = order(&alice, "n8n", "pro");

    for _ in 0..2 {
        let status = assert_code(billing.create(&req).await, Code::FailedPrecondition);
        assert!(
            status.message().starts_with("payment failed: declined: "),
            "{}",
            status.message()
        );
    }
    assert_eq!(setup.provider.charges(), 2);
    // Nothing half-made is shown to the customer.
    assert!(billing.list_subscriptions(&alice).await.is_empty());
    assert!(
        billing
            .invoices(&alice, "")
            .await
            .expect("invoices")
            .is_empty()
    );

    setup.provider.inner.set_fail(false);
    setup.clock.advance(chrono::Duration::minutes(5));
    let created = billing
        .create(&req)
        .await
        .expect("retry after the provider recovered");
    let sub = created.subscription.expect("subscription");
    let invoice = created.invoice.expect("invoice");
    assert_eq!(sub.status(), pb::SubscriptionStatus::Active);
    assert_eq!(sub.created_at, ts(start_time()), "the same subscription");
    assert_eq!(
        invoice.number, "KPL-000001",
        "the same invoice, charged again"
    );
    assert_eq!(invoice.status(), pb::InvoiceStatus::Paid);
    assert_eq!(invoice.amount, idr(189_000));
    assert_eq!(setup.provider.charges(), 3);

    // Three attempts, one idempotency key.
    let db = setup.inspect().await;
    let key = format!("kapal-invoice-{}", invoice.id);
    assert_eq!(
        payment_rows(&db, &invoice.id).await,
        vec![
            (1, key.clone(), "failed".to_string()),
            (2, key.clone(), "failed".to_string()),
            (3, key.clone(), "succeeded".to_string()),
        ]
    );
    assert!(
        setup
            .provider
            .keys
            .lock()
            .expect("keys")
            .iter()
            .all(|k| *k == key)
    );
    let statuses: Vec<_> = events(&db, &sub.id)
        .await
        .into_iter()
        .map(|(_, t, _)| t)
        .collect();
    assert_eq!(statuses, vec!["incomplete", "active"]);
    assert_eq!(counts(&db).await, (1, 1, 3));

    // Once paid, a retry does not charge again; the next order gets the next number.
    assert_eq!(
        billing.create(&req).await.expect("retry").invoice,
        Some(invoice)
    );
    assert_eq!(setup.provider.charges(), 3);
    let next = billing
        .create(&order(&alice, "ghost", "trial"))
        .await
        .expect("next order");
    assert_eq!(next.invoice.expect("invoice").number, "KPL-000002");
    billing.stop().await;
}

async fn cancel_and_auto_renew_change_how_it_ends(backend: Backend) {
    let setup = Setup::new(backend).await;
    let billing = setup.start().await;
    let alice = customer("calice01");
    let paid = billing
        .create(&order(&alice, "ghost", "starter"))
        .await
        .expect("paid")
        .subscription
        .expect("subscription");
    assert!(paid.auto_renew && !paid.cancel_at_period_end);

    setup.clock.advance(chrono::Duration::days(3));
    let cancelled = billing.cancel(&alice, &paid.id).await.expect("cancel");
    assert!(cancelled.cancel_at_period_end);
    assert!(!cancelled.auto_renew);
    assert_eq!(
        cancelled.status(),
        pb::SubscriptionStatus::Active,
        "runs to period end"
    );
    assert_eq!(cancelled.current_period_end, paid.current_period_end);
    assert_eq!(billing.get(&alice, &paid.id).await.expect("get"), cancelled);
    // Cancelling again changes nothing.
    assert_eq!(
        billing.cancel(&alice, &paid.id).await.expect("again"),
        cancelled
    );

    let resumed = billing
        .set_auto_renew(&alice, &paid.id, true)
        .await
        .expect("auto-renew on");
    assert!(resumed.auto_renew);
    assert!(
        !resumed.cancel_at_period_end,
        "turning auto-renew on withdraws the cancellation"
    );
    let off = billing
        .set_auto_renew(&alice, &paid.id, false)
        .await
        .expect("auto-renew off");
    assert!(!off.auto_renew && !off.cancel_at_period_end);
    assert_eq!(billing.get(&alice, &paid.id).await.expect("get"), off);

    let db = setup.inspect().await;
    let history = events(&db, &paid.id).await;
    assert_eq!(history.len(), 5, "{history:#?}");
    for (from, to, _) in &history[2..] {
        assert_eq!((from.as_deref(), to.as_str()), (Some("active"), "active"));
    }
    assert!(history[2].2.contains("cancel"), "{:?}", history[2]);
    assert!(history[3].2.contains("withdrawn"), "{:?}", history[3]);
    assert!(history[4].2.contains("turned off"), "{:?}", history[4]);

    // A trial never renews by itself, but it can be cancelled.
    let trial = billing
        .create(&order(&alice, "n8n", "trial"))
        .await
        .expect("trial")
        .subscription
        .expect("subscription");
    let status = assert_code(
        billing.set_auto_renew(&alice, &trial.id, true).await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("trial"), "{}", status.message());
    let cancelled = billing
        .cancel(&alice, &trial.id)
        .await
        .expect("cancel trial");
    assert!(cancelled.cancel_at_period_end);
    assert_eq!(cancelled.status(), pb::SubscriptionStatus::Trialing);
    billing.stop().await;
}

async fn restart_loses_nothing(backend: Backend) {
    let setup = Setup::new(backend).await;
    let alice = customer("calice01");
    let bob = customer("cbob0001");
    let first_order = order(&alice, "n8n", "trial");

    let billing = setup.start().await;
    let first = billing.create(&first_order).await.expect("first");
    setup.clock.advance(chrono::Duration::hours(1));
    let second = billing
        .create(&order(&bob, "wordpress", "starter"))
        .await
        .expect("second");
    let bob_sub = second.subscription.clone().expect("subscription");
    billing.cancel(&bob, &bob_sub.id).await.expect("cancel");
    let alice_before = billing.list_subscriptions(&alice).await;
    let bob_before = billing.list_subscriptions(&bob).await;
    let alice_invoices = billing.invoices(&alice, "").await.expect("invoices");
    let bob_invoices = billing.invoices(&bob, "").await.expect("invoices");
    billing.stop().await;

    let billing = setup.start().await;
    assert_eq!(billing.list_subscriptions(&alice).await, alice_before);
    assert_eq!(billing.list_subscriptions(&bob).await, bob_before);
    assert!(bob_before[0].cancel_at_period_end);
    assert_eq!(
        billing.invoices(&alice, "").await.expect("invoices"),
        alice_invoices
    );
    assert_eq!(
        billing.invoices(&bob, "").await.expect("invoices"),
        bob_invoices
    );
    // A retry after the restart is still the same subscription, not charged again.
    assert_eq!(billing.create(&first_order).await.expect("retry"), first);
    assert_eq!(setup.provider.charges(), 2);
    // The invoice counter carries on.
    let third = billing
        .create(&order(&alice, "ghost", "trial"))
        .await
        .expect("third");
    assert_eq!(third.invoice.expect("invoice").number, "KPL-000003");
    billing.stop().await;
}

async fn health_and_reflection_are_served(backend: Backend) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let setup = Setup::new(backend).await;
    let billing = setup.start().await;
    let mut health = HealthClient::new(billing.channel.clone());
    for service in [
        "kapal.internal.v1.BillingService",
        "kapal.v1.SubscriptionService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service}");
    }

    let mut reflection = ServerReflectionClient::new(billing.channel.clone());
    let request = ServerReflectionRequest {
        host: billing.addr.ip().to_string(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection answer")
        .expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "kapal.internal.v1.BillingService",
        "kapal.v1.SubscriptionService",
    ] {
        assert!(names.iter().any(|n| n == service), "{service} in {names:?}");
    }
    billing.stop().await;
}
