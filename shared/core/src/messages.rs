//! Everything that travels on the bus. Versioned JSON; secrets never travel except in the
//! `switch` reply, which hands the kubeconfig to the caller who asked for it.
use crate::records::{ClusterRecord, OperationRecord, Vm};
use crate::saga::Phase;
use crate::spec::{ClusterSpec, FieldError};
use crate::state::OpKind;
use crate::{ClusterId, OperationId};
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "v1";

/// Header on a request naming the inbox the manager answers on. A header rather than a body
/// field so that even a request whose JSON does not parse gets an answer.
pub const REPLY_HEADER: &str = "Ksctl-Reply-To";

/// `ksctl.request.create`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub api_version: String,
    /// Chosen by the caller; the same id published twice is one operation.
    pub request_id: String,
    pub spec: ClusterSpec,
}

/// `ksctl.request.delete`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    pub api_version: String,
    pub request_id: String,
    pub cluster_name: String,
}

/// `ksctl.request.scale`: the desired total number of workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub api_version: String,
    pub request_id: String,
    pub cluster_name: String,
    pub workers: u32,
}

/// `ksctl.request.addon`: enable or disable one addon of the catalog (`ksctl_core::addons`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonRequest {
    pub api_version: String,
    pub request_id: String,
    pub cluster_name: String,
    pub addon: String,
    pub enable: bool,
}

/// `ksctl.request.apps`: apply a user's application stack (`manifests`: the whole file, at most
/// `ksctl_core::apps::MAX_MANIFEST_BYTES`), or delete it (`manifests` absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppsRequest {
    pub api_version: String,
    pub request_id: String,
    pub cluster_name: String,
    pub stack: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<String>,
}

/// The manager's answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestReply {
    pub accepted: bool,
    pub request_id: Option<String>,
    pub cluster_id: Option<ClusterId>,
    /// `None` when accepted with nothing to do (scale to the current size).
    pub operation_id: Option<OperationId>,
    pub message: String,
    /// Field-level problems when the request failed validation.
    #[serde(default)]
    pub errors: Vec<FieldError>,
}

/// Manager → controller: run `phase` of operation `op_id` on `cluster_id`. Everything else the
/// controller needs is in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub op_id: OperationId,
    pub cluster_id: ClusterId,
    pub kind: OpKind,
    pub phase: Phase,
    pub dispatch: u32,
}

impl Command {
    /// Deterministic `Nats-Msg-Id`: a redelivered handler that publishes again is deduplicated.
    /// The cluster is part of it: operation ids come from request ids, which are unique per
    /// cluster only (two clusters' `ClusterAddon` objects make the same ones).
    pub fn msg_id(&self) -> String {
        format!("{}:{}:{}:cmd:{}", self.cluster_id, self.op_id, self.phase, self.dispatch)
    }
}

/// Controller → manager: how a phase ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseResult {
    pub op_id: OperationId,
    pub cluster_id: ClusterId,
    pub phase: Phase,
    /// `None`: the phase succeeded. `Some`: it failed permanently, with the reason.
    pub error: Option<String>,
}

impl PhaseResult {
    pub fn msg_id(&self) -> String {
        format!("{}:{}:{}:result", self.cluster_id, self.op_id, self.phase)
    }
}

crate::vocabulary! {
    /// What a request on `ksctl.request.<verb>` asks the manager to do.
    pub enum RequestVerb {
        Create = "create",
        Delete = "delete",
        Scale = "scale",
        Addon = "addon",
        Apps = "apps",
    }
}

crate::vocabulary! {
    /// What a query on `ksctl.query.<verb>` asks the manager.
    pub enum QueryVerb {
        Get = "get",
        List = "list",
        Info = "info",
        Switch = "switch",
        Ops = "ops",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Accepted,
    Rejected,
    PhaseStarted,
    Progress,
    PhaseSucceeded,
    PhaseFailed,
    /// A retryable error; the step will be tried again.
    Retrying,
    OperationSucceeded,
    OperationFailed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::PhaseStarted => "phase_started",
            Self::Progress => "progress",
            Self::PhaseSucceeded => "phase_succeeded",
            Self::PhaseFailed => "phase_failed",
            Self::Retrying => "retrying",
            Self::OperationSucceeded => "operation_succeeded",
            Self::OperationFailed => "operation_failed",
        }
    }
}

