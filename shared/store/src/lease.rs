//! A held lease: renewed in the background while work goes on; `lost()` tells the worker to stop
//! if renewal failed (another replica may take over after the TTL).
//!
//! Each acquisition holds the lease under its own token (`<holder>/<random>`), so two tasks of
//! one replica exclude each other like two replicas do. With `KSCTL_LEASE_TRACE=<file>` every
//! acquisition and release is appended to that file (`<unix ns> acquire|release <name>
//! <token>`), which the contention tests check for overlaps.
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
    released: bool,
}

impl Lease {
    /// Takes the lease, waiting up to `opts.wait`. `None`: someone else holds it.
    pub async fn acquire(
        store: &DynStore,
        name: &str,
        holder: &str,
        opts: &LeaseOptions,
    ) -> Result<Option<Lease>, StoreError> {
        let holder = &format!("{holder}/{:016x}", fastrand::u64(..));
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
        trace("acquire", name, holder);
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
        Ok(Some(Lease {
            store: store.clone(),
            name: name.into(),
            holder: holder.into(),
            lost,
            renewer,
            released: false,
        }))
    }

    /// True once another holder took the lease: stop acting on the cluster.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The token this acquisition holds the lease under (`<holder>/<random>`).
    pub fn token(&self) -> &str {
        &self.holder
    }

    pub async fn release(mut self) {
        self.released = true;
        self.renewer.abort();
        // Traced before the store lets go, so a trace never shows the next holder first.
        trace("release", &self.name, &self.holder);
        if let Err(e) = self.store.release_lease(&self.name, &self.holder).await {
            tracing::warn!(lease = %self.name, error = %e, "lease not released; it will expire");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Dropped without `release` (an early return): the holder stops here, the lease itself
        // expires after its TTL.
        if !self.released {
            trace("drop", &self.name, &self.holder);
        }
        self.renewer.abort();
    }
}

/// Appends one line to `KSCTL_LEASE_TRACE` when set (one `write` per line, `O_APPEND`, so lines
/// of concurrent processes do not interleave).
fn trace(what: &str, name: &str, token: &str) {
    use std::io::Write;
    let Some(path) = std::env::var_os("KSCTL_LEASE_TRACE") else { return };
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let line = format!("{ns} {what} {name} {token}\n");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(line.as_bytes());
    }
}
