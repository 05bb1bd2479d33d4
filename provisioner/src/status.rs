//! An instance's status, computed by a pure function from what the cluster shows now.
//!
//! Rules, in order:
//! - never applied: PENDING;
//! - desired DELETED: DELETING while workloads or pods remain; then DELETED, saying until when
//!   the data is kept (volumes, secrets and namespace stay until `delete_data_after`), and
//!   DELETED "with its data" once the namespace is gone; without a retention time the namespace
//!   goes at once and the instance is DELETING until it is gone;
//! - namespace missing or still terminating from an earlier delete: PROVISIONING;
//! - desired STOPPED and every workload scaled to 0: SUSPENDED ("stopping" while pods remain;
//!   the reason says whether billing or the customer stopped it);
//! - every component's workload has all its desired replicas ready and updated, and the app's
//!   setup Job (catalog `setup:`, e.g. WordPress' install with the generated admin) has
//!   succeeded: READY. Until the first READY of a life the setup Job gates it: while it runs the
//!   instance is PROVISIONING ("Setting up the app"), a failed Job (or a setup pod that cannot
//!   start) is FAILED with the reason; once READY was seen the Job no longer counts;
//! - otherwise, if the instance was READY since it was last started: DEGRADED with the reason;
//! - otherwise, a hard failure (image cannot be pulled, crash loop of 5 restarts or more,
//!   invalid configuration, no
//!   capacity or no volume for longer than the grace period, a failed rollout): FAILED;
//! - otherwise PROVISIONING, saying what it waits for.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kapal::catalog::{App, WorkloadKind};
use kapal::proto::v1::InstanceStatus;

use crate::render::LABEL_COMPONENT;
use crate::spec::Desired;

/// What the cluster shows of one instance.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub namespace: Option<Namespace>,
    pub deployments: Vec<Deployment>,
    pub stateful_sets: Vec<StatefulSet>,
    pub pods: Vec<Pod>,
    pub volumes: Vec<PersistentVolumeClaim>,
    /// The app's setup Job ([`crate::render::SETUP_JOB`]), if it exists.
    pub setup: Option<Job>,
    /// The setup Job's pods (not in `pods`: they are not a component's).
    pub setup_pods: Vec<Pod>,
}

/// What the provisioner knows of an applied instance.
#[derive(Clone, Copy, Debug)]
pub struct Known<'a> {
    pub desired: Desired,
    /// READY was observed since the instance was last started or restarted.
    pub was_ready: bool,
    pub app: &'a App,
    /// With DELETED: when the kept data is removed (`None`: at once).
    pub delete_data_after: Option<DateTime<Utc>>,
    /// With STOPPED: billing stopped it (unpaid or ended subscription), not the customer.
    pub suspended_by_billing: bool,
}

/// The reason of a deleted instance whose data is gone too: nothing is left to do.
pub const PURGED_REASON: &str = "Deleted with its data.";
/// The reason of a STOPPED instance that billing suspended.
pub const BILLING_SUSPENDED_REASON: &str =
    "Suspended: the subscription is unpaid or has ended; data kept.";

