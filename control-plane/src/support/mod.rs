//! Support tickets (issue 17): `kapal.v1.SupportService` for customers and
//! `kapal.v1.SupportAdminService` for operators ([`api`]), their rows ([`store`]), and the SLA:
//! operators owe a ticket's first answer within the SLA of its severity ([`Settings`]; by
//! default critical 2 h, high 8 h, normal 24 h, low 72 h).
//!
//! A ticket owes an operator's answer while `response_due_at` is set: from the time it is
//! opened (due at `first_response_due_at`), and again when the customer writes after an
//! operator answered (due the follow-up's time plus the same SLA). An operator's answer or
//! resolving the ticket clears it. A ticket whose answer is due within the at-risk share of the
//! SLA (a quarter by default: the last 30 minutes of a critical ticket) is an alert of kind
//! `ticket_sla_at_risk`, and one whose answer is overdue is `ticket_sla_breached`, in
//! AdminService.ListAlerts; [`sweep`] sends each as a notice once.

pub(crate) mod api;
pub mod notify;
pub(crate) mod store;

use std::time::Duration;

use chrono::NaiveDateTime;
use kapal::proto::v1::{Alert, AlertSeverity, SlaState, TicketSeverity};
use kapal::wire::timestamp;

use crate::Ctx;
use crate::error::Result;
use store::Ticket;

/// The first-response SLA of each severity, and when a ticket counts as at risk.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub critical: Duration,
    pub high: Duration,
    pub normal: Duration,
    pub low: Duration,
    /// A ticket is at risk once less than this share of its SLA is left (0-1; default 0.25).
    pub at_risk_share: f64,
    /// How often overdue and at-risk tickets are looked for to send their notices (default 30 s).
    pub sweep_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        const HOUR: u64 = 3600;
        Settings {
            critical: Duration::from_secs(2 * HOUR),
            high: Duration::from_secs(8 * HOUR),
            normal: Duration::from_secs(24 * HOUR),
            low: Duration::from_secs(72 * HOUR),
            at_risk_share: 0.25,
            sweep_interval: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// Parses `critical=2h,high=8h,normal=24h,low=72h` (any subset; units s, m, h, d); the
    /// severities not named keep their defaults.
    pub fn parse_slas(spec: &str) -> anyhow::Result<Settings> {
        let mut s = Settings::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("{part:?} is not severity=duration, e.g. critical=2h")
            })?;
            let value = value.trim();
            let (n, unit) = value.split_at(value.len().saturating_sub(1));
            let n: u64 = n
                .parse()
                .map_err(|_| anyhow::anyhow!("{value:?} is not a duration such as 90m or 2h"))?;
            let secs = match unit {
                "s" => n,
                "m" => n * 60,
                "h" => n * 3600,
                "d" => n * 86400,
                _ => anyhow::bail!("{value:?} needs a unit: s, m, h or d"),
            };
            anyhow::ensure!(secs > 0, "an SLA of {value:?} is no SLA");
            let d = Duration::from_secs(secs);
            match name.trim() {
                "critical" => s.critical = d,
                "high" => s.high = d,
                "normal" => s.normal = d,
                "low" => s.low = d,
                other => {
                    anyhow::bail!("{other:?} is not a severity: critical, high, normal or low")
                }
            }
        }
        Ok(s)
    }

    /// The SLA of a severity as stored.
    pub(crate) fn sla(&self, severity: &str) -> chrono::Duration {
        let d = match severity::to_wire(severity) {
            TicketSeverity::Critical => self.critical,
            TicketSeverity::High => self.high,
            TicketSeverity::Low => self.low,
            TicketSeverity::Normal | TicketSeverity::Unspecified => self.normal,
        };
        chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(24))
    }

    /// How long before its due time an owed answer is at risk.
    fn at_risk_window(&self, severity: &str) -> chrono::Duration {
        let sla = self.sla(severity);
        let share = self.at_risk_share.clamp(0.0, 1.0);
        chrono::Duration::milliseconds((sla.num_milliseconds() as f64 * share) as i64)
    }

    /// Where an owed answer due at `due` stands at `now`.
    fn owed_state(&self, severity: &str, due: NaiveDateTime, now: NaiveDateTime) -> SlaState {
        if now >= due {
            SlaState::Breached
        } else if due - now <= self.at_risk_window(severity) {
            SlaState::AtRisk
        } else {
            SlaState::OnTrack
        }
    }

    /// Where `t` stands against its first-response SLA at `now`.
    pub(crate) fn first_response_state(&self, t: &Ticket, now: NaiveDateTime) -> SlaState {
        let due = t.first_response_due_at;
        match (t.first_response_at, t.resolved_at) {
            (Some(at), _) if at <= due => SlaState::Met,
            (Some(_), _) => SlaState::Breached,
            // Resolved by the customer before anyone answered: no answer is owed any more.
            (None, Some(at)) if at <= due => SlaState::Met,
            (None, Some(_)) => SlaState::Breached,
            (None, None) => self.owed_state(&t.severity, due, now),
        }
    }
}

