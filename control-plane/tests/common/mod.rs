//! What the control-plane's test files share: how their fake provisioner reports statuses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kapal::auth::InternalKey;
use kapal::proto::internal::v1::InstanceState;
use kapal::proto::internal::v1::instance_state_service_client::InstanceStateServiceClient;
use kapal::serve::InternalChannel;
use tonic::Status;

/// Reports statuses to the control-plane as the real provisioner does: by
/// ReportInstanceState (the one road statuses take), each with a larger sequence than the last.
#[derive(Clone)]
pub struct Reporter {
    client: InstanceStateServiceClient<InternalChannel>,
    sequence: Arc<AtomicU64>,
}

impl Reporter {
    /// Reports to the control-plane at `url` (its InstanceStateService), signed with `key`.
    pub fn new(url: &str, key: &InternalKey) -> Self {
        // Signed as a service, as the provisioner's channel is.
        let channel = kapal::serve::internal_channel(url, key).expect("control-plane url");
        Reporter {
            client: InstanceStateServiceClient::new(channel),
            sequence: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Reports `state` with the next sequence, before the fake answers ApplyInstance (as the
    /// real provisioner reports a changed status before it answers).
    pub async fn report(&self, mut state: InstanceState) -> Result<(), Status> {
        state.sequence = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        self.client.clone().report_instance_state(state).await?;
        Ok(())
    }
}