/// The reason of a deleted instance whose data is kept until `until`.
pub fn kept_reason(until: DateTime<Utc>) -> String {
    format!(
        "Deleted; its data is kept until {}, then removed.",
        until.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: InstanceStatus,
    pub reason: String,
    /// DELETED with its data gone too: nothing is left to converge.
    pub purged: bool,
}

fn verdict(status: InstanceStatus, reason: impl Into<String>) -> Verdict {
    Verdict {
        status,
        reason: reason.into(),
        purged: false,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Severity {
    /// Worth waiting for.
    Waiting,
    /// Will not resolve by itself.
    Fatal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Problem {
    severity: Severity,
    message: String,
}

/// One component's workload, as far as readiness goes.
#[derive(Debug)]
struct WorkloadState {
    desired: i32,
    ready: i32,
    updated: i32,
    /// The controller has seen the latest spec.
    observed: bool,
    /// The controller reports it cannot make progress.
    failure: Option<String>,
}

impl WorkloadState {
    fn of_deployment(d: &Deployment) -> WorkloadState {
        let status = d.status.clone().unwrap_or_default();
        let failure = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| {
                // In a namespace just created, the first pod can be refused because the
                // ServiceAccount controller has not made the `default` account yet; the
                // ReplicaSet controller retries within moments. Not a failure.
                let waiting_for_account = c
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("error looking up service account"));
                let failed =
                    (c.type_ == "ReplicaFailure" && c.status == "True" && !waiting_for_account)
                        || (c.type_ == "Progressing"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
                failed.then(|| c.message.unwrap_or_else(|| c.type_.clone()))
            });
        WorkloadState {
            desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            observed: status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0),
            failure,
        }
    }

    fn of_stateful_set(s: &StatefulSet) -> WorkloadState {
        let status = s.status.clone().unwrap_or_default();
        WorkloadState {
            desired: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            observed: status.observed_generation.unwrap_or(0) >= s.metadata.generation.unwrap_or(0),
            failure: None,
        }
    }

    fn is_ready(&self) -> bool {
        self.observed
            && self.desired > 0
            && self.ready >= self.desired
            && self.updated >= self.desired
    }
}

fn seconds_since(t: Option<&Time>, now: DateTime<Utc>) -> Option<i64> {
    t.map(|t| now.timestamp() - t.0.as_second())
}

fn is_terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// The scheduler's message up to its preemption details, which mean nothing to a customer.
fn first_sentence(message: &str) -> &str {
    message
        .split(" preemption:")
        .next()
        .unwrap_or(message)
        .trim()
        .trim_end_matches('.')
}

/// Restarts of a crash-looping container from which it counts as a hard failure (about five
/// minutes of the kubelet's back-off); fewer are an app still starting.
const CRASH_RESTARTS: i32 = 5;

/// What keeps a pod from running, if anything.
fn pod_problem(pod: &Pod, now: DateTime<Utc>, grace: Duration) -> Option<Problem> {
    let component = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_COMPONENT))
        .map(String::as_str)
        .unwrap_or("app");
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        let Some(reason) = c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
        else {
            continue;
        };
        let message = match reason {
            "ErrImagePull"
            | "ImagePullBackOff"
            | "InvalidImageName"
            | "ErrImageNeverPull"
            | "RegistryUnavailable" => {
                format!(
                    "The image of the {component} component ({}) could not be downloaded ({reason}).",
                    c.image
                )
            }
            // An app that starts before its database is up (Ghost beside MySQL initialising
            // its volume) exits and is restarted a few times: waiting, not yet a failure.
            "CrashLoopBackOff" if c.restart_count < CRASH_RESTARTS => {
                return Some(Problem {
                    severity: Severity::Waiting,
                    message: format!(
                        "The {component} component is starting (restarted {} times so far).",
                        c.restart_count
                    ),
                });
            }
            "CrashLoopBackOff" => {
                let oom = c
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.reason.as_deref())
                    == Some("OOMKilled");
                if oom {
                    format!(
                        "The {component} component runs out of memory and keeps restarting; a larger plan gives it more."
                    )
                } else {
                    format!(
                        "The {component} component keeps crashing on start-up (restarted {} times).",
                        c.restart_count
                    )
                }
            }
            "CreateContainerConfigError" | "CreateContainerError" => {
                format!(
                    "The {component} component could not be started: its configuration is invalid ({reason})."
                )
            }
            _ => continue,
        };
        return Some(Problem {
            severity: Severity::Fatal,
            message,
        });
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    })?;
    let detail = first_sentence(unschedulable.message.as_deref().unwrap_or("no node fits"));
    let lower = detail.to_ascii_lowercase();
    let message = if lower.contains("insufficient") || lower.contains("too many pods") {
        format!(
            "There is not enough free capacity in the cluster to start the {component} component ({detail})."
        )
    } else if lower.contains("persistentvolumeclaim") || lower.contains("volume") {
        format!("The storage volume of the {component} component is not ready ({detail}).")
    } else {
        format!("The {component} component cannot be placed on any server ({detail}).")
    };
    let waited = seconds_since(unschedulable.last_transition_time.as_ref(), now).unwrap_or(0);
    let severity = if waited >= i64::try_from(grace.as_secs()).unwrap_or(i64::MAX) {
        Severity::Fatal
    } else {
        Severity::Waiting
    };
    Some(Problem { severity, message })
}

