//! The desired state of one instance, validated at the edge from the wire's `InstanceSpec`.

use chrono::{DateTime, Utc};
use kapal::catalog::Catalog;
use kapal::proto::internal::v1::InstanceSpec;
use kapal::proto::v1::DesiredState;
use kapal::wire::is_dns_label;
use uuid::Uuid;

use crate::error::{Error, Result};

/// What the control-plane wants an instance to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desired {
    Running,
    Stopped,
    Deleted,
}

impl Desired {
    pub fn from_wire(value: i32) -> Option<Desired> {
        match DesiredState::try_from(value).ok()? {
            DesiredState::Running => Some(Desired::Running),
            DesiredState::Stopped => Some(Desired::Stopped),
            DesiredState::Deleted => Some(Desired::Deleted),
            DesiredState::Unspecified => None,
        }
    }

    pub fn to_wire(self) -> DesiredState {
        match self {
            Desired::Running => DesiredState::Running,
            Desired::Stopped => DesiredState::Stopped,
            Desired::Deleted => DesiredState::Deleted,
        }
    }

    /// Replicas of each workload in this state.
    pub fn replicas(self) -> i32 {
        match self {
            Desired::Running => 1,
            Desired::Stopped | Desired::Deleted => 0,
        }
    }
}

/// A validated instance spec: known app and plan, DNS-valid names, UUIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub instance_id: Uuid,
    pub account_id: Uuid,
    pub customer_id: String,
    pub app_id: String,
    pub plan_id: String,
    pub hostname: String,
    pub namespace: String,
    pub desired: Desired,
    pub restart_generation: u64,
    /// With [`Desired::Deleted`]: the workloads go at once, the data (volumes, secrets, the
    /// namespace) once this time has passed; `None`: at once. Whole seconds, rounded up.
    pub delete_data_after: Option<DateTime<Utc>>,
    /// With [`Desired::Stopped`]: stopped because the subscription is unpaid or ended, not by
    /// the customer.
    pub suspended_by_billing: bool,
}

/// `at` rounded up to a whole second (what both databases store exactly).
pub fn whole_seconds_up(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{SubsecRound as _, TimeDelta};
    let truncated = at.trunc_subsecs(0);
    if truncated < at {
        truncated + TimeDelta::seconds(1)
    } else {
        truncated
    }
}

/// Namespaces an instance may never take over.
const RESERVED_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// A lower-case DNS name of at least two labels, at most 253 characters.
pub fn is_hostname(s: &str) -> bool {
    s.len() <= 253 && s.split('.').count() >= 2 && s.split('.').all(|l| is_dns_label(l, 63))
}

