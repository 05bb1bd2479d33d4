//! `kapal history`, `kapal diagnose` (an instance's owner) and the operators' `kapal admin
//! restart|stop|start|diagnose` (OperatorService: a reason for each, recorded in the audit log).
//!
//! Diagnostics print as sections: pods and their containers (state, restarts, last
//! termination, the log tail), volumes, Kubernetes events (warnings are what to read first)
//! and the instance's history. JSON keeps the same structure.

use serde_json::{Value, json};

use kapal::proto::v1::{
    AccountSuspension, GetInstanceDiagnosticsRequest, Instance, InstanceDiagnostics,
    InstanceHistoryEntry, InstanceStatus, ListInstanceEventsRequest, OperatorInstanceActionRequest,
    SuspendAccountRequest, UnsuspendAccountRequest,
};

use crate::args::{
    AccountActionArgs, DiagnoseArgs, InstanceArg, OperatorActionArgs, OperatorDiagnoseArgs,
};
use crate::commands::instance::{Action, instance_status_name};
use crate::connect::{Ctx, RpcResult as _};
use crate::output::{Render, Table, bytes, dash, time, ts_json};

fn status_name(s: i32) -> &'static str {
    instance_status_name(InstanceStatus::try_from(s).unwrap_or(InstanceStatus::Unspecified))
}

fn actor_name(a: &str) -> &str {
    match a {
        "" => "cluster",
        other => other,
    }
}

/// The answer to `kapal history`.
struct History<'a>(&'a [InstanceHistoryEntry]);

fn history_table(events: &[InstanceHistoryEntry]) -> String {
    let mut t = Table::new(&["AT", "STATUS", "BY", "WHAT"]);
    for e in events {
        t.row(vec![
            time(e.at.as_ref()),
            status_name(e.status).to_string(),
            actor_name(&e.actor).to_string(),
            dash(&e.reason),
        ]);
    }
    t.render()
}

fn history_json(events: &[InstanceHistoryEntry]) -> Vec<Value> {
    events
        .iter()
        .map(|e| {
            json!({
                "at": ts_json(e.at.as_ref()),
                "status": status_name(e.status),
                "actor": actor_name(&e.actor),
                "reason": e.reason,
            })
        })
        .collect()
}

impl Render for History<'_> {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "No history yet.\n".into();
        }
        history_table(self.0)
    }

    fn json(&self) -> impl serde::Serialize {
        history_json(self.0)
    }
}

pub async fn history(a: InstanceArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let events = ctx
        .instances()?
        .list_instance_events(ListInstanceEventsRequest { instance_id: a.id })
        .await
        .or_fail(&ctx)?
        .events;
    ctx.print(&History(&events))
}

/// The answer to `kapal diagnose` and `kapal admin diagnose`.
struct Diagnostics<'a>(&'a InstanceDiagnostics);

