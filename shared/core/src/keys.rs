//! Store keys, one per entity, so writers of different entities never contend. Keys use `.` as
//! the separator because both backends (Redis, NATS KV) accept it and KV can filter on it.
use crate::ClusterId;

/// The manager's record of a cluster: spec, state, active operation. Also the name of the
/// cluster's lease, which every worker holds while it acts on the cluster (leases live apart
/// from records in both stores).
pub fn cluster(id: &ClusterId) -> String {
    format!("cluster.{id}")
}
pub const CLUSTER_PREFIX: &str = "cluster.";
/// Infrastructure owned by the cloud-controller.
pub fn cloud(id: &ClusterId) -> String {
    format!("cloud.{id}")
}
/// Bootstrap checkpoints and secrets owned by the bootstrap-controller.
pub fn bootstrap(id: &ClusterId) -> String {
    format!("bootstrap.{id}")
}
/// In-cluster component checkpoints owned by the k8s-controller.
pub fn k8s(id: &ClusterId) -> String {
    format!("k8s.{id}")
}
/// One application stack of a cluster ([`crate::records::AppRecord`]): written by the manager
/// when an apply is accepted (the desired manifests, sealed), its inventory by the k8s-controller.
pub fn app(id: &ClusterId, stack: &str) -> String {
    format!("{}.{stack}", apps(id))
}
/// The parent of a cluster's application-stack records (for `Store::children`).
pub fn apps(id: &ClusterId) -> String {
    format!("app.{id}")
}
/// The cluster a per-cluster key (`<kind>.<cluster>`: a record, a lease) belongs to.
pub fn cluster_of(key: &str) -> Option<ClusterId> {
    key.split_once('.').and_then(|(_, id)| ClusterId::new(id).ok())
}
/// The outcome of the last phase a controller finished for the cluster (a `PhaseResult`),
/// written before the result is published: a command repeated for a finished phase (the
/// reconciler re-dispatched it while the result waited in the queue) re-publishes that outcome
/// instead of running the phase again.
pub fn outcome(id: &ClusterId) -> String {
    format!("outcome.{id}")
}
/// The newest agent heartbeat, written by the manager.
pub fn health(id: &ClusterId) -> String {
    format!("health.{id}")
}
/// NATS users revoked before they expire ([`crate::records::Revocations`]), one record for the
/// whole bus: every account JWT is made from it.
pub const NATS_REVOCATIONS: &str = "nats.revocations";
/// The lease that makes one manager replica at a time run the reconciler.
pub const RECONCILER_LEASE: &str = "reconciler";
/// Resources of the simulated provider for one cluster (`sim.<cluster>.<resource id>`).
pub fn sim_prefix(id: &ClusterId) -> String {
    format!("sim.{id}.")
}
