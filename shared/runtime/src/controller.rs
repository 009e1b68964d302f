//! The skeleton every controller runs: take the cluster lease, check the command still matches
//! the operation the manager recorded, run the phase with progress acks, publish the result,
//! release the lease, ack. The phase itself is a [`PhaseWorker`].
use crate::config::Runtime;
use ksctl_bus::subjects::{durable_consumer, service_consumer, service_stream};
use ksctl_bus::{Envelope, Handler, HandlerError};
use ksctl_core::keys;
use ksctl_core::messages::{Command, Event, EventKind, PhaseResult};
use ksctl_core::records::{ClusterRecord, PhaseRecord};
use ksctl_core::saga::Service;
use ksctl_store::{Lease, get_json};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tracing::Instrument;

/// Why a phase did not finish: transient (store or cloud unavailable, throttled, lease lost;
/// retried with backoff) or permanent (the phase cannot succeed as asked; the operation fails
/// with this reason). The typed error underneath, when there is one, is kept as its `source`.
#[derive(Debug)]
pub struct PhaseError {
    retryable: bool,
    text: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl PhaseError {
    /// A transient failure, retried.
    pub fn retryable(text: String) -> Self {
        Self { retryable: true, text, source: None }
    }

    /// A failure retrying cannot mend.
    pub fn permanent(text: String) -> Self {
        Self { retryable: false, text, source: None }
    }

    /// `e` as a phase error (its text), kept as the source; `retryable` as the caller judges it.
    pub fn caused_by(retryable: bool, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self { retryable, text: e.to_string(), source: Some(Box::new(e)) }
    }

    /// `<what>: <e>`, with `e` kept as the source.
    pub fn context(
        retryable: bool,
        what: impl std::fmt::Display,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::with_source(retryable, format!("{what}: {e}"), e)
    }

    /// `text` (which says what `e` means), with `e` kept as the source.
    pub fn with_source(retryable: bool, text: String, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self { retryable, text, source: Some(Box::new(e)) }
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    pub fn is_permanent(&self) -> bool {
        !self.retryable
    }

    /// What happened, as users and events see it.
    pub fn message(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for PhaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for PhaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<ksctl_store::StoreError> for PhaseError {
    fn from(e: ksctl_store::StoreError) -> Self {
        Self::caused_by(e.retryable(), e)
    }
}

impl From<ksctl_core::seal::SealError> for PhaseError {
    fn from(e: ksctl_core::seal::SealError) -> Self {
        Self::caused_by(false, e)
    }
}

/// What a command that ran on a host and failed means for the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedCommand {
    /// Try the phase again: a bootstrap step fails while a host is still booting, apt holds a
    /// lock or a peer is not up yet. Redelivery is bounded, then the operation fails with it.
    Retry,
    /// The host is not fit (no passwordless sudo, a missing tool): trying again cannot help.
    Fail,
}

/// A host's SSH failure as a phase error naming the host (`who`) and what to do about it.
pub fn host_error(who: &str, e: ksctl_ssh::SshError, failed: FailedCommand) -> PhaseError {
    let retry = match e {
        ksctl_ssh::SshError::Failed { .. } => failed == FailedCommand::Retry,
        ref e => e.retryable(),
    };
    PhaseError::with_source(retry, format!("host {who}: {e}{}", e.hint()), e)
}

/// What a phase sees: the command, the manager's record of the cluster, and a way to report.
pub struct PhaseCtx<'a> {
    pub rt: &'a Runtime,
    pub cmd: &'a Command,
    pub cluster: &'a ClusterRecord,
    env: &'a Envelope,
}

impl PhaseCtx<'_> {
    /// The worker count the scale operation being run asks for.
    pub fn target_workers(&self) -> Result<u32, PhaseError> {
        self.cluster
            .operation
            .as_ref()
            .and_then(|o| o.target_workers)
            .ok_or_else(|| PhaseError::permanent("scale operation without a target worker count".into()))
    }

    /// Reports a finished step: an event for watchers and an in-progress ack for the server.
    pub async fn progress(&self, step: impl Into<String>, done: u32, total: u32) {
        let step = step.into();
        tracing::debug!(%step, done, total, "step done");
        self.rt
            .publisher
            .event(
                Event::new(self.cluster.id.as_str(), EventKind::Progress, format!("{step} ({done}/{total})"))
                    .op(&self.cmd.op_id)
                    .phase(self.cmd.phase)
                    .step(step, done, total),
            )
            .await;
        self.env.progress().await;
    }
}

#[async_trait::async_trait]
pub trait PhaseWorker: Send + Sync + 'static {
    /// Runs `ctx.cmd.phase` to completion. Must be idempotent: it may run again after a crash,
    /// and must then resume from its checkpoints and create nothing twice.
    async fn run(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
}

/// How long a command waits (with in-progress acks, so no delivery is spent) for a cluster
/// leased by other work before it is put back.
const CONTENTION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

struct CommandHandler {
    rt: Runtime,
    worker: Arc<dyn PhaseWorker>,
}

#[async_trait::async_trait]
impl Handler for CommandHandler {
    async fn handle(&self, env: &Envelope) -> Result<(), HandlerError> {
        let cmd: Command = match serde_json::from_slice(env.payload()) {
            Ok(c) => c,
            Err(e) => {
                // Nobody can act on it; it names no operation we could fail.
                self.rt.metrics.inc("messages_rejected_total", &[("service", self.rt.service)]);
                return Err(HandlerError::Permanent(format!("undecodable command on {}: {e}", env.subject())));
            }
        };
        let span = tracing::info_span!("phase", cluster_id = %cmd.cluster_id, op_id = %cmd.op_id, phase = %cmd.phase, delivered = env.delivered());
        self.handle_command(env, &cmd).instrument(span).await
    }
}

impl CommandHandler {
    async fn handle_command(&self, env: &Envelope, cmd: &Command) -> Result<(), HandlerError> {
        let rt = &self.rt;
        let svc = rt.service;
        let lease_name = keys::cluster(&cmd.cluster_id);
        // The holder names the phase it runs, so a second dispatch of it can tell.
        let holder = format!("{}@{}:{}", rt.replica, cmd.op_id, cmd.phase);
        let give_up = std::time::Instant::now() + CONTENTION_PATIENCE;
        let lease = loop {
            if let Some(l) = Lease::acquire(&rt.store, &lease_name, &holder, &rt.lease).await.map_err(store_retry)? {
                break l;
            }
            rt.metrics.inc("lease_contention_total", &[("service", svc)]);
            // Contention is not a failure. The same phase of the same operation running
            // elsewhere (the reconciler re-dispatched it, or a redelivery crossed a slow
            // holder) is a duplicate: dropped, the holder reports. Anyone else (the manager
            // recording a result) is waited out without spending deliveries.
            let current = rt.store.lease_holder(&lease_name).await.map_err(store_retry)?.unwrap_or_default();
            if current.contains(&format!("@{}:{}/", cmd.op_id, cmd.phase)) {
                tracing::info!(holder = %current, "the phase runs elsewhere; dropping this dispatch");
                rt.metrics.inc("dispatches_dropped_total", &[("service", svc)]);
                return Ok(());
            }
            if std::time::Instant::now() > give_up {
                return Err(HandlerError::retry(format!("cluster {} stayed leased by {current}", cmd.cluster_id)));
            }
            env.progress().await;
        };
        let outcome = lease.fence().scope(self.run_leased(env, cmd, &lease)).await;
        lease.release().await;
        outcome
    }

