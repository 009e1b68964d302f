//! cloud-controller: creates, scales and deletes a cluster's infrastructure. Providers sit behind
//! [`CloudProvider`]: `sim`, `aws` (EC2 and EKS), `local` (kind) and `byo` (hosts the user has).

pub mod aws;
pub mod azure;
pub mod byo;
pub mod firewall;
pub mod kind;
pub mod kubeconfig_query;
pub mod ratelimit;
pub mod sim_cloud;

use clap::Parser;
use ksctl_core::records::{ClusterRecord, InfraRecord, Role};
use ksctl_core::saga::{Phase, Service};
use ksctl_core::spec::Provider;
use ksctl_runtime::{CommonArgs, PhaseCtx, PhaseError, PhaseWorker, RuntimeError, checkpoint, phase_record};
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
    /// azure: the Resource Manager endpoint.
    #[arg(long, env = "KSCTL_AZURE_ARM_ENDPOINT", default_value = "https://management.azure.com")]
    pub azure_arm_endpoint: String,
    /// azure: Entra ID's authority host (sovereign or private clouds).
    #[arg(long, env = "AZURE_AUTHORITY_HOST")]
    pub azure_authority_host: Option<String>,
    /// azure: a PEM bundle to trust besides the system's roots for ARM and Entra ID.
    #[arg(long, env = "KSCTL_AZURE_CA_FILE")]
    pub azure_ca_file: Option<std::path::PathBuf>,
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
            PhaseError::permanent(format!("provider {provider} is not available in this cloud-controller"))
        })?;
        match ctx.cmd.phase {
            Phase::CloudCreate => p.create(ctx).await,
            Phase::CloudDelete => p.delete(ctx).await,
            Phase::CloudScaleUp => p.scale_up(ctx).await,
            Phase::CloudScaleDown => p.scale_down(ctx).await,
            other => Err(PhaseError::permanent(format!("cloud-controller does not run phase {other}"))),
        }
    }
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
    let settings = azure::arm::ArmSettings {
        endpoint: config.azure_arm_endpoint.clone(),
        ca_file: config.azure_ca_file.clone(),
        authority_host: config.azure_authority_host.clone(),
        ..Default::default()
    };
    providers.insert(Provider::Azure, Arc::new(azure::AzureCloud::new(rt.store.clone(), settings, rt.metrics.clone())));
    let kind = kind::KindCloud::new(rt.store.clone(), config.kind_bin.clone(), config.docker_bin.clone());
    providers.insert(Provider::Local, Arc::new(kind));
    let providers = Arc::new(providers);
    let answering = kubeconfig_query::start(rt.clone(), providers.clone()).await?;
    let r = ksctl_runtime::run_controller(rt, Service::Cloud, Arc::new(CloudWorker { providers }), shutdown).await;
    answering.abort();
    r
}

/// The cluster's SSH key pair: the public half (OpenSSH) of the private key sealed in state. The
/// private half is generated and sealed into state first; only then may a cloud get the public
/// half, so a crash in between never leaves a key nobody can use.
pub(crate) async fn cluster_ssh_key(store: &DynStore, ctx: &PhaseCtx<'_>) -> Result<String, PhaseError> {
    let id = &ctx.cluster.id;
    let state = phase_record::<InfraRecord>(store, ctx).await?;
    let private = match &state.ssh_private_key {
        Some(s) => ctx.rt.sealer.open_string(&format!("ssh/{id}"), s)?,
        None => {
            let key = ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
                .map_err(|e| PhaseError::permanent(format!("generating an SSH key: {e}")))?;
            let pem = key.to_openssh(ssh_key::LineEnding::LF).map_err(|e| PhaseError::caused_by(false, e))?.to_string();
            let sealed = ctx.rt.sealer.seal(&format!("ssh/{id}"), pem.as_bytes());
            let rec = checkpoint(store, ctx, |i: &mut InfraRecord| {
                if i.ssh_private_key.is_none() {
                    i.ssh_private_key = Some(sealed.clone());
                }
            })
            .await?;
            ctx.rt.sealer.open_string(&format!("ssh/{id}"), rec.ssh_private_key.as_ref().expect("written"))?
        }
    };
    ssh_key::PrivateKey::from_openssh(&private)
        .map_err(|e| PhaseError::permanent(format!("sealed SSH key unreadable: {e}")))?
        .public_key()
        .to_openssh()
        .map_err(|e| PhaseError::caused_by(false, e))
}

