//! Results: every measurement with its ratio to the baseline of the same run, the targets of
//! issue 6 marked met or missed, printed as a table and written as JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::load::LoadSummary;
use crate::procstat::{CpuUse, Machine, Memory};

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub scenario: String,
    pub name: String,
    /// `sqlite`, `postgres`, or none where storage plays no part.
    pub backend: Option<String>,
    /// `grpc` or `grpc-web`, for RPC measurements.
    pub transport: Option<String>,
    pub load: Option<LoadSummary>,
    pub cpu: Option<CpuUse>,
    pub memory: Option<Memory>,
    /// Scenario-specific figures (seconds, MiB, counts), by name.
    pub figures: BTreeMap<String, f64>,
    /// Ratios to the baseline measured in this run, by name (e.g. `throughput`, `p99`).
    pub vs_baseline: BTreeMap<String, f64>,
    /// What the ratios compare to.
    pub baseline: Option<String>,
    pub note: Option<String>,
}

impl Measurement {
    pub fn new(scenario: &str, name: impl Into<String>) -> Measurement {
        Measurement {
            scenario: scenario.into(),
            name: name.into(),
            backend: None,
            transport: None,
            load: None,
            cpu: None,
            memory: None,
            figures: BTreeMap::new(),
            vs_baseline: BTreeMap::new(),
            baseline: None,
            note: None,
        }
    }

    pub fn backend(mut self, b: Option<&str>) -> Self {
        self.backend = b.map(str::to_string);
        self
    }

    pub fn transport(mut self, t: &str) -> Self {
        self.transport = Some(t.into());
        self
    }

    pub fn figure(mut self, name: &str, value: f64) -> Self {
        self.figures.insert(name.into(), value);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// A target of issue 6.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
    /// The measured figure relative to the baseline of this run, with what the baseline is.
    pub vs_baseline: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub started_at: String,
    pub git_commit: String,
    pub settings: BTreeMap<String, String>,
    pub measurements: Vec<Measurement>,
    pub targets: Vec<Target>,
    /// Scenarios or parts of them not measured in this run, and why.
    pub not_measured: Vec<String>,
    /// Echo baselines by `<transport> <mode>`.
    #[serde(skip)]
    baselines: BTreeMap<String, LoadSummary>,
}

fn baseline_key(transport: &str, mode: &str) -> String {
    format!("{transport} {mode}")
}

impl Report {
    pub fn new(settings: BTreeMap<String, String>) -> Report {
        let git_commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Report {
            machine: Machine::describe(),
            started_at: chrono::Utc::now().to_rfc3339(),
            git_commit,
            settings,
            measurements: Vec::new(),
            targets: Vec::new(),
            not_measured: Vec::new(),
            baselines: BTreeMap::new(),
        }
    }

    /// Records an echo measurement as the baseline of its transport and mode.
    pub fn set_baseline(&mut self, transport: &str, load: &LoadSummary) {
        self.baselines
            .insert(baseline_key(transport, &load.mode), load.clone());
    }

    pub fn baseline(&self, transport: &str, mode: &str) -> Option<&LoadSummary> {
        self.baselines.get(&baseline_key(transport, mode))
    }

    /// Adds `m`, computing its ratios to the echo baseline of the same transport and mode:
    /// throughput for closed-loop runs, latency percentiles for runs at a fixed rate.
    pub fn add(&mut self, mut m: Measurement) {
        if let (Some(load), Some(t)) = (&m.load, &m.transport)
            && m.scenario != "baseline"
            && let Some(base) = self.baseline(t, &load.mode)
        {
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            m.vs_baseline
                .insert("throughput".into(), ratio(load.throughput, base.throughput));
            m.vs_baseline
                .insert("p50".into(), ratio(load.p50_ms, base.p50_ms));
            m.vs_baseline
                .insert("p99".into(), ratio(load.p99_ms, base.p99_ms));
            m.baseline = Some(format!("echo over {t} at {}", load.mode));
        }
        print_measurement(&m);
        self.measurements.push(m);
    }

