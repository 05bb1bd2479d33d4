//! The fence around the provisioner against the real local control plane: as a ServiceAccount
//! with exactly the provisioner's ClusterRole and under `deploy/k3s/admission-policy.yaml`
//! ([`FencedIdentity`]), what the provisioner does is allowed, and what a compromised
//! provisioner would try is refused, by the policy (its name in the answer) or by RBAC: objects
//! outside instance namespaces of its partition, privileged or host-bound pods, pods with a
//! ServiceAccount token, namespaces relabelled to escape Pod Security or to capture someone
//! else's, Secret reads outside its instances, RoleBindings other than its own to
//! `kapal-instance-secrets`. The admin is not affected.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kapal_tests::cluster::{api_status, cluster, unique_name, wait_for};
use kapal_tests::fence::{FencedIdentity, POLICY, refused_by_policy};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Asserts that `result` was refused by the fence's policy with a message containing `hint`.
fn refused<T: std::fmt::Debug>(what: &str, hint: &str, result: Result<T, kube::Error>) {
    match result {
        Ok(v) => panic!("{what}: allowed, expected the policy {POLICY} to refuse it ({v:?})"),
        Err(e) => {
            assert!(
                refused_by_policy(&e),
                "{what}: expected a refusal by the policy {POLICY}, got {e}"
            );
            let message = api_status(&e)
                .map(|s| s.message.clone())
                .unwrap_or_default();
            assert!(
                message.contains(hint),
                "{what}: the refusal does not say {hint:?}: {message}"
            );
        }
    }
}

/// Asserts that `result` was refused by RBAC (403, not by the policy).
fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Ok(v) => panic!("{what}: allowed, expected 403 Forbidden ({v:?})"),
        Err(e) => assert_eq!(
            api_status(&e).map(|s| s.code),
            Some(403),
            "{what}: expected 403 Forbidden, got {e}"
        ),
    }
}

/// A namespace labelled as a Kapal instance of `partition`.
fn instance_namespace(
    name: &str,
    partition: &str,
    pod_security: &str,
) -> anyhow::Result<Namespace> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "kapal",
                "kapal.dev/instance": uuid::Uuid::new_v4().to_string(),
                "kapal.dev/partition": partition,
                "pod-security.kubernetes.io/enforce": pod_security,
                "kapal.dev/test": "true",
            },
        },
    }))?)
}

/// A pod spec like the ones the provisioner renders: no token, nothing of the host's.
fn pod_spec() -> Value {
    json!({
        "automountServiceAccountToken": false,
        "containers": [{
            "name": "app",
            "image": "busybox",
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": { "drop": ["ALL"] },
            },
        }],
    })
}

fn deployment(spec: Value) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": "app" },
        "spec": {
            "selector": { "matchLabels": { "app": "x" } },
            "template": { "metadata": { "labels": { "app": "x" } }, "spec": spec },
        },
    }))?)
}

/// `base` with `patch` merged in (JSON merge patch semantics, arrays replaced).
fn merged(mut base: Value, patch: Value) -> Value {
    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }
    merge(&mut base, patch);
    base
}

/// Deletes namespaces as admin when dropped (best effort, on a thread of its own).
struct DeleteNamespaces(Vec<String>, kube::Config);

