//! Cluster capacity and the checkout ceiling.
//!
//! The provisioner reports what the schedulable nodes offer (allocatable) and what pods request
//! now, Kapal's own pods apart. What checkouts are measured against is the *committed* amount:
//! the requests of pods that are not Kapal's, plus the plan resources of every instance that
//! should run (desired RUNNING and entitled by billing, scheduled or not yet) and of every order
//! still being completed (its instance is about to exist). A checkout is refused when its plan
//! would push committed CPU or memory over `ceiling_percent` of allocatable.
//!
//! The provisioner's snapshot is cached for a few seconds and shared by every request; when the
//! provisioner cannot be reached, a snapshot up to [`STALE_LIMIT`] old is still used.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kapal::catalog::{Catalog, Plan};
use kapal::proto::internal::v1::GetCapacityRequest;
use kapal::proto::internal::v1::provisioner_service_client::ProvisionerServiceClient;
use kapal::proto::v1::{Capacity, ResourceAmounts};
use kapal::serve::InternalChannel;
use tonic::Status;

/// A snapshot older than this is not used when the provisioner cannot be reached.
pub(crate) const STALE_LIMIT: Duration = Duration::from_secs(60);
/// How long one call to the provisioner's GetCapacity may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
const MIB: i64 = 1024 * 1024;

/// What the cache could tell.
pub(crate) struct Observed {
    /// The latest snapshot young enough to use (fresh, or up to [`STALE_LIMIT`] old when the
    /// provisioner did not answer).
    pub capacity: Option<Arc<Capacity>>,
    /// Why the provisioner did not answer, when it did not.
    pub error: Option<Status>,
}

struct Slot {
    snapshot: Option<(Instant, Arc<Capacity>)>,
    failure: Option<(Instant, Status)>,
}

/// The provisioner's capacity snapshot, shared by every request.
pub(crate) struct CapacityCache {
    ttl: Duration,
    slot: tokio::sync::Mutex<Slot>,
}

impl CapacityCache {
    pub fn new(ttl: Duration) -> CapacityCache {
        CapacityCache {
            ttl,
            slot: tokio::sync::Mutex::new(Slot {
                snapshot: None,
                failure: None,
            }),
        }
    }

    /// The current snapshot: cached when younger than the TTL, read from the provisioner
    /// otherwise (one read at a time; concurrent callers wait for it and share it). A failed
    /// read is not retried within the TTL either, so a provisioner that hangs costs one timeout
    /// per TTL, not one per request.
    pub async fn observe(
        &self,
        provisioner: &ProvisionerServiceClient<InternalChannel>,
    ) -> Observed {
        let mut slot = self.slot.lock().await;
        if let Some((at, capacity)) = &slot.snapshot
            && at.elapsed() < self.ttl
        {
            return Observed {
                capacity: Some(capacity.clone()),
                error: None,
            };
        }
        let recent_failure = slot
            .failure
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, s)| s.clone());
        let error = match recent_failure {
            Some(s) => s,
            None => {
                let read = tokio::time::timeout(
                    FETCH_TIMEOUT,
                    provisioner.clone().get_capacity(GetCapacityRequest {}),
                )
                .await;
                match read {
                    Ok(Ok(resp)) => {
                        let capacity = Arc::new(resp.into_inner());
                        slot.snapshot = Some((Instant::now(), capacity.clone()));
                        slot.failure = None;
                        return Observed {
                            capacity: Some(capacity),
                            error: None,
                        };
                    }
                    Ok(Err(s)) => {
                        tracing::warn!(code = ?s.code(), message = s.message(), "the provisioner's capacity is unavailable");
                        slot.failure = Some((Instant::now(), s.clone()));
                        s
                    }
                    Err(_) => {
                        let s = Status::deadline_exceeded("the provisioner did not answer in time");
                        tracing::warn!(
                            "the provisioner's capacity is unavailable: no answer in {FETCH_TIMEOUT:?}"
                        );
                        slot.failure = Some((Instant::now(), s.clone()));
                        s
                    }
                }
            }
        };
        Observed {
            capacity: slot
                .snapshot
                .as_ref()
                .filter(|(at, _)| at.elapsed() < STALE_LIMIT)
                .map(|(_, c)| c.clone()),
            error: Some(error),
        }
    }
}

/// CPU (millicores), memory (bytes) and pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Amounts {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub pods: i64,
}

impl Amounts {
    fn of(r: Option<&ResourceAmounts>) -> Amounts {
        r.map_or_else(Amounts::default, |r| Amounts {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            pods: r.pods,
        })
    }

    fn plus(self, o: Amounts) -> Amounts {
        Amounts {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            pods: self.pods.saturating_add(o.pods),
        }
    }

    fn to_wire(self) -> ResourceAmounts {
        ResourceAmounts {
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            pods: self.pods,
        }
    }