impl Render for Diagnostics<'_> {
    fn text(&self) -> String {
        let d = self.0;
        let mut out = format!(
            "Instance {} (namespace {}), read {}\n",
            d.instance_id,
            dash(&d.namespace),
            time(d.observed_at.as_ref())
        );
        out.push_str("\nPods\n");
        if d.pods.is_empty() {
            out.push_str("  none in the cluster\n");
        }
        for p in &d.pods {
            out.push_str(&format!(
                "  {}: {}{}\n",
                p.name,
                dash(&p.phase),
                if p.node.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", p.node)
                }
            ));
            for c in p.conditions.iter().filter(|c| c.status != "True") {
                out.push_str(&format!(
                    "    {} {}: {} {}\n",
                    c.r#type, c.status, c.reason, c.message
                ));
            }
            for c in &p.containers {
                let mut line = format!(
                    "    container {}{} ({}): {}",
                    c.name,
                    if c.init { " (init)" } else { "" },
                    c.image,
                    dash(&c.state)
                );
                if !c.state_reason.is_empty() {
                    line.push_str(&format!(" {}", c.state_reason));
                }
                if !c.state_message.is_empty() {
                    line.push_str(&format!(": {}", c.state_message));
                }
                line.push_str(&format!(", restarts {}", c.restart_count));
                if !c.last_termination_reason.is_empty() {
                    line.push_str(&format!(
                        ", last ended {} (exit {}) at {}",
                        c.last_termination_reason,
                        c.last_exit_code,
                        time(c.last_terminated_at.as_ref())
                    ));
                }
                out.push_str(&line);
                out.push('\n');
                if c.log_tail.is_empty() {
                    out.push_str(&format!("      log: {}\n", dash(&c.log_note)));
                }
                for l in &c.log_tail {
                    out.push_str(&format!("      | {l}\n"));
                }
            }
        }
        out.push_str("\nVolumes\n");
        if d.volumes.is_empty() {
            out.push_str("  none\n");
        }
        for v in &d.volumes {
            out.push_str(&format!(
                "  {}: {} {} ({}), asked {}, has {}\n",
                v.claim,
                dash(&v.phase),
                dash(&v.volume),
                dash(&v.storage_class),
                bytes(v.requested_bytes),
                bytes(v.capacity_bytes)
            ));
        }
        out.push_str("\nEvents (oldest first)\n");
        if d.events.is_empty() {
            out.push_str("  none\n");
        } else {
            let mut t = Table::new(&["LAST SEEN", "TYPE", "REASON", "OBJECT", "COUNT", "MESSAGE"]);
            for e in &d.events {
                t.row(vec![
                    time(e.last_seen.as_ref()),
                    dash(&e.r#type),
                    dash(&e.reason),
                    dash(&e.object),
                    e.count.to_string(),
                    dash(&e.message),
                ]);
            }
            out.push_str(&t.render());
        }
        out.push_str("\nHistory\n");
        if d.history.is_empty() {
            out.push_str("  none yet\n");
        } else {
            out.push_str(&history_table(&d.history));
        }
        out
    }

    fn json(&self) -> impl serde::Serialize {
        let d = self.0;
        json!({
            "instance_id": d.instance_id,
            "namespace": d.namespace,
            "observed_at": ts_json(d.observed_at.as_ref()),
            "pods": d.pods.iter().map(|p| json!({
                "name": p.name,
                "phase": p.phase,
                "node": p.node,
                "created_at": ts_json(p.created_at.as_ref()),
                "conditions": p.conditions.iter().map(|c| json!({
                    "type": c.r#type, "status": c.status, "reason": c.reason, "message": c.message,
                })).collect::<Vec<_>>(),
                "containers": p.containers.iter().map(|c| json!({
                    "name": c.name,
                    "image": c.image,
                    "init": c.init,
                    "ready": c.ready,
                    "restart_count": c.restart_count,
                    "state": c.state,
                    "state_reason": c.state_reason,
                    "state_message": c.state_message,
                    "last_termination_reason": c.last_termination_reason,
                    "last_exit_code": c.last_exit_code,
                    "last_terminated_at": ts_json(c.last_terminated_at.as_ref()),
                    "log_tail": c.log_tail,
                    "log_note": c.log_note,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "volumes": d.volumes.iter().map(|v| json!({
                "claim": v.claim,
                "phase": v.phase,
                "volume": v.volume,
                "storage_class": v.storage_class,
                "requested_bytes": v.requested_bytes,
                "capacity_bytes": v.capacity_bytes,
            })).collect::<Vec<_>>(),
            "events": d.events.iter().map(|e| json!({
                "type": e.r#type,
                "reason": e.reason,
                "message": e.message,
                "object": e.object,
                "count": e.count,
                "source": e.source,
                "first_seen": ts_json(e.first_seen.as_ref()),
                "last_seen": ts_json(e.last_seen.as_ref()),
            })).collect::<Vec<_>>(),
            "history": history_json(&d.history),
        })
    }
}

pub async fn diagnose(a: DiagnoseArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let d = ctx
        .instances()?
        .get_instance_diagnostics(GetInstanceDiagnosticsRequest {
            instance_id: a.id,
            log_lines: a.log_lines,
            reason: String::new(),
        })
        .await
        .or_fail(&ctx)?;
    ctx.print(&Diagnostics(&d))
}

pub async fn diagnose_as_operator(a: OperatorDiagnoseArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let d = ctx
        .operator()?
        .get_instance_diagnostics_as_operator(GetInstanceDiagnosticsRequest {
            instance_id: a.id,
            log_lines: a.log_lines,
            reason: a.reason,
        })
        .await
        .or_fail_as_operator(&ctx)?;
    ctx.print(&Diagnostics(&d))
}

/// The answer to `kapal admin restart|stop|start`.
struct Acted<'a> {
    verb: &'a str,
    instance: &'a Instance,
    reason: &'a str,
}

impl Render for Acted<'_> {
    fn text(&self) -> String {
        format!(
            "{} instance {}: status {}. Recorded in the audit log and the instance's history with the reason {:?}.\n",
            self.verb,
            self.instance.id,
            status_name(self.instance.status),
            self.reason
        )
    }

    fn json(&self) -> impl serde::Serialize {
        json!({
            "action": self.verb,
            "instance_id": self.instance.id,
            "status": status_name(self.instance.status),
            "reason": self.reason,
        })
    }
}

pub async fn operator_action(
    a: OperatorActionArgs,
    action: Action,
    override_capacity: bool,
) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.operator()?;
    let req = OperatorInstanceActionRequest {
        instance_id: a.id,
        reason: a.reason.clone(),
        override_capacity,
    };
    let (resp, verb) = match action {
        Action::Restart => (client.restart_instance_as_operator(req).await, "Restarting"),
        Action::Stop => (client.stop_instance_as_operator(req).await, "Stopping"),
        Action::Start => (client.start_instance_as_operator(req).await, "Starting"),
        Action::Delete => anyhow::bail!("operators do not delete customers' instances"),
    };
    let i = resp.or_fail_as_operator(&ctx)?;
    ctx.print(&Acted {
        verb,
        instance: &i,
        reason: &a.reason,
    })
}

/// The answer to `kapal admin suspend|unsuspend`.
struct Suspended<'a>(&'a AccountSuspension);

impl Render for Suspended<'_> {
    fn text(&self) -> String {
        let s = self.0;
        let mut out = if s.suspended {
            format!(
                "Account {} is suspended ({}); instances stopped: {}.\n",
                s.account_id,
                s.reason,
                if s.instance_ids.is_empty() {
                    "none".to_string()
                } else {
                    s.instance_ids.join(", ")
                }
            )
        } else {
            format!(
                "Account {} is no longer suspended; instances started again: {}.\n",
                s.account_id,
                if s.instance_ids.is_empty() {
                    "none".to_string()
                } else {
                    s.instance_ids.join(", ")
                }
            )
        };
        for n in &s.not_started {
            out.push_str(&format!("Not started (start it later): {n}\n"));
        }
        out
    }

    fn json(&self) -> impl serde::Serialize {
        let s = self.0;
        json!({
            "account_id": s.account_id,
            "suspended": s.suspended,
            "reason": s.reason,
            "suspended_at": ts_json(s.suspended_at.as_ref()),
            "instance_ids": s.instance_ids,
            "not_started": s.not_started,
        })
    }
}

