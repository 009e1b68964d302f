//! The create request's cluster spec (every field of ksctl's create payload) and its validation.
mod validate;

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The simulator: cloud, hosts and Kubernetes API kept in the state store.
    Sim,
    Aws,
    Azure,
    /// kind on the local Docker engine (managed clusters only).
    Local,
    /// Bring-your-own hosts over SSH (self-managed only).
    Byo,
}

/// Why a `local` (kind) cluster cannot be scaled: the manager refuses the request with it, and a
/// command that still reaches the cloud-controller gets the same answer.
pub const LOCAL_NO_SCALE: &str =
    "kind clusters cannot change their node count: delete the cluster and create it again with the nodes you want";

impl Provider {
    pub const ALL: [Provider; 5] = [Self::Sim, Self::Aws, Self::Azure, Self::Local, Self::Byo];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sim => "sim",
            Self::Aws => "aws",
            Self::Azure => "azure",
            Self::Local => "local",
            Self::Byo => "byo",
        }
    }
    /// The provider as people see it in tables: `local` says it is kind.
    pub fn shown(self) -> &'static str {
        match self {
            Self::Local => "local (kind)",
            other => other.as_str(),
        }
    }

    /// Whether the cloud hands out short-lived kubeconfig credentials that `switch` must mint
    /// afresh (EKS tokens last 15 minutes) instead of reading them from state.
    pub fn kubeconfig_expires(self, t: ClusterType) -> bool {
        self == Self::Aws && t == ClusterType::Managed
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterType {
    Managed,
    Selfmanaged,
}

impl ClusterType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Managed => "managed",
            Self::Selfmanaged => "selfmanaged",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distro {
    K3s,
    Kubeadm,
}

/// Instance sizes per role; `None` means the provider's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSizes {
    pub managed: Option<String>,
    pub control_plane: Option<String>,
    pub worker: Option<String>,
    pub datastore: Option<String>,
    pub load_balancer: Option<String>,
}

/// What a user asks for. Provider, type and distro are kept as strings here so that an unknown
/// value gets a field-level validation error instead of an opaque parse failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub cluster_name: String,
    pub region: String,
    pub cloud_provider: String,
    pub cluster_type: String,
    #[serde(default)]
    pub kubernetes_distro: Option<String>,
    #[serde(default = "default_k8s_version")]
    pub kubernetes_version: String,
    #[serde(default)]
    pub etcd_version: Option<String>,
    #[serde(default)]
    pub node_sizes: NodeSizes,
    #[serde(default)]
    pub managed_nodes: u32,
    #[serde(default)]
    pub control_plane_nodes: u32,
    #[serde(default)]
    pub worker_nodes: u32,
    #[serde(default)]
    pub datastore_nodes: u32,
    #[serde(default)]
    pub cni: Option<String>,
    #[serde(default)]
    pub addons: Vec<String>,
    /// Provider `byo` only: the machines to use, per role, and the SSH key to reach them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<ByoHosts>,
}

/// Bring-your-own machines. The private key is not in the request: `ssh_key` names a file in the
/// cloud-controller's key directory (`KSCTL_BYO_KEYS_DIR`), e.g. a mounted secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByoHosts {
    pub ssh_key: String,
    pub load_balancer: HostSpec,
    pub datastores: Vec<HostSpec>,
    pub control_planes: Vec<HostSpec>,
    #[serde(default)]
    pub workers: Vec<HostSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// IP address or DNS name the control plane reaches the machine at.
    pub address: String,
    #[serde(default = "default_ssh_user")]
    pub user: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
}

fn default_ssh_user() -> String {
    "ubuntu".into()
}
fn default_ssh_port() -> u16 {
    22
}

impl ByoHosts {
    /// The hosts a cluster with `workers` workers uses: all but the spare workers.
    pub fn in_use(&self, workers: u32) -> Vec<(crate::records::Role, u32, &HostSpec)> {
        use crate::records::Role;
        self.all().into_iter().filter(|(r, i, _)| *r != Role::Worker || *i < workers).collect()
    }

    /// The host listed for `role` at `index`.
    pub fn host(&self, role: crate::records::Role, index: u32) -> Option<&HostSpec> {
        self.all().into_iter().find(|(r, i, _)| *r == role && *i == index).map(|(_, _, h)| h)
    }

