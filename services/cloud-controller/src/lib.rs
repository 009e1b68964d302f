//! cloud-controller: creates, scales and deletes a cluster's infrastructure. Providers sit behind
//! [`CloudProvider`]: `sim`, `aws` (EC2 and EKS), `local` (kind) and `byo` (hosts the user has).

pub mod aws;
pub mod byo;
pub mod firewall;
pub mod kind;
pub mod kubeconfig_query;
pub mod sim_cloud;

use clap::Parser;
use ksctl_core::keys;
use ksctl_core::records::{ClusterRecord, InfraRecord};
use ksctl_core::saga::{Phase, Service};
use ksctl_core::spec::Provider;
use ksctl_runtime::{CommonArgs, PhaseCtx, PhaseError, PhaseWorker, RuntimeError, read_record, update_record};
use ksctl_store::DynStore;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Parser)]
#[command(name = "ksctl-cloud-controller", about = "ksctl-rs cloud-controller: cluster infrastructure")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    /// AWS: AMI for every VM instead of the newest Ubuntu 24.04 image from Canonical.
    #[arg(long, env = "KSCTL_AWS_AMI")]
    pub aws_ami: Option<String>,
    /// AWS: client-side token buckets per region, `describe=100/20,mutate=200/5,run=50/5`
    /// (burst/refill per second; EC2's published figures are the default), or `off`.
    /// They hold per replica: with N replicas on one account, divide by N.
    #[arg(long, env = "KSCTL_AWS_RATE_LIMITS", default_value = "")]
    pub aws_rate_limits: String,
    /// byo: directory holding the SSH private keys that requests name in `hosts.ssh_key`.
    #[arg(long, env = "KSCTL_BYO_KEYS_DIR", default_value = "/etc/ksctl/byo-keys")]
    pub byo_keys_dir: std::path::PathBuf,
    /// local: the kind binary.
    #[arg(long, env = "KSCTL_KIND_BIN", default_value = "kind")]
    pub kind_bin: std::path::PathBuf,
    /// local: the docker binary (its engine must answer).
    #[arg(long, env = "KSCTL_DOCKER_BIN", default_value = "docker")]
    pub docker_bin: std::path::PathBuf,
}

/// One cloud. Every method is idempotent: it looks resources up by tag before creating them,
/// checkpoints each id into the cluster's [`InfraRecord`] right after creating it, and treats
/// "not found" as done when deleting.
#[async_trait::async_trait]
pub trait CloudProvider: Send + Sync {
    async fn create(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
    async fn delete(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
    /// Grows the workers (or the managed node pool) to the operation's target.
    async fn scale_up(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
    /// Removes the highest-index workers down to the operation's target.
    async fn scale_down(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
    /// A freshly minted kubeconfig, for clouds whose credentials expire (EKS tokens last 15
    /// minutes); `None` when the one sealed in state stays valid.
    async fn fresh_kubeconfig(&self, _cluster: &ClusterRecord) -> Result<Option<String>, PhaseError> {
        Ok(None)
    }
}

type Providers = HashMap<Provider, Arc<dyn CloudProvider>>;

struct CloudWorker {
    providers: Arc<Providers>,
}

#[async_trait::async_trait]
impl PhaseWorker for CloudWorker {
    async fn run(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let provider = ctx.cluster.provider;
        let p = self.providers.get(&provider).ok_or_else(|| {
            PhaseError::Permanent(format!("provider {provider} is not available in this cloud-controller"))
        })?;
        match ctx.cmd.phase {
            Phase::CloudCreate => p.create(ctx).await,
            Phase::CloudDelete => p.delete(ctx).await,
            Phase::CloudScaleUp => p.scale_up(ctx).await,
            Phase::CloudScaleDown => p.scale_down(ctx).await,
            other => Err(PhaseError::Permanent(format!("cloud-controller does not run phase {other}"))),
        }
    }
}

/// Checkpoints into the cluster's infrastructure record.
pub async fn checkpoint(
    store: &DynStore,
    ctx: &PhaseCtx<'_>,
    f: impl Fn(&mut InfraRecord) + Send,
) -> Result<InfraRecord, PhaseError> {
    update_record(store, &keys::cloud(&ctx.cluster.id), f).await
}

pub async fn infra(store: &DynStore, ctx: &PhaseCtx<'_>) -> Result<InfraRecord, PhaseError> {
    read_record(store, &keys::cloud(&ctx.cluster.id)).await
}

pub async fn run(config: Config, shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), RuntimeError> {
    let rt = config.common.connect("cloud-controller").await?;
    let sim_cfg = ksctl_runtime::sim::SimConfig::from_env().map_err(RuntimeError::Config)?;
    let mut providers: HashMap<Provider, Arc<dyn CloudProvider>> = HashMap::new();
    providers.insert(Provider::Sim, Arc::new(sim_cloud::SimCloud::new(rt.store.clone(), sim_cfg)));
    let limits = aws::throttle::Limits::parse(&config.aws_rate_limits).map_err(RuntimeError::Config)?;
    providers.insert(
        Provider::Aws,
        Arc::new(aws::AwsCloud::new(rt.store.clone(), config.aws_ami.clone(), limits, rt.metrics.clone())),
    );
    providers.insert(Provider::Byo, Arc::new(byo::ByoCloud::new(rt.store.clone(), config.byo_keys_dir.clone())));
    let kind = kind::KindCloud::new(rt.store.clone(), config.kind_bin.clone(), config.docker_bin.clone());
    providers.insert(Provider::Local, Arc::new(kind));
    let providers = Arc::new(providers);
    let answering = kubeconfig_query::start(rt.clone(), providers.clone()).await?;
    let r = ksctl_runtime::run_controller(rt, Service::Cloud, Arc::new(CloudWorker { providers }), shutdown).await;
    answering.abort();
    r
}

/// The worker count a scale operation asks for.
pub(crate) fn target_workers(ctx: &PhaseCtx<'_>) -> Result<u32, PhaseError> {
    ctx.cluster
        .operation
        .as_ref()
        .and_then(|o| o.target_workers)
        .ok_or_else(|| PhaseError::Permanent("scale operation without a target worker count".into()))
}
