//! Agent heartbeats (`ksctl.events.<cluster>.health`): core NATS on a queue group, so one manager
//! replica takes each; the newest is kept under `health.<cluster>` for `info`. Heartbeats repeat,
//! so losing one (no replica up) costs nothing.
use crate::Manager;
use futures::StreamExt;
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::messages::{HEALTH_SUBJECTS, Heartbeat};
use ksctl_runtime::RuntimeError;

pub async fn start(m: Manager) -> Result<tokio::task::JoinHandle<()>, RuntimeError> {
    let mut sub =
        m.rt.publisher
            .client
            .queue_subscribe(HEALTH_SUBJECTS, "manager".into())
            .await
            .map_err(|e| RuntimeError::Config(format!("subscribing to {HEALTH_SUBJECTS}: {e}")))?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Err(e) = record(&m, &msg.subject, &msg.payload).await {
                m.rt.metrics.inc("heartbeats_rejected_total", &[]);
                tracing::warn!(subject = %msg.subject, error = %e, "heartbeat not recorded");
            }
        }
    }))
}

async fn record(m: &Manager, subject: &str, payload: &[u8]) -> Result<(), String> {
    let hb: Heartbeat = serde_json::from_slice(payload).map_err(|e| format!("malformed heartbeat: {e}"))?;
    let from_subject = subject.split('.').nth(2).unwrap_or_default();
    if hb.cluster_id != from_subject {
        return Err(format!("heartbeat for {} on the subject of {from_subject}", hb.cluster_id));
    }
    let id = ClusterId::new(&hb.cluster_id).map_err(|e| e.to_string())?;
    // Only clusters ksctl knows; a heartbeat cannot create state.
    if m.rt.store.get(&keys::cluster(&id)).await.map_err(|e| e.to_string())?.is_none() {
        return Err(format!("no cluster {id}"));
    }
    // Keep the newest: heartbeats of two agents (or a delayed one) may cross.
    ksctl_store::modify(m.rt.store.as_ref(), &keys::health(&id), |cur: Option<Heartbeat>| {
        Ok::<_, std::convert::Infallible>(match cur {
            Some(c) if c.sent_at_ms >= hb.sent_at_ms => Some(c),
            _ => Some(hb.clone()),
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .expect("infallible");
    m.rt.metrics.inc("heartbeats_total", &[]);
    Ok(())
}