impl Spec {
    /// Validates a wire spec against `catalog`; errors say which field is wrong and why.
    pub fn from_wire(wire: &InstanceSpec, catalog: &Catalog) -> Result<Spec> {
        let uuid = |field: &str, value: &str| -> Result<Uuid> {
            kapal::wire::uuid(field, value).map_err(Error::from)
        };
        let instance_id = uuid("spec.instance_id", &wire.instance_id)?;
        let account_id = uuid("spec.account_id", &wire.account_id)?;
        if !is_dns_label(&wire.customer_id, 63) {
            return Err(Error::invalid(format!(
                "spec.customer_id must be 1-63 characters of a-z, 0-9 and '-', got {:?}",
                kapal::wire::truncate(&wire.customer_id, 64)
            )));
        }
        let app = catalog.app(&wire.app_id).ok_or_else(|| {
            Error::invalid(format!(
                "spec.app_id {:?} is not in the catalog",
                kapal::wire::truncate(&wire.app_id, 64)
            ))
        })?;
        if app.plan(&wire.plan_id).is_none() {
            return Err(Error::invalid(format!(
                "spec.plan_id {:?} is not a plan of {} (plans: {})",
                kapal::wire::truncate(&wire.plan_id, 64),
                app.id,
                app.plans
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !is_hostname(&wire.hostname) {
            return Err(Error::invalid(format!(
                "spec.hostname must be a lower-case DNS name such as c1a2b3c4.n8n.kapal.example, got {:?}",
                kapal::wire::truncate(&wire.hostname, 64)
            )));
        }
        if !is_dns_label(&wire.namespace, 63) {
            return Err(Error::invalid(format!(
                "spec.namespace must be 1-63 characters of a-z, 0-9 and '-', got {:?}",
                kapal::wire::truncate(&wire.namespace, 64)
            )));
        }
        if RESERVED_NAMESPACES.contains(&wire.namespace.as_str())
            || wire.namespace.starts_with("kube-")
        {
            return Err(Error::invalid(format!(
                "spec.namespace {:?} is reserved for the cluster itself",
                wire.namespace
            )));
        }
        let desired = Desired::from_wire(wire.desired_state).ok_or_else(|| {
            Error::invalid("spec.desired_state must be RUNNING, STOPPED or DELETED")
        })?;
        if i64::try_from(wire.restart_generation).is_err() {
            return Err(Error::invalid("spec.restart_generation is too large"));
        }
        let delete_data_after = match &wire.delete_data_after {
            None => None,
            Some(t) => {
                let at = kapal::wire::from_timestamp(t)
                    .ok_or_else(|| Error::invalid("spec.delete_data_after is not a valid time"))?;
                Some(whole_seconds_up(at))
            }
        };
        Ok(Spec {
            instance_id,
            account_id,
            customer_id: wire.customer_id.clone(),
            app_id: wire.app_id.clone(),
            plan_id: wire.plan_id.clone(),
            hostname: wire.hostname.clone(),
            namespace: wire.namespace.clone(),
            desired,
            restart_generation: wire.restart_generation,
            delete_data_after,
            suspended_by_billing: wire.suspended_by_billing,
        })
    }

    /// With [`Desired::Deleted`]: the time until which the data is kept, if it is still in the
    /// future at `now`.
    pub fn data_kept_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.delete_data_after
            .filter(|at| self.desired == Desired::Deleted && *at > now)
    }

    /// `https://<hostname>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.hostname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::load(&kapal::catalog::repo_catalog_dir()).expect("catalog")
    }

    fn wire() -> InstanceSpec {
        InstanceSpec {
            instance_id: Uuid::new_v4().to_string(),
            account_id: Uuid::new_v4().to_string(),
            customer_id: "c1a2b3c4".into(),
            app_id: "n8n".into(),
            plan_id: "trial".into(),
            hostname: "c1a2b3c4.n8n.kapal.example".into(),
            namespace: "kapal-c1a2b3c4-n8n".into(),
            desired_state: DesiredState::Running as i32,
            restart_generation: 0,
            delete_data_after: None,
            suspended_by_billing: false,
        }
    }

    #[test]
    fn a_valid_spec_is_accepted() {
        let spec = Spec::from_wire(&wire(), &catalog()).expect("valid");
        assert_eq!(spec.desired, Desired::Running);
        assert_eq!(spec.url(), "https://c1a2b3c4.n8n.kapal.example");
    }

    #[test]
    fn each_invalid_field_is_named() {
        let catalog = catalog();
        type Mutation = Box<dyn Fn(&mut InstanceSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "spec.instance_id",
                Box::new(|w| w.instance_id = "nope".into()),
            ),
            ("spec.account_id", Box::new(|w| w.account_id.clear())),
            (
                "spec.customer_id",
                Box::new(|w| w.customer_id = "Bad_Id".into()),
            ),
            ("spec.app_id", Box::new(|w| w.app_id = "minecraft".into())),
            ("spec.plan_id", Box::new(|w| w.plan_id = "gold".into())),
            (
                "spec.hostname",
                Box::new(|w| w.hostname = "no spaces.example".into()),
            ),
            (
                "spec.hostname",
                Box::new(|w| w.hostname = "localhost".into()),
            ),
            ("spec.namespace", Box::new(|w| w.namespace = "a.b".into())),
            (
                "spec.namespace",
                Box::new(|w| w.namespace = "kube-system".into()),
            ),
            ("spec.desired_state", Box::new(|w| w.desired_state = 0)),
            (
                "spec.restart_generation",
                Box::new(|w| w.restart_generation = u64::MAX),
            ),
        ];
        for (field, mutate) in cases {
            let mut w = wire();
            mutate(&mut w);
            match Spec::from_wire(&w, &catalog) {
                Err(Error::InvalidArgument(msg)) => assert!(msg.contains(field), "{field}: {msg}"),
                other => panic!("{field}: expected INVALID_ARGUMENT, got {other:?}"),
            }
        }
    }
}
