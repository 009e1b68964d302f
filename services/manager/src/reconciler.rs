//! The reconciler: messages are hints. One manager replica at a time (under a lease) looks for
//! operations whose phase has not reported within the phase timeout while no worker holds the
//! cluster's lease, and dispatches that phase again (with a new dispatch number, so the stream
//! does not deduplicate it). After `KSCTL_MAX_REDISPATCH` re-dispatches the phase fails, with
//! the reason, so that nothing stays stuck for ever.
use crate::Manager;
use crate::ops::touch;
use ksctl_core::keys;
use ksctl_core::messages::{EventKind, PhaseResult};
use ksctl_core::now_ms;
use ksctl_core::records::ClusterRecord;
use std::time::Duration;

pub async fn run(m: Manager, interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match m.rt.store.try_lease(keys::RECONCILER_LEASE, &m.rt.replica, interval * 3).await {
            Ok(true) => {
                if let Err(e) = pass(&m).await {
                    tracing::warn!(error = %e, "reconciler pass failed");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "reconciler lease unavailable"),
        }
    }
}

/// One pass; returns how many phases were dispatched again.
pub async fn pass(m: &Manager) -> Result<usize, String> {
    let rows = m.rt.store.children(keys::CLUSTER_PREFIX.trim_end_matches('.')).await.map_err(|e| e.to_string())?;
    let now = now_ms();
    let mut redispatched = 0;
    for (key, v) in rows {
        let Ok(rec) = serde_json::from_slice::<ClusterRecord>(&v.value) else {
            tracing::warn!(%key, "unreadable cluster record");
            continue;
        };
        let Some(op) = &rec.operation else { continue };
        if now.saturating_sub(op.dispatched_at_ms) < m.phase_timeout.as_millis() as u64 {
            continue;
        }
        // Someone is working on it (or a message for it is being handled): leave it alone.
        let Ok(Some(lease)) = ksctl_store::Lease::acquire(
            &m.rt.store,
            &keys::cluster(&rec.id),
            &m.rt.replica,
            &ksctl_store::LeaseOptions { ttl: m.rt.lease.ttl, wait: Duration::ZERO },
        )
        .await
        else {
            continue;
        };
        let done = redispatch(m, &rec).await;
        lease.release().await;
        match done {
            Ok(Redispatch::Again) => redispatched += 1,
            Ok(Redispatch::No) => {}
            // Failed like any phase, through the result path (which takes the lease again).
            Ok(Redispatch::GiveUp(res)) => {
                if let Err(e) = crate::results::ResultHandler(m.clone()).apply(&res).await {
                    tracing::warn!(cluster_id = %rec.id, error = ?e, "failing a stuck phase failed");
                }
            }
            Err(e) => tracing::warn!(cluster_id = %rec.id, error = ?e, "re-dispatch failed"),
        }
    }
    Ok(redispatched)
}

enum Redispatch {
    No,
    Again,
    GiveUp(PhaseResult),
}

async fn redispatch(m: &Manager, seen: &ClusterRecord) -> Result<Redispatch, ksctl_bus::HandlerError> {
    // Re-read under the lease: the operation may have moved on since the scan.
    let Some((mut rec, rev)) = m.load(&seen.id).await? else {
        return Ok(Redispatch::No);
    };
    let (Some(op), Some(old)) = (rec.operation.as_mut(), seen.operation.as_ref()) else {
        return Ok(Redispatch::No);
    };
    if op.id != old.id || op.phase != old.phase || op.dispatch != old.dispatch {
        return Ok(Redispatch::No);
    }
    if op.dispatch >= m.max_redispatch {
        let error = format!(
            "no result after {} dispatches, {} s apart (is a {} running?)",
            op.dispatch + 1,
            m.phase_timeout.as_secs(),
            op.phase.service().as_str()
        );
        return Ok(Redispatch::GiveUp(PhaseResult {
            op_id: op.id.clone(),
            cluster_id: rec.id.clone(),
            phase: op.phase,
            error: Some(error),
        }));
    }
    op.dispatch += 1;
    op.dispatched_at_ms = now_ms();
    let (phase, n) = (op.phase, op.dispatch);
    touch(&mut rec);
    m.save(&rec, Some(rev)).await?;
    m.dispatch(&rec).await?;
    m.rt.metrics.inc("phases_redispatched_total", &[("phase", phase.as_str())]);
    tracing::info!(cluster_id = %rec.id, %phase, dispatch = n, "stalled phase dispatched again");
    m.event(
        &rec,
        EventKind::Retrying,
        format!("{phase} reported nothing within {}s; dispatched again (#{n})", m.phase_timeout.as_secs()),
    )
    .await;
    Ok(Redispatch::Again)
}
