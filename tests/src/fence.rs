//! A fenced provisioner identity for tests: a ServiceAccount with exactly the powers `deploy/k3s`
//! gives the provisioner, and under the same fence.
//!
//! [`FencedIdentity::new`] creates, in a test namespace of its own, the ServiceAccount of
//! `serviceaccount.yaml`, bound to a uniquely named copy of `clusterrole.yaml` (as
//! `clusterrolebinding.yaml` does); applies the cluster-wide objects that must carry their real
//! names, idempotently with server-side apply (tests run in parallel): the ClusterRole
//! `kapal-instance-secrets` and the ValidatingAdmissionPolicy of `admission-policy.yaml`; and
//! puts the policy in force for this ServiceAccount and the test's partition with a binding
//! made from `admission-policy-binding.yaml`, whose parameter is the test namespace, annotated
//! as `namespace.yaml` annotates Kapal's. Its clients authenticate
//! only with a bound token from the TokenRequest API (no admin certificate, no impersonation).
//! The cluster-scoped objects it made are deleted on drop; the namespace goes with its
//! [`TestNamespace`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::pinned_kind;
use kube::{Api, Client, ResourceExt as _};
use serde::Deserialize as _;
use serde_json::json;

use crate::cluster::{TEST_LABEL, TestNamespace, api_status, cluster, unique_name, wait_for};

/// Field manager of the objects applied here.
const FIELD_MANAGER: &str = "kapal-test";
/// Name of the ValidatingAdmissionPolicy in `admission-policy.yaml`.
pub const POLICY: &str = "kapal-provisioner-fence";
/// Annotations of the policy's parameter: whose requests it judges, and its partition.
const USERNAME_ANNOTATION: &str = "kapal.dev/fence-username";
const PARTITION_ANNOTATION: &str = "kapal.dev/fence-partition";
/// How long RBAC and admission changes may take to be in effect (both learn them by watches).
const PROPAGATION: Duration = Duration::from_secs(30);

/// `deploy/k3s` of the repository.
pub fn k3s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
        .join("deploy/k3s")
}

/// The Kubernetes objects of a YAML file (every non-empty document).
pub fn manifests(path: &Path) -> anyhow::Result<Vec<DynamicObject>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("parsing {}", path.display()))?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(serde_json::to_value(value)?)
            .with_context(|| format!("{} is not a Kubernetes object", path.display()))?;
        out.push(obj);
    }
    Ok(out)
}

fn kind_of(obj: &DynamicObject) -> &str {
    obj.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("")
}

/// The one object of `kind` (and `name`, if given) in a file of `deploy/k3s`.
pub fn manifest(file: &str, kind: &str, name: Option<&str>) -> anyhow::Result<DynamicObject> {
    manifests(&k3s_dir().join(file))?
        .into_iter()
        .find(|o| kind_of(o) == kind && name.is_none_or(|n| o.metadata.name.as_deref() == Some(n)))
        .ok_or_else(|| anyhow!("deploy/k3s/{file} has no {kind} {}", name.unwrap_or("")))
}

/// A manifest as a typed object.
pub fn typed<K: serde::de::DeserializeOwned>(obj: &DynamicObject) -> anyhow::Result<K> {
    serde_json::from_value(serde_json::to_value(obj)?)
        .with_context(|| format!("{} {}", kind_of(obj), obj.name_any()))
}

/// How [`apply_manifest`] applies.
#[derive(Clone, Copy, Debug, Default)]
pub struct Apply {
    /// Only ask the API server (validation and admission) to judge it; nothing is stored.
    pub dry_run: bool,
    /// Take fields another manager owns (tests running in parallel apply the same shared
    /// objects).
    pub force: bool,
}