fn volume_problem(
    pvc: &PersistentVolumeClaim,
    now: DateTime<Utc>,
    grace: Duration,
) -> Option<Problem> {
    let name = pvc.metadata.name.as_deref().unwrap_or("data");
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    match phase {
        "Lost" => Some(Problem {
            severity: Severity::Fatal,
            message: format!("The storage volume {name} was lost."),
        }),
        "Pending" => {
            // With WaitForFirstConsumer a volume waits for its pod to be placed; once the
            // scheduler has picked a node, it should be provisioned quickly.
            let selected = pvc
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("volume.kubernetes.io/selected-node"));
            let age = seconds_since(pvc.metadata.creation_timestamp.as_ref(), now).unwrap_or(0);
            let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
            (selected && age >= grace).then(|| Problem {
                severity: Severity::Fatal,
                message: format!("The storage volume {name} could not be created."),
            })
        }
        _ => None,
    }
}

/// Every component is ready and the app has a setup Job: READY once the Job has succeeded.
fn setup_verdict(observed: &Observed, now: DateTime<Utc>, grace: Duration) -> Verdict {
    use InstanceStatus as S;
    const WAITING: &str = "Setting up the app (its first-time installation).";
    let Some(job) = &observed.setup else {
        return verdict(S::Provisioning, WAITING);
    };
    let status = job.status.clone().unwrap_or_default();
    let condition = |type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    // `Complete` is the Job controller's last word; `succeeded` counts a pod that already
    // finished while the controller adds the condition (SuccessCriteriaMet first in 1.31+).
    if condition("Complete").is_some()
        || condition("SuccessCriteriaMet").is_some()
        || status.succeeded.unwrap_or(0) > 0
    {
        return verdict(S::Ready, "The app is running.");
    }
    if let Some(failed) = condition("Failed").or_else(|| condition("FailureTarget")) {
        let why = failed
            .message
            .as_deref()
            .or(failed.reason.as_deref())
            .unwrap_or("it gave up");
        return verdict(
            S::Failed,
            format!(
                "The app's first-time setup failed ({}); the app runs but is not installed.",
                why.trim_end_matches('.')
            ),
        );
    }
    match observed
        .setup_pods
        .iter()
        .filter_map(|p| pod_problem(p, now, grace))
        .max_by_key(|p| p.severity)
    {
        Some(p) if p.severity == Severity::Fatal => verdict(
            S::Failed,
            format!("The app's first-time setup cannot run: {}", p.message),
        ),
        _ => verdict(S::Provisioning, WAITING),
    }
}

