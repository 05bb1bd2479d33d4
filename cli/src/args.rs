//! The command line of the client commands: every `kapal <command>` and `kapal admin <command>`
//! with its arguments and options (clap derive), and the parsers of the values they take.
//! What a command does lives in `commands/`; this file only says what it accepts.

use std::path::PathBuf;
use std::time::Duration;

use chrono::NaiveDate;
use clap::{Args, Subcommand, ValueEnum};

use kapal::proto::v1::{InstanceStatus, SubscriptionStatus};

// Options every client command takes (no doc comment: clap would use it as the commands' about).
#[derive(Args, Clone, Default)]
pub struct Global {
    /// The Kapal gateway, e.g. https://api.kapal.example [default: the endpoint of the saved
    /// session, else http://127.0.0.1:8080]
    #[arg(long, env = "KAPAL_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// A session or API token to call with, instead of the session saved by `kapal login`.
    #[arg(
        long,
        env = "KAPAL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Trust this CA certificate (PEM file) instead of the system's roots, for an https:// endpoint
    /// whose certificate comes from a private CA.
    #[arg(long, env = "KAPAL_CA_CERT", value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// How to print results.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How results are printed.
#[derive(ValueEnum, Clone, Copy, Default, PartialEq, Eq, Debug)]
pub enum Output {
    /// Aligned plain-text tables, for people.
    #[default]
    Table,
    /// JSON, for scripts.
    Json,
}

#[derive(Args, Clone, Default)]
pub struct PasswordArg {
    /// The password. Without it: KAPAL_PASSWORD, else a prompt on a terminal, else one line read
    /// from standard input. (Prefer those: arguments are visible to other local users.)
    #[arg(
        long,
        env = "KAPAL_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<String>,
}

/// Kapal's client commands; `main` flattens them into the top-level commands of `kapal`.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create a Kapal account, log in and save the session.
    Signup(SignupArgs),
    /// Log in and save the session in your config directory.
    Login(LoginArgs),
    /// End the session and forget the saved token.
    Logout(Global),
    /// Show the account you are logged in as.
    Whoami(Global),
    /// Verify your email address with the code mailed to it (needed before ordering).
    VerifyEmail(VerifyEmailArgs),
    /// Mail a new verification code to the address of your account.
    ResendVerification(Global),
    /// Reset a forgotten password: without --code, mails a code; with it, sets a new password.
    ResetPassword(ResetPasswordArgs),
    /// List the apps you can order, with their plans, prices and resources.
    Catalog(Global),
    /// Show one app of the catalog with its plans.
    App(AppArgs),
    /// Order an app on a plan; with --wait, follow it until the instance is ready.
    Order(OrderArgs),
    /// List your orders, newest first.
    Orders(Global),
    /// List your instances, newest first.
    Instances(Global),
    /// Show one instance with its URL and credentials.
    Instance(InstanceArg),
    /// Follow an instance's status changes until it is deleted (Ctrl-C to stop).
    Watch(InstanceArg),
    /// Stop an instance (scale it to zero); its data is kept.
    Stop(InstanceArg),
    /// Start a stopped instance again.
    Start(InstanceArg),
    /// Restart an instance's workloads.
    Restart(InstanceArg),
    /// Delete an instance: its workloads now, its data after the retention period.
    Delete(DeleteArgs),
    /// List your subscriptions, newest first.
    Subscriptions(Global),
    /// List your invoices, newest first.
    Invoices(InvoicesArgs),
    /// Cancel a subscription at the end of its current period.
    Cancel(SubscriptionArg),
    /// Turn automatic renewal of a subscription on or off.
    AutoRenew(AutoRenewArgs),
    /// Show what an instance uses now: CPU and memory against its plan's limits, and storage.
    Usage(InstanceArg),
    /// List an instance's history, oldest first: status changes and actions taken on it
    /// (by billing or by Kapal support, with their reason).
    History(InstanceArg),
    /// Why an instance is unhappy: Kubernetes events, pods and containers, volumes, history and
    /// the last lines of each container's log.
    Diagnose(DiagnoseArgs),
    /// Change a subscription's plan from its next renewal on (a trial: converts it to paid).
    ChangePlan(ChangePlanArgs),
    /// List every status change of a subscription, oldest first, with time and cause.
    Events(SubscriptionArg),
    /// Operators' commands (need an admin account): all instances and subscriptions,
    /// capacity, alerts, the audit log and revenue.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Create, list and revoke API tokens for scripts and integrations.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Change your password (ends your other sessions).
    #[command(subcommand)]
    Password(PasswordCommand),
    /// List your login sessions and end them.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Support tickets: open one, follow it, answer; operators: the queue, answers, the report.
    #[command(subcommand)]
    Support(SupportCommand),
}

