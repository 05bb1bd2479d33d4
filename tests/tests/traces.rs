//! Traces across the services (issue 17): the real stack exports its spans over OTLP/gRPC to a
//! receiver this test runs on loopback (the collector's generated `TraceService`). One public
//! checkout is one trace: the gateway's span is its root, the control-plane's is its child,
//! and the calls the control-plane makes for it (billing's CreateSubscription, the
//! provisioner's ApplyInstance) are the control-plane span's children, with the order's ids
//! as attributes. The `traceparent` a public caller sends is not continued (the attack: a
//! caller picking Kapal's trace ids), only linked.
//!
//! A stream's span covers the stream: WatchInstance's spans end when the stream is closed,
//! after its last event, not when the response starts.
//!
//! A binary of its own: the tracer, like the `tracing` subscriber, is process-wide.

use std::time::Duration;

use kapal::proto::v1::{CheckoutRequest, InstanceActionRequest, WatchInstanceRequest};
use kapal::testing::Backend;
use kapal_tests::app::TestApp;
use kapal_tests::otlp::{ReceivedSpan, Receiver};

/// The trace id a public caller tries to impose.
const CALLERS_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLERS_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn find<'a>(spans: &'a [ReceivedSpan], name: &str, service: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.name() == name && s.attr("kapal.service").as_deref() == Some(service))
        .collect()
}