/// Server-side apply of a manifest with strict field validation (an unknown or misspelt field
/// is an error, not a warning), in `namespace` (or the manifest's own) if it is namespaced. An
/// error carries the API server's whole answer.
pub async fn apply_manifest(
    client: &Client,
    obj: &DynamicObject,
    namespace: Option<&str>,
    how: Apply,
) -> anyhow::Result<DynamicObject> {
    let types = obj
        .types
        .clone()
        .ok_or_else(|| anyhow!("no apiVersion/kind"))?;
    let gvk = GroupVersionKind::try_from(&types)?;
    let (resource, caps) = pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the API server does not serve {gvk:?}"))?;
    let mut obj = obj.clone();
    let api: Api<DynamicObject> = match caps.scope {
        kube::discovery::Scope::Namespaced => {
            let ns = namespace
                .map(str::to_string)
                .or_else(|| obj.metadata.namespace.clone())
                .ok_or_else(|| anyhow!("{} needs a namespace", kind_of(&obj)))?;
            obj.metadata.namespace = Some(ns.clone());
            Api::namespaced_with(client.clone(), &ns, &resource)
        }
        kube::discovery::Scope::Cluster => {
            if obj.metadata.namespace.is_some() {
                bail!(
                    "cluster-scoped {} {} has a namespace",
                    kind_of(&obj),
                    obj.name_any()
                );
            }
            Api::all_with(client.clone(), &resource)
        }
    };
    let mut params = PatchParams::apply(FIELD_MANAGER).validation_strict();
    if how.dry_run {
        params = params.dry_run();
    }
    if how.force {
        params = params.force();
    }
    let name = obj.name_any();
    api.patch(&name, &params, &Patch::Apply(&obj))
        .await
        .map_err(crate::cluster::explain)
        .with_context(|| {
            format!(
                "the API server rejects {} {name}{}",
                kind_of(&obj),
                if how.dry_run { " (dry-run)" } else { "" }
            )
        })
}

/// [`apply_manifest`] for real, forced (tests running in parallel apply the same shared objects).
async fn apply_forced(
    client: &Client,
    obj: &DynamicObject,
    namespace: Option<&str>,
) -> anyhow::Result<DynamicObject> {
    let how = Apply {
        dry_run: false,
        force: true,
    };
    apply_manifest(client, obj, namespace, how).await
}

