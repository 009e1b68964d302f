//! Agent heartbeats (`ksctl.health.<cluster>`): core NATS on a queue group, so one manager
//! replica takes each; the newest is kept under `health.<cluster>` for `info`, and the addons
//! the cluster's `ClusterAddon` object asks for are followed. Heartbeats repeat, so losing one
//! (no replica up) costs nothing.
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

/// How far ahead of the manager's clock a sender's may run.
const MAX_CLOCK_AHEAD_MS: u64 = 60_000;

async fn record(m: &Manager, subject: &str, payload: &[u8]) -> Result<(), String> {
    let mut hb: Heartbeat = serde_json::from_slice(payload).map_err(|e| format!("malformed heartbeat: {e}"))?;
    // The sender's clock is not trusted: a timestamp from the future is refused (it would read
    // as "fresh" for as long as it lies), and the newest heartbeat is the one received last.
    let now = ksctl_core::now_ms();
    if hb.sent_at_ms > now + MAX_CLOCK_AHEAD_MS {
        return Err(format!("heartbeat sent {} ms in the future", hb.sent_at_ms - now));
    }
    hb.received_at_ms = now;
    let from_subject = subject.split('.').nth(2).unwrap_or_default();
    if hb.cluster_id != from_subject {
        return Err(format!("heartbeat for {} on the subject of {from_subject}", hb.cluster_id));
    }
    let id = ClusterId::new(&hb.cluster_id).map_err(|e| e.to_string())?;
    // Only clusters ksctl knows; a heartbeat cannot create state.
    let Some((cluster, _)) = m.load(&id).await.map_err(|e| e.to_string())? else {
        return Err(format!("no cluster {id}"));
    };
    // Keep the newest by the manager's clock: two replicas' clocks differ a little, so one
    // received earlier by a replica running ahead may win over a later one; the next replaces it.
    ksctl_store::modify(m.rt.store.as_ref(), &keys::health(&id), |cur: Option<Heartbeat>| {
        Ok::<_, std::convert::Infallible>(match cur {
            Some(c) if c.received_at_ms > hb.received_at_ms => None,
            _ => Some(hb.clone()),
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .expect("infallible");
    m.rt.metrics.inc("heartbeats_total", &[]);
    if let Some(desired) = &hb.addons {
        crate::requests::RequestHandler(m.clone())
            .follow_cluster_addon(&cluster, desired)
            .await
            .map_err(|e| format!("following the ClusterAddon object: {e}"))?;
    }
    Ok(())
}