pub async fn suspension(a: AccountActionArgs, suspend: bool) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.operator()?;
    let s = if suspend {
        client
            .suspend_account(SuspendAccountRequest {
                account_id: a.account,
                reason: a.reason,
            })
            .await
    } else {
        client
            .unsuspend_account(UnsuspendAccountRequest {
                account_id: a.account,
                reason: a.reason,
            })
            .await
    }
    .or_fail_as_operator(&ctx)?;
    ctx.print(&Suspended(&s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapal::proto::v1::{ContainerDiagnostics, KubernetesEvent, PodCondition, PodDiagnostics};

    #[test]
    fn diagnostics_show_what_is_wrong() {
        let d = InstanceDiagnostics {
            instance_id: "i1".into(),
            namespace: "kapal-i1".into(),
            pods: vec![PodDiagnostics {
                name: "app-0".into(),
                phase: "Pending".into(),
                conditions: vec![PodCondition {
                    r#type: "PodScheduled".into(),
                    status: "False".into(),
                    reason: "Unschedulable".into(),
                    message: "0/3 nodes are available: 3 Insufficient cpu.".into(),
                }],
                containers: vec![ContainerDiagnostics {
                    name: "app".into(),
                    image: "nginx".into(),
                    state: "waiting".into(),
                    state_reason: "ImagePullBackOff".into(),
                    log_note: "the container has not started yet, so it has no log".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            events: vec![KubernetesEvent {
                r#type: "Warning".into(),
                reason: "FailedScheduling".into(),
                object: "Pod/app-0".into(),
                count: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = Diagnostics(&d).text();
        assert!(
            text.contains("PodScheduled False: Unschedulable 0/3 nodes"),
            "{text}"
        );
        assert!(text.contains("waiting ImagePullBackOff"), "{text}");
        assert!(text.contains("FailedScheduling"), "{text}");
        assert!(
            text.contains("log: the container has not started yet"),
            "{text}"
        );
        let json = serde_json::to_value(Diagnostics(&d).json()).expect("json");
        assert_eq!(
            json["pods"][0]["containers"][0]["state_reason"],
            "ImagePullBackOff"
        );
    }
}
