//! A held lease: renewed in the background while work goes on; `lost()` tells the worker to stop
//! if renewal failed (another replica may take over after the TTL).
use crate::{DynStore, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct LeaseOptions {
    pub ttl: Duration,
    /// How long to keep trying to take a lease someone else holds before giving up.
    pub wait: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(15), wait: Duration::from_secs(2) }
    }
}

pub struct Lease {
    store: DynStore,
    name: String,
    holder: String,
    lost: Arc<AtomicBool>,
    renewer: JoinHandle<()>,
}

impl Lease {
    /// Takes the lease, waiting up to `opts.wait`. `None`: someone else holds it.
    pub async fn acquire(
        store: &DynStore,
        name: &str,
        holder: &str,
        opts: &LeaseOptions,
    ) -> Result<Option<Lease>, StoreError> {
        let deadline = tokio::time::Instant::now() + opts.wait;
        let mut pause = Duration::from_millis(20);
        loop {
            if store.try_lease(name, holder, opts.ttl).await? {
                break;
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (store, name, holder, lost, ttl) =
                (store.clone(), name.to_string(), holder.to_string(), lost.clone(), opts.ttl);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store.try_lease(&name, &holder, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(lease = %name, "lease lost to another holder");
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(lease = %name, error = %e, "lease renewal failed; retrying")
                        }
                    }
                }
            })
        };
        Ok(Some(Lease { store: store.clone(), name: name.into(), holder: holder.into(), lost, renewer }))
    }

    /// True once another holder took the lease: stop acting on the cluster.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub async fn release(self) {
        self.renewer.abort();
        if let Err(e) = self.store.release_lease(&self.name, &self.holder).await {
            tracing::warn!(lease = %self.name, error = %e, "lease not released; it will expire");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
