//! `kapal admin ...`: the operators' commands, over `AdminService` (control-plane) and
//! `BillingAdminService` (billing). Every call needs an account with role ADMIN; a customer's
//! session gets "this needs an operator (admin) account: ... (PERMISSION_DENIED)".
//!
//! Output follows the customer commands: aligned tables or `Key: value` lines by default, JSON
//! with `--output json`, times in UTC (RFC 3339), rupiah as `Rp 79.000`.

use anyhow::{anyhow, bail};
use chrono::{DateTime, Months, NaiveDate, Utc};
use serde::Serialize;

use kapal::proto::v1::{
    AdminInstance, Alert, AuditEvent, Capacity, GetCapacityRequest, GetInstanceAsAdminRequest,
    GetInstanceUsageRequest, GetRevenueReportRequest, InstanceStatus, ListAlertsRequest,
    ListAllInstancesRequest, ListAllSubscriptionsRequest, ListAuditEventsRequest,
    ListSubscriptionEventsRequest, NodeCapacity, ResourceAmounts, RevenueReport, Subscription,
    SubscriptionStatus,
};

use crate::args::{
    AdminCommand, AuditArgs, Global, InstanceArg, InstanceArgs, InstancesArgs, RevenueArgs,
    SubscriptionArg, SubscriptionsArgs,
};
use crate::commands::diagnostics;
use crate::commands::instance::Action;
use crate::commands::instance::{
    InstanceJson, Usage, credential_lines, instance_lines, instance_status_name,
};
use crate::commands::subscription::{Events, SubscriptionJson, subscription_status};
use crate::connect::{Ctx, RpcResult as _, collect_pages};
use crate::output::{
    MoneyJson, Render, Table, bytes, cpu_amount, dash, key_values, money, money_json, percent,
    percent_value, short, time, ts_json,
};

/// The product's target for the renewal rate.
const RENEWAL_TARGET: f64 = 0.8;

/// The start and the exclusive end of a revenue report; billing chooses those not given.
type ReportRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The range of `kapal admin revenue --from A --to B`: from the first instant of A to the first
/// instant of the month after B (exclusive), both UTC.
fn revenue_range(from: Option<NaiveDate>, to: Option<NaiveDate>) -> anyhow::Result<ReportRange> {
    let start = |d: NaiveDate| d.and_time(chrono::NaiveTime::MIN).and_utc();
    let from_at = from.map(start);
    let to_at = match to {
        Some(d) => Some(start(d.checked_add_months(Months::new(1)).ok_or_else(
            || anyhow!("--to {} is too far in the future", d.format("%Y-%m")),
        )?)),
        None => None,
    };
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        bail!(
            "--from {} is after --to {}: the first month must not come after the last",
            f.format("%Y-%m"),
            t.format("%Y-%m")
        );
    }
    Ok((from_at, to_at))
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

/// `kapal admin grant|revoke`: on the control-plane's database, audited with the reason.
async fn set_role(a: crate::args::RoleArgs, admin: bool) -> anyhow::Result<()> {
    let db = kapal::db::DbConfig::new(a.database_url.as_deref(), a.data_dir.clone())
        .map_err(|e| anyhow!("KAPAL_DATABASE_URL (--database-url): {e}"))?;
    let db = kapal_control_plane::operators::connect(&db).await?;
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let verb = if admin { "grant" } else { "revoke" };
    let change = kapal_control_plane::operators::set_admin(
        &db,
        &a.email,
        admin,
        &a.reason,
        &format!("kapal admin {verb} (user {user})"),
        Utc::now().naive_utc(),
    )
    .await?;
    let role = if admin { "an admin" } else { "a customer" };
    if change.changed {
        println!(
            "{} is now {role} (account {}); sessions in use follow within 10 s.",
            change.email, change.account_id
        );
    } else {
        println!("{} is {role} already: nothing changed.", change.email);
    }
    Ok(())
}

/// Runs one operator command.
pub async fn run(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Instances(a) => instances(a).await,
        AdminCommand::Instance(a) => instance(a).await,
        AdminCommand::Capacity(g) => capacity(g).await,
        AdminCommand::Alerts(g) => alerts(g).await,
        AdminCommand::Audit(a) => audit(a).await,
        AdminCommand::Usage(a) => usage(a).await,
        AdminCommand::Restart(a) => diagnostics::operator_action(a, Action::Restart, false).await,
        AdminCommand::Stop(a) => diagnostics::operator_action(a, Action::Stop, false).await,
        AdminCommand::Start(a) => {
            diagnostics::operator_action(a.action, Action::Start, a.override_capacity).await
        }
        AdminCommand::Diagnose(a) => diagnostics::diagnose_as_operator(a).await,
        AdminCommand::Suspend(a) => diagnostics::suspension(a, true).await,
        AdminCommand::Unsuspend(a) => diagnostics::suspension(a, false).await,
        AdminCommand::Revenue(a) => revenue(a).await,
        AdminCommand::Subscriptions(a) => subscriptions(a).await,
        AdminCommand::Events(a) => events(a).await,
        AdminCommand::Extend(a) => crate::commands::billing_ops::extend(a).await,
        AdminCommand::Credit(a) => crate::commands::billing_ops::credit(a).await,
        AdminCommand::Grant(a) => set_role(a, true).await,
        AdminCommand::Revoke(a) => set_role(a, false).await,
    }
}