    async fn run_leased(&self, env: &Envelope, cmd: &Command, lease: &Lease) -> Result<(), HandlerError> {
        let rt = &self.rt;
        let svc = rt.service;
        let record =
            get_json::<ClusterRecord>(rt.store.as_ref(), &keys::cluster(&cmd.cluster_id)).await.map_err(store_retry)?;
        let Some((cluster, _)) = record else {
            tracing::info!("cluster no longer exists; dropping command");
            return Ok(());
        };
        let current = cluster.operation.as_ref().is_some_and(|op| op.id == cmd.op_id && op.phase == cmd.phase);
        if !current {
            tracing::info!("stale command: the operation has moved on; dropping it");
            rt.metrics.inc("messages_stale_total", &[("service", svc)]);
            return Ok(());
        }
        let outcome_key = keys::outcome(&cmd.cluster_id);
        let finished = get_json::<PhaseResult>(rt.store.as_ref(), &outcome_key).await.map_err(store_retry)?;
        if let Some((done, _)) = finished.filter(|(r, _)| r.op_id == cmd.op_id && r.phase == cmd.phase) {
            tracing::info!("phase already finished; publishing its result again instead of running it");
            rt.metrics.inc("phases_already_done_total", &[("service", svc)]);
            rt.publisher.result(&done).await?;
            return Ok(());
        }
        rt.metrics.inc("phases_started_total", &[("service", svc), ("phase", cmd.phase.as_str())]);
        rt.publisher
            .event(
                Event::new(
                    cmd.cluster_id.as_str(),
                    EventKind::PhaseStarted,
                    format!("{} started on {}", cmd.phase, rt.replica),
                )
                .op(&cmd.op_id)
                .phase(cmd.phase),
            )
            .await;
        let started = std::time::Instant::now();
        let ctx = PhaseCtx { rt, cmd, cluster: &cluster, env };
        let work = self.worker.run(&ctx);
        tokio::pin!(work);
        let mut tick = tokio::time::interval(rt.bus.ack_wait / 3);
        tick.tick().await;
        let outcome = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = tick.tick() => {
                    if lease.lost() {
                        break Err(PhaseError::retryable("lost the cluster lease mid-phase".into()));
                    }
                    env.progress().await;
                }
            }
        };
        rt.metrics.observe(
            "phase_duration_seconds",
            &[("service", svc), ("phase", cmd.phase.as_str())],
            started.elapsed().as_secs_f64(),
        );
        let error = match outcome {
            Ok(()) => None,
            Err(e) if e.is_retryable() && (env.delivered() < rt.bus.max_deliver || rt.bus.max_deliver <= 0) => {
                rt.metrics.inc("phases_retried_total", &[("service", svc), ("phase", cmd.phase.as_str())]);
                tracing::warn!(error = %e, "phase failed; it will be retried");
                let reason = e.to_string();
                rt.publisher
                    .event(
                        Event::new(
                            cmd.cluster_id.as_str(),
                            EventKind::Retrying,
                            format!("{}: {reason}; retrying", cmd.phase),
                        )
                        .op(&cmd.op_id)
                        .phase(cmd.phase),
                    )
                    .await;
                return Err(HandlerError::retry(reason));
            }
            Err(e) if e.is_retryable() => Some(format!("{e} (gave up after {} attempts)", env.delivered())),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = &error {
            tracing::warn!(error = %e, "phase failed");
        }
        let kind = if error.is_some() { EventKind::PhaseFailed } else { EventKind::PhaseSucceeded };
        let result = PhaseResult {
            op_id: cmd.op_id.clone(),
            cluster_id: cmd.cluster_id.clone(),
            phase: cmd.phase,
            error: error.clone(),
        };
        ksctl_store::modify::<PhaseResult, _, std::convert::Infallible>(rt.store.as_ref(), &outcome_key, |_| {
            Ok(Some(result.clone()))
        })
        .await
        .map_err(store_retry)?
        .unwrap_or_else(|never| match never {});
        rt.publisher.result(&result).await?;
        let msg = match &error {
            Some(e) => format!("{} failed: {e}", cmd.phase),
            None => format!("{} succeeded", cmd.phase),
        };
        rt.metrics.inc(
            if error.is_some() { "phases_failed_total" } else { "phases_succeeded_total" },
            &[("service", svc), ("phase", cmd.phase.as_str())],
        );
        rt.publisher.event(Event::new(cmd.cluster_id.as_str(), kind, msg).op(&cmd.op_id).phase(cmd.phase)).await;
        Ok(())
    }
}

