//! What every service binary shares: configuration (flags with an env var each), connecting to
//! the bus and the store, tracing, the health/metrics endpoint, the controller skeleton that
//! runs a phase under a cluster lease, and the simulated world of the `sim` provider.

pub mod config;
pub mod controller;
pub mod http;
/// The registry lives with the bus (its consumer loop counts messages); re-exported here.
pub use ksctl_bus::metrics;
pub mod sim;

pub use config::{ArtifactArgs, CommonArgs, Runtime, RuntimeError};
pub use controller::{
    FailedCommand, PhaseCtx, PhaseError, PhaseWorker, checkpoint, host_error, phase_record, read_record,
    run_controller, update_record,
};
pub use metrics::Metrics;

/// Installs the tracing subscriber: `RUST_LOG` filters (default `info`), `json` selects
/// structured logs with span fields (cluster_id, op_id, phase) on every line.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// A watch channel that turns true on SIGINT or SIGTERM.
pub fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        let _ = tx.send(true);
    });
    rx
}