fn describe(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} [{}] trace={} span={} parent={} instance={:?}",
                s.name(),
                s.attr("kapal.service").unwrap_or_default(),
                s.trace_id(),
                s.span_id(),
                s.parent_span_id(),
                s.attr("kapal.instance_id")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn a_checkout_is_one_trace_across_the_services(backend: Backend) -> anyhow::Result<()> {
    let receiver = Receiver::shared()?;
    let app = TestApp::builder()
        .backend(backend)
        .with_otlp_endpoint(receiver.endpoint.clone())
        .start()
        .await?;
    assert!(kapal::telemetry::enabled());
    let mut ana = app.customer("ana").await?.clients;

    // The attack: a public caller sends its own trace context (trace id, sampled, tracestate).
    let mut request = tonic::Request::new(CheckoutRequest {
        app_id: "n8n".into(),
        plan_id: "trial".into(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    });
    request
        .metadata_mut()
        .insert("traceparent", CALLERS_TRACEPARENT.parse()?);
    request
        .metadata_mut()
        .insert("tracestate", "evil=1".parse()?);
    let order = ana.orders.checkout(request).await?.into_inner();
    let (order_id, instance_id) = (order.id.clone(), order.instance_id.clone());

    // Everything the checkout caused has been exported: the control-plane's span and the
    // provisioner's ApplyInstance it made in the background.
    let exported = |spans: &[ReceivedSpan]| {
        let Some(cp) = find(spans, "kapal.v1.OrderService/Checkout", "control-plane")
            .into_iter()
            .find(|s| s.attr("kapal.order_id").as_deref() == Some(order_id.as_str()))
        else {
            return false;
        };
        spans.iter().any(|s| {
            s.trace_id() == cp.trace_id()
                && s.name() == "kapal.internal.v1.ProvisionerService/ApplyInstance"
        }) && spans.iter().any(|s| {
            s.trace_id() == cp.trace_id() && s.attr("kapal.service").as_deref() == Some("gateway")
        })
    };
    let mut spans = receiver.spans();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !exported(&spans) && tokio::time::Instant::now() < deadline {
        tokio::task::spawn_blocking(kapal::telemetry::flush).await??;
        spans = receiver
            .wait_for(Duration::from_millis(500), |s| exported(s))
            .await;
    }
    let all = describe(&spans);

    let cp = find(&spans, "kapal.v1.OrderService/Checkout", "control-plane")
        .into_iter()
        .find(|s| s.attr("kapal.order_id").as_deref() == Some(order_id.as_str()))
        .ok_or_else(|| anyhow::anyhow!("no control-plane Checkout span of {order_id}:\n{all}"))?;
    let trace = cp.trace_id();
    let in_trace: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id() == trace)
        .cloned()
        .collect();
    let this_trace = describe(&in_trace);

    // The gateway's span is the root: a new trace, not the caller's, which is only linked.
    let gateway = find(&in_trace, "kapal.v1.OrderService/Checkout", "gateway");
    assert_eq!(gateway.len(), 1, "one gateway span:\n{this_trace}");
    let gateway = gateway[0];
    assert_ne!(trace, CALLERS_TRACE, "the caller's trace id was continued");
    assert_eq!(
        gateway.parent_span_id(),
        "",
        "the gateway's span has no parent:\n{this_trace}"
    );
    assert!(
        gateway
            .span
            .links
            .iter()
            .any(|l| hex::encode(&l.trace_id) == CALLERS_TRACE),
        "the caller's context is kept as a link: {:?}",
        gateway.span.links
    );
    assert!(
        !spans.iter().any(|s| s.trace_id() == CALLERS_TRACE),
        "no span joined the caller's trace:\n{all}"
    );

    // The control-plane's span is the gateway's child, with the order's ids.
    assert_eq!(cp.parent_span_id(), gateway.span_id(), "\n{this_trace}");
    assert_eq!(cp.attr("kapal.instance_id"), Some(instance_id.clone()));
    assert_eq!(cp.attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(cp.attr("rpc.grpc.status_code").as_deref(), Some("0"));
    assert!(
        cp.attr("kapal.subscription_id")
            .is_some_and(|s| !s.is_empty()),
        "{:?}",
        cp.span.attributes
    );

    // Billing's and the provisioner's spans are the control-plane span's children.
    let billing = find(
        &in_trace,
        "kapal.internal.v1.BillingService/CreateSubscription",
        "billing",
    );
    assert_eq!(billing.len(), 1, "\n{this_trace}");
    assert_eq!(billing[0].parent_span_id(), cp.span_id(), "\n{this_trace}");
    assert_eq!(billing[0].attr("kapal.order_id"), Some(order_id.clone()));
    let applied = find(
        &in_trace,
        "kapal.internal.v1.ProvisionerService/ApplyInstance",
        "provisioner",
    );
    assert_eq!(applied.len(), 1, "\n{this_trace}");
    assert_eq!(applied[0].parent_span_id(), cp.span_id(), "\n{this_trace}");
    assert_eq!(applied[0].attr("kapal.instance_id"), Some(instance_id));

    // Every span of the trace has its parent in the trace (but the root).
    for s in &in_trace {
        if s.span_id() != gateway.span_id() {
            assert!(
                in_trace.iter().any(|p| p.span_id() == s.parent_span_id()),
                "{} has no parent in the trace:\n{this_trace}",
                s.name()
            );
        }
    }
    Ok(())
}

/// Nanoseconds since the epoch, as spans are stamped.
fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

async fn a_streams_span_lasts_until_the_stream_closes(backend: Backend) -> anyhow::Result<()> {
    let receiver = Receiver::shared()?;
    let app = TestApp::builder()
        .backend(backend)
        .with_otlp_endpoint(receiver.endpoint.clone())
        .start()
        .await?;
    let mut ana = app.customer("ana").await?.clients;
    let order = ana
        .orders
        .checkout(CheckoutRequest {
            app_id: "n8n".into(),
            plan_id: "trial".into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        })
        .await?
        .into_inner();
    let instance_id = order.instance_id.clone();

    let mut stream = ana
        .instances
        .watch_instance(WatchInstanceRequest {
            instance_id: instance_id.clone(),
        })
        .await?
        .into_inner();
    let first = stream.message().await?;
    anyhow::ensure!(first.is_some(), "the stream ended before its first event");
    // The last event the caller gets: the stream's spans end after it, when the caller hangs up.
    let last_received = now_unix_nanos();
    drop(stream);

    // The trace of this watch: the gateway's span and the control-plane's, each ended (and so
    // exported) only once the stream was closed.
    let watch_spans = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        let cp: Vec<&ReceivedSpan> = find(
            spans,
            "kapal.v1.InstanceService/WatchInstance",
            "control-plane",
        )
        .into_iter()
        .filter(|s| s.attr("kapal.instance_id").as_deref() == Some(instance_id.as_str()))
        .collect();
        spans
            .iter()
            .filter(|s| {
                s.name() == "kapal.v1.InstanceService/WatchInstance"
                    && cp.iter().any(|c| c.trace_id() == s.trace_id())
            })
            .cloned()
            .collect()
    };
    let done = |spans: &[ReceivedSpan]| watch_spans(spans).len() >= 2;
    let mut spans = receiver.spans();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(&spans) && tokio::time::Instant::now() < deadline {
        tokio::task::spawn_blocking(kapal::telemetry::flush).await??;
        spans = receiver
            .wait_for(Duration::from_millis(500), |s| done(s))
            .await;
    }
    let watch = watch_spans(&spans);
    let this_trace = describe(&watch);
    for service in ["gateway", "control-plane"] {
        let s = find(&watch, "kapal.v1.InstanceService/WatchInstance", service);
        assert_eq!(s.len(), 1, "one {service} span of the watch:\n{this_trace}");
        let s = s[0];
        assert!(
            s.span.end_time_unix_nano >= last_received,
            "the {service} span of WatchInstance ended at {}, before the caller got the stream's \
             last event at {last_received} (it covers only the opening of the stream)",
            s.span.end_time_unix_nano
        );
        // The caller hung up: CANCELLED, the stream's outcome, not the OK of its opening.
        assert_eq!(
            s.attr("rpc.grpc.status_code").as_deref(),
            Some("1"),
            "{service}: {:?}",
            s.span.attributes
        );
    }

    ana.instances
        .delete_instance(InstanceActionRequest { instance_id })
        .await?;
    Ok(())
}

kapal::on_both_backends!(
    a_checkout_is_one_trace_across_the_services,
    a_streams_span_lasts_until_the_stream_closes,
);