    /// Every host with its role and index, load balancer first.
    pub fn all(&self) -> Vec<(crate::records::Role, u32, &HostSpec)> {
        use crate::records::Role;
        let mut v = vec![(Role::LoadBalancer, 0, &self.load_balancer)];
        v.extend(self.datastores.iter().enumerate().map(|(i, h)| (Role::Datastore, i as u32, h)));
        v.extend(self.control_planes.iter().enumerate().map(|(i, h)| (Role::ControlPlane, i as u32, h)));
        v.extend(self.workers.iter().enumerate().map(|(i, h)| (Role::Worker, i as u32, h)));
        v
    }
}

fn default_k8s_version() -> String {
    "1.31".to_string()
}

/// A spec that passed validation, with its enums parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub provider: Provider,
    pub cluster_type: ClusterType,
    pub distro: Option<Distro>,
}

/// One thing wrong with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Largest count accepted per role; beyond it a request is almost certainly a typo.
pub const MAX_NODES_PER_ROLE: u32 = 100;
/// The pod network of self-managed kubeadm clusters: kubeadm's `podSubnet` and the embedded
/// flannel's `Network`.
pub const POD_SUBNET: &str = "10.244.0.0/16";

crate::vocabulary! {
    /// The pod networks a spec may ask for (`cni`); `none` leaves the network to the user.
    pub enum Cni {
        Flannel = "flannel",
        Calico = "calico",
        Cilium = "cilium",
        None = "none",
    }
}

impl ClusterSpec {
    /// The CNI the spec asks for (`None`: the distro's or cloud's default); a spelling outside
    /// [`Cni`] never passes [`ClusterSpec::validate`], and counts as the default here.
    pub fn cni(&self) -> Option<Cni> {
        self.cni.as_deref().and_then(Cni::parse)
    }
}