impl Drop for DeleteNamespaces {
    fn drop(&mut self) {
        let (names, config) = (self.0.clone(), self.1.clone());
        kapal_tests::cluster::best_effort(config, move |client| async move {
            for name in names {
                let _ = Api::<Namespace>::all(client.clone())
                    .delete(&name, &DeleteParams::background())
                    .await;
            }
            Ok(())
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_provisioner_may_do_its_job_and_nothing_else() -> anyhow::Result<()> {
    let partition = unique_name("fence");
    let fenced = FencedIdentity::new(&partition).await?;
    let sa = fenced.client().await?;
    let admin = cluster().await?.client();
    let dry = PostParams {
        dry_run: true,
        field_manager: Some("kapal-test".into()),
    };
    let apply = PatchParams::apply("kapal-test").force();
    let dry_patch = PatchParams::default().dry_run();

    // Allowed: an instance namespace of its partition (for real: the rest needs it), and in it
    // a workload like the ones the provisioner renders.
    let instance = unique_name("kapal-fence-instance");
    let other_partition = unique_name("kapal-fence-other");
    let _cleanup = DeleteNamespaces(
        vec![instance.clone(), other_partition.clone()],
        fenced.admin_config().clone(),
    );
    let namespaces = Api::<Namespace>::all(sa.clone());
    namespaces
        .patch(
            &instance,
            &apply,
            &Patch::Apply(instance_namespace(&instance, &partition, "baseline")?),
        )
        .await
        .context("creating an instance namespace of its partition as the fenced identity")?;
    let deployments = Api::<Deployment>::namespaced(sa.clone(), &instance);
    deployments
        .create(&dry, &deployment(pod_spec())?)
        .await
        .context("a workload like the provisioner's, as the fenced identity")?;

    // Objects outside instance namespaces of its partition.
    refused(
        "a Deployment in kube-system",
        "namespaces of Kapal instances",
        Api::<Deployment>::namespaced(sa.clone(), "kube-system")
            .create(&dry, &deployment(pod_spec())?)
            .await,
    );
    refused(
        "a Deployment in its own (not an instance) namespace",
        "namespaces of Kapal instances",
        Api::<Deployment>::namespaced(sa.clone(), fenced.namespace().name())
            .create(&dry, &deployment(pod_spec())?)
            .await,
    );
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &instance_namespace(&other_partition, "another-partition", "baseline")?,
        )
        .await?;
    refused(
        "a Deployment in an instance namespace of another partition",
        "namespaces of Kapal instances",
        Api::<Deployment>::namespaced(sa.clone(), &other_partition)
            .create(&dry, &deployment(pod_spec())?)
            .await,
    );

    // What a pod may be.
    let bad_pods: [(&str, &str, Value); 7] = [
        (
            "a privileged container",
            "privileged",
            json!({ "containers": [{ "name": "app", "image": "busybox", "securityContext": { "privileged": true } }] }),
        ),
        (
            "a hostPath volume",
            "hostPath",
            json!({ "volumes": [{ "name": "root", "hostPath": { "path": "/" } }] }),
        ),
        (
            "the host's network",
            "hostNetwork",
            json!({ "hostNetwork": true }),
        ),
        ("the host's PIDs", "hostPID", json!({ "hostPID": true })),
        (
            "an added capability",
            "capabilities",
            json!({ "containers": [{ "name": "app", "image": "busybox", "securityContext": { "capabilities": { "add": ["NET_ADMIN"] } } }] }),
        ),
        (
            "a mounted ServiceAccount token",
            "automountServiceAccountToken",
            json!({ "automountServiceAccountToken": true }),
        ),
        (
            "a projected ServiceAccount token",
            "serviceAccountToken",
            json!({ "volumes": [{ "name": "token", "projected": { "sources": [{ "serviceAccountToken": { "path": "token" } }] } }] }),
        ),
    ];
    for (what, hint, patch) in &bad_pods {
        refused(
            &format!("a Deployment with {what}"),
            hint,
            deployments
                .create(&dry, &deployment(merged(pod_spec(), patch.clone()))?)
                .await,
        );
    }
    let mut no_automount = pod_spec();
    if let Some(spec) = no_automount.as_object_mut() {
        spec.remove("automountServiceAccountToken");
    }
    refused(
        "a Deployment that does not turn the token off",
        "automountServiceAccountToken",
        deployments.create(&dry, &deployment(no_automount)?).await,
    );
    let privileged = merged(pod_spec(), bad_pods[0].2.clone());
    let job: Job = serde_json::from_value(json!({
        "metadata": { "name": "setup" },
        "spec": { "template": { "spec": merged(privileged, json!({ "restartPolicy": "Never" })) } },
    }))?;
    refused(
        "a privileged Job",
        "privileged",
        Api::<Job>::namespaced(sa.clone(), &instance)
            .create(&dry, &job)
            .await,
    );
    let stateful: StatefulSet = serde_json::from_value(json!({
        "metadata": { "name": "db" },
        "spec": {
            "selector": { "matchLabels": { "app": "db" } },
            "template": { "metadata": { "labels": { "app": "db" } }, "spec": merged(pod_spec(), bad_pods[1].2.clone()) },
        },
    }))?;
    refused(
        "a StatefulSet with a hostPath volume",
        "hostPath",
        Api::<StatefulSet>::namespaced(sa.clone(), &instance)
            .create(&dry, &stateful)
            .await,
    );

    // Namespaces: its own may not escape Pod Security; others may not be created, captured or
    // deleted.
    refused(
        "its instance namespace relabelled privileged",
        "Pod Security",
        namespaces
            .patch(
                &instance,
                &dry_patch,
                &Patch::Merge(
                    json!({ "metadata": { "labels": { "pod-security.kubernetes.io/enforce": "privileged" } } }),
                ),
            )
            .await,
    );
    refused(
        "an instance namespace without Pod Security",
        "Pod Security",
        namespaces
            .patch(
                &instance,
                &dry_patch,
                &Patch::Merge(
                    json!({ "metadata": { "labels": { "pod-security.kubernetes.io/enforce": null } } }),
                ),
            )
            .await,
    );
    refused(
        "a namespace without Kapal's labels",
        "namespaces labelled",
        namespaces
            .create(
                &dry,
                &serde_json::from_value(
                    json!({ "metadata": { "name": unique_name("kapal-fence-plain") } }),
                )?,
            )
            .await,
    );
    refused(
        "a namespace of another partition",
        "namespaces labelled",
        namespaces
            .create(
                &dry,
                &instance_namespace(
                    &unique_name("kapal-fence-x"),
                    "another-partition",
                    "baseline",
                )?,
            )
            .await,
    );
    refused(
        "kube-system labelled as an instance of its partition",
        "namespaces labelled",
        namespaces
            .patch(
                "kube-system",
                &dry_patch,
                &Patch::Merge(json!({ "metadata": { "labels": {
                    "app.kubernetes.io/managed-by": "kapal",
                    "kapal.dev/instance": uuid::Uuid::new_v4().to_string(),
                    "kapal.dev/partition": partition,
                    "pod-security.kubernetes.io/enforce": "baseline",
                } } })),
            )
            .await,
    );
    refused(
        "deleting a namespace that is not an instance's",
        "namespaces labelled",
        namespaces
            .delete(
                fenced.namespace().name(),
                &DeleteParams {
                    dry_run: true,
                    ..DeleteParams::default()
                },
            )
            .await,
    );
    refused(
        "deleting another partition's namespace",
        "namespaces labelled",
        namespaces
            .delete(
                &other_partition,
                &DeleteParams {
                    dry_run: true,
                    ..DeleteParams::default()
                },
            )
            .await,
    );

    // Secrets: read nowhere but in the instance namespaces where it bound itself.
    forbidden(
        "reading a Secret in kube-system",
        Api::<Secret>::namespaced(sa.clone(), "kube-system")
            .get_opt("k3s-serving")
            .await,
    );
    let instance_secrets = Api::<Secret>::namespaced(sa.clone(), &instance);
    forbidden(
        "reading a Secret of an instance before binding itself",
        instance_secrets.get_opt("kapal-credentials").await,
    );

    // RoleBindings: only its own to kapal-instance-secrets, in instance namespaces.
    let binding = |subjects: Value, role: &str| -> anyhow::Result<RoleBinding> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": "kapal-provisioner-secrets" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": subjects,
        }))?)
    };
    let me = json!([{
        "kind": "ServiceAccount",
        "name": fenced.service_account(),
        "namespace": fenced.namespace().name(),
    }]);
    let bindings = Api::<RoleBinding>::namespaced(sa.clone(), &instance);
    forbidden(
        "binding the ClusterRole view",
        bindings.create(&dry, &binding(me.clone(), "view")?).await,
    );
    refused(
        "binding kapal-instance-secrets to the instance's default ServiceAccount",
        "kapal-instance-secrets",
        bindings
            .create(
                &dry,
                &binding(
                    json!([{ "kind": "ServiceAccount", "name": "default", "namespace": instance }]),
                    "kapal-instance-secrets",
                )?,
            )
            .await,
    );
    let mut me_and_another = me.clone();
    if let Some(list) = me_and_another.as_array_mut() {
        list.push(
            json!({ "kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io" }),
        );
    }
    refused(
        "binding kapal-instance-secrets to itself and someone else",
        "kapal-instance-secrets",
        bindings
            .create(&dry, &binding(me_and_another, "kapal-instance-secrets")?)
            .await,
    );
    refused(
        "binding kapal-instance-secrets to itself outside instance namespaces",
        "namespaces of Kapal instances",
        Api::<RoleBinding>::namespaced(sa.clone(), fenced.namespace().name())
            .create(&dry, &binding(me.clone(), "kapal-instance-secrets")?)
            .await,
    );
    // Its own binding is allowed, and then the read (the authorizer learns of it shortly).
    bindings
        .patch(
            "kapal-provisioner-secrets",
            &apply,
            &Patch::Apply(binding(me, "kapal-instance-secrets")?),
        )
        .await
        .context("the provisioner's own RoleBinding in an instance namespace")?;
    wait_for(
        "a Secret read in the instance namespace to be allowed",
        Duration::from_secs(30),
        || async {
            match instance_secrets.get_opt("kapal-credentials").await {
                Ok(found) => Ok(Some(found)),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await?;

    // The admin is not fenced.
    Api::<Deployment>::namespaced(admin.clone(), &instance)
        .create(
            &dry,
            &deployment(merged(pod_spec(), bad_pods[0].2.clone()))?,
        )
        .await
        .context("the admin is fenced too")?;
    Ok(())
}
