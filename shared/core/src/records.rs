//! What the services keep in the state store, one record per entity and owner.
use crate::saga::Phase;
use crate::seal::Sealed;
use crate::spec::{ClusterSpec, ClusterType, Distro, Provider};
use crate::state::{ClusterState, OpKind};
use crate::{ClusterId, OperationId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A record one controller keeps per cluster under its own key, checkpointed as a phase goes
/// (`ksctl_runtime::checkpoint`); a cluster without one reads as the default.
pub trait PhaseRecord: Serialize + serde::de::DeserializeOwned + Default + Clone + Send {
    fn key(id: &ClusterId) -> String;
}

impl PhaseRecord for InfraRecord {
    fn key(id: &ClusterId) -> String {
        crate::keys::cloud(id)
    }
}

impl PhaseRecord for BootstrapRecord {
    fn key(id: &ClusterId) -> String {
        crate::keys::bootstrap(id)
    }
}

impl PhaseRecord for K8sRecord {
    fn key(id: &ClusterId) -> String {
        crate::keys::k8s(id)
    }
}

/// The manager's record of one cluster (key `cluster.<id>`); only the manager writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: ClusterId,
    pub spec: ClusterSpec,
    pub provider: Provider,
    pub cluster_type: ClusterType,
    pub distro: Option<Distro>,
    pub state: ClusterState,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The operation under way, if any.
    pub operation: Option<OperationRecord>,
    /// The most recent finished operation, kept for `info`.
    pub last_operation: Option<OperationRecord>,
    /// The user's application stacks applied to the cluster (`ksctl cluster apps`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<String>,
    /// The `ClusterAddon` generation whose change the manager last started, and whether it
    /// failed (`ksctl_core::addons::is_news`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_addon: Option<crate::addons::Followed>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    pub id: OperationId,
    pub kind: OpKind,
    /// The phase currently dispatched (or, once finished, the last one run).
    pub phase: Phase,
    /// How often this phase was dispatched; part of the command's message id so that a
    /// re-dispatch by the reconciler is not swallowed by deduplication.
    pub dispatch: u32,
    pub dispatched_at_ms: u64,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// For scale operations: the worker count asked for.
    pub target_workers: Option<u32>,
    /// For addon operations: the addon enabled or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addon: Option<String>,
    /// For application-stack operations: the stack applied or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// For addon operations the cluster's `ClusterAddon` object asked for: the object's
    /// generation (absent: asked for by a request, whose change is written into the object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_addon_generation: Option<i64>,
    /// For such operations: the version the object pins, if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addon_version: Option<String>,
    pub phases_done: Vec<Phase>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    LoadBalancer,
    Datastore,
    ControlPlane,
    Worker,
    /// A node of a managed cluster's node pool.
    Managed,
}

impl Role {
    /// The short spelling in names and keys (`lb`, `ds`, `cp`, `wp`, `mp`): stable, never shown
    /// alone to people (see [`Role::title`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoadBalancer => "lb",
            Self::Datastore => "ds",
            Self::ControlPlane => "cp",
            Self::Worker => "wp",
            Self::Managed => "mp",
        }
    }
    /// What people call the role, in messages and tables.
    pub fn title(self) -> &'static str {
        match self {
            Self::LoadBalancer => "load balancer",
            Self::Datastore => "datastore",
            Self::ControlPlane => "control plane",
            Self::Worker => "worker",
            Self::Managed => "managed node",
        }
    }

    /// The deterministic VM name ksctl uses: `<cluster>-vm-<role>-<index>`.
    pub fn vm_name(self, cluster: &ClusterId, index: u32) -> String {
        format!("{cluster}-vm-{}-{index}", self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub index: u32,
    pub public_ip: String,
    pub private_ip: String,
}

/// Infrastructure the cloud-controller created (key `cloud.<id>`); each id is written right after
/// the call that created it returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InfraRecord {
    /// Azure: the cluster's resource group.
    pub resource_group: Option<String>,
    pub network: Option<String>,
    /// Subnets, one per availability zone, in order.
    pub subnets: Vec<String>,
    pub gateway: Option<String>,
    pub route_table: Option<String>,
    /// Security group / firewall id per role.
    pub firewalls: BTreeMap<String, String>,
    pub ssh_key_id: Option<String>,
    pub ssh_private_key: Option<Sealed>,
    /// SSH host key per host address, recorded on first contact and enforced afterwards.
    pub host_keys: BTreeMap<String, String>,
    pub vms: BTreeMap<String, Vm>,
    /// Per-VM resources besides the VM, by name (Azure: `<vm>-pip`, `<vm>-nic` → ARM id).
    pub vm_parts: BTreeMap<String, String>,
    pub managed_cluster: Option<String>,
    /// Cloud identities created for the cluster (AWS: the EKS control-plane and node IAM role ARNs).
    pub roles: BTreeMap<String, String>,
    pub node_pool: Option<String>,
    pub node_pool_size: u32,
    /// For managed clusters the provider hands out the kubeconfig.
    pub kubeconfig: Option<Sealed>,
}