/// The line printed under a list cut at --limit (with its newline), or nothing.
fn more_lines(more: bool, limit: u32) -> String {
    if more {
        format!(
            "Showing the first {limit}; there may be more: raise --limit or narrow the filters.\n"
        )
    } else {
        String::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Instances
// ---------------------------------------------------------------------------------------------

async fn instances(a: InstancesArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.admin()?;
    let status = a.status.map(InstanceStatus::from).unwrap_or_default() as i32;
    let app_id = a.app.unwrap_or_default();
    let account_id = a.account.unwrap_or_default();
    let (all, more) = collect_pages(a.limit, async |page_size, page_token| {
        let resp = client
            .list_all_instances(ListAllInstancesRequest {
                page_size,
                page_token,
                status,
                app_id: app_id.clone(),
                account_id: account_id.clone(),
            })
            .await
            .or_fail_as_operator(&ctx)?;
        Ok((resp.instances, resp.next_page_token))
    })
    .await?;
    ctx.print(&AllInstances {
        rows: &all,
        more,
        limit: a.limit,
    })
}

/// The answer to `kapal admin instances`: a listing cut at --limit.
struct AllInstances<'a> {
    rows: &'a [AdminInstance],
    /// Whether there may be more than `limit`.
    more: bool,
    limit: u32,
}

#[derive(Serialize)]
struct AllInstancesJson<'a> {
    instances: Vec<AdminInstanceJson<'a>>,
    truncated: bool,
}

impl Render for AllInstances<'_> {
    fn text(&self) -> String {
        if self.rows.is_empty() {
            return "No instances match.\n".to_string();
        }
        instances_table(self.rows) + &more_lines(self.more, self.limit)
    }

    fn json(&self) -> impl Serialize {
        AllInstancesJson {
            instances: self.rows.iter().map(AdminInstanceJson::from).collect(),
            truncated: self.more,
        }
    }
}

fn instances_table(all: &[AdminInstance]) -> String {
    let mut t = Table::new(&[
        "ID", "CUSTOMER", "EMAIL", "APP", "PLAN", "STATUS", "REASON", "CREATED",
    ]);
    for a in all {
        let i = a.instance.clone().unwrap_or_default();
        t.row(vec![
            i.id.clone(),
            a.customer_id.clone(),
            a.email.clone(),
            i.app_id.clone(),
            i.plan_id.clone(),
            instance_status_name(i.status()).to_string(),
            i.status_reason.clone(),
            time(i.created_at.as_ref()),
        ]);
    }
    t.render()
}

/// An instance with its owner, in JSON.
#[derive(Serialize)]
struct AdminInstanceJson<'a> {
    instance: Option<InstanceJson<'a>>,
    account_id: &'a str,
    customer_id: &'a str,
    email: &'a str,
    namespace: &'a str,
}

impl<'a> From<&'a AdminInstance> for AdminInstanceJson<'a> {
    fn from(a: &'a AdminInstance) -> Self {
        AdminInstanceJson {
            instance: a.instance.as_ref().map(InstanceJson::from),
            account_id: &a.account_id,
            customer_id: &a.customer_id,
            email: &a.email,
            namespace: &a.namespace,
        }
    }
}

async fn instance(a: InstanceArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let reason = a.reason.clone().unwrap_or_default();
    let found = ctx
        .admin()?
        .get_instance_as_admin(GetInstanceAsAdminRequest {
            instance_id: a.id,
            include_credentials: a.credentials,
            reason: reason.clone(),
        })
        .await
        .or_fail_as_operator(&ctx)?;
    ctx.print(&OwnedInstance {
        found: &found,
        with_credentials: a.credentials,
    })?;
    if a.credentials {
        ctx.progress(&audit_notice(&reason));
    }
    Ok(())
}

fn audit_notice(reason: &str) -> String {
    format!(
        "This read of the credentials was recorded in the audit log with the reason {reason:?} (see `kapal admin audit`)."
    )
}

/// The answer to `kapal admin instance`: the instance with its owner, and its credentials when
/// they were read.
struct OwnedInstance<'a> {
    found: &'a AdminInstance,
    with_credentials: bool,
}

impl Render for OwnedInstance<'_> {
    fn text(&self) -> String {
        admin_instance_text(self.found, self.with_credentials)
    }

    fn json(&self) -> impl Serialize {
        AdminInstanceJson::from(self.found)
    }
}

fn admin_instance_text(a: &AdminInstance, with_credentials: bool) -> String {
    let i = a.instance.clone().unwrap_or_default();
    let mut lines = vec![
        ("Customer", a.customer_id.clone()),
        ("Email", a.email.clone()),
        ("Account", a.account_id.clone()),
        ("Namespace", dash(&a.namespace)),
    ];
    lines.extend(instance_lines(&i));
    if with_credentials {
        lines.extend(credential_lines(&i));
    } else {
        lines.push((
            "Credentials",
            "not read (add --credentials --reason TEXT; the read is recorded in the audit log)"
                .to_string(),
        ));
    }
    key_values(&lines)
}

async fn usage(a: InstanceArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let u = ctx
        .admin()?
        .get_instance_usage(GetInstanceUsageRequest { instance_id: a.id })
        .await
        .or_fail_as_operator(&ctx)?;
    ctx.print(&Usage(&u))
}

// ---------------------------------------------------------------------------------------------
// Capacity, alerts and the audit log
// ---------------------------------------------------------------------------------------------

async fn capacity(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let c = ctx
        .admin()?
        .get_capacity(GetCapacityRequest {})
        .await
        .or_fail_as_operator(&ctx)?;
    ctx.print(&c)
}

/// The answer to `kapal admin capacity`.
impl Render for Capacity {
    fn text(&self) -> String {
        capacity_text(self)
    }

    fn json(&self) -> impl Serialize {
        CapacityJson::from(self)
    }
}

/// `1.2 vCPU / 4 vCPU (30%)`.
fn share(part: String, whole: String, p: i64, w: i64) -> String {
    format!("{part} / {whole}{}", percent(p, w))
}

fn cpu_share(part: i64, whole: i64) -> String {
    share(cpu_amount(part), cpu_amount(whole), part, whole)
}

fn memory_share(part: i64, whole: i64) -> String {
    share(bytes(part), bytes(whole), part, whole)
}

