//! The cluster's capacity (GetCapacity), computed by pure functions from the Node list and the
//! list of unfinished pods: what every node can hold and what the pods bound to it request.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kapal::proto::v1::{Capacity, NodeCapacity, ResourceAmounts};

use crate::quantity;
use crate::render::{LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, NODE_FAILURE_TAINTS};

fn add(a: &mut ResourceAmounts, b: &ResourceAmounts) {
    a.cpu_millis = a.cpu_millis.saturating_add(b.cpu_millis);
    a.memory_bytes = a.memory_bytes.saturating_add(b.memory_bytes);
    a.pods = a.pods.saturating_add(b.pods);
}

fn max(a: &ResourceAmounts, b: &ResourceAmounts) -> ResourceAmounts {
    ResourceAmounts {
        cpu_millis: a.cpu_millis.max(b.cpu_millis),
        memory_bytes: a.memory_bytes.max(b.memory_bytes),
        pods: a.pods.max(b.pods),
    }
}

/// CPU and memory of a resource list (`requests`, `allocatable`, `overhead`); unparseable or
/// missing entries count as 0.
fn amounts(list: Option<&BTreeMap<String, Quantity>>) -> ResourceAmounts {
    let get = |key: &str, parse: fn(&Quantity) -> Option<i64>| {
        list.and_then(|l| l.get(key)).and_then(parse).unwrap_or(0)
    };
    ResourceAmounts {
        cpu_millis: get("cpu", quantity::milli_value),
        memory_bytes: get("memory", quantity::value),
        pods: get("pods", quantity::value),
    }
}

fn container_requests(c: &Container) -> ResourceAmounts {
    amounts(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
}

/// What a pod requests, the way the scheduler counts it: the sum of its containers (and of its
/// sidecars, init containers that keep running), or an init container's request plus the
/// sidecars started before it when that is larger, plus the pod's overhead; and one pod.
pub fn pod_requests(pod: &Pod) -> ResourceAmounts {
    let Some(spec) = pod.spec.as_ref() else {
        return ResourceAmounts {
            pods: 1,
            ..ResourceAmounts::default()
        };
    };
    let mut total = ResourceAmounts::default();
    for c in &spec.containers {
        add(&mut total, &container_requests(c));
    }
    let mut sidecars = ResourceAmounts::default();
    let mut init_peak = ResourceAmounts::default();
    for c in spec.init_containers.iter().flatten() {
        let requests = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            add(&mut sidecars, &requests);
            init_peak = max(&init_peak, &sidecars);
        } else {
            let mut during = sidecars;
            add(&mut during, &requests);
            init_peak = max(&init_peak, &during);
        }
    }
    add(&mut total, &sidecars);
    let mut requests = max(&total, &init_peak);
    add(&mut requests, &amounts(spec.overhead.as_ref()));
    requests.pods = 1;
    requests
}

/// The node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready, not cordoned, and without a not-ready/unreachable taint that keeps new pods away.
pub fn is_schedulable(node: &Node) -> bool {
    let spec = node.spec.as_ref();
    let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
    let failing = spec.and_then(|s| s.taints.as_ref()).is_some_and(|taints| {
        taints.iter().any(|t| {
            NODE_FAILURE_TAINTS.contains(&t.key.as_str())
                && matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
        })
    });
    is_ready(node) && !cordoned && !failing
}

