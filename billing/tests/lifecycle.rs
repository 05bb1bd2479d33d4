//! The subscription lifecycle under the scheduler, on SQLite and PostgreSQL: one customer's
//! whole story through the public API, then a simulation of many customers over many days
//! with random renewals, cancellations, plan changes, payment failures and reactivations,
//! checking the invariants after every simulated day; two schedulers against one database; a
//! scheduler stopped for a week that catches up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDateTime, TimeZone as _, Utc};
use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use futures::StreamExt as _;
use kapal::auth::{InternalKey, Principal, Role};
use kapal::catalog::Catalog;
use kapal::clock::ManualClock;
use kapal::db::{Db, DbConfig};
use kapal::proto::internal::v1::CreateSubscriptionRequest;
use kapal::proto::internal::v1::billing_service_client::BillingServiceClient;
use kapal::proto::v1 as pb;
use kapal::proto::v1::subscription_service_client::SubscriptionServiceClient;
use kapal::testing::Backend;
use kapal_billing::lifecycle::{Entitlement, SubscriptionStatus};
use kapal_billing::scheduler::{Scheduler, Settings};
use kapal_billing::schema::{
    entitlement_outbox, invoices, payments, subscription_events, subscription_schedule,
    subscriptions,
};
use kapal_billing::{ChargeRequest, Config, PaymentError, PaymentProvider, PaymentReceipt};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// A payment provider that declines the accounts it is told to, and counts what it settles.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Ledger {
    failing: HashSet<Uuid>,
    /// Settled charges by idempotency key: (receipt, amount).
    settled: HashMap<String, (PaymentReceipt, i64)>,
    /// How many times money moved for a key (must never exceed 1).
    moved: HashMap<String, usize>,
    calls: usize,
}

#[derive(Debug, Default)]
struct Provider(Mutex<Ledger>);

impl Provider {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_failing(&self, account: Uuid, failing: bool) {
        let mut ledger = self.ledger();
        if failing {
            ledger.failing.insert(account);
        } else {
            ledger.failing.remove(&account);
        }
    }
}

#[async_trait::async_trait]
impl PaymentProvider for Provider {
    fn name(&self) -> &str {
        "dummy"
    }

    async fn charge(&self, request: ChargeRequest) -> Result<PaymentReceipt, PaymentError> {
        let mut ledger = self.ledger();
        ledger.calls += 1;
        if let Some((receipt, _)) = ledger.settled.get(&request.idempotency_key) {
            return Ok(receipt.clone());
        }
        if ledger.failing.contains(&request.account_id) {
            return Err(PaymentError::Declined("insufficient balance".to_string()));
        }
        let receipt = PaymentReceipt {
            provider: "dummy".to_string(),
            reference: format!("dummy-{}", Uuid::new_v4()),
        };
        *ledger
            .moved
            .entry(request.idempotency_key.clone())
            .or_default() += 1;
        ledger
            .settled
            .insert(request.idempotency_key, (receipt.clone(), request.amount));
        Ok(receipt)
    }
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 9, 0, 0)
        .single()
        .expect("valid time")
}

fn settings() -> Settings {
    Settings {
        concurrency: 8,
        ..Settings::default()
    }
}

struct Billing {
    db: DbConfig,
    key: InternalKey,
    clock: Arc<ManualClock>,
    provider: Arc<Provider>,
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    inspect: Db,
    _dir: tempfile::TempDir,
}

