//! The level-triggered controller: it records desired specs, converges the cluster towards them
//! (on request, at start-up, every resync interval, and again after a failure with backoff),
//! computes each instance's status from the cluster, and reports changes to the control-plane.
//!
//! Desired state lives in the control-plane; the provisioner keeps its own copy so that it
//! resumes after a restart even while the control-plane is unreachable.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use kapal::catalog::{App, Catalog, Plan};
use kapal::clock::SharedClock;
use kapal::proto::internal::v1::instance_state_service_client::InstanceStateServiceClient;
use kapal::proto::internal::v1::{InstanceSpec, InstanceState, ListDesiredInstancesRequest};
use kapal::proto::v1::{Capacity, Credentials, InstanceStatus, InstanceUsage};
use kapal::serve::InternalChannel;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::cluster::{Cluster, Owner};
use crate::error::{Error, Result, chain};
use crate::render::{
    LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, PASSWORD_KEY, Settings, USERNAME_KEY,
};
use crate::spec::{Desired, Spec};
use crate::status::{self, Known, Verdict};
use crate::store::{Store, Stored, Upsert};

/// Status changes arriving within this window are evaluated once.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// First retry of a failed convergence; doubles up to the resync interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Retry of a failed report to the control-plane.
const REPORT_RETRY: Duration = Duration::from_secs(2);
/// How long after a due time (kept data to remove) the instance is converged again.
const WAKE_MARGIN: Duration = Duration::from_millis(100);

pub struct Controller {
    store: Store,
    catalog: Arc<Catalog>,
    cluster: Cluster,
    settings: Settings,
    clock: SharedClock,
    unschedulable_grace: Duration,
    resync_interval: Duration,
    control_plane: Option<InstanceStateServiceClient<InternalChannel>>,
    sweep: Sweep,
    /// One lock per instance: convergence and spec changes of one instance never interleave.
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// Instances whose status may have changed.
    status_tx: mpsc::UnboundedSender<Uuid>,
    /// Instances to converge now.
    converge_tx: mpsc::UnboundedSender<Uuid>,
}

/// The receiving ends of the controller's queues, for [`Controller::spawn`].
pub struct Queues {
    status_rx: mpsc::UnboundedReceiver<Uuid>,
    converge_rx: mpsc::UnboundedReceiver<Uuid>,
}

pub struct Parts {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub cluster: Cluster,
    pub settings: Settings,
    pub clock: SharedClock,
    pub unschedulable_grace: Duration,
    pub resync_interval: Duration,
    pub control_plane: Option<InstanceStateServiceClient<InternalChannel>>,
    pub sweep: Sweep,
}

/// The orphan sweep: namespaces of this partition whose instance neither the control-plane nor
/// the provisioner's own store wants any more are marked, and deleted once they have stayed
/// orphaned for `safety_delay`.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// Only namespaces carrying this [`crate::render::LABEL_PARTITION`] are looked at.
    pub partition: String,
    /// How often.
    pub interval: Duration,
    /// How long a namespace stays orphaned before it is deleted.
    pub safety_delay: Duration,
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Namespaces newly marked orphaned.
    pub marked: Vec<String>,
    /// Namespaces deleted.
    pub deleted: Vec<String>,
    /// Namespaces whose instance came back (mark removed).
    pub unmarked: Vec<String>,
}

impl Controller {
    pub fn new(parts: Parts) -> (Arc<Controller>, Queues) {
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        let (converge_tx, converge_rx) = mpsc::unbounded_channel();
        let controller = Controller {
            store: parts.store,
            catalog: parts.catalog,
            cluster: parts.cluster,
            settings: parts.settings,
            clock: parts.clock,
            unschedulable_grace: parts.unschedulable_grace,
            resync_interval: parts.resync_interval,
            control_plane: parts.control_plane,
            sweep: parts.sweep,
            locks: Mutex::new(HashMap::new()),
            status_tx,
            converge_tx,
        };
        (
            Arc::new(controller),
            Queues {
                status_rx,
                converge_rx,
            },
        )
    }

