//! Pieces every manager handler uses: the cluster lease, record writes, dispatching a phase.
use crate::Manager;
use ksctl_bus::HandlerError;
use ksctl_core::keys;
use ksctl_core::messages::{Command, Event, EventKind};
use ksctl_core::records::ClusterRecord;
use ksctl_core::{ClusterId, now_ms};
use ksctl_store::{Lease, StoreError};

pub fn store_retry(e: StoreError) -> HandlerError {
    HandlerError::retry(e.to_string())
}

impl Manager {
    /// Takes the cluster's lease (waiting briefly); a busy cluster means "try again later".
    pub async fn lease(&self, id: &ClusterId) -> Result<Lease, HandlerError> {
        Lease::acquire(&self.rt.store, &keys::cluster(id), &self.rt.replica, &self.rt.lease)
            .await
            .map_err(store_retry)?
            .ok_or_else(|| {
                self.rt.metrics.inc("lease_contention_total", &[("service", "manager")]);
                HandlerError::retry(format!("cluster {id} is leased by another worker"))
            })
    }

    pub async fn load(&self, id: &ClusterId) -> Result<Option<(ClusterRecord, u64)>, HandlerError> {
        ksctl_store::get_json(self.rt.store.as_ref(), &keys::cluster(id)).await.map_err(store_retry)
    }

    /// Writes the record: created when `revision` is `None`, else compare-and-swap. We hold the
    /// cluster lease, so a conflict means the lease was lost: retry the whole message.
    pub async fn save(&self, rec: &ClusterRecord, revision: Option<u64>) -> Result<(), HandlerError> {
        let bytes = serde_json::to_vec(rec).expect("records serialise");
        let key = keys::cluster(&rec.id);
        match revision {
            None => self.rt.store.create(&key, &bytes).await,
            Some(r) => self.rt.store.update(&key, &bytes, r).await,
        }
        .map(|_| ())
        .map_err(store_retry)
    }

    /// Publishes the command of the operation's current phase. Idempotent: the message id is
    /// derived from (operation, phase, dispatch), so publishing again is deduplicated.
    pub async fn dispatch(&self, rec: &ClusterRecord) -> Result<(), HandlerError> {
        let Some(op) = &rec.operation else {
            return Ok(());
        };
        let cmd = Command {
            op_id: op.id.clone(),
            cluster_id: rec.id.clone(),
            kind: op.kind,
            phase: op.phase,
            dispatch: op.dispatch,
        };
        self.rt.publisher.command(&cmd).await?;
        self.rt.metrics.inc("phases_dispatched_total", &[("phase", op.phase.as_str())]);
        Ok(())
    }

    pub async fn event(&self, rec: &ClusterRecord, kind: EventKind, msg: String) {
        let mut ev = Event::new(rec.id.as_str(), kind, msg);
        if let Some(op) = rec.operation.as_ref().or(rec.last_operation.as_ref()) {
            ev = ev.op(&op.id).phase(op.phase);
        }
        self.rt.publisher.event(ev).await;
    }
}

pub fn touch(rec: &mut ClusterRecord) {
    rec.updated_at_ms = now_ms();
}
