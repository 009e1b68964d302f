//! What the services keep in the state store, one record per entity and owner.
use crate::saga::Phase;
use crate::seal::Sealed;
use crate::spec::{ClusterSpec, ClusterType, Distro, Provider};
use crate::state::{ClusterState, OpKind};
use crate::{ClusterId, OperationId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoadBalancer => "lb",
            Self::Datastore => "ds",
            Self::ControlPlane => "cp",
            Self::Worker => "wp",
            Self::Managed => "mp",
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

impl InfraRecord {
    pub fn vms_of(&self, role: Role) -> impl Iterator<Item = &Vm> {
        self.vms.values().filter(move |v| v.role == role)
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
}
