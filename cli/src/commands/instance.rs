//! Instances: `kapal instances`, `instance`, `watch`, `stop`, `start`, `restart`, `delete` and
//! `usage`; also how an instance and its usage read as text and JSON, shared with `kapal order`
//! and `kapal admin`, and `follow`, which keeps a watch open across cut streams.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tonic::Code;

use kapal::proto::v1::{
    GetInstanceRequest, GetInstanceUsageRequest, Instance, InstanceActionRequest, InstanceEvent,
    InstanceStatus, InstanceUsage, ListInstancesRequest, WatchInstanceRequest,
};

use crate::args::{DeleteArgs, Global, InstanceArg};
use crate::connect::{Ctx, NO_LIMIT, RpcResult as _, collect_pages, transient};
use crate::output::{
    Render, Table, bytes, cpu_amount, dash, key_values, now, percent, short, suffix, time, ts_json,
};

/// Consecutive failed attempts to (re)open a watch before giving up.
const MAX_WATCH_RETRIES: u32 = 8;

pub async fn instances(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let mut client = ctx.instances()?;
    let (all, _) = collect_pages(NO_LIMIT, async |page_size, page_token| {
        let resp = client
            .list_instances(ListInstancesRequest {
                page_size,
                page_token,
            })
            .await
            .or_fail(&ctx)?;
        Ok((resp.instances, resp.next_page_token))
    })
    .await?;
    ctx.print(&Instances(all))
}

/// The answer to `kapal instances`.
struct Instances(Vec<Instance>);

#[derive(Serialize)]
struct InstancesJson<'a> {
    instances: Vec<InstanceJson<'a>>,
}

impl Render for Instances {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "No instances yet: order one with `kapal order <app> --plan <plan> --wait`.\n"
                .to_string();
        }
        let mut t = Table::new(&["ID", "APP", "PLAN", "STATUS", "URL", "CREATED"]);
        for i in &self.0 {
            t.row(vec![
                i.id.clone(),
                i.app_id.clone(),
                i.plan_id.clone(),
                instance_status_name(i.status()).to_string(),
                dash(&i.url),
                time(i.created_at.as_ref()),
            ]);
        }
        t.render()
    }

    fn json(&self) -> impl Serialize {
        InstancesJson {
            instances: self.0.iter().map(InstanceJson::from).collect(),
        }
    }
}

pub async fn instance(a: InstanceArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let i = ctx
        .instances()?
        .get_instance(GetInstanceRequest { instance_id: a.id })
        .await
        .or_fail(&ctx)?;
    ctx.print(&InstanceDetails(&i))
}

/// The answer to `kapal instance <id>`: the instance with its credentials.
struct InstanceDetails<'a>(&'a Instance);

impl Render for InstanceDetails<'_> {
    fn text(&self) -> String {
        let mut lines = instance_lines(self.0);
        lines.extend(credential_lines(self.0));
        key_values(&lines)
    }

    fn json(&self) -> impl Serialize {
        InstanceJson::from(self.0)
    }
}

/// An instance in JSON (credentials included when the answer has them).
#[derive(Serialize)]
pub struct InstanceJson<'a> {
    id: &'a str,
    app_id: &'a str,
    plan_id: &'a str,
    status: &'static str,
    status_reason: &'a str,
    desired_state: &'static str,
    url: &'a str,
    hostname: &'a str,
    subscription_id: &'a str,
    order_id: &'a str,
    credentials: Option<CredentialsJson<'a>>,
    created_at: Option<String>,
    updated_at: Option<String>,
    ready_at: Option<String>,
    suspended_by_billing: bool,
    data_deleted_after: Option<String>,
}

#[derive(Serialize)]
struct CredentialsJson<'a> {
    username: &'a str,
    password: &'a str,
    login_url: &'a str,
}