/// `ksctl.events.<cluster_id>.<kind>`: progress, audit, and what the CLI's progress bars show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `_` when the request was too broken to name a valid cluster.
    pub cluster_id: String,
    pub op_id: Option<OperationId>,
    pub request_id: Option<String>,
    pub kind: EventKind,
    pub phase: Option<Phase>,
    pub step: Option<String>,
    pub message: String,
    /// Steps finished and steps planned in this phase, when known.
    pub done: Option<u32>,
    pub total: Option<u32>,
    pub at_ms: u64,
}

impl Event {
    pub fn new(cluster_id: &str, kind: EventKind, message: impl Into<String>) -> Self {
        Self {
            cluster_id: cluster_id.to_string(),
            op_id: None,
            request_id: None,
            kind,
            phase: None,
            step: None,
            message: message.into(),
            done: None,
            total: None,
            at_ms: crate::now_ms(),
        }
    }
    pub fn op(mut self, op: &OperationId) -> Self {
        self.op_id = Some(op.clone());
        self
    }
    pub fn phase(mut self, phase: Phase) -> Self {
        self.phase = Some(phase);
        self
    }
    pub fn step(mut self, step: impl Into<String>, done: u32, total: u32) -> Self {
        self.step = Some(step.into());
        self.done = Some(done);
        self.total = Some(total);
        self
    }
}

/// Body of `ksctl.query.get|info|switch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NameQuery {
    pub cluster_name: String,
}

/// Every query reply: `data` on success, `error` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryReply<T> {
    pub ok: bool,
    pub error: Option<String>,
    pub data: Option<T>,
}

impl<T> QueryReply<T> {
    pub fn ok(data: T) -> Self {
        Self { ok: true, error: None, data: Some(data) }
    }
    pub fn err(e: impl Into<String>) -> Self {
        Self { ok: false, error: Some(e.into()), data: None }
    }
}

/// `get` / `list` rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSummary {
    pub name: String,
    pub provider: String,
    pub cluster_type: String,
    pub distro: Option<String>,
    pub region: String,
    pub state: String,
    pub control_planes: u32,
    pub datastores: u32,
    pub workers: u32,
    pub managed_nodes: u32,
    pub kubernetes_version: String,
    pub operation: Option<OperationView>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationView {
    pub id: OperationId,
    pub kind: OpKind,
    pub phase: Phase,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub error: Option<String>,
}

/// `ksctl.query.ops`: the operations under way (body `{"stuck": true}`: only those whose phase
/// is past its deadline).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpsQuery {
    #[serde(default)]
    pub stuck: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationStatus {
    pub cluster: String,
    pub state: String,
    pub operation: OperationView,
    /// How often the current phase was dispatched again by the reconciler.
    pub dispatch: u32,
    /// Milliseconds since the current phase was dispatched.
    pub phase_age_ms: u64,
    /// The phase timeout: past it, with no worker on the cluster, the phase is dispatched
    /// again (and after the manager's re-dispatch limit, failed).
    pub phase_timeout_ms: u64,
    pub stuck: bool,
}

impl From<&OperationRecord> for OperationView {
    fn from(o: &OperationRecord) -> Self {
        Self {
            id: o.id.clone(),
            kind: o.kind,
            phase: o.phase,
            started_at_ms: o.started_at_ms,
            finished_at_ms: o.finished_at_ms,
            error: o.error.clone(),
        }
    }
}