/// A record holding sealed secrets: each field with the purpose it is sealed for (see
/// [`crate::seal`]), so they can be sealed again under a new key.
pub trait SealedFields {
    fn sealed_mut(&mut self, id: &crate::ClusterId) -> Vec<(String, &mut Option<Sealed>)>;
}

impl SealedFields for InfraRecord {
    fn sealed_mut(&mut self, id: &crate::ClusterId) -> Vec<(String, &mut Option<Sealed>)> {
        vec![(format!("ssh/{id}"), &mut self.ssh_private_key), (format!("kubeconfig/{id}"), &mut self.kubeconfig)]
    }
}

impl InfraRecord {
    pub fn vms_of(&self, role: Role) -> impl Iterator<Item = &Vm> {
        self.vms.values().filter(move |v| v.role == role)
    }

    /// The workers a scale-down to `target` removes: those beyond the target count, highest index
    /// first. The one rule for every provider's scale-down and the k8s phase's drain, so that the
    /// nodes drained are the machines removed.
    pub fn workers_beyond(&self, target: u32) -> Vec<Vm> {
        let mut workers: Vec<Vm> = self.vms_of(Role::Worker).cloned().collect();
        workers.sort_by_key(|v| std::cmp::Reverse(v.index));
        let n = workers.len().saturating_sub(target as usize);
        workers.truncate(n);
        workers
    }
}

impl SealedFields for BootstrapRecord {
    fn sealed_mut(&mut self, id: &crate::ClusterId) -> Vec<(String, &mut Option<Sealed>)> {
        vec![
            (format!("ca-cert/{id}"), &mut self.ca_cert),
            (format!("ca-key/{id}"), &mut self.ca_key),
            (format!("join-token/{id}"), &mut self.join_token),
            (format!("kubeconfig/{id}"), &mut self.kubeconfig),
            (format!("etcd-pki/{id}"), &mut self.etcd_pki),
            (format!("kubeadm/{id}"), &mut self.kubeadm),
        ]
    }
}

/// Bootstrap checkpoints and secrets (key `bootstrap.<id>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootstrapRecord {
    /// `<step>@<host>` for every host step that finished.
    pub steps_done: BTreeSet<String>,
    /// The etcd CA, kept (key included) so certificates can be renewed.
    pub ca_cert: Option<Sealed>,
    pub ca_key: Option<Sealed>,
    /// k3s: the token read from the first server; kubeadm: the current bootstrap token.
    pub join_token: Option<Sealed>,
    pub kubeconfig: Option<Sealed>,
    /// The etcd PKI as one JSON document (CA, server and peer certificates per datastore, the
    /// API servers' client certificate).
    pub etcd_pki: Option<Sealed>,
    /// kubeadm's cluster CA, bootstrap token (with expiry) and certificate key, as JSON.
    pub kubeadm: Option<Sealed>,
    /// SSH host keys first seen by the bootstrap (hosts the cloud phase did not contact).
    pub host_keys: BTreeMap<String, String>,
}