pub(crate) fn is_version(v: &str) -> bool {
    let v = v.strip_prefix('v').unwrap_or(v);
    let (core, suffix) = match v.find(['+', '-']) {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, ""),
    };
    let parts: Vec<_> = core.split('.').collect();
    (2..=3).contains(&parts.len())
        && parts.iter().all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|c| c.is_ascii_digit()))
        && suffix.len() <= 32
        && suffix.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'+')
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn selfmanaged() -> ClusterSpec {
        serde_json::from_value(serde_json::json!({
            "cluster_name": "demo", "region": "local", "cloud_provider": "sim",
            "cluster_type": "selfmanaged", "kubernetes_distro": "k3s",
            "control_plane_nodes": 3, "datastore_nodes": 3, "worker_nodes": 2
        }))
        .unwrap()
    }

    fn fields(spec: &ClusterSpec) -> Vec<String> {
        spec.validate(&[Provider::Sim]).unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn byo_needs_hosts_that_match_the_counts() {
        let byo = |hosts: serde_json::Value| -> ClusterSpec {
            let mut v = serde_json::to_value(selfmanaged()).unwrap();
            v["cloud_provider"] = "byo".into();
            v["worker_nodes"] = 1.into();
            if !hosts.is_null() {
                v["hosts"] = hosts;
            }
            serde_json::from_value(v).unwrap()
        };
        let h = |a: &str| serde_json::json!({"address": a});
        let good = serde_json::json!({
            "ssh_key": "lab", "load_balancer": h("10.0.0.1"),
            "datastores": [h("10.0.0.2"), h("10.0.0.3"), h("10.0.0.4")],
            "control_planes": [h("10.0.0.5"), h("10.0.0.6"), h("10.0.0.7")],
            "workers": [h("10.0.0.8")]
        });
        let errs = |s: &ClusterSpec| -> Vec<String> {
            s.validate(&[Provider::Byo]).err().unwrap_or_default().into_iter().map(|e| e.field).collect()
        };
        let ok = byo(good.clone());
        assert!(errs(&ok).is_empty(), "{:?}", ok.validate(&[Provider::Byo]));
        assert_eq!(ok.hosts.as_ref().unwrap().all().len(), 8);
        assert_eq!(ok.hosts.as_ref().unwrap().control_planes[0].user, "ubuntu");
        assert_eq!(errs(&byo(serde_json::Value::Null)), ["hosts"]);
        let mut bad = good.clone();
        bad["workers"] = serde_json::json!([]);
        assert_eq!(errs(&byo(bad)), ["hosts.workers"]);
        let mut spare = good.clone();
        spare["workers"] = serde_json::json!([h("10.0.0.8"), h("10.0.0.9")]);
        let spare = byo(spare);
        assert!(errs(&spare).is_empty(), "a spare worker host is fine");
        assert_eq!(spare.hosts.as_ref().unwrap().in_use(1).len(), 8);
        assert_eq!(spare.hosts.as_ref().unwrap().in_use(2).len(), 9);
        let mut bad = good.clone();
        bad["workers"] = serde_json::json!([h("10.0.0.1")]);
        assert_eq!(errs(&byo(bad)), ["hosts"], "listed twice");
        let mut bad = good.clone();
        bad["ssh_key"] = "../../etc/shadow".into();
        assert_eq!(errs(&byo(bad)), ["hosts.ssh_key"]);
        let mut sim = serde_json::to_value(selfmanaged()).unwrap();
        sim["hosts"] = good;
        let sim: ClusterSpec = serde_json::from_value(sim).unwrap();
        assert_eq!(fields(&sim), ["hosts"], "only byo takes hosts");
    }

    #[test]
    fn addons_from_the_catalog_and_known_cnis_only() {
        let mut s = selfmanaged();
        s.addons = vec!["metrics-server".into()];
        assert!(s.validate(&[Provider::Sim]).is_ok());
        s.addons = vec!["metrics-server".into(), "metrics-server".into()];
        assert_eq!(fields(&s), ["addons"]);
        s.addons = vec!["grafana".into()];
        let e = s.validate(&[Provider::Sim]).unwrap_err();
        assert!(e[0].message.contains("available: metrics-server"), "{e:?}");
        let mut s = selfmanaged();
        for cni in ["cilium", "calico", "flannel", "none"] {
            s.cni = Some(cni.into());
            assert!(s.validate(&[Provider::Sim]).is_ok(), "{cni}");
        }
        s.cni = Some("weave".into());
        assert_eq!(fields(&s), ["cni"]);
        s.cni = Some("none".into());
        s.cluster_type = "managed".into();
        s.managed_nodes = 1;
        s.cni = Some("cilium".into());
        assert!(s.validate(&[Provider::Sim]).is_ok(), "a managed cluster's CNI is the cloud's choice");
    }

    #[test]
    fn valid_selfmanaged_and_managed() {
        let s = selfmanaged().validate(&[Provider::Sim]).unwrap();
        assert_eq!(s.distro, Some(Distro::K3s));
        let mut m = selfmanaged();
        m.cluster_type = "managed".into();
        m.managed_nodes = 1;
        assert_eq!(m.validate(&[Provider::Sim]).unwrap().cluster_type, ClusterType::Managed);
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut s = selfmanaged();
        s.control_plane_nodes = 2;
        assert_eq!(fields(&s), ["control_plane_nodes"]);
        let mut s = selfmanaged();
        s.datastore_nodes = 1;
        assert_eq!(fields(&s), ["datastore_nodes"]);
        let mut s = selfmanaged();
        s.cloud_provider = "gcp".into();
        assert_eq!(fields(&s), ["cloud_provider"]);
        let mut s = selfmanaged();
        s.cloud_provider = "aws".into();
        assert_eq!(fields(&s), ["cloud_provider"], "not enabled");
        let mut s = selfmanaged();
        s.kubernetes_distro = None;
        assert_eq!(fields(&s), ["kubernetes_distro"]);
        let mut s = selfmanaged();
        s.kubernetes_distro = Some("rke2".into());
        assert_eq!(fields(&s), ["kubernetes_distro"]);
        let mut s = selfmanaged();
        s.cluster_type = "hosted".into();
        assert_eq!(fields(&s), ["cluster_type"]);
        let mut s = selfmanaged();
        s.cluster_name = "Bad_Name".into();
        assert_eq!(fields(&s), ["cluster_name"]);
        let mut s = selfmanaged();
        s.cluster_type = "managed".into();
        assert_eq!(fields(&s), ["managed_nodes"]);
        let mut s = selfmanaged();
        s.kubernetes_version = "latest".into();
        assert_eq!(fields(&s), ["kubernetes_version"]);
        let mut s = selfmanaged();
        s.worker_nodes = 1000;
        assert_eq!(fields(&s), ["worker_nodes"]);
    }

    #[test]
    fn all_errors_reported_at_once() {
        let mut s = selfmanaged();
        s.cluster_name = "-x".into();
        s.control_plane_nodes = 4;
        assert_eq!(fields(&s).len(), 2);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<ClusterSpec, _> = serde_json::from_value(serde_json::json!({
            "cluster_name": "a", "region": "r", "cloud_provider": "sim", "cluster_type": "managed",
            "worker_count": 3
        }));
        assert!(r.unwrap_err().to_string().contains("worker_count"));
    }

    #[test]
    fn versions() {
        for ok in ["1.31", "v1.31.2", "v1.30.3+k3s1", "3.5.15"] {
            assert!(is_version(ok), "{ok}");
        }
        for bad in ["", "1", "latest", "1.x", "1.2.3.4"] {
            assert!(!is_version(bad), "{bad}");
        }
    }
}
