//! The state store: one trait, two backends (Redis, NATS KV). Compare-and-swap on a revision for
//! every write, leases with a TTL for "one writer per cluster", and typed JSON helpers.

mod kv;
mod lease;
mod redis_store;
mod typed;

pub use kv::KvStore;
pub use lease::{Fence, Lease, LeaseOptions, current_fence};
pub use redis_store::RedisStore;
pub use typed::{get_json, modify, put_new};

use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// Someone else wrote the key since we read it; re-read and try again.
    #[error("key {0} changed since it was read")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored value under {key} is not valid: {message}")]
    Corrupt { key: String, message: String },
    /// The write was made under a lease its writer no longer holds (paused, partitioned, or
    /// too slow): refused, so a stale worker never overwrites its successor's state.
    #[error("write to {key} refused: lease {lease} is no longer held by this worker")]
    Fenced { key: String, lease: String },
}

impl StoreError {
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Conflict(_) | Self::Unavailable(_) | Self::Fenced { .. })
    }
}

/// A value with the revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub revision: u64,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Writes only if the key does not exist.
    async fn create(&self, key: &str, value: &[u8]) -> Result<u64, StoreError>;
    /// Writes only if the key is still at `revision`.
    async fn update(&self, key: &str, value: &[u8], revision: u64) -> Result<u64, StoreError>;
    /// Deletes; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Every live key exactly one level below `parent` (`parent.<leaf>`, leaf without dots),
    /// with its value.
    async fn children(&self, parent: &str) -> Result<Vec<(String, Versioned)>, StoreError>;
    /// Takes the lease `name` for `holder` if it is free or expired, or extends it if `holder`
    /// already has it. `true` when `holder` holds it afterwards.
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Gives the lease up if `holder` has it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
    /// Who holds the lease now, if anyone.
    async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError>;
}

pub type DynStore = Arc<dyn Store>;

/// The leaf and parent of a key: `a.b.c` → (`a.b`, `c`).
pub(crate) fn parent_of(key: &str) -> &str {
    key.rsplit_once('.').map(|(p, _)| p).unwrap_or("")
}
