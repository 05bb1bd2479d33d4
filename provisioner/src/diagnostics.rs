//! GetDiagnostics: what Kubernetes says about one instance, as structured data: the events of
//! its namespace (one namespace per instance), its pods with their containers' states, its
//! volume claims, and the tail of each container's log.
//!
//! The conversions are pure functions of the Kubernetes objects (unit-tested below); only
//! [`read`] talks to the cluster.

use k8s_openapi::api::core::v1::{ContainerStatus, Event, PersistentVolumeClaim, Pod};
use kapal::proto::v1::{
    ContainerDiagnostics, InstanceDiagnostics, KubernetesEvent, PodCondition, PodDiagnostics,
    VolumeDiagnostics,
};
use kube::Api;
use kube::api::{ListParams, LogParams};

use crate::error::Result;

/// At most this many events are returned (the newest).
const MAX_EVENTS: usize = 200;
/// A log line longer than this is cut.
const MAX_LINE_CHARS: usize = 2000;

fn ts(t: &k8s_openapi::jiff::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// One core/v1 Event.
pub fn event(e: &Event) -> KubernetesEvent {
    let last = e
        .last_timestamp
        .as_ref()
        .map(|t| ts(&t.0))
        .or_else(|| e.event_time.as_ref().map(|t| ts(&t.0)));
    let first = e.first_timestamp.as_ref().map(|t| ts(&t.0)).or(last);
    let o = &e.involved_object;
    KubernetesEvent {
        r#type: e.type_.clone().unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        message: e.message.clone().unwrap_or_default(),
        object: format!(
            "{}/{}",
            o.kind.as_deref().unwrap_or(""),
            o.name.as_deref().unwrap_or("")
        ),
        count: e
            .count
            .and_then(|c| u32::try_from(c).ok())
            .or_else(|| e.series.as_ref()?.count.and_then(|c| u32::try_from(c).ok()))
            .unwrap_or(1),
        first_seen: first,
        last_seen: last,
        source: e
            .source
            .as_ref()
            .and_then(|s| s.component.clone())
            .or_else(|| e.reporting_component.clone())
            .unwrap_or_default(),
    }
}

/// The events of a namespace, oldest first, at most the newest [`MAX_EVENTS`].
pub fn events(items: &[Event]) -> Vec<KubernetesEvent> {
    let mut out: Vec<KubernetesEvent> = items.iter().map(event).collect();
    let key = |e: &KubernetesEvent| e.last_seen.map(|t| (t.seconds, t.nanos));
    out.sort_by_key(key);
    if out.len() > MAX_EVENTS {
        out.drain(..out.len() - MAX_EVENTS);
    }
    out
}

fn container(
    s: Option<&ContainerStatus>,
    name: &str,
    image: &str,
    init: bool,
) -> ContainerDiagnostics {
    let mut c = ContainerDiagnostics {
        name: name.to_string(),
        image: image.to_string(),
        init,
        ..Default::default()
    };
    let Some(s) = s else {
        return c;
    };
    c.ready = s.ready;
    c.restart_count = u32::try_from(s.restart_count).unwrap_or(0);
    if let Some(state) = &s.state {
        if let Some(w) = &state.waiting {
            c.state = "waiting".into();
            c.state_reason = w.reason.clone().unwrap_or_default();
            c.state_message = w.message.clone().unwrap_or_default();
        } else if let Some(r) = &state.running {
            c.state = "running".into();
            let _ = r;
        } else if let Some(t) = &state.terminated {
            c.state = "terminated".into();
            c.state_reason = t.reason.clone().unwrap_or_default();
            c.state_message = t.message.clone().unwrap_or_default();
        }
    }
    if let Some(t) = s.last_state.as_ref().and_then(|l| l.terminated.as_ref()) {
        c.last_termination_reason = t.reason.clone().unwrap_or_default();
        c.last_exit_code = t.exit_code;
        c.last_terminated_at = t.finished_at.as_ref().map(|f| ts(&f.0));
    }
    c
}

/// One pod with its conditions and containers (init containers first); logs are added by
/// [`read`].
pub fn pod(p: &Pod) -> PodDiagnostics {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    fn status_of<'a>(
        list: Option<&'a Vec<ContainerStatus>>,
        name: &str,
    ) -> Option<&'a ContainerStatus> {
        list.and_then(|l| l.iter().find(|s| s.name == name))
    }
    let mut containers = Vec::new();
    for (init, list, statuses) in [
        (
            true,
            spec.and_then(|s| s.init_containers.as_ref()),
            status.and_then(|s| s.init_container_statuses.as_ref()),
        ),
        (
            false,
            spec.map(|s| &s.containers),
            status.and_then(|s| s.container_statuses.as_ref()),
        ),
    ] {
        for c in list.into_iter().flatten() {
            containers.push(container(
                status_of(statuses, &c.name),
                &c.name,
                c.image.as_deref().unwrap_or(""),
                init,
            ));
        }
    }
    PodDiagnostics {
        name: p.metadata.name.clone().unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        conditions: status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| PodCondition {
                r#type: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
            })
            .collect(),
        containers,
        created_at: p.metadata.creation_timestamp.as_ref().map(|t| ts(&t.0)),
    }
}