fn pods_share(part: i64, whole: i64) -> String {
    share(part.to_string(), whole.to_string(), part, whole)
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn capacity_text(c: &Capacity) -> String {
    let mut out = String::new();
    if c.nodes.is_empty() {
        out.push_str("No nodes reported.\n");
    } else {
        let mut t = Table::new(&["NAME", "READY", "SCHEDULABLE", "CPU", "MEMORY", "PODS"]);
        for n in &c.nodes {
            let (alloc, req) = node_amounts(n);
            t.row(vec![
                n.name.clone(),
                yes_no(n.ready),
                yes_no(n.schedulable),
                cpu_share(req.cpu_millis, alloc.cpu_millis),
                memory_share(req.memory_bytes, alloc.memory_bytes),
                pods_share(req.pods, alloc.pods),
            ]);
        }
        out.push_str(&t.render());
    }
    out.push('\n');
    let alloc = c.allocatable.unwrap_or_default();
    let req = c.requested.unwrap_or_default();
    let kapal = c.requested_by_kapal.unwrap_or_default();
    let committed = c.committed.unwrap_or_default();
    let schedulable = c.nodes.iter().filter(|n| n.schedulable).count();
    let ceiling = i64::from(c.ceiling_percent);
    let against_ceiling = |part: i64, whole: i64| {
        let mut s = format!("ceiling {ceiling}%");
        if whole > 0 && percent_value(part, whole) > ceiling {
            s.push_str(": OVER, new checkouts are refused");
        } else if whole <= 0 {
            s.push_str(": nothing allocatable, new checkouts are refused");
        }
        s
    };
    out.push_str(&key_values(&[
        (
            "Schedulable nodes",
            format!("{schedulable} of {}", c.nodes.len()),
        ),
        (
            "Requested CPU",
            format!(
                "{}, Kapal's pods {}",
                cpu_share(req.cpu_millis, alloc.cpu_millis),
                cpu_amount(kapal.cpu_millis)
            ),
        ),
        (
            "Requested memory",
            format!(
                "{}, Kapal's pods {}",
                memory_share(req.memory_bytes, alloc.memory_bytes),
                bytes(kapal.memory_bytes)
            ),
        ),
        (
            "Pods",
            format!(
                "{}, Kapal's {}",
                pods_share(req.pods, alloc.pods),
                kapal.pods
            ),
        ),
        (
            "Committed CPU",
            format!(
                "{}; {}",
                cpu_share(committed.cpu_millis, alloc.cpu_millis),
                against_ceiling(committed.cpu_millis, alloc.cpu_millis)
            ),
        ),
        (
            "Committed memory",
            format!(
                "{}; {}",
                memory_share(committed.memory_bytes, alloc.memory_bytes),
                against_ceiling(committed.memory_bytes, alloc.memory_bytes)
            ),
        ),
        ("Observed", time(c.observed_at.as_ref())),
    ]));
    out
}

fn node_amounts(n: &NodeCapacity) -> (ResourceAmounts, ResourceAmounts) {
    (
        n.allocatable.unwrap_or_default(),
        n.requested.unwrap_or_default(),
    )
}

/// CPU, memory and pods in JSON; none reported reads as zeros.
#[derive(Serialize)]
struct AmountsJson {
    cpu_millis: i64,
    memory_bytes: i64,
    pods: i64,
}

impl From<Option<&ResourceAmounts>> for AmountsJson {
    fn from(a: Option<&ResourceAmounts>) -> Self {
        let a = a.copied().unwrap_or_default();
        AmountsJson {
            cpu_millis: a.cpu_millis,
            memory_bytes: a.memory_bytes,
            pods: a.pods,
        }
    }
}

#[derive(Serialize)]
struct NodeJson<'a> {
    name: &'a str,
    ready: bool,
    schedulable: bool,
    allocatable: AmountsJson,
    requested: AmountsJson,
}

#[derive(Serialize)]
struct CapacityJson<'a> {
    nodes: Vec<NodeJson<'a>>,
    allocatable: AmountsJson,
    requested: AmountsJson,
    requested_by_kapal: AmountsJson,
    committed: AmountsJson,
    ceiling_percent: u32,
    observed_at: Option<String>,
}

impl<'a> From<&'a Capacity> for CapacityJson<'a> {
    fn from(c: &'a Capacity) -> Self {
        CapacityJson {
            nodes: c
                .nodes
                .iter()
                .map(|n| NodeJson {
                    name: &n.name,
                    ready: n.ready,
                    schedulable: n.schedulable,
                    allocatable: n.allocatable.as_ref().into(),
                    requested: n.requested.as_ref().into(),
                })
                .collect(),
            allocatable: c.allocatable.as_ref().into(),
            requested: c.requested.as_ref().into(),
            requested_by_kapal: c.requested_by_kapal.as_ref().into(),
            committed: c.committed.as_ref().into(),
            ceiling_percent: c.ceiling_percent,
            observed_at: ts_json(c.observed_at.as_ref()),
        }
    }
}

async fn alerts(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let alerts = ctx
        .admin()?
        .list_alerts(ListAlertsRequest {})
        .await
        .or_fail_as_operator(&ctx)?
        .alerts;
    ctx.print(&Alerts(alerts))
}

/// The answer to `kapal admin alerts`.
struct Alerts(Vec<Alert>);

#[derive(Serialize)]
struct AlertsJson<'a> {
    alerts: Vec<AlertJson<'a>>,
}

impl Render for Alerts {
    fn text(&self) -> String {
        alerts_text(&self.0)
    }

    fn json(&self) -> impl Serialize {
        AlertsJson {
            alerts: self.0.iter().map(AlertJson::from).collect(),
        }
    }
}

fn severity(a: &Alert) -> &'static str {
    short(a.severity().as_str_name(), "ALERT_SEVERITY_")
}

