//! Orders: `kapal order` (checkout, and with --wait following the order and then the instance
//! until it is ready) and `kapal orders`.

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use kapal::proto::v1::{
    CheckoutRequest, GetInstanceRequest, GetOrderRequest, Instance, InstanceStatus,
    ListOrdersRequest, Order, OrderStatus,
};

use crate::args::{Global, OrderArgs};
use crate::commands::instance::{
    InstanceJson, credential_lines, event_line, follow, instance_status_name,
};
use crate::connect::{Ctx, NO_LIMIT, RpcResult as _, collect_pages, transient};
use crate::output::{
    MoneyJson, Render, Table, dash, format_duration, key_values, money, money_json, now, short,
    suffix, time, ts_json,
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
        ctx.print(&Placed(&order))?;
        // As text, a failed order is also an error (exit status 1); as JSON it is only reported.
        if order.status() == OrderStatus::Failed && !ctx.json() {
            bail!("order {} failed: {}", order.id, order.failure_reason);
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
    ctx.print(&Ready {
        order: &order,
        instance: &inst,
        took: Duration::from_secs(started.elapsed().as_secs()),
    })
}

pub async fn orders(g: Global) -> anyhow::Result<()> {
    let ctx = Ctx::new(&g)?;
    let mut client = ctx.orders()?;
    let (all, _) = collect_pages(NO_LIMIT, async |page_size, page_token| {
        let resp = client
            .list_orders(ListOrdersRequest {
                page_size,
                page_token,
            })
            .await
            .or_fail(&ctx)?;
        Ok((resp.orders, resp.next_page_token))
    })
    .await?;
    ctx.print(&Orders(all))
}

/// The answer to `kapal order` without --wait: the order, and what to do next.
struct Placed<'a>(&'a Order);

impl Render for Placed<'_> {
    fn text(&self) -> String {
        let o = self.0;
        let mut out = order_details(o);
        match o.status() {
            OrderStatus::Failed => {}
            OrderStatus::Pending => out.push_str(
                "\nThe order is being processed: see it with `kapal orders`, or order again with --wait and the same --idempotency-key.\n",
            ),
            _ if !o.instance_id.is_empty() => out.push_str(&format!(
                "\nFollow the instance with: kapal watch {}\n",
                o.instance_id
            )),
            _ => {}
        }
        out
    }

    fn json(&self) -> impl Serialize {
        OrderJson::from(self.0)
    }
}

/// The answer to `kapal order --wait`: the order and its instance, ready.
struct Ready<'a> {
    order: &'a Order,
    instance: &'a Instance,
    /// How long it took, in whole seconds.
    took: Duration,
}

#[derive(Serialize)]
struct ReadyJson<'a> {
    order: OrderJson<'a>,
    instance: InstanceJson<'a>,
}

impl Render for Ready<'_> {
    fn text(&self) -> String {
        let i = self.instance;
        format!(
            "\n{} is ready at {} (took {}).\n{}",
            i.app_id,
            i.url,
            format_duration(self.took),
            key_values(&credential_lines(i))
        )
    }

    fn json(&self) -> impl Serialize {
        ReadyJson {
            order: OrderJson::from(self.order),
            instance: InstanceJson::from(self.instance),
        }
    }
}

/// The answer to `kapal orders`.
struct Orders(Vec<Order>);

#[derive(Serialize)]
struct OrdersJson<'a> {
    orders: Vec<OrderJson<'a>>,
}

impl Render for Orders {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "No orders yet: see `kapal catalog`.\n".to_string();
        }
        let mut t = Table::new(&[
            "ID", "CREATED", "APP", "PLAN", "AMOUNT", "STATUS", "INSTANCE", "NOTE",
        ]);
        for o in &self.0 {
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
        t.render()
    }

    fn json(&self) -> impl Serialize {
        OrdersJson {
            orders: self.0.iter().map(OrderJson::from).collect(),
        }
    }
}

/// An order in JSON.
#[derive(Serialize)]
struct OrderJson<'a> {
    id: &'a str,
    app_id: &'a str,
    plan_id: &'a str,
    status: &'static str,
    failure_reason: &'a str,
    amount: Option<MoneyJson<'a>>,
    subscription_id: &'a str,
    instance_id: &'a str,
    idempotency_key: &'a str,
    created_at: Option<String>,
    updated_at: Option<String>,
}

