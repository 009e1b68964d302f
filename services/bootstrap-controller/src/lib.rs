//! bootstrap-controller: turns VMs into a Kubernetes cluster (HAProxy load balancer, TLS etcd,
//! k3s or kubeadm). Host access sits behind [`Bootstrapper`]: real hosts over SSH for `byo` and
//! `aws`, simulated ones for `sim`.

pub mod kubeadm;
mod kubeadm_config;
pub mod pki;
pub mod plan;
pub mod scripts;
pub mod sim_hosts;
pub mod ssh_hosts;

use clap::Parser;
use ksctl_core::saga::{Phase, Service};
use ksctl_core::spec::Provider;
use ksctl_runtime::{ArtifactArgs, CommonArgs, PhaseCtx, PhaseError, PhaseWorker, RuntimeError};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Parser)]
#[command(name = "ksctl-bootstrap-controller", about = "ksctl-rs bootstrap-controller: HAProxy, etcd, k3s/kubeadm")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub artifacts: ArtifactArgs,
    /// Hosts one bootstrap works on at once within a wave (SSH sessions per cluster).
    #[arg(long, env = "KSCTL_BOOTSTRAP_PARALLEL_HOSTS", default_value_t = PARALLEL_HOSTS)]
    pub parallel_hosts: usize,
    /// Seconds one SSH connection attempt may take (TCP and handshake).
    #[arg(long, env = "KSCTL_SSH_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub ssh_connect_timeout_secs: u64,
    /// SSH connection attempts per host step (with backoff) before the phase is retried.
    #[arg(long, env = "KSCTL_SSH_CONNECT_ATTEMPTS", default_value_t = 4)]
    pub ssh_connect_attempts: u32,
}

/// Hosts of one wave worked on at once, unless configured.
pub const PARALLEL_HOSTS: usize = 16;

#[async_trait::async_trait]
pub trait Bootstrapper: Send + Sync {
    /// Bootstraps every host of a new cluster, following [`plan::bootstrap_waves`].
    async fn bootstrap(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
    /// Joins workers that have not joined yet.
    async fn join(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
}

struct BootstrapWorker {
    providers: HashMap<Provider, Arc<dyn Bootstrapper>>,
}

#[async_trait::async_trait]
impl PhaseWorker for BootstrapWorker {
    async fn run(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let provider = ctx.cluster.provider;
        let b = self.providers.get(&provider).ok_or_else(|| {
            PhaseError::permanent(format!("provider {provider} has no host bootstrapper in this bootstrap-controller"))
        })?;
        match ctx.cmd.phase {
            Phase::Bootstrap => b.bootstrap(ctx).await,
            Phase::BootstrapJoin => b.join(ctx).await,
            other => Err(PhaseError::permanent(format!("bootstrap-controller does not run phase {other}"))),
        }
    }
}

/// Runs one wave's host steps in parallel, skipping those already checkpointed, reporting
/// progress; `step` runs a step and checkpoints it. Every step is tried; the first failure is
/// returned.
pub(crate) async fn run_wave<F, Fut>(
    store: &ksctl_store::DynStore,
    ctx: &PhaseCtx<'_>,
    wave: Vec<plan::HostStep>,
    done: &std::sync::atomic::AtomicU32,
    total: u32,
    parallel: usize,
    step: F,
) -> Result<(), PhaseError>
where
    F: Fn(plan::HostStep) -> Fut,
    Fut: std::future::Future<Output = Result<(), PhaseError>>,
{
    use futures::StreamExt;
    use std::sync::atomic::Ordering;
    let finished = ksctl_runtime::phase_record::<ksctl_core::records::BootstrapRecord>(store, ctx).await?.steps_done;
    let (skip, todo): (Vec<_>, Vec<_>) = wave.into_iter().partition(|s| finished.contains(&s.key()));
    done.fetch_add(skip.len() as u32, Ordering::SeqCst);
    let results: Vec<Result<(), PhaseError>> = futures::stream::iter(todo)
        .map(|s| {
            let what = format!("{} on {}", s.step, s.host.name);
            let run = step(s);
            async move {
                run.await?;
                ctx.progress(what, done.fetch_add(1, Ordering::SeqCst) + 1, total).await;
                Ok(())
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

pub async fn run(config: Config, shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), RuntimeError> {
    let artifacts = config.artifacts.artifacts().map_err(RuntimeError::Config)?;
    let rt = config.common.connect("bootstrap-controller").await?;
    let sim_cfg = ksctl_runtime::sim::SimConfig::from_env().map_err(RuntimeError::Config)?;
    let mut providers: HashMap<Provider, Arc<dyn Bootstrapper>> = HashMap::new();
    providers.insert(Provider::Sim, Arc::new(sim_hosts::SimHosts::new(rt.store.clone(), sim_cfg)));
    let ssh: Arc<dyn Bootstrapper> = Arc::new(ssh_hosts::SshHosts::new(
        rt.store.clone(),
        artifacts,
        ssh_hosts::Settings {
            parallel: config.parallel_hosts,
            connect_timeout: std::time::Duration::from_secs(config.ssh_connect_timeout_secs),
            connect_attempts: config.ssh_connect_attempts.max(1),
        },
    ));
    providers.insert(Provider::Byo, ssh.clone());
    providers.insert(Provider::Azure, ssh.clone());
    providers.insert(Provider::Aws, ssh);
    ksctl_runtime::run_controller(rt, Service::Bootstrap, Arc::new(BootstrapWorker { providers }), shutdown).await
}