fn alerts_text(alerts: &[Alert]) -> String {
    if alerts.is_empty() {
        return "No alerts.\n".to_string();
    }
    let mut t = Table::new(&["SEVERITY", "KIND", "SUBJECT", "SINCE", "MESSAGE"]);
    for a in alerts {
        t.row(vec![
            severity(a).to_string(),
            a.kind.clone(),
            a.subject.clone(),
            time(a.since.as_ref()),
            a.message.clone(),
        ]);
    }
    t.render()
}

/// An alert in JSON.
#[derive(Serialize)]
struct AlertJson<'a> {
    severity: &'static str,
    kind: &'a str,
    subject: &'a str,
    since: Option<String>,
    message: &'a str,
}

impl<'a> From<&'a Alert> for AlertJson<'a> {
    fn from(a: &'a Alert) -> Self {
        AlertJson {
            severity: severity(a),
            kind: &a.kind,
            subject: &a.subject,
            since: ts_json(a.since.as_ref()),
            message: &a.message,
        }
    }
}

async fn audit(a: AuditArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.admin()?;
    let (all, more) = collect_pages(a.limit, async |page_size, page_token| {
        let resp = client
            .list_audit_events(ListAuditEventsRequest {
                page_size,
                page_token,
            })
            .await
            .or_fail_as_operator(&ctx)?;
        Ok((resp.events, resp.next_page_token))
    })
    .await?;
    ctx.print(&AuditLog {
        events: &all,
        more,
        limit: a.limit,
    })
}

/// The answer to `kapal admin audit`: the newest events, cut at --limit.
struct AuditLog<'a> {
    events: &'a [AuditEvent],
    /// Whether there may be more than `limit`.
    more: bool,
    limit: u32,
}

#[derive(Serialize)]
struct AuditLogJson<'a> {
    events: Vec<AuditEventJson<'a>>,
    truncated: bool,
}

impl Render for AuditLog<'_> {
    fn text(&self) -> String {
        if self.events.is_empty() {
            return "The audit log is empty.\n".to_string();
        }
        audit_table(self.events) + &more_lines(self.more, self.limit)
    }

    fn json(&self) -> impl Serialize {
        AuditLogJson {
            events: self.events.iter().map(AuditEventJson::from).collect(),
            truncated: self.more,
        }
    }
}

fn audit_table(events: &[AuditEvent]) -> String {
    // TARGET: the instance, account, subscription or invoice the action was done to.
    let mut t = Table::new(&["AT", "OPERATOR", "ACTION", "TARGET", "OWNER", "REASON"]);
    for e in events {
        t.row(vec![
            time(e.at.as_ref()),
            e.actor_email.clone(),
            e.action.clone(),
            if e.target.is_empty() {
                e.instance_id.clone()
            } else {
                e.target.clone()
            },
            e.instance_account_id.clone(),
            e.reason.clone(),
        ]);
    }
    t.render()
}

/// An operator's read of a customer's secret, in JSON.
#[derive(Serialize)]
struct AuditEventJson<'a> {
    id: &'a str,
    at: Option<String>,
    actor_account_id: &'a str,
    actor_email: &'a str,
    action: &'a str,
    instance_id: &'a str,
    instance_account_id: &'a str,
    reason: &'a str,
    target: &'a str,
}

