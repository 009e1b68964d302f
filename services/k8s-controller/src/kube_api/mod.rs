//! The real Kubernetes API, with `kube`, for clusters whose kubeconfig ksctl holds (self-managed
//! clusters bootstrapped over SSH). Everything is server-side applied under one field manager and
//! labelled as ksctl's, so installing twice changes nothing.
//!
//! Installed: the `ksctl-system` namespace, the agent's service account with least-privilege
//! RBAC, the `ClusterAddon` and `Stack` CRDs (from Rust types, waited on until established), the
//! state importer's immutable `cluster-config` ConfigMap (replaced when the cluster's state
//! changes), the agent (Secret with its bus settings, Deployment, Service), flannel on kubeadm
//! clusters, and the enabled addons; then the install waits until the workloads are ready.
//!
//! Here: the provider (clients, install, addons, uninstall, drain as phases). The objects ksctl
//! builds are in [`objects`], applying and removing them in [`apply`], draining a node in
//! [`drain`].
mod apply;
mod drain;
mod objects;

use crate::cluster_addon::{self, SpecChange};
use crate::crds::{ClusterAddon, Stack, StackComponent, StackObject, StackSpec};
use crate::credentials::AgentCredentials;
use crate::manifests;
use crate::{ClusterApi, Component, PlanItem};
pub use apply::*;
use backon::BackoffBuilder;
pub use drain::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ksctl_bus::auth::Creds;
use ksctl_core::apps::{ObjectRef, left_out, with_all};
use ksctl_core::artifacts::Artifacts;
use ksctl_core::keys;
use ksctl_core::records::{BootstrapRecord, ClusterRecord, InfraRecord, K8sRecord};
use ksctl_core::spec::ClusterType;
use ksctl_runtime::{PhaseCtx, PhaseError, read_record, update_record};
use ksctl_store::DynStore;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
pub use objects::*;
use std::collections::BTreeMap;
use std::time::Duration;

pub const NAMESPACE: &str = ksctl_core::addons::KSCTL_NAMESPACE;
pub const FIELD_MANAGER: &str = "ksctl";
pub const AGENT: &str = "ksctl-agent";
pub const CLUSTER_CONFIG: &str = "cluster-config";
pub const AGENT_BUS_SECRET: &str = "ksctl-agent-bus";
/// The agent's /livez, /readyz and /metrics port.
pub const AGENT_HTTP_PORT: i32 = 9100;
pub use ksctl_core::addons::CLUSTER_ADDON_OBJECT as CLUSTER_ADDONS;
/// How long a cluster may take to answer before uninstall gives up on it.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(20);

pub struct KubeApi {
    store: DynStore,
    settings: Settings,
    /// Mints each agent its own NATS credential (none: the bus has no authentication).
    credentials: Option<std::sync::Arc<AgentCredentials>>,
    /// Asks the cloud-controller for fresh tokens (EKS).
    bus: async_nats::Client,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub drain_timeout: Duration,
    pub ready_timeout: Duration,
    pub agent: AgentSettings,
    pub artifacts: Artifacts,
}

/// How the in-cluster agent runs and reaches the bus.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub image: String,
    pub nats_url: String,
    /// The CA (PEM) that signed the NATS servers' certificate, for `tls://` URLs.
    pub nats_ca: Option<String>,
}

/// What an install applies besides the fixed objects.
pub struct Install<'a> {
    pub cluster_id: &'a str,
    /// Where the cluster pulls images from (flannel, addons; the agent's is in `agent`).
    pub artifacts: &'a Artifacts,
    /// The cluster-config ConfigMap's data.
    pub state: BTreeMap<String, String>,
    pub agent: &'a AgentSettings,
    /// The agent's own NATS credential, minted for this install (none: a bus without
    /// authentication, or a test).
    pub credential: Option<&'a Creds>,
}

pub(crate) fn labels() -> BTreeMap<String, String> {
    [("app.kubernetes.io/managed-by".to_string(), "ksctl".to_string())].into()
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels()),
        ..Default::default()
    }
}

