//! `ksctl.result.*`: advance the saga. A success dispatches the next phase or finishes the
//! operation; a failure leaves the cluster in the operation's `*_failed` state with the reason.
use crate::Manager;
use crate::ops::touch;
use ksctl_bus::{Envelope, Handler, HandlerError};
use ksctl_core::keys;
use ksctl_core::messages::{EventKind, PhaseResult};
use ksctl_core::now_ms;
use ksctl_core::records::ClusterRecord;
use ksctl_core::saga::{next_phase, previous_phase};
use ksctl_core::spec::ClusterType;
use ksctl_core::state::{ClusterState, OpKind};
use tracing::Instrument;

pub struct ResultHandler(pub Manager);

#[async_trait::async_trait]
impl Handler for ResultHandler {
    async fn handle(&self, env: &Envelope) -> Result<(), HandlerError> {
        let res: PhaseResult = serde_json::from_slice(env.payload())
            .map_err(|e| HandlerError::Permanent(format!("undecodable result on {}: {e}", env.subject())))?;
        self.apply(&res).await
    }
}

impl ResultHandler {
    /// Advances the saga with `res` under the cluster's lease (also used for dead letters,
    /// which arrive as failed results).
    pub async fn apply(&self, res: &PhaseResult) -> Result<(), HandlerError> {
        let span = tracing::info_span!("result", cluster_id = %res.cluster_id, op_id = %res.op_id, phase = %res.phase);
        async {
            let lease = self.0.lease(&res.cluster_id).await?;
            let out = lease.fence().scope(self.advance(res)).await;
            lease.release().await;
            out
        }
        .instrument(span)
        .await
    }
}

impl ResultHandler {
    async fn advance(&self, res: &PhaseResult) -> Result<(), HandlerError> {
        let m = &self.0;
        let Some((mut rec, rev)) = m.load(&res.cluster_id).await? else {
            return Ok(());
        };
        let Some(mut op) = rec.operation.clone().filter(|o| o.id == res.op_id) else {
            tracing::info!("result for an operation that is no longer active; ignored");
            return Ok(());
        };
        if op.phase != res.phase {
            // A redelivered result whose follow-up was already recorded: make sure that
            // follow-up was published (the crash may have come between the two).
            if previous_phase(op.kind, rec.cluster_type, op.phase) == Some(res.phase) {
                m.dispatch(&rec).await?;
            }
            return Ok(());
        }
        let now = now_ms();
        if let Some(error) = &res.error {
            op.error = Some(format!("{}: {error}", res.phase));
            op.finished_at_ms = Some(now);
            rec.state = op.kind.failed_state();
            // A change the ClusterAddon object asked for is not tried again for the same
            // generation of it (the object's status says why).
            if let (Some(f), Some(_)) = (rec.cluster_addon.as_mut(), op.cluster_addon_generation) {
                f.failed = true;
            }
            rec.operation = None;
            rec.last_operation = Some(op.clone());
            touch(&mut rec);
            m.save(&rec, Some(rev)).await?;
            m.rt.metrics.inc("operations_total", &[("kind", op.kind.as_str()), ("outcome", "failed")]);
            m.event(
                &rec,
                EventKind::OperationFailed,
                format!("{} of cluster {} failed in {}: {error}", op.kind, rec.id, res.phase),
            )
            .await;
            return Ok(());
        }
        op.phases_done.push(res.phase);
        match next_phase(op.kind, rec.cluster_type, res.phase) {
            Some(next) => {
                op.phase = next;
                op.dispatch = 0;
                op.dispatched_at_ms = now;
                rec.operation = Some(op);
                touch(&mut rec);
                m.save(&rec, Some(rev)).await?;
                m.dispatch(&rec).await?;
            }
            None => self.finish(rec, rev, op).await?,
        }
        Ok(())
    }

    async fn finish(
        &self,
        mut rec: ClusterRecord,
        rev: u64,
        mut op: ksctl_core::records::OperationRecord,
    ) -> Result<(), HandlerError> {
        let m = &self.0;
        op.finished_at_ms = Some(now_ms());
        let secs = (op.finished_at_ms.unwrap_or(0).saturating_sub(op.started_at_ms)) as f64 / 1000.0;
        m.rt.metrics.inc("operations_total", &[("kind", op.kind.as_str()), ("outcome", "succeeded")]);
        m.rt.metrics.add("operation_seconds_total", &[("kind", op.kind.as_str())], secs);
        if op.kind == OpKind::Delete {
            // The controllers' records first, the cluster record last: a crash in between
            // leaves a record the redelivered result finishes deleting.
            for key in [
                keys::k8s(&rec.id),
                keys::bootstrap(&rec.id),
                keys::cloud(&rec.id),
                keys::outcome(&rec.id),
                keys::health(&rec.id),
            ] {
                m.rt.store.delete(&key).await.map_err(crate::ops::store_retry)?;
            }
            m.rt.store.delete(&keys::cluster(&rec.id)).await.map_err(crate::ops::store_retry)?;
            rec.operation = None;
            rec.last_operation = Some(op);
            m.event(&rec, EventKind::OperationSucceeded, format!("cluster {} deleted", rec.id)).await;
            return Ok(());
        }
        if let Some(t) = op.target_workers {
            match rec.cluster_type {
                ClusterType::Managed => rec.spec.managed_nodes = t,
                ClusterType::Selfmanaged => rec.spec.worker_nodes = t,
            }
        }
        // The spec is the desired state: it lists the addons that are enabled.
        match (op.kind, &op.addon) {
            (OpKind::AddonEnable, Some(a)) if !rec.spec.addons.contains(a) => rec.spec.addons.push(a.clone()),
            (OpKind::AddonDisable, Some(a)) => rec.spec.addons.retain(|x| x != a),
            _ => {}
        }
        // A stack is listed from its first accepted apply until it is deleted.
        if let (OpKind::AppsDelete, Some(stack)) = (op.kind, &op.app) {
            rec.apps.retain(|x| x != stack);
        }
        rec.state = ClusterState::Running;
        rec.operation = None;
        let kind = op.kind;
        rec.last_operation = Some(op);
        touch(&mut rec);
        m.save(&rec, Some(rev)).await?;
        m.event(&rec, EventKind::OperationSucceeded, format!("{kind} of cluster {} succeeded; it is running", rec.id))
            .await;
        Ok(())
    }
}