impl<'a> From<&'a AuditEvent> for AuditEventJson<'a> {
    fn from(e: &'a AuditEvent) -> Self {
        AuditEventJson {
            id: &e.id,
            at: ts_json(e.at.as_ref()),
            actor_account_id: &e.actor_account_id,
            actor_email: &e.actor_email,
            action: &e.action,
            instance_id: &e.instance_id,
            target: &e.target,
            instance_account_id: &e.instance_account_id,
            reason: &e.reason,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Billing: revenue, subscriptions, events
// ---------------------------------------------------------------------------------------------

async fn revenue(a: RevenueArgs) -> anyhow::Result<()> {
    let (from, to) = revenue_range(a.from, a.to)?;
    let ctx = Ctx::new(&a.global)?;
    let r = ctx
        .billing_admin()?
        .get_revenue_report(GetRevenueReportRequest {
            from: from.map(timestamp),
            to: to.map(timestamp),
        })
        .await
        .or_fail_as_operator(&ctx)?;
    ctx.print(&r)
}

/// The answer to `kapal admin revenue`.
impl Render for RevenueReport {
    fn text(&self) -> String {
        revenue_text(self)
    }

    fn json(&self) -> impl Serialize {
        RevenueJson::from(self)
    }
}

/// `40.0% (4 of 10 ...)`, or `- (none ...)` when nothing was counted.
fn rate(rate: f64, part: u64, whole: u64, what: &str) -> String {
    if whole == 0 {
        format!("- (no {what})")
    } else {
        format!("{:.1}% ({part} of {whole} {what})", rate * 100.0)
    }
}

fn revenue_text(r: &RevenueReport) -> String {
    let mut renewal = rate(
        r.renewal_rate,
        r.renewals_paid,
        r.renewals_due,
        "renewals due",
    );
    if r.renewals_due > 0 && r.renewal_rate < RENEWAL_TARGET {
        renewal.push_str(&format!(
            ": BELOW the {:.0}% target",
            RENEWAL_TARGET * 100.0
        ));
    }
    let churn = if r.churned == 0 && r.churn_rate == 0.0 {
        "0 paid subscriptions ended".to_string()
    } else {
        format!(
            "{:.1}% ({} paid subscription{} ended)",
            r.churn_rate * 100.0,
            r.churned,
            if r.churned == 1 { "" } else { "s" }
        )
    };
    let mut out = key_values(&[
        (
            "Range",
            format!(
                "{} to {} (exclusive)",
                time(r.from.as_ref()),
                time(r.to.as_ref())
            ),
        ),
        ("MRR", money(r.mrr.as_ref())),
        (
            "Trial conversion",
            rate(
                r.trial_conversion_rate,
                r.trials_converted,
                r.trials_ended,
                "trials that ended",
            ),
        ),
        ("Renewal rate", renewal),
        ("Churn", churn),
        ("Generated", time(r.generated_at.as_ref())),
    ]);
    out.push('\n');
    if r.by_app.is_empty() {
        out.push_str("No subscriptions now.\n");
    } else {
        let mut t = Table::new(&["APP", "TRIALING", "ACTIVE", "PAST DUE", "SUSPENDED", "MRR"]);
        for a in &r.by_app {
            t.row(vec![
                a.app_id.clone(),
                a.trialing.to_string(),
                a.active.to_string(),
                a.past_due.to_string(),
                a.suspended.to_string(),
                money(a.mrr.as_ref()),
            ]);
        }
        out.push_str(&t.render());
    }
    out.push('\n');
    let mut t = Table::new(&[
        "MONTH",
        "INVOICES",
        "PAID",
        "FAILED",
        "VOID",
        "INVOICED",
        "COLLECTED",
    ]);
    let mut sums = [0u64; 4];
    for m in &r.invoices_by_month {
        for (sum, n) in sums.iter_mut().zip([m.invoices, m.paid, m.failed, m.void]) {
            *sum += n;
        }
        t.row(vec![
            m.month.clone(),
            m.invoices.to_string(),
            m.paid.to_string(),
            m.failed.to_string(),
            m.void.to_string(),
            money(m.invoiced.as_ref()),
            money(m.collected.as_ref()),
        ]);
    }
    let mut total = vec!["TOTAL".to_string()];
    total.extend(sums.iter().map(u64::to_string));
    total.push(money(r.invoiced_total.as_ref()));
    total.push(money(r.collected_total.as_ref()));
    t.row(total);
    out.push_str(&t.render());
    out
}

/// A revenue report in JSON.
#[derive(Serialize)]
struct RevenueJson<'a> {
    from: Option<String>,
    to: Option<String>,
    generated_at: Option<String>,
    mrr: Option<MoneyJson<'a>>,
    by_app: Vec<AppSubscriptionsJson<'a>>,
    trials_ended: u64,
    trials_converted: u64,
    trial_conversion_rate: f64,
    renewals_due: u64,
    renewals_paid: u64,
    renewal_rate: f64,
    renewal_rate_below_target: bool,
    churned: u64,
    churn_rate: f64,
    invoices_by_month: Vec<InvoicePeriodJson<'a>>,
    invoiced_total: Option<MoneyJson<'a>>,
    collected_total: Option<MoneyJson<'a>>,
}

#[derive(Serialize)]
struct AppSubscriptionsJson<'a> {
    app_id: &'a str,
    trialing: u64,
    active: u64,
    past_due: u64,
    suspended: u64,
    mrr: Option<MoneyJson<'a>>,
}

#[derive(Serialize)]
struct InvoicePeriodJson<'a> {
    month: &'a str,
    invoices: u64,
    paid: u64,
    failed: u64,
    void: u64,
    invoiced: Option<MoneyJson<'a>>,
    collected: Option<MoneyJson<'a>>,
}

impl<'a> From<&'a RevenueReport> for RevenueJson<'a> {
    fn from(r: &'a RevenueReport) -> Self {
        RevenueJson {
            from: ts_json(r.from.as_ref()),
            to: ts_json(r.to.as_ref()),
            generated_at: ts_json(r.generated_at.as_ref()),
            mrr: money_json(r.mrr.as_ref()),
            by_app: r
                .by_app
                .iter()
                .map(|a| AppSubscriptionsJson {
                    app_id: &a.app_id,
                    trialing: a.trialing,
                    active: a.active,
                    past_due: a.past_due,
                    suspended: a.suspended,
                    mrr: money_json(a.mrr.as_ref()),
                })
                .collect(),
            trials_ended: r.trials_ended,
            trials_converted: r.trials_converted,
            trial_conversion_rate: r.trial_conversion_rate,
            renewals_due: r.renewals_due,
            renewals_paid: r.renewals_paid,
            renewal_rate: r.renewal_rate,
            renewal_rate_below_target: r.renewals_due > 0 && r.renewal_rate < RENEWAL_TARGET,
            churned: r.churned,
            churn_rate: r.churn_rate,
            invoices_by_month: r
                .invoices_by_month
                .iter()
                .map(|m| InvoicePeriodJson {
                    month: &m.month,
                    invoices: m.invoices,
                    paid: m.paid,
                    failed: m.failed,
                    void: m.void,
                    invoiced: money_json(m.invoiced.as_ref()),
                    collected: money_json(m.collected.as_ref()),
                })
                .collect(),
            invoiced_total: money_json(r.invoiced_total.as_ref()),
            collected_total: money_json(r.collected_total.as_ref()),
        }
    }
}

async fn subscriptions(a: SubscriptionsArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.billing_admin()?;
    let status = a.status.map(SubscriptionStatus::from).unwrap_or_default() as i32;
    let app_id = a.app.unwrap_or_default();
    let account_id = a.account.unwrap_or_default();
    let (all, more) = collect_pages(a.limit, async |page_size, page_token| {
        let resp = client
            .list_all_subscriptions(ListAllSubscriptionsRequest {
                page_size,
                page_token,
                status,
                app_id: app_id.clone(),
                account_id: account_id.clone(),
            })
            .await
            .or_fail_as_operator(&ctx)?;
        Ok((resp.subscriptions, resp.next_page_token))
    })
    .await?;
    ctx.print(&AllSubscriptions {
        rows: &all,
        more,
        limit: a.limit,
    })
}

