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
use std::time::{Duration, Instant};
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
    /// When the lease was last taken or renewed, by the monotonic clock.
    renewed: Arc<std::sync::Mutex<Instant>>,
    ttl: Duration,
    renewer: JoinHandle<()>,
    released: bool,
}

/// The lease a write is made under: every store write in a task scoped with [`Fence::scope`]
/// lands only while `holder` still holds `lease` (checked by the store, atomically with the
/// write on Redis). The controller skeleton and the manager scope each leased piece of work, so
/// the providers' writes are fenced without passing the lease down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lease: String,
    pub holder: String,
}

tokio::task_local! {
    static FENCE: Fence;
}

impl Fence {
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        FENCE.scope(self, f).await
    }
}

/// The fence of the running task, if it works under a lease.
pub fn current_fence() -> Option<Fence> {
    FENCE.try_with(Fence::clone).ok()
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
        let taken = loop {
            // Taken before asking: the lease runs from no later than the store granted it.
            let asked = Instant::now();
            if store.try_lease(name, holder, opts.ttl).await? {
                break asked;
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        };
        trace("acquire", name, holder);
        let lost = Arc::new(AtomicBool::new(false));
        let renewed = Arc::new(std::sync::Mutex::new(taken));
        let renewer = {
            let (store, name, holder, lost, ttl, renewed) =
                (store.clone(), name.to_string(), holder.to_string(), lost.clone(), opts.ttl, renewed.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let asked = Instant::now();
                    match store.try_lease(&name, &holder, ttl).await {
                        Ok(true) => *renewed.lock().expect("not poisoned") = asked,
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
            renewed,
            ttl: opts.ttl,
            renewer,
            released: false,
        }))
    }

    /// True once another holder took the lease, or once the last good renewal is older than
    /// the TTL by this process's monotonic clock (a paused or partitioned holder must assume
    /// someone else has it): stop acting on the cluster.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || self.renewed.lock().expect("not poisoned").elapsed() >= self.ttl
    }

    /// The fence writes under this lease carry.
    pub fn fence(&self) -> Fence {
        Fence { lease: self.name.clone(), holder: self.holder.clone() }
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