    /// Starts the reconcile loop, the status reporter and the watchers.
    pub fn spawn(self: &Arc<Self>, queues: Queues) -> Vec<tokio::task::JoinHandle<()>> {
        use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
        use k8s_openapi::api::core::v1::{Pod, Service};
        let client = self.cluster.client().clone();
        let queues_of = |repair: bool| WatchQueues {
            status: self.status_tx.clone(),
            converge: repair.then(|| self.converge_tx.clone()),
        };
        vec![
            tokio::spawn(self.clone().reconcile_loop(queues.converge_rx)),
            tokio::spawn(self.clone().sweep_loop()),
            tokio::spawn(self.clone().status_loop(queues.status_rx)),
            tokio::spawn(watch(
                Api::<Deployment>::all(client.clone()),
                "deployments",
                queues_of(true),
                spec_generation,
            )),
            tokio::spawn(watch(
                Api::<StatefulSet>::all(client.clone()),
                "statefulsets",
                queues_of(true),
                spec_generation,
            )),
            tokio::spawn(watch(
                Api::<Service>::all(client.clone()),
                "services",
                queues_of(true),
                resource_version,
            )),
            tokio::spawn(watch(
                Api::<Pod>::all(client.clone()),
                "pods",
                queues_of(false),
                resource_version,
            )),
            // The setup job's completion gates the first READY (its pod's last change may come
            // before the Job controller marks the Job complete).
            tokio::spawn(watch(
                Api::<k8s_openapi::api::batch::v1::Job>::all(client),
                "jobs",
                queues_of(false),
                resource_version,
            )),
        ]
    }

    async fn lock(&self, id: Uuid) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(id).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn app_and_plan(&self, spec: &Spec) -> Result<(&App, &Plan)> {
        let app = self.catalog.app(&spec.app_id).ok_or_else(|| {
            Error::Internal(format!(
                "instance {} runs {}, which is no longer in the catalog",
                spec.instance_id, spec.app_id
            ))
        })?;
        let plan = app.plan(&spec.plan_id).ok_or_else(|| {
            Error::Internal(format!(
                "instance {} has plan {}, which {} no longer has",
                spec.instance_id, spec.plan_id, app.id
            ))
        })?;
        Ok((app, plan))
    }

    fn state(&self, id: Uuid, verdict: Verdict, sequence: i64) -> InstanceState {
        InstanceState {
            instance_id: id.to_string(),
            status: verdict.status as i32,
            reason: verdict.reason,
            observed_at: Some(kapal::wire::timestamp(self.clock.now().naive_utc())),
            sequence: u64::try_from(sequence).unwrap_or(0),
        }
    }

    /// ApplyInstance: validates and records `wire`, converges the cluster, reports the status
    /// to the control-plane if it changed (the one road statuses take), and answers the status
    /// computed afterwards (an acknowledgement: the control-plane does not record it).
    pub async fn apply(&self, wire: &InstanceSpec) -> Result<InstanceState> {
        let spec = Spec::from_wire(wire, &self.catalog)?;
        let id = spec.instance_id;
        {
            let _guard = self.lock(id).await;
            if spec.desired != Desired::Deleted
                && self.cluster.owner(&spec).await? == Owner::Foreign
            {
                return Err(Error::FailedPrecondition(format!(
                    "namespace {} already exists and does not belong to instance {id}",
                    spec.namespace
                )));
            }
            let upsert = self
                .store
                .upsert(&spec, self.clock.now().naive_utc(), None)
                .await?;
            tracing::info!(instance = %id, namespace = %spec.namespace, desired = ?spec.desired, ?upsert, "instance applied");
            let (app, plan) = self.app_and_plan(&spec)?;
            let converged = self
                .cluster
                .converge(&spec, app, plan, &self.settings, self.clock.now())
                .await;
            match converged {
                Ok(None) => {}
                // The reconcile loop converges it again and wakes up when it is due.
                Ok(Some(_)) => {
                    let _ = self.converge_tx.send(id);
                }
                Err(e) => {
                    // Recorded: the reconcile loop retries it.
                    let _ = self.converge_tx.send(id);
                    return Err(e);
                }
            }
        }
        match self.report(id).await {
            Ok(Some(state)) => Ok(state),
            // Deleted from the table meanwhile.
            Ok(None) => Ok(self.state(id, self.evaluate(id).await?.0, 0)),
            Err(e) => {
                // Applied all the same: the status loop reports it again.
                tracing::warn!(instance = %id, error = %chain(&e), "reporting the applied instance's status failed; reporting again later");
                let _ = self.status_tx.send(id);
                Ok(self.state(id, self.evaluate(id).await?.0, 0))
            }
        }
    }

