//! k8s-controller: installs our in-cluster components, drains nodes before scale-down, and
//! uninstalls on delete. The Kubernetes API sits behind [`ClusterApi`]: the real API with `kube`
//! for clusters bootstrapped over SSH, the simulated one for `sim`.

pub mod apps;
pub mod cluster_addon;
pub mod crds;
pub mod credentials;
pub mod fresh_token;
pub mod kube_api;
pub mod manifests;
pub mod rotation;
pub mod sim_kube;

use clap::Parser;
use ksctl_core::records::ClusterRecord;
use ksctl_core::saga::{Phase, Service};
use ksctl_core::spec::{Cni, Distro, Provider};
use ksctl_core::state::OpKind;
use ksctl_runtime::{ArtifactArgs, CommonArgs, PhaseCtx, PhaseError, PhaseWorker, RuntimeError};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Parser)]
#[command(name = "ksctl-k8s-controller", about = "ksctl-rs k8s-controller: in-cluster components")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub artifacts: ArtifactArgs,
    /// How long a scale-down waits for evicted pods to leave a node before it retries.
    #[arg(long, env = "KSCTL_DRAIN_TIMEOUT_SECS", default_value_t = 300)]
    pub drain_timeout_secs: u64,
    /// How long an install or addon waits for its Deployments, DaemonSets and StatefulSets.
    #[arg(long, env = "KSCTL_READY_TIMEOUT_SECS", default_value_t = 300)]
    pub ready_timeout_secs: u64,
    /// The image of the in-cluster agent (the ksctl-rs image holds `ksctl-agent`); pulled
    /// through KSCTL_IMAGE_REGISTRY when that is set.
    #[arg(long, env = "KSCTL_AGENT_IMAGE", default_value = concat!("ksctl-rs:", env!("CARGO_PKG_VERSION")))]
    pub agent_image: String,
    /// The NATS URL as the clusters reach it (default: this controller's --nats-url).
    #[arg(long, env = "KSCTL_AGENT_NATS_URL")]
    pub agent_nats_url: Option<String>,
    /// The CA (PEM file) that signed the NATS servers' certificate, put into each agent's
    /// Secret (default: this controller's KSCTL_NATS_CA_FILE).
    #[arg(long, env = "KSCTL_AGENT_NATS_CA_FILE")]
    pub agent_nats_ca_file: Option<String>,
    /// The bus's authority file (`ksctl auth init` writes `authority.json`): with it, every
    /// cluster's agent gets its own NATS credential, rotated and revoked here. Without it the
    /// agent connects without credentials (a bus without authentication).
    #[arg(long, env = "KSCTL_NATS_AUTHORITY_FILE")]
    pub nats_authority_file: Option<String>,
    /// How long an agent credential lives; it is replaced when a third of that is left.
    #[arg(long, env = "KSCTL_AGENT_CREDENTIAL_TTL_SECS", default_value_t = 86_400)]
    pub agent_credential_ttl_secs: u64,
}

/// Drains the workers a scale-down removes, one after another, with `drain_one`; each drained
/// node is checkpointed in the k8s record, so a retried phase skips it.
pub(crate) async fn drain_workers<F, Fut>(
    store: &ksctl_store::DynStore,
    ctx: &PhaseCtx<'_>,
    drain_one: F,
) -> Result<(), PhaseError>
where
    F: Fn(ksctl_core::records::Vm) -> Fut,
    Fut: std::future::Future<Output = Result<(), PhaseError>>,
{
    use ksctl_core::keys;
    use ksctl_core::records::{InfraRecord, K8sRecord};
    let id = &ctx.cluster.id;
    let infra: InfraRecord = ksctl_runtime::read_record(store, &keys::cloud(id)).await?;
    let drained = ksctl_runtime::read_record::<K8sRecord>(store, &keys::k8s(id)).await?.drained;
    // The machines the cloud phase removes next (only self-managed clusters drain here; managed
    // pools drain the nodes they remove).
    let remove = infra.workers_beyond(ctx.target_workers()?);
    let total = remove.len() as u32;
    for (n, vm) in remove.into_iter().enumerate() {
        let (vm_id, name) = (vm.id.clone(), vm.name.clone());
        if !drained.contains(&vm_id) {
            drain_one(vm).await?;
            ksctl_runtime::update_record(store, &keys::k8s(id), |r: &mut K8sRecord| {
                r.drained.insert(vm_id.clone());
            })
            .await?;
        }
        ctx.progress(format!("drained node {name}"), n as u32 + 1, total).await;
    }
    Ok(())
}

