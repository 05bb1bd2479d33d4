//! The scenarios of BENCHMARKS.md.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use kapal::auth::{Principal, Role};
use kapal::proto::v1::instance_service_client::InstanceServiceClient;
use kapal::proto::v1::{
    Account, CheckoutRequest, GetInstanceRequest, InstanceActionRequest, InstanceStatus,
    ListAppsRequest, ListInstancesRequest, SignUpRequest,
};
use kapal::testing::Backend;
use kapal_tests::app::{Clients, watch_until};
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::clients::{self, SignAs};
use crate::echo::sample_instance;
use crate::load::{self, LoadSpec, LoadSummary};
use crate::procstat::{Memory, Sample};
use crate::report::{Measurement, Report};
use crate::seed;
use crate::server::{EchoServer, KapalServer};
use crate::stack::Stack;

/// Settings of a run (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrency: usize,
    pub open_workers: usize,
    pub connections: usize,
    pub rate: f64,
    pub orders: usize,
    pub checkout_orders: usize,
    pub instances: u32,
    pub kapal_bin: PathBuf,
}

pub struct Bench {
    pub settings: Settings,
    pub report: Report,
    /// Start-up and idle RSS of the echo baseline, for the memory scenario's ratios.
    echo_idle: Option<(Duration, f64)>,
}

/// Records a load of one RPC: every worker takes a client (round robin over `$clients`) and a
/// clone of `$data`, and each call sends the request built by `$req` (which may use `$d`, the
/// data).
macro_rules! rpc_load {
    ($bench:expr, $m:expr, $spec:expr, $pid:expr, $clients:expr, $data:expr,
     |$d:ident| $method:ident($req:expr)) => {{
        let clients = &$clients;
        let data = &$data;
        $bench
            .measure($m, $spec, $pid, |w| {
                let client = clients[w % clients.len()].clone();
                #[allow(unused_variables)]
                let $d = data.clone();
                move |_: u64| {
                    let mut client = client.clone();
                    #[allow(unused_variables)]
                    let req = $req;
                    async move { client.$method(req).await.map(|_| ()) }
                }
            })
            .await
    }};
}

pub fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// The page token that starts after the first `skip` of the caller's instances.
async fn last_page_token(
    client: &kapal::proto::v1::instance_service_client::InstanceServiceClient<
        kapal_tests::app::Authed<Channel>,
    >,
    skip: u32,
) -> anyhow::Result<String> {
    let mut client = client.clone();
    let (mut token, mut done) = (String::new(), 0u32);
    while done < skip {
        let page = client
            .list_instances(ListInstancesRequest {
                page_size: (skip - done).min(500),
                page_token: token.clone(),
            })
            .await
            .context("paging to the last page")?
            .into_inner();
        anyhow::ensure!(!page.instances.is_empty(), "fewer instances than {skip}");
        done += page.instances.len() as u32;
        token = page.next_page_token;
    }
    Ok(token)
}

/// A signed-up customer.
#[derive(Clone)]
pub struct Customer {
    pub token: String,
    pub account: Account,
}

