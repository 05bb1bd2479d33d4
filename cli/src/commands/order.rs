//! Orders: `kapal order` (checkout, and with --wait following the order and then the instance
//! until it is ready) and `kapal orders`.

use std::time::Duration;

use anyhow::bail;
use serde_json::json;

use kapal::proto::v1::{
    CheckoutRequest, GetInstanceRequest, GetOrderRequest, InstanceStatus, ListOrdersRequest, Order,
    OrderStatus,
};

use crate::args::{Global, OrderArgs};
use crate::commands::instance::{credential_lines, event_line, follow};
use crate::connect::{Ctx, RpcResult as _, transient};
use crate::output::{
    Table, dash, format_duration, instance_json, instance_status_name, key_values, money, now,
    order_json, order_status, print_json, reason_or, suffix, time,
};

/// How often a pending order is polled.
const ORDER_POLL: Duration = Duration::from_secs(2);
/// Attempts of a checkout that failed with a transient error (safe: the idempotency key is reused).
const CHECKOUT_ATTEMPTS: u32 = 3;

pub async fn order(a: OrderArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let mut client = ctx.orders()?;
    let key = match a.idempotency_key {
        Some(k) => k,
        None => {
            let k = uuid::Uuid::new_v4().to_string();
            eprintln!(
                "Idempotency key: {k} (if this command fails, retry with --idempotency-key {k}: no second order will be placed)"
            );
            k
        }
    };
    let started = tokio::time::Instant::now();
    let deadline = started + a.timeout;
    let request = CheckoutRequest {
        app_id: a.app,
        plan_id: a.plan,
        idempotency_key: key,
    };
    let mut attempt = 1;
    let mut order = loop {
        match client.checkout(request.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(s) if transient(&s) && attempt < CHECKOUT_ATTEMPTS => {
                eprintln!(
                    "Checkout failed ({}), retrying with the same idempotency key...",
                    ctx.rpc_error(&s)
                );
                tokio::time::sleep(Duration::from_secs(u64::from(attempt) * 2)).await;
                attempt += 1;
            }
            Err(s) => return Err(ctx.rpc_error(&s)),
        }
    };
    if !a.wait {
        if ctx.json() {
            return print_json(&order_json(&order));
        }
        print!("{}", order_details(&order));
        match order.status() {
            OrderStatus::Failed => bail!("order {} failed: {}", order.id, order.failure_reason),
            OrderStatus::Pending => println!(
                "\nThe order is being processed: see it with `kapal orders`, or order again with --wait and the same --idempotency-key."
            ),
            _ if !order.instance_id.is_empty() => println!(
                "\nFollow the instance with: kapal watch {}",
                order.instance_id
            ),
            _ => {}
        }
        return Ok(());
    }
    ctx.progress(&format!(
        "{}  order {} for {} on plan {} ({}): {}",
        now(),
        order.id,
        order.app_id,
        order.plan_id,
        money(order.amount.as_ref()),
        order_status(&order)
    ));

    // A pending order (e.g. billing briefly down) completes or fails on its own: poll it.
    let mut said_pending = false;
    while order.status() == OrderStatus::Pending
        || (order.status() == OrderStatus::Completed && order.instance_id.is_empty())
    {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "timed out after {} waiting for order {} (still {}); check it later with `kapal orders`",
                format_duration(a.timeout),
                order.id,
                order_status(&order)
            );
        }
        if !said_pending {
            ctx.progress(&format!(
                "{}  order is {}, waiting for it to complete...",
                now(),
                order_status(&order)
            ));
            said_pending = true;
        }
        tokio::time::sleep(ORDER_POLL).await;
        match client
            .get_order(GetOrderRequest {
                order_id: order.id.clone(),
            })
            .await
        {
            Ok(r) => order = r.into_inner(),
            Err(s) if transient(&s) => {}
            Err(s) => return Err(ctx.rpc_error(&s)),
        }
    }
    if order.status() == OrderStatus::Failed {
        bail!("order {} failed: {}", order.id, order.failure_reason);
    }
    ctx.progress(&format!(
        "{}  order completed: instance {}, subscription {}",
        now(),
        order.instance_id,
        order.subscription_id
    ));

    // Follow the instance until it is ready or cannot become so.
    let instance_id = order.instance_id.clone();
    let mut last: Option<(InstanceStatus, String)> = None;
    let mut outcome: Option<Result<(), String>> = None;
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let followed = tokio::time::timeout(
        remaining,
        follow(&ctx, &instance_id, |ev| {
            let Some(inst) = &ev.instance else {
                return Ok(false);
            };
            let state = (inst.status(), inst.status_reason.clone());
            if last.as_ref() != Some(&state) {
                ctx.progress(&event_line(ev.at.as_ref(), inst));
                last = Some(state);
            }
            outcome = match inst.status() {
                InstanceStatus::Ready => Some(Ok(())),
                InstanceStatus::Failed => Some(Err(format!(
                    "instance {} failed: {}",
                    inst.id,
                    reason_or(inst, "no reason given")
                ))),
                InstanceStatus::Deleting | InstanceStatus::Deleted => Some(Err(format!(
                    "instance {} is being deleted: {}",
                    inst.id,
                    reason_or(inst, "no reason given")
                ))),
                _ => None,
            };
            Ok(outcome.is_some())
        }),
    )
    .await;
    match (followed, outcome) {
        (Err(_elapsed), _) => {
            let status = last
                .map(|(s, r)| format!("{}{}", instance_status_name(s), suffix(&r)))
                .unwrap_or_else(|| "unknown".to_string());
            bail!(
                "timed out after {} waiting for instance {instance_id} (last status: {status}); keep following it with `kapal watch {instance_id}`",
                format_duration(a.timeout)
            );
        }
        (Ok(Err(e)), _) => return Err(e),
        (Ok(Ok(())), Some(Err(why))) => bail!(why),
        (Ok(Ok(())), None) => bail!("instance {instance_id} no longer exists"),
        (Ok(Ok(())), Some(Ok(()))) => {}
    }

    let inst = ctx
        .instances()?
        .get_instance(GetInstanceRequest {
            instance_id: instance_id.clone(),
        })
        .await
        .or_fail(&ctx)?;
    if ctx.json() {
        return print_json(&json!({
            "order": order_json(&order),
            "instance": instance_json(&inst),
        }));
    }
    println!();
    println!(
        "{} is ready at {} (took {}).",
        inst.app_id,
        inst.url,
        format_duration(Duration::from_secs(started.elapsed().as_secs()))
    );
    print!("{}", key_values(&credential_lines(&inst)));
    Ok(())
}

