//! The provisioner's side of the fence around its own powers (`deploy/k3s/admission-policy.yaml`,
//! `instance-secrets-role.yaml`): it may read Secrets only in namespaces where it bound the
//! ClusterRole [`INSTANCE_SECRETS_ROLE`] to itself, which it does in each instance namespace
//! right after creating it. To name itself in that RoleBinding it asks the API server who it is
//! (a SelfSubjectReview) once, at the first convergence.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::error::{Error, Result};
use crate::render;
use crate::spec::Spec;

/// The ClusterRole that lets its subject read Secrets (`deploy/k3s/instance-secrets-role.yaml`).
pub const INSTANCE_SECRETS_ROLE: &str = "kapal-instance-secrets";
/// The RoleBinding of [`INSTANCE_SECRETS_ROLE`] to the provisioner in each instance namespace.
pub const SECRETS_BINDING: &str = "kapal-provisioner-secrets";
/// How long a Secret read refused with 403 right after the RoleBinding was applied is tried
/// again: the RBAC authorizer learns of new bindings through a watch, so it may lag a little.
pub const BINDING_PROPAGATION: Duration = Duration::from_secs(15);

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The RBAC subject of a user as the API server names it: a ServiceAccount for
/// `system:serviceaccount:<namespace>:<name>`, else a User (e.g. an admin's kubeconfig in
/// development).
pub fn subject_of(username: &str) -> Subject {
    if let Some((namespace, name)) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'))
    {
        return Subject {
            kind: "ServiceAccount".to_string(),
            name: name.to_string(),
            namespace: Some(namespace.to_string()),
            api_group: None,
        };
    }
    Subject {
        kind: "User".to_string(),
        name: username.to_string(),
        namespace: None,
        api_group: Some(RBAC_GROUP.to_string()),
    }
}

/// The RoleBinding that lets `me` read the Secrets of `spec`'s namespace, and nothing else
/// (labelled like every object of the instance, `partition` included).
pub fn secrets_role_binding(spec: &Spec, partition: &str, me: &Subject) -> RoleBinding {
    let mut labels: BTreeMap<String, String> = render::instance_labels(spec);
    labels.insert(render::LABEL_PARTITION.to_string(), partition.to_string());
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(SECRETS_BINDING.to_string()),
            namespace: Some(spec.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some(RBAC_GROUP.to_string()),
            kind: "ClusterRole".to_string(),
            name: INSTANCE_SECRETS_ROLE.to_string(),
        },
        subjects: Some(vec![me.clone()]),
    }
}

/// Who the client is, as the API server sees it (its username).
pub async fn whoami(client: &Client) -> Result<String> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Error::Internal("the API server's SelfSubjectReview named no user".to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Desired;

    #[test]
    fn a_service_account_is_named_as_one_and_anyone_else_as_a_user() {
        let sa = subject_of("system:serviceaccount:kapal:kapal-provisioner");
        assert_eq!(sa.kind, "ServiceAccount");
        assert_eq!(sa.namespace.as_deref(), Some("kapal"));
        assert_eq!(sa.name, "kapal-provisioner");
        assert_eq!(sa.api_group, None);
        for user in [
            "admin",
            "system:serviceaccount:kapal",
            "system:serviceaccount::x",
            "system:serviceaccount:a:b:c",
        ] {
            let s = subject_of(user);
            assert_eq!(s.kind, "User", "{user}");
            assert_eq!(s.name, user);
            assert_eq!(s.namespace, None);
            assert_eq!(s.api_group.as_deref(), Some(RBAC_GROUP));
        }
    }

    #[test]
    fn the_binding_grants_the_instance_secrets_role_to_the_provisioner_alone() {
        let spec = Spec {
            instance_id: uuid::Uuid::new_v4(),
            account_id: uuid::Uuid::new_v4(),
            customer_id: "c1".into(),
            app_id: "n8n".into(),
            plan_id: "trial".into(),
            hostname: "c1.n8n.example".into(),
            namespace: "kapal-c1-n8n".into(),
            desired: Desired::Running,
            restart_generation: 0,
            delete_data_after: None,
            suspended_by_billing: false,
        };
        let me = subject_of("system:serviceaccount:kapal:kapal-provisioner");
        let binding = secrets_role_binding(&spec, "p1", &me);
        assert_eq!(binding.metadata.name.as_deref(), Some(SECRETS_BINDING));
        assert_eq!(binding.metadata.namespace.as_deref(), Some("kapal-c1-n8n"));
        let labels = binding.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(render::LABEL_PARTITION).map(String::as_str),
            Some("p1")
        );
        assert_eq!(
            labels.get(render::LABEL_INSTANCE),
            Some(&spec.instance_id.to_string())
        );
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, INSTANCE_SECRETS_ROLE);
        assert_eq!(binding.role_ref.api_group.as_deref(), Some(RBAC_GROUP));
        assert_eq!(binding.subjects, Some(vec![me]));
    }
}
