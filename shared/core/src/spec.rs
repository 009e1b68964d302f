//! The create request's cluster spec (every field of ksctl's create payload) and its validation.
use crate::ids::validate_name;
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

pub const KNOWN_CNIS: [&str; 4] = ["flannel", "calico", "cilium", "none"];

impl ClusterSpec {
    /// Validates every field and returns all problems at once, so the caller can fix them in one go.
    /// `enabled` lists the providers this control plane can serve.
    pub fn validate(&self, enabled: &[Provider]) -> Result<Shape, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut err = |field: &str, message: String| errs.push(FieldError { field: field.into(), message });
        if let Err(e) = validate_name(&self.cluster_name) {
            err("cluster_name", e);
        }
        if self.region.is_empty()
            || self.region.len() > 40
            || !self.region.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            err("region", "must be 1 to 40 lowercase letters, digits or '-'".into());
        }
        let provider = match Provider::parse(&self.cloud_provider) {
            None => {
                err(
                    "cloud_provider",
                    format!("unknown provider {:?}; expected one of sim, aws, azure, local, byo", self.cloud_provider),
                );
                None
            }
            Some(p) if !enabled.contains(&p) => {
                let names: Vec<_> = enabled.iter().map(|p| p.as_str()).collect();
                err(
                    "cloud_provider",
                    format!("provider {p} is not enabled in this control plane (enabled: {})", names.join(", ")),
                );
                None
            }
            Some(p) => Some(p),
        };
        let cluster_type = match self.cluster_type.as_str() {
            "managed" => Some(ClusterType::Managed),
            "selfmanaged" => Some(ClusterType::Selfmanaged),
            other => {
                err("cluster_type", format!("unknown type {other:?}; expected managed or selfmanaged"));
                None
            }
        };
        let distro = match self.kubernetes_distro.as_deref() {
            None | Some("") => None,
            Some("k3s") => Some(Distro::K3s),
            Some("kubeadm") => Some(Distro::Kubeadm),
            Some(other) => {
                err("kubernetes_distro", format!("unknown distro {other:?}; expected k3s or kubeadm"));
                None
            }
        };
        if !is_version(&self.kubernetes_version) {
            err(
                "kubernetes_version",
                format!("{:?} is not a version like 1.31 or v1.31.2+k3s1", self.kubernetes_version),
            );
        }
        if let Some(v) = &self.etcd_version
            && !is_version(v)
        {
            err("etcd_version", format!("{v:?} is not a version like 3.5.15"));
        }
        if let Some(cni) = &self.cni
            && !KNOWN_CNIS.contains(&cni.as_str())
        {
            err("cni", format!("unknown CNI {cni:?}; expected one of {}", KNOWN_CNIS.join(", ")));
        }
        let mut seen_addons = std::collections::BTreeSet::new();
        for a in &self.addons {
            if crate::addons::find(a).is_none() {
                err("addons", format!("unknown addon {a:?}; available: {}", crate::addons::names()));
            } else if !seen_addons.insert(a) {
                err("addons", format!("{a:?} is listed twice"));
            }
        }
        for (field, n) in [
            ("managed_nodes", self.managed_nodes),
            ("control_plane_nodes", self.control_plane_nodes),
            ("worker_nodes", self.worker_nodes),
            ("datastore_nodes", self.datastore_nodes),
        ] {
            if n > MAX_NODES_PER_ROLE {
                err(field, format!("{n} is more than the limit of {MAX_NODES_PER_ROLE}"));
            }
        }
        match (&self.hosts, provider) {
            (None, Some(Provider::Byo)) => err("hosts", "provider byo needs the hosts to use, per role".into()),
            (Some(_), Some(p)) if p != Provider::Byo => err("hosts", format!("only provider byo takes hosts, not {p}")),
            (Some(h), _) => {
                if h.ssh_key.is_empty()
                    || h.ssh_key.len() > 64
                    || !h.ssh_key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
                    || h.ssh_key.starts_with('.')
                {
                    err("hosts.ssh_key", "must name a key file: 1 to 64 of letters, digits, '-', '_', '.'".into());
                }
                for (field, want, got) in [
                    ("hosts.datastores", self.datastore_nodes, h.datastores.len()),
                    ("hosts.control_planes", self.control_plane_nodes, h.control_planes.len()),
                ] {
                    if want as usize != got {
                        err(field, format!("lists {got} hosts but the spec asks for {want}"));
                    }
                }
                // Workers beyond the count are spares that a scale-up takes, in order.
                if h.workers.len() < self.worker_nodes as usize {
                    err(
                        "hosts.workers",
                        format!("lists {} hosts but the spec asks for {}", h.workers.len(), self.worker_nodes),
                    );
                }
                let mut seen = std::collections::BTreeSet::new();
                for (_, _, host) in h.all() {
                    if let Err(e) = crate::net::host_address(&host.address) {
                        err("hosts", format!("address {e}"));
                    } else if !seen.insert((host.address.as_str(), host.port)) {
                        err("hosts", format!("{}:{} is listed twice", host.address, host.port));
                    }
                    if !crate::net::is_login_name(&host.user) {
                        err("hosts", format!("{} is not a user name", crate::net::shown(&host.user)));
                    }
                }
            }
            _ => {}
        }
        match cluster_type {
            Some(ClusterType::Managed) => {
                if self.managed_nodes < 1 {
                    err("managed_nodes", "a managed cluster needs at least 1 node".into());
                }
                if provider == Some(Provider::Byo) {
                    err("cluster_type", "provider byo supports only selfmanaged clusters".into());
                }
            }
            Some(ClusterType::Selfmanaged) => {
                if provider == Some(Provider::Local) {
                    err("cluster_type", "provider local supports only managed clusters".into());
                }
                // Self-managed clusters get their CNI from ksctl: flannel, Calico and Cilium are
                // embedded (k3s has flannel built in); "none" leaves the choice to the user.
                if self.kubernetes_distro.as_deref().unwrap_or("").is_empty() {
                    err("kubernetes_distro", "required for selfmanaged clusters (k3s or kubeadm)".into());
                }
                for (field, n) in
                    [("control_plane_nodes", self.control_plane_nodes), ("datastore_nodes", self.datastore_nodes)]
                {
                    if n < 3 || n % 2 == 0 {
                        err(field, format!("must be odd and at least 3 for high availability, got {n}"));
                    }
                }
            }
            None => {}
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Shape { provider: provider.expect("checked"), cluster_type: cluster_type.expect("checked"), distro })
    }
}

fn is_version(v: &str) -> bool {
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