    /// One instance of `plan` of an app with `pods` components.
    pub fn of_plan(plan: &Plan, pods: usize) -> Amounts {
        Amounts {
            cpu_millis: i64::from(plan.cpu_millis),
            memory_bytes: i64::from(plan.memory_mib) * MIB,
            pods: i64::try_from(pods).unwrap_or(i64::MAX),
        }
    }
}

/// The plan resources of [`crate::store::instances::commitment_rows`]' rows. Plans no longer in the catalog count as
/// nothing (they cannot be ordered; their pods show in the provisioner's Kapal requests).
pub(crate) fn kapal_commitments(catalog: &Catalog, rows: &[(String, String, i64)]) -> Amounts {
    rows.iter()
        .fold(Amounts::default(), |sum, (app_id, plan_id, n)| {
            let Some(app) = catalog.app(app_id) else {
                return sum;
            };
            let Some(plan) = app.plan(plan_id) else {
                return sum;
            };
            let one = Amounts::of_plan(plan, app.components.len());
            sum.plus(Amounts {
                cpu_millis: one.cpu_millis.saturating_mul(*n),
                memory_bytes: one.memory_bytes.saturating_mul(*n),
                pods: one.pods.saturating_mul(*n),
            })
        })
}

/// Kapal's commitments now (outside a checkout).
pub(crate) async fn current_commitments(ctx: &crate::Ctx) -> crate::error::Result<Amounts> {
    let rows = crate::store::instances::commitments(&ctx.db).await?;
    Ok(kapal_commitments(&ctx.catalog, &rows))
}

/// Requests of pods that are not Kapal's.
fn others(capacity: &Capacity) -> Amounts {
    let requested = Amounts::of(capacity.requested.as_ref());
    let kapal = Amounts::of(capacity.requested_by_kapal.as_ref());
    Amounts {
        cpu_millis: (requested.cpu_millis - kapal.cpu_millis).max(0),
        memory_bytes: (requested.memory_bytes - kapal.memory_bytes).max(0),
        pods: (requested.pods - kapal.pods).max(0),
    }
}

/// What checkouts are measured against: pods that are not Kapal's plus Kapal's commitments.
pub(crate) fn committed(capacity: &Capacity, kapal: Amounts) -> Amounts {
    others(capacity).plus(kapal)
}

/// The provisioner's snapshot with `committed` and `ceiling_percent` filled in.
pub(crate) fn complete(capacity: &Capacity, kapal: Amounts, ceiling_percent: u32) -> Capacity {
    Capacity {
        committed: Some(committed(capacity, kapal).to_wire()),
        ceiling_percent,
        ..capacity.clone()
    }
}

