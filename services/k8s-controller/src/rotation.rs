//! Replaces agent credentials before they expire: every running cluster whose agent holds a
//! credential in the last third of its life gets a new one ([`KubeApi::rotate_credential`]),
//! under the cluster's lease so it never races an operation (or another replica) on the
//! cluster. A cluster busy with an operation is tried again on the next round.
use crate::credentials::{now, rotation_due};
use crate::kube_api::KubeApi;
use ksctl_core::records::{ClusterRecord, K8sRecord};
use ksctl_core::state::ClusterState;
use ksctl_core::{ClusterId, keys};
use ksctl_runtime::Runtime;
use ksctl_store::{Lease, LeaseOptions, get_json};
use std::sync::Arc;
use std::time::Duration;

pub async fn run(rt: Runtime, kube: Arc<KubeApi>, every: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = round(&rt, &kube).await {
            tracing::warn!(error = %e, "agent credential rotation round failed");
        }
    }
}

async fn round(rt: &Runtime, kube: &KubeApi) -> Result<(), String> {
    // Every round gives the servers the current revocations again: a push that failed after a
    // revocation was recorded (a bus hiccup) is not left undone until the next one.
    kube.push_revocations().await.map_err(|e| format!("pushing the account JWT: {e}"))?;
    let records = rt.store.children("k8s").await.map_err(|e| e.to_string())?;
    for (key, v) in records {
        let Ok(record) = serde_json::from_slice::<K8sRecord>(&v.value) else { continue };
        let due = record.agent_credential.as_ref().is_some_and(|c| rotation_due(c, now()));
        let Some(id) = ksctl_core::keys::cluster_of(&key) else { continue };
        if due {
            rotate(rt, kube, &id).await;
        }
    }
    Ok(())
}

async fn rotate(rt: &Runtime, kube: &KubeApi, id: &ClusterId) {
    let opts = LeaseOptions { ttl: rt.lease.ttl, wait: Duration::ZERO };
    let lease = match Lease::acquire(&rt.store, &keys::cluster(id), &rt.replica, &opts).await {
        Ok(Some(l)) => l,
        Ok(None) => return,
        Err(e) => return tracing::warn!(cluster_id = %id, error = %e, "rotation: store unavailable"),
    };
    let outcome = async {
        let cluster = match get_json::<ClusterRecord>(rt.store.as_ref(), &keys::cluster(id)).await {
            Ok(Some((c, _))) => c,
            Ok(None) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        };
        // Operations install, replace or revoke the credential themselves.
        if cluster.state != ClusterState::Running || cluster.operation.is_some() {
            return Ok(false);
        }
        // Decided again under the lease: another replica may have rotated it since the listing.
        let record: K8sRecord =
            ksctl_runtime::read_record(&rt.store, &keys::k8s(id)).await.map_err(|e| e.to_string())?;
        if !record.agent_credential.as_ref().is_some_and(|c| rotation_due(c, now())) {
            return Ok(false);
        }
        kube.rotate_credential(&rt.sealer, &cluster).await.map(|()| true).map_err(|e| e.to_string())
    };
    // Its writes are fenced like a phase's: a round that lost the lease writes nothing.
    let outcome = lease.fence().scope(outcome).await;
    lease.release().await;
    match outcome {
        Ok(false) => {}
        Ok(true) => {
            rt.metrics.inc("agent_credentials_rotated_total", &[]);
            tracing::info!(cluster_id = %id, "agent credential rotated");
        }
        Err(e) => tracing::warn!(cluster_id = %id, error = %e, "agent credential rotation failed; retried next round"),
    }
}