/// The size (instance type, VM size) of a role's machines: the spec's, else the cloud's default
/// for small roles (load balancer, datastore) or the others.
pub(crate) fn node_size(ctx: &PhaseCtx<'_>, role: Role, small: &str, other: &str) -> String {
    let s = &ctx.cluster.spec.node_sizes;
    let chosen = match role {
        Role::LoadBalancer => s.load_balancer.clone(),
        Role::Datastore => s.datastore.clone(),
        Role::ControlPlane => s.control_plane.clone(),
        Role::Worker => s.worker.clone(),
        Role::Managed => s.managed.clone(),
    };
    chosen.unwrap_or_else(|| if matches!(role, Role::LoadBalancer | Role::Datastore) { small } else { other }.into())
}

/// Checkpoints a VM that now exists and reports it as step `done + 1` of `total`.
pub(crate) async fn record_vm(
    store: &DynStore,
    ctx: &PhaseCtx<'_>,
    vm: ksctl_core::records::Vm,
    done: &std::sync::atomic::AtomicU32,
    total: u32,
) -> Result<(), PhaseError> {
    let name = vm.name.clone();
    checkpoint(store, ctx, |i: &mut InfraRecord| {
        i.vms.insert(name.clone(), vm.clone());
    })
    .await?;
    ctx.progress(format!("vm {name}"), done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1, total).await;
    Ok(())
}

/// How many VMs a provider creates or deletes at once.
pub(crate) const PARALLEL_VMS: usize = 10;

/// Runs `work` on every item, [`PARALLEL_VMS`] at a time. Every item's work runs to its end even
/// when another's fails (a VM half-made is recorded, not dropped mid-call); then the first error.
pub(crate) async fn fan_out<I, T, F, Fut>(items: I, work: F) -> Result<Vec<T>, PhaseError>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: std::future::Future<Output = Result<T, PhaseError>>,
{
    use futures::StreamExt;
    let results: Vec<Result<T, PhaseError>> =
        futures::stream::iter(items).map(work).buffer_unordered(PARALLEL_VMS).collect().await;
    results.into_iter().collect()
}

/// The VMs of `want` that `have` has not recorded. Those it has (made before a restart) are
/// counted in `done`, so a resumed phase's progress goes on from where it was.
pub(crate) fn vms_missing(
    ctx: &PhaseCtx<'_>,
    have: &InfraRecord,
    want: Vec<(Role, u32)>,
    done: &std::sync::atomic::AtomicU32,
) -> Vec<(Role, u32)> {
    let id = &ctx.cluster.id;
    let wanted = want.len();
    let missing: Vec<_> = want.into_iter().filter(|(r, i)| !have.vms.contains_key(&r.vm_name(id, *i))).collect();
    done.fetch_add((wanted - missing.len()) as u32, std::sync::atomic::Ordering::SeqCst);
    missing
}

/// The VMs a self-managed cluster of this spec has: (role, index), load balancer first.
pub(crate) fn planned_vms(spec: &ksctl_core::spec::ClusterSpec) -> Vec<(Role, u32)> {
    let mut v = vec![(Role::LoadBalancer, 0)];
    v.extend((0..spec.datastore_nodes).map(|i| (Role::Datastore, i)));
    v.extend((0..spec.control_plane_nodes).map(|i| (Role::ControlPlane, i)));
    v.extend((0..spec.worker_nodes).map(|i| (Role::Worker, i)));
    v
}

/// The workers a scale-up to `target` adds: indices continue after the highest existing one.
pub(crate) fn workers_to_add(state: &InfraRecord, target: u32) -> Vec<(Role, u32)> {
    let have: Vec<u32> = state.vms_of(Role::Worker).map(|v| v.index).collect();
    let missing = target.saturating_sub(have.len() as u32);
    let start = have.iter().max().map(|m| m + 1).unwrap_or(0);
    (start..start + missing).map(|i| (Role::Worker, i)).collect()
}
