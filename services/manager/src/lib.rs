//! manager: validates requests, owns the cluster state machine, and orchestrates every operation
//! as a saga of phases on the controllers. Also answers queries and runs the reconciler.

mod dead;
mod health;
mod ops;
mod queries;
mod reconciler;
mod requests;
pub mod reseal;
mod results;

use clap::Parser;
use ksctl_bus::subjects::{
    DEAD_STREAM, MANAGER_DEAD_CONSUMER, MANAGER_REQUESTS_CONSUMER, MANAGER_RESULTS_CONSUMER, REQUESTS_STREAM,
    RESULTS_STREAM, durable_consumer,
};
use ksctl_core::spec::Provider;
use ksctl_runtime::{CommonArgs, Runtime, RuntimeError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(name = "ksctl-manager", about = "ksctl-rs manager: requests, state machine, sagas, queries")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Providers this control plane accepts requests for (comma-separated).
    #[arg(long, env = "KSCTL_PROVIDERS", default_value = "sim", value_delimiter = ',')]
    pub providers: Vec<String>,
    /// Seconds between reconciler passes (one manager replica at a time runs them).
    #[arg(long, env = "KSCTL_RECONCILE_INTERVAL_SECS", default_value_t = 10)]
    pub reconcile_interval_secs: u64,
    /// Seconds a dispatched phase may go without a result, while no worker holds the cluster's
    /// lease, before the reconciler dispatches it again.
    #[arg(long, env = "KSCTL_PHASE_TIMEOUT_SECS", default_value_t = 300)]
    pub phase_timeout_secs: u64,
    /// Re-dispatches of a silent phase before the operation fails with the reason.
    #[arg(long, env = "KSCTL_MAX_REDISPATCH", default_value_t = 5)]
    pub max_redispatch: u32,
    /// Queries (and heartbeats) this replica answers at once; more wait their turn.
    #[arg(long, env = "KSCTL_MAX_QUERIES", default_value_t = 64)]
    pub max_queries: usize,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Cmd {
    /// After a seal-key rotation (the new key first in KSCTL_SEAL_KEY_FILE, the old ones after
    /// it): seal every stored secret again under the new key, then exit. Safe to run while the
    /// services work, and again.
    Reseal,
}

/// `ksctl-manager reseal`.
pub async fn reseal(config: Config) -> Result<crate::reseal::Resealed, RuntimeError> {
    let rt = config.common.connect("manager").await?;
    let done = crate::reseal::run(&rt.store, &rt.sealer).await?;
    tracing::info!(moved = done.moved, current = done.current, key = %rt.sealer.key_id(), "secrets sealed under the first key");
    Ok(done)
}

/// What the manager's handlers share.
#[derive(Clone)]
pub struct Manager {
    pub rt: Runtime,
    pub providers: Vec<Provider>,
    pub phase_timeout: Duration,
    pub max_redispatch: u32,
    /// Bounds the queries and heartbeats handled at once.
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

pub async fn run(config: Config, shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), RuntimeError> {
    let mut providers = Vec::new();
    for p in &config.providers {
        providers.push(
            Provider::parse(p.trim())
                .ok_or_else(|| RuntimeError::Config(format!("KSCTL_PROVIDERS: unknown provider {p:?}")))?,
        );
    }
    let rt = config.common.connect("manager").await?;
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = &rt.http_addr {
        ksctl_runtime::http::serve(addr, rt.metrics.clone(), ready.clone())
            .await
            .map_err(|e| RuntimeError::Config(format!("binding {addr}: {e}")))?;
    }
    let m = Manager {
        rt: rt.clone(),
        providers,
        phase_timeout: Duration::from_secs(config.phase_timeout_secs),
        max_redispatch: config.max_redispatch,
        in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_queries.max(1))),
    };
    let requests =
        durable_consumer(&rt.publisher.js, REQUESTS_STREAM, MANAGER_REQUESTS_CONSUMER, &rt.bus, 10_000).await?;
    let results = durable_consumer(&rt.publisher.js, RESULTS_STREAM, MANAGER_RESULTS_CONSUMER, &rt.bus, 10_000).await?;
    let dead = durable_consumer(&rt.publisher.js, DEAD_STREAM, MANAGER_DEAD_CONSUMER, &rt.bus, 10_000).await?;
    let queries = queries::start(m.clone()).await?;
    let heartbeats = health::start(m.clone()).await?;
    let reconciler = tokio::spawn(reconciler::run(
        m.clone(),
        Duration::from_secs(config.reconcile_interval_secs.max(1)),
        shutdown.clone(),
    ));
    ready.store(true, Ordering::SeqCst);
    tracing::info!(replica = %rt.replica, "manager ready");
    let (a, b, c) = tokio::join!(
        ksctl_bus::run_consumer(
            "manager-requests",
            requests,
            Arc::new(requests::RequestHandler(m.clone())),
            rt.worker.clone(),
            shutdown.clone()
        ),
        ksctl_bus::run_consumer(
            "manager-results",
            results,
            Arc::new(results::ResultHandler(m.clone())),
            rt.worker.clone(),
            shutdown.clone()
        ),
        ksctl_bus::run_consumer(
            "manager-dead",
            dead,
            Arc::new(dead::DeadHandler(m.clone())),
            rt.worker.clone(),
            shutdown.clone()
        ),
    );
    queries.abort();
    heartbeats.abort();
    reconciler.abort();
    a?;
    b?;
    c?;
    Ok(())
}