/// A pod of one of Kapal's instances.
pub fn is_kapal_pod(pod: &Pod) -> bool {
    pod.metadata.labels.as_ref().is_some_and(|l| {
        l.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
            && l.contains_key(LABEL_INSTANCE)
    })
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Every node with its allocatable and requested resources, and the totals over the schedulable
/// nodes. `committed` and `ceiling_percent` are left for the control-plane; `observed_at` for
/// the caller. Pods that are finished or not bound to a node are not counted.
pub fn compute(nodes: &[Node], pods: &[Pod]) -> Capacity {
    let mut requested: BTreeMap<&str, (ResourceAmounts, ResourceAmounts)> = BTreeMap::new();
    for pod in pods.iter().filter(|p| !is_finished(p)) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let r = pod_requests(pod);
        let entry = requested.entry(node).or_default();
        add(&mut entry.0, &r);
        if is_kapal_pod(pod) {
            add(&mut entry.1, &r);
        }
    }
    let mut capacity = Capacity::default();
    let (mut allocatable, mut requested_total, mut by_kapal) = Default::default();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let node_allocatable = amounts(node.status.as_ref().and_then(|s| s.allocatable.as_ref()));
        let (node_requested, node_kapal) =
            requested.get(name.as_str()).cloned().unwrap_or_default();
        let schedulable = is_schedulable(node);
        if schedulable {
            add(&mut allocatable, &node_allocatable);
            add(&mut requested_total, &node_requested);
            add(&mut by_kapal, &node_kapal);
        }
        capacity.nodes.push(NodeCapacity {
            name,
            ready: is_ready(node),
            schedulable,
            allocatable: Some(node_allocatable),
            requested: Some(node_requested),
        });
    }
    capacity.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    capacity.allocatable = Some(allocatable);
    capacity.requested = Some(requested_total);
    capacity.requested_by_kapal = Some(by_kapal);
    capacity
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("object")
    }

    fn node(name: &str, ready: bool, extra_spec: serde_json::Value) -> Node {
        from(json!({
            "metadata": { "name": name },
            "spec": extra_spec,
            "status": {
                "allocatable": { "cpu": "2", "memory": "4Gi", "pods": "110" },
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "Unknown" } }],
            },
        }))
    }

    fn pod(node: Option<&str>, phase: &str, kapal: bool, spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        let labels = if kapal {
            json!({ LABEL_MANAGED_BY: MANAGED_BY, LABEL_INSTANCE: "6f1c0c0e-0000-4000-8000-000000000001" })
        } else {
            json!({ "app": "other" })
        };
        from(json!({
            "metadata": { "name": "p", "labels": labels },
            "spec": spec,
            "status": { "phase": phase },
        }))
    }

    fn containers(requests: &[(&str, &str)]) -> serde_json::Value {
        json!({ "containers": requests.iter().map(|(cpu, mem)| json!({
            "name": "c", "resources": { "requests": { "cpu": cpu, "memory": mem } },
        })).collect::<Vec<_>>() })
    }

    fn amounts_of(cpu: i64, mem: i64, pods: i64) -> Option<ResourceAmounts> {
        Some(ResourceAmounts {
            cpu_millis: cpu,
            memory_bytes: mem,
            pods,
        })
    }

    #[test]
    fn init_containers_count_like_the_scheduler_counts_them() {
        let p = pod(
            Some("a"),
            "Running",
            false,
            json!({
                "containers": [
                    { "name": "a", "resources": { "requests": { "cpu": "100m", "memory": "64Mi" } } },
                    { "name": "b", "resources": { "requests": { "cpu": "200m" } } },
                ],
                "initContainers": [
                    { "name": "migrate", "resources": { "requests": { "cpu": "500m", "memory": "32Mi" } } },
                ],
                "overhead": { "cpu": "10m" },
            }),
        );
        // max(300m, 500m) + 10m overhead; max(64Mi, 32Mi).
        assert_eq!(Some(pod_requests(&p)), amounts_of(510, 64 << 20, 1));

        let sidecar = pod(
            Some("a"),
            "Running",
            false,
            json!({
                "containers": [{ "name": "a", "resources": { "requests": { "cpu": "100m" } } }],
                "initContainers": [
                    { "name": "proxy", "restartPolicy": "Always", "resources": { "requests": { "cpu": "50m" } } },
                    { "name": "setup", "resources": { "requests": { "cpu": "120m" } } },
                ],
            }),
        );
        // The sidecar runs next to the app (150m), and next to setup (170m).
        assert_eq!(pod_requests(&sidecar).cpu_millis, 170);
    }

    #[test]
    fn capacity_sums_schedulable_nodes_and_unfinished_bound_pods() {
        let nodes = vec![
            node("b", true, json!({})),
            node("a", true, json!({})),
            node("cordoned", true, json!({ "unschedulable": true })),
            node("down", false, json!({})),
            node(
                "tainted",
                true,
                json!({ "taints": [{ "key": "node.kubernetes.io/unreachable", "effect": "NoExecute" }] }),
            ),
        ];
        let pods = vec![
            pod(Some("a"), "Running", true, containers(&[("250m", "256Mi")])),
            pod(Some("a"), "Pending", false, containers(&[("0.1", "100M")])),
            pod(Some("b"), "Running", false, containers(&[("1", "1Gi")])),
            pod(Some("b"), "Succeeded", true, containers(&[("1", "1Gi")])),
            pod(Some("b"), "Failed", false, containers(&[("1", "1Gi")])),
            pod(None, "Pending", true, containers(&[("1", "1Gi")])),
            pod(
                Some("cordoned"),
                "Running",
                true,
                containers(&[("1", "1Gi")]),
            ),
        ];
        let c = compute(&nodes, &pods);
        let names: Vec<_> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "cordoned", "down", "tainted"]);
        let flags: Vec<_> = c.nodes.iter().map(|n| (n.ready, n.schedulable)).collect();
        assert_eq!(
            flags,
            [
                (true, true),
                (true, true),
                (true, false),
                (false, false),
                (true, false)
            ]
        );
        assert_eq!(c.nodes[0].allocatable, amounts_of(2000, 4 << 30, 110));
        assert_eq!(
            c.nodes[0].requested,
            amounts_of(350, (256 << 20) + 100_000_000, 2)
        );
        assert_eq!(c.nodes[2].requested, amounts_of(1000, 1 << 30, 1));
        assert_eq!(c.allocatable, amounts_of(4000, 8 << 30, 220));
        assert_eq!(
            c.requested,
            amounts_of(1350, (256 << 20) + 100_000_000 + (1 << 30), 3)
        );
        assert_eq!(c.requested_by_kapal, amounts_of(250, 256 << 20, 1));
        assert_eq!(c.committed, None);
        assert_eq!(c.ceiling_percent, 0);
    }
}
