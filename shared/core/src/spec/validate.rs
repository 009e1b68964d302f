//! [`ClusterSpec::validate`]: one rule per part of the spec (name and region, provider, type
//! and distro, versions, CNI and addons, counts, byo hosts, and what the type asks of the
//! rest). Every rule reports into one list, so a caller learns every problem at once.
use super::*;
use crate::ids::validate_name;
use std::collections::BTreeSet;

/// The problems found so far.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }
}

impl ClusterSpec {
    /// Validates every field and returns all problems at once, so the caller can fix them in one go.
    /// `enabled` lists the providers this control plane can serve.
    pub fn validate(&self, enabled: &[Provider]) -> Result<Shape, Vec<FieldError>> {
        let mut p = Problems::default();
        self.check_name_and_region(&mut p);
        let provider = self.check_provider(enabled, &mut p);
        let cluster_type = self.check_cluster_type(&mut p);
        let distro = self.check_distro(&mut p);
        self.check_versions(&mut p);
        self.check_cni_and_addons(&mut p);
        self.check_counts(&mut p);
        self.check_hosts(provider, &mut p);
        match cluster_type {
            Some(ClusterType::Managed) => self.check_managed(provider, &mut p),
            Some(ClusterType::Selfmanaged) => self.check_selfmanaged(provider, &mut p),
            None => {}
        }
        match (provider, cluster_type) {
            (Some(provider), Some(cluster_type)) if p.0.is_empty() => Ok(Shape { provider, cluster_type, distro }),
            _ => Err(p.0),
        }
    }