/// Ticket severities as stored.
pub(crate) mod severity {
    use kapal::proto::v1::TicketSeverity;

    pub fn to_db(s: TicketSeverity) -> Option<&'static str> {
        match s {
            TicketSeverity::Critical => Some("critical"),
            TicketSeverity::High => Some("high"),
            TicketSeverity::Normal => Some("normal"),
            TicketSeverity::Low => Some("low"),
            TicketSeverity::Unspecified => None,
        }
    }

    pub fn to_wire(s: &str) -> TicketSeverity {
        match s {
            "critical" => TicketSeverity::Critical,
            "high" => TicketSeverity::High,
            "normal" => TicketSeverity::Normal,
            "low" => TicketSeverity::Low,
            _ => TicketSeverity::Unspecified,
        }
    }
}

/// Ticket statuses as stored.
pub(crate) mod status {
    use kapal::proto::v1::TicketStatus;

    pub const OPEN: &str = "open";
    pub const WAITING_ON_CUSTOMER: &str = "waiting_on_customer";
    pub const RESOLVED: &str = "resolved";

    pub fn to_wire(s: &str) -> TicketStatus {
        match s {
            OPEN => TicketStatus::Open,
            WAITING_ON_CUSTOMER => TicketStatus::WaitingOnCustomer,
            RESOLVED => TicketStatus::Resolved,
            _ => TicketStatus::Unspecified,
        }
    }
}

/// Message authors as stored.
pub(crate) mod author {
    pub const CUSTOMER: &str = "customer";
    pub const OPERATOR: &str = "operator";
}

/// The alert kinds of tickets.
pub const ALERT_AT_RISK: &str = "ticket_sla_at_risk";
pub const ALERT_BREACHED: &str = "ticket_sla_breached";

/// The SLA alert of one ticket that owes an answer, if any: at risk (warning) or breached
/// (critical).
fn alert_of(
    settings: &Settings,
    t: &Ticket,
    customer_id: &str,
    now: NaiveDateTime,
) -> Option<Alert> {
    let due = t.response_due_at?;
    let sla = settings.sla(&t.severity);
    let what = if t.first_response_at.is_none() {
        "first response"
    } else {
        "answer to the customer's follow-up"
    };
    let (kind, severity, since, message) = match settings.owed_state(&t.severity, due, now) {
        SlaState::Breached => (
            ALERT_BREACHED,
            AlertSeverity::Critical,
            due,
            format!(
                "Ticket {} ({} , customer {customer_id}: {:?}) breached its {} h SLA: the {what} was due {} min ago; answer it now.",
                t.id,
                t.severity,
                t.subject,
                sla.num_hours(),
                (now - due).num_minutes()
            ),
        ),
        SlaState::AtRisk => (
            ALERT_AT_RISK,
            AlertSeverity::Warning,
            due - settings.at_risk_window(&t.severity),
            format!(
                "Ticket {} ({}, customer {customer_id}: {:?}) is at risk of breaching its {} h SLA: the {what} is due in {} min.",
                t.id,
                t.severity,
                t.subject,
                sla.num_hours(),
                (due - now).num_minutes()
            ),
        ),
        _ => return None,
    };
    Some(Alert {
        kind: kind.into(),
        severity: severity as i32,
        message,
        subject: t.id.clone(),
        since: Some(timestamp(since)),
    })
}