impl<'a> From<&'a Instance> for InstanceJson<'a> {
    fn from(i: &'a Instance) -> Self {
        InstanceJson {
            id: &i.id,
            app_id: &i.app_id,
            plan_id: &i.plan_id,
            status: instance_status_name(i.status()),
            status_reason: &i.status_reason,
            desired_state: desired_name(i),
            url: &i.url,
            hostname: &i.hostname,
            subscription_id: &i.subscription_id,
            order_id: &i.order_id,
            credentials: i.credentials.as_ref().map(|c| CredentialsJson {
                username: &c.username,
                password: &c.password,
                login_url: &c.login_url,
            }),
            created_at: ts_json(i.created_at.as_ref()),
            updated_at: ts_json(i.updated_at.as_ref()),
            ready_at: ts_json(i.ready_at.as_ref()),
            suspended_by_billing: i.suspended_by_billing,
            data_deleted_after: ts_json(i.data_deleted_after.as_ref()),
        }
    }
}

/// `INSTANCE_STATUS_READY` -> `READY`.
pub fn instance_status_name(s: InstanceStatus) -> &'static str {
    short(s.as_str_name(), "INSTANCE_STATUS_")
}

/// `DESIRED_STATE_RUNNING` -> `RUNNING`.
fn desired_name(i: &Instance) -> &'static str {
    short(i.desired_state().as_str_name(), "DESIRED_STATE_")
}

/// An instance as `Key: value` lines, without its credentials.
pub fn instance_lines(i: &Instance) -> Vec<(&'static str, String)> {
    let mut lines = vec![
        ("Instance", i.id.clone()),
        ("App", i.app_id.clone()),
        ("Plan", i.plan_id.clone()),
        ("Status", instance_status_name(i.status()).to_string()),
        ("Reason", dash(&i.status_reason)),
        ("Desired", desired_name(i).to_string()),
        ("URL", dash(&i.url)),
        ("Subscription", dash(&i.subscription_id)),
        ("Order", dash(&i.order_id)),
        ("Created", time(i.created_at.as_ref())),
        ("Ready since", time(i.ready_at.as_ref())),
        ("Updated", time(i.updated_at.as_ref())),
    ];
    if i.suspended_by_billing {
        lines.push((
            "Suspended by billing",
            "yes — pay or reactivate the subscription".to_string(),
        ));
    }
    if i.data_deleted_after.is_some() {
        lines.push(("Data deleted after", time(i.data_deleted_after.as_ref())));
    }
    lines
}

/// The app's login as `Key: value` lines, or that it is not available yet.
pub fn credential_lines(i: &Instance) -> Vec<(&'static str, String)> {
    match &i.credentials {
        Some(c) => vec![
            ("Login URL", dash(&c.login_url)),
            ("Username", c.username.clone()),
            ("Password", c.password.clone()),
        ],
        None => vec![(
            "Credentials",
            "not available yet (the instance is not provisioned)".to_string(),
        )],
    }
}

pub async fn watch(a: InstanceArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut last: Option<(InstanceStatus, String)> = None;
    follow(&ctx, &a.id, |ev| {
        let Some(inst) = &ev.instance else {
            return Ok(false);
        };
        let state = (inst.status(), inst.status_reason.clone());
        if last.as_ref() != Some(&state) {
            ctx.output.print_line(&WatchEvent {
                at: ev.at.as_ref(),
                instance: inst,
            })?;
            last = Some(state);
        }
        Ok(inst.status() == InstanceStatus::Deleted)
    })
    .await
}

/// One status change seen by `kapal watch`: a line of text, or one JSON object per line, so
/// that a script can read events as they come.
struct WatchEvent<'a> {
    at: Option<&'a prost_types::Timestamp>,
    instance: &'a Instance,
}

#[derive(Serialize)]
struct WatchEventJson<'a> {
    at: Option<String>,
    instance: InstanceJson<'a>,
}

impl Render for WatchEvent<'_> {
    fn text(&self) -> String {
        event_line(self.at, self.instance) + "\n"
    }

    fn json(&self) -> impl Serialize {
        WatchEventJson {
            at: ts_json(self.at),
            instance: InstanceJson::from(self.instance),
        }
    }
}