/// `ceiling_percent` of `allocatable`.
fn ceiling(allocatable: i64, ceiling_percent: u32) -> i64 {
    let v = i128::from(allocatable) * i128::from(ceiling_percent) / 100;
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Percent of allocatable CPU and memory committed (0 when nothing is allocatable).
pub(crate) fn committed_percent(capacity: &Capacity, kapal: Amounts) -> (f64, f64) {
    let allocatable = Amounts::of(capacity.allocatable.as_ref());
    let c = committed(capacity, kapal);
    let pct = |used: i64, of: i64| {
        if of <= 0 {
            if used > 0 { f64::INFINITY } else { 0.0 }
        } else {
            used as f64 * 100.0 / of as f64
        }
    };
    (
        pct(c.cpu_millis, allocatable.cpu_millis),
        pct(c.memory_bytes, allocatable.memory_bytes),
    )
}

/// Whether one more instance of `plan` fits under the ceiling; the refusal's message otherwise.
pub(crate) fn check(
    capacity: &Capacity,
    kapal: Amounts,
    plan: &Plan,
    ceiling_percent: u32,
) -> Result<(), String> {
    let allocatable = Amounts::of(capacity.allocatable.as_ref());
    let committed = committed(capacity, kapal);
    let need = Amounts::of_plan(plan, 0);
    let cpu_limit = ceiling(allocatable.cpu_millis, ceiling_percent);
    let memory_limit = ceiling(allocatable.memory_bytes, ceiling_percent);
    let fits = committed.cpu_millis.saturating_add(need.cpu_millis) <= cpu_limit
        && committed.memory_bytes.saturating_add(need.memory_bytes) <= memory_limit;
    if fits {
        return Ok(());
    }
    let cpu_left = (cpu_limit - committed.cpu_millis).max(0);
    let memory_left = (memory_limit - committed.memory_bytes).max(0) / MIB;
    Err(format!(
        "The cluster is at capacity: this plan needs {}m CPU / {} MiB and only {cpu_left}m / \
         {memory_left} MiB remain under the {ceiling_percent}% ceiling. Try again later or \
         contact support.",
        plan.cpu_millis, plan.memory_mib
    ))
}

/// Whether an instance counted in `kapal` may grow from plan `from` to plan `to` under the
/// ceiling (only the difference is new; a plan that is not bigger always fits); the refusal's
/// message otherwise, for the customer who asked.
pub(crate) fn check_growth(
    capacity: &Capacity,
    kapal: Amounts,
    from: &Plan,
    to: &Plan,
    ceiling_percent: u32,
) -> Result<(), String> {
    let more_cpu = i64::from(to.cpu_millis) - i64::from(from.cpu_millis);
    let more_memory = (i64::from(to.memory_mib) - i64::from(from.memory_mib)) * MIB;
    if more_cpu <= 0 && more_memory <= 0 {
        return Ok(());
    }
    let allocatable = Amounts::of(capacity.allocatable.as_ref());
    let committed = committed(capacity, kapal);
    let cpu_limit = ceiling(allocatable.cpu_millis, ceiling_percent);
    let memory_limit = ceiling(allocatable.memory_bytes, ceiling_percent);
    let fits = committed.cpu_millis.saturating_add(more_cpu.max(0)) <= cpu_limit
        && committed.memory_bytes.saturating_add(more_memory.max(0)) <= memory_limit;
    if fits {
        return Ok(());
    }
    let cpu_left = (cpu_limit - committed.cpu_millis).max(0);
    let memory_left = (memory_limit - committed.memory_bytes).max(0) / MIB;
    Err(format!(
        "The cluster is at capacity: plan {} needs {}m CPU / {} MiB more than plan {}, and only \
         {cpu_left}m / {memory_left} MiB remain under the {ceiling_percent}% ceiling. Nothing was \
         changed: the instance keeps plan {}. Try again later, choose a smaller plan, or contact \
         support.",
        to.id,
        more_cpu.max(0),
        more_memory.max(0) / MIB,
        from.id,
        from.id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amounts(cpu_millis: i64, memory_mib: i64, pods: i64) -> Option<ResourceAmounts> {
        Some(ResourceAmounts {
            cpu_millis,
            memory_bytes: memory_mib * MIB,
            pods,
        })
    }

    fn plan(cpu: u32, mib: u32) -> Plan {
        Plan {
            id: "trial".into(),
            name: "Trial".into(),
            monthly_price_idr: 0,
            trial_days: 14,
            cpu_millis: cpu,
            memory_mib: mib,
            storage_gib: 1,
            ephemeral_storage_mib: 1024,
        }
    }

    #[test]
    fn committed_counts_other_pods_and_kapal_plans() {
        let cap = Capacity {
            allocatable: amounts(2000, 4000, 110),
            requested: amounts(900, 1000, 20),
            requested_by_kapal: amounts(400, 600, 4),
            ..Default::default()
        };
        let kapal = Amounts {
            cpu_millis: 600,
            memory_bytes: 800 * MIB,
            pods: 6,
        };
        // Others: 500m / 400 MiB / 16 pods; plus Kapal's plans.
        assert_eq!(
            committed(&cap, kapal),
            Amounts {
                cpu_millis: 1100,
                memory_bytes: 1200 * MIB,
                pods: 22
            }
        );
        // Ceiling 80%: 1600m / 3200 MiB. 1100 + 500 = 1600 fits exactly; 501 does not.
        assert!(check(&cap, kapal, &plan(500, 100), 80).is_ok());
        let refusal = check(&cap, kapal, &plan(501, 100), 80).expect_err("over the ceiling");
        assert_eq!(
            refusal,
            "The cluster is at capacity: this plan needs 501m CPU / 100 MiB and only 500m / 2000 MiB \
             remain under the 80% ceiling. Try again later or contact support."
        );
        assert!(check(&cap, kapal, &plan(100, 2001), 80).is_err());
        let full = complete(&cap, kapal, 80);
        assert_eq!(full.ceiling_percent, 80);
        assert_eq!(full.committed.map(|c| c.cpu_millis), Some(1100));
    }

    #[test]
    fn growth_counts_only_the_difference() {
        let cap = Capacity {
            allocatable: amounts(2000, 4000, 110),
            ..Default::default()
        };
        let kapal = Amounts {
            cpu_millis: 1000,
            memory_bytes: 1000 * MIB,
            pods: 1,
        };
        let (small, big) = (plan(500, 500), plan(1100, 500));
        // 1000 + 600 more = 1600, the 80% ceiling exactly.
        assert!(check_growth(&cap, kapal, &small, &big, 80).is_ok());
        let refusal = check_growth(&cap, kapal, &small, &plan(1101, 500), 80).expect_err("over");
        assert!(refusal.contains("601m CPU / 0 MiB more"), "{refusal}");
        assert!(refusal.contains("Nothing was changed"), "{refusal}");
        // Smaller or equal plans always fit, even over the ceiling.
        assert!(check_growth(&cap, kapal, &big, &small, 1).is_ok());
    }

    #[test]
    fn nothing_allocatable_refuses() {
        let cap = Capacity::default();
        assert!(check(&cap, Amounts::default(), &plan(100, 100), 80).is_err());
    }
}