    /// GetInstanceState: the status as computed from the cluster now.
    pub async fn instance_state(&self, instance_id: &str) -> Result<InstanceState> {
        let id = kapal::wire::uuid("instance_id", instance_id)?;
        let verdict = self.evaluate(id).await?.0;
        Ok(self.state(id, verdict, 0))
    }

    /// GetCredentials: the instance's generated login, from its Secret.
    pub async fn credentials(&self, instance_id: &str) -> Result<Credentials> {
        let id = kapal::wire::uuid("instance_id", instance_id)?;
        let not_found = || {
            Error::NotFound(format!(
                "instance {id} has no credentials (it has not been provisioned)"
            ))
        };
        let stored = self.store.get(id).await?.ok_or_else(not_found)?;
        if stored.spec.desired == Desired::Deleted {
            return Err(not_found());
        }
        let (app, _) = self.app_and_plan(&stored.spec)?;
        let data = self
            .cluster
            .credentials(&stored.spec)
            .await?
            .ok_or_else(not_found)?;
        let value = |key: &str| {
            data.get(key).cloned().ok_or_else(|| {
                Error::Internal(format!("the credentials of instance {id} have no {key}"))
            })
        };
        Ok(Credentials {
            username: value(USERNAME_KEY)?,
            password: value(PASSWORD_KEY)?,
            login_url: format!("{}{}", stored.spec.url(), app.credentials.login_path),
        })
    }

    /// GetCapacity: the nodes and the requests of the pods on them, read now.
    pub async fn capacity(&self) -> Result<Capacity> {
        let mut capacity = self.cluster.capacity().await?;
        capacity.observed_at = Some(kapal::wire::timestamp(self.clock.now().naive_utc()));
        Ok(capacity)
    }