/// Follows an instance's events, calling `on_event` for each until it returns `true` or the
/// instance is gone. Reopens the stream when it is cut (the server resends the current state).
pub async fn follow(
    ctx: &Ctx,
    id: &str,
    mut on_event: impl FnMut(&InstanceEvent) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut client = ctx.instances()?;
    let mut failures: u32 = 0;
    let mut seen_any = false;
    loop {
        let opened = client
            .watch_instance(WatchInstanceRequest {
                instance_id: id.to_string(),
            })
            .await;
        match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(ev)) => {
                            failures = 0;
                            seen_any = true;
                            if on_event(&ev)? {
                                return Ok(());
                            }
                        }
                        Ok(None) => break,
                        Err(s) if transient(&s) => break,
                        Err(s) => return Err(ctx.rpc_error(&s)),
                    }
                }
            }
            Err(s) if s.code() == Code::NotFound && seen_any => {
                eprintln!("Instance {id} no longer exists.");
                return Ok(());
            }
            Err(s) if transient(&s) && failures < MAX_WATCH_RETRIES => {
                eprintln!("Watching failed ({}), retrying...", ctx.rpc_error(&s));
            }
            Err(s) => return Err(ctx.rpc_error(&s)),
        }
        failures += 1;
        if failures > MAX_WATCH_RETRIES {
            bail!("the watch of instance {id} keeps being cut off; try again later");
        }
        tokio::time::sleep(Duration::from_secs(u64::from(failures.min(5)) * 2)).await;
    }
}

/// `2025-01-02T03:04:05Z  PROVISIONING  Waiting for the database`.
pub fn event_line(at: Option<&prost_types::Timestamp>, inst: &Instance) -> String {
    let when = match at {
        Some(t) => time(Some(t)),
        None => now(),
    };
    format!(
        "{when}  {:<12}  {}",
        instance_status_name(inst.status()),
        inst.status_reason
    )
    .trim_end()
    .to_string()
}

/// What `kapal stop|start|restart|delete` asks of an instance.
#[derive(Clone, Copy)]
pub enum Action {
    Stop,
    Start,
    Restart,
    Delete,
}

pub async fn instance_action(a: InstanceArg, action: Action) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.instances()?;
    let req = InstanceActionRequest { instance_id: a.id };
    let (resp, verb) = match action {
        Action::Stop => (client.stop_instance(req).await, "Stopping"),
        Action::Start => (client.start_instance(req).await, "Starting"),
        Action::Restart => (client.restart_instance(req).await, "Restarting"),
        Action::Delete => (client.delete_instance(req).await, "Deleting"),
    };
    let i = resp.or_fail(&ctx)?;
    ctx.print(&ActionTaken { verb, instance: &i })
}

/// The answer to `kapal stop|start|restart|delete`: the instance, as the action left it.
struct ActionTaken<'a> {
    /// `Stopping`, `Starting`, ...
    verb: &'a str,
    instance: &'a Instance,
}

impl Render for ActionTaken<'_> {
    fn text(&self) -> String {
        let i = self.instance;
        format!(
            "{} instance {}: status {}{}.\n",
            self.verb,
            i.id,
            instance_status_name(i.status()),
            suffix(&i.status_reason)
        )
    }

    fn json(&self) -> impl Serialize {
        InstanceJson::from(self.instance)
    }
}

pub async fn delete(a: DeleteArgs) -> anyhow::Result<()> {
    if !a.yes && std::io::stdin().is_terminal() {
        eprint!(
            "Delete instance {}? Its app stops now and its data is removed after the retention period. [y/N] ",
            a.id
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("cannot read the answer")?;
        if !matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
            bail!("cancelled: the instance was not deleted");
        }
    }
    instance_action(
        InstanceArg {
            id: a.id,
            global: a.global,
        },
        Action::Delete,
    )
    .await
}

pub async fn usage(a: InstanceArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let u = ctx
        .instances()?
        .get_instance_usage(GetInstanceUsageRequest { instance_id: a.id })
        .await
        .or_fail(&ctx)?;
    ctx.print(&Usage(&u))
}

/// The answer to `kapal usage` and `kapal admin usage`: what an instance uses now.
pub struct Usage<'a>(pub &'a InstanceUsage);