/// The answer to `kapal admin subscriptions`: a listing cut at --limit.
struct AllSubscriptions<'a> {
    rows: &'a [Subscription],
    /// Whether there may be more than `limit`.
    more: bool,
    limit: u32,
}

#[derive(Serialize)]
struct AllSubscriptionsJson<'a> {
    subscriptions: Vec<AdminSubscriptionJson<'a>>,
    truncated: bool,
}

impl Render for AllSubscriptions<'_> {
    fn text(&self) -> String {
        if self.rows.is_empty() {
            return "No subscriptions match.\n".to_string();
        }
        subscriptions_table(self.rows) + &more_lines(self.more, self.limit)
    }

    fn json(&self) -> impl Serialize {
        AllSubscriptionsJson {
            subscriptions: self.rows.iter().map(AdminSubscriptionJson::from).collect(),
            truncated: self.more,
        }
    }
}

fn subscriptions_table(all: &[Subscription]) -> String {
    let mut t = Table::new(&[
        "ID",
        "ACCOUNT",
        "APP",
        "PLAN",
        "STATUS",
        "PRICE",
        "PERIOD END",
        "AUTO-RENEW",
        "INSTANCE",
    ]);
    for s in all {
        t.row(vec![
            s.id.clone(),
            dash(&s.account_id),
            s.app_id.clone(),
            s.plan_id.clone(),
            subscription_status(s).to_string(),
            format!("{}/month", money(s.price.as_ref())),
            time(s.current_period_end.as_ref()),
            if s.auto_renew { "on" } else { "off" }.to_string(),
            dash(&s.instance_id),
        ]);
    }
    t.render()
}

/// A subscription with its account, in JSON.
#[derive(Serialize)]
struct AdminSubscriptionJson<'a> {
    #[serde(flatten)]
    subscription: SubscriptionJson<'a>,
    account_id: &'a str,
}

impl<'a> From<&'a Subscription> for AdminSubscriptionJson<'a> {
    fn from(s: &'a Subscription) -> Self {
        AdminSubscriptionJson {
            subscription: SubscriptionJson::from(s),
            account_id: &s.account_id,
        }
    }
}