#[derive(Args)]
pub struct SignupArgs {
    /// Your email address; you log in with it.
    #[arg(long)]
    pub email: String,
    #[command(flatten)]
    pub password: PasswordArg,
    /// The name shown in the dashboard [default: the email's local part]
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct LoginArgs {
    /// The email address of your account.
    #[arg(long)]
    pub email: String,
    #[command(flatten)]
    pub password: PasswordArg,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct VerifyEmailArgs {
    /// The email address of your account.
    #[arg(long)]
    pub email: String,
    /// The code from the email, e.g. 1234-5678.
    #[arg(long)]
    pub code: String,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct ResetPasswordArgs {
    /// The email address of your account.
    #[arg(long)]
    pub email: String,
    /// The code from the reset email. Without it, a code is mailed to the address.
    #[arg(long)]
    pub code: Option<String>,
    /// The new password (with --code). Without it: KAPAL_PASSWORD, else a prompt on a
    /// terminal, else one line read from standard input.
    #[command(flatten)]
    pub password: PasswordArg,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct AppArgs {
    /// The app's id, e.g. n8n (see `kapal catalog`).
    pub app: String,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct OrderArgs {
    /// The app to order, e.g. n8n (see `kapal catalog`).
    pub app: String,
    /// The plan, e.g. trial.
    #[arg(long)]
    pub plan: String,
    /// Makes retrying safe: the same key never places a second order [default: a new UUID, printed
    /// so that you can retry with it]
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Follow the order and the instance until it is ready, then print its URL and credentials.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (e.g. 90s, 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct InstanceArg {
    /// The instance's id (see `kapal instances`).
    pub id: String,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct DiagnoseArgs {
    /// The instance's id (see `kapal instances`).
    pub id: String,
    /// Lines of each container's log to show (at most 500).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub log_lines: u32,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// The instance's id (see `kapal instances`).
    pub id: String,
    /// Do not ask for confirmation (only asked on a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct InvoicesArgs {
    /// Only the invoices of this subscription.
    #[arg(long, value_name = "ID")]
    pub subscription: Option<String>,
    #[command(flatten)]
    pub global: Global,
}

// ---------------------------------------------------------------------------------------------
// kapal support
// ---------------------------------------------------------------------------------------------

#[derive(Subcommand)]
pub enum SupportCommand {
    /// Open a ticket; operators answer a critical one within 2 hours, high 8, normal 24, low 72.
    Open(SupportOpenArgs),
    /// List your tickets, newest first.
    List(SupportListArgs),
    /// Show a ticket with every message.
    Show(SupportShowArgs),
    /// Write on one of your tickets (a resolved one opens again).
    Reply(SupportReplyArgs),
    /// Mark one of your tickets resolved.
    Resolve(TicketArg),
    /// Operators: tickets waiting on an answer, due first, with the time left.
    Queue(SupportListArgs),
    /// Operators: answer a ticket (it then waits on the customer, or --resolve).
    Answer(SupportAnswerArgs),
    /// Operators: first-response times and the SLA breach rate per severity.
    Report(SupportReportArgs),
}

/// A ticket's severity.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketSeverityArg {
    /// Service down or data at risk.
    Critical,
    /// Service impaired.
    High,
    Normal,
    /// Questions and wishes.
    Low,
}

impl TicketSeverityArg {
    pub fn wire(self) -> kapal::proto::v1::TicketSeverity {
        use kapal::proto::v1::TicketSeverity as S;
        match self {
            TicketSeverityArg::Critical => S::Critical,
            TicketSeverityArg::High => S::High,
            TicketSeverityArg::Normal => S::Normal,
            TicketSeverityArg::Low => S::Low,
        }
    }
}

#[derive(Args)]
pub struct SupportOpenArgs {
    /// One line saying what is wrong.
    #[arg(long)]
    pub subject: String,
    /// What happened, what you expected, what you tried.
    #[arg(long)]
    pub body: String,
    #[arg(long, value_enum, default_value_t = TicketSeverityArg::Normal)]
    pub severity: TicketSeverityArg,
    /// The instance it is about (see `kapal instances`).
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct SupportListArgs {
    /// At most this many tickets.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub limit: u32,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct SupportShowArgs {
    /// The ticket's id.
    pub id: String,
    /// As an operator: any customer's ticket, with operators' emails.
    #[arg(long)]
    pub operator: bool,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct SupportReplyArgs {
    /// The ticket's id.
    pub id: String,
    /// The message.
    #[arg(long)]
    pub body: String,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct SupportAnswerArgs {
    /// The ticket's id.
    pub id: String,
    /// The answer the customer reads.
    #[arg(long)]
    pub body: String,
    /// Resolve the ticket with this answer.
    #[arg(long)]
    pub resolve: bool,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct SupportReportArgs {
    /// Tickets opened in the last this many days.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct TicketArg {
    /// The ticket's id (see `kapal support list`).
    pub id: String,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct SubscriptionArg {
    /// The subscription's id (see `kapal subscriptions`).
    pub id: String,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct AutoRenewArgs {
    /// The subscription's id (see `kapal subscriptions`).
    pub id: String,
    /// Whether the subscription renews automatically at the end of each period.
    #[arg(value_enum)]
    pub state: OnOff,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct ChangePlanArgs {
    /// The subscription's id (see `kapal subscriptions`).
    pub id: String,
    /// The paid plan of the same app to move to, e.g. starter (see `kapal app <app>`); the
    /// current plan withdraws a pending change.
    #[arg(long)]
    pub plan: String,
    #[command(flatten)]
    pub global: Global,
}

/// A switch given as `on` or `off`.
#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token; it is printed once, store it right away.
    Create(TokenCreateArgs),
    /// List your API tokens (never their secret).
    List(Global),
    /// Revoke an API token; calls made with it fail from then on.
    Revoke(TokenRevokeArgs),
}

#[derive(Args)]
pub struct TokenCreateArgs {
    /// A name to recognise the token by (1-64 characters).
    pub name: String,
    /// What the token may do: `full`, or `read-only` (only calls that change nothing; it cannot
    /// create tokens either).
    #[arg(long, value_enum, default_value_t = TokenScope::Full)]
    pub scope: TokenScope,
    /// Lifetime: days (`30d`, or `30`), weeks (`4w`) or `1y`; at most 365 days. [default: as
    /// long as allowed: 365 days, or until the API token you create it with expires]
    #[arg(long, value_name = "DURATION", value_parser = parse_days, conflicts_with = "ttl_days")]
    pub expires_in: Option<u32>,
    /// Lifetime in days (the same as --expires-in <DAYS>d).
    #[arg(long, value_name = "DAYS", hide = true)]
    pub ttl_days: Option<u32>,
    #[command(flatten)]
    pub global: Global,
}

/// What an API token may do.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenScope {
    Full,
    ReadOnly,
}

/// Parses a token lifetime into whole days: `30`, `30d`, `4w`, `1y` (365 days).
fn parse_days(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (number, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_lowercase()),
        _ => (s, 'd'),
    };
    let n: u32 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a lifetime like 30d, 4w or 1y"))?;
    let per = match unit {
        'd' => 1,
        'w' => 7,
        'y' => 365,
        _ => return Err(format!("{s:?}: use d (days), w (weeks) or y (years)")),
    };
    match n.checked_mul(per) {
        Some(0) | None => Err(format!("{s:?}: a lifetime of 1 to 365 days")),
        Some(days) => Ok(days),
    }
}

#[derive(Subcommand)]
pub enum PasswordCommand {
    /// Change your password: asks for the current one and the new one. Every other session
    /// of your account ends; this one and your API tokens stay.
    Change(PasswordChangeArgs),
}

#[derive(Args)]
pub struct PasswordChangeArgs {
    /// The password you log in with now. Without it: KAPAL_PASSWORD, else a prompt on a
    /// terminal, else the first line of standard input.
    #[arg(
        long,
        env = "KAPAL_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub current_password: Option<String>,
    /// The new password (10+ characters, letters and a digit or symbol). Without it:
    /// KAPAL_NEW_PASSWORD, else a prompt, else the next line of standard input.
    #[arg(
        long,
        env = "KAPAL_NEW_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub new_password: Option<String>,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Subcommand)]
pub enum SessionsCommand {
    /// List your open login sessions, newest first (API tokens: `kapal token list`).
    List(Global),
    /// End one of your sessions; calls made with it fail from then on.
    Revoke(SessionRevokeArgs),
}

#[derive(Args)]
pub struct SessionRevokeArgs {
    /// The session's id (see `kapal sessions list`).
    pub id: String,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct TokenRevokeArgs {
    /// The token's id (see `kapal token list`).
    pub id: String,
    #[command(flatten)]
    pub global: Global,
}

/// Parses `90`, `90s`, `10m`, `1h`, `1h30m`: whole numbers of hours, minutes and seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration: write e.g. 90s, 10m, 1h or 1h30m");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

// ---------------------------------------------------------------------------------------------
// kapal admin
// ---------------------------------------------------------------------------------------------

#[derive(Subcommand)]
pub enum AdminCommand {
    /// List every customer's instances, newest first.
    Instances(InstancesArgs),
    /// Show any instance with its owner; with --credentials (and --reason) its login too, which
    /// is recorded in the audit log.
    Instance(InstanceArgs),
    /// Show the cluster's capacity per node and in total, and what Kapal has committed against
    /// the checkout ceiling.
    Capacity(Global),
    /// List what needs an operator's attention now, critical first.
    Alerts(Global),
    /// List operators' actions on customer data (credential and diagnostics reads, restarts,
    /// stops, starts), newest first.
    Audit(AuditArgs),
    /// Show what any instance uses now: CPU, memory and storage.
    Usage(InstanceArg),
    /// Restart any customer's instance (rolling). Recorded in the audit log and shown in the
    /// instance's history with the reason.
    Restart(OperatorActionArgs),
    /// Stop any customer's instance (its data is kept). Audited, in the instance's history.
    Stop(OperatorActionArgs),
    /// Start any customer's stopped instance; the capacity ceiling holds unless
    /// --override-capacity. Audited, in the instance's history.
    Start(OperatorStartArgs),
    /// Why any instance is unhappy: events, pods (with nodes), volumes, history and log tails.
    /// Needs --reason (recorded in the audit log).
    Diagnose(OperatorDiagnoseArgs),
    /// Suspend a customer's account: its running instances stop (data kept), its calls are
    /// refused, its subscriptions keep their state. Audited, in the instances' history.
    Suspend(AccountActionArgs),
    /// Lift a customer's suspension: its calls work again and the instances the suspension
    /// stopped start again (under the capacity ceiling). Audited, in the instances' history.
    Unsuspend(AccountActionArgs),
    /// Revenue report: MRR, subscriptions per app, trial conversion, renewal rate, churn and
    /// invoices per month.
    Revenue(RevenueArgs),
    /// List every customer's subscriptions, newest first.
    Subscriptions(SubscriptionsArgs),
    /// List every status change of any subscription, oldest first.
    Events(SubscriptionArg),
    /// Extend a subscription by 1-365 days: a trial's or the current period's end (and the
    /// renewal, notice and expiry with it), or an unpaid one's grace period or suspension.
    /// Audited, in the subscription's history.
    Extend(ExtendArgs),
    /// Issue a credit note on a paid invoice: the amount is refunded through the payment
    /// provider and shown on the invoice. Audited, in the subscription's history.
    Credit(CreditArgs),
    /// Make an account an operator (role admin). Runs against the server's database (the same
    /// --data-dir or --database-url as `kapal server`), not the API: nobody becomes an admin
    /// by signing up. Recorded in the audit log with the reason.
    Grant(RoleArgs),
    /// Take the admin role away from an account (recorded in the audit log). Sessions in use
    /// lose it within the gateway's identity cache time (10 s).
    Revoke(RoleArgs),
}

#[derive(Args)]
pub struct RoleArgs {
    /// The account's email (it must have signed up).
    #[arg(long)]
    pub email: String,
    /// Why, e.g. a ticket or who asked (kept in the audit log).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// The server's data directory (SQLite).
    #[arg(long, default_value = "kapal-data", env = "KAPAL_DATA_DIR")]
    pub data_dir: std::path::PathBuf,
    /// The server's PostgreSQL URL, when it uses PostgreSQL.
    #[arg(long, env = "KAPAL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Args)]
pub struct InstancesArgs {
    /// Only instances with this status.
    #[arg(long, value_enum)]
    pub status: Option<InstanceStatusArg>,
    /// Only instances of this app, e.g. n8n.
    #[arg(long)]
    pub app: Option<String>,
    /// Only instances of this account (its UUID).
    #[arg(long, value_name = "UUID", value_parser = parse_account)]
    pub account: Option<String>,
    /// At most this many instances.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct InstanceArgs {
    /// The instance's id (see `kapal admin instances`).
    pub id: String,
    /// Also read the app's credentials; needs --reason and is recorded in the audit log.
    #[arg(long, requires = "reason")]
    pub credentials: bool,
    /// Why the credentials are read, e.g. a support ticket (kept in the audit log).
    #[arg(long, value_name = "TEXT", requires = "credentials", value_parser = parse_reason)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct OperatorActionArgs {
    /// The instance's id (see `kapal admin instances`).
    pub id: String,
    /// Why, e.g. a support ticket: kept in the audit log and shown to the customer in the
    /// instance's history.
    #[arg(long, value_name = "TEXT", value_parser = parse_action_reason)]
    pub reason: String,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct AccountActionArgs {
    /// The account (its UUID, see `kapal admin instances`).
    #[arg(long, value_name = "UUID", value_parser = parse_account)]
    pub account: String,
    /// Why, e.g. a support ticket: kept in the audit log; a suspension's reason is also told to
    /// the customer.
    #[arg(long, value_name = "TEXT", value_parser = parse_action_reason)]
    pub reason: String,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct OperatorStartArgs {
    #[command(flatten)]
    pub action: OperatorActionArgs,
    /// Start even if the plan would push committed capacity over the ceiling (recorded in the
    /// audit log).
    #[arg(long)]
    pub override_capacity: bool,
}

#[derive(Args)]
pub struct OperatorDiagnoseArgs {
    /// The instance's id (see `kapal admin instances`).
    pub id: String,
    /// Why the customer's logs and events are read (kept in the audit log).
    #[arg(long, value_name = "TEXT", value_parser = parse_action_reason)]
    pub reason: String,
    /// Lines of each container's log to show (at most 500).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub log_lines: u32,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct ExtendArgs {
    /// The subscription's id (see `kapal admin subscriptions`).
    pub id: String,
    /// How many days to add (1-365).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=365))]
    pub days: u32,
    /// Why, e.g. a support ticket: kept in the audit log and shown to the customer in the
    /// subscription's history.
    #[arg(long, value_name = "TEXT", value_parser = parse_action_reason)]
    pub reason: String,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct CreditArgs {
    /// The invoice: its number as the customer sees it (e.g. KPL-000042) or its id.
    pub invoice: String,
    /// How much to credit and refund, in whole rupiah (at most what is not credited yet).
    #[arg(long, value_name = "RUPIAH", value_parser = clap::value_parser!(i64).range(1..))]
    pub amount: i64,
    /// Why, e.g. a support ticket: kept in the audit log, on the credit note and in the
    /// subscription's history.
    #[arg(long, value_name = "TEXT", value_parser = parse_action_reason)]
    pub reason: String,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct AuditArgs {
    /// At most this many events.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct RevenueArgs {
    /// First month of the report, YYYY-MM (UTC) [default: two months before --to's month]
    #[arg(long, value_name = "YYYY-MM", value_parser = parse_month)]
    pub from: Option<NaiveDate>,
    /// Last month of the report, YYYY-MM, included (UTC) [default: up to now]
    #[arg(long, value_name = "YYYY-MM", value_parser = parse_month)]
    pub to: Option<NaiveDate>,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct SubscriptionsArgs {
    /// Only subscriptions with this status.
    #[arg(long, value_enum)]
    pub status: Option<SubscriptionStatusArg>,
    /// Only subscriptions of this app, e.g. n8n.
    #[arg(long)]
    pub app: Option<String>,
    /// Only subscriptions of this account (its UUID).
    #[arg(long, value_name = "UUID", value_parser = parse_account)]
    pub account: Option<String>,
    /// At most this many subscriptions.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    #[command(flatten)]
    pub global: Global,
}

/// An instance status to filter by.
#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum InstanceStatusArg {
    Pending,
    Provisioning,
    Ready,
    Degraded,
    Suspended,
    Deleting,
    Deleted,
    Failed,
}

impl From<InstanceStatusArg> for InstanceStatus {
    fn from(s: InstanceStatusArg) -> Self {
        match s {
            InstanceStatusArg::Pending => InstanceStatus::Pending,
            InstanceStatusArg::Provisioning => InstanceStatus::Provisioning,
            InstanceStatusArg::Ready => InstanceStatus::Ready,
            InstanceStatusArg::Degraded => InstanceStatus::Degraded,
            InstanceStatusArg::Suspended => InstanceStatus::Suspended,
            InstanceStatusArg::Deleting => InstanceStatus::Deleting,
            InstanceStatusArg::Deleted => InstanceStatus::Deleted,
            InstanceStatusArg::Failed => InstanceStatus::Failed,
        }
    }
}

/// A subscription status to filter by.
#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum SubscriptionStatusArg {
    Trialing,
    Active,
    PastDue,
    Suspended,
    Expired,
    #[value(alias = "cancelled")]
    Canceled,
}

impl From<SubscriptionStatusArg> for SubscriptionStatus {
    fn from(s: SubscriptionStatusArg) -> Self {
        match s {
            SubscriptionStatusArg::Trialing => SubscriptionStatus::Trialing,
            SubscriptionStatusArg::Active => SubscriptionStatus::Active,
            SubscriptionStatusArg::PastDue => SubscriptionStatus::PastDue,
            SubscriptionStatusArg::Suspended => SubscriptionStatus::Suspended,
            SubscriptionStatusArg::Expired => SubscriptionStatus::Expired,
            SubscriptionStatusArg::Canceled => SubscriptionStatus::Canceled,
        }
    }
}

fn parse_account(s: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(s.trim())
        .map(|u| u.to_string())
        .map_err(|_| {
            format!("{s:?} is not an account id: expected the account's UUID (the ACCOUNT column of `kapal admin subscriptions`, or `kapal admin instance <id>`)")
        })
}

fn parse_reason(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("give the reason for reading the credentials, e.g. a support ticket".into());
    }
    Ok(s.to_string())
}

/// The reason of an operator's action: 3-500 characters, as the server checks it.
fn parse_action_reason(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !(3..=500).contains(&s.chars().count()) {
        return Err("give a reason of 3-500 characters, e.g. a support ticket".into());
    }
    Ok(s.to_string())
}

/// `2026-09` -> 2026-09-01.
fn parse_month(s: &str) -> Result<NaiveDate, String> {
    let t = s.trim();
    let shaped = t.len() == 7
        && t.char_indices()
            .all(|(i, c)| if i == 4 { c == '-' } else { c.is_ascii_digit() });
    shaped
        .then(|| NaiveDate::parse_from_str(&format!("{t}-01"), "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| format!("{s:?} is not a month: write it as YYYY-MM, e.g. 2026-09"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};

    #[derive(Parser)]
    #[command(name = "kapal")]
    struct TestCli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("kapal").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    fn parse_admin(args: &[&str]) -> Result<AdminCommand, clap::Error> {
        match parse(&[&["admin"], args].concat())? {
            ClientCommand::Admin(cmd) => Ok(cmd),
            _ => panic!("not an admin command"),
        }
    }

    const ACCOUNT: &str = "0b6a3c1e-55a4-4a8e-9b1f-3f1f0f7c2a10";

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5m3").is_err());
    }

    #[test]
    fn usage_plan_change_and_events_parse() {
        assert!(matches!(
            parse(&["usage", "i1", "-o", "json"]),
            Ok(ClientCommand::Usage(a)) if a.id == "i1" && a.global.output == Output::Json
        ));
        assert!(matches!(
            parse(&["change-plan", "s1", "--plan", "pro"]),
            Ok(ClientCommand::ChangePlan(a)) if a.id == "s1" && a.plan == "pro"
        ));
        assert!(parse(&["change-plan", "s1"]).is_err(), "--plan is required");
        assert!(matches!(
            parse(&["events", "s1"]),
            Ok(ClientCommand::Events(a)) if a.id == "s1"
        ));
        assert!(parse(&["usage"]).is_err(), "the id is required");
    }

    #[test]
    fn commands_are_well_formed() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn order_parses_with_defaults_and_options() {
        match parse(&["order", "n8n", "--plan", "trial"]).expect("parse") {
            ClientCommand::Order(a) => {
                assert_eq!(a.app, "n8n");
                assert_eq!(a.plan, "trial");
                assert!(!a.wait);
                assert_eq!(a.timeout, Duration::from_secs(600));
                assert!(a.idempotency_key.is_none());
            }
            _ => panic!("not an order"),
        }
        match parse(&[
            "order",
            "ghost",
            "--plan",
            "starter",
            "--wait",
            "--timeout",
            "90s",
            "--idempotency-key",
            "key-12345",
            "--endpoint",
            "https://api.kapal.example",
            "--token",
            "tok",
            "-o",
            "json",
        ])
        .expect("parse")
        {
            ClientCommand::Order(a) => {
                assert!(a.wait);
                assert_eq!(a.timeout, Duration::from_secs(90));
                assert_eq!(a.idempotency_key.as_deref(), Some("key-12345"));
                assert_eq!(
                    a.global.endpoint.as_deref(),
                    Some("https://api.kapal.example")
                );
                assert_eq!(a.global.token.as_deref(), Some("tok"));
                assert_eq!(a.global.output, Output::Json);
            }
            _ => panic!("not an order"),
        }
        assert!(parse(&["order", "n8n"]).is_err(), "--plan is required");
        assert!(parse(&["order", "n8n", "--plan", "trial", "--timeout", "soon"]).is_err());
        assert!(parse(&["orders", "--output", "yaml"]).is_err());
    }

    #[test]
    fn other_commands_parse() {
        assert!(matches!(
            parse(&["login", "--email", "a@b.c", "--password", "pw"]),
            Ok(ClientCommand::Login(a)) if a.email == "a@b.c" && a.password.password.as_deref() == Some("pw")
        ));
        assert!(matches!(
            parse(&["signup", "--email", "a@b.c", "--name", "Sari"]),
            Ok(ClientCommand::Signup(a)) if a.name.as_deref() == Some("Sari")
        ));
        assert!(parse(&["login"]).is_err(), "--email is required");
        assert!(matches!(parse(&["logout"]), Ok(ClientCommand::Logout(_))));
        assert!(matches!(parse(&["whoami"]), Ok(ClientCommand::Whoami(_))));
        assert!(matches!(
            parse(&["catalog", "-o", "json"]),
            Ok(ClientCommand::Catalog(g)) if g.output == Output::Json
        ));
        assert!(matches!(parse(&["app", "n8n"]), Ok(ClientCommand::App(a)) if a.app == "n8n"));
        assert!(matches!(
            parse(&["instances"]),
            Ok(ClientCommand::Instances(_))
        ));
        assert!(
            matches!(parse(&["instance", "i1"]), Ok(ClientCommand::Instance(a)) if a.id == "i1")
        );
        assert!(matches!(
            parse(&["watch", "i1"]),
            Ok(ClientCommand::Watch(_))
        ));
        assert!(matches!(parse(&["stop", "i1"]), Ok(ClientCommand::Stop(_))));
        assert!(matches!(
            parse(&["start", "i1"]),
            Ok(ClientCommand::Start(_))
        ));
        assert!(matches!(
            parse(&["restart", "i1"]),
            Ok(ClientCommand::Restart(_))
        ));
        assert!(matches!(
            parse(&["delete", "i1", "--yes"]),
            Ok(ClientCommand::Delete(a)) if a.yes && a.id == "i1"
        ));
        assert!(parse(&["stop"]).is_err(), "the id is required");
        assert!(matches!(
            parse(&["subscriptions"]),
            Ok(ClientCommand::Subscriptions(_))
        ));
        assert!(matches!(
            parse(&["invoices", "--subscription", "s1"]),
            Ok(ClientCommand::Invoices(a)) if a.subscription.as_deref() == Some("s1")
        ));
        assert!(matches!(parse(&["cancel", "s1"]), Ok(ClientCommand::Cancel(a)) if a.id == "s1"));
        assert!(matches!(
            parse(&["auto-renew", "s1", "off"]),
            Ok(ClientCommand::AutoRenew(a)) if a.state == OnOff::Off
        ));
        assert!(matches!(
            parse(&["auto-renew", "s1", "on"]),
            Ok(ClientCommand::AutoRenew(a)) if a.state == OnOff::On
        ));
        assert!(parse(&["auto-renew", "s1", "maybe"]).is_err());
        assert!(matches!(
            parse(&["token", "create", "ci", "--ttl-days", "30"]),
            Ok(ClientCommand::Token(TokenCommand::Create(a))) if a.name == "ci" && a.ttl_days == Some(30)
        ));
        assert!(matches!(
            parse(&["token", "create", "ci", "--scope", "read-only", "--expires-in", "4w"]),
            Ok(ClientCommand::Token(TokenCommand::Create(a)))
                if a.scope == TokenScope::ReadOnly && a.expires_in == Some(28)
        ));
        assert!(matches!(
            parse(&["token", "create", "ci"]),
            Ok(ClientCommand::Token(TokenCommand::Create(a))) if a.scope == TokenScope::Full && a.expires_in.is_none()
        ));
        assert!(parse(&["token", "create", "ci", "--expires-in", "30x"]).is_err());
        assert!(parse(&["token", "create", "ci", "--expires-in", "0d"]).is_err());
        assert!(parse(&["token", "create", "ci", "--scope", "admin"]).is_err());
        assert!(matches!(
            parse(&["password", "change"]),
            Ok(ClientCommand::Password(PasswordCommand::Change(_)))
        ));
        assert!(matches!(
            parse(&["sessions", "list"]),
            Ok(ClientCommand::Sessions(SessionsCommand::List(_)))
        ));
        assert!(matches!(
            parse(&["sessions", "revoke", "s1"]),
            Ok(ClientCommand::Sessions(SessionsCommand::Revoke(a))) if a.id == "s1"
        ));
        assert!(matches!(
            parse(&["token", "list"]),
            Ok(ClientCommand::Token(TokenCommand::List(_)))
        ));
        assert!(matches!(
            parse(&["token", "revoke", "t1"]),
            Ok(ClientCommand::Token(TokenCommand::Revoke(a))) if a.id == "t1"
        ));
    }

    #[test]
    fn instances_parse_with_defaults_and_filters() {
        match parse_admin(&["instances"]).expect("parse") {
            AdminCommand::Instances(a) => {
                assert_eq!(a.limit, 200);
                assert!(a.status.is_none() && a.app.is_none() && a.account.is_none());
                assert_eq!(a.global.output, Output::Table);
            }
            _ => panic!("not instances"),
        }
        match parse_admin(&[
            "instances",
            "--status",
            "failed",
            "--app",
            "n8n",
            "--account",
            &ACCOUNT.to_uppercase(),
            "--limit",
            "10",
            "-o",
            "json",
        ])
        .expect("parse")
        {
            AdminCommand::Instances(a) => {
                assert_eq!(
                    a.status.map(InstanceStatus::from),
                    Some(InstanceStatus::Failed)
                );
                assert_eq!(a.app.as_deref(), Some("n8n"));
                // Normalised to the canonical lower-case form.
                assert_eq!(a.account.as_deref(), Some(ACCOUNT));
                assert_eq!(a.limit, 10);
                assert_eq!(a.global.output, Output::Json);
            }
            _ => panic!("not instances"),
        }
        let e = parse_admin(&["instances", "--account", "c1a2b3c4"])
            .err()
            .expect("not a UUID");
        assert!(e.to_string().contains("is not an account id"), "{e}");
        assert!(parse_admin(&["instances", "--status", "broken"]).is_err());
        assert!(parse_admin(&["instances", "--limit", "0"]).is_err());
    }

    #[test]
    fn credentials_need_a_reason() {
        match parse_admin(&["instance", "i1"]).expect("parse") {
            AdminCommand::Instance(a) => {
                assert_eq!(a.id, "i1");
                assert!(!a.credentials);
                assert!(a.reason.is_none());
            }
            _ => panic!("not instance"),
        }
        match parse_admin(&["instance", "i1", "--credentials", "--reason", " ticket 42 "])
            .expect("parse")
        {
            AdminCommand::Instance(a) => {
                assert!(a.credentials);
                assert_eq!(a.reason.as_deref(), Some("ticket 42"));
            }
            _ => panic!("not instance"),
        }
        let e = parse_admin(&["instance", "i1", "--credentials"])
            .err()
            .expect("no reason");
        assert!(e.to_string().contains("--reason"), "{e}");
        assert!(
            parse_admin(&["instance", "i1", "--reason", "ticket 42"]).is_err(),
            "a reason without --credentials"
        );
        assert!(parse_admin(&["instance", "i1", "--credentials", "--reason", "  "]).is_err());
    }

    #[test]
    fn other_admin_commands_parse() {
        assert!(matches!(
            parse_admin(&["capacity"]),
            Ok(AdminCommand::Capacity(_))
        ));
        assert!(
            matches!(parse_admin(&["alerts", "-o", "json"]), Ok(AdminCommand::Alerts(g)) if g.output == Output::Json)
        );
        assert!(matches!(parse_admin(&["audit"]), Ok(AdminCommand::Audit(a)) if a.limit == 50));
        assert!(
            matches!(parse_admin(&["audit", "--limit", "5"]), Ok(AdminCommand::Audit(a)) if a.limit == 5)
        );
        assert!(
            matches!(parse_admin(&["usage", "i1"]), Ok(AdminCommand::Usage(a)) if a.id == "i1")
        );
        assert!(
            matches!(parse_admin(&["events", "s1"]), Ok(AdminCommand::Events(a)) if a.id == "s1")
        );
        match parse_admin(&["subscriptions", "--status", "past-due", "--app", "ghost"])
            .expect("parse")
        {
            AdminCommand::Subscriptions(a) => {
                assert_eq!(
                    a.status.map(SubscriptionStatus::from),
                    Some(SubscriptionStatus::PastDue)
                );
                assert_eq!(a.app.as_deref(), Some("ghost"));
                assert_eq!(a.limit, 200);
            }
            _ => panic!("not subscriptions"),
        }
        assert!(matches!(
            parse_admin(&["subscriptions", "--status", "cancelled"]),
            Ok(AdminCommand::Subscriptions(a)) if a.status == Some(SubscriptionStatusArg::Canceled)
        ));
        match parse_admin(&["revenue", "--from", "2026-09", "--to", "2026-11"]).expect("parse") {
            AdminCommand::Revenue(a) => {
                assert_eq!(a.from, NaiveDate::from_ymd_opt(2026, 9, 1));
                assert_eq!(a.to, NaiveDate::from_ymd_opt(2026, 11, 1));
            }
            _ => panic!("not revenue"),
        }
        assert!(
            matches!(parse_admin(&["revenue"]), Ok(AdminCommand::Revenue(a)) if a.from.is_none() && a.to.is_none())
        );
        let e = parse_admin(&["revenue", "--from", "September"])
            .err()
            .expect("bad month");
        assert!(e.to_string().contains("write it as YYYY-MM"), "{e}");
        assert!(parse_admin(&["bogus"]).is_err());
    }

    #[test]
    fn months_parse_as_yyyy_mm() {
        assert_eq!(
            parse_month("2026-09"),
            Ok(NaiveDate::from_ymd_opt(2026, 9, 1).expect("date"))
        );
        for bad in [
            "2026-13",
            "2026-00",
            "2026-9",
            "26-09",
            "2026/09",
            "2026-09-01",
            "",
            "abcd-ef",
        ] {
            let e = parse_month(bad).expect_err(bad);
            assert!(e.contains("YYYY-MM"), "{e}");
        }
    }

    #[test]
    fn billing_actions_need_days_amounts_and_reasons() {
        let reason = "T-9: outage compensation";
        assert!(matches!(
            parse_admin(&["extend", "s1", "--days", "7", "--reason", reason]),
            Ok(AdminCommand::Extend(a)) if a.id == "s1" && a.days == 7 && a.reason == reason
        ));
        for days in ["0", "366", "-1"] {
            assert!(
                parse_admin(&["extend", "s1", "--days", days, "--reason", reason]).is_err(),
                "{days}"
            );
        }
        assert!(parse_admin(&["extend", "s1", "--days", "7", "--reason", "x"]).is_err());
        assert!(parse_admin(&["extend", "s1", "--reason", reason]).is_err());
        assert!(matches!(
            parse_admin(&["credit", "KPL-000042", "--amount", "39500", "--reason", reason]),
            Ok(AdminCommand::Credit(a)) if a.invoice == "KPL-000042" && a.amount == 39_500
        ));
        for amount in ["0", "-5", "1.5"] {
            assert!(
                parse_admin(&["credit", "KPL-1", "--amount", amount, "--reason", reason]).is_err(),
                "{amount}"
            );
        }
        assert!(parse_admin(&["credit", "KPL-1", "--amount", "100"]).is_err());
    }
}