impl From<&ClusterRecord> for ClusterSummary {
    fn from(r: &ClusterRecord) -> Self {
        let last_error = r.last_operation.as_ref().and_then(|o| o.error.clone());
        Self {
            name: r.id.to_string(),
            provider: r.provider.to_string(),
            cluster_type: r.cluster_type.as_str().to_string(),
            distro: r.spec.kubernetes_distro.clone(),
            region: r.spec.region.clone(),
            state: r.state.to_string(),
            control_planes: r.spec.control_plane_nodes,
            datastores: r.spec.datastore_nodes,
            workers: r.spec.worker_nodes,
            managed_nodes: r.spec.managed_nodes,
            kubernetes_version: r.spec.kubernetes_version.clone(),
            operation: r.operation.as_ref().map(OperationView::from),
            last_error,
        }
    }
}

/// `info`: resources, addresses and versions; never secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub summary: ClusterSummary,
    pub spec: ClusterSpec,
    pub network: Option<String>,
    pub firewalls: Vec<String>,
    pub vms: Vec<Vm>,
    pub managed_cluster: Option<String>,
    pub node_pool_size: u32,
    pub components: Vec<String>,
    pub bootstrap_steps_done: usize,
    pub last_operation: Option<OperationView>,
    /// The newest agent heartbeat (its `sent_at_ms` says how old) and where it shows drift.
    #[serde(default)]
    pub health: Option<Heartbeat>,
    #[serde(default)]
    pub drift: Vec<String>,
    /// The user's application stacks (`ksctl cluster apps`).
    #[serde(default)]
    pub apps: Vec<String>,
}

/// The agent's heartbeat, published to [`health_subject`] from inside (or next to) a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub cluster_id: String,
    pub sent_at_ms: u64,
    /// The API server's `gitVersion`, e.g. `v1.31.2+k3s1`.
    pub server_version: String,
    pub nodes: Vec<NodeHealth>,
    /// The host name of the agent that sent it (in a cluster: its pod's name).
    #[serde(default)]
    pub reporter: String,
    /// When the manager received it, by the manager's clock (set by the manager; whatever a
    /// sender puts here is replaced).
    #[serde(default)]
    pub received_at_ms: u64,
    /// What the cluster's `ClusterAddon` object asks for (absent: no object, or unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addons: Option<crate::addons::DesiredAddons>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub name: String,
    pub ready: bool,
    pub control_plane: bool,
    pub kubelet_version: String,
}

/// `ksctl.health.<cluster_id>`.
pub fn health_subject(cluster_id: &str) -> String {
    format!("ksctl.health.{cluster_id}")
}

/// Every cluster's [`health_subject`].
pub const HEALTH_SUBJECTS: &str = "ksctl.health.*";

/// Where the cluster differs from what ksctl expects, judged from a heartbeat: node count and
/// Kubernetes minor version. Empty when they agree.
pub fn drift(hb: &Heartbeat, expected_nodes: u32, version: &str) -> Vec<String> {
    let mut out = Vec::new();
    if hb.nodes.len() as u32 != expected_nodes {
        out.push(format!("{} nodes, {expected_nodes} expected", hb.nodes.len()));
    }
    let minor = |v: &str| v.trim_start_matches('v').split(['.', '+', '-']).take(2).collect::<Vec<_>>().join(".");
    if minor(&hb.server_version) != minor(version) {
        out.push(format!("API server {}, {version} expected", hb.server_version));
    }
    let not_ready: Vec<&str> = hb.nodes.iter().filter(|n| !n.ready).map(|n| n.name.as_str()).collect();
    if !not_ready.is_empty() {
        out.push(format!("not ready: {}", not_ready.join(", ")));
    }
    out
}

/// `switch`: the kubeconfig and the context name ksctl uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchData {
    pub context: String,
    pub kubeconfig: String,
}

/// ksctl's context name: `<name>-<region>-<type>-<cloud>-ksctl`.
pub fn context_name(r: &ClusterRecord) -> String {
    format!("{}-{}-{}-{}-ksctl", r.id, r.spec.region, r.cluster_type.as_str(), r.provider)
}