    fn check_name_and_region(&self, p: &mut Problems) {
        if let Err(e) = validate_name(&self.cluster_name) {
            p.add("cluster_name", e);
        }
        if self.region.is_empty()
            || self.region.len() > 40
            || !self.region.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            p.add("region", "must be 1 to 40 lowercase letters, digits or '-'");
        }
    }

    fn check_provider(&self, enabled: &[Provider], p: &mut Problems) -> Option<Provider> {
        match Provider::parse(&self.cloud_provider) {
            None => {
                let msg =
                    format!("unknown provider {:?}; expected one of sim, aws, azure, local, byo", self.cloud_provider);
                p.add("cloud_provider", msg);
                None
            }
            Some(provider) if !enabled.contains(&provider) => {
                let names: Vec<_> = enabled.iter().map(|p| p.as_str()).collect();
                let msg =
                    format!("provider {provider} is not enabled in this control plane (enabled: {})", names.join(", "));
                p.add("cloud_provider", msg);
                None
            }
            Some(provider) => Some(provider),
        }
    }

    fn check_cluster_type(&self, p: &mut Problems) -> Option<ClusterType> {
        match self.cluster_type.as_str() {
            "managed" => Some(ClusterType::Managed),
            "selfmanaged" => Some(ClusterType::Selfmanaged),
            other => {
                p.add("cluster_type", format!("unknown type {other:?}; expected managed or selfmanaged"));
                None
            }
        }
    }

    fn check_distro(&self, p: &mut Problems) -> Option<Distro> {
        match self.kubernetes_distro.as_deref() {
            None | Some("") => None,
            Some("k3s") => Some(Distro::K3s),
            Some("kubeadm") => Some(Distro::Kubeadm),
            Some(other) => {
                p.add("kubernetes_distro", format!("unknown distro {other:?}; expected k3s or kubeadm"));
                None
            }
        }
    }

    fn check_versions(&self, p: &mut Problems) {
        if !is_version(&self.kubernetes_version) {
            let msg = format!("{:?} is not a version like 1.31 or v1.31.2+k3s1", self.kubernetes_version);
            p.add("kubernetes_version", msg);
        }
        if let Some(v) = &self.etcd_version
            && !is_version(v)
        {
            p.add("etcd_version", format!("{v:?} is not a version like 3.5.15"));
        }
    }

    fn check_cni_and_addons(&self, p: &mut Problems) {
        if let Some(cni) = &self.cni
            && Cni::parse(cni).is_none()
        {
            p.add("cni", format!("unknown CNI {cni:?}; expected one of {}", Cni::spellings().join(", ")));
        }
        let mut seen = BTreeSet::new();
        for a in &self.addons {
            if crate::addons::find(a).is_none() {
                p.add("addons", format!("unknown addon {a:?}; available: {}", crate::addons::names()));
            } else if !seen.insert(a) {
                p.add("addons", format!("{a:?} is listed twice"));
            }
        }
    }

    fn check_counts(&self, p: &mut Problems) {
        for (field, n) in [
            ("managed_nodes", self.managed_nodes),
            ("control_plane_nodes", self.control_plane_nodes),
            ("worker_nodes", self.worker_nodes),
            ("datastore_nodes", self.datastore_nodes),
        ] {
            if n > MAX_NODES_PER_ROLE {
                p.add(field, format!("{n} is more than the limit of {MAX_NODES_PER_ROLE}"));
            }
        }
    }

    /// `byo` needs its hosts, one per planned node (spare workers allowed), each reachable
    /// under a valid address and user; no other provider takes hosts.
    fn check_hosts(&self, provider: Option<Provider>, p: &mut Problems) {
        let h = match (&self.hosts, provider) {
            (None, Some(Provider::Byo)) => return p.add("hosts", "provider byo needs the hosts to use, per role"),
            (Some(_), Some(other)) if other != Provider::Byo => {
                return p.add("hosts", format!("only provider byo takes hosts, not {other}"));
            }
            (Some(h), _) => h,
            (None, _) => return,
        };
        if h.ssh_key.is_empty()
            || h.ssh_key.len() > 64
            || !h.ssh_key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
            || h.ssh_key.starts_with('.')
        {
            p.add("hosts.ssh_key", "must name a key file: 1 to 64 of letters, digits, '-', '_', '.'");
        }
        for (field, want, got) in [
            ("hosts.datastores", self.datastore_nodes, h.datastores.len()),
            ("hosts.control_planes", self.control_plane_nodes, h.control_planes.len()),
        ] {
            if want as usize != got {
                p.add(field, format!("lists {got} hosts but the spec asks for {want}"));
            }
        }
        // Workers beyond the count are spares that a scale-up takes, in order.
        if h.workers.len() < self.worker_nodes as usize {
            let msg = format!("lists {} hosts but the spec asks for {}", h.workers.len(), self.worker_nodes);
            p.add("hosts.workers", msg);
        }
        let mut seen = BTreeSet::new();
        for (_, _, host) in h.all() {
            if let Err(e) = crate::net::host_address(&host.address) {
                p.add("hosts", format!("address {e}"));
            } else if !seen.insert((host.address.as_str(), host.port)) {
                p.add("hosts", format!("{}:{} is listed twice", host.address, host.port));
            }
            if !crate::net::is_login_name(&host.user) {
                p.add("hosts", format!("{} is not a user name", crate::net::shown(&host.user)));
            }
        }
    }

    fn check_managed(&self, provider: Option<Provider>, p: &mut Problems) {
        if self.managed_nodes < 1 {
            p.add("managed_nodes", "a managed cluster needs at least 1 node");
        }
        if provider == Some(Provider::Byo) {
            p.add("cluster_type", "provider byo supports only selfmanaged clusters");
        }
    }

    /// Self-managed clusters need a distro and an HA control plane and datastore (odd, at least
    /// 3). Their CNI comes from ksctl: flannel, Calico and Cilium are embedded (k3s has flannel
    /// built in); "none" leaves the choice to the user.
    fn check_selfmanaged(&self, provider: Option<Provider>, p: &mut Problems) {
        if provider == Some(Provider::Local) {
            p.add("cluster_type", "provider local supports only managed clusters");
        }
        if self.kubernetes_distro.as_deref().unwrap_or("").is_empty() {
            p.add("kubernetes_distro", "required for selfmanaged clusters (k3s or kubeadm)");
        }
        for (field, n) in [("control_plane_nodes", self.control_plane_nodes), ("datastore_nodes", self.datastore_nodes)]
        {
            if n < 3 || n % 2 == 0 {
                p.add(field, format!("must be odd and at least 3 for high availability, got {n}"));
            }
        }
    }
}