async fn events(a: SubscriptionArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.billing_admin()?;
    // Every event, oldest first, a page at a time.
    let (events, _) = collect_pages(u32::MAX, async |page_size, page_token| {
        let resp = client
            .list_subscription_events_as_admin(ListSubscriptionEventsRequest {
                subscription_id: a.id.clone(),
                page_size,
                page_token,
            })
            .await
            .or_fail_as_operator(&ctx)?;
        Ok((resp.events, resp.next_page_token))
    })
    .await?;
    ctx.print(&Events {
        subscription_id: &a.id,
        events: &events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::fixtures::{GIB, at};
    use crate::output::json_of;
    use kapal::proto::v1::{AlertSeverity, AppSubscriptions, Credentials, Instance, InvoicePeriod};
    use serde_json::json;

    const ACCOUNT: &str = "0b6a3c1e-55a4-4a8e-9b1f-3f1f0f7c2a10";

    #[test]
    fn revenue_months_are_whole_utc_months() {
        let month = |m| NaiveDate::from_ymd_opt(2026, m, 1);
        let (from, to) = revenue_range(month(9), month(11)).expect("range");
        assert_eq!(rfc(from), "2026-09-01T00:00:00Z");
        // --to is the last month reported: the range ends when the next one starts.
        assert_eq!(rfc(to), "2026-12-01T00:00:00Z");
        let (_, to) = revenue_range(None, month(12)).expect("range");
        assert_eq!(rfc(to), "2027-01-01T00:00:00Z");
        let (from, to) = revenue_range(month(11), month(11)).expect("one month");
        assert_eq!(
            (rfc(from).as_str(), rfc(to).as_str()),
            ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
        );
        assert_eq!(revenue_range(None, None).expect("defaults"), (None, None));
        let e = revenue_range(month(11), month(9)).expect_err("reversed");
        assert_eq!(
            e.to_string(),
            "--from 2026-11 is after --to 2026-09: the first month must not come after the last"
        );
        assert_eq!(timestamp(from.expect("from")).seconds, 1_793_491_200);
    }

    fn rfc(t: Option<DateTime<Utc>>) -> String {
        crate::output::rfc3339(t)
    }

    fn admin_instance() -> AdminInstance {
        AdminInstance {
            instance: Some(Instance {
                id: "i1".to_string(),
                app_id: "n8n".to_string(),
                plan_id: "trial".to_string(),
                status: InstanceStatus::Failed as i32,
                status_reason: "image pull failed".to_string(),
                created_at: at("2026-11-20T09:00:00Z"),
                credentials: Some(Credentials {
                    username: "admin@example.com".to_string(),
                    password: "s3cret".to_string(),
                    login_url: "https://c1.n8n.kapal.example/signin".to_string(),
                }),
                ..Instance::default()
            }),
            account_id: ACCOUNT.to_string(),
            customer_id: "c1a2b3c4".to_string(),
            email: "sari@example.com".to_string(),
            namespace: "kapal-c1a2b3c4-n8n".to_string(),
        }
    }

    #[test]
    fn all_instances_table_shows_the_owner() {
        assert_eq!(
            instances_table(&[admin_instance()]),
            "ID  CUSTOMER  EMAIL             APP  PLAN   STATUS  REASON             CREATED\n\
             i1  c1a2b3c4  sari@example.com  n8n  trial  FAILED  image pull failed  2026-11-20T09:00:00Z\n"
        );
        let v = json_of(&OwnedInstance {
            found: &admin_instance(),
            with_credentials: false,
        });
        assert_eq!(v["account_id"], json!(ACCOUNT));
        assert_eq!(v["email"], json!("sari@example.com"));
        assert_eq!(v["namespace"], json!("kapal-c1a2b3c4-n8n"));
        assert_eq!(v["instance"]["status"], json!("FAILED"));
    }

    #[test]
    fn credentials_are_shown_only_when_read() {
        let without = admin_instance_text(&admin_instance(), false);
        assert!(without.starts_with("Customer:  "), "{without}");
        assert!(
            without.contains("Namespace:     kapal-c1a2b3c4-n8n\n"),
            "{without}"
        );
        assert!(
            without.contains("Credentials:   not read (add --credentials --reason TEXT"),
            "{without}"
        );
        assert!(!without.contains("s3cret"), "{without}");
        let with = admin_instance_text(&admin_instance(), true);
        assert!(with.contains("Password:      s3cret\n"), "{with}");
        assert!(
            with.contains("Username:      admin@example.com\n"),
            "{with}"
        );
        assert_eq!(
            audit_notice("ticket 42"),
            "This read of the credentials was recorded in the audit log with the reason \"ticket 42\" (see `kapal admin audit`)."
        );
    }

    fn amounts(cpu_millis: i64, memory_bytes: i64, pods: i64) -> Option<ResourceAmounts> {
        Some(ResourceAmounts {
            cpu_millis,
            memory_bytes,
            pods,
        })
    }

    fn capacity() -> Capacity {
        Capacity {
            nodes: vec![
                NodeCapacity {
                    name: "node-a".to_string(),
                    ready: true,
                    schedulable: true,
                    allocatable: amounts(4000, 8 * GIB, 110),
                    requested: amounts(1200, 2 * GIB, 12),
                },
                NodeCapacity {
                    name: "node-b".to_string(),
                    ready: false,
                    schedulable: false,
                    allocatable: amounts(2000, 4 * GIB, 110),
                    requested: amounts(0, 0, 0),
                },
            ],
            allocatable: amounts(4000, 8 * GIB, 110),
            requested: amounts(1200, 2 * GIB, 12),
            requested_by_kapal: amounts(800, GIB, 6),
            committed: amounts(3500, 4 * GIB, 0),
            ceiling_percent: 80,
            observed_at: at("2026-11-25T10:00:00Z"),
        }
    }

    #[test]
    fn capacity_shows_nodes_totals_and_the_ceiling() {
        assert_eq!(
            capacity_text(&capacity()),
            "NAME    READY  SCHEDULABLE  CPU                      MEMORY               PODS\n\
             node-a  yes    yes          1.2 vCPU / 4 vCPU (30%)  2 GiB / 8 GiB (25%)  12 / 110 (11%)\n\
             node-b  no     no           0 vCPU / 2 vCPU (0%)     0 B / 4 GiB (0%)     0 / 110 (0%)\n\
             \n\
             Schedulable nodes:  1 of 2\n\
             Requested CPU:      1.2 vCPU / 4 vCPU (30%), Kapal's pods 0.8 vCPU\n\
             Requested memory:   2 GiB / 8 GiB (25%), Kapal's pods 1 GiB\n\
             Pods:               12 / 110 (11%), Kapal's 6\n\
             Committed CPU:      3.5 vCPU / 4 vCPU (88%); ceiling 80%: OVER, new checkouts are refused\n\
             Committed memory:   4 GiB / 8 GiB (50%); ceiling 80%\n\
             Observed:           2026-11-25T10:00:00Z\n"
        );
        let v = json_of(&capacity());
        assert_eq!(v["ceiling_percent"], json!(80));
        assert_eq!(v["committed"]["cpu_millis"], json!(3500));
        assert_eq!(v["nodes"][1]["ready"], json!(false));
        assert_eq!(v["nodes"][0]["allocatable"]["memory_bytes"], json!(8 * GIB));

        let empty = capacity_text(&Capacity::default());
        assert!(empty.starts_with("No nodes reported.\n"), "{empty}");
        assert!(
            empty.contains("nothing allocatable, new checkouts are refused"),
            "{empty}"
        );
    }

    #[test]
    fn alerts_are_listed_or_said_to_be_none() {
        assert_eq!(alerts_text(&[]), "No alerts.\n");
        let alerts = vec![Alert {
            kind: "node_not_ready".to_string(),
            severity: AlertSeverity::Critical as i32,
            message: "node-b is not ready".to_string(),
            subject: "node-b".to_string(),
            since: at("2026-11-25T09:50:00Z"),
        }];
        assert_eq!(
            alerts_text(&alerts),
            "SEVERITY  KIND            SUBJECT  SINCE                 MESSAGE\n\
             CRITICAL  node_not_ready  node-b   2026-11-25T09:50:00Z  node-b is not ready\n"
        );
        assert_eq!(
            json_of(&Alerts(alerts.clone()))["alerts"][0],
            json!({
                "severity": "CRITICAL",
                "kind": "node_not_ready",
                "subject": "node-b",
                "since": "2026-11-25T09:50:00Z",
                "message": "node-b is not ready",
            })
        );
    }

    #[test]
    fn audit_log_lists_who_read_what_and_why() {
        let e = AuditEvent {
            id: "e1".to_string(),
            actor_account_id: "op1".to_string(),
            actor_email: "ops@kapal.example".to_string(),
            action: "read_credentials".to_string(),
            instance_id: "i1".to_string(),
            instance_account_id: ACCOUNT.to_string(),
            reason: "ticket 42".to_string(),
            at: at("2026-11-25T10:05:00Z"),
            target: "i1".to_string(),
        };
        let table = audit_table(std::slice::from_ref(&e));
        assert!(
            table.starts_with(
                "AT                    OPERATOR           ACTION            TARGET  OWNER"
            ),
            "{table}"
        );
        assert!(
            table.contains("2026-11-25T10:05:00Z  ops@kapal.example  read_credentials  i1"),
            "{table}"
        );
        assert!(table.trim_end().ends_with("ticket 42"), "{table}");
        let v = json_of(&AuditLog {
            events: std::slice::from_ref(&e),
            more: false,
            limit: 50,
        })["events"][0]
            .clone();
        assert_eq!(v["reason"], json!("ticket 42"));
        assert_eq!(v["at"], json!("2026-11-25T10:05:00Z"));
    }

    fn report() -> RevenueReport {
        let idr = |n| Some(kapal::wire::idr(n));
        RevenueReport {
            mrr: idr(1_264_000),
            by_app: vec![AppSubscriptions {
                app_id: "n8n".to_string(),
                trialing: 3,
                active: 16,
                past_due: 1,
                suspended: 0,
                mrr: idr(1_264_000),
            }],
            trials_ended: 10,
            trials_converted: 4,
            trial_conversion_rate: 0.4,
            renewals_due: 8,
            renewals_paid: 6,
            renewal_rate: 0.75,
            churned: 1,
            churn_rate: 0.05,
            invoices_by_month: vec![
                InvoicePeriod {
                    month: "2026-10".to_string(),
                    invoices: 5,
                    paid: 4,
                    failed: 1,
                    void: 0,
                    invoiced: idr(395_000),
                    collected: idr(316_000),
                    credited: idr(0),
                },
                InvoicePeriod {
                    month: "2026-11".to_string(),
                    invoices: 7,
                    paid: 6,
                    failed: 0,
                    void: 1,
                    invoiced: idr(474_000),
                    collected: idr(474_000),
                    credited: idr(0),
                },
            ],
            invoiced_total: idr(869_000),
            collected_total: idr(790_000),
            credited_total: idr(0),
            from: at("2026-10-01T00:00:00Z"),
            to: at("2026-12-01T00:00:00Z"),
            generated_at: at("2026-11-25T10:00:00Z"),
        }
    }

    #[test]
    fn revenue_report_reads_rates_flags_and_totals() {
        assert_eq!(
            revenue_text(&report()),
            "Range:             2026-10-01T00:00:00Z to 2026-12-01T00:00:00Z (exclusive)\n\
             MRR:               Rp 1.264.000\n\
             Trial conversion:  40.0% (4 of 10 trials that ended)\n\
             Renewal rate:      75.0% (6 of 8 renewals due): BELOW the 80% target\n\
             Churn:             5.0% (1 paid subscription ended)\n\
             Generated:         2026-11-25T10:00:00Z\n\
             \n\
             APP  TRIALING  ACTIVE  PAST DUE  SUSPENDED  MRR\n\
             n8n  3         16      1         0          Rp 1.264.000\n\
             \n\
             MONTH    INVOICES  PAID  FAILED  VOID  INVOICED    COLLECTED\n\
             2026-10  5         4     1       0     Rp 395.000  Rp 316.000\n\
             2026-11  7         6     0       1     Rp 474.000  Rp 474.000\n\
             TOTAL    12        10    1       1     Rp 869.000  Rp 790.000\n"
        );
        let v = json_of(&report());
        assert_eq!(v["renewal_rate_below_target"], json!(true));
        assert_eq!(v["mrr"]["amount"], json!(1_264_000));
        assert_eq!(v["invoices_by_month"][1]["void"], json!(1));
        assert_eq!(v["collected_total"]["display"], json!("Rp 790.000"));

        // On target, and nothing to measure: no flag and no made-up 0%.
        let good = RevenueReport {
            renewals_paid: 8,
            renewal_rate: 1.0,
            trials_ended: 0,
            trials_converted: 0,
            trial_conversion_rate: 0.0,
            churned: 0,
            churn_rate: 0.0,
            by_app: vec![],
            ..report()
        };
        let text = revenue_text(&good);
        assert!(
            text.contains("Renewal rate:      100.0% (8 of 8 renewals due)\n"),
            "{text}"
        );
        assert!(!text.contains("BELOW"), "{text}");
        assert!(
            text.contains("Trial conversion:  - (no trials that ended)\n"),
            "{text}"
        );
        assert!(
            text.contains("Churn:             0 paid subscriptions ended\n"),
            "{text}"
        );
        assert!(text.contains("No subscriptions now.\n"), "{text}");
        assert_eq!(json_of(&good)["renewal_rate_below_target"], json!(false));
        let none_due = RevenueReport {
            renewals_due: 0,
            renewals_paid: 0,
            renewal_rate: 0.0,
            ..report()
        };
        let text = revenue_text(&none_due);
        assert!(
            text.contains("Renewal rate:      - (no renewals due)\n"),
            "{text}"
        );
        assert!(!text.contains("BELOW"), "{text}");
    }

    #[test]
    fn all_subscriptions_show_the_account() {
        let s = Subscription {
            id: "s1".to_string(),
            app_id: "n8n".to_string(),
            plan_id: "starter".to_string(),
            status: SubscriptionStatus::PastDue as i32,
            price: Some(kapal::wire::idr(79_000)),
            current_period_end: at("2026-12-01T00:00:00Z"),
            auto_renew: true,
            instance_id: "i1".to_string(),
            account_id: ACCOUNT.to_string(),
            ..Subscription::default()
        };
        assert_eq!(
            subscriptions_table(std::slice::from_ref(&s)),
            format!(
                "ID  ACCOUNT                               APP  PLAN     STATUS    PRICE            PERIOD END            AUTO-RENEW  INSTANCE\n\
                 s1  {ACCOUNT}  n8n  starter  PAST_DUE  Rp 79.000/month  2026-12-01T00:00:00Z  on          i1\n"
            )
        );
        let v = json_of(&AllSubscriptions {
            rows: std::slice::from_ref(&s),
            more: false,
            limit: 200,
        })["subscriptions"][0]
            .clone();
        assert_eq!(v["account_id"], json!(ACCOUNT));
        assert_eq!(v["instance_id"], json!("i1"));
        assert_eq!(v["status"], json!("PAST_DUE"));
    }
}