ksctl_core::vocabulary! {
    /// ksctl's own objects in a cluster, in install order (namespace first, the agent last),
    /// spelled `<kind>/<name>`. The spelling is recorded in `k8s.<cluster>` as installed: it
    /// never changes.
    pub enum Component {
        Namespace = "namespace/ksctl-system",
        ServiceAccount = "serviceaccount/ksctl-agent",
        Rbac = "rbac/ksctl-agent",
        ClusterAddonCrd = "crd/clusteraddons.manage.ksctl.io",
        StackCrd = "crd/stacks.app.ksctl.io",
        ClusterConfig = "configmap/cluster-config",
        AgentSecret = "secret/ksctl-agent-bus",
        AgentDeployment = "deployment/ksctl-agent",
        AgentService = "service/ksctl-agent",
    }
}

/// ksctl's components, in install order.
pub const COMPONENTS: &[Component] = Component::ALL;

/// What an addon operation re-applies first: a cluster installed by an older ksctl gets the
/// current CRDs (the Stack inventory, the status) and the agent's right to read them.
pub const ADDON_PREREQUISITES: [Component; 3] = [Component::Rbac, Component::ClusterAddonCrd, Component::StackCrd];

/// One thing an install applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanItem {
    Component(Component),
    /// The pod network (never [`Cni::None`]).
    Cni(Cni),
    /// An addon of the catalog, by name.
    Addon(String),
}

impl PlanItem {
    /// How the item is recorded as installed: a component's spelling, `cni/<name>`,
    /// `addon/<name>`.
    pub fn key(&self) -> String {
        match self {
            PlanItem::Component(c) => c.as_str().to_string(),
            PlanItem::Cni(c) => format!("cni/{c}"),
            PlanItem::Addon(a) => format!("addon/{a}"),
        }
    }
}

impl std::fmt::Display for PlanItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// The CNI ksctl installs: flannel on kubeadm clusters unless the spec says otherwise, Calico
/// or Cilium on any self-managed cluster that asks for it (k3s brings its own flannel, started
/// without it then; managed clusters get the cloud's CNI).
pub fn cni(cluster: &ClusterRecord) -> Option<Cni> {
    if cluster.cluster_type != ksctl_core::spec::ClusterType::Selfmanaged {
        return None;
    }
    match (cluster.distro, cluster.spec.cni()) {
        (Some(Distro::Kubeadm), None | Some(Cni::Flannel)) => Some(Cni::Flannel),
        (_, Some(c @ (Cni::Calico | Cni::Cilium))) => Some(c),
        _ => None,
    }
}

/// Everything an install applies, in order: our components, the CNI, the enabled addons.
pub fn install_plan(cluster: &ClusterRecord) -> Vec<PlanItem> {
    let mut plan: Vec<PlanItem> = COMPONENTS.iter().copied().map(PlanItem::Component).collect();
    plan.extend(cni(cluster).map(PlanItem::Cni));
    plan.extend(cluster.spec.addons.iter().cloned().map(PlanItem::Addon));
    plan
}

/// An addon operation's addon and direction (`true`: enable).
pub fn addon_change(ctx: &PhaseCtx<'_>) -> Result<(String, bool), PhaseError> {
    let op = ctx.cluster.operation.as_ref();
    let name = op.and_then(|o| o.addon.clone());
    match (op.map(|o| o.kind), name) {
        (Some(OpKind::AddonEnable), Some(n)) => Ok((n, true)),
        (Some(OpKind::AddonDisable), Some(n)) => Ok((n, false)),
        _ => Err(PhaseError::permanent("addon phase without an addon operation".into())),
    }
}