/// Whether the client's user may do `verb` on `resource` (SelfSubjectAccessReview), on the
/// object `name` if given.
pub async fn can(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    subresource: Option<&str>,
    namespace: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: subresource.map(Into::into),
                namespace: namespace.map(Into::into),
                name: name.map(Into::into),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Whether `err` is a refusal by the fence's admission policy (its name is in the message).
pub fn refused_by_policy(err: &kube::Error) -> bool {
    api_status(err).is_some_and(|s| {
        (s.code == 403 || s.code == 422) && s.message.contains(&format!("'{POLICY}'"))
    })
}

/// The provisioner's ServiceAccount, role and fence, for one test (see the module's doc).
pub struct FencedIdentity {
    namespace: TestNamespace,
    partition: String,
    role: ClusterRole,
    role_name: String,
    policy_binding: String,
    service_account: String,
    admin: kube::Config,
}

impl FencedIdentity {
    /// Sets everything up for `partition` and waits until the role and the policy are in
    /// effect for the ServiceAccount.
    pub async fn new(partition: &str) -> anyhow::Result<FencedIdentity> {
        let cluster = cluster().await?;
        let admin = cluster.client();
        delete_stale_bindings(&admin).await;
        let namespace = TestNamespace::new("kapal-fence").await?;
        let role_name = unique_name("kapal-provisioner-test");
        let binding_manifest: ClusterRoleBinding = typed(&manifest(
            "clusterrolebinding.yaml",
            "ClusterRoleBinding",
            None,
        )?)?;
        let service_account = binding_manifest
            .subjects
            .as_ref()
            .and_then(|s| s.first())
            .map(|s| s.name.clone())
            .ok_or_else(|| anyhow!("clusterrolebinding.yaml binds no subject"))?;
        let mut role: ClusterRole = typed(&manifest("clusterrole.yaml", "ClusterRole", None)?)?;
        // From here on, dropping `this` deletes what was created.
        let this = FencedIdentity {
            namespace,
            partition: partition.to_string(),
            role: role.clone(),
            role_name: role_name.clone(),
            policy_binding: role_name.clone(),
            service_account: service_account.clone(),
            admin: cluster.config().clone(),
        };
        let ns = this.namespace.name().to_string();

        // Shared, under their real names: the role the provisioner binds itself to in instance
        // namespaces (its RoleBindings and the policy name it), and the policy.
        apply_forced(
            &admin,
            &manifest("instance-secrets-role.yaml", "ClusterRole", None)?,
            None,
        )
        .await?;
        apply_forced(
            &admin,
            &manifest("admission-policy.yaml", "ValidatingAdmissionPolicy", None)?,
            None,
        )
        .await?;

        // The ServiceAccount and its copy of the ClusterRole.
        apply_forced(
            &admin,
            &manifest(
                "serviceaccount.yaml",
                "ServiceAccount",
                Some(&service_account),
            )?,
            Some(&ns),
        )
        .await?;
        role.metadata.name = Some(role_name.clone());
        role.metadata
            .labels
            .get_or_insert_default()
            .insert(TEST_LABEL.0.into(), TEST_LABEL.1.into());
        Api::<ClusterRole>::all(admin.clone())
            .create(&PostParams::default(), &role)
            .await
            .context("creating the test ClusterRole")?;
        let mut binding = binding_manifest;
        binding.metadata.name = Some(role_name.clone());
        binding
            .metadata
            .labels
            .get_or_insert_default()
            .insert(TEST_LABEL.0.into(), TEST_LABEL.1.into());
        binding.role_ref.name = role_name.clone();
        for subject in binding.subjects.iter_mut().flatten() {
            subject.namespace = Some(ns.clone());
        }
        Api::<ClusterRoleBinding>::all(admin.clone())
            .create(&PostParams::default(), &binding)
            .await
            .context("creating the test ClusterRoleBinding")?;

        // The policy's parameter (annotations of a Namespace: in production Kapal's own, here
        // the test's) and binding, for this ServiceAccount and partition.
        let kapal_ns: Namespace = typed(&manifest("namespace.yaml", "Namespace", None)?)?;
        let mut annotations = kapal_ns.metadata.annotations.unwrap_or_default();
        annotations.retain(|k, _| k.starts_with("kapal.dev/fence-"));
        ensure!(
            annotations.contains_key(USERNAME_ANNOTATION)
                && annotations.contains_key(PARTITION_ANNOTATION),
            "namespace.yaml has no {USERNAME_ANNOTATION} and {PARTITION_ANNOTATION}"
        );
        annotations.insert(USERNAME_ANNOTATION.into(), this.username());
        annotations.insert(PARTITION_ANNOTATION.into(), partition.into());
        Api::<Namespace>::all(admin.clone())
            .patch(
                &ns,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": annotations } })),
            )
            .await
            .context("annotating the test namespace as the policy's parameter")?;
        let mut policy_binding = manifest(
            "admission-policy-binding.yaml",
            "ValidatingAdmissionPolicyBinding",
            None,
        )?;
        policy_binding.metadata.name = Some(this.policy_binding.clone());
        policy_binding
            .metadata
            .labels
            .get_or_insert_default()
            .insert(TEST_LABEL.0.into(), TEST_LABEL.1.into());
        ensure!(
            policy_binding.data["spec"]["paramRef"]["name"] == json!(kapal_ns.metadata.name),
            "admission-policy-binding.yaml does not take its parameter from namespace.yaml"
        );
        policy_binding.data["spec"]["paramRef"]["name"] = json!(ns);
        ensure!(
            policy_binding.data["spec"]["policyName"] == json!(POLICY),
            "admission-policy-binding.yaml binds another policy"
        );
        apply_forced(&admin, &policy_binding, None).await?;

        this.wait_in_effect().await?;
        Ok(this)
    }

    /// The test namespace holding the ServiceAccount and the policy's parameter (not an
    /// instance namespace: the fenced identity may change nothing in it).
    pub fn namespace(&self) -> &TestNamespace {
        &self.namespace
    }

    /// The partition the fence confines it to.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// `deploy/k3s/clusterrole.yaml`'s role, as in effect for the ServiceAccount.
    pub fn role(&self) -> &ClusterRole {
        &self.role
    }

    /// The ServiceAccount's name.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The ServiceAccount's user name, as the API server and the policy see it.
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace.name(),
            self.service_account
        )
    }

    /// The admin kube config (for the test's own setup and assertions).
    pub fn admin_config(&self) -> &kube::Config {
        &self.admin
    }

    /// A kube config for the ServiceAccount: the cluster's URL and CA from the admin
    /// kubeconfig and nothing of its credentials, only a bound token from the TokenRequest API
    /// (valid for an hour).
    pub async fn kube_config(&self) -> anyhow::Result<kube::Config> {
        let sa: Api<ServiceAccount> = self.namespace.api();
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let token = sa
            .create_token_request(&self.service_account, &PostParams::default(), &request)
            .await
            .context("requesting a token for the ServiceAccount")?
            .status
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("the TokenRequest returned no token"))?;
        let mut config = kube::Config::new(self.admin.cluster_url.clone());
        config.root_cert = self.admin.root_cert.clone();
        config.root_cert_file = self.admin.root_cert_file.clone();
        config.tls_server_name = self.admin.tls_server_name.clone();
        config.auth_info = serde_json::from_value(json!({ "token": token }))?;
        ensure!(
            config.auth_info.client_certificate_data.is_none()
                && config.auth_info.client_key_data.is_none()
                && config.auth_info.impersonate.is_none(),
            "only the token"
        );
        Ok(config)
    }

    /// A client of the ServiceAccount, checked to be that ServiceAccount and no admin.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let client = Client::try_from(self.kube_config().await?)?;
        let review = Api::<SelfSubjectReview>::all(client.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .context("SelfSubjectReview")?;
        let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
        ensure!(
            user.username.as_deref() == Some(self.username().as_str()),
            "the token is not the ServiceAccount's: {user:?}"
        );
        ensure!(
            !user
                .groups
                .unwrap_or_default()
                .iter()
                .any(|g| g == "system:masters"),
            "the ServiceAccount is an admin"
        );
        Ok(client)
    }

    /// Lets the ServiceAccount read one Secret outside instance namespaces, the way
    /// `deploy/k3s/optional/wildcard-tls-source.yaml` lets the provisioner read the wildcard
    /// certificate, and waits until it may.
    pub async fn allow_secret_read(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let admin = Client::try_from(self.admin.clone())?;
        let file = k3s_dir().join("optional/wildcard-tls-source.yaml");
        for mut obj in manifests(&file)? {
            match kind_of(&obj) {
                "Role" => obj.data["rules"][0]["resourceNames"] = json!([name]),
                "RoleBinding" => {
                    obj.data["subjects"] = json!([{
                        "kind": "ServiceAccount",
                        "name": self.service_account,
                        "namespace": self.namespace.name(),
                    }]);
                }
                other => bail!("{} holds a {other}", file.display()),
            }
            apply_forced(&admin, &obj, Some(namespace)).await?;
        }
        let client = self.client().await?;
        wait_for(
            &format!("the read of Secret {namespace}/{name} to be allowed"),
            PROPAGATION,
            || async {
                Ok(can(
                    &client,
                    "get",
                    "",
                    "secrets",
                    None,
                    Some(namespace),
                    Some(name),
                )
                .await?
                .then_some(()))
            },
        )
        .await
    }

    /// Until the role is in effect (a permission of it is granted) and so is the policy (an
    /// unlabelled namespace, dry-run, is refused by it).
    async fn wait_in_effect(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        wait_for(
            "the test ClusterRole to be in effect",
            PROPAGATION,
            || async {
                Ok(can(&client, "create", "", "namespaces", None, None, None)
                    .await?
                    .then_some(()))
            },
        )
        .await?;
        let namespaces = Api::<Namespace>::all(client.clone());
        let probe: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": unique_name("kapal-probe") } }))?;
        let dry_run = PostParams {
            dry_run: true,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        wait_for(
            "the admission policy to be in effect",
            PROPAGATION,
            || async {
                match namespaces.create(&dry_run, &probe).await {
                    Ok(_) => Ok(None),
                    Err(e) if refused_by_policy(&e) => Ok(Some(())),
                    Err(e) => Err(e.into()),
                }
            },
        )
        .await
    }
}