fn store_retry(e: ksctl_store::StoreError) -> HandlerError {
    HandlerError::retry(e.to_string())
}

/// Runs a controller until `shutdown`: binds the service's durable consumer and hands every
/// command to `worker`.
pub async fn run_controller(
    rt: Runtime,
    service: Service,
    worker: Arc<dyn PhaseWorker>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), crate::RuntimeError> {
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = &rt.http_addr {
        crate::http::serve(addr, rt.metrics.clone(), ready.clone())
            .await
            .map_err(|e| crate::RuntimeError::Config(format!("binding {addr}: {e}")))?;
    }
    let consumer =
        durable_consumer(&rt.publisher.js, service_stream(service), service_consumer(service), &rt.bus, 10_000).await?;
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::info!(replica = %rt.replica, "{} ready", rt.service);
    let handler = Arc::new(CommandHandler { rt: rt.clone(), worker });
    ksctl_bus::run_consumer(service_consumer(service), consumer, handler, rt.worker.clone(), shutdown).await?;
    Ok(())
}

/// Reads a controller-owned record, or its default when none exists yet.
pub async fn read_record<T: serde::de::DeserializeOwned + Default>(
    store: &ksctl_store::DynStore,
    key: &str,
) -> Result<T, PhaseError> {
    Ok(get_json(store.as_ref(), key).await?.map(|(r, _)| r).unwrap_or_default())
}

/// The cluster's record of type `R` (its default if none was written).
pub async fn phase_record<R: PhaseRecord>(store: &ksctl_store::DynStore, ctx: &PhaseCtx<'_>) -> Result<R, PhaseError> {
    read_record(store, &R::key(&ctx.cluster.id)).await
}

/// Checkpoints into the cluster's record of type `R`; returns what was written.
pub async fn checkpoint<R: PhaseRecord>(
    store: &ksctl_store::DynStore,
    ctx: &PhaseCtx<'_>,
    f: impl Fn(&mut R) + Send,
) -> Result<R, PhaseError> {
    update_record(store, &R::key(&ctx.cluster.id), f).await
}

/// Checkpoints into a controller-owned record (created from its default), with compare-and-swap.
pub async fn update_record<T>(
    store: &ksctl_store::DynStore,
    key: &str,
    f: impl Fn(&mut T) + Send,
) -> Result<T, PhaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Default + Clone + Send,
{
    let out = ksctl_store::modify(store.as_ref(), key, |cur: Option<T>| {
        let mut r = cur.unwrap_or_default();
        f(&mut r);
        Ok::<_, std::convert::Infallible>(Some(r))
    })
    .await?;
    Ok(out.expect("infallible").expect("written"))
}