async fn signup(channel: &Channel, name: &str) -> anyhow::Result<Customer> {
    let email = format!(
        "{name}-{}@bench.example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    signup_as(channel, name, email).await
}

async fn signup_as(channel: &Channel, name: &str, email: String) -> anyhow::Result<Customer> {
    let session = clients::grpc(channel, "")
        .accounts
        .sign_up(SignUpRequest {
            email,
            password: "correct horse battery 42".into(),
            display_name: name.into(),
        })
        .await
        .context("sign-up")?
        .into_inner();
    Ok(Customer {
        token: session.token,
        account: session.account.context("sign-up returned no account")?,
    })
}

async fn signup_many(channel: &Channel, prefix: &str, n: usize) -> anyhow::Result<Vec<Customer>> {
    futures::stream::iter(0..n)
        .map(|i| {
            let channel = channel.clone();
            async move { signup(&channel, &format!("{prefix}{i}")).await }
        })
        .buffer_unordered(4)
        .try_collect()
        .await
}

fn idempotency_key() -> String {
    format!("bench-{}", uuid::Uuid::new_v4().simple())
}

fn checkout_request(key: &str) -> CheckoutRequest {
    CheckoutRequest {
        app_id: "n8n".into(),
        plan_id: "trial".into(),
        idempotency_key: key.into(),
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Deletes instances through the API and waits until each is DELETED (or gone); returns how
/// long that took. Frees the local cluster's capacity for the next scenario.
async fn delete_all(
    gateway: &Channel,
    owned: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    futures::stream::iter(owned.iter().cloned())
        .map(|(token, id)| {
            let mut c = clients::grpc(gateway, &token).instances;
            async move {
                let _ = c
                    .delete_instance(InstanceActionRequest { instance_id: id })
                    .await;
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let mut pending: Vec<(String, String)> = owned.to_vec();
    while !pending.is_empty() {
        anyhow::ensure!(
            started.elapsed() < timeout,
            "{} instances not deleted within {timeout:?}",
            pending.len()
        );
        let mut still = Vec::new();
        for (token, id) in pending {
            let mut c = clients::grpc(gateway, &token).instances;
            match c
                .get_instance(GetInstanceRequest {
                    instance_id: id.clone(),
                })
                .await
            {
                Ok(i) if i.get_ref().status == InstanceStatus::Deleted as i32 => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                _ => still.push((token, id)),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(started.elapsed())
}

impl Bench {
    pub fn new(settings: Settings, report: Report) -> Bench {
        Bench {
            settings,
            report,
            echo_idle: None,
        }
    }

    fn spec_max(&self) -> LoadSpec {
        LoadSpec {
            concurrency: self.settings.concurrency,
            rate: None,
            duration: self.settings.duration,
            warmup: self.settings.warmup,
            max_requests: None,
        }
    }

    fn spec_rate(&self) -> LoadSpec {
        LoadSpec {
            concurrency: self.settings.open_workers,
            rate: Some(self.settings.rate),
            duration: self.settings.duration,
            warmup: self.settings.warmup,
            max_requests: None,
        }
    }

    /// Runs a load, samples CPU across its recorded phase and memory after it, records it.
    async fn measure<W, F, Fut>(
        &mut self,
        m: Measurement,
        spec: &LoadSpec,
        pid: Option<u32>,
        make_worker: W,
    ) -> LoadSummary
    where
        W: Fn(usize) -> F,
        F: FnMut(u64) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
    {
        let (result, before) = load::run(spec, make_worker, || Sample::take(pid)).await;
        let cpu = Sample::take(pid).since(&before);
        let summary = result.summary(spec);
        let mut m = m;
        m.load = Some(summary.clone());
        m.cpu = Some(cpu);
        m.memory = pid.map(Memory::of);
        self.report.add(m);
        summary
    }

    /// 1. The echo baseline over gRPC and grpc-web, at the target rate and at full speed.
    pub async fn baseline(&mut self) -> anyhow::Result<()> {
        eprintln!("== baseline: bare tonic echo server");
        let echo = EchoServer::start(true).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = Memory::of(echo.pid);
        self.echo_idle = Some((echo.startup, idle.rss_mib));
        self.report.add(
            Measurement::new("baseline", "echo server start-up and idle memory")
                .figure("startup_ms", echo.startup.as_secs_f64() * 1000.0)
                .figure("idle_rss_mib", idle.rss_mib),
        );
        let pid = Some(echo.pid);
        let grpc: Vec<InstanceServiceClient<Channel>> =
            clients::channels(echo.addr, self.settings.connections)?
                .into_iter()
                .map(InstanceServiceClient::new)
                .collect();
        let web = vec![clients::grpc_web(echo.addr, "")?.instances];
        let id = "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5e".to_string();
        for spec in [self.spec_rate(), self.spec_max()] {
            let s = rpc_load!(
                self,
                Measurement::new("baseline", "GetInstance echo").transport("grpc"),
                &spec,
                pid,
                grpc,
                id,
                |d| get_instance(GetInstanceRequest {
                    instance_id: d.clone()
                })
            );
            self.report.set_baseline("grpc", &s);
            let s = rpc_load!(
                self,
                Measurement::new("baseline", "GetInstance echo").transport("grpc-web"),
                &spec,
                pid,
                web,
                id,
                |d| get_instance(GetInstanceRequest {
                    instance_id: d.clone()
                })
            );
            self.report.set_baseline("grpc-web", &s);
        }
        let size = prost::Message::encoded_len(&sample_instance(&id));
        self.report
            .settings
            .insert("echo_response_bytes".into(), size.to_string());
        echo.stop().await;

        // The same echo with Nagle's algorithm left on, as Kapal's servers accept connections
        // today (kapal::serve::serve and the gateway hand tonic a listener): what that costs.
        let echo = EchoServer::start(false).await?;
        let grpc: Vec<InstanceServiceClient<Channel>> =
            clients::channels(echo.addr, self.settings.connections)?
                .into_iter()
                .map(InstanceServiceClient::new)
                .collect();
        for spec in [self.spec_rate(), self.spec_max()] {
            rpc_load!(
                self,
                Measurement::new("baseline", "GetInstance echo, no TCP_NODELAY").transport("grpc"),
                &spec,
                Some(echo.pid),
                grpc,
                id,
                |d| get_instance(GetInstanceRequest {
                    instance_id: d.clone()
                })
            );
        }
        echo.stop().await;
        Ok(())
    }

    /// 7 (first half). Start-up to the first answered ListApps, and idle memory and CPU.
    pub async fn memory_idle(&mut self, server: &KapalServer) {
        let b = backend_name(server.backend);
        eprintln!("== memory [{b}]: start-up and idle");
        let before = Sample::take(Some(server.pid));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cpu = Sample::take(Some(server.pid)).since(&before);
        let mem = Memory::of(server.pid);
        let startup_ms = server.startup.as_secs_f64() * 1000.0;
        let mut m = Measurement::new("memory", "kapal server start-up (new data) and idle")
            .backend(Some(b))
            .figure("startup_ms", startup_ms)
            .figure("idle_rss_mib", mem.rss_mib)
            .figure("idle_cpu_cores", cpu.server);
        if let Some((echo_startup, echo_rss)) = self.echo_idle {
            m.vs_baseline.insert(
                "startup".into(),
                startup_ms / (echo_startup.as_secs_f64() * 1000.0),
            );
            m.vs_baseline
                .insert("idle_rss".into(), mem.rss_mib / echo_rss.max(0.001));
            m.baseline = Some("echo server start-up and idle RSS".into());
        }
        let vs_rss = self
            .echo_idle
            .map(|(_, r)| format!("{:.1}x the echo server's {r:.1} MiB", mem.rss_mib / r));
        let vs_start = self.echo_idle.map(|(s, _)| {
            format!(
                "{:.1}x the echo server's {:.0} ms",
                server.startup.as_secs_f64() / s.as_secs_f64(),
                s.as_secs_f64() * 1000.0
            )
        });
        self.report.add(m);
        let mb = mem.rss_mib * 1.048_576;
        self.report.target(
            &format!("kapal server idle resident memory [{b}]"),
            "< 150 MB",
            format!("{mb:.1} MB ({:.1} MiB)", mem.rss_mib),
            mb < 150.0,
            vs_rss,
        );
        self.report.target(
            &format!("kapal server start-up, new data dir [{b}]"),
            "< 1 s",
            format!("{startup_ms:.0} ms"),
            startup_ms < 1000.0,
            vs_start,
        );
    }

    /// 7 (second half). Memory after a load (and after every earlier scenario), and the
    /// start-up of a restart on existing data.
    pub async fn memory_loaded(&mut self, server: &mut KapalServer) -> anyhow::Result<()> {
        let b = backend_name(server.backend);
        eprintln!("== memory [{b}]: under load and restart");
        let pid = Some(server.pid);
        let catalog: Vec<_> = clients::channels(server.gateway, self.settings.connections)?
            .iter()
            .map(|c| clients::grpc(c, "").catalog)
            .collect();
        let spec = self.spec_max();
        rpc_load!(
            self,
            Measurement::new("memory", "ListApps via gateway (anonymous)")
                .backend(Some(b))
                .transport("grpc"),
            &spec,
            pid,
            catalog,
            (),
            |d| list_apps(ListAppsRequest {})
        );
        let loaded = Memory::of(server.pid);
        let restart = server.restart().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after_restart = Memory::of(server.pid);
        let mut m = Measurement::new("memory", "kapal server after load, and restart")
            .backend(Some(b))
            .figure("rss_after_load_mib", loaded.rss_mib)
            .figure("peak_rss_mib", loaded.peak_rss_mib)
            .figure("restart_startup_ms", restart.as_secs_f64() * 1000.0)
            .figure("rss_after_restart_mib", after_restart.rss_mib);
        if let Some((_, echo_rss)) = self.echo_idle {
            m.vs_baseline
                .insert("peak_rss".into(), loaded.peak_rss_mib / echo_rss.max(0.001));
            m.baseline = Some("echo server idle RSS".into());
        }
        self.report.add(m);
        Ok(())
    }

    /// Scenario 2: GetInstance of a provisioned instance, straight to the control-plane,
    /// through the gateway over gRPC and over grpc-web.
    pub async fn read(&mut self, server: &KapalServer) -> anyhow::Result<()> {
        let b = backend_name(server.backend);
        eprintln!("== read [{b}]: GetInstance");
        let pid = Some(server.pid);
        let gw = clients::channels(server.gateway, self.settings.connections)?;
        let customer = signup(&gw[0], "reader").await?;
        let c = clients::grpc(&gw[0], &customer.token);
        let order = c
            .orders
            .clone()
            .checkout(checkout_request(&idempotency_key()))
            .await?
            .into_inner();
        anyhow::ensure!(
            !order.instance_id.is_empty(),
            "order not completed: {order:?}"
        );
        let id = order.instance_id.clone();
        watch_until(
            &mut c.instances.clone(),
            &id,
            InstanceStatus::Ready,
            Duration::from_secs(180),
        )
        .await?;

        let principal = Principal {
            account_id: uuid::Uuid::parse_str(&customer.account.id)?,
            customer_id: customer.account.customer_id.clone(),
            role: Role::Customer,
            token_id: uuid::Uuid::nil(),
        };
        let direct: Vec<_> = clients::channels(server.control_plane, self.settings.connections)?
            .into_iter()
            .map(|ch| {
                InstanceServiceClient::new(InterceptedService::new(
                    ch,
                    SignAs {
                        key: server.key.clone(),
                        principal: principal.clone(),
                    },
                ))
            })
            .collect();
        let via_grpc: Vec<_> = gw
            .iter()
            .map(|ch| clients::grpc(ch, &customer.token).instances)
            .collect();
        let via_web = vec![clients::grpc_web(server.gateway, &customer.token)?.instances];

        for spec in [self.spec_rate(), self.spec_max()] {
            rpc_load!(
                self,
                Measurement::new("read", "GetInstance direct to control-plane")
                    .backend(Some(b))
                    .transport("grpc"),
                &spec,
                pid,
                direct,
                id,
                |d| get_instance(GetInstanceRequest {
                    instance_id: d.clone()
                })
            );
            let gw_grpc = rpc_load!(
                self,
                Measurement::new("read", "GetInstance via gateway")
                    .backend(Some(b))
                    .transport("grpc"),
                &spec,
                pid,
                via_grpc,
                id,
                |d| get_instance(GetInstanceRequest {
                    instance_id: d.clone()
                })
            );
            rpc_load!(
                self,
                Measurement::new("read", "GetInstance via gateway")
                    .backend(Some(b))
                    .transport("grpc-web"),
                &spec,
                pid,
                via_web,
                id,
                |d| get_instance(GetInstanceRequest {
                    instance_id: d.clone()
                })
            );
            let errors: u64 = gw_grpc.errors.values().sum();
            match spec.rate {
                Some(rate) => {
                    let base = self.report.baseline("grpc", &gw_grpc.mode).cloned();
                    self.report.target(
                        &format!("GetInstance via gateway, p99 at {rate:.0}/s [{b}]"),
                        "p99 < 10 ms at 1,000/s",
                        format!(
                            "p99 {:.2} ms at {:.0}/s, {errors} errors",
                            gw_grpc.p99_ms, gw_grpc.throughput
                        ),
                        gw_grpc.p99_ms < 10.0 && errors == 0 && gw_grpc.throughput >= 0.95 * rate,
                        base.map(|e| {
                            format!(
                                "{:.1}x the echo's p99 of {:.2} ms",
                                gw_grpc.p99_ms / e.p99_ms,
                                e.p99_ms
                            )
                        }),
                    );
                }
                None => {
                    if let Some(e) = self.report.baseline("grpc", "max").cloned() {
                        let ratio = gw_grpc.throughput / e.throughput;
                        self.report.target(
                            &format!("GetInstance via gateway, throughput vs echo [{b}]"),
                            ">= 0.25x the echo",
                            format!("{:.0}/s = {ratio:.2}x", gw_grpc.throughput),
                            ratio >= 0.25,
                            Some(format!("echo {:.0}/s", e.throughput)),
                        );
                    }
                }
            }
        }
        delete_all(
            &gw[0],
            &[(customer.token.clone(), id)],
            Duration::from_secs(120),
        )
        .await?;
        Ok(())
    }

    /// 3. ListInstances with `settings.instances` instances in the database.
    pub async fn list(&mut self, server: &KapalServer) -> anyhow::Result<()> {
        let b = backend_name(server.backend);
        let n = self.settings.instances;
        eprintln!("== list [{b}]: ListInstances with {n} instances");
        let pid = Some(server.pid);
        let gw = clients::channels(server.gateway, self.settings.connections)?;
        let many = signup(&gw[0], "many").await?;
        let few = signup(&gw[0], "few").await?;
        let started = Instant::now();
        seed::instances(
            server.backend,
            &server.dir.path().join("data"),
            server.database_url.as_deref(),
            &many.account.id,
            n,
        )
        .await?;
        let seeded_in = started.elapsed();
        self.report.add(
            Measurement::new("list", "seeding instances (SQL INSERT)")
                .backend(Some(b))
                .figure("instances", f64::from(n))
                .figure("seconds", seeded_in.as_secs_f64()),
        );
        let as_many: Vec<_> = gw
            .iter()
            .map(|ch| clients::grpc(ch, &many.token).instances)
            .collect();
        let as_few: Vec<_> = gw
            .iter()
            .map(|ch| clients::grpc(ch, &few.token).instances)
            .collect();
        // Page tokens are keyset positions: walk to the one before the last 50 rows.
        let last = last_page_token(&as_many[0], n.saturating_sub(50)).await?;
        let cases = [
            (
                format!("ListInstances via gateway, owner of {n}, first page of 50"),
                &as_many,
                (0u32, String::new()),
            ),
            (
                format!("ListInstances via gateway, owner of {n}, page of 500"),
                &as_many,
                (500, String::new()),
            ),
            (
                format!("ListInstances via gateway, owner of {n}, last page of 50"),
                &as_many,
                (50, last.clone()),
            ),
            (
                format!("ListInstances via gateway, owner of none, {n} rows in table"),
                &as_few,
                (0, String::new()),
            ),
        ];
        let spec = self.spec_max();
        for (name, clients, page) in cases {
            rpc_load!(
                self,
                Measurement::new("list", name)
                    .backend(Some(b))
                    .transport("grpc"),
                &spec,
                pid,
                *clients,
                page,
                |d| list_instances(ListInstancesRequest {
                    page_size: d.0,
                    page_token: d.1.clone()
                })
            );
        }
        // The operators' listing of every customer's instances.
        let admin = signup_as(&gw[0], "ops", crate::server::ADMIN_EMAIL.to_string()).await?;
        server.grant_admin(crate::server::ADMIN_EMAIL).await?;
        let as_admin: Vec<_> = gw
            .iter()
            .map(|ch| clients::grpc(ch, &admin.token).admin)
            .collect();
        let admin_cases = [
            (
                format!("ListAllInstances via gateway, admin, {n} rows, first page of 50"),
                (0u32, String::new()),
            ),
            (
                format!("ListAllInstances via gateway, admin, {n} rows, page of 500"),
                (500, String::new()),
            ),
            (
                format!("ListAllInstances via gateway, admin, filtered by one account of {n}"),
                (50, many.account.id.clone()),
            ),
        ];
        for (name, page) in admin_cases {
            rpc_load!(
                self,
                Measurement::new("list", name)
                    .backend(Some(b))
                    .transport("grpc"),
                &spec,
                pid,
                as_admin,
                page,
                |d| list_all_instances(kapal::proto::v1::ListAllInstancesRequest {
                    page_size: d.0,
                    account_id: d.1.clone(),
                    ..Default::default()
                })
            );
        }
        Ok(())
    }

    /// Scenario 4: `checkout_orders` new orders at once (distinct customers), then
    /// idempotent retries of them at full speed.
    pub async fn checkout(&mut self, server: &KapalServer) -> anyhow::Result<()> {
        let b = backend_name(server.backend);
        let m = self.settings.checkout_orders.max(1);
        eprintln!("== checkout [{b}]: {m} new orders, then idempotent retries");
        let pid = Some(server.pid);
        let gw = clients::channels(server.gateway, self.settings.connections)?;
        let customers = signup_many(&gw[0], "buyer", m).await?;
        let orders: Vec<_> = customers
            .iter()
            .enumerate()
            .map(|(i, c)| clients::grpc(&gw[i % gw.len()], &c.token).orders)
            .collect();
        let keys: Vec<String> = (0..m).map(|_| idempotency_key()).collect();
        // (order id, instance id) of each customer's order.
        type Placed = Vec<Option<(String, String)>>;
        let placed: Arc<Mutex<Placed>> = Arc::new(Mutex::new(vec![None; m]));

        // New orders: every customer checks out once, all at the same time.
        let spec = LoadSpec {
            concurrency: m,
            rate: None,
            duration: Duration::from_secs(600),
            warmup: Duration::ZERO,
            max_requests: Some(m as u64),
        };
        let make = |_w: usize| {
            let (orders, keys, placed) = (orders.clone(), keys.clone(), placed.clone());
            move |i: u64| {
                let i = i as usize;
                let mut client = orders[i].clone();
                let req = checkout_request(&keys[i]);
                let placed = placed.clone();
                async move {
                    let order = client.checkout(req).await?.into_inner();
                    if order.instance_id.is_empty() {
                        return Err(tonic::Status::unavailable("order left pending"));
                    }
                    if let Ok(mut p) = placed.lock() {
                        p[i] = Some((order.id, order.instance_id));
                    }
                    Ok(())
                }
            }
        };
        let new = self
            .measure(
                Measurement::new("checkout", format!("{m} new orders at once (n8n trial)"))
                    .backend(Some(b))
                    .transport("grpc")
                    .note("each order: billing subscription + Rp 0 payment, instance row, server-side apply of the instance's objects in the local cluster"),
                &spec,
                pid,
                make,
            )
            .await;
        let placed: Placed = placed.lock().map(|p| p.clone()).unwrap_or_default();

        // Idempotent retries of the same orders: must answer the same order, never a new one.
        let expected: Arc<Vec<Option<String>>> = Arc::new(
            placed
                .iter()
                .map(|p| p.as_ref().map(|(o, _)| o.clone()))
                .collect(),
        );
        let spec = self.spec_max();
        let make = |_w: usize| {
            let (orders, keys, expected) = (orders.clone(), keys.clone(), expected.clone());
            move |i: u64| {
                let i = (i as usize) % orders.len();
                let mut client = orders[i].clone();
                let req = checkout_request(&keys[i]);
                let want = expected[i].clone();
                async move {
                    let order = client.checkout(req).await?.into_inner();
                    match want {
                        Some(w) if w != order.id => {
                            Err(tonic::Status::internal("a retry created another order"))
                        }
                        _ => Ok(()),
                    }
                }
            }
        };
        self.measure(
            Measurement::new(
                "checkout",
                format!("idempotent retries of those {m} orders"),
            )
            .backend(Some(b))
            .transport("grpc"),
            &spec,
            pid,
            make,
        )
        .await;
        let owned: Vec<(String, String)> = placed
            .iter()
            .zip(&customers)
            .filter_map(|(p, c)| p.as_ref().map(|(_, i)| (c.token.clone(), i.clone())))
            .collect();
        let deleted_in = delete_all(&gw[0], &owned, Duration::from_secs(300)).await?;
        self.report.add(
            Measurement::new("checkout", "new orders accepted per second")
                .backend(Some(b))
                .figure("orders", m as f64)
                .figure("orders_per_second", new.throughput)
                .figure("seconds", new.seconds)
                .figure("deleted_all_in_seconds", deleted_in.as_secs_f64()),
        );
        Ok(())
    }

    /// 5. `orders` simultaneous orders until every instance is READY.
    pub async fn provisioning(
        &mut self,
        server: &KapalServer,
        kube: kube::Client,
    ) -> anyhow::Result<()> {
        let b = backend_name(server.backend);
        let n = self.settings.orders.max(1);
        eprintln!("== provisioning [{b}]: {n} simultaneous orders until all READY");
        let gw = clients::channels(server.gateway, self.settings.connections)?;
        let customers = signup_many(&gw[0], "fleet", n).await?;

        // Kubernetes' side: when each instance's Deployment first has a ready replica.
        let workload_ready: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn(watch_deployments(kube, workload_ready.clone(), synced_tx));
        let _ = tokio::time::timeout(Duration::from_secs(30), synced_rx).await;

        let before = Sample::take(Some(server.pid));
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, c) in customers.iter().enumerate() {
            let clients = clients::grpc(&gw[i % gw.len()], &c.token);
            let token = c.token.clone();
            tasks.spawn(async move {
                let sent = Instant::now();
                let r: anyhow::Result<(String, Instant, Instant)> = async {
                    let Clients {
                        mut orders,
                        mut instances,
                        ..
                    } = clients;
                    let order = orders
                        .checkout(checkout_request(&idempotency_key()))
                        .await?
                        .into_inner();
                    let accepted = Instant::now();
                    anyhow::ensure!(!order.instance_id.is_empty(), "order left pending");
                    watch_until(
                        &mut instances,
                        &order.instance_id,
                        InstanceStatus::Ready,
                        Duration::from_secs(600),
                    )
                    .await?;
                    Ok((order.instance_id, accepted, Instant::now()))
                }
                .await;
                (token, sent, r)
            });
        }
        let mut done = Vec::new();
        let mut failures = Vec::new();
        while let Some(j) = tasks.join_next().await {
            match j {
                Ok((token, sent, Ok((id, accepted, ready)))) => {
                    done.push((token, id, sent, accepted, ready))
                }
                Ok((_, _, Err(e))) => failures.push(format!("{e:#}")),
                Err(e) => failures.push(format!("task: {e}")),
            }
        }
        let all_ready = t0.elapsed();
        let cpu = Sample::take(Some(server.pid)).since(&before);
        watch.abort();
        let k8s = workload_ready.lock().map(|m| m.clone()).unwrap_or_default();

        let secs = |d: Duration| d.as_secs_f64();
        let order_to_ready = sorted(done.iter().map(|d| secs(d.4 - d.2)).collect());
        let checkout = sorted(done.iter().map(|d| secs(d.3 - d.2)).collect());
        let mut kube_part = Vec::new();
        let mut status_part = Vec::new();
        let mut kapal_share = Vec::new();
        for (_, id, sent, accepted, ready) in &done {
            if let Some(w) = k8s.get(id) {
                let k = secs(w.saturating_duration_since(*accepted));
                let s = secs(ready.saturating_duration_since(*w));
                kube_part.push(k);
                status_part.push(s);
                let total = secs(*ready - *sent);
                if total > 0.0 {
                    kapal_share.push((secs(*accepted - *sent) + s) / total);
                }
            }
        }
        let (kube_part, status_part, kapal_share) =
            (sorted(kube_part), sorted(status_part), sorted(kapal_share));
        let mut m = Measurement::new("provisioning", format!("{n} simultaneous orders until READY"))
            .backend(Some(b))
            .figure("orders", n as f64)
            .figure("ready", done.len() as f64)
            .figure("failed", failures.len() as f64)
            .figure("time_to_all_ready_s", secs(all_ready))
            .figure("order_to_ready_p50_s", quantile(&order_to_ready, 0.5))
            .figure("order_to_ready_p90_s", quantile(&order_to_ready, 0.9))
            .figure("order_to_ready_max_s", quantile(&order_to_ready, 1.0))
            .figure("kapal_checkout_p50_s", quantile(&checkout, 0.5))
            .figure("kapal_checkout_max_s", quantile(&checkout, 1.0))
            .figure("kubernetes_p50_s", quantile(&kube_part, 0.5))
            .figure("kubernetes_max_s", quantile(&kube_part, 1.0))
            .figure("kapal_status_p50_s", quantile(&status_part, 0.5))
            .figure("kapal_status_max_s", quantile(&status_part, 1.0))
            .figure("kapal_share_p50", quantile(&kapal_share, 0.5))
            .figure("server_cpu_cores", cpu.server)
            .figure("kubernetes_cpu_cores", cpu.kubernetes)
            .figure("others_cpu_cores", cpu.others)
            .note(
                "kapal_checkout: order sent -> Checkout answered (billing, instance row, server-side apply done); \
                 kubernetes: Checkout answered -> the Deployment has a ready replica (scheduling, volume binding, kwok); \
                 kapal_status: that -> WatchInstance reports READY through the gateway; \
                 kapal_share: (kapal_checkout + kapal_status) / order_to_ready per instance",
            );
        let k8s_max = quantile(&kube_part, 1.0);
        if k8s_max.is_finite() && k8s_max > 0.0 {
            m.vs_baseline
                .insert("time_to_all_ready".into(), secs(all_ready) / k8s_max);
            m.baseline = Some("the slowest Kubernetes part (answered -> workload ready)".into());
        }
        if let Some(f) = failures.first() {
            m.note = Some(format!(
                "{}; {} failed, first: {f}",
                m.note.unwrap_or_default(),
                failures.len()
            ));
        }
        self.report.add(m);
        self.report.target(
            &format!("{n} simultaneous orders all READY [{b}]"),
            "< 60 s",
            format!("{:.1} s ({} of {n} ready)", secs(all_ready), done.len()),
            failures.is_empty() && all_ready < Duration::from_secs(60),
            Some(format!(
                "Kapal's own share p50 {:.0}% of each order's time; Kubernetes part p50 {:.1} s",
                quantile(&kapal_share, 0.5) * 100.0,
                quantile(&kube_part, 0.5)
            )),
        );

        let owned: Vec<(String, String)> = done
            .iter()
            .map(|(t, id, ..)| (t.clone(), id.clone()))
            .collect();
        let deleted_in = delete_all(&gw[0], &owned, Duration::from_secs(600)).await?;
        self.report.add(
            Measurement::new(
                "provisioning",
                format!("deleting the {} instances", owned.len()),
            )
            .backend(Some(b))
            .figure("seconds", deleted_in.as_secs_f64()),
        );
        Ok(())
    }
}

/// Records, per instance id, when its Deployment first reports a ready replica.
async fn watch_deployments(
    kube: kube::Client,
    ready: Arc<Mutex<HashMap<String, Instant>>>,
    synced: tokio::sync::oneshot::Sender<()>,
) {
    use kube::runtime::watcher::{self, Event};
    let api: kube::Api<Deployment> = kube::Api::all(kube);
    let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=kapal");
    let mut stream = std::pin::pin!(watcher::watcher(api, config));
    let mut synced = Some(synced);
    while let Some(event) = stream.next().await {
        let now = Instant::now();
        let d = match event {
            Ok(Event::Apply(d) | Event::InitApply(d)) => d,
            Ok(Event::InitDone) => {
                if let Some(s) = synced.take() {
                    let _ = s.send(());
                }
                continue;
            }
            _ => continue,
        };
        let is_ready = d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
            >= 1;
        let id = d
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kapal.dev/instance"))
            .cloned();
        if let (true, Some(id)) = (is_ready, id)
            && let Ok(mut m) = ready.lock()
        {
            m.entry(id).or_insert(now);
        }
    }
}

/// Pods of `selector` that are not being deleted: (node, Running and Ready).
async fn live_pods(
    pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    selector: &str,
) -> anyhow::Result<Vec<(String, bool)>> {
    let list = pods
        .list(&kube::api::ListParams::default().labels(selector))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let ready = p.status.as_ref().is_some_and(|s| {
                s.phase.as_deref() == Some("Running")
                    && s.conditions
                        .as_ref()
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            (node, ready)
        })
        .collect())
}

/// Every pod runs ready on a node other than `failed`.
fn moved(pods: &[(String, bool)], failed: &str) -> bool {
    !pods.is_empty() && pods.iter().all(|(n, r)| *r && !n.is_empty() && n != failed)
}

impl Bench {
    /// Scenario 6: a node running Kapal instances fails; how long until each is READY again on
    /// another node, next to a plain Deployment with the same tolerations (Kubernetes alone).
    pub async fn node_failure(&mut self, kubeconfig: &std::path::Path) -> anyhow::Result<()> {
        use kapal_tests::cluster::TempNode;
        const INSTANCES: usize = 3;
        eprintln!("== node-failure: {INSTANCES} instances on a node that stops");
        let node = TempNode::create("bench-failure").await?;
        let node_name = node.name().to_string();
        let toleration: k8s_openapi::api::core::v1::Toleration =
            serde_json::from_value(node.toleration())?;
        let affinity: k8s_openapi::api::core::v1::Affinity =
            serde_json::from_value(node.preferred_affinity())?;
        let mut seconds = 0;
        let stack = Stack::start(kubeconfig, Backend::Sqlite, |c| {
            c.extra_tolerations = vec![toleration.clone()];
            c.affinity = Some(affinity.clone());
            seconds = c.node_failure_toleration.as_secs();
        })
        .await?;
        let result = self
            .node_failure_measure(&stack, &node, &node_name, seconds, INSTANCES)
            .await;
        stack.stop().await;
        let _ = node.delete().await;
        let (ns, _, _) = result?;
        let _ = ns.cleanup().await;
        Ok(())
    }

    async fn node_failure_measure(
        &mut self,
        stack: &Stack,
        node: &kapal_tests::cluster::TempNode,
        node_name: &str,
        toleration_seconds: u64,
        count: usize,
    ) -> anyhow::Result<(
        kapal_tests::cluster::TestNamespace,
        Channel,
        Vec<(String, String)>,
    )> {
        use k8s_openapi::api::core::v1::Pod;
        use kapal_tests::cluster::{TestNamespace, node_state};
        let cluster = kapal_tests::cluster::cluster().await?;
        let kube = cluster.client();
        let gw = clients::channels(stack.gateway, 1)?
            .pop()
            .context("a channel")?;

        // Kubernetes alone: a Deployment with the tolerations Kapal renders, on the same node.
        let ns = TestNamespace::new("bench-failure").await?;
        let tolerations = serde_json::json!([
            node.toleration(),
            { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": toleration_seconds },
            { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": toleration_seconds },
        ]);
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "baseline" },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": "baseline" } },
                "template": {
                    "metadata": { "labels": { "app": "baseline" } },
                    "spec": {
                        "tolerations": tolerations,
                        "affinity": node.preferred_affinity(),
                        "containers": [{ "name": "app", "image": "registry.k8s.io/pause:3.10",
                            "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }],
                    },
                },
            },
        }))?;
        ns.api::<Deployment>()
            .create(&kube::api::PostParams::default(), &deployment)
            .await?;

        let customers = signup_many(&gw, "survivor", count).await?;
        let mut owned = Vec::new();
        for c in &customers {
            let cl = clients::grpc(&gw, &c.token);
            let order = cl
                .orders
                .clone()
                .checkout(checkout_request(&idempotency_key()))
                .await?
                .into_inner();
            owned.push((c.token.clone(), order.instance_id.clone()));
        }
        for (token, id) in &owned {
            watch_until(
                &mut clients::grpc(&gw, token).instances,
                id,
                InstanceStatus::Ready,
                Duration::from_secs(180),
            )
            .await?;
        }
        let pods: kube::Api<Pod> = kube::Api::all(kube.clone());
        let ns_pods: kube::Api<Pod> = ns.api();
        kapal_tests::cluster::wait_for("the baseline pod ready", Duration::from_secs(60), || {
            let ns_pods = ns_pods.clone();
            async move {
                let p = live_pods(&ns_pods, "app=baseline").await?;
                Ok((p.len() == 1 && p[0].1).then_some(()))
            }
        })
        .await?;
        let mut on_node = 0;
        for (_, id) in &owned {
            let p = live_pods(&pods, &format!("kapal.dev/instance={id}")).await?;
            if p.iter().any(|(n, _)| n == node_name) {
                on_node += 1;
            }
        }
        let baseline_on_node = live_pods(&ns_pods, "app=baseline")
            .await?
            .iter()
            .any(|(n, _)| n == node_name);
        anyhow::ensure!(
            on_node == count && baseline_on_node,
            "pods did not land on {node_name} ({on_node} of {count} instances, baseline {baseline_on_node}); the provisioner's affinity was not applied"
        );

        let t0 = Instant::now();
        node.stop().await?;
        let mut not_ready_at = None;
        let mut baseline_at = None;
        let mut left_ready: HashMap<String, Duration> = HashMap::new();
        let mut back: HashMap<String, Duration> = HashMap::new();
        let deadline = Duration::from_secs(600);
        while back.len() < owned.len() || baseline_at.is_none() {
            anyhow::ensure!(t0.elapsed() < deadline, "not recovered within {deadline:?}");
            if not_ready_at.is_none()
                && node_state(&kube, node_name).await?.ready.as_deref() != Some("True")
            {
                not_ready_at = Some(t0.elapsed());
            }
            if baseline_at.is_none()
                && moved(&live_pods(&ns_pods, "app=baseline").await?, node_name)
            {
                baseline_at = Some(t0.elapsed());
            }
            for (token, id) in &owned {
                if back.contains_key(id) {
                    continue;
                }
                let status = clients::grpc(&gw, token)
                    .instances
                    .get_instance(GetInstanceRequest {
                        instance_id: id.clone(),
                    })
                    .await
                    .map(|i| i.into_inner().status)
                    .unwrap_or(0);
                let ready = status == InstanceStatus::Ready as i32;
                if !ready {
                    left_ready.entry(id.clone()).or_insert(t0.elapsed());
                }
                if ready
                    && moved(
                        &live_pods(&pods, &format!("kapal.dev/instance={id}")).await?,
                        node_name,
                    )
                {
                    back.insert(id.clone(), t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
        let recovered = sorted(back.values().map(|d| d.as_secs_f64()).collect());
        let detected = sorted(left_ready.values().map(|d| d.as_secs_f64()).collect());
        let kapal_max = quantile(&recovered, 1.0);
        let k8s = secs(baseline_at);
        let mut m = Measurement::new(
            "node-failure",
            format!("{count} instances on a node that stops (toleration {toleration_seconds} s)"),
        )
        .backend(Some("sqlite"))
        .figure("node_not_ready_s", secs(not_ready_at))
        .figure("kapal_reports_not_ready_p50_s", quantile(&detected, 0.5))
        .figure("instances_not_reported_down", (owned.len() - left_ready.len()) as f64)
        .figure("kapal_ready_elsewhere_p50_s", quantile(&recovered, 0.5))
        .figure("kapal_ready_elsewhere_max_s", kapal_max)
        .figure("kubernetes_pod_moved_s", k8s)
        .note("recovery: node stopped -> GetInstance says READY and the instance's pod runs ready on another node; baseline: a plain Deployment with the same tolerations on the same node");
        if k8s > 0.0 {
            m.vs_baseline.insert("recovery".into(), kapal_max / k8s);
            m.baseline = Some("plain Deployment with the same tolerations".into());
        }
        self.report.add(m);
        self.report.target(
            "instance recovery after a node failure (product definition)",
            "< 4 min",
            format!("{kapal_max:.1} s"),
            kapal_max < 240.0,
            Some(format!(
                "{:.2}x Kubernetes alone ({k8s:.1} s)",
                kapal_max / k8s
            )),
        );
        delete_all(&gw, &owned, Duration::from_secs(300)).await?;
        Ok((ns, gw, owned))
    }
}