impl Billing {
    async fn start(backend: Backend) -> Billing {
        kapal::serve::init_tracing(false);
        let dir = tempfile::tempdir().expect("tempdir");
        let db = kapal::testing::db_config(backend, dir.path())
            .await
            .expect("test database");
        let catalog =
            Arc::new(Catalog::load(&kapal::catalog::repo_catalog_dir()).expect("catalog"));
        let key = InternalKey::random();
        let clock = ManualClock::new(start_time());
        let provider = Arc::new(Provider::default());
        let mut config = Config::new(db.clone(), catalog, key.clone());
        config.clock = clock.clone();
        config.payments = provider.clone();
        // The tests tick themselves.
        config.scheduler_interval = None;
        // Migrations first, so the server and the extra connections do not race on them.
        let inspect = Db::connect(&db, kapal_billing::DB_NAME, kapal_billing::migrations())
            .await
            .expect("open billing's database");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(kapal_billing::run(config, listener, async {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy();
        Billing {
            db,
            key,
            clock,
            provider,
            channel,
            stop: Some(stop),
            task: Some(task),
            inspect,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("billing task").expect("billing stops");
        }
    }

    /// A scheduler of its own (own connection pool), like another replica.
    async fn scheduler(&self) -> Scheduler {
        let db = Db::connect(
            &self.db,
            kapal_billing::DB_NAME,
            kapal_billing::migrations(),
        )
        .await
        .expect("open billing's database");
        Scheduler::new(db, self.clock.clone(), self.provider.clone(), settings())
    }

    fn signed<T>(&self, principal: &Principal, message: T) -> Request<T> {
        let mut req = Request::new(message);
        self.key.sign_into(principal, req.metadata_mut());
        req
    }

    fn public(&self) -> SubscriptionServiceClient<Channel> {
        SubscriptionServiceClient::new(self.channel.clone())
    }

    async fn create(&self, account: Uuid, order: Uuid, app: &str, plan: &str) -> pb::Subscription {
        BillingServiceClient::new(self.channel.clone())
            .create_subscription(self.signed(
                &Principal::service(),
                CreateSubscriptionRequest {
                    order_id: order.to_string(),
                    account_id: account.to_string(),
                    app_id: app.to_string(),
                    plan_id: plan.to_string(),
                    instance_id: Uuid::from_u128(order.as_u128() ^ 1).to_string(),
                },
            ))
            .await
            .expect("create subscription")
            .into_inner()
            .subscription
            .expect("subscription")
    }

    async fn get(&self, who: &Principal, id: &str) -> Result<pb::Subscription, tonic::Status> {
        self.public()
            .get_subscription(self.signed(
                who,
                pb::GetSubscriptionRequest {
                    subscription_id: id.to_string(),
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    async fn change_plan(
        &self,
        who: &Principal,
        id: &str,
        plan: &str,
    ) -> Result<pb::Subscription, tonic::Status> {
        self.public()
            .change_plan(self.signed(
                who,
                pb::ChangePlanRequest {
                    subscription_id: id.to_string(),
                    plan_id: plan.to_string(),
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    async fn cancel(&self, who: &Principal, id: &str) -> Result<pb::Subscription, tonic::Status> {
        self.public()
            .cancel_subscription(self.signed(
                who,
                pb::CancelSubscriptionRequest {
                    subscription_id: id.to_string(),
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    async fn auto_renew(
        &self,
        who: &Principal,
        id: &str,
        on: bool,
    ) -> Result<pb::Subscription, tonic::Status> {
        self.public()
            .set_auto_renew(self.signed(
                who,
                pb::SetAutoRenewRequest {
                    subscription_id: id.to_string(),
                    auto_renew: on,
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    async fn events(
        &self,
        who: &Principal,
        id: &str,
    ) -> Result<Vec<pb::SubscriptionEvent>, tonic::Status> {
        self.public()
            .list_subscription_events(self.signed(
                who,
                pb::ListSubscriptionEventsRequest {
                    subscription_id: id.to_string(),
                },
            ))
            .await
            .map(|r| r.into_inner().events)
    }
}

fn customer(account: Uuid) -> Principal {
    Principal {
        account_id: account,
        customer_id: format!("c{}", &account.simple().to_string()[..8]),
        role: Role::Customer,
        token_id: Uuid::nil(),
    }
}

fn status(s: &pb::Subscription) -> pb::SubscriptionStatus {
    pb::SubscriptionStatus::try_from(s.status).expect("known status")
}

const DAY: chrono::Duration = chrono::Duration::days(1);

/// Ticks every scheduler at the clock's time, concurrently.
async fn tick(schedulers: &[Scheduler], clock: &ManualClock) {
    use kapal::clock::Clock as _;
    let now = clock.now();
    let reports = futures::future::join_all(schedulers.iter().map(|s| s.tick(now))).await;
    for report in reports {
        let report = report.expect("tick");
        assert_eq!(report.failed, 0, "{report:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// One customer's story
// ---------------------------------------------------------------------------------------------

async fn one_customers_story(backend: Backend) {
    let billing = Billing::start(backend).await;
    let scheduler = billing.scheduler().await;
    let account = Uuid::new_v4();
    let me = customer(account);
    let other = customer(Uuid::new_v4());
    let trial = billing
        .create(account, Uuid::new_v4(), "n8n", "trial")
        .await;
    assert_eq!(status(&trial), pb::SubscriptionStatus::Trialing);

    // Bad plan changes, and someone else's subscription.
    let err = billing
        .change_plan(&me, &trial.id, "gold")
        .await
        .expect_err("unknown plan");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("starter"), "{}", err.message());
    let err = billing
        .change_plan(&me, &trial.id, "trial")
        .await
        .expect_err("trial is not a paid plan");
    assert_eq!(err.code(), Code::InvalidArgument);
    for err in [
        billing.change_plan(&other, &trial.id, "starter").await,
        billing.get(&other, &trial.id).await,
    ] {
        assert_eq!(err.expect_err("not theirs").code(), Code::NotFound);
    }
    assert_eq!(
        billing
            .events(&other, &trial.id)
            .await
            .expect_err("not theirs")
            .code(),
        Code::NotFound
    );

    // Converting the trial: the paid plan is charged at the end of the trial.
    let converted = billing
        .change_plan(&me, &trial.id, "starter")
        .await
        .expect("convert");
    assert_eq!(converted.next_plan_id, "starter");
    assert!(converted.auto_renew);
    billing
        .clock
        .advance(chrono::Duration::days(14) + chrono::Duration::hours(1));
    tick(std::slice::from_ref(&scheduler), &billing.clock).await;
    let sub = billing.get(&me, &trial.id).await.expect("get");
    assert_eq!(status(&sub), pb::SubscriptionStatus::Active);
    assert_eq!(sub.plan_id, "starter");
    assert_eq!(sub.next_plan_id, "");
    assert_eq!(sub.price.as_ref().map(|m| m.amount), Some(79_000));

    // The next renewal fails: grace (instance keeps running), then suspension.
    billing.provider.set_failing(account, true);
    billing.clock.advance(chrono::Duration::days(31));
    tick(std::slice::from_ref(&scheduler), &billing.clock).await;
    let sub = billing.get(&me, &trial.id).await.expect("get");
    assert_eq!(status(&sub), pb::SubscriptionStatus::PastDue);
    billing.clock.advance(chrono::Duration::days(3));
    tick(std::slice::from_ref(&scheduler), &billing.clock).await;
    let sub = billing.get(&me, &trial.id).await.expect("get");
    assert_eq!(status(&sub), pb::SubscriptionStatus::Suspended);

    // Paying while suspended reactivates it (the next daily retry).
    billing.provider.set_failing(account, false);
    billing.clock.advance(DAY);
    tick(std::slice::from_ref(&scheduler), &billing.clock).await;
    let sub = billing.get(&me, &trial.id).await.expect("get");
    assert_eq!(status(&sub), pb::SubscriptionStatus::Active);

    // Cancel at period end: it runs until then, then ends; clean-up after retention.
    let cancelled = billing.cancel(&me, &trial.id).await.expect("cancel");
    assert!(cancelled.cancel_at_period_end);
    assert_eq!(status(&cancelled), pb::SubscriptionStatus::Active);
    billing.clock.advance(chrono::Duration::days(40));
    tick(std::slice::from_ref(&scheduler), &billing.clock).await;
    let sub = billing.get(&me, &trial.id).await.expect("get");
    assert_eq!(status(&sub), pb::SubscriptionStatus::Canceled);

    let events = billing.events(&me, &trial.id).await.expect("events");
    use pb::SubscriptionStatus as S;
    let changes: Vec<(S, S)> = events
        .iter()
        .map(|e| {
            (
                S::try_from(e.from_status).expect("status"),
                S::try_from(e.to_status).expect("status"),
            )
        })
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changes,
        vec![
            (S::Unspecified, S::Trialing),
            (S::Trialing, S::Active),
            (S::Active, S::PastDue),
            (S::PastDue, S::Suspended),
            (S::Suspended, S::Active),
            (S::Active, S::Canceled),
        ],
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e.at.is_some() && !e.cause.is_empty()));
    assert!(
        events
            .iter()
            .any(|e| e.cause.contains("retention period over")),
        "{events:#?}"
    );
    // The instance was suspended, resumed, suspended at the end and deleted after retention.
    let outbox: Vec<String> = {
        let mut conn = billing.inspect.get().await.expect("conn");
        kapal::db!(&mut conn, |c| {
            entitlement_outbox::table
                .filter(entitlement_outbox::subscription_id.eq(&trial.id))
                .order(entitlement_outbox::id.asc())
                .select(entitlement_outbox::entitlement)
                .load(c)
                .await
        })
        .expect("outbox")
    };
    assert_eq!(outbox, ["suspended", "active", "suspended", "expired"]);
    // An ended subscription cannot change plan.
    assert_eq!(
        billing
            .change_plan(&me, &trial.id, "pro")
            .await
            .expect_err("ended")
            .code(),
        Code::FailedPrecondition
    );

    // A trial that is not converted expires at its end.
    let lapsed = billing
        .create(account, Uuid::new_v4(), "ghost", "trial")
        .await;
    billing.clock.advance(chrono::Duration::days(15));
    tick(std::slice::from_ref(&scheduler), &billing.clock).await;
    let sub = billing.get(&me, &lapsed.id).await.expect("get");
    assert_eq!(status(&sub), pb::SubscriptionStatus::Expired);
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_customers_story_sqlite() {
    one_customers_story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_customers_story_postgres() {
    one_customers_story(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// The simulation
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Sim {
    customers: usize,
    days: u32,
    seed: u64,
    schedulers: usize,
    /// Days on which no scheduler runs (and customers and payments are left alone), e.g. a
    /// week of downtime.
    down: std::ops::Range<u32>,
    /// The scheduler runs on the `down` days all the same (only customers rest).
    tick_while_down: bool,
    check_every_day: bool,
}

/// Everything the scheduler did, per customer, in a form that does not depend on which
/// replica did it or in which order subscriptions were processed.
type Summary = BTreeMap<usize, String>;

async fn simulate(backend: Backend, sim: Sim) -> Summary {
    let billing = Billing::start(backend).await;
    let mut schedulers = Vec::new();
    for _ in 0..sim.schedulers {
        schedulers.push(billing.scheduler().await);
    }
    let mut rng = StdRng::seed_from_u64(sim.seed);
    let apps = ["n8n", "ghost", "wordpress"];
    let paid = ["starter", "pro"];

    // Customers, created concurrently: 60% start on a trial, the others on a paid plan.
    let plans: Vec<(Uuid, Uuid, &str, &str)> = (0..sim.customers)
        .map(|i| {
            let account = Uuid::from_u128((u128::from(sim.seed) << 64) | (i as u128 * 2 + 1));
            let order = Uuid::from_u128((u128::from(sim.seed) << 64) | (i as u128 * 2 + 2) << 16);
            let app = apps[rng.random_range(0..apps.len())];
            let plan = if rng.random_bool(0.6) {
                "trial"
            } else {
                paid[rng.random_range(0..paid.len())]
            };
            (account, order, app, plan)
        })
        .collect();
    let subs: Vec<String> = futures::stream::iter(plans.iter())
        .map(|&(account, order, app, plan)| {
            let billing = &billing;
            async move { billing.create(account, order, app, plan).await.id }
        })
        .buffered(16)
        .collect()
        .await;
    let index: HashMap<String, usize> = subs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), i))
        .collect();

    for day in 0..sim.days {
        let down = sim.down.contains(&day);
        // Customers also rest on the day the scheduler comes back, until it has caught up.
        let resting = down || (day == sim.down.end && !sim.down.is_empty());
        // Every customer draws the same number of random numbers every day, so runs with
        // the same seed act the same whatever the state.
        let mut actions = Vec::new();
        for (i, &(account, _, _, _)) in plans.iter().enumerate() {
            let draw: [f64; 2] = [rng.random(), rng.random()];
            let plan = paid[rng.random_range(0..paid.len())];
            if resting {
                continue;
            }
            // Payment failures: 2% of the accounts start failing each day, 25% recover.
            if draw[0] < 0.02 {
                billing.provider.set_failing(account, true);
            } else if draw[0] > 0.75 {
                billing.provider.set_failing(account, false);
            }
            let action = if draw[1] < 0.01 {
                Some("cancel")
            } else if draw[1] < 0.02 {
                Some("auto-renew off")
            } else if draw[1] < 0.04 {
                Some("auto-renew on")
            } else if draw[1] < 0.12 && plans[i].3 == "trial" {
                Some("convert")
            } else if draw[1] < 0.125 {
                Some("change plan")
            } else {
                None
            };
            if let Some(action) = action {
                actions.push((i, action, plan));
            }
        }
        futures::stream::iter(actions)
            .map(|(i, action, plan)| {
                let billing = &billing;
                let who = customer(plans[i].0);
                let id = subs[i].clone();
                async move {
                    let result = match action {
                        "cancel" => billing.cancel(&who, &id).await,
                        "auto-renew off" => billing.auto_renew(&who, &id, false).await,
                        "auto-renew on" => billing.auto_renew(&who, &id, true).await,
                        _ => billing.change_plan(&who, &id, plan).await,
                    };
                    if let Err(e) = result {
                        // Ended subscriptions and trials refuse some changes; nothing else
                        // may fail.
                        assert_eq!(e.code(), Code::FailedPrecondition, "{action}: {e:?}");
                    }
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        billing.clock.advance(DAY);
        if !down || sim.tick_while_down {
            tick(&schedulers, &billing.clock).await;
            if sim.check_every_day {
                check_invariants(&billing).await;
            }
        }
    }
    check_invariants(&billing).await;
    let summary = summarize(&billing, &index).await;
    billing.stop().await;
    summary
}

/// The invariants that must hold whenever the scheduler has caught up.
async fn check_invariants(billing: &Billing) {
    use kapal::clock::Clock as _;
    let now = billing.clock.now().naive_utc();
    let retention = settings().retention;
    let mut conn = billing.inspect.get().await.expect("conn");
    type SubRow = (String, String, NaiveDateTime, NaiveDateTime);
    type SchedRow = (
        String,
        Option<NaiveDateTime>,
        Option<NaiveDateTime>,
        Option<NaiveDateTime>,
    );
    type InvoiceRow = (String, String, NaiveDateTime, NaiveDateTime, i64, String);
    type State = (
        Vec<SubRow>,
        Vec<SchedRow>,
        Vec<(String, String)>,
        Vec<InvoiceRow>,
    );
    let (subs, scheds, outbox, all_invoices): State = kapal::db!(&mut conn, |c| {
        async {
            let subs = subscriptions::table
                .select((
                    subscriptions::id,
                    subscriptions::status,
                    subscriptions::current_period_start,
                    subscriptions::current_period_end,
                ))
                .load(c)
                .await?;
            let scheds = subscription_schedule::table
                .select((
                    subscription_schedule::subscription_id,
                    subscription_schedule::deadline,
                    subscription_schedule::ended_at,
                    subscription_schedule::cleaned_up_at,
                ))
                .load(c)
                .await?;
            let outbox = entitlement_outbox::table
                .order(entitlement_outbox::id.asc())
                .select((
                    entitlement_outbox::subscription_id,
                    entitlement_outbox::entitlement,
                ))
                .load(c)
                .await?;
            let all_invoices = invoices::table
                .select((
                    invoices::id,
                    invoices::subscription_id,
                    invoices::period_start,
                    invoices::period_end,
                    invoices::amount,
                    invoices::status,
                ))
                .load(c)
                .await?;
            Ok::<_, diesel::result::Error>((subs, scheds, outbox, all_invoices))
        }
        .await
    })
    .expect("load state");
    drop(conn);

    let scheds: HashMap<&str, &SchedRow> = scheds.iter().map(|s| (s.0.as_str(), s)).collect();
    let mut history: HashMap<&str, Vec<Entitlement>> = HashMap::new();
    for (sub, e) in &outbox {
        history
            .entry(sub.as_str())
            .or_default()
            .push(Entitlement::parse(e).expect("known entitlement"));
    }
    // Every billed period has exactly one invoice.
    let mut periods: HashMap<(&str, NaiveDateTime), usize> = HashMap::new();
    for inv in &all_invoices {
        *periods.entry((inv.1.as_str(), inv.2)).or_default() += 1;
    }
    assert!(
        periods.values().all(|&n| n == 1),
        "a period has two invoices"
    );
    let paid: HashSet<(&str, NaiveDateTime, NaiveDateTime)> = all_invoices
        .iter()
        .filter(|i| i.5 == "paid")
        .map(|i| (i.1.as_str(), i.2, i.3))
        .collect();

    for (id, status, start, end) in &subs {
        let status = SubscriptionStatus::parse(status).expect("status");
        let sched = scheds.get(id.as_str()).expect("schedule");
        let cleaned = sched.3.is_some();
        let seen = history.get(id.as_str()).cloned().unwrap_or_default();
        let entitlement = seen.last().copied().unwrap_or(Entitlement::Active);
        assert_eq!(
            entitlement,
            Entitlement::of(status, cleaned),
            "subscription {id} is {status}, its instance {entitlement:?}"
        );
        use SubscriptionStatus::*;
        match status {
            Trialing | Active => {
                assert!(*end > now, "{id} is {status} but its period ended at {end}");
                assert!(
                    paid.contains(&(id.as_str(), *start, *end)),
                    "{id} is {status} without a paid invoice for {start}..{end}"
                );
            }
            PastDue => {
                let grace_end = sched.1.expect("deadline");
                assert!(grace_end > now, "{id} runs past its grace period");
            }
            Suspended => {
                assert!(sched.1.expect("deadline") > now, "{id} suspended too long");
            }
            Expired | Canceled => {
                let ended = sched.2.expect("ended_at");
                assert!(
                    seen.contains(&Entitlement::Suspended),
                    "{id} ended without suspending its instance"
                );
                if now >= ended + retention {
                    assert!(cleaned, "{id} ended at {ended} and was not cleaned up");
                    assert_eq!(seen.last(), Some(&Entitlement::Expired));
                }
            }
            Incomplete => {}
        }
    }

    // No double charge: money moved at most once per invoice, exactly for the paid ones,
    // and the amounts match.
    let ledger = billing.provider.ledger();
    assert!(
        ledger.moved.values().all(|&n| n == 1),
        "an invoice was charged twice"
    );
    let paid_invoices: HashMap<String, i64> = all_invoices
        .iter()
        .filter(|i| i.5 == "paid")
        .map(|i| (format!("kapal-invoice-{}", i.0), i.4))
        .collect();
    let settled: HashMap<String, i64> = ledger
        .settled
        .iter()
        .map(|(k, (_, amount))| (k.clone(), *amount))
        .collect();
    assert_eq!(
        settled, paid_invoices,
        "settled charges differ from paid invoices"
    );
}

/// Per customer: status, plan, period, invoices, payment attempts and events, without ids,
/// invoice numbers or processing times.
async fn summarize(billing: &Billing, index: &HashMap<String, usize>) -> Summary {
    let mut conn = billing.inspect.get().await.expect("conn");
    type Ev = (String, NaiveDateTime, Option<String>, String, String);
    type All = (
        Vec<(String, String, String, NaiveDateTime)>,
        Vec<(String, NaiveDateTime, i64, String)>,
        Vec<Ev>,
        Vec<(String, String)>,
    );
    let (subs, invs, events, attempts): All = kapal::db!(&mut conn, |c| {
        async {
            let subs = subscriptions::table
                .select((
                    subscriptions::id,
                    subscriptions::status,
                    subscriptions::plan_id,
                    subscriptions::current_period_end,
                ))
                .load(c)
                .await?;
            let invs = invoices::table
                .order(invoices::period_start.asc())
                .select((
                    invoices::subscription_id,
                    invoices::period_start,
                    invoices::amount,
                    invoices::status,
                ))
                .load(c)
                .await?;
            let events = subscription_events::table
                .order(subscription_events::id.asc())
                .select((
                    subscription_events::subscription_id,
                    subscription_events::at,
                    subscription_events::from_status,
                    subscription_events::to_status,
                    subscription_events::cause,
                ))
                .load(c)
                .await?;
            let attempts = payments::table
                .inner_join(invoices::table)
                .select((invoices::subscription_id, payments::status))
                .load(c)
                .await?;
            Ok::<_, diesel::result::Error>((subs, invs, events, attempts))
        }
        .await
    })
    .expect("load summary");
    let number = regex_lite_invoice_numbers;
    let mut out: BTreeMap<usize, String> = BTreeMap::new();
    for (id, status, plan, end) in subs {
        out.insert(index[&id], format!("{status} {plan} until {end}\n"));
    }
    for (sub, start, amount, status) in invs {
        if let Some(s) = out.get_mut(&index[&sub]) {
            s.push_str(&format!("  invoice {start} {amount} {status}\n"));
        }
    }
    let mut per_sub: HashMap<String, BTreeMap<String, usize>> = HashMap::new();
    for (sub, status) in attempts {
        *per_sub.entry(sub).or_default().entry(status).or_default() += 1;
    }
    for (sub, counts) in per_sub {
        if let Some(s) = out.get_mut(&index[&sub]) {
            s.push_str(&format!("  payments {counts:?}\n"));
        }
    }
    for (sub, at, from, to, cause) in events {
        if let Some(s) = out.get_mut(&index[&sub]) {
            s.push_str(&format!("  {at} {from:?}->{to}: {}\n", number(&cause)));
        }
    }
    out
}

/// The cause without invoice numbers (which depend on the order subscriptions were processed).
fn regex_lite_invoice_numbers(cause: &str) -> String {
    let mut out = String::with_capacity(cause.len());
    let mut rest = cause;
    while let Some(at) = rest.find("KPL-") {
        out.push_str(&rest[..at]);
        out.push_str("KPL-#");
        rest = rest[at + 4..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

fn big(seed: u64) -> Sim {
    Sim {
        customers: 1000,
        days: 90,
        seed,
        schedulers: 1,
        down: 0..0,
        tick_while_down: false,
        check_every_day: true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn simulation_sqlite() {
    let summary = simulate(Backend::Sqlite, big(1)).await;
    assert_eq!(summary.len(), 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn simulation_postgres() {
    let summary = simulate(Backend::Postgres, big(2)).await;
    assert_eq!(summary.len(), 1000);
}

fn small(seed: u64) -> Sim {
    Sim {
        customers: 200,
        days: 75,
        seed,
        schedulers: 1,
        down: 0..0,
        tick_while_down: false,
        check_every_day: true,
    }
}

async fn two_schedulers_act_as_one(backend: Backend) {
    let one = simulate(backend, small(3)).await;
    let two = simulate(
        backend,
        Sim {
            schedulers: 2,
            ..small(3)
        },
    )
    .await;
    assert_same(&one, &two);
}

async fn a_stopped_scheduler_catches_up(backend: Backend) {
    // Both runs leave customers and payments alone during days 30..37; in one of them no
    // scheduler runs then either, and it catches up on day 37.
    let quiet = Sim {
        down: 30..37,
        ..small(4)
    };
    let always = simulate(
        backend,
        Sim {
            tick_while_down: true,
            ..quiet.clone()
        },
    )
    .await;
    let caught_up = simulate(backend, quiet).await;
    assert_same(&always, &caught_up);
}

fn assert_same(a: &Summary, b: &Summary) {
    assert_eq!(a.len(), b.len());
    for (i, s) in a {
        assert_eq!(Some(s), b.get(i), "customer {i} differs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_schedulers_act_as_one_sqlite() {
    two_schedulers_act_as_one(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_schedulers_act_as_one_postgres() {
    two_schedulers_act_as_one(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_scheduler_catches_up_sqlite() {
    a_stopped_scheduler_catches_up(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_scheduler_catches_up_postgres() {
    a_stopped_scheduler_catches_up(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// Notifications to a signed webhook
// ---------------------------------------------------------------------------------------------

type Received = Arc<Mutex<Vec<(Option<String>, Vec<u8>)>>>;

async fn hook(
    axum::extract::State(received): axum::extract::State<Received>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> &'static str {
    let signature = headers
        .get(kapal_billing::notify::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    received
        .lock()
        .expect("received")
        .push((signature, body.to_vec()));
    "ok"
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_reach_a_signed_webhook() {
    use kapal_billing::notify::{WebhookNotifier, signature};
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route("/hooks/kapal", axum::routing::post(hook))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let secret = b"a webhook secret of some length";
    let billing = Billing::start(Backend::Sqlite).await;
    let webhook =
        WebhookNotifier::new(&format!("http://{addr}/hooks/kapal"), secret).expect("webhook");
    let scheduler = billing.scheduler().await.with_notifier(Arc::new(webhook));
    let account = Uuid::new_v4();
    let sub = billing
        .create(account, Uuid::new_v4(), "ghost", "starter")
        .await;
    billing.provider.set_failing(account, true);
    billing.clock.advance(chrono::Duration::days(32));
    tick(std::slice::from_ref(&scheduler), &billing.clock).await; // renewal fails
    billing.clock.advance(chrono::Duration::days(3));
    tick(std::slice::from_ref(&scheduler), &billing.clock).await; // retries fail, suspended

    let received = received.lock().expect("received").clone();
    let kinds: Vec<String> = received
        .iter()
        .map(|(sig, body)| {
            assert_eq!(sig.as_deref(), Some(signature(secret, body).as_str()));
            assert_ne!(
                sig.as_deref(),
                Some(signature(b"another secret, not ours", body).as_str())
            );
            let json: serde_json::Value = serde_json::from_slice(body).expect("json");
            assert_eq!(json["subscription_id"], sub.id.as_str());
            assert_eq!(json["account_id"], account.to_string().as_str());
            json["kind"].as_str().expect("kind").to_string()
        })
        .collect();
    // The failed renewal, the failed daily retries, the suspension at the end of grace.
    assert_eq!(kinds[0], "payment_failed", "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "suspended"), "{kinds:?}");
    assert!(
        kinds
            .iter()
            .all(|k| k == "payment_failed" || k == "suspended"),
        "{kinds:?}"
    );
    assert!(WebhookNotifier::new("https://example.com", secret).is_err());
    assert!(WebhookNotifier::new(&format!("http://{addr}/"), b"short").is_err());
    billing.stop().await;
}