/// One volume claim.
pub fn volume(v: &PersistentVolumeClaim) -> VolumeDiagnostics {
    let bytes = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.and_then(crate::quantity::value).unwrap_or(0)
    };
    let spec = v.spec.as_ref();
    let status = v.status.as_ref();
    VolumeDiagnostics {
        claim: v.metadata.name.clone().unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        volume: spec.and_then(|s| s.volume_name.clone()).unwrap_or_default(),
        storage_class: spec
            .and_then(|s| s.storage_class_name.clone())
            .unwrap_or_default(),
        requested_bytes: bytes(
            spec.and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage")),
        ),
        capacity_bytes: bytes(
            status
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage")),
        ),
    }
}

/// Why a container has no log to show, when that is known without asking (it never started).
fn no_log_yet(c: &ContainerDiagnostics) -> Option<&'static str> {
    let started = c.state == "running" || c.state == "terminated" || c.restart_count > 0;
    (!started).then_some("the container has not started yet, so it has no log")
}

/// The last `lines` lines of `log`, each cut to [`MAX_LINE_CHARS`].
pub fn tail(log: &str, lines: usize) -> Vec<String> {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| kapal::wire::truncate(l, MAX_LINE_CHARS).to_string())
        .collect()
}

/// Reads the diagnostics of the instance in `namespace` (labelled `selector`) from the cluster.
pub async fn read(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    log_lines: usize,
) -> Result<InstanceDiagnostics> {
    let lp = ListParams::default().labels(selector);
    let everything = ListParams::default();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let events_api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let volumes_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let (pods, events_list, volumes) = tokio::try_join!(
        pods_api.list(&lp),
        events_api.list(&everything),
        volumes_api.list(&lp)
    )?;
    let mut out = InstanceDiagnostics {
        namespace: namespace.to_string(),
        events: events(&events_list.items),
        volumes: volumes.items.iter().map(volume).collect(),
        ..Default::default()
    };
    for p in &pods.items {
        let mut d = pod(p);
        for c in &mut d.containers {
            if let Some(note) = no_log_yet(c) {
                c.log_note = note.into();
                continue;
            }
            let params = LogParams {
                container: Some(c.name.clone()),
                tail_lines: Some(i64::try_from(log_lines).unwrap_or(50)),
                ..LogParams::default()
            };
            match pods_api.logs(&d.name, &params).await {
                Ok(log) => c.log_tail = tail(&log, log_lines),
                Err(e) => {
                    tracing::info!(namespace, pod = %d.name, container = %c.name, error = %crate::error::chain(&e), "container log unavailable");
                    c.log_note = match &e {
                        kube::Error::Api(s) => format!(
                            "the cluster did not return the container's log ({} {})",
                            s.code, s.reason
                        ),
                        _ => "the cluster did not return the container's log".into(),
                    };
                }
            }
        }
        out.pods.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpulled_image_says_why() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n8n-0"},
            "spec": {"nodeName": "kwok-1", "containers": [{"name": "n8n", "image": "n8nio/n8n:nope"}]},
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{
                    "name": "n8n", "image": "n8nio/n8n:nope", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}},
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-12-07T10:00:00Z"}}
                }]
            }
        }))
        .expect("pod");
        let d = pod(&p);
        assert_eq!((d.phase.as_str(), d.node.as_str()), ("Pending", "kwok-1"));
        let c = &d.containers[0];
        assert_eq!(c.state, "waiting");
        assert_eq!(c.state_reason, "ImagePullBackOff");
        assert_eq!(
            (c.last_termination_reason.as_str(), c.last_exit_code),
            ("OOMKilled", 137)
        );
        assert!(c.last_terminated_at.is_some());
        assert!(no_log_yet(c).is_some());
    }

    #[test]
    fn events_are_oldest_first_with_their_object() {
        let e = |reason: &str, at: &str| -> Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": reason},
                "involvedObject": {"kind": "Pod", "name": "n8n-0"},
                "type": "Warning", "reason": reason, "message": "m", "count": 3,
                "lastTimestamp": at, "source": {"component": "default-scheduler"}
            }))
            .expect("event")
        };
        let out = events(&[
            e("B", "2026-12-07T10:00:02Z"),
            e("A", "2026-12-07T10:00:01Z"),
        ]);
        assert_eq!(out[0].reason, "A");
        assert_eq!(out[1].object, "Pod/n8n-0");
        assert_eq!(
            (out[1].count, out[1].source.as_str()),
            (3, "default-scheduler")
        );
    }

    #[test]
    fn tails_are_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), vec!["b", "c"]);
        assert_eq!(tail("a", 5), vec!["a"]);
        assert!(tail("", 5).is_empty());
    }
}