    /// GetUsage: the instance's CPU and memory from the metrics API (when the cluster has
    /// one), its plan's limits and the capacity of its bound volumes.
    ///
    /// `storage_used_bytes` stays unset: how full a volume is is only known to the kubelet
    /// (its stats summary, through the nodes/proxy subresource), which the provisioner is not
    /// allowed to read.
    pub async fn usage(&self, instance_id: &str) -> Result<InstanceUsage> {
        let id = kapal::wire::uuid("instance_id", instance_id)?;
        let stored = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("instance {id} is not known here")))?;
        let (_, plan) = self.app_and_plan(&stored.spec)?;
        let usage = self.cluster.usage(&stored.spec).await?;
        let (metrics_available, metrics_note, cpu_millis, memory_bytes) = match usage.metrics {
            None => (
                false,
                "The cluster has no metrics API (metrics.k8s.io), so CPU and memory use are not measured.".to_string(),
                None,
                None,
            ),
            Some((cpu, memory)) => (
                true,
                if usage.pods_measured == 0 {
                    "No pod of the instance is running.".to_string()
                } else {
                    String::new()
                },
                Some(cpu),
                Some(memory),
            ),
        };
        Ok(InstanceUsage {
            instance_id: id.to_string(),
            metrics_available,
            metrics_note,
            cpu_millis,
            memory_bytes,
            cpu_limit_millis: i64::from(plan.cpu_millis),
            memory_limit_bytes: i64::from(plan.memory_mib) << 20,
            storage_capacity_bytes: usage.storage_capacity_bytes,
            storage_used_bytes: None,
            observed_at: Some(kapal::wire::timestamp(self.clock.now().naive_utc())),
        })
    }

    /// GetDiagnostics: events, pods, volumes and log tails of the instance, read now (the
    /// control-plane adds the status history). NOT_FOUND until the instance has been applied.
    pub async fn diagnostics(
        &self,
        instance_id: &str,
        log_lines: u32,
    ) -> Result<kapal::proto::v1::InstanceDiagnostics> {
        let id = kapal::wire::uuid("instance_id", instance_id)?;
        if !(1..=500).contains(&log_lines) {
            return Err(Error::invalid("log_lines must be 1-500"));
        }
        let stored = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("instance {id} is not known here")))?;
        let spec = &stored.spec;
        if !matches!(
            self.cluster.owner(spec).await?,
            crate::cluster::Owner::Ours { .. }
        ) {
            return Err(Error::NotFound(format!(
                "instance {id} has no namespace of its own in the cluster"
            )));
        }
        let selector = format!("{}={}", crate::render::LABEL_INSTANCE, spec.instance_id);
        let mut d = crate::diagnostics::read(
            self.cluster.client(),
            &spec.namespace,
            &selector,
            log_lines as usize,
        )
        .await?;
        d.instance_id = id.to_string();
        d.observed_at = Some(kapal::wire::timestamp(self.clock.now().naive_utc()));
        Ok(d)
    }

    /// One orphan sweep (see [`Sweep`]). Does nothing when the desired list cannot be fetched
    /// (or there is no control-plane): only a list that was read can say what is orphaned.
    pub async fn sweep_orphans(&self) -> Result<Swept> {
        let mut swept = Swept::default();
        let Some(client) = &self.control_plane else {
            return Ok(swept);
        };
        let desired: HashSet<Uuid> = match list_desired(client).await {
            Ok(instances) => instances
                .iter()
                .filter_map(|i| Uuid::parse_str(&i.instance_id).ok())
                .collect(),
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "cannot list desired instances; no orphan sweep this time");
                return Ok(swept);
            }
        };
        // Namespaces before the store: a namespace is created after its instance is recorded.
        let namespaces = self
            .cluster
            .partition_namespaces(&self.sweep.partition)
            .await?;
        let known: HashSet<Uuid> = self
            .store
            .list()
            .await?
            .into_iter()
            .filter(|s| !s.is_finished())
            .map(|s| s.spec.instance_id)
            .collect();
        let now = self.clock.now();
        for ns in namespaces.into_iter().filter(|ns| !ns.terminating) {
            let live = ns
                .instance
                .is_some_and(|id| desired.contains(&id) || known.contains(&id));
            match (live, ns.orphaned_since) {
                (true, None) => {}
                (true, Some(_)) => {
                    tracing::info!(namespace = %ns.name, "the instance of a namespace marked orphaned is wanted again; mark removed");
                    self.cluster.mark_orphaned(&ns.name, None).await?;
                    swept.unmarked.push(ns.name);
                }
                (false, None) => {
                    tracing::warn!(namespace = %ns.name, instance = ?ns.instance, delay = ?self.sweep.safety_delay, "namespace of an instance nobody wants; deleted unless it is wanted again within the safety delay");
                    self.cluster.mark_orphaned(&ns.name, Some(now)).await?;
                    swept.marked.push(ns.name);
                }
                (false, Some(since)) => {
                    let orphaned_for = (now - since).to_std().unwrap_or_default();
                    if orphaned_for >= self.sweep.safety_delay {
                        tracing::warn!(namespace = %ns.name, instance = ?ns.instance, %since, "deleting an orphaned namespace");
                        self.cluster.delete_namespace_named(&ns.name).await?;
                        swept.deleted.push(ns.name);
                    }
                }
            }
        }
        Ok(swept)
    }

    async fn sweep_loop(self: Arc<Self>) {
        if self.control_plane.is_none() {
            tracing::info!("no control-plane: orphaned namespaces are not swept");
            return;
        }
        let mut tick = tokio::time::interval(self.sweep.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sweep_orphans().await {
                tracing::warn!(error = %chain(&e), "orphan sweep failed; trying again at the next one");
            }
        }
    }

    /// Computes the instance's status from the cluster and remembers when it became READY.
    async fn evaluate(&self, id: Uuid) -> Result<(Verdict, Option<Stored>)> {
        let Some(stored) = self.store.get(id).await? else {
            return Ok((
                status::compute(
                    None,
                    &status::Observed::default(),
                    self.clock.now(),
                    self.unschedulable_grace,
                ),
                None,
            ));
        };
        let (app, _) = self.app_and_plan(&stored.spec)?;
        let mut observed = self.cluster.observe(&stored.spec).await?;
        if let Err(e) = self
            .cluster
            .release_stranded_pods(&stored.spec, &observed.pods)
            .await
        {
            tracing::warn!(instance = %id, error = %chain(&e), "cannot release pods stranded on a failed node");
        }
        // The components' pods; a setup job's pod is not one of them.
        let (setup_pods, pods) = std::mem::take(&mut observed.pods)
            .into_iter()
            .partition(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(crate::render::LABEL_COMPONENT))
                    .is_some_and(|c| c == crate::render::SETUP_COMPONENT)
            });
        observed.pods = pods;
        observed.setup_pods = setup_pods;
        let known = Known {
            desired: stored.spec.desired,
            was_ready: stored.was_ready,
            app,
            delete_data_after: stored.spec.delete_data_after,
            suspended_by_billing: stored.spec.suspended_by_billing,
        };
        let verdict = status::compute(
            Some(known),
            &observed,
            self.clock.now(),
            self.unschedulable_grace,
        );
        if verdict.status == InstanceStatus::Ready && !stored.was_ready {
            self.store
                .set_was_ready(id, true, stored.updated_at)
                .await?;
        }
        Ok((verdict, Some(stored)))
    }

    /// Evaluates the instance and reports its status to the control-plane if it changed since
    /// the last successful report; answers the status (`None`: the instance is not recorded).
    /// Reports of one instance are made one at a time (its lock), each with a larger sequence
    /// than the last, and are the only road statuses take to the control-plane.
    async fn report(&self, id: Uuid) -> Result<Option<InstanceState>> {
        let _guard = self.lock(id).await;
        let (verdict, stored) = self.evaluate(id).await?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let current = (verdict.status as i32, verdict.reason.clone());
        if stored.reported.as_ref() == Some(&current) {
            return Ok(Some(self.state(id, verdict, stored.report_sequence)));
        }
        tracing::info!(instance = %id, status = verdict.status.as_str_name(), reason = %verdict.reason, "instance status changed");
        let sequence = stored.next_sequence(self.clock.now().naive_utc());
        let purged = verdict.purged;
        let state = self.state(id, verdict, sequence);
        if let Some(client) = &self.control_plane {
            match client.clone().report_instance_state(state.clone()).await {
                Ok(_) => {}
                // Retrying cannot help: record it as reported.
                Err(s) if s.code() == tonic::Code::NotFound => {
                    tracing::warn!(instance = %id, "the control-plane does not know this instance; its status is not reported");
                }
                Err(s) => {
                    return Err(Error::Internal(format!(
                        "reporting to the control-plane failed: {} {}",
                        s.code(),
                        s.message()
                    )));
                }
            }
        }
        self.store
            .set_reported(id, current.0, &current.1, sequence, purged)
            .await?;
        Ok(Some(state))
    }

    /// Converges one recorded instance (nothing when it is unknown or deleted and reported).
    /// Returns when it needs converging again, if it does.
    async fn converge(&self, id: Uuid) -> Result<Option<DateTime<Utc>>> {
        let _guard = self.lock(id).await;
        let Some(stored) = self.store.get(id).await? else {
            return Ok(None);
        };
        if stored.is_finished() {
            return Ok(None);
        }
        let now = self.clock.now();
        // Deleted and reported so, its data kept: nothing to do until the data is due (a
        // retention lasts days; no calls to the cluster every resync meanwhile).
        if let Some(until) = stored.spec.data_kept_until(now)
            && stored
                .reported
                .as_ref()
                .is_some_and(|r| r.0 == InstanceStatus::Deleted as i32)
        {
            return Ok(Some(until));
        }
        let (app, plan) = self.app_and_plan(&stored.spec)?;
        self.cluster
            .converge(&stored.spec, app, plan, &self.settings, now)
            .await
    }

    /// Records what the control-plane wants (its list is the source of truth). A spec that
    /// changed here while the list was being fetched is newer than the list and kept.
    async fn pull_desired(&self) {
        let Some(client) = &self.control_plane else {
            return;
        };
        let started = self.clock.now().naive_utc();
        let listed = match list_desired(client).await {
            Ok(instances) => instances,
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "cannot list desired instances from the control-plane; converging the recorded ones");
                return;
            }
        };
        for wire in listed {
            let spec = match Spec::from_wire(&wire, &self.catalog) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::warn!(instance = %wire.instance_id, error = %e, "the control-plane listed an invalid instance; skipped");
                    continue;
                }
            };
            let _guard = self.lock(spec.instance_id).await;
            match self
                .store
                .upsert(&spec, self.clock.now().naive_utc(), Some(started))
                .await
            {
                Ok(Upsert::Unchanged | Upsert::Stale) => {}
                Ok(upsert) => {
                    tracing::info!(instance = %spec.instance_id, desired = ?spec.desired, ?upsert, "desired state from the control-plane")
                }
                Err(e) => {
                    tracing::warn!(instance = %spec.instance_id, error = %chain(&e), "cannot record a desired instance")
                }
            }
        }
    }

    async fn converge_tracked(&self, id: Uuid, retries: &mut HashMap<Uuid, (Instant, u32)>) {
        match self.converge(id).await {
            Ok(None) => {
                retries.remove(&id);
            }
            Ok(Some(at)) => {
                // Due later (e.g. a deleted instance's data): wake up then, just after it.
                let wait = (at - self.clock.now()).to_std().unwrap_or_default() + WAKE_MARGIN;
                tracing::debug!(instance = %id, %at, "converging again when due");
                retries.insert(id, (Instant::now() + wait, 0));
            }
            Err(e) => {
                let attempts = retries.get(&id).map_or(0, |r| r.1).saturating_add(1);
                let delay = FIRST_RETRY
                    .saturating_mul(1 << attempts.min(16))
                    .min(self.resync_interval);
                tracing::warn!(instance = %id, error = %chain(&e), attempts, retry_in = ?delay, "converging failed");
                retries.insert(id, (Instant::now() + delay, attempts));
            }
        }
        let _ = self.status_tx.send(id);
    }

    /// At start-up and every resync interval: pull the desired list, converge every recorded
    /// instance. In between: converge what is queued, retry failures with backoff.
    async fn reconcile_loop(self: Arc<Self>, mut converge_rx: mpsc::UnboundedReceiver<Uuid>) {
        let mut resync = tokio::time::interval(self.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retries: HashMap<Uuid, (Instant, u32)> = HashMap::new();
        loop {
            let next_retry = retries.values().map(|r| r.0).min();
            tokio::select! {
                _ = resync.tick() => {
                    self.pull_desired().await;
                    match self.store.list().await {
                        Ok(all) => {
                            for stored in all.iter().filter(|s| !s.is_finished()) {
                                self.converge_tracked(stored.spec.instance_id, &mut retries).await;
                            }
                        }
                        Err(e) => tracing::warn!(error = %chain(&e), "cannot list recorded instances"),
                    }
                }
                Some(id) = converge_rx.recv() => self.converge_tracked(id, &mut retries).await,
                _ = sleep_until(next_retry) => {
                    let now = Instant::now();
                    let due: Vec<Uuid> = retries.iter().filter(|(_, r)| r.0 <= now).map(|(id, _)| *id).collect();
                    for id in due {
                        self.converge_tracked(id, &mut retries).await;
                    }
                }
            }
        }
    }

    /// Evaluates instances whose objects changed and reports status changes, retrying failed
    /// reports.
    async fn status_loop(self: Arc<Self>, mut status_rx: mpsc::UnboundedReceiver<Uuid>) {
        let mut retries: HashMap<Uuid, Instant> = HashMap::new();
        loop {
            let mut batch = HashSet::new();
            let next_retry = retries.values().min().copied();
            tokio::select! {
                id = status_rx.recv() => match id {
                    Some(id) => { batch.insert(id); }
                    None => return,
                },
                _ = sleep_until(next_retry) => {}
            }
            tokio::time::sleep(DEBOUNCE).await;
            while let Ok(id) = status_rx.try_recv() {
                batch.insert(id);
            }
            let now = Instant::now();
            retries.retain(|id, at| {
                if *at <= now {
                    batch.insert(*id);
                    false
                } else {
                    true
                }
            });
            for id in batch {
                if let Err(e) = self.report(id).await {
                    tracing::warn!(instance = %id, error = %chain(&e), retry_in = ?REPORT_RETRY, "cannot evaluate or report the instance's status");
                    retries.insert(id, Instant::now() + REPORT_RETRY);
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where a watcher sends the instances whose objects changed.
struct WatchQueues {
    /// Always: the instance's status may have changed.
    status: mpsc::UnboundedSender<Uuid>,
    /// For kinds the provisioner owns: an object deleted or its spec changed by someone else is
    /// drift, repaired by converging the instance at once (not only at the next resync).
    converge: Option<mpsc::UnboundedSender<Uuid>>,
}

/// What changes when an object's spec changes (not its status): its generation.
fn spec_generation<K: Resource>(obj: &K) -> Option<String> {
    obj.meta().generation.map(|g| g.to_string())
}

/// Any change of an object without a generation (a Service has no status that changes).
fn resource_version<K: Resource>(obj: &K) -> Option<String> {
    obj.meta().resource_version.clone()
}

/// Watches Kapal's objects of one kind in every namespace and queues their instance for a
/// status evaluation on every change, and (see [`WatchQueues::converge`]) for convergence when
/// one is deleted or its `fingerprint` changes. Converging after Kapal's own change is a
/// server-side apply that changes nothing.
async fn watch<K>(
    api: Api<K>,
    kind: &'static str,
    queues: WatchQueues,
    fingerprint: fn(&K) -> Option<String>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // uid -> fingerprint last seen.
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    while let Some(item) = stream.next().await {
        let (obj, deleted) = match item {
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => (obj, false),
            Ok(watcher::Event::Delete(obj)) => (obj, true),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
            Err(e) => {
                tracing::warn!(kind, error = %e, "watch failed; retrying with backoff");
                continue;
            }
        };
        let Some(id) = obj
            .labels()
            .get(LABEL_INSTANCE)
            .and_then(|v| Uuid::parse_str(v).ok())
        else {
            continue;
        };
        if queues.status.send(id).is_err() {
            return;
        }
        let Some(converge) = &queues.converge else {
            continue;
        };
        let uid = obj.meta().uid.clone().unwrap_or_default();
        let drifted = if deleted {
            seen.remove(&uid);
            true
        } else {
            let now = fingerprint(&obj);
            // A new object (or the first listing) is not drift.
            matches!(seen.insert(uid, now.clone()), Some(before) if before != now)
        };
        if drifted {
            tracing::debug!(kind, instance = %id, name = %obj.name_any(), deleted, "object changed; converging its instance");
            if converge.send(id).is_err() {
                return;
            }
        }
    }
}

/// Instances asked for per ListDesiredInstances page (the control-plane may answer fewer).
const DESIRED_PAGE_SIZE: u32 = 500;

/// Every desired instance, following ListDesiredInstances' pages to the last. Fails when any
/// page fails: a partial list must never pass for the whole one (the orphan sweep would take
/// the rest for orphans).
async fn list_desired(
    client: &InstanceStateServiceClient<InternalChannel>,
) -> std::result::Result<Vec<InstanceSpec>, tonic::Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    let mut seen_tokens = HashSet::new();
    loop {
        let page = client
            .clone()
            .list_desired_instances(ListDesiredInstancesRequest {
                page_size: DESIRED_PAGE_SIZE,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        all.extend(page.instances);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        // A control-plane that hands out a token twice would keep us here forever.
        if !seen_tokens.insert(page.next_page_token.clone()) {
            return Err(tonic::Status::internal(
                "the control-plane's ListDesiredInstances repeated a page token",
            ));
        }
        page_token = page.next_page_token;
    }
}
