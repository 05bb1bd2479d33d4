//! The load generator: workers calling an RPC, closed-loop (as fast as answers come back) or
//! open-loop (at a target rate, whatever the answers do), with a warm-up that is not recorded,
//! a latency histogram and error counts by gRPC code.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// How to drive one measurement.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Workers with one call in flight each.
    pub concurrency: usize,
    /// Calls per second (open loop); `None`: closed loop, each worker calls again as soon as
    /// its answer arrives (the maximum throughput).
    pub rate: Option<f64>,
    /// Recorded phase.
    pub duration: Duration,
    /// Unrecorded phase before it (connections, caches, JIT-free but pool-full).
    pub warmup: Duration,
    /// Stop after this many recorded calls (e.g. to bound the orders created).
    pub max_requests: Option<u64>,
}

impl LoadSpec {
    pub fn mode(&self) -> String {
        match self.rate {
            Some(r) => format!("{r:.0}/s"),
            None => "max".to_string(),
        }
    }
}

/// What one measurement saw.
pub struct LoadResult {
    /// Latencies of successful calls, in microseconds.
    pub ok: Histogram<u64>,
    /// Latencies of every call (successes and errors), in microseconds.
    pub all: Histogram<u64>,
    /// Failed calls by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the recorded phase (until the last call returned).
    pub elapsed: Duration,
    /// Open loop: calls that started more than [`LATE_START`] after their scheduled time
    /// (the generator, or the system under test, could not keep up).
    pub late_starts: u64,
}

/// Up to this much delay between a call's scheduled and actual start is the timer's resolution
/// (tokio sleeps in whole milliseconds) and not charged to the call; beyond it the call's
/// latency counts from its scheduled time (no coordinated omission).
pub const LATE_START: Duration = Duration::from_millis(2);

/// Figures of a [`LoadResult`], serialisable, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LoadSummary {
    pub mode: String,
    pub concurrency: usize,
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    /// Successful calls per second.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub late_starts: u64,
}

impl LoadResult {
    pub fn summary(&self, spec: &LoadSpec) -> LoadSummary {
        let h = if self.ok.is_empty() {
            &self.all
        } else {
            &self.ok
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |p: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(p))
            }
        };
        let errors: u64 = self.errors.values().sum();
        let ok = self.ok.len();
        let seconds = self.elapsed.as_secs_f64();
        LoadSummary {
            mode: spec.mode(),
            concurrency: spec.concurrency,
            requests: ok + errors,
            ok,
            errors: self.errors.clone(),
            seconds,
            throughput: if seconds > 0.0 {
                ok as f64 / seconds
            } else {
                0.0
            },
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
            mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            late_starts: self.late_starts,
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, 3 significant digits.
    #[expect(clippy::expect_used, reason = "constant, valid bounds")]
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

struct WorkerResult {
    ok: Histogram<u64>,
    all: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    late_starts: u64,
}

/// Runs `spec` against the calls made by `make_worker(worker_index)`: each worker's call
/// function gets the global sequence number of the call (e.g. to pick a key). `at_start` runs
/// when the recorded phase begins (after the warm-up), e.g. to sample CPU counters.
pub async fn run<W, F, Fut, H, T>(spec: &LoadSpec, make_worker: W, at_start: H) -> (LoadResult, T)
where
    W: Fn(usize) -> F,
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
    H: FnOnce() -> T,
{
    let workers: Vec<F> = (0..spec.concurrency.max(1)).map(&make_worker).collect();
    // Warm-up: the same workers, results thrown away; they come back for the recorded phase.
    let workers = if spec.warmup.is_zero() {
        workers
    } else {
        let warm = LoadSpec {
            duration: spec.warmup,
            warmup: Duration::ZERO,
            max_requests: None,
            ..spec.clone()
        };
        phase(&warm, workers).await.1
    };
    let started = at_start();
    (phase(spec, workers).await.0, started)
}

async fn phase<F, Fut>(spec: &LoadSpec, workers: Vec<F>) -> (LoadResult, Vec<F>)
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + spec.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut call in workers {
        let counter = counter.clone();
        let (rate, max) = (spec.rate, spec.max_requests);
        tasks.spawn(async move {
            let mut r = WorkerResult {
                ok: histogram(),
                all: histogram(),
                errors: BTreeMap::new(),
                late_starts: 0,
            };
            loop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if max.is_some_and(|m| i >= m) {
                    break;
                }
                let began = match rate {
                    Some(rate) => {
                        let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
                        if scheduled >= end {
                            break;
                        }
                        tokio::time::sleep_until(scheduled).await;
                        let now = Instant::now();
                        if now.duration_since(scheduled) > LATE_START {
                            r.late_starts += 1;
                            scheduled
                        } else {
                            now
                        }
                    }
                    None => {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        now
                    }
                };
                let result = call(i).await;
                let us = began.elapsed().as_micros().clamp(1, 600_000_000) as u64;
                r.all.saturating_record(us);
                match result {
                    Ok(()) => r.ok.saturating_record(us),
                    Err(s) => *r.errors.entry(format!("{:?}", s.code())).or_default() += 1,
                }
            }
            (r, call)
        });
    }
    let mut total = LoadResult {
        ok: histogram(),
        all: histogram(),
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
        late_starts: 0,
    };
    let mut back = Vec::new();
    while let Some(done) = tasks.join_next().await {
        // A worker that panicked loses its figures; the others still count.
        let Ok((r, call)) = done else { continue };
        let _ = total.ok.add(&r.ok);
        let _ = total.all.add(&r.all);
        for (code, n) in r.errors {
            *total.errors.entry(code).or_default() += n;
        }
        total.late_starts += r.late_starts;
        back.push(call);
    }
    total.elapsed = start.elapsed();
    (total, back)
}