impl<'a> From<&'a Order> for OrderJson<'a> {
    fn from(o: &'a Order) -> Self {
        OrderJson {
            id: &o.id,
            app_id: &o.app_id,
            plan_id: &o.plan_id,
            status: order_status(o),
            failure_reason: &o.failure_reason,
            amount: money_json(o.amount.as_ref()),
            subscription_id: &o.subscription_id,
            instance_id: &o.instance_id,
            idempotency_key: &o.idempotency_key,
            created_at: ts_json(o.created_at.as_ref()),
            updated_at: ts_json(o.updated_at.as_ref()),
        }
    }
}

/// The instance's status reason, or `default` when it gives none.
fn reason_or<'a>(i: &'a Instance, default: &'a str) -> &'a str {
    if i.status_reason.is_empty() {
        default
    } else {
        &i.status_reason
    }
}

/// `ORDER_STATUS_COMPLETED` -> `COMPLETED`.
fn order_status(o: &Order) -> &'static str {
    short(o.status().as_str_name(), "ORDER_STATUS_")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::fixtures::at;
    use crate::output::json_of;
    use kapal::proto::v1::Credentials;

    /// The JSON of `kapal order --wait -o json`, byte for byte: scripts read these keys.
    #[test]
    fn ready_order_prints_the_json_scripts_read() {
        let order = Order {
            id: "o1".into(),
            app_id: "n8n".into(),
            plan_id: "trial".into(),
            status: OrderStatus::Failed as i32,
            failure_reason: "no".into(),
            amount: Some(kapal::wire::idr(0)),
            subscription_id: "s1".into(),
            instance_id: "i1".into(),
            idempotency_key: "k".into(),
            created_at: at("2026-09-21T14:13:22Z"),
            updated_at: at("2026-09-21T14:13:23Z"),
        };
        let instance = Instance {
            id: "i1".into(),
            app_id: "n8n".into(),
            plan_id: "trial".into(),
            status: InstanceStatus::Ready as i32,
            status_reason: "r".into(),
            desired_state: 1,
            url: "https://u".into(),
            hostname: "h".into(),
            subscription_id: "s1".into(),
            order_id: "o1".into(),
            credentials: Some(Credentials {
                username: "u".into(),
                password: "p".into(),
                login_url: "l".into(),
            }),
            created_at: at("2026-09-21T14:13:24Z"),
            updated_at: at("2026-09-21T14:13:25Z"),
            ready_at: at("2026-09-21T14:13:26Z"),
            suspended_by_billing: true,
            data_deleted_after: None,
        };
        let ready = Ready {
            order: &order,
            instance: &instance,
            took: Duration::from_secs(75),
        };
        assert_eq!(
            serde_json::to_string_pretty(&json_of(&ready)).expect("json"),
            r#"{
  "instance": {
    "app_id": "n8n",
    "created_at": "2026-09-21T14:13:24Z",
    "credentials": {
      "login_url": "l",
      "password": "p",
      "username": "u"
    },
    "data_deleted_after": null,
    "desired_state": "RUNNING",
    "hostname": "h",
    "id": "i1",
    "order_id": "o1",
    "plan_id": "trial",
    "ready_at": "2026-09-21T14:13:26Z",
    "status": "READY",
    "status_reason": "r",
    "subscription_id": "s1",
    "suspended_by_billing": true,
    "updated_at": "2026-09-21T14:13:25Z",
    "url": "https://u"
  },
  "order": {
    "amount": {
      "amount": 0,
      "currency": "IDR",
      "display": "Rp 0"
    },
    "app_id": "n8n",
    "created_at": "2026-09-21T14:13:22Z",
    "failure_reason": "no",
    "id": "o1",
    "idempotency_key": "k",
    "instance_id": "i1",
    "plan_id": "trial",
    "status": "FAILED",
    "subscription_id": "s1",
    "updated_at": "2026-09-21T14:13:23Z"
  }
}"#
        );
        assert_eq!(
            ready.text(),
            "\nn8n is ready at https://u (took 1m15s).\n\
             Login URL:  l\n\
             Username:   u\n\
             Password:   p\n"
        );
    }
}