pub async fn orders(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let mut client = ctx.orders()?;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = client
            .list_orders(ListOrdersRequest {
                page_size: 500,
                page_token: page_token.clone(),
            })
            .await
            .or_fail(&ctx)?;
        all.extend(resp.orders);
        if resp.next_page_token.is_empty() || resp.next_page_token == page_token {
            break;
        }
        page_token = resp.next_page_token;
    }
    if ctx.json() {
        return print_json(&json!({ "orders": all.iter().map(order_json).collect::<Vec<_>>() }));
    }
    if all.is_empty() {
        println!("No orders yet: see `kapal catalog`.");
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID", "CREATED", "APP", "PLAN", "AMOUNT", "STATUS", "INSTANCE", "NOTE",
    ]);
    for o in &all {
        t.row(vec![
            o.id.clone(),
            time(o.created_at.as_ref()),
            o.app_id.clone(),
            o.plan_id.clone(),
            money(o.amount.as_ref()),
            order_status(o).to_string(),
            dash(&o.instance_id),
            o.failure_reason.clone(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

fn order_details(o: &Order) -> String {
    let mut lines = vec![
        ("Order", o.id.clone()),
        ("Status", order_status(o).to_string()),
        ("App", o.app_id.clone()),
        ("Plan", o.plan_id.clone()),
        ("Amount", money(o.amount.as_ref())),
        ("Instance", dash(&o.instance_id)),
        ("Subscription", dash(&o.subscription_id)),
        ("Idempotency key", o.idempotency_key.clone()),
        ("Created", time(o.created_at.as_ref())),
    ];
    if !o.failure_reason.is_empty() {
        lines.push(("Failure", o.failure_reason.clone()));
    }
    key_values(&lines)
}