/// The instance's status. `unschedulable_grace` is how long a pod may wait for capacity or a
/// volume before the instance counts as FAILED.
pub fn compute(
    known: Option<Known<'_>>,
    observed: &Observed,
    now: DateTime<Utc>,
    unschedulable_grace: Duration,
) -> Verdict {
    use InstanceStatus as S;
    let Some(known) = known else {
        return verdict(S::Pending, "Not handed to the cluster yet.");
    };
    if known.desired == Desired::Deleted {
        if observed.namespace.is_none() {
            return Verdict {
                purged: true,
                ..verdict(S::Deleted, PURGED_REASON)
            };
        }
        let kept_until = known.delete_data_after.filter(|at| *at > now);
        let workloads_left = !observed.deployments.is_empty()
            || !observed.stateful_sets.is_empty()
            || !observed.pods.is_empty();
        return match (workloads_left, kept_until, known.delete_data_after) {
            (true, Some(_), _) => verdict(S::Deleting, "Removing the app; its data is kept."),
            (true, None, _) | (false, None, None) => {
                verdict(S::Deleting, "Removing the instance and its data.")
            }
            (false, Some(at), _) => verdict(S::Deleted, kept_reason(at)),
            // The retention ran out: deleted, and its data is going now.
            (false, None, Some(_)) => verdict(S::Deleted, "Deleted; its data is being removed."),
        };
    }
    let Some(ns) = &observed.namespace else {
        return verdict(S::Provisioning, "Creating the instance's resources.");
    };
    if is_terminating(ns) {
        return verdict(
            S::Provisioning,
            "Waiting for an earlier copy of the instance to be removed.",
        );
    }

    let mut states = Vec::new();
    for component in &known.app.components {
        let state = match component.kind {
            WorkloadKind::Deployment => observed
                .deployments
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(&component.name))
                .map(WorkloadState::of_deployment),
            WorkloadKind::StatefulSet => observed
                .stateful_sets
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(&component.name))
                .map(WorkloadState::of_stateful_set),
        };
        states.push((component.name.as_str(), state));
    }

    if known.desired == Desired::Stopped
        && states
            .iter()
            .all(|(_, s)| s.as_ref().is_none_or(|s| s.desired == 0))
    {
        // Terminating pods count: they are still shutting down.
        let running = observed.pods.iter().any(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        });
        let reason = if running && known.suspended_by_billing {
            "Suspending: the subscription is unpaid or has ended; stopping the app, its data is kept."
        } else if running {
            "Stopping the app; its data is kept."
        } else if known.suspended_by_billing {
            BILLING_SUSPENDED_REASON
        } else {
            "Stopped; the app's data is kept."
        };
        return verdict(S::Suspended, reason);
    }

    if let Some((name, _)) = states.iter().find(|(_, s)| s.is_none()) {
        return verdict(S::Provisioning, format!("Creating the {name} component."));
    }
    let total = states.len();
    let ready = states
        .iter()
        .filter(|(_, s)| s.as_ref().is_some_and(WorkloadState::is_ready))
        .count();
    if ready == total {
        if known.app.setup.is_some() && !known.was_ready {
            return setup_verdict(observed, now, unschedulable_grace);
        }
        return verdict(S::Ready, "The app is running.");
    }

    let mut problems: Vec<Problem> = states
        .iter()
        .filter_map(|(name, s)| {
            let failure = s.as_ref()?.failure.as_ref()?;
            Some(Problem {
                severity: Severity::Fatal,
                message: format!("The {name} component could not be started: {failure}"),
            })
        })
        .collect();
    problems.extend(
        observed
            .pods
            .iter()
            .filter_map(|p| pod_problem(p, now, unschedulable_grace)),
    );
    problems.extend(
        observed
            .volumes
            .iter()
            .filter_map(|v| volume_problem(v, now, unschedulable_grace)),
    );
    // The most severe first; the order of discovery otherwise.
    problems.sort_by_key(|p| std::cmp::Reverse(p.severity));
    let worst = problems.into_iter().next();
    let not_ready: Vec<&str> = states
        .iter()
        .filter(|(_, s)| !s.as_ref().is_some_and(WorkloadState::is_ready))
        .map(|(name, _)| *name)
        .collect();

    if known.was_ready {
        let reason = worst.map(|p| p.message).unwrap_or_else(|| {
            format!(
                "The {} component is not ready; it is being restarted.",
                not_ready.join(" and ")
            )
        });
        return verdict(S::Degraded, reason);
    }
    match worst {
        Some(p) if p.severity == Severity::Fatal => verdict(S::Failed, p.message),
        Some(p) => verdict(S::Provisioning, p.message),
        None => verdict(
            S::Provisioning,
            format!("Starting the app ({ready} of {total} components ready)."),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapal::catalog::Catalog;
    use serde_json::json;

    const GRACE: Duration = Duration::from_secs(120);

    fn catalog() -> Catalog {
        Catalog::load(&kapal::catalog::repo_catalog_dir()).expect("catalog")
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("object")
    }

    fn namespace() -> Namespace {
        from(json!({ "metadata": { "name": "ns" }, "status": { "phase": "Active" } }))
    }

    fn deployment(name: &str, replicas: i32, ready: i32) -> Deployment {
        from(json!({
            "metadata": { "name": name, "generation": 2 },
            "spec": { "replicas": replicas, "selector": {}, "template": {} },
            "status": { "observedGeneration": 2, "replicas": ready, "readyReplicas": ready, "updatedReplicas": replicas },
        }))
    }

    fn stateful_set(name: &str, replicas: i32, ready: i32) -> StatefulSet {
        from(json!({
            "metadata": { "name": name, "generation": 1 },
            "spec": { "replicas": replicas, "selector": {}, "template": {}, "serviceName": name },
            "status": { "observedGeneration": 1, "replicas": ready, "readyReplicas": ready, "updatedReplicas": replicas },
        }))
    }

    fn pod(component: &str, status: serde_json::Value) -> Pod {
        from(
            json!({ "metadata": { "name": format!("{component}-x"), "labels": { LABEL_COMPONENT: component } }, "status": status }),
        )
    }

    fn waiting(reason: &str) -> serde_json::Value {
        json!({ "phase": "Pending", "containerStatuses": [{
            "name": "app", "image": "ghost:5.116.2", "imageID": "", "ready": false, "restartCount": 5,
            "state": { "waiting": { "reason": reason } },
            "lastState": { "terminated": { "exitCode": 137, "reason": "Error" } },
        }] })
    }

    fn unschedulable(message: &str, since: &str) -> serde_json::Value {
        json!({ "phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastTransitionTime": since,
        }] })
    }

    /// Ghost's app and database, its setup Job done (it sets up the owner).
    fn ghost_observed(app_ready: i32, db_ready: i32) -> Observed {
        Observed {
            namespace: Some(namespace()),
            deployments: vec![deployment("app", 1, app_ready)],
            stateful_sets: vec![stateful_set("db", 1, db_ready)],
            setup: Some(setup_job(json!({ "succeeded": 1, "conditions": [
                { "type": "Complete", "status": "True" },
            ] }))),
            ..Observed::default()
        }
    }

    fn check(desired: Desired, was_ready: bool, observed: &Observed) -> Verdict {
        let catalog = catalog();
        let app = catalog.app("ghost").expect("ghost");
        compute(
            Some(Known {
                desired,
                was_ready,
                app,
                delete_data_after: None,
                suspended_by_billing: false,
            }),
            observed,
            now(),
            GRACE,
        )
    }

    #[test]
    fn never_applied_is_pending_and_deletion_follows_the_namespace() {
        let catalog = catalog();
        let app = catalog.app("n8n").expect("n8n");
        let v = compute(None, &Observed::default(), now(), GRACE);
        assert_eq!(v.status, InstanceStatus::Pending);
        let known = Known {
            desired: Desired::Deleted,
            was_ready: true,
            app,
            delete_data_after: None,
            suspended_by_billing: false,
        };
        let mut terminating = namespace();
        terminating.metadata.deletion_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let obs = Observed {
            namespace: Some(terminating.clone()),
            ..Observed::default()
        };
        assert_eq!(
            compute(Some(known), &obs, now(), GRACE).status,
            InstanceStatus::Deleting
        );
        assert_eq!(
            compute(Some(known), &Observed::default(), now(), GRACE).status,
            InstanceStatus::Deleted
        );

        let running = Known {
            desired: Desired::Running,
            ..known
        };
        assert_eq!(
            compute(Some(running), &Observed::default(), now(), GRACE).status,
            InstanceStatus::Provisioning
        );
        assert_eq!(
            compute(Some(running), &obs, now(), GRACE).status,
            InstanceStatus::Provisioning
        );
    }

    #[test]
    fn ready_when_every_component_is_ready() {
        let v = check(Desired::Running, false, &ghost_observed(1, 1));
        assert_eq!(v, verdict(InstanceStatus::Ready, "The app is running."));

        let v = check(Desired::Running, false, &ghost_observed(1, 0));
        assert_eq!(v.status, InstanceStatus::Provisioning);
        assert_eq!(v.reason, "Starting the app (1 of 2 components ready).");

        let missing = Observed {
            stateful_sets: vec![],
            ..ghost_observed(1, 1)
        };
        let v = check(Desired::Running, false, &missing);
        assert_eq!(
            v,
            verdict(InstanceStatus::Provisioning, "Creating the db component.")
        );

        // A rollout the controller has not seen yet is not ready.
        let mut stale = ghost_observed(1, 1);
        stale.deployments[0].metadata.generation = Some(3);
        assert_eq!(
            check(Desired::Running, false, &stale).status,
            InstanceStatus::Provisioning
        );
    }

    fn wordpress(was_ready: bool, observed: &Observed) -> Verdict {
        let catalog = catalog();
        let app = catalog.app("wordpress").expect("wordpress");
        compute(
            Some(Known {
                was_ready,
                ..known(app, Desired::Running)
            }),
            observed,
            now(),
            GRACE,
        )
    }

    fn pods_only() -> Observed {
        Observed {
            setup: None,
            ..ghost_observed(1, 1)
        }
    }

    fn setup_job(status: serde_json::Value) -> Job {
        from(
            json!({ "metadata": { "name": "kapal-setup" }, "spec": { "template": {} }, "status": status }),
        )
    }

    #[test]
    fn ready_waits_for_the_setup_job_to_succeed() {
        // WordPress' pods are ready, but its setup Job has not installed it yet: the site would
        // show WordPress' installer, so the instance is not READY.
        let pods_ready = Observed {
            setup: None,
            ..ghost_observed(1, 1)
        };
        let v = wordpress(false, &pods_ready);
        assert_eq!(
            v,
            verdict(
                InstanceStatus::Provisioning,
                "Setting up the app (its first-time installation)."
            )
        );
        let running = Observed {
            setup: Some(setup_job(json!({ "active": 1 }))),
            setup_pods: vec![pod("setup", json!({ "phase": "Running" }))],
            ..ghost_observed(1, 1)
        };
        assert_eq!(wordpress(false, &running), v);
        // Succeeded: READY.
        let done = Observed {
            setup: Some(setup_job(json!({ "succeeded": 1, "conditions": [
                { "type": "SuccessCriteriaMet", "status": "True" },
                { "type": "Complete", "status": "True" },
            ] }))),
            ..ghost_observed(1, 1)
        };
        assert_eq!(
            wordpress(false, &done),
            verdict(InstanceStatus::Ready, "The app is running.")
        );
        // The Job's success does not make unready pods READY.
        let mut unready = done.clone();
        unready.deployments[0] = deployment("app", 1, 0);
        assert_eq!(
            wordpress(false, &unready).status,
            InstanceStatus::Provisioning
        );
    }

    #[test]
    fn a_failed_setup_job_is_a_clear_failure() {
        let failed = Observed {
            setup: Some(setup_job(json!({ "failed": 7, "conditions": [{
                "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            }] }))),
            ..ghost_observed(1, 1)
        };
        assert_eq!(
            wordpress(false, &failed),
            verdict(
                InstanceStatus::Failed,
                "The app's first-time setup failed (Job has reached the specified backoff limit); the app runs but is not installed."
            )
        );
        // Its pod cannot start (its image is missing): FAILED at once, not after the Job's
        // deadline.
        let stuck = Observed {
            setup: Some(setup_job(json!({ "active": 1 }))),
            setup_pods: vec![pod("setup", waiting("ErrImagePull"))],
            ..ghost_observed(1, 1)
        };
        let v = wordpress(false, &stuck);
        assert_eq!(v.status, InstanceStatus::Failed);
        assert!(
            v.reason.starts_with(
                "The app's first-time setup cannot run: The image of the setup component"
            ),
            "{}",
            v.reason
        );
        // Once the instance was READY in this life the Job no longer counts (a restart keeps
        // the finished Job; nothing is reinstalled).
        assert_eq!(wordpress(true, &failed).status, InstanceStatus::Ready);
        assert_eq!(wordpress(true, &pods_only()).status, InstanceStatus::Ready);
    }

    #[test]
    fn was_ready_and_not_anymore_is_degraded() {
        let v = check(Desired::Running, true, &ghost_observed(0, 1));
        assert_eq!(v.status, InstanceStatus::Degraded);
        assert_eq!(
            v.reason,
            "The app component is not ready; it is being restarted."
        );

        let mut obs = ghost_observed(0, 1);
        obs.pods.push(pod("app", waiting("CrashLoopBackOff")));
        let v = check(Desired::Running, true, &obs);
        assert_eq!(v.status, InstanceStatus::Degraded);
        assert_eq!(
            v.reason,
            "The app component keeps crashing on start-up (restarted 5 times)."
        );
    }

    #[test]
    fn hard_failures_before_the_first_ready_are_failed_with_a_reason() {
        let mut obs = ghost_observed(0, 1);
        obs.pods.push(pod("app", waiting("ImagePullBackOff")));
        let v = check(Desired::Running, false, &obs);
        assert_eq!(v.status, InstanceStatus::Failed);
        assert_eq!(
            v.reason,
            "The image of the app component (ghost:5.116.2) could not be downloaded (ImagePullBackOff)."
        );

        // A crash or two while the database starts is not a failure yet.
        let mut early = waiting("CrashLoopBackOff");
        early["containerStatuses"][0]["restartCount"] = json!(1);
        let obs = Observed {
            pods: vec![pod("app", early)],
            ..ghost_observed(0, 1)
        };
        assert_eq!(
            check(Desired::Running, false, &obs),
            verdict(
                InstanceStatus::Provisioning,
                "The app component is starting (restarted 1 times so far)."
            )
        );

        let mut oom = waiting("CrashLoopBackOff");
        oom["containerStatuses"][0]["restartCount"] = json!(5);
        oom["containerStatuses"][0]["lastState"]["terminated"]["reason"] = json!("OOMKilled");
        let obs = Observed {
            pods: vec![pod("app", oom)],
            ..ghost_observed(0, 1)
        };
        let v = check(Desired::Running, false, &obs);
        assert_eq!(v.status, InstanceStatus::Failed);
        assert!(v.reason.contains("runs out of memory"), "{}", v.reason);

        let mut failed = ghost_observed(0, 1);
        failed.deployments[0]
            .status
            .as_mut()
            .expect("status")
            .conditions = Some(vec![from(json!({
            "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": "pods \"app-1\" is forbidden: exceeded quota: kapal-quota",
        }))]);
        let v = check(Desired::Running, false, &failed);
        assert_eq!(v.status, InstanceStatus::Failed);
        assert!(v.reason.contains("exceeded quota"), "{}", v.reason);

        // A new namespace's default ServiceAccount not made yet: the controller retries.
        let mut early = ghost_observed(0, 1);
        early.deployments[0]
            .status
            .as_mut()
            .expect("status")
            .conditions = Some(vec![from(json!({
            "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": "pods \"app-6465f799df-\" is forbidden: error looking up service account kapal-x/default: serviceaccount \"default\" not found",
        }))]);
        let v = check(Desired::Running, false, &early);
        assert_ne!(v.status, InstanceStatus::Failed, "{v:?}");
    }

    #[test]
    fn unschedulable_waits_for_the_grace_period_then_fails() {
        let message = "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
        let recent = Observed {
            pods: vec![pod("db", unschedulable(message, "2025-06-01T11:59:30Z"))],
            ..ghost_observed(1, 0)
        };
        let v = check(Desired::Running, false, &recent);
        assert_eq!(v.status, InstanceStatus::Provisioning);
        assert_eq!(
            v.reason,
            "There is not enough free capacity in the cluster to start the db component (0/3 nodes are available: 3 Insufficient cpu)."
        );
        let old = Observed {
            pods: vec![pod("db", unschedulable(message, "2025-06-01T11:50:00Z"))],
            ..ghost_observed(1, 0)
        };
        let v = check(Desired::Running, false, &old);
        assert_eq!(v.status, InstanceStatus::Failed);
        assert!(
            v.reason.starts_with("There is not enough free capacity"),
            "{}",
            v.reason
        );

        let volume = Observed {
            pods: vec![pod(
                "db",
                unschedulable(
                    "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
                    "2025-06-01T11:00:00Z",
                ),
            )],
            ..ghost_observed(1, 0)
        };
        let v = check(Desired::Running, false, &volume);
        assert_eq!(v.status, InstanceStatus::Failed);
        assert!(
            v.reason
                .starts_with("The storage volume of the db component is not ready"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn stopped_and_scaled_to_zero_is_suspended() {
        let obs = Observed {
            namespace: Some(namespace()),
            deployments: vec![deployment("app", 0, 0)],
            stateful_sets: vec![stateful_set("db", 0, 0)],
            ..Observed::default()
        };
        let v = check(Desired::Stopped, true, &obs);
        assert_eq!(
            v,
            verdict(
                InstanceStatus::Suspended,
                "Stopped; the app's data is kept."
            )
        );
        let stopping = Observed {
            pods: vec![pod("app", json!({ "phase": "Running" }))],
            ..obs
        };
        assert_eq!(
            check(Desired::Stopped, true, &stopping).reason,
            "Stopping the app; its data is kept."
        );
        // Not scaled down yet: still what it is.
        assert_eq!(
            check(Desired::Stopped, true, &ghost_observed(1, 1)).status,
            InstanceStatus::Ready
        );
    }

    fn known(app: &App, desired: Desired) -> Known<'_> {
        Known {
            desired,
            was_ready: true,
            app,
            delete_data_after: None,
            suspended_by_billing: false,
        }
    }

    #[test]
    fn a_stop_by_billing_says_so() {
        let catalog = catalog();
        let app = catalog.app("ghost").expect("ghost");
        let obs = Observed {
            namespace: Some(namespace()),
            deployments: vec![deployment("app", 0, 0)],
            stateful_sets: vec![stateful_set("db", 0, 0)],
            ..Observed::default()
        };
        let billing = Known {
            suspended_by_billing: true,
            ..known(app, Desired::Stopped)
        };
        assert_eq!(
            compute(Some(billing), &obs, now(), GRACE),
            verdict(
                InstanceStatus::Suspended,
                "Suspended: the subscription is unpaid or has ended; data kept."
            )
        );
        assert_eq!(
            compute(Some(known(app, Desired::Stopped)), &obs, now(), GRACE).reason,
            "Stopped; the app's data is kept."
        );
        // While its pods shut down, the reason already says why.
        let stopping = Observed {
            pods: vec![pod("app", json!({ "phase": "Running" }))],
            ..obs.clone()
        };
        assert_eq!(
            compute(Some(billing), &stopping, now(), GRACE).reason,
            "Suspending: the subscription is unpaid or has ended; stopping the app, its data is kept."
        );
        // Billing's flag means nothing while the instance should run.
        let running = Known {
            suspended_by_billing: true,
            ..known(app, Desired::Running)
        };
        assert_eq!(
            compute(Some(running), &ghost_observed(1, 1), now(), GRACE).status,
            InstanceStatus::Ready
        );
    }

    #[test]
    fn a_deleted_instance_keeps_its_data_until_the_retention_runs_out() {
        let catalog = catalog();
        let app = catalog.app("ghost").expect("ghost");
        let until = now() + chrono::TimeDelta::days(7);
        let deleted = Known {
            delete_data_after: Some(until),
            ..known(app, Desired::Deleted)
        };
        let v = compute(Some(deleted), &ghost_observed(1, 1), now(), GRACE);
        assert_eq!(
            v,
            verdict(
                InstanceStatus::Deleting,
                "Removing the app; its data is kept."
            )
        );
        let only_data = Observed {
            namespace: Some(namespace()),
            ..Observed::default()
        };
        let v = compute(Some(deleted), &only_data, now(), GRACE);
        assert_eq!(
            v,
            verdict(
                InstanceStatus::Deleted,
                "Deleted; its data is kept until 2025-06-08 12:00:00 UTC, then removed."
            )
        );
        assert!(!v.purged);
        let later = until + chrono::TimeDelta::seconds(1);
        let v = compute(Some(deleted), &only_data, later, GRACE);
        assert_eq!(v.status, InstanceStatus::Deleted, "never DELETING again");
        assert!(!v.purged);
        let v = compute(Some(deleted), &Observed::default(), later, GRACE);
        assert_eq!(
            (v.status, v.reason.as_str(), v.purged),
            (InstanceStatus::Deleted, "Deleted with its data.", true)
        );
        // Without retention the namespace goes at once.
        let at_once = known(app, Desired::Deleted);
        assert_eq!(
            compute(Some(at_once), &only_data, now(), GRACE).status,
            InstanceStatus::Deleting
        );
    }
}