impl Render for Usage<'_> {
    fn text(&self) -> String {
        key_values(&usage_lines(self.0))
    }

    fn json(&self) -> impl Serialize {
        UsageJson::from(self.0)
    }
}

/// CPU and memory in use against the plan's limits, or why they are not known (never zeros for
/// missing metrics), and storage: capacity, with what is used when the cluster reports it.
fn usage_lines(u: &InstanceUsage) -> Vec<(&'static str, String)> {
    let cpu = match u.cpu_millis.filter(|_| u.metrics_available) {
        Some(m) => format!(
            "{} of {}{}",
            cpu_amount(m),
            cpu_amount(u.cpu_limit_millis),
            percent(m, u.cpu_limit_millis)
        ),
        None => format!("not known (limit {})", cpu_amount(u.cpu_limit_millis)),
    };
    let memory = match u.memory_bytes.filter(|_| u.metrics_available) {
        Some(b) => format!(
            "{} of {}{}",
            bytes(b),
            bytes(u.memory_limit_bytes),
            percent(b, u.memory_limit_bytes)
        ),
        None => format!("not known (limit {})", bytes(u.memory_limit_bytes)),
    };
    let mut lines = vec![
        ("Instance", u.instance_id.clone()),
        ("CPU", cpu),
        ("Memory", memory),
    ];
    if !u.metrics_available || u.cpu_millis.is_none() || u.memory_bytes.is_none() {
        let note = if u.metrics_note.trim().is_empty() {
            "the cluster did not report the instance's usage".to_string()
        } else {
            u.metrics_note.trim().to_string()
        };
        lines.push(("Metrics", format!("not available: {note}")));
    }
    let storage = match (u.storage_capacity_bytes, u.storage_used_bytes) {
        (0, _) => "no volume bound yet".to_string(),
        (cap, Some(used)) => format!(
            "{} used of {}{}",
            bytes(used),
            bytes(cap),
            percent(used, cap)
        ),
        (cap, None) => format!("{} (use not reported by the cluster)", bytes(cap)),
    };
    lines.push(("Storage", storage));
    lines.push(("Observed", time(u.observed_at.as_ref())));
    lines
}

/// Usage in JSON: what the cluster did not report is null, never 0.
#[derive(Serialize)]
struct UsageJson<'a> {
    instance_id: &'a str,
    metrics_available: bool,
    metrics_note: &'a str,
    cpu_millis: Option<i64>,
    cpu_limit_millis: i64,
    memory_bytes: Option<i64>,
    memory_limit_bytes: i64,
    storage_capacity_bytes: i64,
    storage_used_bytes: Option<i64>,
    observed_at: Option<String>,
}

