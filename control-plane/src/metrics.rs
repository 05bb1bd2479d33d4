//! The control-plane's figures for Prometheus (served by [`kapal::metrics`]): instances by app
//! and status, support tickets owing an answer by severity and SLA state, the provisioner's
//! reachability, each node's readiness, allocatable and requested
//! resources, and the capacity Kapal has committed against its ceiling. Read when `/metrics` is
//! scraped; a label set seen before and gone now reads 0 rather than its last value.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use kapal::proto::v1::ResourceAmounts;
use metrics::gauge;

use crate::Ctx;
use crate::store;

/// Label sets written before, to zero those that disappear.
#[derive(Default)]
struct Seen {
    instances: BTreeSet<(String, String)>,
    nodes: BTreeSet<String>,
}

/// Registers the control-plane's collector for as long as the guard lives.
pub(crate) fn register(ctx: Ctx) -> kapal::metrics::CollectorGuard {
    let seen = Arc::new(Mutex::new(Seen::default()));
    kapal::metrics::register_collector("control-plane", move || {
        let (ctx, seen) = (ctx.clone(), seen.clone());
        async move {
            if let Err(e) = collect(&ctx, &seen).await {
                tracing::warn!(error = %e, "control-plane metrics not read this scrape");
            }
        }
    })
}

async fn collect(ctx: &Ctx, seen: &Mutex<Seen>) -> crate::error::Result<()> {
    let rows = store::instances::count_by_app_and_status(&ctx.db).await?;
    let current: BTreeSet<(String, String)> = rows
        .iter()
        .map(|(app, status, _)| (app.clone(), status.clone()))
        .collect();
    for (app, status, n) in rows {
        gauge!("kapal_instances", "app" => app, "status" => status).set(n as f64);
    }
    if let Ok(mut seen) = seen.lock() {
        for (app, status) in seen.instances.difference(&current) {
            gauge!("kapal_instances", "app" => app.clone(), "status" => status.clone()).set(0.0);
        }
        seen.instances.extend(current);
    }

    for (severity, sla, n) in crate::support::owing_by_state(ctx).await? {
        gauge!("kapal_support_tickets_owing", "ticket_severity" => severity, "sla" => sla)
            .set(n as f64);
    }

    let observed = ctx.capacity.observe(&ctx.provisioner).await;
    gauge!("kapal_provisioner_up").set(if observed.error.is_none() { 1.0 } else { 0.0 });
    let Some(cap) = observed.capacity else {
        return Ok(());
    };
    let names: BTreeSet<String> = cap.nodes.iter().map(|n| n.name.clone()).collect();
    for node in &cap.nodes {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        gauge!("kapal_node_ready", "node" => node.name.clone()).set(flag(node.ready));
        gauge!("kapal_node_schedulable", "node" => node.name.clone()).set(flag(node.schedulable));
        amounts(
            "kapal_node_allocatable",
            Some(&node.name),
            node.allocatable.as_ref(),
        );
        amounts(
            "kapal_node_requested",
            Some(&node.name),
            node.requested.as_ref(),
        );
    }
    if let Ok(mut seen) = seen.lock() {
        for gone in seen.nodes.difference(&names) {
            gauge!("kapal_node_ready", "node" => gone.clone()).set(0.0);
            gauge!("kapal_node_schedulable", "node" => gone.clone()).set(0.0);
            amounts(
                "kapal_node_allocatable",
                Some(gone),
                Some(&ResourceAmounts::default()),
            );
            amounts(
                "kapal_node_requested",
                Some(gone),
                Some(&ResourceAmounts::default()),
            );
        }
        seen.nodes.extend(names);
    }
    let kapal_share = crate::capacity::current_commitments(ctx).await?;
    let full = crate::capacity::complete(&cap, kapal_share, ctx.ceiling_percent);
    amounts(
        "kapal_capacity_allocatable",
        None,
        full.allocatable.as_ref(),
    );
    amounts("kapal_capacity_committed", None, full.committed.as_ref());
    gauge!("kapal_capacity_ceiling_ratio").set(f64::from(full.ceiling_percent) / 100.0);
    Ok(())
}

/// `{prefix}_cpu_cores` and `{prefix}_memory_bytes`, per node when `node` is given.
fn amounts(prefix: &'static str, node: Option<&str>, a: Option<&ResourceAmounts>) {
    let Some(a) = a else { return };
    let cpu = a.cpu_millis as f64 / 1000.0;
    let memory = a.memory_bytes as f64;
    let (cpu_name, memory_name) = (
        format!("{prefix}_cpu_cores"),
        format!("{prefix}_memory_bytes"),
    );
    match node {
        Some(n) => {
            gauge!(cpu_name, "node" => n.to_string()).set(cpu);
            gauge!(memory_name, "node" => n.to_string()).set(memory);
        }
        None => {
            gauge!(cpu_name).set(cpu);
            gauge!(memory_name).set(memory);
        }
    }
}