#[async_trait::async_trait]
pub trait ClusterApi: Send + Sync {
    async fn install(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
    /// Removes our objects; a cluster that never got them (or no longer answers) is done.
    async fn uninstall(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
    /// Cordons and drains the workers that scale-down will remove.
    async fn drain(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
    /// Enables or disables the addon of the operation ([`addon_change`]).
    async fn addon(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
    /// Applies or deletes the user's application stack of the operation ([`apps::change`]).
    async fn apps(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError>;
}

struct K8sWorker {
    providers: HashMap<Provider, Arc<dyn ClusterApi>>,
    credentials: Option<Arc<credentials::AgentCredentials>>,
}

#[async_trait::async_trait]
impl PhaseWorker for K8sWorker {
    async fn run(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        // First, whatever the provider and whether or not the cluster answers: the agent's
        // credential dies with its cluster.
        if let (Phase::K8sUninstall, Some(c)) = (ctx.cmd.phase, &self.credentials) {
            c.revoke_cluster(&ctx.cluster.id).await?;
        }
        let provider = ctx.cluster.provider;
        let Some(api) = self.providers.get(&provider) else {
            // Deleting the infrastructure deletes whatever runs on it: a cluster we cannot talk
            // to must not block its own deletion.
            if ctx.cmd.phase == Phase::K8sUninstall {
                ctx.progress(format!("no Kubernetes API client for provider {provider}; in-cluster objects go with the infrastructure"), 1, 1).await;
                return forget_apps(ctx).await;
            }
            return Err(PhaseError::permanent(format!(
                "provider {provider} has no Kubernetes API client in this k8s-controller"
            )));
        };
        match ctx.cmd.phase {
            Phase::K8sInstall => api.install(ctx).await,
            Phase::K8sUninstall => {
                api.uninstall(ctx).await?;
                forget_apps(ctx).await
            }
            Phase::K8sDrain => api.drain(ctx).await,
            Phase::K8sAddon => api.addon(ctx).await,
            Phase::K8sApps => api.apps(ctx).await,
            other => Err(PhaseError::permanent(format!("k8s-controller does not run phase {other}"))),
        }
    }
}

/// The application stacks' records go with their cluster (their objects with its machines).
async fn forget_apps(ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
    let store = &ctx.rt.store;
    for (key, _) in store.children(&ksctl_core::keys::apps(&ctx.cluster.id)).await? {
        store.delete(&key).await?;
    }
    Ok(())
}

pub async fn run(config: Config, shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), RuntimeError> {
    // kube's rustls needs one process-wide crypto provider (ring is in the build too).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let artifacts = config.artifacts.artifacts().map_err(RuntimeError::Config)?;
    let rt = config.common.connect("k8s-controller").await?;
    let sim_cfg = ksctl_runtime::sim::SimConfig::from_env().map_err(RuntimeError::Config)?;
    let mut providers: HashMap<Provider, Arc<dyn ClusterApi>> = HashMap::new();
    providers.insert(Provider::Sim, Arc::new(sim_kube::SimKube::new(rt.store.clone(), sim_cfg)));
    let settings = kube_api::Settings {
        drain_timeout: std::time::Duration::from_secs(config.drain_timeout_secs),
        ready_timeout: std::time::Duration::from_secs(config.ready_timeout_secs),
        agent: kube_api::AgentSettings {
            image: artifacts.image(&config.agent_image),
            nats_url: config.agent_nats_url.clone().unwrap_or_else(|| config.common.nats_url.clone()),
            nats_ca: match config.agent_nats_ca_file.as_ref().or(config.common.nats_ca_file.as_ref()) {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .map_err(|e| RuntimeError::Config(format!("reading the agents' NATS CA {f}: {e}")))?,
                ),
                None => None,
            },
        },
        artifacts,
    };
    let credentials = match &config.nats_authority_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| RuntimeError::Config(format!("reading the NATS authority file {file}: {e}")))?;
            let authority =
                ksctl_bus::auth::Authority::from_json(&text).map_err(|e| RuntimeError::Config(e.to_string()))?;
            let c = credentials::AgentCredentials::new(
                authority,
                std::time::Duration::from_secs(config.agent_credential_ttl_secs.max(3)),
                config.common.nats_url.clone(),
                config.common.nats_auth(),
                rt.store.clone(),
            );
            // Servers that lost their resolver directory learn the revocations again.
            if let Err(e) = c.push().await {
                tracing::warn!(error = %e, "could not give the servers the current account JWT");
            }
            Some(Arc::new(c))
        }
        None => None,
    };
    // Self-managed clusters on any cloud are reached the same way: the kubeconfig the
    // bootstrap sealed, through their load balancer.
    let kube_api =
        Arc::new(kube_api::KubeApi::new(rt.store.clone(), settings, credentials.clone(), rt.publisher.client.clone()));
    if credentials.is_some() {
        let every = std::time::Duration::from_secs((config.agent_credential_ttl_secs / 6).clamp(1, 300));
        tokio::spawn(rotation::run(rt.clone(), kube_api.clone(), every, shutdown.clone()));
    }
    let kube: Arc<dyn ClusterApi> = kube_api;
    providers.insert(Provider::Byo, kube.clone());
    // kind clusters: the kubeconfig the cloud-controller sealed (an API server on this host).
    providers.insert(Provider::Local, kube.clone());
    providers.insert(Provider::Azure, kube.clone());
    providers.insert(Provider::Aws, kube);
    ksctl_runtime::run_controller(rt, Service::K8s, Arc::new(K8sWorker { providers, credentials }), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `installed` records written before the plan was typed name the same items: a resumed
    /// install or an uninstall reads them alike.
    #[test]
    fn plan_keys_keep_their_stored_spelling() {
        let mut cluster = ClusterRecord {
            id: ksctl_core::ClusterId::new("demo").unwrap(),
            spec: serde_json::from_value(serde_json::json!({
                "cluster_name": "demo", "region": "local", "cloud_provider": "sim",
                "cluster_type": "selfmanaged", "kubernetes_distro": "kubeadm",
                "control_plane_nodes": 3, "datastore_nodes": 3, "worker_nodes": 2
            }))
            .unwrap(),
            provider: Provider::Sim,
            cluster_type: ksctl_core::spec::ClusterType::Selfmanaged,
            distro: Some(Distro::Kubeadm),
            state: ksctl_core::state::ClusterState::Running,
            created_at_ms: 0,
            updated_at_ms: 0,
            operation: None,
            last_operation: None,
            apps: vec![],
            cluster_addon: None,
        };
        cluster.spec.cni = Some("calico".into());
        cluster.spec.addons = vec!["metrics-server".into()];
        let old: ksctl_core::records::K8sRecord = serde_json::from_str(
            r#"{"installed": ["namespace/ksctl-system", "serviceaccount/ksctl-agent", "rbac/ksctl-agent",
                "crd/clusteraddons.manage.ksctl.io", "crd/stacks.app.ksctl.io", "configmap/cluster-config",
                "secret/ksctl-agent-bus", "deployment/ksctl-agent", "service/ksctl-agent", "cni/calico",
                "addon/metrics-server"], "drained": []}"#,
        )
        .unwrap();
        let keys: Vec<String> = install_plan(&cluster).iter().map(PlanItem::key).collect();
        for k in &keys {
            assert!(old.installed.contains(k), "{k} is not the spelling stored before");
        }
        assert_eq!(keys.len(), old.installed.len());
        cluster.spec.cni = None;
        assert_eq!(cni(&cluster), Some(Cni::Flannel), "kubeadm's default");
        cluster.distro = Some(Distro::K3s);
        assert_eq!(cni(&cluster), None, "k3s brings its own");
    }
}