/// A failed API call: server errors and unreachable clusters are retried, refusals are not.
pub(crate) fn api_err(what: &str, e: kube::Error) -> PhaseError {
    let retryable = match &e {
        // A namespace still being deleted (say, an addon's, disabled a moment ago) refuses new
        // objects until its controller has emptied it: that passes.
        kube::Error::Api(s) if s.code == 403 && s.message.contains("because it is being terminated") => true,
        kube::Error::Api(s) if s.code < 500 && s.code != 429 => false,
        _ => true,
    };
    PhaseError::context(retryable, what, e)
}

/// The non-secret state the cluster carries about itself (the state importer's ConfigMap).
pub fn cluster_config(ctx: &PhaseCtx<'_>, infra: &InfraRecord) -> BTreeMap<String, String> {
    let c = ctx.cluster;
    let nodes: Vec<serde_json::Value> = infra
        .vms
        .values()
        .map(|v| serde_json::json!({"name": v.name, "role": v.role, "private_ip": v.private_ip}))
        .collect();
    [
        ("cluster_id", c.id.to_string()),
        ("provider", c.provider.to_string()),
        ("region", c.spec.region.clone()),
        ("cluster_type", c.cluster_type.as_str().to_string()),
        ("distro", c.spec.kubernetes_distro.clone().unwrap_or_default()),
        ("kubernetes_version", c.spec.kubernetes_version.clone()),
        ("etcd_version", c.spec.etcd_version.clone().unwrap_or_default()),
        ("nodes", serde_json::to_string(&nodes).expect("json")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A client configuration from a kubeconfig (YAML), with bounded connect and read times.
pub async fn config_from(kubeconfig: &str) -> Result<kube::Config, PhaseError> {
    let unusable = |e: String| PhaseError::permanent(format!("the stored kubeconfig is unusable: {e}"));
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|e| unusable(e.to_string()))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(|e| unusable(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(config)
}

/// A client from a kubeconfig (YAML), with bounded connect and read times.
pub async fn client_from(kubeconfig: &str) -> Result<kube::Client, PhaseError> {
    let config = config_from(kubeconfig).await?;
    kube::Client::try_from(config).map_err(|e| PhaseError::permanent(format!("Kubernetes client: {e}")))
}

impl KubeApi {
    pub fn new(
        store: DynStore,
        settings: Settings,
        credentials: Option<std::sync::Arc<AgentCredentials>>,
        bus: async_nats::Client,
    ) -> Self {
        Self { store, settings, credentials, bus }
    }

    async fn client(&self, ctx: &PhaseCtx<'_>) -> Result<kube::Client, PhaseError> {
        self.client_for(&ctx.rt.sealer, ctx.cluster).await
    }

    async fn client_for(
        &self,
        sealer: &ksctl_core::seal::Sealer,
        cluster: &ClusterRecord,
    ) -> Result<kube::Client, PhaseError> {
        let id = &cluster.id;
        let sealed = match cluster.cluster_type {
            ClusterType::Selfmanaged => {
                read_record::<BootstrapRecord>(&self.store, &keys::bootstrap(id)).await?.kubeconfig
            }
            // EKS tokens last 15 minutes and are minted by the cloud-controller; the stored
            // kubeconfig's token is long expired by the time this phase could use it.
            ClusterType::Managed if cluster.provider.kubeconfig_expires(cluster.cluster_type) => {
                return crate::fresh_token::client(&self.bus, id).await;
            }
            ClusterType::Managed => read_record::<InfraRecord>(&self.store, &keys::cloud(id)).await?.kubeconfig,
        };
        let sealed = sealed.ok_or_else(|| PhaseError::permanent(format!("cluster {id} has no kubeconfig in state")))?;
        client_from(&sealer.open_string(&format!("kubeconfig/{id}"), &sealed)?).await
    }

    /// Gives the NATS servers the account JWT with the current revocations (nothing to do on a
    /// bus without authentication).
    pub async fn push_revocations(&self) -> Result<(), PhaseError> {
        match &self.credentials {
            Some(c) => c.push().await,
            None => Ok(()),
        }
    }

    /// Gives a running cluster's agent a new credential: the Secret, then the Deployment (whose
    /// pod restarts with it), then the record, which revokes the old one. The caller holds the
    /// cluster's lease.
    pub async fn rotate_credential(
        &self,
        sealer: &ksctl_core::seal::Sealer,
        cluster: &ClusterRecord,
    ) -> Result<(), PhaseError> {
        let Some(credentials) = &self.credentials else { return Ok(()) };
        let client = self.client_for(sealer, cluster).await?;
        let (creds, record) = credentials.mint(&cluster.id)?;
        let install = Install {
            cluster_id: cluster.id.as_str(),
            artifacts: &self.settings.artifacts,
            state: BTreeMap::new(),
            agent: &self.settings.agent,
            credential: Some(&creds),
        };
        for component in [Component::AgentSecret, Component::AgentDeployment] {
            install_component(&client, component, &install).await?;
        }
        credentials.record(&cluster.id, record).await
    }

    /// Writes the cluster's `ClusterAddon` spec and records the object's uid and generation
    /// after it (heartbeats that read an older generation of it are then ignored).
    async fn write_cluster_addons(
        &self,
        client: &kube::Client,
        cluster: &ClusterRecord,
        change: SpecChange<'_>,
    ) -> Result<(), PhaseError> {
        let written = cluster_addon::write_spec(client, &cluster.spec.addons, change).await?;
        update_record(&self.store, &keys::k8s(&cluster.id), |r: &mut K8sRecord| {
            r.cluster_addon_written = written.clone()
        })
        .await?;
        Ok(())
    }

    /// Enables (applies, waits for ready) or disables one addon; `version` is the one a
    /// `ClusterAddon` object pins, refused when ksctl does not ship it.
    async fn change_addon(
        &self,
        ctx: &PhaseCtx<'_>,
        client: &kube::Client,
        name: &str,
        enable: bool,
        version: Option<&str>,
    ) -> Result<(), PhaseError> {
        let Some(addon) = ksctl_core::addons::find(name) else {
            return Err(PhaseError::permanent(format!(
                "unknown addon {name:?}; available: {}",
                ksctl_core::addons::names()
            )));
        };
        if let Some(v) = version.filter(|v| *v != addon.version) {
            return Err(PhaseError::permanent(format!(
                "addon {name} {v} is not available: this ksctl ships {name} {}",
                addon.version
            )));
        }
        if !enable {
            return disable_addon(client, name).await;
        }
        let workloads = enable_addon(client, name, &self.settings.artifacts).await?;
        ctx.progress(format!("applied addon {name}"), 1, 2).await;
        manifests::wait_ready(client, &workloads, self.settings.ready_timeout).await
    }
}

#[async_trait::async_trait]
impl ClusterApi for KubeApi {
    async fn install(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let client = self.client(ctx).await?;
        let id = &ctx.cluster.id;
        let infra: InfraRecord = read_record(&self.store, &keys::cloud(id)).await?;
        // Every run mints anew: a run that stopped after applying the Secret left a credential
        // this record may not name, which expires on its own.
        let minted = self.credentials.as_ref().map(|c| c.mint(id)).transpose()?;
        let install = Install {
            cluster_id: id.as_str(),
            artifacts: &self.settings.artifacts,
            state: cluster_config(ctx, &infra),
            agent: &self.settings.agent,
            credential: minted.as_ref().map(|(c, _)| c),
        };
        let plan = crate::install_plan(ctx.cluster);
        let total = plan.len() as u32 + 1;
        // Applying is idempotent, so every component is applied on every run (a resumed install
        // also repairs what someone changed since).
        for (n, item) in plan.iter().enumerate() {
            apply_item(&client, item, &install).await?;
            update_record(&self.store, &keys::k8s(id), |r: &mut K8sRecord| {
                r.installed.insert(item.key());
            })
            .await?;
            // The new credential is recorded (revoking the old one) only once the Deployment
            // that restarts the agent with it is applied, the order rotation keeps too: until
            // then the running agent still holds the old one.
            if let (Some(credentials), Some((_, record)), PlanItem::Component(Component::AgentDeployment)) =
                (&self.credentials, &minted, item)
            {
                credentials.record(id, record.clone()).await?;
            }
            ctx.progress(format!("applied {item}"), n as u32 + 1, total).await;
        }
        let addons = &ctx.cluster.spec.addons;
        self.write_cluster_addons(&client, ctx.cluster, SpecChange::Set(addons)).await?;
        let workloads = plan_workloads(&plan)?;
        manifests::wait_ready(&client, &workloads, self.settings.ready_timeout).await?;
        for a in addons {
            let version = ksctl_core::addons::find(a).map(|a| a.version);
            cluster_addon::report(&client, a, Some(cluster_addon::status("Installed", version, None, None))).await;
        }
        let names: Vec<String> = workloads.iter().map(|(_, ns, n)| format!("{ns}/{n}")).collect();
        ctx.progress(format!("ready: {}", names.join(", ")), total, total).await;
        Ok(())
    }

    /// Changes one addon and reports it in the `ClusterAddon` status; a change a request asked
    /// for is written into the object's spec too (one the object asked for is there already).
    /// ksctl's CRDs and the agent's RBAC are applied again first: a cluster installed by an
    /// older ksctl gets the current ones (the Stack inventory, the status, the agent's right to
    /// read the object).
    async fn addon(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let (name, enable) = crate::addon_change(ctx)?;
        let op = ctx.cluster.operation.as_ref().expect("addon_change found the operation");
        let asked_at = op.cluster_addon_generation;
        let client = self.client(ctx).await?;
        let install = Install {
            cluster_id: ctx.cluster.id.as_str(),
            artifacts: &self.settings.artifacts,
            state: BTreeMap::new(),
            agent: &self.settings.agent,
            credential: None,
        };
        for component in crate::ADDON_PREREQUISITES {
            install_component(&client, component, &install).await?;
        }
        let version = ksctl_core::addons::find(&name).map(|a| a.version);
        let now = if enable { "Installing" } else { "Removing" };
        cluster_addon::report(&client, &name, Some(cluster_addon::status(now, version, None, asked_at))).await;
        let changed = self.change_addon(ctx, &client, &name, enable, op.addon_version.as_deref()).await;
        let after = match &changed {
            Ok(()) if enable => Some(cluster_addon::status("Installed", version, None, asked_at)),
            Ok(()) => None,
            Err(e) if e.is_permanent() => Some(cluster_addon::status("Failed", version, Some(e.to_string()), asked_at)),
            // Tried again: still under way, with why the last try did not get there.
            Err(e) => Some(cluster_addon::status(now, version, Some(e.to_string()), asked_at)),
        };
        cluster_addon::report(&client, &name, after).await;
        changed?;
        if asked_at.is_none() {
            let change = if enable { SpecChange::Enable(&name) } else { SpecChange::Disable(&name) };
            self.write_cluster_addons(&client, ctx.cluster, change).await?;
        }
        let verb = if enable { "enabled and ready" } else { "removed" };
        ctx.progress(format!("addon {name} {verb}"), 2, 2).await;
        Ok(())
    }

    async fn apps(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let (stack, manifests) = crate::apps::change(&self.store, ctx).await?;
        let client = self.client(ctx).await?;
        match manifests {
            Some(yaml) => {
                crate::apps::apply(&client, &self.store, ctx, &stack, &yaml, self.settings.ready_timeout).await
            }
            None => crate::apps::delete(&client, &self.store, ctx, &stack).await,
        }
    }

    async fn uninstall(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        if read_record::<K8sRecord>(&self.store, &keys::k8s(id)).await?.installed.is_empty() {
            ctx.progress("nothing of ksctl's was installed", 1, 1).await;
            return Ok(());
        }
        let mut stacks: Vec<manifests::Stack> =
            ctx.cluster.spec.addons.iter().filter_map(|a| manifests::addon(a)).collect();
        stacks.extend(crate::cni(ctx.cluster).and_then(manifests::cni));
        let work = async { uninstall_objects(&self.client(ctx).await?, &stacks).await };
        // A cluster that does not answer must not block deleting its infrastructure.
        let msg = match tokio::time::timeout(UNREACHABLE_AFTER, work).await {
            Ok(Ok(())) => format!("removed namespace {NAMESPACE} and the agent's cluster RBAC"),
            Ok(Err(e)) => format!("the cluster did not take the uninstall ({e}); its objects go with the hosts"),
            Err(_) => "the cluster does not answer; its objects go with the hosts".to_string(),
        };
        ctx.progress(msg, 1, 1).await;
        self.store.delete(&keys::k8s(id)).await?;
        Ok(())
    }

    async fn drain(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let client = self.client(ctx).await?;
        let client = &client;
        crate::drain_workers(&self.store, ctx, |vm| async move {
            drain_node(client, &vm.name, self.settings.drain_timeout).await
        })
        .await
    }
}