impl<'a> From<&'a InstanceUsage> for UsageJson<'a> {
    fn from(u: &'a InstanceUsage) -> Self {
        let reported = |v: Option<i64>| if u.metrics_available { v } else { None };
        UsageJson {
            instance_id: &u.instance_id,
            metrics_available: u.metrics_available,
            metrics_note: &u.metrics_note,
            cpu_millis: reported(u.cpu_millis),
            cpu_limit_millis: u.cpu_limit_millis,
            memory_bytes: reported(u.memory_bytes),
            memory_limit_bytes: u.memory_limit_bytes,
            storage_capacity_bytes: u.storage_capacity_bytes,
            storage_used_bytes: u.storage_used_bytes,
            observed_at: ts_json(u.observed_at.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::fixtures::{GIB, MIB, at};
    use crate::output::json_of;
    use serde_json::{Value, json};

    fn usage_with_metrics() -> InstanceUsage {
        InstanceUsage {
            instance_id: "i1".to_string(),
            metrics_available: true,
            metrics_note: String::new(),
            cpu_millis: Some(120),
            memory_bytes: Some(300 * MIB),
            cpu_limit_millis: 500,
            memory_limit_bytes: 512 * MIB,
            storage_capacity_bytes: 5 * GIB,
            storage_used_bytes: Some(GIB + GIB / 5),
            observed_at: at("2026-11-25T10:00:00Z"),
        }
    }

    #[test]
    fn usage_shows_use_against_the_plan_limits() {
        assert_eq!(
            key_values(&usage_lines(&usage_with_metrics())),
            "Instance:  i1\n\
             CPU:       0.12 vCPU of 0.5 vCPU (24%)\n\
             Memory:    300 MiB of 512 MiB (59%)\n\
             Storage:   1.2 GiB used of 5 GiB (24%)\n\
             Observed:  2026-11-25T10:00:00Z\n"
        );
        let v = json_of(&Usage(&usage_with_metrics()));
        assert_eq!(v["cpu_millis"], json!(120));
        assert_eq!(v["memory_bytes"], json!(300 * MIB));
        assert_eq!(v["storage_used_bytes"], json!(GIB + GIB / 5));
        assert_eq!(v["observed_at"], json!("2026-11-25T10:00:00Z"));
    }

    #[test]
    fn usage_without_metrics_says_why_and_never_shows_zeros() {
        let u = InstanceUsage {
            metrics_available: false,
            metrics_note: "the cluster has no metrics API".to_string(),
            cpu_millis: None,
            memory_bytes: None,
            storage_used_bytes: None,
            ..usage_with_metrics()
        };
        let text = key_values(&usage_lines(&u));
        assert_eq!(
            text,
            "Instance:  i1\n\
             CPU:       not known (limit 0.5 vCPU)\n\
             Memory:    not known (limit 512 MiB)\n\
             Metrics:   not available: the cluster has no metrics API\n\
             Storage:   5 GiB (use not reported by the cluster)\n\
             Observed:  2026-11-25T10:00:00Z\n"
        );
        let v = json_of(&Usage(&u));
        assert_eq!(v["cpu_millis"], Value::Null);
        assert_eq!(v["memory_bytes"], Value::Null);
        assert_eq!(v["storage_used_bytes"], Value::Null);
        assert_eq!(v["metrics_note"], json!("the cluster has no metrics API"));

        // A server that sets a figure but says metrics are unavailable: the figure is not shown.
        let odd = InstanceUsage {
            cpu_millis: Some(0),
            metrics_note: String::new(),
            storage_capacity_bytes: 0,
            ..u
        };
        let text = key_values(&usage_lines(&odd));
        assert!(
            text.contains("CPU:       not known (limit 0.5 vCPU)"),
            "{text}"
        );
        assert!(
            text.contains("Metrics:   not available: the cluster did not report"),
            "{text}"
        );
        assert!(text.contains("Storage:   no volume bound yet"), "{text}");
        assert!(!text.contains("0 vCPU of"), "{text}");
        assert_eq!(json_of(&Usage(&odd))["cpu_millis"], Value::Null);
    }

    fn instance() -> Instance {
        Instance {
            id: "i1".to_string(),
            app_id: "n8n".to_string(),
            plan_id: "starter".to_string(),
            status: InstanceStatus::Suspended as i32,
            created_at: at("2026-11-01T08:00:00Z"),
            ..Instance::default()
        }
    }

    #[test]
    fn instance_shows_billing_suspension_and_data_deletion() {
        let plain = key_values(&instance_lines(&instance()));
        assert!(!plain.contains("Suspended by billing"), "{plain}");
        assert!(!plain.contains("Data deleted after"), "{plain}");
        let v = json_of(&InstanceDetails(&instance()));
        assert_eq!(v["suspended_by_billing"], json!(false));
        assert_eq!(v["data_deleted_after"], Value::Null);

        let i = Instance {
            suspended_by_billing: true,
            data_deleted_after: at("2026-12-25T08:00:00Z"),
            ..instance()
        };
        let text = key_values(&instance_lines(&i));
        assert!(
            text.contains("Suspended by billing:  yes — pay or reactivate the subscription\n"),
            "{text}"
        );
        assert!(
            text.contains("Data deleted after:    2026-12-25T08:00:00Z\n"),
            "{text}"
        );
        let v = json_of(&InstanceDetails(&i));
        assert_eq!(v["suspended_by_billing"], json!(true));
        assert_eq!(v["data_deleted_after"], json!("2026-12-25T08:00:00Z"));
    }
}