/// Policy bindings of earlier test runs that were killed before their drop (their parameter, a
/// test namespace, is gone, so they match nothing; but every request would still look them up).
async fn delete_stale_bindings(admin: &Client) {
    use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
    let bindings = Api::<ValidatingAdmissionPolicyBinding>::all(admin.clone());
    let namespaces = Api::<Namespace>::all(admin.clone());
    let lp = kube::api::ListParams::default().labels(&format!("{}={}", TEST_LABEL.0, TEST_LABEL.1));
    let Ok(list) = bindings.list(&lp).await else {
        return;
    };
    for binding in list.items {
        let param = binding.spec.param_ref.as_ref().and_then(|p| p.name.clone());
        let Some(param) = param else { continue };
        if matches!(namespaces.get_opt(&param).await, Ok(None)) {
            let _ = bindings
                .delete(&binding.name_any(), &DeleteParams::default())
                .await;
        }
    }
}

impl Drop for FencedIdentity {
    fn drop(&mut self) {
        let (role, policy_binding, config) = (
            self.role_name.clone(),
            self.policy_binding.clone(),
            self.admin.clone(),
        );
        // The test's runtime may be shutting down: delete on a thread and runtime of its own,
        // best effort (stale ones would match nothing: their parameter goes with the namespace).
        crate::cluster::best_effort(config, move |client| async move {
            use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
            let dp = DeleteParams::default();
            let _ = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
                .delete(&policy_binding, &dp)
                .await;
            let _ = Api::<ClusterRoleBinding>::all(client.clone())
                .delete(&role, &dp)
                .await;
            let _ = Api::<ClusterRole>::all(client).delete(&role, &dp).await;
            Ok(())
        });
    }
}
