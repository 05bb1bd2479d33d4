//! CPU time and memory of processes, from /proc (Linux).
//!
//! CPU is counted for groups of processes: the server under test (one pid, all its threads),
//! this load generator, PostgreSQL (every `postgres` process) and the local Kubernetes control
//! plane (etcd, kube-apiserver, controller-manager, scheduler, kwok), plus the whole machine
//! (/proc/stat), so a figure disturbed by someone else's build shows as CPU used by "others".

use std::time::Instant;

use serde::Serialize;

/// /proc reports CPU times in USER_HZ ticks, which is 100 on every Linux architecture Kapal
/// runs on (it is fixed in the kernel ABI, independent of CONFIG_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

const KUBERNETES: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller",
    "kube-scheduler",
    "kwok",
];

/// utime + stime (+ reaped children's) of one process, in seconds.
fn cpu_of(pid: u32, with_children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ... utime(11) stime(12) cutime(13) cstime(14).
    let n = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let mut ticks = n(11)? + n(12)?;
    if with_children {
        ticks += n(13)? + n(14)?;
    }
    Some(ticks / TICKS_PER_SECOND)
}

fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// CPU seconds of every process whose command name starts with one of `names` (including the
/// children they reaped, e.g. PostgreSQL backends that exited).
fn cpu_of_named(names: &[&str]) -> f64 {
    pids()
        .into_iter()
        .filter(|pid| comm_of(*pid).is_some_and(|c| names.iter().any(|n| c.starts_with(n))))
        .filter_map(|pid| cpu_of(pid, true))
        .sum()
}

/// Busy CPU seconds of the whole machine (all cores, everything but idle and iowait).
fn machine_busy() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is included in user).
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle) / TICKS_PER_SECOND
}

/// A kB figure from /proc/<pid>/status (VmRSS, VmHWM), in MiB.
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU counters at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    server: f64,
    client: f64,
    postgres: f64,
    kubernetes: f64,
    machine: f64,
}

impl Sample {
    /// Now, for the server process `server` (if any).
    pub fn take(server: Option<u32>) -> Sample {
        Sample {
            at: Instant::now(),
            server: server.and_then(|p| cpu_of(p, false)).unwrap_or(0.0),
            client: cpu_of(std::process::id(), false).unwrap_or(0.0),
            postgres: cpu_of_named(&["postgres"]),
            kubernetes: cpu_of_named(&KUBERNETES),
            machine: machine_busy(),
        }
    }

    /// CPU used since `earlier`, in cores (CPU seconds per second of wall time).
    pub fn since(&self, earlier: &Sample) -> CpuUse {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let cores = |a: f64, b: f64| ((a - b) / wall).max(0.0);
        let server = cores(self.server, earlier.server);
        let client = cores(self.client, earlier.client);
        let postgres = cores(self.postgres, earlier.postgres);
        let kubernetes = cores(self.kubernetes, earlier.kubernetes);
        let machine = cores(self.machine, earlier.machine);
        CpuUse {
            server,
            client,
            postgres,
            kubernetes,
            machine,
            others: (machine - server - client - postgres - kubernetes).max(0.0),
        }
    }
}

/// CPU used during a measurement, in cores (1.0 = one core busy all the time).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUse {
    /// The server process under test.
    pub server: f64,
    /// This load generator.
    pub client: f64,
    /// Every PostgreSQL process on the machine.
    pub postgres: f64,
    /// The local Kubernetes control plane.
    pub kubernetes: f64,
    /// The whole machine.
    pub machine: f64,
    /// The machine minus all of the above: other people's work (e.g. a build) disturbing the run.
    pub others: f64,
}

/// Memory of the server process, in MiB.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    /// Resident now.
    pub rss_mib: f64,
    /// Highest resident since the process started (VmHWM).
    pub peak_rss_mib: f64,
}

impl Memory {
    pub fn of(pid: u32) -> Memory {
        Memory {
            rss_mib: status_mib(pid, "VmRSS:").unwrap_or(0.0),
            peak_rss_mib: status_mib(pid, "VmHWM:").unwrap_or(0.0),
        }
    }
}

/// The machine, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0 / 1024.0)
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Machine {
            cpu_model,
            cores,
            memory_gib,
            kernel,
        }
    }
}
