//! Alerts pushed, not only pulled (issue 17): every `alert_interval` the control-plane works out
//! the alerts ListAlerts would answer and sends the operators' notifier (the log, or the signed
//! webhook; see [`crate::support::notify`]) an `alert_opened` notice for each new alert (or one
//! whose severity changed) and an `alert_closed` notice for each that is gone.
//!
//! What was sent is kept in `pushed_alerts`, one row per (kind, subject): the replica whose
//! insert or delete changes the row sends the notice, so each is sent once however many
//! replicas run, and a restart neither repeats nor forgets an open alert. Support tickets'
//! alerts are left out: tickets send their own at-risk and breached notices. While the cluster's
//! capacity cannot be read, node and capacity alerts are unknown, not gone: they stay open.
//! Sending is best effort, after the row changed: a notifier that fails is logged.

use std::collections::HashMap;
use std::time::Duration;

use chrono::NaiveDateTime;
use kapal::proto::v1::{Alert, AlertSeverity};

use crate::error::Result;
use crate::store::pushed_alerts::Pushed;
use crate::support::notify::{AlertEvent, AlertNotice};
use crate::{Ctx, store};

/// Kinds that are judged only when the cluster's capacity could be read.
const CLUSTER_KINDS: [&str; 2] = ["node_not_ready", "capacity_high"];

fn severity_name(severity: i32) -> &'static str {
    match AlertSeverity::try_from(severity) {
        Ok(AlertSeverity::Critical) => "critical",
        _ => "warning",
    }
}

fn notice(event: AlertEvent, p: &Pushed, at: NaiveDateTime) -> AlertNotice {
    AlertNotice {
        event,
        kind: p.kind.clone(),
        subject: p.subject.clone(),
        severity: severity_name(p.severity).into(),
        opened_at: p.opened_at,
        at,
        message: p.message.clone(),
    }
}

async fn send(ctx: &Ctx, n: AlertNotice) {
    if let Err(e) = ctx.notifier.alert(&n).await {
        tracing::warn!(kind = %n.kind, subject = %n.subject, event = ?n.event, error = %e, "alert notice not delivered");
    }
}

/// Pushes alerts every `interval` until `stop` is set; a zero interval pushes none.
pub(crate) async fn push(
    ctx: Ctx,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if interval.is_zero() {
        return;
    }
    loop {
        if let Err(e) = push_once(&ctx).await {
            tracing::warn!(error = %e, "alert push failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass of [`push`].
///
/// What was pushed is read before the alerts are worked out, never after: another replica may
/// close an alert between the two reads, and a replica that worked out its alerts from older
/// state and then saw the row gone would open it again. Read first, a row this pass sees was
/// pushed from state no newer than what this pass then judges, so it only closes or keeps it.
pub(crate) async fn push_once(ctx: &Ctx) -> Result<()> {
    let open = store::pushed_alerts::all(&ctx.db).await?;
    let (alerts, capacity_known) = crate::admin::current_alerts(ctx).await?;
    let now = ctx.now();
    let current: HashMap<(&str, &str), &Alert> = alerts
        .iter()
        .filter(|a| !a.kind.starts_with("ticket_"))
        .map(|a| ((a.kind.as_str(), a.subject.as_str()), a))
        .collect();

    for p in &open {
        if current.contains_key(&(p.kind.as_str(), p.subject.as_str())) {
            continue;
        }
        if !capacity_known && CLUSTER_KINDS.contains(&p.kind.as_str()) {
            continue;
        }
        if store::pushed_alerts::remove(&ctx.db, p).await? {
            send(ctx, notice(AlertEvent::AlertClosed, p, now)).await;
        }
    }

    for ((kind, subject), a) in &current {
        let was = open
            .iter()
            .find(|p| p.kind == *kind && p.subject == *subject);
        match was {
            None => {
                let row = Pushed {
                    kind: kind.to_string(),
                    subject: subject.to_string(),
                    severity: a.severity,
                    message: a.message.clone(),
                    opened_at: now,
                };
                if store::pushed_alerts::add(&ctx.db, &row).await? {
                    send(ctx, notice(AlertEvent::AlertOpened, &row, now)).await;
                }
            }
            Some(p) if p.severity != a.severity => {
                if store::pushed_alerts::change_severity(&ctx.db, p, a.severity, &a.message).await?
                {
                    let row = Pushed {
                        severity: a.severity,
                        message: a.message.clone(),
                        ..p.clone()
                    };
                    send(ctx, notice(AlertEvent::AlertOpened, &row, now)).await;
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_are_named_for_people() {
        assert_eq!(severity_name(AlertSeverity::Critical as i32), "critical");
        assert_eq!(severity_name(AlertSeverity::Warning as i32), "warning");
    }
}
