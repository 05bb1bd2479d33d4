//! Instances' credentials, read from the provisioner (a Kubernetes Secret read) once and then
//! kept in memory: they are generated once per instance and never change, so every later
//! `GetInstance` answers without a call to the cluster. Bounded; an entry goes when its
//! instance is deleted.

use std::collections::HashMap;
use std::sync::Mutex;

use kapal::proto::internal::v1::GetCredentialsRequest;
use kapal::proto::v1::Credentials;

use crate::Ctx;

/// At most this many instances' credentials are kept.
pub(crate) const CAPACITY: usize = 10_000;

pub(crate) struct CredentialsCache {
    entries: Mutex<HashMap<String, Credentials>>,
    capacity: usize,
}

impl CredentialsCache {
    pub fn new(capacity: usize) -> CredentialsCache {
        CredentialsCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Credentials>> {
        // A panic while holding the lock cannot leave the map half-updated: every operation on
        // it is a single insert/remove/clone. Keep using it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, instance_id: &str) -> Option<Credentials> {
        self.entries().get(instance_id).cloned()
    }

    pub fn insert(&self, instance_id: &str, credentials: Credentials) {
        let mut entries = self.entries();
        if entries.len() >= self.capacity && !entries.contains_key(instance_id) {
            // Full: drop one entry (whichever the map yields first); it is read again if needed.
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(instance_id.to_string(), credentials);
    }

    pub fn evict(&self, instance_id: &str) {
        self.entries().remove(instance_id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

/// The instance's credentials: from the cache, or from the provisioner (then cached). `None`
/// while the instance has not been applied yet, or when the provisioner cannot be reached (logged).
/// With `cacheable` false (an instance on its way out, e.g. expired by billing: its Secret goes
/// with its data) the cluster is asked every time and nothing is kept.
pub(crate) async fn read(ctx: &Ctx, instance_id: &str, cacheable: bool) -> Option<Credentials> {
    if !cacheable {
        ctx.credentials.evict(instance_id);
    } else if let Some(c) = ctx.credentials.get(instance_id) {
        return Some(c);
    }
    match ctx
        .provisioner
        .clone()
        .get_credentials(GetCredentialsRequest {
            instance_id: instance_id.to_string(),
        })
        .await
    {
        Ok(creds) => {
            let creds = creds.into_inner();
            if cacheable {
                ctx.credentials.insert(instance_id, creds.clone());
            }
            Some(creds)
        }
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => {
            tracing::warn!(instance_id, code = ?s.code(), "credentials unavailable");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str) -> Credentials {
        Credentials {
            username: user.into(),
            ..Default::default()
        }
    }

    #[test]
    fn bounded_and_evicted() {
        let cache = CredentialsCache::new(3);
        for i in 0..10 {
            cache.insert(&format!("i{i}"), creds(&format!("u{i}")));
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.get("i9").map(|c| c.username), Some("u9".into()));
        cache.evict("i9");
        assert!(cache.get("i9").is_none());
        cache.insert("x", creds("a"));
        cache.insert("x", creds("b"));
        assert_eq!(cache.get("x").map(|c| c.username), Some("b".into()));
    }
}