/// The SLA alerts of every ticket that owes an answer (for AdminService.ListAlerts).
pub(crate) async fn alerts(ctx: &Ctx, out: &mut Vec<Alert>) -> Result<()> {
    let now = ctx.now();
    for (t, (customer_id, _, _)) in store::owing(ctx).await? {
        if let Some(a) = alert_of(&ctx.support, &t, &customer_id, now) {
            out.push(a);
        }
    }
    Ok(())
}

/// Sends the at-risk and breached notices of tickets that owe an answer, each once per owed
/// answer, every `settings.sweep_interval` until `stop` is set.
/// Tickets that owe an operator's answer now, by (severity, SLA state): `on_track`, `at_risk`
/// or `breached`; every combination is present, zero when none (for the metrics).
pub(crate) async fn owing_by_state(ctx: &Ctx) -> Result<Vec<(&'static str, &'static str, u64)>> {
    const SEVERITIES: [&str; 4] = ["critical", "high", "normal", "low"];
    const STATES: [(SlaState, &str); 3] = [
        (SlaState::OnTrack, "on_track"),
        (SlaState::AtRisk, "at_risk"),
        (SlaState::Breached, "breached"),
    ];
    let now = ctx.now();
    let mut counts = vec![[0u64; 3]; SEVERITIES.len()];
    for (t, _) in store::owing(ctx).await? {
        let (Some(due), Some(row)) = (
            t.response_due_at,
            SEVERITIES.iter().position(|s| *s == t.severity),
        ) else {
            continue;
        };
        let state = ctx.support.owed_state(&t.severity, due, now);
        if let Some(col) = STATES.iter().position(|(s, _)| *s == state) {
            counts[row][col] += 1;
        }
    }
    Ok(SEVERITIES
        .iter()
        .zip(counts)
        .flat_map(|(severity, row)| {
            STATES
                .iter()
                .zip(row)
                .map(move |((_, state), n)| (*severity, *state, n))
        })
        .collect())
}

pub(crate) async fn sweep(ctx: Ctx, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval = ctx.support.sweep_interval;
    loop {
        if let Err(e) = sweep_once(&ctx).await {
            tracing::warn!(error = %e, "support SLA sweep failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass of [`sweep`].
pub(crate) async fn sweep_once(ctx: &Ctx) -> Result<()> {
    let now = ctx.now();
    for (t, (customer_id, _, _)) in store::owing(ctx).await? {
        let Some(due) = t.response_due_at else {
            continue;
        };
        let level = match ctx.support.owed_state(&t.severity, due, now) {
            SlaState::Breached => 2,
            SlaState::AtRisk => 1,
            _ => continue,
        };
        if level <= t.notified_level {
            continue;
        }
        // Claimed in the database first: one notice per level even with several replicas.
        if !store::claim_notice(ctx, &t.id, due, t.notified_level, level).await? {
            continue;
        }
        if let Some(a) = alert_of(&ctx.support, &t, &customer_id, now) {
            let kind = if level == 2 {
                notify::Kind::SlaBreached
            } else {
                notify::Kind::SlaAtRisk
            };
            notify::send(ctx, kind, &t, now, a.message).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slas_parse_with_units_and_keep_defaults() {
        let s = Settings::parse_slas("critical=90m, low=3d").expect("valid");
        assert_eq!(s.critical, Duration::from_secs(5400));
        assert_eq!(s.low, Duration::from_secs(3 * 86400));
        assert_eq!(s.high, Settings::default().high);
        assert!(Settings::parse_slas("urgent=1h").is_err());
        assert!(Settings::parse_slas("critical=2").is_err());
        assert!(Settings::parse_slas("critical=0h").is_err());
        assert!(Settings::parse_slas("critical").is_err());
    }

    #[test]
    fn an_owed_answer_is_on_track_then_at_risk_then_breached() {
        let s = Settings::default();
        let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0)
            .expect("valid")
            .naive_utc();
        let due = t0 + chrono::Duration::hours(2);
        let at = |m: i64| t0 + chrono::Duration::minutes(m);
        assert_eq!(s.owed_state("critical", due, at(0)), SlaState::OnTrack);
        assert_eq!(s.owed_state("critical", due, at(89)), SlaState::OnTrack);
        assert_eq!(s.owed_state("critical", due, at(90)), SlaState::AtRisk);
        assert_eq!(s.owed_state("critical", due, at(119)), SlaState::AtRisk);
        assert_eq!(s.owed_state("critical", due, at(120)), SlaState::Breached);
    }
}
