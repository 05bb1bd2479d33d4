//! An OTLP/gRPC trace receiver on loopback, for the trace tests and the benchmark: the
//! collector protocol's `TraceService` as `opentelemetry-proto` generates it (tonic), keeping
//! every span it is sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::watch;

/// One span as received, with the `service.name` of the process that sent it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub service_name: String,
    pub span: Span,
}

fn text(v: &Option<AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(&kv.value))
}

impl ReceivedSpan {
    pub fn name(&self) -> &str {
        &self.span.name
    }
    /// A string form of the attribute `key`.
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
    pub fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }
    /// The parent's span id, empty for a root span.
    pub fn parent_span_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<ReceivedSpan>>,
    requests: AtomicUsize,
}

struct Collector {
    store: Arc<Store>,
    changed: watch::Sender<usize>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service_name = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    received.push(ReceivedSpan {
                        service_name: service_name.clone(),
                        span,
                    });
                }
            }
        }
        let n = self.store.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(mut spans) = self.store.spans.lock() {
            spans.extend(received);
        }
        self.changed.send_replace(n);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:PORT`, for `--otlp-endpoint`.
    pub endpoint: String,
    store: Arc<Store>,
    changed: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let store = Arc::new(Store::default());
        let (tx, changed) = watch::channel(0);
        let service = TraceServiceServer::new(Collector {
            store: store.clone(),
            changed: tx,
        });
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(kapal::serve::incoming(listener))
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the OTLP receiver stopped");
            }
        });
        Ok(Receiver {
            endpoint,
            store,
            changed,
            task,
        })
    }

    /// One receiver for the whole process, on a runtime of its own (tests on both backends run
    /// on runtimes of their own, and the tracer they export with is process-wide).
    pub fn shared() -> anyhow::Result<&'static Receiver> {
        static SHARED: std::sync::Mutex<Option<&'static Receiver>> = std::sync::Mutex::new(None);
        // Held while starting: tests on both backends ask at once, and only one may start it.
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = *shared {
            return Ok(r);
        }
        // Its runtime and the receiver live as long as the process (never dropped, so never
        // dropped inside a test's runtime either).
        let started = std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<&'static Receiver> {
                let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()?,
                ));
                let receiver = runtime.block_on(Receiver::start())?;
                Ok(Box::leak(Box::new(receiver)))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("starting the OTLP receiver panicked"))
        })??;
        *shared = Some(started);
        Ok(started)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// How many spans were received so far (without copying them).
    pub fn span_count(&self) -> usize {
        self.store.spans.lock().map(|s| s.len()).unwrap_or_default()
    }

    /// Export calls received so far (however many spans each held).
    pub fn requests(&self) -> usize {
        self.store.requests.load(Ordering::SeqCst)
    }

    /// Waits until the spans received satisfy `done` (checked at every export), for at most
    /// `limit`; returns them either way, for the caller's assertions to say what is missing.
    pub async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let mut changed = self.changed.clone();
        let _ = tokio::time::timeout(limit, async {
            loop {
                if done(&self.spans()) {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.spans()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
