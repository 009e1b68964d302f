//! bootstrap-controller: turns VMs into a Kubernetes cluster (HAProxy load balancer, TLS etcd,
//! k3s or kubeadm). Host access sits behind [`Bootstrapper`]; this build has the `sim` hosts
//! (SSH for real hosts slots in beside it).

pub mod plan;
pub mod sim_hosts;

use clap::Parser;
use ksctl_core::saga::{Phase, Service};
use ksctl_core::spec::Provider;
use ksctl_runtime::{CommonArgs, PhaseCtx, PhaseError, PhaseWorker, RuntimeError};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Parser)]
#[command(name = "ksctl-bootstrap-controller", about = "ksctl-rs bootstrap-controller: HAProxy, etcd, k3s/kubeadm")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
}

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
            PhaseError::Permanent(format!("provider {provider} has no host bootstrapper in this bootstrap-controller"))
        })?;
        match ctx.cmd.phase {
            Phase::Bootstrap => b.bootstrap(ctx).await,
            Phase::BootstrapJoin => b.join(ctx).await,
            other => Err(PhaseError::Permanent(format!("bootstrap-controller does not run phase {other}"))),
        }
    }
}

pub async fn run(config: Config, shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), RuntimeError> {
    let rt = config.common.connect("bootstrap-controller").await?;
    let sim_cfg = ksctl_runtime::sim::SimConfig::from_env().map_err(RuntimeError::Config)?;
    let mut providers: HashMap<Provider, Arc<dyn Bootstrapper>> = HashMap::new();
    providers.insert(Provider::Sim, Arc::new(sim_hosts::SimHosts::new(rt.store.clone(), sim_cfg)));
    ksctl_runtime::run_controller(rt, Service::Bootstrap, Arc::new(BootstrapWorker { providers }), shutdown).await
}