    pub fn target(
        &mut self,
        name: &str,
        goal: &str,
        measured: String,
        met: bool,
        vs: Option<String>,
    ) {
        let t = Target {
            name: name.into(),
            goal: goal.into(),
            measured,
            met,
            vs_baseline: vs,
        };
        eprintln!(
            "  target {}: {} (goal {}) -> {}",
            t.name,
            t.measured,
            t.goal,
            if t.met { "MET" } else { "MISSED" }
        );
        self.targets.push(t);
    }

    pub fn print(&self) {
        println!();
        println!(
            "Kapal benchmarks, {} ({} cores, {:.0} GiB), commit {}, {}",
            self.machine.cpu_model,
            self.machine.cores,
            self.machine.memory_gib,
            self.git_commit,
            self.started_at
        );
        println!();
        println!(
            "{:<72} {:<8} {:<8} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8}  {:>5} {:>5} {:>5} {:>5} {:>5} {:>7}  vs baseline",
            "measurement",
            "db",
            "mode",
            "ok/s",
            "errors",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9",
            "srv",
            "gen",
            "pg",
            "k8s",
            "other",
            "RSS MiB",
        );
        for m in &self.measurements {
            let Some(l) = &m.load else { continue };
            let cpu = m.cpu.clone().unwrap_or_default();
            let errors: u64 = l.errors.values().sum();
            println!(
                "{:<72} {:<8} {:<8} {:>9.0} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {:>5.2} {:>5.2} {:>5.2} {:>5.2} {:>5.2} {:>7.1}  {}",
                format!(
                    "{} {} ({})",
                    m.scenario,
                    m.name,
                    m.transport.as_deref().unwrap_or("-")
                ),
                m.backend.as_deref().unwrap_or("-"),
                l.mode,
                l.throughput,
                errors,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.p999_ms,
                cpu.server,
                cpu.client,
                cpu.postgres,
                cpu.kubernetes,
                cpu.others,
                m.memory.as_ref().map(|x| x.peak_rss_mib).unwrap_or(0.0),
                ratios(m)
            );
        }
        println!(
            "(CPU in cores: srv = process under test, gen = this load generator, pg = PostgreSQL, k8s = local control plane, other = rest of the machine)"
        );
        let others: Vec<&Measurement> = self
            .measurements
            .iter()
            .filter(|m| m.load.is_none())
            .collect();
        if !others.is_empty() {
            println!();
            for m in others {
                let figures: Vec<String> = m
                    .figures
                    .iter()
                    .map(|(k, v)| format!("{k}={}", short(*v)))
                    .collect();
                println!(
                    "{:<72} {:<8} {}{}",
                    format!("{} {}", m.scenario, m.name),
                    m.backend.as_deref().unwrap_or("-"),
                    figures.join(" "),
                    match ratios(m) {
                        r if r.is_empty() => String::new(),
                        r => format!("  vs baseline: {r}"),
                    }
                );
            }
        }
        if !self.targets.is_empty() {
            println!();
            println!("Targets (issue 6):");
            for t in &self.targets {
                println!(
                    "  [{}] {:<58} {:<26} goal {}{}",
                    if t.met { "met" } else { "MISSED" },
                    t.name,
                    t.measured,
                    t.goal,
                    t.vs_baseline
                        .as_ref()
                        .map(|v| format!("; {v}"))
                        .unwrap_or_default()
                );
            }
        }
        for n in &self.not_measured {
            println!("not measured: {n}");
        }
    }
}

fn short(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn ratios(m: &Measurement) -> String {
    m.vs_baseline
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}x"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_measurement(m: &Measurement) {
    match &m.load {
        Some(l) => eprintln!(
            "  {} {} [{}] {}: {:.0} ok/s, p50 {:.2} ms, p99 {:.2} ms, errors {:?}{}",
            m.scenario,
            m.name,
            m.backend.as_deref().unwrap_or("-"),
            l.mode,
            l.throughput,
            l.p50_ms,
            l.p99_ms,
            l.errors,
            m.cpu
                .as_ref()
                .map(|c| format!(
                    ", cpu srv {:.2} gen {:.2} others {:.2}",
                    c.server, c.client, c.others
                ))
                .unwrap_or_default()
        ),
        None => eprintln!(
            "  {} {} [{}]: {:?}",
            m.scenario,
            m.name,
            m.backend.as_deref().unwrap_or("-"),
            m.figures
        ),
    }
}