/// In-cluster component checkpoints (key `k8s.<id>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct K8sRecord {
    pub installed: BTreeSet<String>,
    pub drained: BTreeSet<String>,
    /// The NATS credential the cluster's agent holds now (its seed lives only in the cluster's
    /// Secret): rotated before `expires_at`, revoked when the cluster is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_credential: Option<AgentCredential>,
    /// The `ClusterAddon` object (uid, generation) after ksctl last wrote its spec: heartbeats
    /// that read an older generation of it are not acted on.
    #[serde(default)]
    pub cluster_addon_written: crate::addons::ObjectGeneration,
}

/// One of a cluster's application stacks (key `app.<id>.<stack>`): the manager writes what an
/// accepted apply asks for, the k8s-controller what it may have applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub stack: String,
    /// The manifests of the latest accepted apply, sealed (they may hold Secrets).
    pub manifests: Option<Sealed>,
    /// Every object ksctl may have applied for the stack and not yet removed, in apply order.
    /// Written before objects are applied, so a crash cannot leave one ksctl does not know of.
    #[serde(default)]
    pub inventory: Vec<crate::apps::ObjectRef>,
}

impl AppRecord {
    /// What the manifests are sealed for.
    pub fn purpose(id: &crate::ClusterId, stack: &str) -> String {
        format!("app/{id}/{stack}")
    }
}

impl SealedFields for AppRecord {
    fn sealed_mut(&mut self, id: &crate::ClusterId) -> Vec<(String, &mut Option<Sealed>)> {
        vec![(Self::purpose(id, &self.stack), &mut self.manifests)]
    }
}

/// Which NATS user a cluster's agent is, and for how long (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCredential {
    pub user: String,
    pub issued_at: u64,
    pub expires_at: u64,
}

/// NATS users whose credentials were revoked before they expire (user public key → when),
/// written into the account JWT the servers are given; dropped once they have expired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    pub users: std::collections::BTreeMap<String, Revoked>,
    /// Raised with every change (at least to the unix second): the account JWT is issued at
    /// it, so the servers — which keep the newest JWT and ignore older ones — end with the JWT
    /// of the newest record, whichever replica pushed last and whatever its clock said.
    #[serde(default)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub at: u64,
    pub expires_at: u64,
}

#[cfg(test)]
mod workers_beyond_tests {
    use super::*;

    fn infra(workers: &[u32]) -> InfraRecord {
        let mut r = InfraRecord::default();
        let vm = |role: Role, index: u32| Vm {
            id: format!("{}-{index}", role.as_str()),
            name: format!("{}-{index}", role.as_str()),
            role,
            index,
            public_ip: String::new(),
            private_ip: String::new(),
        };
        for &i in workers {
            r.vms.insert(format!("wp-{i}"), vm(Role::Worker, i));
        }
        r.vms.insert("cp-7".into(), vm(Role::ControlPlane, 7));
        r
    }

    fn indices(r: &InfraRecord, target: u32) -> Vec<u32> {
        r.workers_beyond(target).iter().map(|v| v.index).collect()
    }

    #[test]
    fn the_highest_indices_beyond_the_target_count_go_first() {
        let r = infra(&[0, 1, 2, 3]);
        assert_eq!(indices(&r, 2), [3, 2]);
        assert_eq!(indices(&r, 0), [3, 2, 1, 0]);
        assert!(indices(&r, 4).is_empty() && indices(&r, 9).is_empty());
        // Indices with a gap (a scale-up continues after the highest): counted, not compared.
        let r = infra(&[0, 2, 5]);
        assert_eq!(indices(&r, 1), [5, 2]);
        assert!(r.workers_beyond(0).iter().all(|v| v.role == Role::Worker), "only workers");
    }
}
