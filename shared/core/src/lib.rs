//! Types every ksctl-rs service shares: ids, the cluster spec and its validation, the cluster
//! state machine, the saga plan, bus messages, store records, sealed secrets, kubeconfigs, and
//! the retry and poll policies. Pure: no I/O.

pub mod addons;
pub mod apps;
pub mod artifacts;
pub mod backoff;
pub mod ids;
pub mod json;
pub mod keys;
pub mod kubeconfig;
pub mod messages;
pub mod net;
pub mod records;
pub mod saga;
pub mod seal;
pub mod spec;
pub mod state;
pub mod vocab;

pub use ids::{ClusterId, OperationId};

/// Milliseconds since the Unix epoch; every timestamp in records and events uses it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
